//! Max and average pooling over windows, and global pooling. Average pooling divides by the
//! number of input elements in the window (padding is not counted).

use super::conv::{output_shape, windowed, Geometry};
use super::Tensor;
use cnnc_compiler::ir::op::{PoolKind, PoolOp};
use ndarray::{ArrayD, Axis, IxDyn};

fn geometry(p: &PoolOp, x: &Tensor) -> Geometry {
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

pub(super) fn forward(p: &PoolOp, x: &Tensor) -> Tensor {
    let g = geometry(p, x);
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

pub(super) fn vjp(p: &PoolOp, x: &Tensor, dy: &Tensor) -> Tensor {
    let g = geometry(p, x);
    let xs = x.as_standard_layout();
    let xs = xs.as_slice().expect("standard layout");
    let dy = dy.as_standard_layout();
    let dys = dy.as_slice().expect("standard layout");
    let mut dx = vec![0f32; x.len()];
    for (o, w) in windows(&g).iter().enumerate() {
        match p.kind {
            PoolKind::Max => {
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
            PoolKind::Avg => {
                let share = dys[o] / w.len().max(1) as f32;
                for &i in w {
                    dx[i] += share;
                }
            }
        }
    }
    ArrayD::from_shape_vec(x.raw_dim(), dx).expect("dx shape")
}

/// `[n, spatial.., c]` viewed as `[n, positions, c]`.
fn positions(x: &Tensor) -> ndarray::Array3<f32> {
    let (n, c) = (x.shape()[0], x.shape()[x.ndim() - 1]);
    let p = x.len() / (n * c).max(1);
    x.as_standard_layout().to_owned().into_shape_with_order((n, p, c)).expect("positions view")
}

pub(super) fn global_forward(kind: PoolKind, x: &Tensor) -> Tensor {
    let v = positions(x);
    match kind {
        PoolKind::Avg => v.mean_axis(Axis(1)).expect("at least one position").into_dyn(),
        PoolKind::Max => v.fold_axis(Axis(1), f32::NEG_INFINITY, |a, &b| a.max(b)).into_dyn(),
    }
}

pub(super) fn global_vjp(kind: PoolKind, x: &Tensor, y: &Tensor, dy: &Tensor) -> Tensor {
    let v = positions(x);
    let (n, p, c) = v.dim();
    let mut dx = ndarray::Array3::<f32>::zeros((n, p, c));
    for b in 0..n {
        for ch in 0..c {
            let g = dy[[b, ch]];
            match kind {
                PoolKind::Avg => dx.slice_mut(ndarray::s![b, .., ch]).fill(g / p as f32),
                PoolKind::Max => {
                    if let Some(i) = (0..p).find(|&i| v[[b, i, ch]] == y[[b, ch]]) {
                        dx[[b, i, ch]] = g;
                    }
                }
            }
        }
    }
    dx.into_shape_with_order(IxDyn(x.shape())).expect("dx shape")
}
