//! What `cnnc bench` measures: a model made runnable (phases timed), then one step at a time on a
//! preloaded synthetic batch. Also the host's CPU and ISA flags and the process's peak memory.

use crate::backend::{Backend, Programs};
use crate::executor::{Executor, Profile};
use crate::params::Params;
use crate::reference::{Ctx, Tensor};
use crate::train::{Session, StepError};
use cnnc_compiler::elaborate::ModelInfo;
use cnnc_compiler::ir::{Graph, ValueId};
use cnnc_compiler::passes::{inference, Options, Pipeline as PassPipeline};
use cnnc_compiler::train::TrainSpec;
use ndarray::{ArrayD, IxDyn};
use std::fmt;
use std::time::{Duration, Instant};

/// Training steps or inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// Forward, backward and parameter update.
    Train,
    /// Forward in inference mode.
    Infer,
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkloadKind::Train => "training",
            WorkloadKind::Infer => "inference",
        })
    }
}

/// A model ready to step on a fixed batch.
pub struct Workload {
    run: Run,
    x: Tensor,
    y: Tensor,
    phases: Vec<(&'static str, Duration)>,
    params_bytes: usize,
    peak_bytes: usize,
    batch: usize,
}

struct Inference {
    graph: Graph,
    params: Params,
    exec: Executor,
    programs: Option<Programs>,
}

enum Run {
    Train(Box<Session>),
    Infer(Box<Inference>),
}

impl Workload {
    /// Builds the graph for `kind`, initial parameters and a synthetic batch of `batch` examples.
    pub fn new(
        model: &ModelInfo,
        spec: Option<&TrainSpec>,
        kind: WorkloadKind,
        batch: usize,
        backend: Backend,
        disabled: &[String],
    ) -> Result<Self, String> {
        let mut phases = Vec::new();
        let seed = spec.map_or(0, |s| s.seed);
        let t = Instant::now();
        let run = match (kind, spec) {
            (WorkloadKind::Train, Some(spec)) => {
                let mut session = Session::new(model, spec).map_err(|e| e.to_string())?;
                session.set_backend(backend).map_err(|e| e.to_string())?;
                session.disable_passes(disabled).map_err(|e| e.to_string())?;
                phases.clone_from(&session.phases);
                let t = Instant::now();
                session.compile(batch).map_err(|e| e.to_string())?;
                if backend != Backend::Reference {
                    phases.push(("lowering + memory plan + codegen", t.elapsed()));
                }
                Run::Train(Box::new(session))
            }
            (WorkloadKind::Train, None) => return Err("training needs a train section".into()),
            (WorkloadKind::Infer, _) => {
                let mut pipe = PassPipeline::new(Options::default()).map_err(|e| e.to_string())?;
                let graph = inference::run(model, &mut pipe).map_err(|e| e.to_string())?;
                phases.push(("passes", t.elapsed()));
                let t = Instant::now();
                let params = Params::init(&graph, seed);
                phases.push(("parameters", t.elapsed()));
                let t = Instant::now();
                let keep: Vec<ValueId> = graph.outputs().iter().map(|(_, id)| ValueId::from(*id)).collect();
                let exec = Executor::new(&graph, &params.layout, &keep).map_err(|e| e.to_string())?;
                let mut programs = match backend {
                    Backend::Reference => None,
                    Backend::Lir | Backend::Jit => {
                        let mut p = Programs::new(keep, Vec::new());
                        p.set_backend(backend)?;
                        p.disable_passes(disabled);
                        Some(p)
                    }
                };
                phases.push(("schedule", t.elapsed()));
                if let Some(p) = programs.as_mut() {
                    let t = Instant::now();
                    p.program(&graph, &params, batch)?;
                    phases.push(("lowering + memory plan + codegen", t.elapsed()));
                }
                Run::Infer(Box::new(Inference { graph, params, exec, programs }))
            }
        };
        let graph = match &run {
            Run::Train(s) => &s.tg.graph,
            Run::Infer(i) => &i.graph,
        };
        let input = *graph.inputs().first().ok_or("the model has no input")?;
        let mut shape = vec![batch];
        // A model fed pairs or triplets steps on batches of tuples, `[batch, k, ..input]`.
        if let Run::Train(s) = &run {
            if s.arity() > 1 {
                shape.push(s.arity());
            }
        }
        shape.extend_from_slice(&graph.node(input).shape.0);
        let n: usize = shape.iter().product();
        let x = ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|i| synthetic(i as u64)).collect())
            .map_err(|e| e.to_string())?;
        let y = match &run {
            Run::Train(s) => {
                let label = s.tg.label.map(|l| s.tg.graph.node(l).shape.0.clone()).unwrap_or_default();
                let mut shape = vec![batch];
                shape.extend_from_slice(&label);
                let classes = s.tg.graph.node(s.tg.prediction).shape.0.first().copied().unwrap_or(1).max(1);
                let n: usize = shape.iter().product();
                let values: Vec<f32> = if label.is_empty() {
                    (0..n).map(|i| (i % classes) as f32).collect()
                } else {
                    (0..n).map(|i| 0.5 + 0.5 * synthetic(i as u64 + 7)).collect()
                };
                ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| e.to_string())?
            }
            Run::Infer(_) => ArrayD::zeros(IxDyn(&[batch])),
        };
        let params_bytes = match &run {
            Run::Train(s) => s.params.data().len() * 4,
            Run::Infer(i) => i.params.data().len() * 4,
        };
        Ok(Workload { run, x, y, phases, params_bytes, peak_bytes: 0, batch })
    }

    /// Time spent in each phase from checked IR to runnable, in order ("parameters" is the
    /// initialization of the weights, which a model loaded from a file replaces).
    pub fn phases(&self) -> &[(&'static str, Duration)] {
        &self.phases
    }

    /// One training step (forward, backward, update) or one inference.
    pub fn step(&mut self) -> Result<(), String> {
        let peak = match &mut self.run {
            Run::Train(session) => match session.step(self.x.view(), self.y.view(), 1e-4) {
                Ok(o) => o.peak_bytes,
                Err(StepError::Exec(e)) => return Err(e.to_string()),
                Err(StepError::Internal(e)) => return Err(format!("internal error: {e}")),
                Err(StepError::NonFinite { .. }) => return Err("the synthetic batch made the loss non-finite".into()),
            },
            Run::Infer(i) => {
                let Inference { graph, params, exec, programs } = &mut **i;
                // Every input gets the batch (each branch of a Siamese network runs).
                let feeds: Vec<_> = graph.inputs().iter().map(|&i| (i, self.x.view())).collect();
                let values = match programs {
                    Some(p) => p.run(graph, params, &mut [], &feeds, Ctx::default())?,
                    None => exec.run(graph, params, &feeds, Ctx::default()).map_err(|e| e.to_string())?,
                };
                values.peak_bytes
            }
        };
        self.peak_bytes = self.peak_bytes.max(peak);
        Ok(())
    }

    /// Times every op of every later step into `profile`.
    pub fn profile_into(&mut self, profile: std::sync::Arc<std::sync::Mutex<Profile>>) {
        match &mut self.run {
            Run::Train(s) => s.profile_into(profile),
            Run::Infer(i) => {
                i.exec.profile_into(profile.clone());
                if let Some(p) = i.programs.as_mut() {
                    p.profile_into(profile);
                }
            }
        }
    }

    /// Memory figures worth reporting, in bytes.
    pub fn memory(&mut self) -> Vec<(&'static str, usize)> {
        let mut lines = vec![
            ("parameters", self.params_bytes),
            ("peak live values", self.peak_bytes),
            ("peak live values per example", self.peak_bytes / self.batch.max(1)),
        ];
        if let Some(plan) = self.plan() {
            lines.push(("arena peak live (least possible)", plan.peak_live * 4));
            lines.push(("sum of all buffers (no reuse)", plan.total * 4));
        }
        lines
    }

    /// The memory plan of the program that runs, on the interpreter and JIT backends.
    fn plan(&mut self) -> Option<cnnc_compiler::lir::MemoryPlan> {
        let batch = self.batch;
        match &mut self.run {
            Run::Train(s) => s.plan(batch),
            Run::Infer(i) => {
                let Inference { graph, params, programs, .. } = &mut **i;
                programs.as_mut()?.program(graph, params, batch).ok().map(|m| m.plan.clone())
            }
        }
    }
}

/// A deterministic value in [-1, 1) for element `i` of a synthetic input.
fn synthetic(i: u64) -> f32 {
    let z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Compute threads, once set (0: not yet).
static THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sets the number of compute threads (the rayon pool the JIT backend's kernels share, and
/// matrixmultiply's threads in the interpreter); call before anything runs.
pub fn set_threads(n: usize) -> Result<(), String> {
    if n == 0 {
        return Err("--threads must be at least 1".into());
    }
    std::env::set_var("MATMUL_NUM_THREADS", n.to_string());
    // The global pool can be built once; a later call keeps the first pool's size.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    THREADS.store(n, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Compute threads in use: as set, else `MATMUL_NUM_THREADS`, else every core (inside a rayon
/// pool's `install`, that pool's threads).
pub fn threads() -> usize {
    if THREADS.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        let n = std::env::var("MATMUL_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
        THREADS.store(n, std::sync::atomic::Ordering::Relaxed);
    }
    rayon::current_num_threads()
}

/// The host CPU.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cpu {
    /// Its model name.
    pub model: String,
    /// The vector ISA flags that matter here (sse4.2, avx, avx2, fma, avx512*).
    pub flags: String,
}

/// The CPU model and its vector flags, from `/proc/cpuinfo` (or the target's features elsewhere).
pub fn cpu() -> Cpu {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let model = field("model name");
    let all = field("flags");
    let flags: Vec<&str> = all
        .split_whitespace()
        .filter(|f| matches!(*f, "sse4_2" | "avx" | "avx2" | "fma") || f.starts_with("avx512"))
        .collect();
    Cpu {
        model: if model.is_empty() { std::env::consts::ARCH.to_string() } else { model },
        flags: if flags.is_empty() { "no AVX".to_string() } else { flags.join(" ") },
    }
}

/// The process's peak resident memory in bytes (`VmHWM`), where the OS reports it.
pub fn peak_rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
