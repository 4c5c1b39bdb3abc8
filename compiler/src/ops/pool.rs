//! Max and average pooling over windows, and global pooling over all positions.

use super::{axes_text, conv_rank, finish_windows, need, pads_text, windows, GradRule, OpRule, Window};
use super::{Built, LayerSpec, Tensors};
use crate::elaborate::layers::LayerArgs;
use crate::ir::op::{Op, Read};
use crate::lir::lower::Lowerer;
use crate::lir::Kernel;
use crate::shape::{Inferred, Shape, ShapeFault};
use std::fmt;

/// Max or average.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Maximum of the window.
    Max,
    /// Mean of the window (padding excluded from the count).
    Avg,
}

impl fmt::Display for PoolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolKind::Max => "max",
            PoolKind::Avg => "avg",
        })
    }
}

/// Attributes of [`Op::Pool`].
#[derive(Clone, Debug, PartialEq)]
pub struct PoolOp {
    /// Max or average.
    pub kind: PoolKind,
    /// Window size per axis.
    pub size: Vec<usize>,
    /// Stride per axis.
    pub stride: Vec<usize>,
    /// Padding before and after, per axis.
    pub pad: Vec<(usize, usize)>,
    /// Round the output size up rather than down (a last, partial window is kept).
    pub ceil: bool,
}

/// Global pooling of a kind: `[.., c]` to `[c]` ([`Op::GlobalPool`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalPool(pub PoolKind);

/// The rule of `global_maxpool`.
pub static GLOBAL_MAX: GlobalPool = GlobalPool(PoolKind::Max);
/// The rule of `global_avgpool`.
pub static GLOBAL_AVG: GlobalPool = GlobalPool(PoolKind::Avg);

const POOL: &[(&str, bool)] = &[("size", true), ("stride", false), ("pad", false), ("round", false)];

/// `maxpool(size, ...)`.
pub const MAXPOOL: LayerSpec = LayerSpec {
    name: "maxpool",
    tensors: Tensors::One,
    params: POOL,
    signature: "maxpool(size, stride: size, pad: valid, round: floor)",
    doc: "Maximum over each window.",
    build: |a| build(a, PoolKind::Max),
};

/// `avgpool(size, ...)`.
pub const AVGPOOL: LayerSpec = LayerSpec {
    name: "avgpool",
    tensors: Tensors::One,
    params: POOL,
    signature: "avgpool(size, stride: size, pad: valid, round: floor)",
    doc: "Mean over each window (padding not counted).",
    build: |a| build(a, PoolKind::Avg),
};

/// `global_avgpool`.
pub const GLOBAL_AVGPOOL: LayerSpec = LayerSpec {
    name: "global_avgpool",
    tensors: Tensors::One,
    params: &[],
    signature: "global_avgpool",
    doc: "Mean over all positions: [.., n_C] to [n_C].",
    build: |_| Some((Op::GlobalPool(PoolKind::Avg), vec![])),
};

/// `global_maxpool`.
pub const GLOBAL_MAXPOOL: LayerSpec = LayerSpec {
    name: "global_maxpool",
    tensors: Tensors::One,
    params: &[],
    signature: "global_maxpool",
    doc: "Maximum over all positions: [.., n_C] to [n_C].",
    build: |_| Some((Op::GlobalPool(PoolKind::Max), vec![])),
};

fn build(a: &mut LayerArgs, kind: PoolKind) -> Option<Built> {
    a.window_input(if kind == PoolKind::Max { "maxpool" } else { "avgpool" })?;
    let size = a.axes("size", "window size", 1, None)?;
    let stride = a.axes("stride", "stride", 1, Some(size.clone()))?;
    let pad = a.padding(&size, &stride, &vec![1; size.len()])?;
    let ceil = a.choice("round", "rounding", &["floor", "ceil"], "floor")? == "ceil";
    Some((Op::Pool(PoolOp { kind, size, stride, pad, ceil }), vec![]))
}

impl OpRule for PoolOp {
    fn mnemonic(&self) -> String {
        format!("{}pool{}d", self.kind, self.size.len())
    }

    fn attributes(&self) -> String {
        format!(
            "[f={},s={},p={}{}]",
            axes_text(&self.size),
            axes_text(&self.stride),
            pads_text(&self.pad),
            if self.ceil { ",ceil" } else { "" }
        )
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        let x = need(inputs, 1)?;
        conv_rank(x)?;
        finish_windows(windows(x, &self.geometry())?, x.channels())
    }

    fn arity(&self, n: usize) -> bool {
        n == 1
    }

    /// One add or compare per window element: not multiply-accumulates.
    fn macs(&self, _: &[&Shape], _: &Shape) -> u64 {
        0
    }

    fn grad(&self) -> GradRule {
        GradRule::PerInput
    }

    /// Max routes dy to each window's maximum (found again in x); average spreads it evenly.
    fn reads(&self, _: usize) -> Vec<Read> {
        match self.kind {
            PoolKind::Max => vec![Read::Input(0), Read::Grad],
            PoolKind::Avg => vec![Read::Grad],
        }
    }

    fn window(&self) -> Option<Window<'_>> {
        Some(self.geometry())
    }

    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        let x = l.input(0)?;
        let x = l.contiguous(x);
        let y = l.output(0);
        let c = x.cols();
        let geom = crate::lir::lower::geom(&x.shape, &self.geometry(), &y.shape, 0, c);
        l.emit(Kernel::Pool { kind: self.kind, x, y, geom });
        Ok(())
    }

    fn lower_grad(&self, l: &mut Lowerer, _: &[usize]) -> Result<(), String> {
        let dy = l.read(Read::Grad)?;
        let x = match self.kind {
            PoolKind::Max => Some(l.read(Read::Input(0))?),
            PoolKind::Avg => None,
        };
        let x_shape = l.forward_input_shape(0)?;
        let dx = l.output(0);
        let c = x_shape[x_shape.len() - 1];
        let geom = crate::lir::lower::geom(&x_shape, &self.geometry(), &dy.shape, 0, c);
        l.emit(Kernel::PoolGrad { kind: self.kind, x, dy, dx, geom });
        Ok(())
    }
}

impl PoolOp {
    fn geometry(&self) -> Window<'_> {
        Window {
            size: &self.size,
            stride: &self.stride,
            pad: &self.pad,
            dilation: vec![1; self.size.len()],
            ceil: self.ceil,
        }
    }
}

impl OpRule for GlobalPool {
    fn mnemonic(&self) -> String {
        format!("global_{}pool", self.0)
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        let x = need(inputs, 1)?;
        conv_rank(x)?;
        Ok(Shape(vec![x.channels()]).into())
    }

    fn arity(&self, n: usize) -> bool {
        n == 1
    }

    fn macs(&self, _: &[&Shape], _: &Shape) -> u64 {
        0
    }

    fn grad(&self) -> GradRule {
        GradRule::PerInput
    }

    fn reads(&self, _: usize) -> Vec<Read> {
        match self.0 {
            PoolKind::Max => vec![Read::Input(0), Read::Result(0), Read::Grad],
            PoolKind::Avg => vec![Read::Grad],
        }
    }

    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        let x = l.input(0)?;
        let x = l.contiguous(x);
        let y = l.output(0);
        l.emit(Kernel::GlobalPool { kind: self.0, x, y });
        Ok(())
    }

    fn lower_grad(&self, l: &mut Lowerer, _: &[usize]) -> Result<(), String> {
        let dy = l.read(Read::Grad)?;
        let (x, y) = match self.0 {
            PoolKind::Max => (Some(l.read(Read::Input(0))?), Some(l.read(Read::Result(0))?)),
            PoolKind::Avg => (None, None),
        };
        let dx = l.output(0);
        l.emit(Kernel::GlobalPoolGrad { kind: self.0, x, y, dy, dx });
        Ok(())
    }
}
