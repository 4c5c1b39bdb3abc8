//! What the runtime's property tests share: models from one line of layers, random tensors,
//! and the strategies for window sizes.

use cnnc_compiler::ir::Graph;
use cnnc_runtime::reference::Tensor;
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// Compiles `model M { input x: SHAPE  output y = x |> LAYERS }`; `None` if it does not check.
pub fn model(input: &[usize], layers: &str) -> Option<Graph> {
    let shape: Vec<String> = input.iter().map(|d| d.to_string()).collect();
    let text = format!("model M {{\n input x: [{}]\n output y = x |> {layers}\n}}", shape.join(", "));
    let c = cnnc_compiler::compile_source("m.cnn", None, text.as_bytes());
    if c.has_errors() {
        return None;
    }
    Some(c.models.into_iter().next()?.graph)
}

/// Values uniform in [-1, 1).
pub fn random(shape: &[usize], rng: &mut ChaCha8Rng) -> Tensor {
    let n = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()).unwrap()
}

/// `rank` sizes from 1 to `max`.
pub fn size(rank: usize, max: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1..=max, rank)
}

/// `[a, b, c]`.
pub fn list(v: &[usize]) -> String {
    format!("[{}]", v.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}
