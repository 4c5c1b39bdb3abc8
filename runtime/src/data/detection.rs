//! Detection data in the layout YOLO's tools use: `DIR/images/NAME.png` (or .jpg) beside
//! `DIR/labels/NAME.txt`, one object per line: `class cx cy w h`, the box's centre and size as
//! fractions of the image. An empty label file is an image without objects.

use super::{images::load_image_as, DataError, Origin, Split};
use crate::detect::OBJECT_VALUES;
use crate::preprocess::Prep;
use std::path::{Path, PathBuf};

/// How far a box may reach past the image's edge, in fractions of it (rounding in label files).
const EDGE: f32 = 1e-3;

/// Every image of `dir/images` with its objects from `dir/labels`, read as `prep` says.
pub(super) fn folder(dir: &Path, shape: &[usize], prep: &Prep) -> Result<Split, DataError> {
    let images = dir.join("images");
    let io = |path: &Path, e: std::io::Error| DataError::Io { path: path.to_path_buf(), error: e.to_string() };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&images)
        .map_err(|e| io(&images, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
            matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    let mut split = Split::default();
    let mut rows: Vec<Vec<[f32; OBJECT_VALUES]>> = Vec::new();
    for file in files {
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let label = dir.join("labels").join(format!("{stem}.txt"));
        if !label.is_file() {
            return Err(DataError::Unsupported {
                what: format!(
                    "`{}` has no label file `{}` (an image without objects takes an empty one)",
                    file.display(),
                    label.display()
                ),
            });
        }
        let (objects, lines) = read_labels(&label)?;
        split.x.extend(load_image_as(&file, shape, prep)?);
        split.y.push(objects.first().map_or(0, |o| o[0] as u32));
        rows.push(objects);
        split.origin.push(Origin { file: label, lines });
    }
    if split.is_empty() {
        return Err(DataError::Empty { path: images });
    }
    let most = rows.iter().map(Vec::len).max().unwrap_or(0);
    split.t = flatten(&rows, most);
    Ok(split)
}

/// The objects of one label file, and the line of each.
pub(super) fn read_labels(path: &Path) -> Result<(Vec<[f32; OBJECT_VALUES]>, Vec<usize>), DataError> {
    let bytes = super::read(path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| DataError::Decode { path: path.to_path_buf(), error: "it is not UTF-8 text".into() })?;
    let (mut objects, mut lines) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let bad = |problem: String| DataError::Csv { path: path.to_path_buf(), line: line_no, problem };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() != OBJECT_VALUES {
            return Err(bad(format!(
                "an object is `class cx cy w h` (5 values), this line has {}: `{}`",
                fields.len(),
                line.trim()
            )));
        }
        let class: u32 = fields[0]
            .parse()
            .map_err(|_| bad(format!("the class `{}` is not a class index (0, 1, 2, …)", fields[0])))?;
        let mut v = [class as f32, 0.0, 0.0, 0.0, 0.0];
        for (k, name) in ["cx", "cy", "w", "h"].iter().enumerate() {
            let value: f32 = fields[k + 1]
                .parse()
                .ok()
                .filter(|x: &f32| x.is_finite())
                .ok_or_else(|| bad(format!("`{name}` = `{}` is not a number", fields[k + 1])))?;
            v[k + 1] = value;
        }
        let [_, cx, cy, w, h] = v;
        if !(w > 0.0 && h > 0.0 && w <= 1.0 + EDGE && h <= 1.0 + EDGE) {
            return Err(bad(format!(
                "the box is {w} × {h}: a width and height are fractions of the image, above 0 and at most 1"
            )));
        }
        let corners = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
        if corners.iter().any(|&c| !(-EDGE..=1.0 + EDGE).contains(&c)) {
            return Err(bad(format!(
                "the box reaches outside the image: corners ({:.4}, {:.4}) to ({:.4}, {:.4}), where the image is \
                 (0, 0) to (1, 1) (coordinates are fractions of the image)",
                corners[0], corners[1], corners[2], corners[3]
            )));
        }
        objects.push(v);
        lines.push(line_no);
    }
    Ok((objects, lines))
}

/// Rows of objects, `most` per example, unused rows with class −1.
fn flatten(rows: &[Vec<[f32; OBJECT_VALUES]>], most: usize) -> Vec<f32> {
    let mut t = Vec::with_capacity(rows.len() * most.max(1) * OBJECT_VALUES);
    for objects in rows {
        for k in 0..most.max(1) {
            t.extend_from_slice(&objects.get(k).copied().unwrap_or([-1.0, 0.0, 0.0, 0.0, 0.0]));
        }
    }
    t
}

/// Both splits with room for the same number of objects per example, and that target shape.
pub(super) fn pad_objects(train: Split, test: Split) -> (Split, Split, Vec<usize>) {
    let rows = |s: &Split| -> Vec<Vec<[f32; OBJECT_VALUES]>> {
        let per = s.target_len();
        (0..s.len())
            .map(|i| {
                s.t[i * per..(i + 1) * per]
                    .chunks_exact(OBJECT_VALUES)
                    .take_while(|r| r[0] >= 0.0)
                    .map(|r| [r[0], r[1], r[2], r[3], r[4]])
                    .collect()
            })
            .collect()
    };
    let (a, b) = (rows(&train), rows(&test));
    let most = a.iter().chain(&b).map(Vec::len).max().unwrap_or(0).max(1);
    let train = Split { t: flatten(&a, most), ..train };
    let test = Split { t: flatten(&b, most), ..test };
    (train, test, vec![most, OBJECT_VALUES])
}
