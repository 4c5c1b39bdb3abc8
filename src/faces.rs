//! `cnnc run mtcnn.cnn --faces IMAGE...`: MTCNN's cascade over photos, with the file's PNet,
//! RNet and ONet and their imported weights (`DIR/NAME/weights.safetensors`, DIR `runs` unless
//! `--weights DIR`).

use crate::run::{fail, Args, Failure, EXIT_INPUT, EXIT_INTERNAL};
use cnnc_compiler::passes::{inference, Pipeline};
use cnnc_compiler::Compilation;
use cnnc_runtime::mtcnn::{self, Cascade, Net, Picture};
use cnnc_runtime::params::Params;
use std::path::PathBuf;

/// Finds, prints and draws the faces in each of `args.faces`.
pub fn run(c: &Compilation, args: &Args) -> Result<(), Failure> {
    let net = |name: &str| -> Result<Net, Failure> {
        let model = c.models.iter().find(|m| m.name == name).ok_or_else(|| {
            fail(
                EXIT_INPUT,
                format!("--faces runs MTCNN's cascade: the file defines no model `{name}` (see examples/mtcnn.cnn)"),
            )
        })?;
        let mut pipe = Pipeline::new(Default::default()).map_err(|e| fail(EXIT_INTERNAL, e.to_string()))?;
        let graph = inference::run(model, &mut pipe).map_err(|e| fail(EXIT_INTERNAL, e.to_string()))?;
        // The cascade reads 2 face scores, 4 box offsets and (ONet) 10 landmark coordinates.
        let needs: &[(&str, usize)] =
            if name == "ONet" { &[("face", 2), ("box", 4), ("landmarks", 10)] } else { &[("face", 2), ("box", 4)] };
        for &(output, size) in needs {
            let found = graph.outputs().iter().find(|(n, _)| n == output).map(|(_, id)| graph.node(*id).shape.clone());
            match found {
                Some(shape) if shape.channels() == size => {}
                other => {
                    let what = other.map_or("none".to_string(), |s| format!("one of shape {s}"));
                    return Err(fail(
                        EXIT_INPUT,
                        format!(
                            "MTCNN's `{name}` needs an output `{output}` of {size} values (per window), and the file \
                             gives {what} (see examples/mtcnn.cnn)"
                        ),
                    ));
                }
            }
        }
        let mut params = Params::init(&graph, 0);
        let root = args.weights.clone().unwrap_or_else(|| PathBuf::from("runs"));
        let path = root.join(name).join("weights.safetensors");
        if !path.exists() {
            return Err(fail(
                EXIT_INPUT,
                format!(
                    "no weights at `{}`: import them first (`cnnc import {} {} --model {name}{} -o {}`)",
                    path.display(),
                    args.file.display(),
                    // Where examples/mtcnn.cnn keeps facenet-pytorch's weights.
                    args.file
                        .parent()
                        .unwrap_or(std::path::Path::new(""))
                        .join("mtcnn")
                        .join(format!("{}.safetensors", name.to_lowercase()))
                        .display(),
                    if name == "PNet" { "" } else { " --flatten whc" },
                    path.display()
                ),
            ));
        }
        cnnc_runtime::weights::load_into(&path, &mut params).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
        Ok(Net { graph, params })
    };
    let nets = Cascade { pnet: net("PNet")?, rnet: net("RNet")?, onet: net("ONet")? };
    let options = mtcnn::Options { backend: args.backend, ..mtcnn::Options::default() };
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join("MTCNN"));
    for file in &args.faces {
        let (rgb, w, h) = cnnc_runtime::detect::read_rgb(file)
            .map_err(|e| fail(EXIT_INPUT, format!("cannot read `{}`: {e}", file.display())))?;
        let picture = Picture { h, w, data: rgb.iter().map(|&v| f32::from(v)).collect() };
        let started = std::time::Instant::now();
        let faces = mtcnn::detect(&nets, &picture, &options).map_err(|e| fail(EXIT_INTERNAL, e))?;
        println!(
            "{}: {} face{} ({:.0} ms)",
            file.display(),
            faces.len(),
            if faces.len() == 1 { "" } else { "s" },
            started.elapsed().as_secs_f64() * 1e3
        );
        for f in &faces {
            let b = f.corners;
            println!("  probability {:.4}  box ({:.0}, {:.0}) to ({:.0}, {:.0})", f.score, b[0], b[1], b[2], b[3]);
            let marks: Vec<String> = f.landmarks.iter().map(|p| format!("({:.0}, {:.0})", p[0], p[1])).collect();
            println!("    eyes {} {}  nose {}  mouth {} {}", marks[0], marks[1], marks[2], marks[3], marks[4]);
        }
        crate::run::write_drawing(file, "faces", &mtcnn::draw(&rgb, w, h, &faces), w, h, &out)?;
    }
    Ok(())
}
