//! Dense layers, reshapes, add, concat and channel slices.

use super::{Tensor, View};
use ndarray::{Array2, ArrayD, Axis, Ix2, IxDyn, Slice};

fn matrix(t: &View) -> Array2<f32> {
    t.view().into_dimensionality::<Ix2>().expect("a matrix").to_owned()
}

pub(super) fn dense_forward(x: &View, w: &View, b: Option<&View>) -> Tensor {
    let mut y = matrix(x).dot(&matrix(w));
    if let Some(b) = b {
        y += &b.view().into_dimensionality::<ndarray::Ix1>().expect("bias is a vector");
    }
    y.into_dyn()
}

/// `dy · Wᵀ`.
pub(super) fn dense_grad_input(w: &View, dy: &View) -> Tensor {
    matrix(dy).dot(&matrix(w).t()).into_dyn()
}

/// `xᵀ · dy`.
pub(super) fn dense_grad_weight(x: &View, dy: &View) -> Tensor {
    matrix(x).t().dot(&matrix(dy)).into_dyn()
}

/// The sum over every axis but the last: a bias's gradient.
pub(super) fn sum_rows(dy: &View) -> Tensor {
    let c = dy.shape()[dy.ndim() - 1];
    let rows = dy.as_standard_layout().to_owned().into_shape_with_order((dy.len() / c.max(1), c)).expect("rows");
    rows.sum_axis(Axis(0)).into_dyn()
}

/// `x` as `[n, shape..]`.
pub(super) fn reshape(x: &View, shape: &[usize]) -> Tensor {
    let mut to = vec![x.shape()[0]];
    to.extend_from_slice(shape);
    x.as_standard_layout().to_owned().into_shape_with_order(IxDyn(&to)).expect("reshape keeps the element count")
}

pub(super) fn add(inputs: &[View]) -> Tensor {
    let mut y = inputs[0].to_owned();
    for x in &inputs[1..] {
        y += x;
    }
    y
}

pub(super) fn concat(inputs: &[View]) -> Tensor {
    let axis = Axis(inputs[0].ndim() - 1);
    ndarray::concatenate(axis, inputs).expect("concat shapes were checked")
}

/// Channels `start .. start + len` of `x`.
pub(super) fn channel_slice(x: &View, start: usize, len: usize) -> Tensor {
    let axis = x.ndim() - 1;
    x.slice_axis(Axis(axis), Slice::from(start..start + len)).to_owned()
}

/// Zeros around `x` (`[batch, axes.., c]`): `op.spatial` before and after each spatial axis and
/// `op.channels` after the channels.
pub(super) fn pad(op: &cnnc_compiler::ir::op::PadOp, x: &View) -> Tensor {
    let mut shape = x.shape().to_vec();
    for (k, &(b, a)) in op.spatial.iter().enumerate() {
        shape[k + 1] += b + a;
    }
    *shape.last_mut().expect("a padded tensor has channels") += op.channels;
    let mut y = ArrayD::<f32>::zeros(IxDyn(&shape));
    let before = op.before();
    y.slice_each_axis_mut(|ax| {
        let i = ax.axis.index();
        let start = if i == 0 { 0 } else { before[i - 1] };
        Slice::from(start..start + x.shape()[i])
    })
    .assign(x);
    y
}

/// The gradient of [`pad`]: the part of `dy` that `x` filled, `x`'s shape `[batch, ..shape]`.
pub(super) fn crop(op: &cnnc_compiler::ir::op::PadOp, dy: &View, shape: &[usize]) -> Tensor {
    let before = op.before();
    dy.slice_each_axis(|ax| {
        let i = ax.axis.index();
        let (start, len) = if i == 0 { (0, dy.shape()[0]) } else { (before[i - 1], shape[i - 1]) };
        Slice::from(start..start + len)
    })
    .to_owned()
}

/// `dy` placed at channels `start ..` of zeros of `shape`: the gradient of a channel slice.
pub(super) fn unslice(dy: &View, shape: &[usize], start: usize) -> Tensor {
    let mut dx = ArrayD::<f32>::zeros(IxDyn(shape));
    let axis = dx.ndim() - 1;
    let len = dy.shape()[axis];
    dx.slice_axis_mut(Axis(axis), Slice::from(start..start + len)).assign(dy);
    dx
}

/// Each example's feature map `[n, .., c]` as matrices `[n][positions, c]`.
fn feature_matrices(x: &View) -> Vec<Array2<f32>> {
    let n = x.shape()[0];
    let c = x.shape()[x.ndim() - 1];
    let positions = x.len() / (n * c).max(1);
    let x = x.as_standard_layout().to_owned();
    (0..n)
        .map(|i| x.index_axis(Axis(0), i).to_owned().into_shape_with_order((positions, c)).expect("a feature map"))
        .collect()
}

/// The Gram matrix `AᵀA` of each example's feature map: `[n, .., c]` to `[n, c, c]`.
pub fn gram(x: &View) -> Tensor {
    let c = x.shape()[x.ndim() - 1];
    let mut out = ndarray::Array3::zeros((x.shape()[0], c, c));
    for (i, a) in feature_matrices(x).iter().enumerate() {
        out.index_axis_mut(Axis(0), i).assign(&a.t().dot(a));
    }
    out.into_dyn()
}

/// The gradient of `gram`: `dA = A·(dG + dGᵀ)` per example.
pub(super) fn gram_vjp(x: &View, dy: &View) -> Tensor {
    let mut out = ArrayD::zeros(x.shape());
    for (i, a) in feature_matrices(x).iter().enumerate() {
        let dg = dy.index_axis(Axis(0), i).into_dimensionality::<Ix2>().expect("a Gram matrix");
        let sym = &dg + &dg.t();
        let da = a.dot(&sym);
        let mut slot = out.index_axis_mut(Axis(0), i);
        slot.iter_mut().zip(da.iter()).for_each(|(o, &v)| *o = v);
    }
    out
}
