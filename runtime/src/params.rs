//! Parameter values by name: initialized (He, Glorot; seeded and deterministic), loaded from or
//! saved to safetensors files.

use crate::reference::Tensor;
use cnnc_compiler::ir::op::{Init, Op, ParamOp};
use cnnc_compiler::ir::Graph;
use ndarray::{ArrayD, IxDyn};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use std::collections::BTreeMap;

/// Every parameter (and batchnorm statistic) of a model, by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    /// Values by parameter name (`conv1/weight`).
    pub values: BTreeMap<String, Tensor>,
}

/// A stable 64-bit hash of a name (FNV-1a), so each parameter's random stream depends only on
/// the seed and its own name.
pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
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

impl Params {
    /// Initial values for every parameter of `graph`, from `seed`.
    pub fn init(graph: &Graph, seed: u64) -> Params {
        let mut values = BTreeMap::new();
        for id in graph.node_ids() {
            let node = graph.node(id);
            let Op::Param(p) = &node.op else { continue };
            if values.contains_key(&node.name) {
                continue;
            }
            values.insert(node.name.clone(), initial(p, &node.shape.0, seed ^ name_hash(&node.name)));
        }
        Params { values }
    }

    /// The value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.values.get(name)
    }
}

fn initial(p: &ParamOp, shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data: Vec<f32> = match p.init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Fill(v) => vec![v; n],
        Init::Constant => p.value.as_deref().map(<[f32]>::to_vec).unwrap_or_else(|| vec![0.0; n]),
        Init::He => {
            let std = (2.0 / fans(shape).0.max(1) as f32).sqrt();
            let normal = Normal::new(0.0f32, std).expect("a positive standard deviation");
            (0..n).map(|_| normal.sample(&mut rng)).collect()
        }
        Init::Glorot => {
            let (fan_in, fan_out) = fans(shape);
            let limit = (6.0 / (fan_in + fan_out).max(1) as f32).sqrt();
            let uniform = Uniform::new_inclusive(-limit, limit).expect("a valid range");
            (0..n).map(|_| uniform.sample(&mut rng)).collect()
        }
    };
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("the data fills the shape")
}
