//! Inference on a file: an image is read as the model's input (after the same padding and
//! scaling as its training data), the model runs in inference mode, and each output becomes
//! either the top classes with their scores or, for a feature map, a PNG image.

use crate::data::{load_image, DataError};
use crate::executor::{ExecError, Executor};
use crate::params::Params;
use crate::reference::{Ctx, Tensor};
use cnnc_compiler::elaborate::ModelInfo;
use ndarray::{ArrayD, Axis, IxDyn};
use std::path::{Path, PathBuf};

/// One output's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Prediction {
    /// A vector: `(class, score)` pairs, best first, with whether scores are probabilities.
    Classes { output: String, top: Vec<(usize, f32)>, probabilities: bool },
    /// A feature map written as an image.
    Image { output: String, path: PathBuf },
    /// Anything else: the raw values.
    Values { output: String, shape: Vec<usize>, values: Vec<f32> },
}

/// Why prediction failed.
#[derive(Debug)]
pub enum PredictError {
    /// The input file could not be read or does not fit.
    Data(DataError),
    /// The model could not run.
    Exec(ExecError),
    /// An output image could not be written.
    Io { path: PathBuf, error: String },
}

impl std::fmt::Display for PredictError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PredictError::Data(e) => write!(f, "{e}"),
            PredictError::Exec(e) => write!(f, "{e}"),
            PredictError::Io { path, error } => write!(f, "cannot write `{}`: {error}", path.display()),
        }
    }
}

impl std::error::Error for PredictError {}

/// Reads `file` as one example for `model`: an image of the input's size less `pad` on each
/// side, scaled to [0, 1], then zero-padded.
pub fn read_input(model: &ModelInfo, file: &Path, pad: usize) -> Result<Tensor, DataError> {
    let input = model.graph.inputs().first().map(|&id| model.graph.node(id).shape.0.clone()).unwrap_or_default();
    let [h, w, c] = input[..] else {
        return Err(DataError::Unsupported {
            what: format!("--predict reads images; this model's input is {input:?}"),
        });
    };
    if h <= 2 * pad || w <= 2 * pad {
        return Err(DataError::Unsupported {
            what: format!("padding {pad} leaves no image inside the input {input:?}"),
        });
    }
    let (ih, iw) = (h - 2 * pad, w - 2 * pad);
    let values = load_image(file, &[ih, iw, c])?;
    let mut x = vec![0f32; h * w * c];
    for r in 0..ih {
        let dst = ((r + pad) * w + pad) * c;
        x[dst..dst + iw * c].copy_from_slice(&values[r * iw * c..(r + 1) * iw * c]);
    }
    Ok(ArrayD::from_shape_vec(IxDyn(&[1, h, w, c]), x).expect("one example fills the input shape"))
}

/// Runs `model` on `x` (a batch of one or more) and averages nothing: returns each output's value.
pub fn outputs(model: &ModelInfo, params: &Params, x: Tensor) -> Result<Vec<(String, Tensor)>, ExecError> {
    let targets: Vec<_> = model.graph.outputs().iter().map(|(_, id)| *id).collect();
    let exec = Executor::new(&model.graph, &targets);
    let input = model.graph.inputs()[0];
    let values = exec.run(params, &[(input, x)], Ctx::eval())?;
    Ok(model
        .graph
        .outputs()
        .iter()
        .filter_map(|(name, id)| values.get(*id).map(|v| (name.clone(), v.clone())))
        .collect())
}

/// Predicts on one file; `softmax` names outputs whose scores are logits of a softmax.
pub fn predict(
    model: &ModelInfo,
    params: &Params,
    file: &Path,
    pad: usize,
    softmax: &[String],
    out: &Path,
) -> Result<Vec<Prediction>, PredictError> {
    let x = read_input(model, file, pad).map_err(PredictError::Data)?;
    let mut answers = Vec::new();
    for (name, value) in outputs(model, params, x).map_err(PredictError::Exec)? {
        let example = value.index_axis(Axis(0), 0).to_owned();
        answers.push(match example.ndim() {
            1 => {
                let probabilities = softmax.contains(&name);
                let scores = if probabilities { crate::reference::softmax(&example) } else { example };
                let mut top: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
                top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                top.truncate(5);
                Prediction::Classes { output: name, top, probabilities }
            }
            3 if matches!(example.shape()[2], 1 | 3) => {
                let path = out.join(format!("{name}.png"));
                write_map(&example, &path).map_err(|error| PredictError::Io { path: path.clone(), error })?;
                Prediction::Image { output: name, path }
            }
            _ => Prediction::Values {
                output: name,
                shape: example.shape().to_vec(),
                values: example.iter().copied().collect(),
            },
        });
    }
    Ok(answers)
}

/// A feature map `[h, w, 1 or 3]` as a PNG: one channel as |v| scaled to its maximum (edge maps
/// show both signs bright), three channels scaled from their minimum to their maximum.
fn write_map(map: &Tensor, path: &Path) -> Result<(), String> {
    let (h, w, c) = (map.shape()[0], map.shape()[1], map.shape()[2]);
    let bytes: Vec<u8> = if c == 1 {
        let max = map.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        map.iter().map(|v| (v.abs() / max * 255.0).round() as u8).collect()
    } else {
        let (lo, hi) = map.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let range = (hi - lo).max(1e-12);
        map.iter().map(|v| ((v - lo) / range * 255.0).round() as u8).collect()
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let tmp = path.with_extension("png.tmp");
    let color = if c == 1 { image::ExtendedColorType::L8 } else { image::ExtendedColorType::Rgb8 };
    image::save_buffer_with_format(&tmp, &bytes, w as u32, h as u32, color, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}
