//! The backends a model runs on: the reference executor over the layer graph (the oracle), or
//! the kernel-IR interpreter over a program lowered from it, one per batch size (so the last,
//! partial batch of an epoch gets its own), each inside its planned arena.

use crate::executor::Values;
use crate::interp::{Feed, Machine};
use crate::params::Params;
use crate::reference::{Ctx, View};
use cnnc_compiler::ir::{Graph, NodeId, ValueId};
use cnnc_compiler::lir::{self, DType, Purpose};
use std::collections::HashMap;
use std::fmt;

/// Which executor runs a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// The layer-level reference executor: one plain function per op, every value a fresh tensor.
    Reference,
    /// The kernel-IR interpreter inside a planned arena (the second oracle).
    Lir,
    /// The kernel program run natively: element-wise maps compiled by Cranelift for the host's
    /// ISA, GEMM through the `gemm` crate, window kernels tuned and split over the threads; the
    /// interpreter's functions run the rest. The default.
    #[default]
    Jit,
}

impl Backend {
    /// Every backend, by name.
    pub const ALL: [(&'static str, Backend); 3] =
        [("reference", Backend::Reference), ("lir", Backend::Lir), ("jit", Backend::Jit)];

    /// The backend called `name`.
    pub fn parse(name: &str) -> Result<Backend, String> {
        Backend::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| *b)
            .ok_or_else(|| format!("no backend `{name}` (backends: reference, lir, jit)"))
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Reference => "reference",
            Backend::Lir => "lir",
            Backend::Jit => "jit",
        })
    }
}

/// A lowered program ready to run, and which graph input each of its feeds is.
#[derive(Debug)]
struct Compiled {
    machine: Machine,
    feeds: Vec<NodeId>,
    /// [`Machine::grad_writes`], found once.
    grad_writes: Vec<(usize, std::ops::Range<usize>)>,
}

/// The programs of one graph, by batch size.
#[derive(Debug, Default)]
pub struct Programs {
    keep: Vec<ValueId>,
    grads: Vec<(NodeId, ValueId)>,
    cache: HashMap<usize, Compiled>,
    labels: Vec<i32>,
    profile: Option<std::sync::Arc<std::sync::Mutex<crate::executor::Profile>>>,
    /// The code generator, for the JIT backend: programs compiled from now on use native kernels.
    jit: Option<cnnc_codegen::Jit>,
    /// Kernel-program passes left out.
    disabled: Vec<String>,
}

impl Programs {
    /// Programs that keep `keep` and write the parameter gradients `grads` into the gradient store.
    pub fn new(keep: Vec<ValueId>, grads: Vec<(NodeId, ValueId)>) -> Self {
        Programs {
            keep,
            grads,
            cache: HashMap::new(),
            labels: Vec::new(),
            profile: None,
            jit: None,
            disabled: Vec::new(),
        }
    }

    /// Leaves out the kernel-program passes `names` in the programs compiled from now on.
    pub fn disable_passes(&mut self, names: &[String]) {
        self.disabled = names.to_vec();
        self.cache.clear();
    }

    /// Switches to `backend` (the interpreter alone, or with native kernels); forgets the
    /// programs compiled for the other.
    pub fn set_backend(&mut self, backend: Backend) -> Result<(), String> {
        let wants_jit = backend == Backend::Jit;
        if wants_jit != self.jit.is_some() {
            self.cache.clear();
            self.jit = if wants_jit { Some(cnnc_codegen::Jit::new(cnnc_codegen::Options::default())?) } else { None };
        }
        Ok(())
    }

    /// The code generator's compiled functions as Cranelift IR, by name (JIT backend).
    pub fn clif(&self) -> Vec<(String, String)> {
        self.jit.as_ref().map(|j| j.clif().to_vec()).unwrap_or_default()
    }

    /// Times every kernel of every later run into `profile`.
    pub fn profile_into(&mut self, profile: std::sync::Arc<std::sync::Mutex<crate::executor::Profile>>) {
        for c in self.cache.values_mut() {
            c.machine.profile = Some(profile.clone());
        }
        self.profile = Some(profile);
    }

    /// The program for `batch` examples of `graph`, lowered and planned on first use.
    pub fn program(&mut self, graph: &Graph, params: &Params, batch: usize) -> Result<&Machine, String> {
        self.compiled(graph, params, batch).map(|c| &c.machine)
    }

    /// The gradient ranges the program for `batch` writes, each with its last writing kernel
    /// ([`Machine::grad_writes`]), found when the program was compiled.
    pub fn grad_writes(
        &mut self,
        graph: &Graph,
        params: &Params,
        batch: usize,
    ) -> Result<&[(usize, std::ops::Range<usize>)], String> {
        self.compiled(graph, params, batch).map(|c| &c.grad_writes[..])
    }

    fn compiled(&mut self, graph: &Graph, params: &Params, batch: usize) -> Result<&mut Compiled, String> {
        if !self.cache.contains_key(&batch) {
            let mut lowered =
                lir::lower(graph, batch, &params.layout, &self.grads, &self.keep).map_err(|e| e.to_string())?;
            lir::passes::optimize(&mut lowered.program, &self.disabled);
            let mut machine = Machine::new(lowered.program)?;
            machine.profile.clone_from(&self.profile);
            if let Some(jit) = self.jit.as_mut() {
                machine.compile(jit)?;
            }
            let grad_writes = machine.grad_writes();
            self.cache.insert(batch, Compiled { machine, feeds: lowered.feeds, grad_writes });
        }
        self.cache.get_mut(&batch).ok_or_else(|| "a program vanished from its cache".into())
    }

    /// Runs on `feeds` (each graph input's batch): parameter gradients land in `grads`; the kept
    /// values come back.
    pub fn run(
        &mut self,
        graph: &Graph,
        params: &Params,
        grads: &mut [f32],
        feeds: &[(NodeId, View)],
        ctx: Ctx,
    ) -> Result<Values, String> {
        self.run_with(graph, params, grads, feeds, ctx, &mut |_, _| {})
    }

    /// [`Programs::run`], calling `after(i, grads)` after kernel `i` of the program
    /// ([`Machine::run_with`]).
    pub fn run_with(
        &mut self,
        graph: &Graph,
        params: &Params,
        grads: &mut [f32],
        feeds: &[(NodeId, View)],
        ctx: Ctx,
        after: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<Values, String> {
        let batch = feeds.first().map_or(1, |(_, v)| v.shape()[0]);
        let mut labels = std::mem::take(&mut self.labels);
        let compiled = self.compiled(graph, params, batch)?;
        let mut owned: Vec<std::borrow::Cow<[f32]>> = Vec::with_capacity(compiled.feeds.len());
        for (id, (_, _, dtype)) in compiled.feeds.iter().zip(&compiled.machine.program.inputs) {
            let view = &feeds.iter().find(|(f, _)| f == id).ok_or("an input was not fed")?.1;
            match dtype {
                DType::F32 => owned.push(match view.as_slice() {
                    Some(s) => std::borrow::Cow::Borrowed(s),
                    None => std::borrow::Cow::Owned(view.iter().copied().collect()),
                }),
                DType::I32 => {
                    labels.clear();
                    labels.extend(view.iter().map(|&v| v as i32));
                    owned.push(std::borrow::Cow::Borrowed(&[]));
                }
            }
        }
        let fed: Vec<Feed> = owned
            .iter()
            .zip(&compiled.machine.program.inputs)
            .map(|(s, (_, _, dtype))| match dtype {
                DType::F32 => Feed::F32(s),
                DType::I32 => Feed::I32(&labels),
            })
            .collect();
        // Parameters change between runs (every training step): derive what depends on them
        // first, when they changed since the last run.
        compiled.machine.prepare_once(params.data(), params.stamp())?;
        compiled.machine.run_with(params.data(), grads, &fed, ctx, after)?;
        let machine = &compiled.machine;
        let values = machine
            .program
            .results
            .iter()
            .map(|(Purpose::Value(v), view)| (*v, machine.read(view, params.data(), grads)))
            .collect();
        let arena = machine.arena_bytes();
        drop(fed);
        drop(owned);
        self.labels = labels;
        Ok(Values::from_map(values, arena))
    }
}
