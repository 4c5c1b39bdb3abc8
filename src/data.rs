//! `cnnc data`: make datasets and what they imply (`mnist-detection`, `anchors`).

use crate::run::{fail, Failure, EXIT_INPUT};
use cnnc_runtime::data::canvas::{self, CanvasOptions};
use std::path::Path;

/// `cnnc data mnist-detection OUT`: digits on canvases with YOLO label files.
pub fn mnist_detection(mnist: &Path, out: &Path, o: &CanvasOptions) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let w = canvas::mnist_detection(mnist, out, o).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
    println!(
        "wrote {} training canvases ({} digits) to {} and {} test canvases ({} digits) to {} ({:.1} s)",
        w.train.0,
        w.train.1,
        out.join("train").display(),
        w.test.0,
        w.test.1,
        out.join("test").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cnnc data anchors DIR`: k anchors for a grid from the boxes of a detection folder, printed
/// as a model's `anchors` declaration.
pub fn anchors(dir: &Path, k: usize, grid: (usize, usize), name: &str) -> Result<(), Failure> {
    if k == 0 || k > 64 {
        return Err(fail(EXIT_INPUT, format!("{k} anchors: give 1 to 64")));
    }
    if grid.0 == 0 || grid.1 == 0 {
        return Err(fail(EXIT_INPUT, "a grid has at least one row and one column"));
    }
    let sizes = canvas::box_sizes(dir, grid.0, grid.1).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
    let (anchors, mean) = cnnc_runtime::detect::kmeans_anchors(&sizes, k);
    let list: Vec<String> = anchors.iter().map(|a| format!("[{:.2}, {:.2}]", a[0], a[1])).collect();
    println!("// {} boxes, in cells of a {}×{} grid; mean best IoU {:.3}", sizes.len(), grid.0, grid.1, mean);
    println!("anchors {name} = [{}]", list.join(", "));
    Ok(())
}
