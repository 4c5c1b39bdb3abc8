//! The reference executor: runs a graph on a batch, node by node in a fixed schedule, with the
//! reference ops. Parameters are read in place from the flat store and fed inputs are borrowed;
//! each computed value is dropped after its last reader, so only the values asked to be kept
//! (losses, gradients, outputs) outlive the run.

use crate::params::{Layout, ParamId, Params};
use crate::reference::{self, Ctx, Tensor, View};
use cnnc_compiler::ir::op::Op;
use cnnc_compiler::ir::{Graph, NodeId, ValueId};
use std::collections::HashMap;

/// Why a graph could not run.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecError {
    /// An input was not fed.
    MissingInput { name: String },
    /// A parameter has no value (weights file and model disagree).
    MissingParam { name: String },
    /// A fed tensor or parameter has the wrong shape.
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecError::MissingInput { name } => write!(f, "input `{name}` was not given"),
            ExecError::MissingParam { name } => write!(f, "parameter `{name}` has no value"),
            ExecError::Shape { name, expected, found } => {
                write!(f, "`{name}` has shape {found:?}, expected {expected:?}")
            }
        }
    }
}

impl std::error::Error for ExecError {}

/// The values kept from one run, and how much memory the run's values took at most.
#[derive(Debug, Default)]
pub struct Values {
    values: HashMap<ValueId, Tensor>,
    /// The most bytes that computed values held at once (parameters and fed inputs excluded).
    pub peak_bytes: usize,
}

/// Time spent per op (by mnemonic) over the runs of a profiling executor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// Per op or kernel kind, in first-run order.
    pub ops: Vec<ProfileEntry>,
    /// Per kernel of a kernel program (`k5 gemm [6400, 16]`), in first-run order.
    pub kernels: Vec<ProfileEntry>,
}

/// The time spent in one kind of op or kernel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProfileEntry {
    /// Its name (`vjp.conv2d`, `gemm`).
    pub name: String,
    /// Total time.
    pub time: std::time::Duration,
    /// Calls.
    pub runs: u64,
    /// Floating-point operations done (kernels only; 0 where not counted).
    pub flops: u64,
}

impl Profile {
    /// Adds a call of `name` that took `t` and did `flops` operations.
    pub(crate) fn add(&mut self, name: String, t: std::time::Duration, flops: u64) {
        Self::add_to(&mut self.ops, name, t, flops);
    }

    /// Adds a run of one kernel, named with its index and shape, that took `t`.
    pub(crate) fn add_kernel(&mut self, name: String, t: std::time::Duration, flops: u64) {
        Self::add_to(&mut self.kernels, name, t, flops);
    }

    fn add_to(list: &mut Vec<ProfileEntry>, name: String, t: std::time::Duration, flops: u64) {
        match list.iter_mut().find(|e| e.name == name) {
            Some(e) => {
                e.time += t;
                e.runs += 1;
                e.flops += flops;
            }
            None => list.push(ProfileEntry { name, time: t, runs: 1, flops }),
        }
    }
}

impl Values {
    /// Values computed elsewhere (by another backend).
    pub(crate) fn from_map(values: HashMap<ValueId, Tensor>, peak_bytes: usize) -> Self {
        Values { values, peak_bytes }
    }

    /// The value `v`, if it was kept.
    pub fn get(&self, v: impl Into<ValueId>) -> Option<&Tensor> {
        self.values.get(&v.into())
    }
}

/// One scheduled node: what it reads, and which values die after it.
#[derive(Clone, Debug)]
struct Step {
    id: NodeId,
    inputs: Vec<ValueId>,
    frees: Vec<ValueId>,
}

/// A graph prepared to run: its schedule, parameter slots and value lifetimes fixed once.
#[derive(Clone, Debug)]
pub struct Executor {
    steps: Vec<Step>,
    params: HashMap<NodeId, ParamId>,
    keep: Vec<ValueId>,
    profile: Option<std::sync::Arc<std::sync::Mutex<Profile>>>,
}

impl Executor {
    /// Prepares `graph` (parameters laid out as `layout`) to compute and keep `keep`; only the
    /// nodes they depend on run. With `keep` empty, every value is kept (to find where a NaN
    /// first appeared).
    pub fn new(graph: &Graph, layout: &Layout, keep: &[ValueId]) -> Result<Self, ExecError> {
        let order = graph.topo_order().unwrap_or_default();
        let keep_all = keep.is_empty();
        let mut needed = std::collections::HashSet::new();
        let mut stack: Vec<NodeId> = if keep_all { order.clone() } else { keep.iter().map(|v| v.node).collect() };
        while let Some(id) = stack.pop() {
            if needed.insert(id) {
                stack.extend(graph.operands(id));
            }
        }
        let mut params = HashMap::new();
        let mut steps = Vec::new();
        for id in order.into_iter().filter(|id| needed.contains(id)) {
            let node = graph.node(id);
            if let Op::Param(_) = node.op {
                let pid = layout.id(&node.name).ok_or_else(|| ExecError::MissingParam { name: node.name.clone() })?;
                params.insert(id, pid);
                continue;
            }
            steps.push(Step { id, inputs: graph.inputs_of(id), frees: Vec::new() });
        }
        let keep: Vec<ValueId> = if keep_all {
            steps
                .iter()
                .flat_map(|s| (0..graph.node(s.id).results() as u16).map(move |r| ValueId { node: s.id, result: r }))
                .collect()
        } else {
            keep.to_vec()
        };
        let mut last: HashMap<ValueId, usize> = HashMap::new();
        for (i, s) in steps.iter().enumerate() {
            for v in &s.inputs {
                last.insert(*v, i);
            }
        }
        for (v, i) in last {
            if !keep.contains(&v) {
                steps[i].frees.push(v);
            }
        }
        Ok(Executor { steps, params, keep, profile: None })
    }

    /// Times every op of every run from now on into `profile`.
    pub fn profile_into(&mut self, profile: std::sync::Arc<std::sync::Mutex<Profile>>) {
        self.profile = Some(profile);
    }

    /// Nodes in the order they run.
    pub fn order(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.steps.iter().map(|s| s.id)
    }

    /// Runs on a batch: `feeds` gives each input node its tensor `[n, shape..]`.
    pub fn run(&self, graph: &Graph, params: &Params, feeds: &[(NodeId, View)], ctx: Ctx) -> Result<Values, ExecError> {
        let mut live: HashMap<ValueId, Tensor> = HashMap::with_capacity(self.steps.len());
        let (mut bytes, mut peak) = (0usize, 0usize);
        for step in &self.steps {
            let node = graph.node(step.id);
            if let Op::Input(_) = node.op {
                let fed = feeds.iter().find(|(f, _)| *f == step.id).map(|(_, t)| t);
                let t = fed.ok_or_else(|| ExecError::MissingInput { name: node.name.clone() })?;
                if t.shape().get(1..) != Some(node.shape.0.as_slice()) {
                    return Err(ExecError::Shape {
                        name: node.name.clone(),
                        expected: node.shape.0.clone(),
                        found: t.shape().get(1..).unwrap_or_default().to_vec(),
                    });
                }
                // A fed input is read in place; it is copied only when asked for as a result.
                let v = ValueId::from(step.id);
                if self.keep.contains(&v) {
                    live.insert(v, t.to_owned());
                }
                continue;
            }
            let results = {
                let inputs: Vec<View> = step
                    .inputs
                    .iter()
                    .map(|v| self.operand(graph, params, feeds, &live, *v))
                    .collect::<Result<_, _>>()?;
                let started = self.profile.as_ref().map(|_| std::time::Instant::now());
                let results = reference::forward(&node.op, &inputs, ctx);
                if let (Some(p), Some(t)) = (&self.profile, started) {
                    if let Ok(mut p) = p.lock() {
                        p.add(node.op.mnemonic(), t.elapsed(), 0);
                    }
                }
                results
            };
            for (r, t) in results.into_iter().enumerate() {
                bytes += t.len() * 4;
                live.insert(ValueId { node: step.id, result: r as u16 }, t);
            }
            peak = peak.max(bytes);
            for v in &step.frees {
                if let Some(t) = live.remove(v) {
                    bytes -= t.len() * 4;
                }
            }
        }
        let values = self.keep.iter().filter_map(|v| live.remove(v).map(|t| (*v, t))).collect();
        Ok(Values { values, peak_bytes: peak })
    }

    fn operand<'a>(
        &self,
        graph: &Graph,
        params: &'a Params,
        feeds: &'a [(NodeId, View)],
        live: &'a HashMap<ValueId, Tensor>,
        v: ValueId,
    ) -> Result<View<'a>, ExecError> {
        if let Some(&pid) = self.params.get(&v.node) {
            let node = graph.node(v.node);
            if params.layout.entry(pid).shape != node.shape.0 {
                return Err(ExecError::Shape {
                    name: node.name.clone(),
                    expected: node.shape.0.clone(),
                    found: params.layout.entry(pid).shape.clone(),
                });
            }
            return Ok(params.view(pid));
        }
        if let Some((_, t)) = feeds.iter().find(|(f, _)| *f == v.node) {
            return Ok(t.view());
        }
        live.get(&v).map(|t| t.view()).ok_or_else(|| ExecError::MissingInput { name: graph.node(v.node).name.clone() })
    }
}
