//! Max and average pooling over windows, and global pooling. Average pooling divides by the
//! number of input elements in the window (padding is not counted).

use super::conv::{output_shape, windowed, Geometry};
use super::{Tensor, View};
use cnnc_compiler::ir::op::{PoolKind, PoolOp};
use ndarray::{ArrayD, Axis, IxDyn};

fn geometry(p: &PoolOp, x: &[usize]) -> Geometry {
    windowed(x, &p.size, &p.stride, &p.pad, &vec![1; p.size.len()], p.ceil)
}

/// For every output element (row-major over `[n, out.., c]`), the input offsets of its window.
fn windows(g: &Geometry) -> Vec<Vec<usize>> {
    let c = g.channels;
    let mut out = vec![Vec::new(); g.n * g.positions() * c];
    // `for_each` walks channel blocks; one block of all channels gives (row, k, offset) with
    // k = window element · c + channel.
    g.for_each(0, c, |row, k, i| out[row * c + k % c].push(i));
    out
}

pub(super) fn forward(p: &PoolOp, x: &View) -> Tensor {
    let g = geometry(p, x.shape());
    let xs = x.as_standard_layout();
    let xs = xs.as_slice().expect("standard layout");
    let values: Vec<f32> = windows(&g)
        .iter()
        .map(|w| match p.kind {
            PoolKind::Max => w.iter().map(|&i| xs[i]).fold(f32::NEG_INFINITY, f32::max),
            PoolKind::Avg => w.iter().map(|&i| xs[i]).sum::<f32>() / w.len().max(1) as f32,
        })
        .collect();
    ArrayD::from_shape_vec(output_shape(&g, x.ndim() - 2, g.channels), values).expect("pool output")
}

/// The gradient with respect to the input (of shape `x_shape`): max pooling routes each `dy` to
/// its window's first maximum in `x`; average pooling spreads it evenly (needing no `x`).
pub(super) fn vjp(p: &PoolOp, x_shape: &[usize], x: Option<&View>, dy: &View) -> Tensor {
    let g = geometry(p, x_shape);
    let xc = x.map(|x| x.as_standard_layout());
    let xs = xc.as_ref().and_then(|x| x.as_slice());
    let dy = dy.as_standard_layout();
    let dys = dy.as_slice().expect("standard layout");
    let mut dx = vec![0f32; x_shape.iter().product()];
    for (o, w) in windows(&g).iter().enumerate() {
        match (p.kind, xs) {
            (PoolKind::Max, Some(xs)) => {
                // The first maximum takes the gradient.
                let mut best: Option<usize> = None;
                for &i in w {
                    if best.is_none_or(|b| xs[i] > xs[b]) {
                        best = Some(i);
                    }
                }
                if let Some(b) = best {
                    dx[b] += dys[o];
                }
            }
            _ => {
                let share = dys[o] / w.len().max(1) as f32;
                for &i in w {
                    dx[i] += share;
                }
            }
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
