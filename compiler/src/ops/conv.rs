//! Convolution over 1, 2 or 3 spatial axes, with stride, padding, dilation and groups.

use super::{axes_text, conv_rank, elements, finish_windows, need, pads_text, windows, GradRule, OpRule, Window};
use super::{Built, LayerSpec, ParamNeed, Tensors};
use crate::elaborate::layers::LayerArgs;
use crate::ir::op::{Init, Op, ParamRole, Read};
use crate::lir::lower::Lowerer;
use crate::lir::{Expr, Geom, Kernel, View};
use crate::shape::{Inferred, Shape, ShapeFault};

/// Attributes of [`Op::Conv`]. Every vector has one entry per spatial axis. Inputs: x, weight
/// `[f.., c_in/groups, filters]`, bias?
#[derive(Clone, Debug, PartialEq)]
pub struct ConvOp {
    /// Number of filters (output channels).
    pub filters: usize,
    /// Filter size `f` per axis.
    pub size: Vec<usize>,
    /// Stride `s` per axis.
    pub stride: Vec<usize>,
    /// Padding before and after, per axis.
    pub pad: Vec<(usize, usize)>,
    /// Dilation per axis; the effective filter size is `d·(f − 1) + 1`.
    pub dilation: Vec<usize>,
    /// Channel groups; `groups = c_in` is a depthwise convolution.
    pub groups: usize,
}

/// `conv(filters, size, ...)`.
pub const CONV: LayerSpec = LayerSpec {
    name: "conv",
    tensors: Tensors::One,
    params: &[
        ("filters", true),
        ("size", true),
        ("stride", false),
        ("pad", false),
        ("dilation", false),
        ("groups", false),
        ("bias", false),
        ("weights", false),
        ("init", false),
        ("round", false),
    ],
    signature:
        "conv(filters, size, stride: 1, pad: valid, dilation: 1, groups: 1, bias: true, weights: CONST, init: he, \
                round: floor)",
    doc: "Convolution over 1, 2 or 3 spatial axes (by the input's rank).",
    build,
};

/// The weight shape of a convolution on `channels` input channels: `[f.., channels/groups, filters]`.
pub fn weight_shape(c: &ConvOp, channels: usize) -> Shape {
    let mut w = c.size.clone();
    w.push(channels / c.groups.max(1));
    w.push(c.filters);
    Shape(w)
}

/// `he` or `glorot`.
pub(crate) fn init(name: &str) -> Init {
    if name == "glorot" {
        Init::Glorot
    } else {
        Init::He
    }
}

fn build(a: &mut LayerArgs) -> Option<Built> {
    let x = a.window_input("conv")?;
    let ones = vec![1; x.rank() - 1];
    let filters = a.int("filters", "a filter count", 1, None)?;
    let size = a.axes("size", "filter size", 1, None)?;
    let stride = a.axes("stride", "stride", 1, Some(ones.clone()))?;
    let dilation = a.axes("dilation", "dilation", 1, Some(ones))?;
    let pad = a.padding(&size, &stride, &dilation)?;
    let groups = a.int("groups", "a group count", 1, Some(1))?;
    let bias = a.flag("bias", "`bias`", true)?;
    let init = init(a.choice("init", "an initializer", &["he", "glorot"], "he")?);
    // Convolutions round down only; written out, it says the rows a stride leaves unread are meant.
    a.choice("round", "rounding", &["floor"], "floor")?;
    let op = ConvOp { filters, size, stride, pad, dilation, groups };
    let mut weight = ParamNeed::new(ParamRole::Weight, weight_shape(&op, x.channels()).0, init);
    let fixed = match a.constant("weights", "`weights`")? {
        Some(c) => {
            weight.shape = Shape(c.shape.clone());
            weight.init = Init::Constant;
            weight.value = Some(c.data.clone());
            weight.frozen = true;
            true
        }
        None => false,
    };
    let mut params = vec![weight];
    if bias {
        let mut bias = ParamNeed::new(ParamRole::Bias, vec![op.filters], Init::Zeros);
        bias.frozen = fixed;
        params.push(bias);
    }
    Some((Op::Conv(op), params))
}

impl OpRule for ConvOp {
    fn mnemonic(&self) -> String {
        format!("conv{}d", self.size.len())
    }

    fn attributes(&self) -> String {
        let mut s = format!(
            "[n={},f={},s={},p={}",
            self.filters,
            axes_text(&self.size),
            axes_text(&self.stride),
            pads_text(&self.pad)
        );
        if self.dilation.iter().any(|&d| d != 1) {
            s += &format!(",d={}", axes_text(&self.dilation));
        }
        if self.groups != 1 {
            s += &format!(",g={}", self.groups);
        }
        s + "]"
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        let x = need(inputs, 2)?;
        conv_rank(x)?;
        let w = inputs.get(1).ok_or(ShapeFault::Arity { expected: 2, got: inputs.len() })?;
        let calcs = windows(x, &self.geometry())?;
        if self.groups == 0 || self.filters == 0 {
            return Err(ShapeFault::Zero { what: if self.groups == 0 { "groups" } else { "filters" } });
        }
        if !x.channels().is_multiple_of(self.groups) {
            return Err(ShapeFault::ChannelsNotDivisible { channels: x.channels(), groups: self.groups });
        }
        if !self.filters.is_multiple_of(self.groups) {
            return Err(ShapeFault::FiltersNotDivisible { filters: self.filters, groups: self.groups });
        }
        let expected = weight_shape(self, x.channels());
        if **w != expected {
            return Err(ShapeFault::ParamShape { expected, got: (*w).clone() });
        }
        if let Some(b) = inputs.get(2) {
            if **b != Shape(vec![self.filters]) {
                return Err(ShapeFault::ParamShape { expected: Shape(vec![self.filters]), got: (*b).clone() });
            }
        }
        finish_windows(calcs, self.filters)
    }

    fn arity(&self, n: usize) -> bool {
        n == 2 || n == 3
    }

    fn param_ports(&self) -> bool {
        true
    }

    fn macs(&self, inputs: &[&Shape], output: &Shape) -> u64 {
        let cin = inputs.first().map_or(0, |x| x.channels()) as u64;
        let window: u64 = self.size.iter().map(|&f| f as u64).product();
        elements(output).saturating_mul(window).saturating_mul(cin / self.groups.max(1) as u64)
    }

    fn grad(&self) -> GradRule {
        GradRule::PerInput
    }

    /// dx = dy ⋆ W (a convolution of dy with the rotated filters), dW = x ⋆ dy, db = Σ dy.
    fn reads(&self, wrt: usize) -> Vec<Read> {
        match wrt {
            0 => vec![Read::Input(1), Read::Grad],
            1 => vec![Read::Input(0), Read::Grad],
            _ => vec![Read::Grad],
        }
    }

    fn window(&self) -> Option<Window<'_>> {
        Some(self.geometry())
    }

    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        self.lower_forward(l)
    }

    fn lower_grad(&self, l: &mut Lowerer, wrt: &[usize]) -> Result<(), String> {
        self.lower_gradients(l, wrt)
    }
}

impl ConvOp {
    fn geometry(&self) -> Window<'_> {
        Window { size: &self.size, stride: &self.stride, pad: &self.pad, dilation: self.dilation.clone(), ceil: false }
    }
}

/// Whether a convolution is a plain matrix product on the input viewed as `[n·positions, c]`:
/// 1×1 windows, stride 1, no padding, one group.
fn pointwise(c: &ConvOp) -> bool {
    c.groups == 1 && one_by_one(c)
}

/// A 1×1 window, stride 1, no padding.
fn one_by_one(c: &ConvOp) -> bool {
    c.size.iter().all(|&f| f == 1) && c.stride.iter().all(|&s| s == 1) && c.pad.iter().all(|&p| p == (0, 0))
}

/// The rows of the im2col matrix of group `g` (or `x` itself for a pointwise convolution).
fn columns(c: &ConvOp, l: &mut Lowerer, x: &View, out: &[usize], g: usize) -> View {
    let cg = x.cols() / c.groups;
    let rows: usize = out[..out.len() - 1].iter().product();
    if pointwise(c) {
        return x.reshaped(vec![rows, cg]);
    }
    let geom = crate::lir::lower::geom(&x.shape, &c.geometry(), out, g * cg, cg);
    debug_assert_eq!(geom.n * geom.positions(), rows);
    // The weight gradient reuses the forward matrix where the filters are not a multiple of 8
    // (measured on ResNet-like shapes); elsewhere `fuse_im2col` makes both products implicit,
    // which moves less memory than keeping it. A layer that runs as a direct convolution (LeNet-5's
    // first: 0.87 ms for its im2col and 0.66 + 0.33 ms for the two narrow products, against
    // direct loops over rows) keeps no matrix.
    let fg = c.filters / c.groups;
    l.columns(x, geom.clone(), !fg.is_multiple_of(8) && !geom.direct(fg))
}

/// Weights `[f.., c_in/groups, filters]` as a matrix `[window·c_in/groups, filters]`.
fn weight_matrix(w: &View) -> View {
    let filters = w.cols();
    w.reshaped(vec![w.len() / filters.max(1), filters])
}

impl ConvOp {
    /// The im2col geometry over `dy` that makes the input gradient a convolution of `dy` with the
    /// rotated filters: one group, stride 1, padding `d·(f − 1) − p` before each axis; `None` where
    /// the convolution is not of that kind, or where `dy·Wᵀ` with a col2im moves less data: both
    /// products do the same work, but the rotated one writes `window·c_out` columns per input
    /// position where the other writes (and col2im reads back) `window·c_in`. Measured
    /// (`cnnc bench --profile`, AVX2, 2 threads): LeNet-5's conv2 (6 → 16) takes 5.1 ms a step
    /// with col2im and 8–11 ms rotated; ResNet-20's 3×3 convolutions (c_in = c_out) 221 ms
    /// rotated against 226 ms with col2im, so equal channels go to the rotation.
    fn rotated(&self, x: &[usize], dy: &[usize]) -> Option<Geom> {
        let (cin, cout) = (x[x.len() - 1], dy[dy.len() - 1]);
        if self.groups != 1 || self.stride.iter().any(|&s| s != 1) || cout > cin {
            return None;
        }
        let mut pad = Vec::new();
        for ((&f, &d), &(before, _)) in self.size.iter().zip(&self.dilation).zip(&self.pad) {
            pad.push((d * (f - 1)).checked_sub(before)?);
        }
        let three = |v: &[usize], fill: usize| {
            let mut a = [fill; 3];
            a[3 - v.len()..].copy_from_slice(v);
            a
        };
        Some(Geom {
            n: dy[0],
            input: three(&dy[1..dy.len() - 1], 1),
            channels: cout,
            c0: 0,
            cg: cout,
            size: three(&self.size, 1),
            stride: [1; 3],
            pad: three(&pad, 0),
            dilation: three(&self.dilation, 1),
            output: three(&x[1..x.len() - 1], 1),
        })
    }

    /// y = im2col(x)·W (+ b), one product per group. A 1×1 depthwise convolution (one filter a
    /// channel: a per-channel scale, and shift) is a map, `y = x·w[c] (+ b[c])`, which an
    /// epilogue can take, rather than a product of one column per channel.
    pub(crate) fn lower_forward(&self, l: &mut Lowerer) -> Result<(), String> {
        let x = l.input(0)?;
        let x = l.contiguous(x);
        let bias = l.input(2).ok();
        if one_by_one(self) && self.groups == self.filters && x.cols() == self.filters {
            let c = self.filters;
            let w = l.input(1)?.reshaped(vec![c]);
            let y = l.output(0);
            let mut expr = vec![Expr::Input(0), Expr::Channel(0), Expr::Mul(0, 1)];
            let mut channels = vec![w];
            if let Some(b) = bias {
                expr.extend([Expr::Channel(1), Expr::Add(2, 3)]);
                channels.push(b.reshaped(vec![c]));
            }
            l.emit(super::map(expr, vec![x], channels, y));
            return Ok(());
        }
        let w = weight_matrix(&l.input(1)?);
        let y = l.output(0);
        let fg = self.filters / self.groups;
        for g in 0..self.groups {
            let a = columns(self, l, &x, &y.shape, g);
            let c = y.matrix().columns(g * fg, fg);
            let bias = bias.as_ref().map(|b| b.columns(g * fg, fg));
            l.emit(Kernel::Gemm {
                a,
                b: w.columns(g * fg, fg),
                c,
                ta: false,
                tb: false,
                accumulate: false,
                bias,
                epilogue: None,
            });
        }
        Ok(())
    }

    /// dx = col2im(dy·Wᵀ); dW = im2col(x)ᵀ·dy; db = Σ dy.
    pub(crate) fn lower_gradients(&self, l: &mut Lowerer, wrt: &[usize]) -> Result<(), String> {
        let dy = l.read(Read::Grad)?;
        let dym = dy.matrix();
        let fg = self.filters / self.groups;
        for (k, &w) in wrt.iter().enumerate() {
            let r = k as u16;
            match w {
                0 => {
                    let wm = weight_matrix(&l.read(Read::Input(1))?);
                    let x_shape = l.forward_input_shape(0)?;
                    let dx = l.output(r);
                    let cg = x_shape[x_shape.len() - 1] / self.groups;
                    if pointwise(self) {
                        let c = dx.reshaped(vec![dym.rows(), cg]);
                        l.emit(Kernel::Gemm {
                            a: dym.clone(),
                            b: wm,
                            c,
                            ta: false,
                            tb: true,
                            accumulate: false,
                            bias: None,
                            epilogue: None,
                        });
                        continue;
                    }
                    if let Some(geom) = self.rotated(&x_shape, &dy.shape) {
                        // dx = im2col(dy, padded by d·(f − 1) − p)·rot(W): a convolution
                        // over dy, written once, with no col2im.
                        let taps = geom.window();
                        let turned = l.temp("rotated_filters", vec![taps * self.filters, cg]);
                        l.emit(Kernel::RotateFilters { w: wm, out: turned.clone(), taps });
                        let dyc = l.contiguous(dy.clone());
                        let a = l.columns(&dyc, geom, false);
                        let c = dx.reshaped(vec![a.rows(), cg]);
                        l.emit(Kernel::Gemm {
                            a,
                            b: turned,
                            c,
                            ta: false,
                            tb: false,
                            accumulate: false,
                            bias: None,
                            epilogue: None,
                        });
                        continue;
                    }
                    l.emit(Kernel::Fill { dst: dx.clone(), value: 0.0 });
                    for g in 0..self.groups {
                        let geom = crate::lir::lower::geom(&x_shape, &self.geometry(), &dy.shape, g * cg, cg);
                        let dcol = l.temp("dcol", vec![dym.rows(), geom.window() * cg]);
                        let (a, b) = (dym.columns(g * fg, fg), wm.columns(g * fg, fg));
                        l.emit(Kernel::Gemm {
                            a,
                            b,
                            c: dcol.clone(),
                            ta: false,
                            tb: true,
                            accumulate: false,
                            bias: None,
                            epilogue: None,
                        });
                        l.emit(Kernel::Col2im { col: dcol, dx: dx.clone(), geom });
                    }
                }
                1 => {
                    let x = l.read(Read::Input(0))?;
                    let x = l.contiguous(x);
                    let dw = weight_matrix(&l.output(r));
                    for g in 0..self.groups {
                        let col = columns(self, l, &x, &dy.shape, g);
                        let (b, c) = (dym.columns(g * fg, fg), dw.columns(g * fg, fg));
                        l.emit(Kernel::Gemm {
                            a: col,
                            b,
                            c,
                            ta: true,
                            tb: false,
                            accumulate: false,
                            bias: None,
                            epilogue: None,
                        });
                    }
                }
                _ => {
                    let db = l.output(r);
                    l.emit(Kernel::SumRows { x: dym.clone(), y: db });
                }
            }
        }
        Ok(())
    }
}
