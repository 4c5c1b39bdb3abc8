//! Activations, PReLU and dropout.

use super::{Ctx, Tensor, View};
use cnnc_compiler::ir::op::Activation;
use ndarray::{Axis, Zip};

pub(super) fn activation(a: Activation, x: &View) -> Tensor {
    match a {
        Activation::Relu => x.mapv(|v| v.max(0.0)),
        Activation::LeakyRelu { alpha } => x.mapv(|v| if v > 0.0 { v } else { alpha * v }),
        Activation::Tanh => x.mapv(f32::tanh),
        Activation::Sigmoid => x.mapv(sigmoid),
        Activation::Softmax => softmax(x),
    }
}

/// The logistic function, stable for large |v|.
pub fn sigmoid(v: f32) -> f32 {
    if v >= 0.0 {
        1.0 / (1.0 + (-v).exp())
    } else {
        let e = v.exp();
        e / (1.0 + e)
    }
}

/// Softmax over the last axis, shifted by the maximum for stability.
pub fn softmax(x: &View) -> Tensor {
    let mut y = x.to_owned();
    let last = Axis(y.ndim() - 1);
    for mut lane in y.lanes_mut(last) {
        let max = lane.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        lane.mapv_inplace(|v| (v - max).exp());
        let sum = lane.sum();
        lane.mapv_inplace(|v| v / sum);
    }
    y
}

/// The gradient of an activation, from its output `y`: ReLU and leaky ReLU pass `dy` where
/// `y > 0` (the sign of x, for slopes ≥ 0), so the forward may overwrite its input.
pub(super) fn activation_vjp(a: Activation, y: &View, dy: &View) -> Tensor {
    match a {
        Activation::Relu => Zip::from(y).and(dy).map_collect(|&y, &g| if y > 0.0 { g } else { 0.0 }),
        Activation::LeakyRelu { alpha } => {
            Zip::from(y).and(dy).map_collect(|&y, &g| if y > 0.0 { g } else { alpha * g })
        }
        Activation::Tanh => Zip::from(y).and(dy).map_collect(|&y, &g| g * (1.0 - y * y)),
        Activation::Sigmoid => Zip::from(y).and(dy).map_collect(|&y, &g| g * y * (1.0 - y)),
        Activation::Softmax => {
            let mut dx = dy * y;
            let last = Axis(dx.ndim() - 1);
            for (mut lane, yl) in dx.lanes_mut(last).into_iter().zip(y.lanes(last)) {
                let s = lane.sum();
                Zip::from(&mut lane).and(&yl).for_each(|d, &y| *d -= y * s);
            }
            dx
        }
    }
}

/// Per-channel slopes broadcast over `[n, .., c]`.
fn slopes(x: &View, a: &View) -> Tensor {
    a.broadcast(x.raw_dim()).expect("slopes broadcast over the channel axis").to_owned()
}

pub(super) fn prelu(x: &View, a: &View) -> Tensor {
    Zip::from(x).and(&slopes(x, a)).map_collect(|&x, &a| if x > 0.0 { x } else { a * x })
}

pub(super) fn prelu_grad_input(x: &View, a: &View, dy: &View) -> Tensor {
    Zip::from(x).and(&slopes(x, a)).and(dy).map_collect(|&x, &a, &g| if x > 0.0 { g } else { a * g })
}

pub(super) fn prelu_grad_slope(x: &View, a_shape: &[usize], dy: &View) -> Tensor {
    let c: usize = a_shape.iter().product();
    let mut da = vec![0f32; c];
    for (i, (&x, &g)) in x.iter().zip(dy.iter()).enumerate() {
        if x <= 0.0 {
            da[i % c] += g * x;
        }
    }
    ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(a_shape), da).expect("slope gradient")
}

/// Whether dropout keeps element `index`: a splitmix64 hash of (seed, step, the layer's salt,
/// element) against the rate. Part of the op's semantics: every backend computes the same mask,
/// and the backward recomputes it instead of storing it.
pub fn keep(seed: u64, step: u64, salt: u64, index: usize, rate: f32) -> bool {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.rotate_left(29) ^ index as u64;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32 >= rate
}

/// Dropout (inverted: kept values scaled by 1/(1 − rate)). Its gradient is the same map applied
/// to the output gradient. (Inference graphs have no dropout.)
pub(super) fn dropout(rate: f32, salt: u64, x: &View, ctx: Ctx) -> Tensor {
    if rate == 0.0 {
        return x.to_owned();
    }
    let scale = 1.0 / (1.0 - rate);
    let x = x.as_standard_layout();
    let first = ctx.offset(x.len()) as usize;
    let values: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| if keep(ctx.seed, ctx.step, salt, first + i, rate) { v * scale } else { 0.0 })
        .collect();
    ndarray::ArrayD::from_shape_vec(x.raw_dim(), values).expect("same shape")
}
