//! Lowering a layer graph to a kernel program for one batch size: the driver walks the graph's
//! schedule, gives each value a view (parameters in the flat store, fed inputs, parameter
//! gradients straight into the gradient store, everything else in arena buffers), and asks each
//! op's family to emit its kernels ([`OpRule::lower`], [`OpRule::lower_grad`]).

use super::{BufId, Buffer, DType, Geom, Kernel, Program, Space, View};
use crate::ir::op::{Op, Read};
use crate::ir::{Graph, NodeId, ValueId};
use crate::ops::Window;
use crate::params::ParamLayout;
use std::collections::HashMap;
use std::fmt;

/// What the caller reads from a program after a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The graph value `v` (a loss, a prediction, a batch statistic, an input's gradient).
    Value(ValueId),
}

/// Why a graph could not be lowered (a bug in cnnc: the verifier passed it).
#[derive(Clone, Debug, PartialEq)]
pub struct LowerError {
    /// The node.
    pub node: String,
    /// What went wrong.
    pub problem: String,
}

impl fmt::Display for LowerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "internal error: cannot lower `{}` to kernels: {} (this is a bug in cnnc; please report it)",
            self.node, self.problem
        )
    }
}

impl std::error::Error for LowerError {}

/// A lowered program and, for the caller, where each graph input is fed.
#[derive(Clone, Debug)]
pub struct Lowered {
    /// The program.
    pub program: Program,
    /// For each fed graph input (model inputs, then labels), its node.
    pub feeds: Vec<NodeId>,
}

/// Lowers `graph` for batches of `batch` examples. `layout` places parameters (and their
/// gradients); `grads` names the values that are parameter gradients (written straight into
/// the gradient store); `keep` the values read after a run. Labels (inputs named `label` fed to
/// softmax cross-entropy) are `i32`.
pub fn lower(
    graph: &Graph,
    batch: usize,
    layout: &ParamLayout,
    grads: &[(NodeId, ValueId)],
    keep: &[ValueId],
) -> Result<Lowered, LowerError> {
    let order = graph.topo_order().ok_or_else(|| LowerError { node: graph.name.clone(), problem: "a cycle".into() })?;
    let mut l = Lowerer {
        graph,
        batch,
        program: Program {
            name: graph.name.clone(),
            batch,
            buffers: Vec::new(),
            prepare: Vec::new(),
            kernels: Vec::new(),
            inputs: Vec::new(),
            results: Vec::new(),
        },
        views: HashMap::new(),
        grad_of: HashMap::new(),
        node: order.first().copied().unwrap_or_default(),
        columns: Vec::new(),
        column_budget: COLUMN_BUDGET,
    };
    for &(p, g) in grads {
        let name = &graph.node(p).name;
        let entry = layout.get(name).ok_or_else(|| l.fail(format!("no parameter `{name}` in the layout")))?;
        l.grad_of.insert(g, entry.offset);
    }
    let mut feeds = Vec::new();
    for &id in &order {
        l.node = id;
        let node = graph.node(id);
        match &node.op {
            Op::Param(_) => {
                let e = layout.get(&node.name).ok_or_else(|| l.fail("a parameter missing from the layout".into()))?;
                let buf = l.buffer(node.name.clone(), Space::Param(e.offset), e.len(), DType::F32);
                l.views.insert(id.into(), View::whole(buf, node.shape.0.clone()));
            }
            Op::Input(i) => {
                let labels = i.name == "label" && graph.users(id).iter().any(|&u| is_class_loss(&graph.node(u).op));
                let dtype = if labels { DType::I32 } else { DType::F32 };
                let shape = l.batched(&node.shape.0);
                let buf = l.buffer(i.name.clone(), Space::Input(feeds.len()), shape.iter().product(), dtype);
                l.program.inputs.push((i.name.clone(), shape.clone(), dtype));
                l.views.insert(id.into(), View::whole(buf, shape));
                feeds.push(id);
            }
            op => op.rule().lower(&mut l).map_err(|problem| l.fail(problem))?,
        }
    }
    for &v in keep {
        let mut view =
            l.views.get(&v).cloned().ok_or_else(|| l.fail(format!("kept value {v:?} was never computed")))?;
        if !matches!(l.program.buffers[view.buf.0 as usize].space, Space::Arena) {
            // An input or parameter read back (a graph whose output is its input): a copy the
            // caller can read after the run.
            l.node = v.node;
            let copy = l.temp("result", view.shape.clone());
            l.emit(Kernel::Copy { src: view, dst: copy.clone() });
            view = copy;
        }
        l.program.buffers[view.buf.0 as usize].kept = true;
        l.program.results.push((Purpose::Value(v), view));
    }
    Ok(Lowered { program: l.program, feeds })
}

fn is_class_loss(op: &Op) -> bool {
    use crate::ir::op::LossKind;
    matches!(op, Op::Loss(l) if matches!(l.kind, LossKind::SoftmaxCrossEntropy | LossKind::Triplet(_)))
}

/// What an op's lowering sees: its operands' views, and the means to place its results and
/// emit kernels.
pub struct Lowerer<'g> {
    graph: &'g Graph,
    batch: usize,
    program: Program,
    views: HashMap<ValueId, View>,
    /// Parameter-gradient values and their parameter's offset.
    grad_of: HashMap<ValueId, usize>,
    node: NodeId,
    /// im2col matrices made so far: (input, geometry, columns), for the backward pass to reuse.
    columns: Vec<(View, Geom, View)>,
    /// Elements of im2col matrices the backward pass may still keep alive from the forward.
    column_budget: usize,
}

/// Elements of forward im2col matrices the backward pass keeps alive to reuse rather than build
/// again (32 MiB): the small early-layer matrices of small nets (LeNet-5's first, 5 MB), not the
/// large ones of VGG or ResNet, whose memory matters more than their im2col time.
const COLUMN_BUDGET: usize = 8 << 20;

impl Lowerer<'_> {
    fn fail(&self, problem: String) -> LowerError {
        LowerError { node: self.graph.node(self.node).name.clone(), problem }
    }

    fn buffer(&mut self, name: String, space: Space, len: usize, dtype: DType) -> BufId {
        let id = BufId(self.program.buffers.len() as u32);
        self.program.buffers.push(Buffer { name, space, len, dtype, kept: false });
        id
    }

    /// Examples per run.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// `shape` with the batch axis in front.
    pub fn batched(&self, shape: &[usize]) -> Vec<usize> {
        std::iter::once(self.batch).chain(shape.iter().copied()).collect()
    }

    /// The view of operand `port` of the node being lowered.
    pub fn input(&self, port: usize) -> Result<View, String> {
        let v = *self.graph.inputs_of(self.node).get(port).ok_or(format!("no operand {port}"))?;
        self.views.get(&v).cloned().ok_or(format!("operand {port} has no view"))
    }

    /// Every operand's view, in port order.
    pub fn inputs(&self) -> Result<Vec<View>, String> {
        (0..self.graph.inputs_of(self.node).len()).map(|p| self.input(p)).collect()
    }

    /// For a backward node: the view of what it reads as `read`.
    pub fn read(&self, read: Read) -> Result<View, String> {
        let Op::Backward(b) = &self.graph.node(self.node).op else { return Err("not a backward node".into()) };
        let port = b.reads.iter().position(|&r| r == read).ok_or(format!("the rule does not read {read}"))?;
        self.input(port)
    }

    /// For a backward node: the batch-inclusive shape of forward input `i` (parameters as they are).
    pub fn forward_input_shape(&self, i: usize) -> Result<Vec<usize>, String> {
        let Op::Backward(b) = &self.graph.node(self.node).op else { return Err("not a backward node".into()) };
        let s = b.inputs.get(i).ok_or(format!("no forward input {i}"))?;
        Ok(if self.forward_input_is_param(i) { s.0.clone() } else { self.batched(&s.0) })
    }

    fn forward_input_is_param(&self, i: usize) -> bool {
        match &self.graph.node(self.node).op {
            Op::Backward(b) => i > 0 && b.of.rule().param_ports(),
            _ => false,
        }
    }

    /// The batch-inclusive shape of result `r` of the node being lowered.
    pub fn result_shape(&self, r: u16) -> Vec<usize> {
        let node = self.graph.node(self.node);
        let shape = node.result(r).unwrap_or(&node.shape);
        let is_param_grad = self.forward_input_is_param(self.wrt_of(r));
        // The sum of a shared parameter's gradients (from each of its uses) has its shape too.
        let sums_param_grads = matches!(node.op, Op::Add)
            && self.inputs().is_ok_and(|vs| !vs.is_empty() && vs.iter().all(|v| v.shape == shape.0));
        if is_param_grad || sums_param_grads {
            shape.0.clone()
        } else {
            self.batched(&shape.0)
        }
    }

    /// For a backward node's result `r`: which forward input it is the gradient of.
    fn wrt_of(&self, r: u16) -> usize {
        match &self.graph.node(self.node).op {
            Op::Backward(b) => b.wrt.get(usize::from(r)).copied().unwrap_or(0),
            _ => 0,
        }
    }

    /// A fresh view for result `r` of the node being lowered: in the gradient store for a
    /// parameter's gradient, else a new arena buffer.
    pub fn output(&mut self, r: u16) -> View {
        let v = ValueId { node: self.node, result: r };
        let shape = self.result_shape(r);
        let len = shape.iter().product();
        let name = self.value_name(r);
        let space = match self.grad_of.get(&v) {
            Some(&offset) => Space::Grad(offset),
            None => Space::Arena,
        };
        let buf = self.buffer(name, space, len, DType::F32);
        let view = View::whole(buf, shape);
        self.views.insert(v, view.clone());
        view
    }

    /// Result `r` of the node being lowered is `view` (a reshape or slice of another value): no
    /// kernel, unless the value must live in the gradient store, where it is copied.
    pub fn alias(&mut self, r: u16, view: View) {
        let v = ValueId { node: self.node, result: r };
        if self.grad_of.contains_key(&v) {
            let out = self.output(r);
            self.emit(Kernel::Copy { src: view.reshaped(out.shape.clone()), dst: out });
            return;
        }
        self.views.insert(v, view);
    }

    /// A scratch buffer of `shape` for the node being lowered, called `what`.
    pub fn temp(&mut self, what: &str, shape: Vec<usize>) -> View {
        let name = format!("{}/{what}", self.graph.node(self.node).name);
        let buf = self.buffer(name, Space::Arena, shape.iter().product(), DType::F32);
        View::whole(buf, shape)
    }

    /// The im2col matrix of `x` over `geom`: one made before (the forward pass's, for the
    /// weight gradient) where `reuse` and the budget of kept matrices allows, else a new one.
    pub fn columns(&mut self, x: &View, geom: Geom, reuse: bool) -> View {
        if let Some((_, _, col)) =
            self.columns.iter().find(|(v, g, col)| reuse && v == x && *g == geom && col.len() <= self.column_budget)
        {
            let col = col.clone();
            self.column_budget -= col.len();
            return col;
        }
        let col = self.temp("col", vec![self.batch_rows(&geom), geom.window() * geom.cg]);
        self.emit(Kernel::Im2col { x: x.clone(), col: col.clone(), geom: geom.clone() });
        self.columns.push((x.clone(), geom, col.clone()));
        col
    }

    fn batch_rows(&self, geom: &Geom) -> usize {
        geom.n * geom.positions()
    }

    /// A contiguous copy of `view` when it is strided (a channel slice), else the view itself.
    pub fn contiguous(&mut self, view: View) -> View {
        if view.contiguous() {
            return view;
        }
        let out = self.temp("contiguous", view.shape.clone());
        self.emit(Kernel::Copy { src: view, dst: out.clone() });
        out
    }

    /// Appends a kernel.
    pub fn emit(&mut self, k: Kernel) {
        self.program.kernels.push(k);
    }

    /// A derived parameter of `shape` computed by `kernels` (which write it) in the prepare
    /// phase, once per change of the parameters rather than every step.
    pub fn derive(&mut self, what: &str, shape: Vec<usize>, kernels: impl FnOnce(View) -> Vec<Kernel>) -> View {
        let view = self.temp(what, shape);
        self.program.buffers[view.buf.0 as usize].kept = true;
        let ks = kernels(view.clone());
        self.program.prepare.extend(ks);
        view
    }

    fn value_name(&self, r: u16) -> String {
        let node = self.graph.node(self.node);
        match (&node.op, r) {
            (Op::Backward(b), _) => match b.wrt.get(usize::from(r)) {
                Some(w) => format!("{}.d{w}", node.name.split(".d").next().unwrap_or(&node.name)),
                None => node.name.clone(),
            },
            (_, 0) => node.name.clone(),
            (_, r) => format!("{}.{r}", node.name),
        }
    }
}

/// The geometry of a window op reading `x` (batch-inclusive) and writing `out`, on channels
/// `c0 .. c0 + cg`.
pub fn geom(x: &[usize], w: &Window, out: &[usize], c0: usize, cg: usize) -> Geom {
    let three = |v: &[usize], fill: usize| {
        let mut a = [fill; 3];
        a[3 - v.len()..].copy_from_slice(v);
        a
    };
    let spatial = &x[1..x.len() - 1];
    let pads: Vec<usize> = w.pad.iter().map(|p| p.0).collect();
    Geom {
        n: x[0],
        input: three(spatial, 1),
        channels: x[x.len() - 1],
        c0,
        cg,
        size: three(w.size, 1),
        stride: three(w.stride, 1),
        pad: three(&pads, 0),
        dilation: three(&w.dilation, 1),
        output: three(&out[1..out.len() - 1], 1),
    }
}
