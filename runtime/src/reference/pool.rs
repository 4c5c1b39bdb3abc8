//! Max and average pooling over windows, and global pooling. Average pooling divides by the
//! number of input elements in the window (padding is not counted).

use super::conv::{output_shape, windowed, Geometry};
use super::{Tensor, View};
use cnnc_compiler::ir::op::{PoolKind, PoolOp};
use ndarray::{ArrayD, Axis, IxDyn};

fn geometry(p: &PoolOp, x: &[usize]) -> Geometry {
    windowed(x, &p.size, &p.stride, &p.pad, &vec![1; p.size.len()], p.ceil)
}

/// For every (output element, input element of its window) pair, in window order:
/// `f(output offset, input offset)`, offsets row-major over `[n, out.., c]` and `[n, in.., c]`.
fn for_each_pair(g: &Geometry, mut f: impl FnMut(usize, usize)) {
    let c = g.channels;
    // One block of all channels gives (row, k, offset) with k = window element · c + channel.
    g.for_each(0, c, |row, k, i| f(row * c + k % c, i));
}

/// How many input elements each output element's window holds (padding not counted).
fn counts(g: &Geometry) -> Vec<u32> {
    let mut count = vec![0u32; g.n * g.positions() * g.channels];
    for_each_pair(g, |o, _| count[o] += 1);
    count
}

pub(super) fn forward(p: &PoolOp, x: &View) -> Tensor {
    let g = geometry(p, x.shape());
    let xs = x.as_standard_layout();
    let xs = xs.as_slice().expect("standard layout");
    let size = g.n * g.positions() * g.channels;
    let values = match p.kind {
        PoolKind::Max => {
            let mut out = vec![f32::NEG_INFINITY; size];
            for_each_pair(&g, |o, i| out[o] = out[o].max(xs[i]));
            out
        }
        PoolKind::Avg => {
            let mut out = vec![0f32; size];
            for_each_pair(&g, |o, i| out[o] += xs[i]);
            out.iter().zip(counts(&g)).map(|(s, n)| s / n.max(1) as f32).collect()
        }
    };
    ArrayD::from_shape_vec(output_shape(&g, x.ndim() - 2, g.channels), values).expect("pool output")
}

/// The gradient with respect to the input (of shape `x_shape`): max pooling routes each `dy` to
/// its window's first maximum in `x`; average pooling spreads it evenly (needing no `x`).
pub(super) fn vjp(p: &PoolOp, x_shape: &[usize], x: Option<&View>, dy: &View) -> Tensor {
    let g = geometry(p, x_shape);
    let dy = dy.as_standard_layout();
    let dys = dy.as_slice().expect("standard layout");
    let mut dx = vec![0f32; x_shape.iter().product()];
    let xc = x.map(|x| x.as_standard_layout());
    match (p.kind, xc.as_ref().and_then(|x| x.as_slice())) {
        (PoolKind::Max, Some(xs)) => {
            // The first maximum in window order takes the gradient.
            let mut best: Vec<Option<usize>> = vec![None; dys.len()];
            for_each_pair(&g, |o, i| {
                if best[o].is_none_or(|b| xs[i] > xs[b]) {
                    best[o] = Some(i);
                }
            });
            for (o, b) in best.into_iter().enumerate() {
                if let Some(b) = b {
                    dx[b] += dys[o];
                }
            }
        }
        _ => {
            let count = counts(&g);
            for_each_pair(&g, |o, i| dx[i] += dys[o] / count[o].max(1) as f32);
        }
    }
    ArrayD::from_shape_vec(IxDyn(x_shape), dx).expect("dx shape")
}

/// `[n, spatial.., c]` viewed as `[n, positions, c]`.
fn positions(x: &View) -> ndarray::Array3<f32> {
    let (n, c) = (x.shape()[0], x.shape()[x.ndim() - 1]);
    let p = x.len() / (n * c).max(1);
    x.as_standard_layout().to_owned().into_shape_with_order((n, p, c)).expect("positions view")
}

pub(super) fn global_forward(kind: PoolKind, x: &View) -> Tensor {
    let v = positions(x);
    match kind {
        PoolKind::Avg => v.mean_axis(Axis(1)).expect("at least one position").into_dyn(),
        PoolKind::Max => v.fold_axis(Axis(1), f32::NEG_INFINITY, |a, &b| a.max(b)).into_dyn(),
    }
}

/// The gradient of global pooling with respect to its input (of shape `x_shape`): average
/// spreads `dy` over all positions; max gives it to the first position equal to the maximum.
pub(super) fn global_vjp(kind: PoolKind, x_shape: &[usize], a: &super::Args, dy: &View) -> Tensor {
    let (n, c) = (x_shape[0], x_shape[x_shape.len() - 1]);
    let p = x_shape.iter().product::<usize>() / (n * c).max(1);
    let mut dx = ndarray::Array3::<f32>::zeros((n, p, c));
    let max = (kind == PoolKind::Max).then(|| (positions(a.x(0)), a.y(0)));
    for b in 0..n {
        for ch in 0..c {
            let g = dy[[b, ch]];
            match &max {
                None => dx.slice_mut(ndarray::s![b, .., ch]).fill(g / p as f32),
                Some((v, y)) => {
                    if let Some(i) = (0..p).find(|&i| v[[b, i, ch]] == y[[b, ch]]) {
                        dx[[b, i, ch]] = g;
                    }
                }
            }
        }
    }
    dx.into_shape_with_order(IxDyn(x_shape)).expect("dx shape")
}
