//! The training loop: seeded shuffled batches through the training graph on the reference
//! executor, optimizer updates, batchnorm running statistics, evaluation on the test split every
//! epoch, metrics to CSV, weights and optimizer state saved atomically after every epoch.

use crate::augment::Pipeline;
use crate::data::{epoch_order, Dataset, Split};
use crate::executor::{ExecError, Executor, Values};
use crate::loader::Loader;
use crate::optim::Optimizer;
use crate::params::Params;
use crate::reference::{Ctx, Tensor};
use crate::weights::{self, WeightsError};
use cnnc_compiler::elaborate::ModelInfo;
use cnnc_compiler::ir::op::{LossKind, Op};
use cnnc_compiler::ir::NodeId;
use cnnc_compiler::passes::training::{self, PlanError, TrainingGraph};
use cnnc_compiler::train::TrainSpec;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    /// A file could not be written.
    Io { path: PathBuf, error: String },
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
            RunError::Io { path, error } => write!(f, "cannot write `{}`: {error}", path.display()),
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
    /// Print nothing but errors.
    pub quiet: bool,
}

/// A model prepared for training and evaluation.
pub struct Session {
    /// The training graph.
    pub tg: TrainingGraph,
    /// The model input fed with examples.
    pub input: NodeId,
    /// The output the first loss applies to.
    pub prediction: NodeId,
    /// Whether accuracy is meaningful (class-index targets).
    pub classifies: bool,
    /// Current parameter values.
    pub params: Params,
}

impl Session {
    /// Builds the training graph and initial parameters (from the spec's seed).
    pub fn new(model: &ModelInfo, spec: &TrainSpec) -> Result<Session, RunError> {
        let tg = training::run(model, spec, false).map_err(RunError::Plan)?;
        let inputs = model.graph.inputs();
        if inputs.len() != 1 {
            return Err(RunError::Unsupported(format!(
                "`cnnc run` feeds models with one input; `{}` has {}",
                model.name,
                inputs.len()
            )));
        }
        let first_loss = tg.losses[0];
        let prediction = tg.graph.operands(first_loss)[0];
        let classifies = matches!(tg.graph.node(first_loss).op, Op::Loss(l) if l.kind == LossKind::SoftmaxCrossEntropy);
        let params = Params::init(&tg.graph, spec.seed);
        Ok(Session { input: inputs[0], prediction, classifies, params, tg })
    }

    /// Checks that the data's labels fit the prediction: every class needs a score.
    pub fn check(&self, data: &Dataset) -> Result<(), RunError> {
        let scores = self.tg.graph.node(self.prediction).shape.0.first().copied().unwrap_or(0);
        if self.classifies && scores < data.classes {
            return Err(RunError::Unsupported(format!(
                "the data has {} classes but `{}` gives {scores} scores: make its last layer `dense({})`",
                data.classes,
                self.tg.graph.node(self.prediction).name,
                data.classes
            )));
        }
        Ok(())
    }

    fn feeds(&self, x: Tensor, y: Tensor) -> Vec<(NodeId, Tensor)> {
        let mut feeds = vec![(self.input, x)];
        if let Some(label) = self.tg.label {
            feeds.push((label, y));
        }
        feeds
    }

    /// The weighted total loss of a run, and each example's loss summed over terms.
    fn loss(&self, values: &Values) -> f64 {
        let mut total = 0.0;
        for &l in &self.tg.losses {
            let weight = match self.tg.graph.node(l).op {
                Op::Loss(op) => f64::from(op.weight),
                _ => 1.0,
            };
            if let Some(v) = values.get(l) {
                total += weight * v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len().max(1) as f64;
            }
        }
        total
    }

    fn correct(&self, values: &Values, labels: &Tensor) -> usize {
        let Some(pred) = values.get(self.prediction) else { return 0 };
        pred.outer_iter()
            .zip(labels.iter())
            .filter(|(row, &label)| argmax(row.iter().copied()) == label as usize)
            .count()
    }

    /// Mean loss and accuracy on `split`, in inference mode.
    pub fn evaluate(&self, data: &Dataset, split: &Split, batch: usize) -> Result<(f64, f64), ExecError> {
        let mut targets = self.tg.losses.clone();
        targets.push(self.prediction);
        let exec = Executor::new(&self.tg.graph, &targets);
        let (mut loss, mut correct) = (0.0, 0usize);
        let indices: Vec<usize> = (0..split.len()).collect();
        for chunk in indices.chunks(batch.max(1)) {
            let (x, y) = data.batch(split, chunk);
            let values = exec.run(&self.params, &self.feeds(x, y.clone()), Ctx::eval())?;
            loss += self.loss(&values) * chunk.len() as f64;
            correct += self.correct(&values, &y);
        }
        let n = split.len().max(1) as f64;
        Ok((loss / n, if self.classifies { correct as f64 / n } else { f64::NAN }))
    }

    /// Updates batchnorm running statistics from a training run's batch statistics.
    fn update_running_stats(&mut self, values: &Values) {
        let graph = &self.tg.graph;
        for id in graph.node_ids() {
            let Op::BatchNorm(bn) = &graph.node(id).op else { continue };
            let ops = graph.operands(id);
            let Some(x) = values.get(ops[0]) else { continue };
            let (mean, var) = crate::reference::batch_statistics(x);
            let rows = (x.len() / mean.len().max(1)) as f32;
            let unbiased = var * (rows / (rows - 1.0).max(1.0));
            let m = bn.momentum;
            for (port, stat) in [(3, mean), (4, unbiased)] {
                let name = &graph.node(ops[port]).name;
                if let Some(r) = self.params.values.get_mut(name) {
                    *r = &*r * (1.0 - m) + &(stat.into_dyn() * m);
                }
            }
        }
    }

    /// The first node, in execution order, whose value is not finite.
    fn first_non_finite(&self, exec: &Executor, values: &Values) -> Option<String> {
        exec.order()
            .iter()
            .find(|&&id| values.get(id).is_some_and(|v| v.iter().any(|x| !x.is_finite())))
            .map(|&id| self.tg.graph.node(id).name.clone())
    }
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

fn save(session: &Session, opt: &Optimizer, out: &Path, model: &str, epochs_done: usize) -> Result<(), RunError> {
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "cnnc".to_string());
    meta.insert("model".to_string(), model.to_string());
    weights::save(&weights_path(out), &session.params.values, meta.clone())?;
    let mut state = BTreeMap::new();
    for (k, v) in &opt.m {
        state.insert(format!("m/{k}"), v.clone());
    }
    for (k, v) in &opt.v {
        state.insert(format!("v/{k}"), v.clone());
    }
    meta.insert("epochs".to_string(), epochs_done.to_string());
    meta.insert("t".to_string(), opt.t.to_string());
    weights::save(&state_path(out), &state, meta)?;
    Ok(())
}

fn resume(session: &mut Session, opt: &mut Optimizer, out: &Path) -> Result<usize, RunError> {
    weights::load_into(&weights_path(out), &mut session.params)?;
    let (state, meta) = weights::load(&state_path(out))?;
    for (k, v) in state {
        if let Some(name) = k.strip_prefix("m/") {
            opt.m.insert(name.to_string(), v);
        } else if let Some(name) = k.strip_prefix("v/") {
            opt.v.insert(name.to_string(), v);
        }
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
    let tmp = path.with_extension("csv.tmp");
    let io = |e: std::io::Error| RunError::Io { path: path.to_path_buf(), error: e.to_string() };
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
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
    session.check(data)?;
    let mut opt = Optimizer::new(spec.optimizer.as_ref(), spec.schedule.as_ref());
    std::fs::create_dir_all(&opts.out).map_err(|e| RunError::Io { path: opts.out.clone(), error: e.to_string() })?;
    let metrics_path = opts.out.join("metrics.csv");
    let (start, mut history) = if opts.resume {
        (resume(&mut session, &mut opt, &opts.out)?, read_metrics(&metrics_path))
    } else {
        (0, Vec::new())
    };
    history.retain(|m| m.epoch <= start);
    let graph = session.tg.graph.clone();
    let exec = Executor::new(&graph, &[]);
    let steps_per_epoch = data.train.len().div_ceil(spec.batch) as u64;
    let total_steps = steps_per_epoch * spec.epochs as u64;
    let grads: Vec<(String, NodeId)> =
        session.tg.grads.params.iter().map(|&(p, g)| (session.tg.graph.node(p).name.clone(), g)).collect();
    let show_bar = !opts.quiet && std::io::stderr().is_terminal();
    let loader = Loader { data, pipeline, workers: spec.workers };
    let eval_data = pipeline.for_eval(data);
    for epoch in start..spec.epochs {
        let started = Instant::now();
        let lr = opt.lr_at(epoch, opt.t, total_steps);
        let bar = progress_bar(show_bar, steps_per_epoch, epoch, spec.epochs);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        let order = epoch_order(data.train.len(), spec.seed, epoch);
        let waited = loader.epoch(&order, spec.batch, epoch, |x, y, waited| {
            let batch = y.len();
            let step = opt.t;
            let lr = opt.lr_at(epoch, step, total_steps);
            let ctx = Ctx { training: true, seed: spec.seed, step, node: 0 };
            let values = exec.run(&session.params, &session.feeds(x, y.clone()), ctx)?;
            let loss = session.loss(&values);
            let grads: Vec<(String, Tensor)> =
                grads.iter().filter_map(|(name, g)| values.get(*g).map(|v| (name.clone(), v.clone()))).collect();
            if !loss.is_finite() || grads.iter().any(|(_, g)| g.iter().any(|v| !v.is_finite())) {
                let layer = session.first_non_finite(&exec, &values);
                save(&session, &opt, &opts.out, &model.name, epoch)?;
                return Err(RunError::NonFinite { epoch, step, layer, lr, saved: weights_path(&opts.out) });
            }
            opt.step(&mut session.params, &grads, lr);
            session.update_running_stats(&values);
            loss_sum += loss * batch as f64;
            correct += session.correct(&values, &y);
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
        let (test_loss, test_accuracy) = session.evaluate(&eval_data, &eval_data.test, spec.batch)?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: if session.classifies { correct as f64 / seen.max(1) as f64 } else { f64::NAN },
            test_loss,
            test_accuracy,
            images_per_second: seen as f64 / train_seconds.max(1e-9),
            seconds: started.elapsed().as_secs_f64(),
            waiting: waited.as_secs_f64() / train_seconds.max(1e-9),
        };
        if !opts.quiet {
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
        history.push(m);
        save(&session, &opt, &opts.out, &model.name, epoch + 1)?;
        write_metrics(&metrics_path, &history)?;
        crate::plot::write(&opts.out.join("metrics.png"), &history)
            .map_err(|e| RunError::Io { path: opts.out.join("metrics.png"), error: e })?;
    }
    Ok((session, history))
}

fn progress_bar(show: bool, steps: u64, epoch: usize, epochs: usize) -> Option<indicatif::ProgressBar> {
    if !show {
        return None;
    }
    let bar = indicatif::ProgressBar::new(steps);
    let style = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}  ETA {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
    Some(bar)
}
