//! The training loop: seeded shuffled batches through the training graph on the reference
//! executor, optimizer updates over the flat parameter store, batchnorm running statistics from
//! the batch statistics the step saved, evaluation on the inference graph every epoch, metrics
//! to CSV, weights and optimizer state saved atomically after every epoch.

use crate::augment::Pipeline;
use crate::backend::{Backend, Programs};
use crate::data::{epoch_order, Dataset, Split};
use crate::executor::{ExecError, Executor, Values};
use crate::loader::Loader;
use crate::optim::Optimizer;
use crate::params::{ParamId, Params};
use crate::reference::{self, Ctx, Tensor, View};
use crate::weights::{self, WeightsError};
use cnnc_compiler::elaborate::ModelInfo;
use cnnc_compiler::ir::op::{LossKind, Op};
use cnnc_compiler::ir::{Graph, NodeId, ValueId};
use cnnc_compiler::passes::training::{self, BoxGrid, PlanError, TargetSource, TrainingGraph};
use cnnc_compiler::passes::{inference, Options, Pipeline as PassPipeline};
use cnnc_compiler::train::{FeedKind, TrainSpec};
use std::collections::HashMap;
use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Refuses, before anything is allocated, a run whose parameters (with their gradients and two
/// slots of optimizer state) and training step (its planned arena at `batch`) need more memory
/// than the machine has available (`MemAvailable`; no check where the system does not say).
fn check_memory(tg: &training::TrainingGraph, batch: usize) -> Result<(), RunError> {
    fits_in_memory(&tg.graph, batch, &tg.grads.params, &tg.results(), 16)
}

/// Refuses, before anything is allocated, running `graph` at `batch` (computing `grads`, keeping
/// `keep`) when its parameters (`per_parameter` bytes each: 4 for the values alone) and the
/// step's planned arena need more memory than the machine has available (`MemAvailable`; no
/// check where the system does not say).
pub fn fits_in_memory(
    graph: &cnnc_compiler::ir::Graph,
    batch: usize,
    grads: &[(NodeId, cnnc_compiler::ir::ValueId)],
    keep: &[cnnc_compiler::ir::ValueId],
    per_parameter: u64,
) -> Result<(), RunError> {
    let Some(available) = available_memory() else { return Ok(()) };
    let layout = cnnc_compiler::params::ParamLayout::of(graph);
    let parameters = (layout.len() as u64).saturating_mul(per_parameter);
    // An impossible size does not even lower: count it as all of memory and more.
    let step = match cnnc_compiler::lir::lower(graph, batch.max(1), &layout, grads, keep) {
        Ok(l) => (cnnc_compiler::lir::plan(&l.program).size as u64).saturating_mul(4),
        Err(_) => u64::MAX / 2,
    };
    let needed = parameters.saturating_add(step);
    if needed > available {
        return Err(RunError::Memory { needed, parameters, step, batch, available });
    }
    Ok(())
}

/// The memory the system says is available, in bytes.
pub(crate) fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Why training stopped early.
#[derive(Debug)]
pub enum RunError {
    /// The train section cannot be run yet.
    Plan(PlanError),
    /// Data could not be loaded.
    Data(crate::data::DataError),
    /// A weights or state file could not be read or written.
    Weights(WeightsError),
    /// The graph could not run.
    Exec(ExecError),
    /// The loss or a gradient stopped being a finite number.
    NonFinite { epoch: usize, step: u64, layer: Option<String>, lr: f32, saved: PathBuf },
    /// Anything else the run cannot do.
    Unsupported(String),
    /// A bug in cnnc (a program that does not lower or run).
    Internal(String),
    /// A file could not be written.
    Io { path: PathBuf, error: String },
    /// The run needs more memory than the machine has available.
    Memory { needed: u64, parameters: u64, step: u64, batch: usize, available: u64 },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Plan(e) => write!(f, "{e}"),
            RunError::Data(e) => write!(f, "{e}"),
            RunError::Weights(e) => write!(f, "{e}"),
            RunError::Exec(e) => write!(f, "{e}"),
            RunError::NonFinite { epoch, step, layer, lr, saved } => {
                write!(f, "the loss became NaN or infinite at epoch {}, step {step}", epoch + 1)?;
                if let Some(layer) = layer {
                    write!(f, "; the first non-finite value appeared in `{layer}`")?;
                }
                write!(
                    f,
                    ".\n  help: lower the learning rate (it is {lr}); the last good weights are in `{}`",
                    saved.display()
                )
            }
            RunError::Unsupported(what) => write!(f, "{what}"),
            RunError::Internal(what) => write!(f, "internal error: {what} (this is a bug in cnnc; please report it)"),
            RunError::Io { path, error } => write!(f, "cannot write `{}`: {error}", path.display()),
            RunError::Memory { needed, parameters, step, batch, available } => {
                let gib = |b: &u64| *b as f64 / (1u64 << 30) as f64;
                write!(
                    f,
                    "this run needs about {:.1} GiB ({:.1} GiB for the parameters, with their gradients and \
                     the optimizer's state when training; {:.1} GiB for a step at batch {batch}), and the \
                     machine has {:.1} GiB available.\n  help: make the model or the batch smaller",
                    gib(needed),
                    gib(parameters),
                    gib(step),
                    gib(available)
                )
            }
        }
    }
}

impl std::error::Error for RunError {}

impl From<ExecError> for RunError {
    fn from(e: ExecError) -> Self {
        RunError::Exec(e)
    }
}

impl From<WeightsError> for RunError {
    fn from(e: WeightsError) -> Self {
        RunError::Weights(e)
    }
}

/// Metrics of one epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate at the epoch's start.
    pub lr: f32,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Training accuracy over the epoch (NaN without class labels).
    pub train_accuracy: f64,
    /// Loss on the test split.
    pub test_loss: f64,
    /// Accuracy on the test split.
    pub test_accuracy: f64,
    /// Training throughput.
    pub images_per_second: f64,
    /// Wall time of the epoch, evaluation included.
    pub seconds: f64,
    /// Share of the training time spent waiting for the loader threads.
    pub waiting: f64,
}

/// Where outputs go and how to start.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Folder for `weights.safetensors`, `state.safetensors`, `metrics.csv`.
    pub out: PathBuf,
    /// Continue from the weights and optimizer state in `out`.
    pub resume: bool,
    /// When the last save in `out` is incomplete, resume from the one before it.
    pub fallback: bool,
    /// Print nothing but errors.
    pub quiet: bool,
    /// What runs the steps and evaluations.
    pub backend: Backend,
    /// Pretrained weights to start from (parameters the file lacks start fresh).
    pub init: Option<PathBuf>,
    /// Parameters outside the trained model written with its weights at every save: a frozen
    /// body whose activations are cached ([`crate::frozen`]), so the weights file always holds
    /// the whole model.
    pub body: Option<Params>,
}

/// What a detector found in each image, beside each image's labelled objects.
pub type Found = (Vec<Vec<crate::detect::Detection>>, Vec<Vec<crate::detect::Object>>);

/// An output stacked over examples: its name, shape `[examples, ..]` and values.
pub type Stacked = (String, Vec<usize>, Vec<f32>);

/// A model prepared for training and evaluation: its training and inference graphs, parameter
/// store, gradient buffer and optimizer, and the executors that run them.
pub struct Session {
    /// The training graph.
    pub tg: TrainingGraph,
    /// The inference graph (batchnorm on running statistics, no dropout).
    pub infer: Graph,
    /// Whether accuracy is meaningful (class-index targets).
    pub classifies: bool,
    /// Current parameter values.
    pub params: Params,
    /// The optimizer and its state.
    pub opt: Optimizer,
    grads: Vec<f32>,
    /// `(parameter, its gradient's value)` for every trainable parameter with a gradient.
    grad_slots: Vec<(ParamId, ValueId)>,
    /// Each batchnorm's running statistics and what updates them.
    stats: Vec<RunningStats>,
    train_exec: Executor,
    seed: u64,
    /// How long building it took, per phase: passes, parameters, schedule.
    pub phases: Vec<(&'static str, std::time::Duration)>,
    backend: Backend,
    train_programs: Mutex<Programs>,
    infer_programs: Mutex<Programs>,
    /// Time spent summing gradients over the group of processes, and in how many steps.
    exchange: (std::time::Duration, u64),
    /// Examples of each identity in a batch, when a loss mines triplets in it.
    per_identity: Option<usize>,
    /// What a model of several inputs receives: pairs or triplets of examples.
    feed: Option<FeedKind>,
}

/// One batchnorm's batch statistics (values of the step) and running ones (parameters).
struct RunningStats {
    mean: ValueId,
    var: ValueId,
    running_mean: ParamId,
    running_var: ParamId,
    momentum: f32,
    /// Positions per example that the statistics are over.
    positions: usize,
}

/// Where a process's shard lies in a data-parallel step's global batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// The shard's first example's index in the global batch.
    pub first: usize,
    /// Examples in the global batch.
    pub total: usize,
}

/// What one training step gave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// The weighted total loss, averaged over the batch.
    pub loss: f64,
    /// Examples whose top class was the label.
    pub correct: usize,
    /// The most bytes that the step's values held at once.
    pub peak_bytes: usize,
}

/// The passes' options for `cnnc run` (none disabled).
fn pipeline() -> Result<PassPipeline, RunError> {
    PassPipeline::new(Options::default()).map_err(|e| RunError::Plan(PlanError::Pass(e)))
}

impl Session {
    /// Builds the training and inference graphs and initial parameters (from the spec's seed).
    pub fn new(model: &ModelInfo, spec: &TrainSpec) -> Result<Session, RunError> {
        let started = Instant::now();
        let tg = training::run(model, spec, false, &mut pipeline()?).map_err(RunError::Plan)?;
        let infer = inference::run(model, &mut pipeline()?).map_err(|e| RunError::Plan(PlanError::Pass(e)))?;
        let mut phases = vec![("passes", started.elapsed())];
        check_memory(&tg, spec.batch)?;
        let feed = spec.inputs.as_ref().map(|f| f.kind);
        // A same-or-not output of one value is right when its sign is.
        let binary = feed == Some(FeedKind::Pairs)
            && tg.first_loss == LossKind::SigmoidCrossEntropy
            && tg.graph.node(tg.prediction).shape.elements() == Some(1);
        let classifies = tg.first_loss == LossKind::SoftmaxCrossEntropy || binary;
        let started = Instant::now();
        let params = Params::init(&tg.graph, spec.seed);
        phases.push(("parameters", started.elapsed()));
        let started = Instant::now();
        let layout = params.layout.clone();
        let id = |n: NodeId| layout.id(&tg.graph.node(n).name);
        let grad_slots = tg.grads.params.iter().filter_map(|&(p, g)| Some((id(p)?, g))).collect();
        let stats = tg
            .stats
            .iter()
            .filter_map(|s| {
                let shape = &tg.graph.node(s.node).shape;
                Some(RunningStats {
                    mean: s.mean,
                    var: s.var,
                    running_mean: id(s.running_mean)?,
                    running_var: id(s.running_var)?,
                    momentum: s.momentum,
                    positions: shape.elements().unwrap_or(1) / shape.channels().max(1),
                })
            })
            .collect();
        let keep = tg.results();
        let mut keep_grads = keep.clone();
        keep_grads.extend(tg.grads.params.iter().map(|(_, g)| *g));
        let train_exec = Executor::new(&tg.graph, &layout, &keep_grads)?;
        let train_programs = Mutex::new(Programs::new(keep, tg.grads.params.clone()));
        let opt = Optimizer::new(spec.optimizer_spec(), spec.schedule_spec(), &layout);
        let grads = vec![0.0; layout.len()];
        phases.push(("schedule", started.elapsed()));
        let seed = spec.seed;
        let infer_keep = infer.outputs().iter().map(|(_, id)| ValueId::from(*id)).collect();
        let infer_programs = Mutex::new(Programs::new(infer_keep, Vec::new()));
        let backend = Backend::default();
        Ok(Session {
            tg,
            infer,
            classifies,
            params,
            opt,
            grads,
            grad_slots,
            stats,
            train_exec,
            seed,
            phases,
            backend,
            train_programs,
            infer_programs,
            exchange: Default::default(),
            per_identity: spec
                .loss
                .iter()
                .find(|t| t.call.name == "triplet_mining")
                .map(|t| t.call.num("per_identity", 4.0).max(1.0) as usize),
            feed,
        })
    }

    /// What runs the steps and evaluations.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs the steps and evaluations on `backend` from now on.
    pub fn set_backend(&mut self, backend: Backend) -> Result<(), RunError> {
        for programs in [&mut self.train_programs, &mut self.infer_programs] {
            let p = programs.get_mut().map_err(|_| RunError::Internal("a poisoned lock".into()))?;
            p.set_backend(backend).map_err(RunError::Internal)?;
        }
        self.backend = backend;
        Ok(())
    }

    /// Leaves out the kernel-program passes `names` (`cnnc bench --disable-pass`) in the programs
    /// compiled from now on.
    pub fn disable_passes(&mut self, names: &[String]) -> Result<(), RunError> {
        for programs in [&mut self.train_programs, &mut self.infer_programs] {
            let p = programs.get_mut().map_err(|_| RunError::Internal("a poisoned lock".into()))?;
            p.disable_passes(names);
        }
        Ok(())
    }

    /// Lowers and plans (and, on the JIT backend, compiles) the training program for batches of
    /// `batch` now, rather than at the first step (the reference backend needs nothing).
    pub fn compile(&mut self, batch: usize) -> Result<(), RunError> {
        if self.backend != Backend::Reference {
            let programs = self.train_programs.get_mut().map_err(|_| RunError::Internal("a poisoned lock".into()))?;
            programs.program(&self.tg.graph, &self.params, batch).map_err(RunError::Internal)?;
        }
        Ok(())
    }

    /// The memory plan of the training program for batches of `batch` (none on the reference
    /// backend).
    pub fn plan(&mut self, batch: usize) -> Option<cnnc_compiler::lir::MemoryPlan> {
        if self.backend == Backend::Reference {
            return None;
        }
        let programs = self.train_programs.get_mut().ok()?;
        programs.program(&self.tg.graph, &self.params, batch).ok().map(|m| m.plan.clone())
    }

    /// Times every op of every training step from now on into `profile`.
    pub fn profile_into(&mut self, profile: std::sync::Arc<std::sync::Mutex<crate::executor::Profile>>) {
        self.train_exec.profile_into(profile.clone());
        if let Ok(p) = self.train_programs.get_mut() {
            p.profile_into(profile);
        }
    }

    /// Checks that the data's labels fit the prediction: every class needs a score.
    pub fn check(&self, data: &Dataset) -> Result<(), RunError> {
        let sigmoid = self.outputs_of_losses().iter().any(|(_, kind, _, _)| *kind == LossKind::SigmoidCrossEntropy);
        self.check_targets(data)?;
        if let Some(kind) = self.feed {
            // The targets are made from the identities: same or not (0 or 1), or the anchor's.
            let identities: std::collections::BTreeSet<u64> = data.train.y.iter().map(|&y| y as u64).collect();
            if identities.len() < 2 {
                return Err(RunError::Unsupported(format!(
                    "{} need examples of at least two identities for their negatives, and the training data has {}",
                    kind.name(),
                    identities.len()
                )));
            }
            if kind == FeedKind::Pairs {
                return Ok(());
            }
        }
        if sigmoid && data.classes > 2 {
            return Err(RunError::Unsupported(format!(
                "sigmoid cross-entropy reads each label as 0 or 1, and the data has {} classes: use \
                 softmax_cross_entropy, or data with two classes",
                data.classes
            )));
        }
        let scores = self.tg.graph.node(self.tg.prediction).shape.0.first().copied().unwrap_or(0);
        if self.classifies && scores < data.classes {
            return Err(RunError::Unsupported(format!(
                "the data has {} classes but `{}` gives {scores} scores: make its last layer `dense({})`",
                data.classes,
                self.tg.graph.node(self.tg.prediction).name,
                data.classes
            )));
        }
        Ok(())
    }

    /// The inputs of a training step: the batch (or each input's part of a batch of tuples,
    /// `parts`), and every target input made from its targets.
    fn feeds<'a>(&self, x: View<'a>, parts: &'a [Tensor], targets: &'a [(NodeId, Tensor)]) -> Vec<(NodeId, View<'a>)> {
        let mut feeds = if parts.is_empty() {
            vec![(self.tg.inputs[0], x)]
        } else {
            self.tg.inputs.iter().zip(parts).map(|(&n, t)| (n, t.view())).collect()
        };
        feeds.extend(targets.iter().map(|(n, t)| (*n, t.view())));
        feeds
    }

    /// Views of each test example that evaluation reads: `asked` (the section's `views`) for a
    /// model of identities (mined triplets, pairs, triplets), else 1.
    pub fn views(&self, asked: usize) -> usize {
        if self.per_identity.is_some() || self.feed.is_some() {
            asked
        } else {
            1
        }
    }

    /// Examples a training example holds: 1, or 2 or 3 for a model fed pairs or triplets.
    pub fn arity(&self) -> usize {
        self.feed.map_or(1, FeedKind::arity)
    }

    /// What a model of several inputs receives, if it has several.
    pub fn feed(&self) -> Option<FeedKind> {
        self.feed
    }

    /// A batch of tuples from the loader's flat batch: `x` `[n·k, ..input]` becomes
    /// `[n, k, ..input]`, and the identities `y` `[n·k]` become each tuple's target: 1 for a pair
    /// of one identity and 0 for two, the anchor's identity for a triplet. For a model of one
    /// input, `x` and `y` as they are.
    pub fn tuples_of(&self, x: Tensor, y: Tensor) -> (Tensor, Tensor) {
        let Some(kind) = self.feed else { return (x, y) };
        let k = kind.arity();
        let n = x.shape().first().copied().unwrap_or(0) / k;
        let mut shape = vec![n, k];
        shape.extend_from_slice(&x.shape()[1..]);
        let x = x.into_shape_with_order(ndarray::IxDyn(&shape)).expect("a batch of whole tuples");
        let ids: Vec<f32> = y.iter().copied().collect();
        let y: Vec<f32> = (0..n)
            .map(|t| match kind {
                FeedKind::Pairs => f32::from(u8::from(ids[t * 2] == ids[t * 2 + 1])),
                FeedKind::Triplets => ids[t * 3],
            })
            .collect();
        (x, Tensor::from_shape_vec(ndarray::IxDyn(&[n]), y).expect("one target a tuple"))
    }

    /// What evaluation reads of `split`: its examples in order, or for a model of several inputs
    /// tuples of them, the same every epoch: each example an anchor once, and for pairs in as
    /// many rounds as make about 500 pairs (1 to 5; accuracy and AUC on pairs need many).
    fn eval_tuples(&self, split: &Split) -> Vec<usize> {
        let Some(kind) = self.feed else { return (0..split.len()).collect() };
        let labels: Vec<usize> = split.y.iter().map(|&y| y as usize).collect();
        (0..self.eval_rounds(split))
            .flat_map(|r| crate::metric::tuples(&labels, kind, self.seed ^ 0xe7a1, r, true))
            .collect()
    }

    /// How many times evaluation takes each example of `split` as an anchor.
    fn eval_rounds(&self, split: &Split) -> usize {
        match self.feed {
            Some(FeedKind::Pairs) => (500 / split.len().max(1)).clamp(1, 5),
            _ => 1,
        }
    }

    /// How many examples (or tuples) evaluation reads of `split`.
    pub fn evaluated(&self, split: &Split) -> usize {
        split.len() * self.eval_rounds(split)
    }

    /// For a model of pairs: the ROC AUC of its same-or-not scores (the first loss's output: a
    /// logit, or class 1's logit less class 0's) over evaluation's test pairs; `None` for other
    /// models, or without pairs of both kinds.
    pub fn pair_auc(&self, data: &Dataset, split: &Split, batch: usize) -> Result<Option<f64>, RunError> {
        if self.feed != Some(FeedKind::Pairs) {
            return Ok(None);
        }
        let id = self.prediction();
        let indices = self.eval_tuples(split);
        let mut scored: Vec<(f32, bool)> = Vec::new();
        for chunk in indices.chunks(batch.max(1) * 2) {
            let (x, y) = data.batch(split, chunk);
            let (x, y) = self.tuples_of(x, y);
            let values = self.infer_tuples(&self.params, x.view())?;
            let Some(pred) = values.get(id) else { return Ok(None) };
            for (row, &same) in pred.outer_iter().zip(y.iter()) {
                let v: Vec<f32> = row.iter().copied().collect();
                let score = if v.len() == 2 { v[1] - v[0] } else { v[0] };
                // As a distance: the nearer, the more alike.
                scored.push((-score, same > 0.5));
            }
        }
        Ok(crate::metric::verification(&scored).map(|v| v.auc))
    }

    /// Each input's examples of a batch of tuples `[n, k, ..input]`, input by input (none for a
    /// model of one input).
    fn parts(&self, x: &View) -> Vec<Tensor> {
        if self.feed.is_none() {
            return Vec::new();
        }
        (0..self.arity()).map(|k| x.index_axis(ndarray::Axis(1), k).to_owned()).collect()
    }

    /// What each target input receives for a batch whose targets are `y`: the labels in the
    /// input's shape, or the boxes encoded onto the detection loss's grid.
    fn targets(&self, y: View) -> Vec<(NodeId, Tensor)> {
        let n = y.shape().first().copied().unwrap_or(0);
        self.tg
            .targets
            .iter()
            .map(|t| {
                let shape: Vec<usize> =
                    std::iter::once(n).chain(self.tg.graph.node(t.node).shape.0.iter().copied()).collect();
                let value = match &t.from {
                    TargetSource::Labels => {
                        let values: Vec<f32> = y.iter().copied().collect();
                        let shape = if shape.iter().product::<usize>() == y.len() { shape } else { y.shape().to_vec() };
                        Tensor::from_shape_vec(ndarray::IxDyn(&shape), values).expect("labels fill their shape")
                    }
                    TargetSource::Boxes(g) => {
                        let grid = grid_of(g);
                        let per_example = y.len() / n.max(1);
                        let flat: Vec<f32> = y.iter().copied().collect();
                        let mut out = vec![0.0; n * grid.len()];
                        for (b, chunk) in out.chunks_exact_mut(grid.len().max(1)).enumerate() {
                            let objects = crate::detect::Object::rows(&flat[b * per_example..(b + 1) * per_example]);
                            grid.encode(&objects, chunk);
                        }
                        Tensor::from_shape_vec(ndarray::IxDyn(&shape), out).expect("the grid fills its shape")
                    }
                };
                (t.node, value)
            })
            .collect()
    }

    /// The weighted total loss of a run, each term averaged over the batch.
    fn loss(&self, values: &Values) -> f64 {
        self.tg.losses.iter().filter_map(|&(l, w)| values.get(l).map(|v| f64::from(w) * mean(v))).sum()
    }

    /// One training step on batch `x` with targets `y`: forward, backward, the optimizer's
    /// update with learning rate `lr`, and the running statistics. On a non-finite loss or
    /// gradient nothing is updated and the error names the first non-finite layer.
    pub fn step(&mut self, x: View, y: View, lr: f32) -> Result<StepOutcome, StepError> {
        let n = x.shape().first().copied().unwrap_or(0);
        self.step_part(x, y, lr, Part { first: 0, total: n })
    }

    /// One data-parallel training step ([`crate::dist`]): `x` and `y` are this process's shard of
    /// a global batch, `part` says where it lies in it. Every process's gradients, loss and count
    /// of correct answers are combined before the one optimizer step all of them take, so the
    /// outcome is the global batch's. Without a group it is [`Session::step`].
    pub fn step_part(&mut self, x: View, y: View, lr: f32, part: Part) -> Result<StepOutcome, StepError> {
        let n = x.shape().first().copied().unwrap_or(0);
        let ctx = Ctx { seed: self.seed, step: self.opt.t, first: part.first as u64, batch: n as u64 };
        let group = crate::dist::group();
        // Gradients sent in buckets during the backward pass (native programs only: the
        // reference executor gives them at its end).
        let bucket = if self.backend == Backend::Reference { 0 } else { crate::dist::bucket_len() };
        let share = n as f32 / part.total.max(1) as f32;
        if n == 0 {
            // A shard with no example (a global batch smaller than the group): nothing to add.
            let Some(g) = group else { return Err(StepError::Internal("a step on an empty batch".into())) };
            self.grads.fill(0.0);
            if bucket > 0 {
                crate::dist::Exchange::new(g, self.grads.len(), bucket, &[], 0.0).finish(&mut self.grads);
            }
            return self.combine(g, 0.0, 0, 0, part.total, lr, bucket > 0);
        }
        let targets = self.targets(y.view());
        let parts = self.parts(&x);
        let feeds = self.feeds(x.view(), &parts, &targets);
        let values = match self.backend {
            Backend::Reference => {
                let values = self.train_exec.run(&self.tg.graph, &self.params, &feeds, ctx).map_err(StepError::Exec)?;
                for &(pid, g) in &self.grad_slots {
                    if let Some(v) = values.get(g) {
                        let range = self.params.layout.entry(pid).range();
                        self.grads[range].iter_mut().zip(v.iter()).for_each(|(d, &s)| *d = s);
                    }
                }
                values
            }
            Backend::Lir | Backend::Jit => {
                let programs =
                    self.train_programs.get_mut().map_err(|_| StepError::Internal("a poisoned lock".into()))?;
                match group.filter(|_| bucket > 0) {
                    Some(g) => {
                        let writes =
                            programs.grad_writes(&self.tg.graph, &self.params, n).map_err(StepError::Internal)?;
                        let mut exchange = crate::dist::Exchange::new(g, self.grads.len(), bucket, writes, share);
                        let values = programs
                            .run_with(&self.tg.graph, &self.params, &mut self.grads, &feeds, ctx, &mut |k, grads| {
                                exchange.after(k, grads)
                            })
                            .map_err(StepError::Internal)?;
                        let started = Instant::now();
                        exchange.finish(&mut self.grads);
                        self.exchange.0 += started.elapsed();
                        values
                    }
                    None => programs
                        .run(&self.tg.graph, &self.params, &mut self.grads, &feeds, ctx)
                        .map_err(StepError::Internal)?,
                }
            }
        };
        let loss = self.loss(&values);
        let correct = match values.get(self.tg.prediction) {
            Some(p) if self.classifies => correct(p, &y),
            _ => 0,
        };
        if let Some(g) = group {
            return match self.combine(g, loss, correct, n, part.total, lr, bucket > 0) {
                Err(StepError::NonFinite { .. }) => {
                    Err(StepError::NonFinite { layer: self.first_non_finite(&feeds, ctx) })
                }
                Err(e) => Err(e),
                Ok(outcome) => {
                    // The statistics are the global batch's already (synchronized batchnorm).
                    self.update_running_stats(&values, part.total);
                    Ok(StepOutcome { peak_bytes: values.peak_bytes, ..outcome })
                }
            };
        }
        if !loss.is_finite() || self.grads.iter().any(|g| !g.is_finite()) {
            return Err(StepError::NonFinite { layer: self.first_non_finite(&feeds, ctx) });
        }
        self.opt.step(&mut self.params, &self.grads, lr);
        self.update_running_stats(&values, n);
        Ok(StepOutcome { loss, correct, peak_bytes: values.peak_bytes })
    }

    /// The end of a data-parallel step: this process's gradients (of its loss, averaged over its
    /// `n` examples) weighted by n / total and summed over the group (unless `summed` already, in
    /// buckets during the backward pass), with the loss and the count of correct answers; then
    /// the optimizer's step, the same on every process. A non-finite loss or gradient anywhere
    /// stops every process at the same step.
    #[allow(clippy::too_many_arguments)]
    fn combine(
        &mut self,
        g: &dyn crate::dist::Group,
        loss: f64,
        correct: usize,
        n: usize,
        total: usize,
        lr: f32,
        summed: bool,
    ) -> Result<StepOutcome, StepError> {
        let started = Instant::now();
        if !summed {
            let share = n as f32 / total.max(1) as f32;
            self.grads.iter_mut().for_each(|v| *v *= share);
            g.sum(&mut self.grads);
        }
        let mut totals = [(loss * n as f64) as f32, correct as f32];
        if !loss.is_finite() {
            totals[0] = f32::NAN;
        }
        g.sum(&mut totals);
        self.exchange.0 += started.elapsed();
        self.exchange.1 += 1;
        let loss = f64::from(totals[0]) / total.max(1) as f64;
        if !loss.is_finite() || self.grads.iter().any(|v| !v.is_finite()) {
            return Err(StepError::NonFinite { layer: None });
        }
        self.opt.step(&mut self.params, &self.grads, lr);
        Ok(StepOutcome { loss, correct: totals[1].round() as usize, peak_bytes: 0 })
    }

    /// Makes every process of the group start from rank 0's parameters, optimizer state and
    /// epoch (rank 0 alone reads `--init` and `--resume` files); returns the epoch.
    pub fn share_start(&mut self, epoch: usize) -> usize {
        let Some(g) = crate::dist::group() else { return epoch };
        g.broadcast(self.params.data_mut());
        g.broadcast(&mut self.opt.m);
        g.broadcast(&mut self.opt.v);
        // Two f32s carry each count exactly (high and low 24 bits).
        let split = |v: u64| [(v >> 24) as f32, (v & 0xFF_FFFF) as f32];
        let mut counts = [split(epoch as u64), split(self.opt.t)].concat();
        g.broadcast(&mut counts);
        let join = |h: f32, l: f32| ((h as u64) << 24) | l as u64;
        self.opt.t = join(counts[2], counts[3]);
        join(counts[0], counts[1]) as usize
    }

    /// Time spent summing gradients over the group of processes so far, and in how many steps.
    pub fn exchange(&self) -> (std::time::Duration, u64) {
        self.exchange
    }

    /// Examples of each identity in a batch, when a loss mines triplets in the batch: batches are
    /// then built of identities ([`crate::metric::identity_order`]).
    pub fn per_identity(&self) -> Option<usize> {
        self.per_identity
    }

    /// How the embeddings of the first triplet loss's output tell the identities of `split`
    /// apart: every pair's distance ([`crate::metric::verification`]), and one-shot
    /// identification. `None` when no loss mines triplets.
    pub fn verify(
        &self,
        data: &Dataset,
        split: &Split,
        batch: usize,
    ) -> Result<Option<crate::metric::Verified>, RunError> {
        let Some(id) = self.outputs_of_losses().iter().find(|o| o.1.embeds()).map(|o| o.0[0]) else {
            return Ok(None);
        };
        let Some((name, _)) = self.infer.outputs().iter().find(|(_, o)| *o == id) else { return Ok(None) };
        let outputs = self.outputs(data, split, batch)?;
        let Some((_, shape, emb)) = outputs.iter().find(|(n, _, _)| n == name) else { return Ok(None) };
        let d = shape[1..].iter().product::<usize>().max(1);
        let labels: Vec<usize> = split.y.iter().map(|&y| y as usize).collect();
        // Every pair, kept and sorted: 16 bytes each.
        let n = labels.len() as u64;
        let bytes = n * n.saturating_sub(1) / 2 * 16;
        if let Some(available) = available_memory().filter(|&a| bytes > a) {
            return Err(RunError::Unsupported(format!(
                "verification compares every pair of the {n} test examples (times `views`): {} MiB, and {} MiB are \
                 available; lower `views`, `unseen` or the test split",
                bytes >> 20,
                available >> 20
            )));
        }
        let pairs = crate::metric::pairs(emb, d, &labels);
        Ok(Some(crate::metric::Verified {
            verification: crate::metric::verification(&pairs),
            one_shot: crate::metric::one_shot(emb, d, &labels),
            pairs,
        }))
    }

    /// Whether the model has a training-mode batchnorm, whose statistics are over the batch.
    pub fn has_batch_stats(&self) -> bool {
        !self.stats.is_empty()
    }

    /// The inference graph's outputs on batch `x`, with these parameters, on the session's backend.
    /// A model of several inputs gets `x` in every input: each input's branch gives its outputs
    /// for the batch (the embeddings of a Siamese network).
    pub fn infer(&self, params: &Params, x: View) -> Result<Values, RunError> {
        let feeds: Vec<(NodeId, View)> = self.infer.inputs().iter().map(|&i| (i, x.view())).collect();
        self.infer_feeds(params, &feeds)
    }

    /// The inference graph's outputs with these inputs.
    fn infer_feeds(&self, params: &Params, feeds: &[(NodeId, View)]) -> Result<Values, RunError> {
        match self.backend {
            Backend::Reference => {
                let keep: Vec<ValueId> = self.infer.outputs().iter().map(|(_, id)| ValueId::from(*id)).collect();
                let exec = Executor::new(&self.infer, &params.layout, &keep)?;
                Ok(exec.run(&self.infer, params, feeds, Ctx::default())?)
            }
            Backend::Lir | Backend::Jit => {
                let mut programs =
                    self.infer_programs.lock().map_err(|_| RunError::Unsupported("a poisoned lock".into()))?;
                programs.run(&self.infer, params, &mut [], feeds, Ctx::default()).map_err(RunError::Unsupported)
            }
        }
    }

    /// The inference graph's outputs on a batch of tuples `x` `[n, k, ..input]`, each input
    /// receiving its examples.
    pub fn infer_tuples(&self, params: &Params, x: View) -> Result<Values, RunError> {
        let parts = self.parts(&x);
        let g = &self.tg.graph;
        let feeds = self
            .tg
            .inputs
            .iter()
            .zip(&parts)
            .map(|(&n, t)| {
                let name = &g.node(n).name;
                let id = self.infer.inputs().iter().copied().find(|&i| self.infer.node(i).name == *name);
                id.map(|i| (i, t.view())).ok_or_else(|| RunError::Internal(format!("no inference input `{name}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.infer_feeds(params, &feeds)
    }

    /// Mean loss and accuracy on `split`, on the inference graph.
    pub fn evaluate(&self, data: &Dataset, split: &Split, batch: usize) -> Result<(f64, f64), RunError> {
        let (mut loss, mut correct_count) = (0.0, 0usize);
        let outputs = self.outputs_of_losses();
        let k = self.arity();
        let indices = self.eval_tuples(split);
        for chunk in indices.chunks(batch.max(1) * k) {
            let (x, y) = data.batch(split, chunk);
            let (x, y) = self.tuples_of(x, y);
            let values = match self.feed {
                Some(_) => self.infer_tuples(&self.params, x.view())?,
                None => self.infer(&self.params, x.view())?,
            };
            let targets = self.targets(y.view());
            for (i, (ids, kind, weight, target)) in outputs.iter().enumerate() {
                let preds: Vec<View> = ids.iter().filter_map(|&id| values.get(id).map(|v| v.view())).collect();
                if preds.len() != ids.len() {
                    continue;
                }
                let pred = ndarray::concatenate(ndarray::Axis(1), &preds)
                    .map_err(|e| RunError::Internal(format!("joining the embeddings: {e}")))?;
                let Some((_, t)) = targets.iter().find(|(n, _)| n == target) else { continue };
                let rows = chunk.len() / k;
                loss += f64::from(*weight) * mean(&reference::loss(*kind, &pred.view(), &t.view())) * rows as f64;
                if i == 0 && self.classifies {
                    correct_count += correct(&pred, &y.view());
                }
            }
        }
        let n = (indices.len() / k).max(1) as f64;
        Ok((loss / n, if self.classifies { correct_count as f64 / n } else { f64::NAN }))
    }

    /// The first detection loss's output in the inference graph and its grid, if the section
    /// trains a detector.
    pub fn detector(&self) -> Option<(NodeId, crate::detect::Grid)> {
        // Loss terms in order: the first whose target input holds boxes.
        self.outputs_of_losses().into_iter().find_map(|(ids, _, _, target)| {
            match &self.tg.targets.iter().find(|t| t.node == target)?.from {
                TargetSource::Boxes(grid) => Some((ids[0], grid_of(grid))),
                TargetSource::Labels => None,
            }
        })
    }

    /// The boxes the detector finds in every example of `split` (scores of at least
    /// `threshold`, per-class non-max suppression at `iou`, at most 100 of a class per image, as
    /// COCO evaluates), beside the labelled objects.
    pub fn detections(
        &self,
        data: &Dataset,
        split: &Split,
        batch: usize,
        threshold: f32,
        iou: f32,
    ) -> Result<Found, RunError> {
        let Some((id, grid)) = self.detector() else {
            return Err(RunError::Unsupported("the section has no detection loss (yolo or localization)".into()));
        };
        let (mut found, mut truths) = (Vec::new(), Vec::new());
        let indices: Vec<usize> = (0..split.len()).collect();
        let per = split.target_len();
        for chunk in indices.chunks(batch.max(1)) {
            let (x, _) = data.batch(split, chunk);
            let values = self.infer(&self.params, x.view())?;
            let Some(pred) = values.get(id) else { continue };
            let flat: Vec<f32> = pred.iter().copied().collect();
            for (k, &i) in chunk.iter().enumerate() {
                let boxes =
                    crate::detect::nms(grid.decode(&flat[k * grid.len()..(k + 1) * grid.len()], threshold), iou);
                // At most 100 of each class, best first (COCO's maxDets, per image and category).
                let mut count = vec![0usize; grid.classes.max(1)];
                let kept = boxes
                    .into_iter()
                    .filter(|b| {
                        let c = &mut count[(b.class as usize).min(grid.classes.max(1) - 1)];
                        *c += 1;
                        *c <= 100
                    })
                    .collect();
                found.push(kept);
                truths.push(crate::detect::Object::rows(&split.t[i * per..(i + 1) * per]));
            }
        }
        Ok((found, truths))
    }

    /// Every output of the inference graph on every example of `split`, in order: name, shape
    /// `[examples, ..]` and values (what `--eval --output` writes).
    pub fn outputs(&self, data: &Dataset, split: &Split, batch: usize) -> Result<Vec<Stacked>, RunError> {
        let mut out: Vec<Stacked> = Vec::new();
        let indices: Vec<usize> = (0..split.len()).collect();
        for chunk in indices.chunks(batch.max(1)) {
            let (x, _) = data.batch(split, chunk);
            let values = self.infer(&self.params, x.view())?;
            for (k, (name, id)) in self.infer.outputs().iter().enumerate() {
                let Some(v) = values.get(*id) else { continue };
                if out.len() <= k {
                    out.push((
                        name.clone(),
                        vec![0].into_iter().chain(v.shape()[1..].iter().copied()).collect(),
                        Vec::new(),
                    ));
                }
                out[k].1[0] += chunk.len();
                out[k].2.extend(v.iter());
            }
        }
        Ok(out)
    }

    /// The inference graph's output that the first loss applies to.
    pub fn prediction(&self) -> NodeId {
        match self.outputs_of_losses().first() {
            Some((ids, _, _, _)) => ids[0],
            None => self.infer.outputs()[0].1,
        }
    }

    /// For each loss term: the inference graph's output it applies to (the three embeddings,
    /// in order, of a given triplet's), its kind and weight, and its target input in the training
    /// graph.
    fn outputs_of_losses(&self) -> Vec<(Vec<NodeId>, LossKind, f32, NodeId)> {
        let g = &self.tg.graph;
        self.tg
            .losses
            .iter()
            .filter_map(|&(l, w)| {
                let Op::Loss(op) = g.node(l).op else { return None };
                let (pred, target) = (g.operands(l)[0], g.operands(l)[1]);
                let preds = match op.kind {
                    LossKind::GivenTriplet { .. } => g.operands(pred).to_vec(),
                    _ => vec![pred],
                };
                let ids = preds
                    .iter()
                    .map(|&p| {
                        let name = g.outputs().iter().find(|(_, id)| *id == p).map(|(n, _)| n)?;
                        self.infer.outputs().iter().find(|(n, _)| n == name).map(|(_, id)| *id)
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some((ids, op.kind, w, target))
            })
            .collect()
    }

    /// Updates batchnorm running statistics from the batch statistics the step saved.
    fn update_running_stats(&mut self, values: &Values, batch: usize) {
        for s in &self.stats {
            let (Some(mean), Some(var)) = (values.get(s.mean), values.get(s.var)) else { continue };
            // The running variance is unbiased: the batch's times rows / (rows − 1).
            let rows = (batch * s.positions) as f32;
            let unbias = rows / (rows - 1.0).max(1.0);
            let m = s.momentum;
            for (r, &v) in self.params.slice_mut(s.running_mean).iter_mut().zip(mean.iter()) {
                *r = *r * (1.0 - m) + v * m;
            }
            for (r, &v) in self.params.slice_mut(s.running_var).iter_mut().zip(var.iter()) {
                *r = *r * (1.0 - m) + v * unbias * m;
            }
        }
    }

    /// Checks that the data gives what each target input is made from: class indices or values
    /// for the label inputs, boxes for the detection losses, with classes the loss scores.
    fn check_targets(&self, data: &Dataset) -> Result<(), RunError> {
        let boxes = data.target.len() == 2;
        let points = data.target.len() == 1;
        for t in &self.tg.targets {
            match &t.from {
                TargetSource::Labels if boxes => {
                    return Err(RunError::Unsupported(
                        "the data gives boxes (`detection`), and a loss of this section reads a class index or a \
                         value per example: detect with `yolo` or `localization`"
                            .into(),
                    ))
                }
                TargetSource::Labels if points => {
                    let node = self.tg.graph.node(t.node);
                    let reads = node.shape.elements().unwrap_or(0);
                    if reads != data.target[0] {
                        let users = self.tg.graph.users(t.node);
                        let output = users
                            .first()
                            .and_then(|&l| self.tg.graph.operands(l).first().copied())
                            .map(|p| self.tg.graph.node(p).name.clone())
                            .unwrap_or_default();
                        return Err(RunError::Unsupported(format!(
                            "the data gives {} landmarks ({} values) an example, and the loss compares `{output}`'s {reads} \
                             values with them: give it {} values",
                            data.target[0] / 2,
                            data.target[0],
                            data.target[0]
                        )));
                    }
                }
                TargetSource::Labels => {}
                TargetSource::Boxes(_) if !boxes => {
                    return Err(RunError::Unsupported(
                        "`yolo` and `localization` read boxes, and the data does not give them: read a folder of \
                         images and YOLO label files with `detection(\"DIR\")`"
                            .into(),
                    ))
                }
                TargetSource::Boxes(g) => {
                    let single = g.rows * g.cols * g.anchors.len() == 1;
                    for split in [&data.train, &data.test] {
                        let per = split.target_len();
                        for (i, origin) in split.origin.iter().enumerate() {
                            let objects = crate::detect::Object::rows(&split.t[i * per..(i + 1) * per]);
                            if let Some((k, o)) =
                                objects.iter().enumerate().find(|(_, o)| o.class as usize >= g.classes)
                            {
                                return Err(RunError::Unsupported(format!(
                                    "`{}`, line {}: class {} is not one of the loss's {} classes (0 to {})",
                                    origin.file.display(),
                                    origin.lines.get(k).copied().unwrap_or(0),
                                    o.class,
                                    g.classes,
                                    g.classes.saturating_sub(1)
                                )));
                            }
                            if single && objects.len() > 1 {
                                return Err(RunError::Unsupported(format!(
                                    "`{}`, line {}: `localization` finds one object per image, and this image has {}: \
                                     use `yolo` for several",
                                    origin.file.display(),
                                    origin.lines.get(1).copied().unwrap_or(0),
                                    objects.len()
                                )));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The first node, in execution order, whose value is not finite: the step is run again with
    /// every value kept.
    fn first_non_finite(&self, feeds: &[(NodeId, View)], ctx: Ctx) -> Option<String> {
        let exec = Executor::new(&self.tg.graph, &self.params.layout, &[]).ok()?;
        let values = exec.run(&self.tg.graph, &self.params, feeds, ctx).ok()?;
        let first = exec.order().find(|&id| values.get(id).is_some_and(|v| v.iter().any(|x| !x.is_finite())));
        first.map(|id| self.tg.graph.node(id).name.clone())
    }
}

/// Why a training step failed.
#[derive(Debug)]
pub enum StepError {
    /// The graph could not run.
    Exec(ExecError),
    /// The kernel program could not be built or run (a bug in cnnc).
    Internal(String),
    /// The loss or a gradient is not finite; the first layer where a non-finite value appeared.
    NonFinite { layer: Option<String> },
}

/// The runtime's grid for a detection loss's geometry.
fn grid_of(g: &BoxGrid) -> crate::detect::Grid {
    crate::detect::Grid { rows: g.rows, cols: g.cols, anchors: g.anchors.clone(), classes: g.classes }
}

fn mean(v: &Tensor) -> f64 {
    v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len().max(1) as f64
}

/// Examples whose top class is the label; for an output of one value (a same-or-not score), whose
/// sign says the label (positive for 1).
fn correct(pred: &Tensor, labels: &View) -> usize {
    pred.outer_iter()
        .zip(labels.iter())
        .filter(|(row, &label)| match row.len() {
            1 => (row.iter().next().copied().unwrap_or(0.0) > 0.0) == (label > 0.5),
            _ => argmax(row.iter().copied()) == label as usize,
        })
        .count()
}

fn argmax(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Paths of a run's outputs.
pub fn weights_path(out: &Path) -> PathBuf {
    out.join("weights.safetensors")
}

fn state_path(out: &Path) -> PathBuf {
    out.join("state.safetensors")
}

/// The save before the last: its weights and optimizer state, kept for `--resume --fallback`.
fn previous(path: &Path) -> PathBuf {
    path.with_extension("prev.safetensors")
}

/// Keeps the last save's two files as the previous save's, before a new save replaces them:
/// each linked (or copied) under a temporary name, then renamed, so that at every moment the
/// previous pair is whole or as it was.
fn keep_previous(out: &Path) -> Result<(), RunError> {
    // Only a whole pair (both files, one save mark) is worth keeping: a pair cut in two by a
    // kill must not replace the good one kept before it.
    let mark = |p: &Path| weights::metadata(p).and_then(|m| m.get("checkpoint").cloned());
    let (w, s) = (mark(&weights_path(out)), mark(&state_path(out)));
    if w.is_none() || w != s {
        return Ok(());
    }
    for path in [weights_path(out), state_path(out)] {
        if !path.exists() {
            continue;
        }
        let io = |e: std::io::Error| RunError::Io { path: path.clone(), error: e.to_string() };
        let name = previous(&path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = out.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&path, &tmp).is_err() {
            std::fs::copy(&path, &tmp).map_err(io)?;
        }
        std::fs::rename(&tmp, previous(&path)).map_err(io)?;
    }
    Ok(())
}

/// How a save treats the files already there.
#[derive(Clone, Copy, PartialEq)]
enum Saving {
    /// An epoch's end: the last pair (this run's) kept as the previous save, then both written.
    Epoch,
    /// The first save of a new run: what another run left is not kept as this run's previous.
    First,
    /// After divergence: the last good weights alone, for inspection; the optimizer state is
    /// not replaced, so `--resume` sees an incomplete save and can fall back to the last whole one.
    WeightsOnly,
}

fn save(
    session: &Session,
    body: Option<&Params>,
    out: &Path,
    model: &str,
    epochs_done: usize,
    how: Saving,
) -> Result<(), RunError> {
    // Never save what cannot be trained from: the last good save stays.
    let data = session.params.data();
    if let Some(e) = session.params.layout.entries().iter().find(|e| data[e.range()].iter().any(|v| !v.is_finite())) {
        return Err(RunError::Unsupported(format!(
            "`{}` is no longer finite after {epochs_done} epochs, so it was not saved; the last good save in `{}` \
             is kept (lower the learning rate, or add batchnorm)",
            e.name,
            out.display()
        )));
    }
    if how != Saving::First {
        keep_previous(out)?;
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "cnnc".to_string());
    meta.insert("model".to_string(), model.to_string());
    let mut params: Vec<weights::Named> = session.params.named().collect();
    if let Some(body) = body {
        let own = session.params.layout.clone();
        params.extend(body.named().filter(|(name, _, _)| own.id(name).is_none()));
        params.sort_by(|a, b| a.0.cmp(b.0));
    }
    // The weights and the optimizer state are two files, each replaced atomically; this mark,
    // the same in both, tells `--resume` whether they come from the same save. It is made of
    // what is saved (the epoch and the weights' checksum), so identical runs still write
    // identical bytes.
    let crc = weights::checksum(params.iter().copied());
    meta.insert("checkpoint".to_string(), format!("epoch {epochs_done}, weights {crc}"));
    weights::save_summed(&weights_path(out), &params, meta.clone(), crc)?;
    if how == Saving::WeightsOnly {
        return Ok(());
    }
    let opt = &session.opt;
    let names: Vec<(String, &[usize], &[f32])> = session
        .params
        .layout
        .entries()
        .iter()
        .filter(|e| e.trainable)
        .flat_map(|e| {
            let m = (!opt.m.is_empty()).then(|| (format!("m/{}", e.name), e.shape.as_slice(), &opt.m[e.range()]));
            let v = (!opt.v.is_empty()).then(|| (format!("v/{}", e.name), e.shape.as_slice(), &opt.v[e.range()]));
            m.into_iter().chain(v)
        })
        .collect();
    let state: Vec<weights::Named> = names.iter().map(|(n, s, v)| (n.as_str(), *s, *v)).collect();
    meta.insert("epochs".to_string(), epochs_done.to_string());
    meta.insert("t".to_string(), opt.t.to_string());
    weights::save(&state_path(out), &state, meta)?;
    Ok(())
}

fn resume(session: &mut Session, out: &Path, fallback: bool) -> Result<usize, RunError> {
    // Each file is read once (and its checksum checked): the save marks are in what is read.
    let read = |path: &Path| -> Result<weights::Contents, RunError> { Ok(weights::load(path)?) };
    let mark = |r: &weights::Contents| r.1.get("checkpoint").cloned();
    let last = (read(&weights_path(out)), read(&state_path(out)));
    let ((tensors, _), (state, meta), weights_file) = match last {
        (Ok(w), Ok(s)) if mark(&w) == mark(&s) => (w, s, weights_path(out)),
        (w, s) => {
            // A file of the last save that cannot be read is an error, unless asked to fall back.
            let (a, b) = match (w, s) {
                (Ok(w), Ok(s)) => (mark(&w), mark(&s)),
                (Err(e), _) | (_, Err(e)) if !fallback => return Err(e),
                _ => (Some("an unreadable file".to_string()), None),
            };
            let says = |m: &Option<String>| {
                m.as_deref().map_or("no save mark".to_string(), |m| m.split(',').next().unwrap_or(m).to_string())
            };
            let (pw, ps) = (previous(&weights_path(out)), previous(&state_path(out)));
            let before = match (read(&pw), read(&ps)) {
                (Ok(w), Ok(s)) if mark(&w) == mark(&s) && mark(&w).is_some() => Some((w, s)),
                _ => None,
            };
            match before {
                Some((w, s)) if fallback => {
                    eprintln!(
                        "note: the last save in `{}` is incomplete: resuming from the one before ({})",
                        out.display(),
                        says(&mark(&w))
                    );
                    (w, s, pw)
                }
                _ => {
                    let hint = before.map_or(String::new(), |(w, _)| {
                        format!("; resume from the save before it with --resume --fallback ({})", says(&mark(&w)))
                    });
                    return Err(RunError::Unsupported(format!(
                        "cannot resume from `{}`: its weights ({}) and its optimizer state ({}) come from different \
                         saves, as when a run is stopped while saving{hint}; or start again without --resume, or \
                         from these weights with --init {}",
                        out.display(),
                        says(&a),
                        says(&b),
                        weights_path(out).display()
                    )));
                }
            }
        }
    };
    weights::fill(&weights_file, &tensors, &mut session.params)?;
    let path = if weights_file == weights_path(out) { state_path(out) } else { previous(&state_path(out)) };
    let layout = session.params.layout.clone();
    let opt = &mut session.opt;
    for (key, (shape, values)) in state {
        let (buffer, name) = match key.split_once('/') {
            Some(("m", name)) if !opt.m.is_empty() => (&mut opt.m, name),
            Some(("v", name)) if !opt.v.is_empty() => (&mut opt.v, name),
            _ => continue,
        };
        let Some(id) = layout.id(name) else { continue };
        let e = layout.entry(id);
        if e.shape != shape {
            return Err(RunError::Weights(WeightsError::Shape {
                path: path.clone(),
                name: key.clone(),
                expected: e.shape.clone(),
                found: shape,
            }));
        }
        buffer[e.range()].copy_from_slice(&values);
    }
    opt.t = meta.get("t").and_then(|t| t.parse().ok()).unwrap_or(0);
    Ok(meta.get("epochs").and_then(|e| e.parse().ok()).unwrap_or(0))
}

fn write_metrics(path: &Path, history: &[EpochMetrics]) -> Result<(), RunError> {
    let mut text =
        String::from("epoch,lr,train_loss,train_accuracy,test_loss,test_accuracy,images_per_second,seconds\n");
    for m in history {
        text.push_str(&format!(
            "{},{},{:.6},{:.6},{:.6},{:.6},{:.1},{:.3}\n",
            m.epoch, m.lr, m.train_loss, m.train_accuracy, m.test_loss, m.test_accuracy, m.images_per_second, m.seconds
        ));
    }
    crate::atomic::write(path, text.as_bytes())
        .map_err(|e| RunError::Io { path: path.to_path_buf(), error: e.to_string() })
}

fn read_metrics(path: &Path) -> Vec<EpochMetrics> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<f64> = line.split(',').map(|v| v.parse().unwrap_or(f64::NAN)).collect();
            (f.len() == 8).then(|| EpochMetrics {
                epoch: f[0] as usize,
                lr: f[1] as f32,
                train_loss: f[2],
                train_accuracy: f[3],
                test_loss: f[4],
                test_accuracy: f[5],
                images_per_second: f[6],
                seconds: f[7],
                waiting: f64::NAN,
            })
        })
        .collect()
}

fn percent(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{:.2}%", v * 100.0)
    }
}

/// Trains as `spec` says, with training examples augmented by `pipeline` on loader threads;
/// returns every epoch's metrics (earlier ones too when resuming).
pub fn train(
    model: &ModelInfo,
    spec: &TrainSpec,
    data: &Dataset,
    pipeline: &Pipeline,
    opts: &RunOptions,
) -> Result<(Session, Vec<EpochMetrics>), RunError> {
    let mut session = Session::new(model, spec)?;
    // Under `mpirun`, rank 0 alone reads and writes files, prints and evaluates.
    let (rank, ranks) = crate::dist::place();
    let leader = rank == 0;
    let quiet = opts.quiet || !leader;
    if ranks > 1 && session.per_identity().is_some() {
        return Err(RunError::Unsupported(format!(
            "`triplet_mining` mines its triplets among the whole batch, and {ranks} processes would each mine in their \
             own share of it: train it as one process, without mpirun"
        )));
    }
    if ranks > 1 && session.has_batch_stats() {
        let last = data.train.len() % spec.batch;
        let smallest = if last == 0 { spec.batch.min(data.train.len()) } else { last };
        if smallest < ranks {
            return Err(RunError::Unsupported(format!(
                "{ranks} processes share each batch, and the {} has {smallest} example{}: a process would have none \
                 for its part of the batchnorm statistics; change the batch size or --limit so that every batch holds \
                 at least {ranks}",
                if last == 0 { "batch" } else { "last batch of each epoch" },
                if smallest == 1 { "" } else { "s" }
            )));
        }
    }
    if !leader {
        session.set_backend(opts.backend)?;
        session.check(data)?;
        return train_epochs(session, model, spec, data, pipeline, opts, Vec::new(), 0);
    }
    if !opts.resume {
        // A new run: another run's previous save must not pass for this one's.
        for path in [weights_path(&opts.out), state_path(&opts.out)] {
            let _ = std::fs::remove_file(previous(&path));
        }
    }
    session.set_backend(opts.backend)?;
    session.check(data)?;
    std::fs::create_dir_all(&opts.out).map_err(|e| RunError::Io { path: opts.out.clone(), error: e.to_string() })?;
    // What earlier runs that were killed while saving left behind.
    crate::atomic::clean(
        &opts.out,
        &[
            "weights.safetensors",
            "state.safetensors",
            "weights.prev.safetensors",
            "state.prev.safetensors",
            "metrics.csv",
            "metrics.png",
            "cache.safetensors",
        ],
    );
    let metrics_path = opts.out.join("metrics.csv");
    let (start, mut history) = if opts.resume {
        (resume(&mut session, &opts.out, opts.fallback)?, read_metrics(&metrics_path))
    } else {
        (0, Vec::new())
    };
    history.retain(|m| m.epoch <= start);
    if let (Some(init), false) = (&opts.init, opts.resume) {
        let fresh = weights::init_from(init, &mut session.params)?;
        if !quiet {
            let total = session.params.layout.entries().iter().filter(|e| !e.constant).count();
            println!("initialized {} of {total} parameters from {}", total - fresh.len(), init.display());
            if !fresh.is_empty() {
                println!("  fresh (not in the file): {}", fresh.join(", "));
            }
        }
    }
    train_epochs(session, model, spec, data, pipeline, opts, history, start)
}

/// The epochs of [`train`] from `start`, on every process of a group (rank 0 alone evaluates,
/// prints and saves).
#[allow(clippy::too_many_arguments)]
fn train_epochs(
    mut session: Session,
    model: &ModelInfo,
    spec: &TrainSpec,
    data: &Dataset,
    pipeline: &Pipeline,
    opts: &RunOptions,
    mut history: Vec<EpochMetrics>,
    start: usize,
) -> Result<(Session, Vec<EpochMetrics>), RunError> {
    let (rank, ranks) = crate::dist::place();
    let leader = rank == 0;
    let quiet = opts.quiet || !leader;
    let start = session.share_start(start);
    let metrics_path = opts.out.join("metrics.csv");
    let mut saved_once = false;
    // Triplet mining reads identities × per_identity batches: about one epoch of examples,
    // dealt whole batches at a time.
    let identities: Vec<usize> = data.train.y.iter().map(|&y| y as usize).collect();
    let per_identity = session.per_identity();
    // A model of several inputs reads tuples of `k` examples, `k` indices each in the order.
    let (feed, k) = (session.feed(), session.arity());
    let order_of = |epoch: usize| match (feed, per_identity) {
        (Some(kind), _) => crate::metric::tuples(&identities, kind, spec.seed, epoch, false),
        (None, Some(per)) => crate::metric::identity_order(&identities, spec.batch, per, spec.seed, epoch),
        (None, None) => epoch_order(data.train.len(), spec.seed, epoch),
    };
    let steps_per_epoch = order_of(0).len().div_ceil(spec.batch * k) as u64;
    let total_steps = steps_per_epoch * spec.epochs as u64;
    let show_bar = !quiet && std::io::stderr().is_terminal();
    let loader = Loader { data, pipeline, workers: spec.workers };
    // An embedding is evaluated on `views` views of each test example (positives for identities
    // of one image).
    let eval_data = pipeline.for_eval_views(data, session.views(spec.views));
    for epoch in start..spec.epochs {
        let started = Instant::now();
        let lr = session.opt.lr_at(epoch, session.opt.t, total_steps);
        let bar = progress_bar(show_bar, steps_per_epoch, epoch, spec.epochs);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        let order = order_of(epoch);
        // Each process loads its shard of every global batch.
        // (in whole tuples).
        let global: Vec<&[usize]> = order.chunks(spec.batch.max(1) * k).collect();
        let parts: Vec<Part> = global
            .iter()
            .map(|c| Part { first: crate::dist::shard(c.len() / k, rank, ranks).start, total: c.len() / k })
            .collect();
        let ranges: Vec<std::ops::Range<usize>> = global
            .iter()
            .map(|c| {
                let r = crate::dist::shard(c.len() / k, rank, ranks);
                r.start * k..r.end * k
            })
            .collect();
        let shards: Vec<&[usize]> = global.iter().zip(&ranges).map(|(c, r)| &c[r.clone()]).collect();
        // What the earlier processes load of each batch: an example repeated across shares is
        // augmented as one process would augment its copies.
        let before: Vec<&[usize]> = global.iter().zip(&ranges).map(|(c, r)| &c[..r.start]).collect();
        let mut step_index = 0;
        let waited = loader.batches_after(&shards, &before, epoch, |x, y, waited| {
            let part = parts[step_index];
            step_index += 1;
            let (x, y) = session.tuples_of(x, y);
            let batch = part.total;
            let step = session.opt.t;
            let lr = session.opt.lr_at(epoch, step, total_steps);
            let outcome = match session.step_part(x.view(), y.view(), lr, part) {
                Ok(o) => o,
                Err(StepError::Exec(e)) => return Err(e.into()),
                Err(StepError::Internal(e)) => return Err(RunError::Internal(e)),
                Err(StepError::NonFinite { layer }) => {
                    // The weights before this step, when they are still finite numbers.
                    if leader && session.params.data().iter().all(|v| v.is_finite()) {
                        save(&session, opts.body.as_ref(), &opts.out, &model.name, epoch, Saving::WeightsOnly)?;
                    }
                    return Err(RunError::NonFinite { epoch, step, layer, lr, saved: weights_path(&opts.out) });
                }
            };
            loss_sum += outcome.loss * batch as f64;
            correct += outcome.correct;
            seen += batch;
            if let Some(bar) = &bar {
                let elapsed = started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!(
                    "loss {:.4}  acc {}  {:.0} img/s  waiting for data {:.0}%",
                    loss_sum / seen as f64,
                    percent(if session.classifies { correct as f64 / seen as f64 } else { f64::NAN }),
                    seen as f64 / elapsed,
                    100.0 * waited.as_secs_f64() / elapsed
                ));
                bar.inc(1);
            }
            Ok(())
        })?;
        let train_seconds = started.elapsed().as_secs_f64();
        if !leader {
            continue;
        }
        let (test_loss, test_accuracy) = session.evaluate(&eval_data, &eval_data.test, spec.batch)?;
        let verified = session.verify(&eval_data, &eval_data.test, spec.batch)?;
        let test_map = match session.detector() {
            Some((_, grid)) => {
                let (found, truths) = session.detections(&eval_data, &eval_data.test, spec.batch, 0.01, 0.5)?;
                Some(crate::detect::average_precision(&found, &truths, grid.classes, 0.5).1)
            }
            None => None,
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: if session.classifies { correct as f64 / seen.max(1) as f64 } else { f64::NAN },
            test_loss,
            // For an embedding: verification accuracy at the best threshold.
            test_accuracy: match verified.as_ref().and_then(|v| v.verification.as_ref()) {
                Some(v) => v.accuracy,
                None => test_accuracy,
            },
            images_per_second: seen as f64 / train_seconds.max(1e-9),
            seconds: started.elapsed().as_secs_f64(),
            waiting: waited.as_secs_f64() / train_seconds.max(1e-9),
        };
        if let (false, Some(verified)) = (quiet, &verified) {
            let one_shot = &verified.one_shot.0;
            let (auc, accuracy) = verified.verification.as_ref().map_or((f64::NAN, f64::NAN), |v| (v.auc, v.accuracy));
            println!(
                "epoch {:>3}/{}  lr {:.4}  loss {:.4}  test loss {:.4}  test AUC {:.4}  verification {:>7}  one-shot {:>7}  \
                 {:>6.0} img/s  {:.1} s",
                m.epoch,
                spec.epochs,
                m.lr,
                m.train_loss,
                m.test_loss,
                auc,
                percent(accuracy),
                percent(*one_shot),
                m.images_per_second,
                m.seconds
            );
        } else if let (false, Some(map)) = (quiet, test_map) {
            println!(
                "epoch {:>3}/{}  lr {:.4}  loss {:.4}  test loss {:.4}  test mAP@0.5 {:>7}  {:>6.0} img/s  {:.1} s",
                m.epoch,
                spec.epochs,
                m.lr,
                m.train_loss,
                m.test_loss,
                percent(map),
                m.images_per_second,
                m.seconds
            );
        } else if !quiet {
            println!(
                "epoch {:>3}/{}  lr {:.4}  loss {:.4}  acc {:>7}  test loss {:.4}  test acc {:>7}  {:>6.0} img/s  {:.1} s",
                m.epoch,
                spec.epochs,
                m.lr,
                m.train_loss,
                percent(m.train_accuracy),
                m.test_loss,
                percent(m.test_accuracy),
                m.images_per_second,
                m.seconds
            );
        }
        if ranks > 1 && !quiet {
            let (time, steps) = session.exchange();
            let per_step = time.as_secs_f64() / steps.max(1) as f64;
            let step = train_seconds / steps_per_epoch.max(1) as f64;
            let bucket = if session.backend == Backend::Reference { 0 } else { crate::dist::bucket_len() };
            let how = if bucket == 0 {
                "summed after the backward pass".to_string()
            } else {
                format!("sent in buckets of {} KB during the backward pass", bucket / 256)
            };
            println!(
                "          {ranks} processes: {:.2} MB of gradients {how}; waiting for the sums took {:.2} ms per step \
                 ({:.1}% of a step)",
                session.grads.len() as f64 * 4.0 / 1e6,
                per_step * 1e3,
                100.0 * per_step / step.max(1e-12)
            );
            session.exchange = Default::default();
        }
        history.push(m);
        let how = if saved_once || opts.resume { Saving::Epoch } else { Saving::First };
        save(&session, opts.body.as_ref(), &opts.out, &model.name, epoch + 1, how)?;
        saved_once = true;
        write_metrics(&metrics_path, &history)?;
        crate::plot::write(&opts.out.join("metrics.png"), &history)
            .map_err(|e| RunError::Io { path: opts.out.join("metrics.png"), error: e })?;
    }
    Ok((session, history))
}

fn progress_bar(show: bool, steps: u64, epoch: usize, epochs: usize) -> Option<indicatif::ProgressBar> {
    show.then(|| bar(steps, format!("epoch {}/{}", epoch + 1, epochs)))
}

/// A progress bar of `steps` steps headed `prefix`, with the message and the time left.
pub(crate) fn bar(steps: u64, prefix: String) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(steps);
    let style = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}  ETA {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix);
    bar
}
