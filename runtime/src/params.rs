//! The flat parameter store: every parameter (and batchnorm statistic) of a model in one `f32`
//! buffer, with a table `ParamId → (name, shape, offset)`. Gradients and optimizer state use the
//! same layout in buffers of their own. Names stay for weights files and for people; generated
//! code and the executors address parameters by offset. Initial values are seeded per name
//! (He, Glorot, constants), so they do not depend on the order of the graph.

use crate::reference::View;
use cnnc_compiler::ir::op::{Init, Op, ParamOp};
use cnnc_compiler::ir::{name_hash, Graph};
use ndarray::IxDyn;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use std::sync::Arc;

pub use cnnc_compiler::params::{Entry, ParamId, ParamLayout as Layout};

/// Parameter values in one buffer.
#[derive(Clone, Debug, Default)]
pub struct Params {
    /// Where each parameter is.
    pub layout: Arc<Layout>,
    /// Every value, as the layout places them.
    data: Vec<f32>,
    /// Changes with every write access to `data` (unique in the process): what was derived from
    /// the values (folded batchnorm) is derived again only when it changed.
    stamp: u64,
}

impl PartialEq for Params {
    fn eq(&self, other: &Params) -> bool {
        self.layout == other.layout && self.data == other.data
    }
}

/// The next stamp.
fn fresh_stamp() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Params {
    /// Initial values for every parameter of `graph`, from `seed`.
    pub fn init(graph: &Graph, seed: u64) -> Params {
        let layout = Layout::of(graph);
        let mut data = vec![0f32; layout.len()];
        for id in graph.node_ids() {
            let node = graph.node(id);
            let Op::Param(p) = &node.op else { continue };
            let Some(pid) = layout.id(&node.name) else { continue };
            initial(p, &node.shape.0, seed ^ name_hash(&node.name), &mut data[layout.entry(pid).range()]);
        }
        Params { layout: Arc::new(layout), data, stamp: fresh_stamp() }
    }

    /// Parameters of `graph` holding the values of `from` under the same names: a graph
    /// rewritten with the same weights in other shapes (the sliding-windows pass) runs with the
    /// weights of the original. A parameter missing from `from`, or of another size, is an error.
    pub fn same_values(graph: &Graph, from: &Params) -> Result<Params, String> {
        let mut params = Params::init(graph, 0);
        let names: Vec<String> = params.layout.entries().iter().map(|e| e.name.clone()).collect();
        for name in names {
            let (Some(to), Some(id)) = (params.layout.id(&name), from.layout.id(&name)) else {
                return Err(format!("the rewritten graph has a parameter `{name}` the weights do not"));
            };
            let values = from.slice(id);
            let dst = params.slice_mut(to);
            if dst.len() != values.len() {
                return Err(format!(
                    "`{name}` holds {} values, and the rewritten graph needs {}",
                    values.len(),
                    dst.len()
                ));
            }
            dst.copy_from_slice(values);
        }
        Ok(params)
    }

    /// Every value, as the layout places them.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Every value, to change (the stamp changes).
    pub fn data_mut(&mut self) -> &mut [f32] {
        self.stamp = fresh_stamp();
        &mut self.data
    }

    /// A number that changes whenever the values may have: equal stamps, equal values.
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    /// Zeros in `layout` (gradient and optimizer buffers).
    pub fn zeros(layout: &Arc<Layout>) -> Params {
        Params { layout: layout.clone(), data: vec![0.0; layout.len()], stamp: fresh_stamp() }
    }

    /// The values of parameter `id`.
    pub fn slice(&self, id: ParamId) -> &[f32] {
        &self.data[self.layout.entry(id).range()]
    }

    /// The values of parameter `id`, to change.
    pub fn slice_mut(&mut self, id: ParamId) -> &mut [f32] {
        let range = self.layout.entry(id).range();
        &mut self.data_mut()[range]
    }

    /// Parameter `id` as a tensor view.
    pub fn view(&self, id: ParamId) -> View<'_> {
        let e = self.layout.entry(id);
        View::from_shape(IxDyn(&e.shape), &self.data[e.range()]).expect("an entry's range fills its shape")
    }

    /// The parameter called `name`, as a tensor view.
    pub fn get(&self, name: &str) -> Option<View<'_>> {
        self.layout.id(name).map(|id| self.view(id))
    }

    /// `(name, shape, values)` of every parameter, in name order.
    pub fn named(&self) -> impl Iterator<Item = (&str, &[usize], &[f32])> {
        self.layout.entries().iter().map(|e| (e.name.as_str(), e.shape.as_slice(), &self.data[e.range()]))
    }
}

/// `(fan_in, fan_out)` of a weight: `[f.., c_in, c_out]` or `[n, units]`.
fn fans(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (*n, *n),
        [.., cin, cout] => {
            let window: usize = shape[..shape.len() - 2].iter().product();
            (window * cin, window * cout)
        }
    }
}

fn initial(p: &ParamOp, shape: &[usize], seed: u64, out: &mut [f32]) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    match p.init {
        Init::Zeros => out.fill(0.0),
        Init::Ones => out.fill(1.0),
        Init::Fill(v) => out.fill(v),
        Init::Constant => match p.value.as_deref() {
            Some(v) if v.len() == out.len() => out.copy_from_slice(v),
            _ => out.fill(0.0),
        },
        Init::He => {
            let std = (2.0 / fans(shape).0.max(1) as f32).sqrt();
            let normal = Normal::new(0.0f32, std).expect("a positive standard deviation");
            out.iter_mut().for_each(|v| *v = normal.sample(&mut rng));
        }
        Init::Glorot => {
            let (fan_in, fan_out) = fans(shape);
            let limit = (6.0 / (fan_in + fan_out).max(1) as f32).sqrt();
            let uniform = Uniform::new_inclusive(-limit, limit).expect("a valid range");
            out.iter_mut().for_each(|v| *v = uniform.sample(&mut rng));
        }
    }
}
