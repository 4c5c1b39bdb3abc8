//! Inference on a file: an image is read as the model's input (after the same padding and
//! scaling as its training data), the model runs in inference mode, and each output becomes
//! either the top classes with their scores or, for a feature map, a PNG image.

use crate::augment::Pipeline;
use crate::backend::{Backend, Programs};
use crate::data::{load_image_as, DataError};
use crate::executor::{ExecError, Executor};
use crate::params::Params;
use crate::preprocess::Prep;
use crate::reference::{Ctx, Tensor, View};
use cnnc_compiler::ir::{Graph, NodeId, ValueId};
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
    /// A kernel program could not be built or run (a bug in cnnc).
    Internal(String),
    /// An output of the model reads several inputs, and prediction gives one example.
    Inputs(String),
}

impl std::fmt::Display for PredictError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PredictError::Data(e) => write!(f, "{e}"),
            PredictError::Exec(e) => write!(f, "{e}"),
            PredictError::Io { path, error } => write!(f, "cannot write `{}`: {error}", path.display()),
            PredictError::Internal(e) => write!(f, "internal error: {e} (this is a bug in cnnc; please report it)"),
            PredictError::Inputs(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PredictError {}

/// Reads `file` as one data example of shape `data` (`[h, w, c]`): an image of that size less
/// `pad` on each side (any size when `prep` resizes), scaled to [0, 1] and read as `prep` says,
/// then zero-padded as the training data was.
pub fn read_example(data: &[usize], file: &Path, pad: usize, prep: &Prep) -> Result<Vec<f32>, DataError> {
    let [h, w, c] = data[..] else {
        return Err(DataError::Unsupported { what: format!("--predict reads images; this model's data is {data:?}") });
    };
    if h <= 2 * pad || w <= 2 * pad {
        return Err(DataError::Unsupported { what: format!("padding {pad} leaves no image inside {data:?}") });
    }
    let (ih, iw) = (h - 2 * pad, w - 2 * pad);
    let values = load_image_as(file, &[ih, iw, c], prep)?;
    let mut x = vec![0f32; h * w * c];
    for r in 0..ih {
        let dst = ((r + pad) * w + pad) * c;
        x[dst..dst + iw * c].copy_from_slice(&values[r * iw * c..(r + 1) * iw * c]);
    }
    Ok(x)
}

/// Whether `file` is read as a tensor (`.npy`, `.safetensors`) rather than as an image.
pub fn is_tensor_file(file: &Path) -> bool {
    matches!(file.extension().and_then(|e| e.to_str()), Some("npy" | "safetensors"))
}

/// Reads a tensor file given to `--predict`: the model's input as is (no padding, scaling, crop
/// or normalization), of the input's shape (one example) or `[n, ..input]` (`n` examples),
/// float32 or float64, every value finite. A `.safetensors` file holds one tensor, or several of
/// which the one named `name` (the model's input) is read.
pub fn read_tensors(file: &Path, input: &[usize], name: &str) -> Result<Vec<Vec<f32>>, DataError> {
    let bad = |detail: String| DataError::BadHeader { path: file.to_path_buf(), detail };
    let (shape, values): (Vec<usize>, Vec<f32>) = match file.extension().and_then(|e| e.to_str()) {
        Some("npy") => {
            use ndarray_npy::{ReadNpyError, ReadNpyExt};
            let open = || {
                std::fs::File::open(file).map_err(|e| DataError::Io { path: file.to_path_buf(), error: e.to_string() })
            };
            match ArrayD::<f32>::read_npy(open()?) {
                Ok(a) => (a.shape().to_vec(), a.iter().copied().collect()),
                Err(ReadNpyError::WrongDescriptor(_)) => match ArrayD::<f64>::read_npy(open()?) {
                    Ok(a) => (a.shape().to_vec(), a.iter().map(|&v| v as f32).collect()),
                    Err(ReadNpyError::WrongDescriptor(d)) => {
                        return Err(bad(format!("its values are {d}; --predict reads float32 or float64 arrays")))
                    }
                    Err(e) => return Err(bad(e.to_string())),
                },
                Err(e) => return Err(bad(e.to_string())),
            }
        }
        _ => {
            use safetensors::{Dtype, SafeTensors};
            let bytes = crate::atomic::read(file)
                .map_err(|e| DataError::Io { path: file.to_path_buf(), error: e.to_string() })?;
            let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
            let names = st.names();
            let chosen = match names.as_slice() {
                [one] => one.to_string(),
                _ if names.contains(&name) => name.to_string(),
                _ => {
                    return Err(bad(format!(
                        "it holds {} tensors and none is named `{name}`, the model's input",
                        names.len()
                    )))
                }
            };
            let view = st.tensor(&chosen).map_err(|e| bad(e.to_string()))?;
            let values = match view.dtype() {
                d @ (Dtype::F32 | Dtype::F64) => crate::weights::floats(d, view.data()).unwrap_or_default(),
                d => return Err(bad(format!("tensor `{chosen}` is {d:?}; --predict reads F32 or F64 tensors"))),
            };
            (view.shape().to_vec(), values)
        }
    };
    let examples = if shape == input {
        1
    } else if shape.len() == input.len() + 1 && shape[1..] == *input {
        shape[0]
    } else {
        return Err(DataError::Unsupported {
            what: format!(
                "`{}` holds a tensor of shape {shape:?}; the model's input is {input:?} (or a batch of them, [n, {}])",
                file.display(),
                input.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
            ),
        });
    };
    if examples == 0 {
        return Err(DataError::Empty { path: file.to_path_buf() });
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("value {i} is {}; inputs must be finite", values[i])));
    }
    let size = values.len() / examples;
    Ok(values.chunks_exact(size).map(|c| c.to_vec()).collect())
}

/// Runs the inference graph `graph` on the batch `x` on `backend` (with `programs`, the lowered
/// programs of the graph, for the kernel-IR interpreter) and returns each output's value.
pub fn outputs(
    graph: &Graph,
    params: &Params,
    x: View,
    backend: Backend,
    programs: &mut Programs,
) -> Result<Vec<(String, Tensor)>, PredictError> {
    one_input_each(graph)?;
    // A Siamese network's inputs each get the examples: every branch gives its outputs.
    let feeds: Vec<(NodeId, View)> = graph.inputs().iter().map(|&i| (i, x.view())).collect();
    let values = run_feeds(graph, params, &feeds, backend, programs)?;
    Ok(graph.outputs().iter().filter_map(|(name, id)| values.get(*id).map(|v| (name.clone(), v.clone()))).collect())
}

/// The values of `graph`'s outputs on `feeds` (each input's batch), on `backend`.
fn run_feeds(
    graph: &Graph,
    params: &Params,
    feeds: &[(NodeId, View)],
    backend: Backend,
    programs: &mut Programs,
) -> Result<crate::executor::Values, PredictError> {
    match backend {
        Backend::Reference => {
            let targets: Vec<ValueId> = graph.outputs().iter().map(|(_, id)| ValueId::from(*id)).collect();
            let exec = Executor::new(graph, &params.layout, &targets).map_err(PredictError::Exec)?;
            exec.run(graph, params, feeds, Ctx::default()).map_err(PredictError::Exec)
        }
        Backend::Lir | Backend::Jit => {
            programs.set_backend(backend).map_err(PredictError::Internal)?;
            programs.run(graph, params, &mut [], feeds, Ctx::default()).map_err(PredictError::Internal)
        }
    }
}

/// Prediction gives every input of a model the same examples, which answers for outputs that are
/// computed from one input each (the branches of a Siamese network), and for no other.
pub fn one_input_each(graph: &Graph) -> Result<(), PredictError> {
    if graph.inputs().len() < 2 {
        return Ok(());
    }
    for (name, id) in graph.outputs() {
        let read = graph.inputs_read(*id);
        if read.len() > 1 {
            let names: Vec<String> = read.iter().map(|&i| format!("`{}`", graph.node(i).name)).collect();
            return Err(PredictError::Inputs(format!(
                "the output `{name}` is computed from {} inputs ({}), and prediction reads one example: train and \
                 evaluate the pair with `cnnc run`, or predict with a model of one branch",
                read.len(),
                names.join(", ")
            )));
        }
    }
    Ok(())
}

/// The outputs of `graph` on the batch `x`, whose examples may be larger than the graph's
/// input: the graph is then made fully convolutional for their size ([`outputs_slid`]).
pub fn outputs_at_size(
    graph: &Graph,
    params: &Params,
    x: View,
    backend: Backend,
) -> Result<Vec<(String, Tensor)>, PredictError> {
    let declared = graph.inputs().first().map(|&i| graph.node(i).shape.0.as_slice()).unwrap_or_default();
    if &x.shape()[1..] == declared {
        let keep = graph.outputs().iter().map(|(_, id)| ValueId::from(*id)).collect();
        return outputs(graph, params, x, backend, &mut Programs::new(keep, Vec::new()));
    }
    outputs_slid(graph, params, x, backend)
}

/// The outputs of `graph` made fully convolutional for the size of `x`'s examples (the
/// sliding-windows pass), run with the same weights: each output a map of the windows'
/// results, even at the graph's own size (one window).
pub fn outputs_slid(
    graph: &Graph,
    params: &Params,
    x: View,
    backend: Backend,
) -> Result<Vec<(String, Tensor)>, PredictError> {
    let slid = cnnc_compiler::passes::sliding::run(graph, &x.shape()[1..])
        .map_err(|e| PredictError::Data(DataError::Unsupported { what: e.to_string() }))?;
    // The same values under the same names; dense weights in their filters' shape.
    let params = Params::same_values(&slid, params).map_err(PredictError::Internal)?;
    let keep = slid.outputs().iter().map(|(_, id)| ValueId::from(*id)).collect();
    outputs(&slid, &params, x, backend, &mut Programs::new(keep, Vec::new()))
}

/// How to predict: the models (one set of weights each), the pipeline that turns a data example
/// into model inputs, test-time crops, and which outputs are softmax logits.
pub struct Predictor<'a> {
    /// The model's inference graph.
    pub graph: &'a Graph,
    /// Weights of each member of the ensemble.
    pub models: &'a [Params],
    /// Evaluation transform: centre or multi-crop, normalization.
    pub pipeline: &'a Pipeline,
    /// Zero padding the training data added around images.
    pub pad: usize,
    /// How image files are read (resized, colours converted), as the train section's
    /// `preprocess` says.
    pub prep: &'a Prep,
    /// Number of crops: 1, 5 or 10.
    pub crops: usize,
    /// Outputs whose scores are softmax logits (averaged as probabilities).
    pub softmax: &'a [String],
    /// What runs the model.
    pub backend: Backend,
    /// The name of the model's input (the tensor read from a `.safetensors` file of several).
    pub input_name: &'a str,
    /// The lowered programs of `graph` by batch size, compiled once for all the files.
    pub programs: std::sync::Mutex<Programs>,
}

/// The programs a [`Predictor`] on `graph` runs: one set for every file predicted.
pub fn programs_for(graph: &Graph) -> std::sync::Mutex<Programs> {
    let keep = graph.outputs().iter().map(|(_, id)| ValueId::from(*id)).collect();
    std::sync::Mutex::new(Programs::new(keep, Vec::new()))
}

impl Predictor<'_> {
    /// Every output of the model on one file, at full precision, one list per example: an image
    /// is one example; a tensor file (`.npy`, `.safetensors`) is the model's input as is, one
    /// example or a batch. Vectors are averaged over crops and models (softmax outputs as
    /// probabilities); other outputs come from the first model and crop.
    pub fn outputs(&self, file: &Path) -> Result<Vec<Vec<(String, Tensor)>>, PredictError> {
        if is_tensor_file(file) {
            if self.crops > 1 {
                return Err(PredictError::Data(DataError::Unsupported {
                    what: format!(
                        "--multi-crop crops images; `{}` is a tensor, given to the model as its input as is",
                        file.display()
                    ),
                }));
            }
            let examples = read_tensors(file, &self.pipeline.input, self.input_name).map_err(PredictError::Data)?;
            return examples.into_iter().map(|x| self.average(&[x])).collect();
        }
        let example = read_example(&self.pipeline.data, file, self.pad, self.prep).map_err(PredictError::Data)?;
        Ok(vec![self.average(&self.pipeline.crops(&example, self.crops))?])
    }

    /// The first model's outputs on one image an input: `files` pairs each input's name with
    /// its image (a model fed pairs, comparing two images).
    pub fn joint_outputs(&self, files: &[(&str, &Path)]) -> Result<Vec<(String, Tensor)>, PredictError> {
        let mut shape = vec![1];
        shape.extend_from_slice(&self.pipeline.input);
        let mut xs = Vec::new();
        for (name, file) in files {
            let example = read_example(&self.pipeline.data, file, self.pad, self.prep).map_err(PredictError::Data)?;
            let crop = self.pipeline.crops(&example, 1).into_iter().next().unwrap_or_default();
            let x = ArrayD::from_shape_vec(IxDyn(&shape), crop)
                .map_err(|e| PredictError::Internal(format!("an input does not fill the model's input: {e}")))?;
            let input = self.graph.inputs().iter().copied().find(|&i| self.graph.node(i).name == *name);
            let input = input.ok_or_else(|| PredictError::Internal(format!("no input `{name}`")))?;
            xs.push((input, x));
        }
        if xs.len() != self.graph.inputs().len() {
            return Err(PredictError::Internal(format!(
                "{} images for {} inputs",
                xs.len(),
                self.graph.inputs().len()
            )));
        }
        let feeds: Vec<(NodeId, View)> = xs.iter().map(|(i, x)| (*i, x.view())).collect();
        let params = self.models.first().ok_or_else(|| PredictError::Internal("no weights".into()))?;
        let mut programs = self.programs.lock().map_err(|_| PredictError::Internal("a poisoned lock".into()))?;
        let values = run_feeds(self.graph, params, &feeds, self.backend, &mut programs)?;
        Ok(self
            .graph
            .outputs()
            .iter()
            .filter_map(|(name, id)| values.get(*id).map(|v| (name.clone(), v.index_axis(Axis(0), 0).to_owned())))
            .collect())
    }

    /// The model's outputs on `crops` (each an input), averaged over crops and models.
    fn average(&self, crops: &[Vec<f32>]) -> Result<Vec<(String, Tensor)>, PredictError> {
        let mut sums: Vec<(String, Tensor)> = Vec::new();
        let mut programs = self.programs.lock().map_err(|_| PredictError::Internal("a poisoned lock".into()))?;
        let mut count = 0.0f32;
        for params in self.models {
            for crop in crops {
                let mut shape = vec![1];
                shape.extend_from_slice(&self.pipeline.input);
                let x = ArrayD::from_shape_vec(IxDyn(&shape), crop.clone())
                    .map_err(|e| PredictError::Internal(format!("an input does not fill the model's input: {e}")))?;
                let values = outputs(self.graph, params, x.view(), self.backend, &mut programs)?;
                count += 1.0;
                for (name, value) in values {
                    let mut v = value.index_axis(Axis(0), 0).to_owned();
                    if v.ndim() == 1 && self.softmax.contains(&name) {
                        v = crate::reference::softmax(&v.view());
                    }
                    match sums.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, s)) if v.ndim() == 1 => *s += &v,
                        Some(_) => {}
                        None => sums.push((name, v)),
                    }
                }
            }
        }
        Ok(sums
            .into_iter()
            .map(|(name, sum)| if sum.ndim() == 1 { (name, sum / count.max(1.0)) } else { (name, sum) })
            .collect())
    }

    /// The answers for a file's outputs (from [`Predictor::outputs`]).
    pub fn answers(&self, outputs: Vec<(String, Tensor)>, out: &Path) -> Result<Vec<Prediction>, PredictError> {
        let mut answers = Vec::new();
        for (name, value) in outputs {
            answers.push(match value.ndim() {
                1 => {
                    let scores = value;
                    let mut top: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
                    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                    top.truncate(5);
                    let probabilities = self.softmax.contains(&name);
                    Prediction::Classes { output: name, top, probabilities }
                }
                3 if matches!(value.shape()[2], 1 | 3) => {
                    let path = out.join(format!("{name}.png"));
                    write_map(&value, &path).map_err(|error| PredictError::Io { path: path.clone(), error })?;
                    Prediction::Image { output: name, path }
                }
                _ => Prediction::Values {
                    output: name,
                    shape: value.shape().to_vec(),
                    values: value.iter().copied().collect(),
                },
            });
        }
        Ok(answers)
    }
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
    crate::atomic::write_png(path, &bytes, w, h, c)
}
