//! Training a head on a frozen body's cached activations (the train section's `cache true`).
//! The body ([`cnnc_compiler::frozen::split`]) runs once per example, training and held-out,
//! and what it gives is kept in `OUT/cache.safetensors`, keyed by a hash of the body's program,
//! its weights and its inputs, so a later run on the same body and data reads it back instead.
//! Every epoch then trains the head alone, on those activations.

use crate::augment::Pipeline;
use crate::backend::Backend;
use crate::data::{Dataset, Split};
use crate::params::Params;
use crate::train::RunError;
use cnnc_compiler::elaborate::ModelInfo;
use cnnc_compiler::passes::{inference, Options, Pipeline as Passes};
use cnnc_compiler::train::TrainSpec;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// A head ready to train on cached activations.
pub struct Cached {
    /// The head as a model: its input is where the body ends.
    pub model: ModelInfo,
    /// The body's activations of every example, with the labels.
    pub data: Dataset,
    /// The head's pipeline (nothing to do: the activations are its input as they are).
    pub pipeline: Pipeline,
    /// The body's weights (from `--init`, else the seed's), to join the head's in the weights file.
    pub body: Params,
    /// Where the body ends, and its shape.
    pub cut: (String, Vec<usize>),
    /// The body's parameters that `--init`'s file did not have (they start from the seed).
    pub fresh: Vec<String>,
    /// The activations were read back from the cache file, not computed.
    pub reused: bool,
    /// Seconds spent computing (or reading) them.
    pub seconds: f64,
}

/// The file the activations are kept in.
pub fn cache_path(out: &Path) -> PathBuf {
    out.join("cache.safetensors")
}

fn plan(e: impl std::fmt::Display) -> RunError {
    RunError::Internal(e.to_string())
}

/// Splits `model` at its frozen body, runs the body on every example of `data` (as `pipeline`
/// presents it for evaluation), or reads the activations back from `OUT/cache.safetensors` when
/// the same body saw the same inputs, and returns the head to train. The body's weights come
/// from `init`, or when resuming from the run's own weights file (which holds the whole model),
/// else from the seed.
pub fn prepare(
    model: &ModelInfo,
    spec: &TrainSpec,
    data: &Dataset,
    pipeline: &Pipeline,
    (init, resume): (Option<&Path>, bool),
    backend: Backend,
    out: &Path,
) -> Result<Cached, RunError> {
    let started = std::time::Instant::now();
    let split = cnnc_compiler::frozen::split(&model.graph).map_err(RunError::Unsupported)?;
    let body_model = ModelInfo { graph: split.body, ..model.clone() };
    let body = inference::run(&body_model, &mut Passes::new(Options::default()).map_err(plan)?).map_err(plan)?;
    let mut params = Params::init(&body, spec.seed);
    let own = crate::train::weights_path(out);
    let from = if resume { Some(own.as_path()) } else { init };
    let wanted = params.layout.entries().iter().any(|e| !e.constant);
    let fresh = match from {
        Some(file) if wanted => crate::weights::init_from(file, &mut params)?,
        _ => Vec::new(),
    };
    // The body's inputs, as evaluation presents them (no augmentation: the section has none).
    let f = data.features().max(1);
    let inputs = |s: &Split| -> Vec<f32> { s.x.chunks(f).flat_map(|e| pipeline.eval(e)).collect() };
    let (train_x, test_x) = (inputs(&data.train), inputs(&data.test));
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.to_text().hash(&mut hasher);
    for v in params.data().iter().chain(&train_x).chain(&test_x) {
        v.to_bits().hash(&mut hasher);
    }
    let key = format!("{:016x}", hasher.finish());
    let shape = split.shape.0.clone();
    let width: usize = shape.iter().product();
    let path = cache_path(out);
    let (train, test, reused) = match read_cache(&path, &key, width) {
        Some((train, test)) if train.len() == data.train.len() * width && test.len() == data.test.len() * width => {
            (train, test, true)
        }
        _ => {
            let mut programs = crate::predict::programs_for(&body).into_inner().map_err(plan)?;
            let input = pipeline.input.iter().product::<usize>().max(1);
            let mut run = |x: &[f32]| -> Result<Vec<f32>, RunError> {
                let mut all = Vec::with_capacity(x.len() / input * width);
                for chunk in x.chunks(input * spec.batch.max(1)) {
                    let n = chunk.len() / input;
                    let dims: Vec<usize> = std::iter::once(n).chain(pipeline.input.iter().copied()).collect();
                    let view = ndarray::ArrayViewD::from_shape(ndarray::IxDyn(&dims), chunk).map_err(plan)?;
                    let values = crate::predict::outputs(&body, &params, view, backend, &mut programs)
                        .map_err(|e| RunError::Internal(e.to_string()))?;
                    let (_, features) = values.into_iter().next().ok_or_else(|| plan("the body gave nothing"))?;
                    all.extend(features.iter());
                }
                Ok(all)
            };
            let (train, test) = (run(&train_x)?, run(&test_x)?);
            let (train_dims, test_dims) = ([data.train.len(), width], [data.test.len(), width]);
            let named: Vec<crate::weights::Named> =
                vec![("train", &train_dims[..], &train[..]), ("test", &test_dims[..], &test[..])];
            let mut meta = std::collections::HashMap::new();
            meta.insert("key".to_string(), key);
            meta.insert("cut".to_string(), split.cut.clone());
            std::fs::create_dir_all(out).map_err(|e| RunError::Io { path: out.to_path_buf(), error: e.to_string() })?;
            crate::weights::save(&path, &named, meta)?;
            (train, test, false)
        }
    };
    let data = Dataset {
        train: data.train.with_x(train),
        test: data.test.with_x(test),
        shape: shape.clone(),
        pad: 0,
        ..data.clone()
    };
    let pipeline = Pipeline::new(Vec::new(), &shape, &shape, &Split::default(), spec.seed).map_err(RunError::Data)?;
    Ok(Cached {
        model: ModelInfo { graph: split.head, ..model.clone() },
        data,
        pipeline,
        body: params,
        fresh,
        cut: (split.cut, shape),
        reused,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The cached activations in `path` if its key is `key`.
fn read_cache(path: &Path, key: &str, width: usize) -> Option<(Vec<f32>, Vec<f32>)> {
    if !path.exists() {
        return None;
    }
    let (mut tensors, meta) = crate::weights::load(path).ok()?;
    if meta.get("key").map(String::as_str) != Some(key) {
        return None;
    }
    let (train_shape, train) = tensors.remove("train")?;
    let (test_shape, test) = tensors.remove("test")?;
    (train_shape.get(1) == Some(&width) && test_shape.get(1) == Some(&width)).then_some((train, test))
}
