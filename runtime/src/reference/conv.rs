//! Convolution by im2col: every output position's receptive field becomes a row of a matrix,
//! and the convolution is one matrix product per group. 1D and 2D inputs are treated as 3D with
//! unit leading axes.

use super::{Tensor, View};
use cnnc_compiler::ir::op::ConvOp;
use cnnc_compiler::shape::AxisCalc;
use ndarray::{s, Array2, ArrayD, IxDyn};

/// The geometry of a windowed op over three spatial axes (depth, height, width).
#[derive(Clone, Debug)]
pub(super) struct Geometry {
    pub n: usize,
    pub input: [usize; 3],
    pub channels: usize,
    pub size: [usize; 3],
    pub stride: [usize; 3],
    pub pad: [usize; 3],
    pub dilation: [usize; 3],
    pub output: [usize; 3],
}

/// Pads a per-axis list to three axes with `fill` in front.
pub(super) fn three<T: Copy>(v: &[T], fill: T) -> [T; 3] {
    let mut out = [fill; 3];
    out[3 - v.len()..].copy_from_slice(v);
    out
}

impl Geometry {
    pub fn new(
        shape: &[usize],
        size: &[usize],
        stride: &[usize],
        pad: &[(usize, usize)],
        dilation: &[usize],
        out: &[usize],
    ) -> Self {
        let spatial = &shape[1..shape.len() - 1];
        Geometry {
            n: shape[0],
            input: three(spatial, 1),
            channels: shape[shape.len() - 1],
            size: three(size, 1),
            stride: three(stride, 1),
            pad: three(&pad.iter().map(|p| p.0).collect::<Vec<_>>(), 0),
            dilation: three(dilation, 1),
            output: three(out, 1),
        }
    }

    pub fn positions(&self) -> usize {
        self.output.iter().product()
    }

    pub fn window(&self) -> usize {
        self.size.iter().product()
    }

    /// The input coordinate read by output `o` and window offset `k` on `axis`, if inside the input.
    pub fn source(&self, axis: usize, o: usize, k: usize) -> Option<usize> {
        let i = (o * self.stride[axis] + k * self.dilation[axis]) as isize - self.pad[axis] as isize;
        (i >= 0 && (i as usize) < self.input[axis]).then_some(i as usize)
    }

    /// Calls `f(row, column, input offset)` for every in-bounds (output position, window element)
    /// pair of channel block `c0..c0+cg`; offsets index the input viewed as `[n, d, h, w, c]`.
    pub fn for_each(&self, c0: usize, cg: usize, mut f: impl FnMut(usize, usize, usize)) {
        let [id, ih, iw] = self.input;
        let c = self.channels;
        let [od, oh, ow] = self.output;
        let [fd, fh, fw] = self.size;
        let mut row = 0;
        for n in 0..self.n {
            for zd in 0..od {
                for zh in 0..oh {
                    for zw in 0..ow {
                        let mut col = 0;
                        for kd in 0..fd {
                            for kh in 0..fh {
                                for kw in 0..fw {
                                    if let (Some(d), Some(h), Some(w)) =
                                        (self.source(0, zd, kd), self.source(1, zh, kh), self.source(2, zw, kw))
                                    {
                                        let base = (((n * id + d) * ih + h) * iw + w) * c + c0;
                                        for ci in 0..cg {
                                            f(row, col + ci, base + ci);
                                        }
                                    }
                                    col += cg;
                                }
                            }
                        }
                        row += 1;
                    }
                }
            }
        }
    }
}

/// The geometry of a window op on `x`, output sizes by the compiler's own rule.
pub(super) fn windowed(
    x: &[usize],
    size: &[usize],
    stride: &[usize],
    pad: &[(usize, usize)],
    dilation: &[usize],
    ceil: bool,
) -> Geometry {
    let spatial = &x[1..x.len() - 1];
    let out: Vec<usize> = (0..spatial.len())
        .map(|i| {
            let calc =
                AxisCalc { axis: i, n: spatial[i], pad: pad[i], f: size[i], dilation: dilation[i], s: stride[i], ceil };
            calc.out().unwrap_or(0)
        })
        .collect();
    Geometry::new(x, size, stride, pad, dilation, &out)
}

fn geometry(c: &ConvOp, x: &[usize]) -> Geometry {
    windowed(x, &c.size, &c.stride, &c.pad, &c.dilation, false)
}

fn im2col(g: &Geometry, x: &[f32], c0: usize, cg: usize) -> Array2<f32> {
    let mut col = Array2::<f32>::zeros((g.n * g.positions(), g.window() * cg));
    let data = col.as_slice_mut().expect("fresh arrays are contiguous");
    let width = g.window() * cg;
    g.for_each(c0, cg, |r, k, i| data[r * width + k] = x[i]);
    col
}

/// `[n, output spatial axes (the input's rank), channels]`.
pub(super) fn output_shape(g: &Geometry, rank: usize, channels: usize) -> IxDyn {
    let mut shape = vec![g.n];
    shape.extend_from_slice(&g.output[3 - rank..]);
    shape.push(channels);
    IxDyn(&shape)
}

/// Weights `[f.., c_in/groups, filters]` as a matrix `[window·c_in/groups, filters]`.
fn weight_matrix(w: &View) -> Array2<f32> {
    let filters = w.shape()[w.ndim() - 1];
    let rows = w.len() / filters.max(1);
    w.as_standard_layout().to_owned().into_shape_with_order((rows, filters)).expect("weights reshape")
}

pub(super) fn forward(c: &ConvOp, x: &View, w: &View, b: Option<&View>) -> Tensor {
    let g = geometry(c, x.shape());
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let wm = weight_matrix(w);
    let (cg, fg) = (g.channels / c.groups, c.filters / c.groups);
    let mut y = Array2::<f32>::zeros((g.n * g.positions(), c.filters));
    for group in 0..c.groups {
        let col = im2col(&g, xs, group * cg, cg);
        let part = col.dot(&wm.slice(s![.., group * fg..(group + 1) * fg]));
        y.slice_mut(s![.., group * fg..(group + 1) * fg]).assign(&part);
    }
    if let Some(b) = b {
        y += &b.view().into_dimensionality::<ndarray::Ix1>().expect("bias is a vector");
    }
    y.into_shape_with_order(output_shape(&g, x.ndim() - 2, c.filters)).expect("output reshape")
}

/// The gradient with respect to the input: `dy` times the transposed weights, scattered back
/// over each window (col2im).
pub(super) fn grad_input(c: &ConvOp, x_shape: &[usize], w: &View, dy: &View) -> Tensor {
    let g = geometry(c, x_shape);
    let dym = rows(&g, c, dy);
    let wm = weight_matrix(w);
    let (cg, fg) = (g.channels / c.groups, c.filters / c.groups);
    let mut dx = ArrayD::<f32>::zeros(IxDyn(x_shape));
    let dxs = dx.as_slice_mut().expect("fresh arrays are contiguous");
    for group in 0..c.groups {
        let dcol =
            dym.slice(s![.., group * fg..(group + 1) * fg]).dot(&wm.slice(s![.., group * fg..(group + 1) * fg]).t());
        let width = g.window() * cg;
        let dcs = dcol.as_slice().expect("fresh arrays are contiguous");
        g.for_each(group * cg, cg, |r, k, i| dxs[i] += dcs[r * width + k]);
    }
    dx
}

/// The gradient with respect to the weights: im2col(x)ᵀ times `dy`, per group.
pub(super) fn grad_weight(c: &ConvOp, x: &View, w_shape: &[usize], dy: &View) -> Tensor {
    let g = geometry(c, x.shape());
    let dym = rows(&g, c, dy);
    let xc = x.as_standard_layout();
    let xs = xc.as_slice().expect("standard layout");
    let (cg, fg) = (g.channels / c.groups, c.filters / c.groups);
    let filters = w_shape[w_shape.len() - 1];
    let mut dw = Array2::<f32>::zeros((w_shape.iter().product::<usize>() / filters.max(1), filters));
    for group in 0..c.groups {
        let col = im2col(&g, xs, group * cg, cg);
        let part = col.t().dot(&dym.slice(s![.., group * fg..(group + 1) * fg]));
        dw.slice_mut(s![.., group * fg..(group + 1) * fg]).assign(&part);
    }
    dw.into_shape_with_order(IxDyn(w_shape)).expect("dw reshape")
}

/// `dy` as a matrix `[n·positions, filters]`.
fn rows(g: &Geometry, c: &ConvOp, dy: &View) -> Array2<f32> {
    dy.as_standard_layout().to_owned().into_shape_with_order((g.n * g.positions(), c.filters)).expect("dy reshape")
}
