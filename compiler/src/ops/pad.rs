//! Zero padding: rows and columns (any spatial axis) before and after, and channels after — what
//! a faithful copy of another framework's network needs where it pads outside a convolution
//! (TensorFlow's `tf.pad`, `tf.concat` with zeros; ResNet's option-A shortcuts, whose extra
//! channels are zeros).

use super::{need, GradRule, LayerSpec, OpRule, Tensors};
use crate::elaborate::layers::LayerArgs;
use crate::ir::op::{Op, Read};
use crate::lir::lower::Lowerer;
use crate::lir::Kernel;
use crate::shape::{Inferred, Shape, ShapeFault};

/// Attributes of [`Op::Pad`]: zeros around the spatial axes and after the channels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PadOp {
    /// Zeros before and after, per spatial axis (none for a vector).
    pub spatial: Vec<(usize, usize)>,
    /// Zero channels appended after the input's.
    pub channels: usize,
}

/// `pad(size: 0, before: size, after: size, channels: 0)`.
pub const PAD: LayerSpec = LayerSpec {
    name: "pad",
    tensors: Tensors::One,
    params: &[("size", false), ("before", false), ("after", false), ("channels", false)],
    signature: "pad(size: 0, before: size, after: size, channels: 0)",
    doc: "Zeros around the spatial axes (before and after each, per axis) and zero channels after the input's.",
    build,
};

fn build(a: &mut LayerArgs) -> Option<super::Built> {
    let spatial_given = ["size", "before", "after"].iter().any(|n| a.given(n));
    let spatial = if spatial_given {
        let x = a.window_input("pad")?;
        let zeros = vec![0; x.rank() - 1];
        let size = a.axes("size", "padding", 0, Some(zeros))?;
        let before = a.axes("before", "padding", 0, Some(size.clone()))?;
        let after = a.axes("after", "padding", 0, Some(size))?;
        before.into_iter().zip(after).collect()
    } else {
        vec![(0, 0); a.x().rank().saturating_sub(1)]
    };
    let channels = a.int("channels", "a channel count", 0, Some(0))?;
    Some((Op::Pad(PadOp { spatial, channels }), vec![]))
}

impl PadOp {
    /// Zeros before each axis of an example, channels last (none before the channels).
    pub fn before(&self) -> Vec<usize> {
        self.spatial.iter().map(|p| p.0).chain([0]).collect()
    }
}

impl OpRule for PadOp {
    fn mnemonic(&self) -> String {
        "pad".into()
    }

    fn attributes(&self) -> String {
        let axes: Vec<String> = self.spatial.iter().map(|(b, a)| format!("{b}+{a}")).collect();
        format!("[p={},c=+{}]", axes.join("x"), self.channels)
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        let x = need(inputs, 1)?;
        if x.rank() == 0 || x.rank() - 1 != self.spatial.len() {
            return Err(ShapeFault::Rank { expected: "a tensor with a padding for each spatial axis", got: x.clone() });
        }
        let mut out: Vec<usize> = x.spatial().iter().zip(&self.spatial).map(|(&n, &(b, a))| n + b + a).collect();
        out.push(x.channels() + self.channels);
        Ok(Shape(out).into())
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

    /// The input's gradient is its part of the output's: a crop.
    fn reads(&self, _: usize) -> Vec<Read> {
        vec![Read::Grad]
    }

    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        let x = l.input(0)?;
        let x = l.contiguous(x);
        let y = l.output(0);
        l.emit(Kernel::Pad { x, y, before: self.before() });
        Ok(())
    }

    fn lower_grad(&self, l: &mut Lowerer, _: &[usize]) -> Result<(), String> {
        let dy = l.read(Read::Grad)?;
        let dy = l.contiguous(dy);
        let dx = l.output(0);
        l.emit(Kernel::Crop { dy, dx, before: self.before() });
        Ok(())
    }
}
