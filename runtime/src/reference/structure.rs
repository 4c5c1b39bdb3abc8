//! Dense layers, flatten, add and concat.

use super::Tensor;
use ndarray::{Array2, ArrayD, Axis, Ix2};

fn matrix(t: &Tensor) -> Array2<f32> {
    t.view().into_dimensionality::<Ix2>().expect("a matrix").to_owned()
}

pub(super) fn dense_forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    let mut y = matrix(x).dot(&matrix(w));
    if let Some(b) = b {
        y += &b.view().into_dimensionality::<ndarray::Ix1>().expect("bias is a vector");
    }
    y.into_dyn()
}

pub(super) fn dense_vjp(wrt: usize, x: &Tensor, w: &Tensor, dy: &Tensor) -> Tensor {
    let dy = matrix(dy);
    match wrt {
        0 => dy.dot(&matrix(w).t()).into_dyn(),
        1 => matrix(x).t().dot(&dy).into_dyn(),
        _ => dy.sum_axis(Axis(0)).into_dyn(),
    }
}

pub(super) fn flatten(x: &Tensor) -> Tensor {
    let n = x.shape()[0];
    let rest = x.len() / n.max(1);
    x.as_standard_layout().to_owned().into_shape_with_order(ndarray::IxDyn(&[n, rest])).expect("flatten")
}

pub(super) fn add(inputs: &[&Tensor]) -> Tensor {
    let mut y = inputs[0].clone();
    for x in &inputs[1..] {
        y += *x;
    }
    y
}

pub(super) fn concat(inputs: &[&Tensor]) -> Tensor {
    let axis = Axis(inputs[0].ndim() - 1);
    let views: Vec<_> = inputs.iter().map(|t| t.view()).collect();
    ndarray::concatenate(axis, &views).expect("concat shapes were checked")
}

pub(super) fn concat_vjp(wrt: usize, inputs: &[&Tensor], dy: &Tensor) -> ArrayD<f32> {
    let axis = dy.ndim() - 1;
    let start: usize = inputs[..wrt].iter().map(|t| t.shape()[axis]).sum();
    let len = inputs[wrt].shape()[axis];
    dy.slice_axis(Axis(axis), ndarray::Slice::from(start..start + len)).to_owned()
}
