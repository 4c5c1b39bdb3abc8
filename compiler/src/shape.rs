//! Shapes and the shape rule of every op: `out = floor((n + 2p − f)/s) + 1` per spatial axis
//! (ceil where asked), channel, rank and agreement checks. Rules are pure functions of the op and
//! its input shapes; [`crate::elaborate`] attaches the spans to what they report.

use crate::ir::op::Op;
use std::fmt;

/// A tensor shape without the batch axis: `[n_H, n_W, n_C]` for images, `[n, n_C]` for signals,
/// `[n_D, n_H, n_W, n_C]` for volumes, `[n]` for vectors.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements, or `None` if it overflows.
    pub fn elements(&self) -> Option<usize> {
        self.0.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// The last axis (channels), 0 for a scalar.
    pub fn channels(&self) -> usize {
        self.0.last().copied().unwrap_or(0)
    }

    /// The spatial axes (all but the last).
    pub fn spatial(&self) -> &[usize] {
        &self.0[..self.0.len().saturating_sub(1)]
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Largest number of elements one tensor may have (2^40): beyond it sizes are surely a mistake,
/// and MAC and memory totals could overflow.
pub const MAX_ELEMENTS: usize = 1 << 40;

/// The numbers of one spatial axis of a window op, for computing and explaining its output size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AxisCalc {
    /// Axis index among the spatial axes.
    pub axis: usize,
    /// Input size `n`.
    pub n: usize,
    /// Padding before and after.
    pub pad: (usize, usize),
    /// Window size `f` as written.
    pub f: usize,
    /// Dilation.
    pub dilation: usize,
    /// Stride `s`.
    pub s: usize,
    /// Round up rather than down.
    pub ceil: bool,
}

impl AxisCalc {
    /// Effective window size `d·(f − 1) + 1`.
    pub fn f_eff(&self) -> usize {
        self.dilation.saturating_mul(self.f.max(1) - 1).saturating_add(1)
    }

    /// `n + p_before + p_after − f_eff`, negative when the window does not fit.
    pub fn numerator(&self) -> i128 {
        self.n as i128 + self.pad.0 as i128 + self.pad.1 as i128 - self.f_eff() as i128
    }

    /// The output size, or `None` when it would be zero or negative.
    pub fn out(&self) -> Option<usize> {
        let num = self.numerator();
        if num < 0 || self.s == 0 {
            return None;
        }
        let s = self.s as i128;
        let mut out = if self.ceil { (num + s - 1) / s + 1 } else { num / s + 1 };
        // As in PyTorch: with ceil rounding the last window must start inside the input or the
        // leading padding, never wholly in the trailing padding.
        if self.ceil && (out - 1) * s >= self.n as i128 + self.pad.0 as i128 {
            out -= 1;
        }
        usize::try_from(out).ok().filter(|&o| o > 0)
    }

    /// Input rows or columns at the end that no window reads (floor rounding's remainder), beyond
    /// padding. Zero when windows are smaller than the stride: they skip input by design.
    pub fn unread(&self) -> usize {
        let num = self.numerator();
        if num < 0 || self.ceil || self.s == 0 || self.f_eff() < self.s {
            return 0;
        }
        let rem = (num % self.s as i128) as usize;
        rem.saturating_sub(self.pad.1)
    }

    /// The formula with these numbers: `(14 + 2·0 − 5)/2 + 1 = 5.5`.
    pub fn formula(&self) -> String {
        let pad = if self.pad.0 == self.pad.1 {
            format!("2·{}", self.pad.0)
        } else {
            format!("{} + {}", self.pad.0, self.pad.1)
        };
        let value = self.numerator() as f64 / self.s.max(1) as f64 + 1.0;
        let value = if value.fract() == 0.0 {
            format!("{value}")
        } else {
            format!("{:.2}", value).trim_end_matches('0').to_string()
        };
        format!("({} + {} − {})/{} + 1 = {}", self.n, pad, self.f_eff(), self.s, value)
    }
}

/// Why a rule rejects its inputs. Plain data; [`crate::report`] words it.
#[derive(Clone, Debug, PartialEq)]
pub enum ShapeFault {
    /// The input has the wrong number of axes.
    Rank { expected: &'static str, got: Shape },
    /// A window does not fit: the output size would be zero or negative.
    OutputTooSmall { calc: AxisCalc },
    /// Input channels are not a multiple of the groups.
    ChannelsNotDivisible { channels: usize, groups: usize },
    /// Filters are not a multiple of the groups.
    FiltersNotDivisible { filters: usize, groups: usize },
    /// A parameter given in the file (or shared) has a shape other than the layer needs.
    ParamShape { expected: Shape, got: Shape },
    /// A dense layer's input still has spatial axes.
    DenseUnflattened { got: Shape },
    /// Tensors added together differ.
    AddMismatch { first: Shape, other: Shape, index: usize },
    /// `sub` or `mul` of tensors of different shapes (`verb`: subtract, multiply).
    ElementwiseMismatch { verb: &'static str, first: Shape, other: Shape },
    /// Tensors concatenated differ in an axis other than channels.
    ConcatMismatch { first: Shape, other: Shape, index: usize },
    /// A tensor would exceed [`MAX_ELEMENTS`].
    TooLarge { shape: Vec<usize> },
    /// A size, stride or count is zero.
    Zero { what: &'static str },
    /// The op got the wrong number of inputs (an internal error when seen by the verifier).
    Arity { expected: usize, got: usize },
    /// A backward node's operand does not have the shape of what it claims to read (an
    /// internal error, seen by the verifier).
    BackwardOperand { port: usize, expected: Shape, got: Shape },
}

/// The result of a rule: the output shapes and the axes whose windows leave input unread.
#[derive(Clone, Debug, PartialEq)]
pub struct Inferred {
    /// Shape of the first result (the output).
    pub shape: Shape,
    /// Shapes of further results (batchnorm's statistics in training; a backward node's
    /// second and later gradients).
    pub extra: Vec<Shape>,
    /// Axes where the stride leaves rows or columns unread.
    pub unread: Vec<AxisCalc>,
}

impl From<Shape> for Inferred {
    fn from(shape: Shape) -> Self {
        Inferred { shape, extra: Vec::new(), unread: Vec::new() }
    }
}

/// Shapes of the results of `op` applied to tensors of `inputs` shapes (weights included, in
/// port order): the op's family rule, then a size limit on every result.
pub fn infer(op: &Op, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
    let inferred = op.rule().infer(inputs)?;
    for s in std::iter::once(&inferred.shape).chain(&inferred.extra) {
        match s.elements() {
            Some(n) if n <= MAX_ELEMENTS => {}
            _ => return Err(ShapeFault::TooLarge { shape: s.0.clone() }),
        }
    }
    Ok(inferred)
}

/// The weight shape of a convolution on `channels` input channels: `[f.., channels/groups, filters]`.
pub use crate::ops::conv::weight_shape as conv_weight_shape;

/// Output size of one axis with `same` padding, and the padding before and after that gives it:
/// `out = ceil(n/s)`, total padding `max((out − 1)·s + f_eff − n, 0)`, the odd pixel after.
pub fn same_padding(n: usize, f_eff: usize, s: usize) -> (usize, usize) {
    let s = s.max(1);
    let out = n.div_ceil(s);
    let total = (out.saturating_sub(1).saturating_mul(s)).saturating_add(f_eff).saturating_sub(n);
    (total / 2, total - total / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(n: usize, p: usize, f: usize, s: usize) -> AxisCalc {
        AxisCalc { axis: 0, n, pad: (p, p), f, dilation: 1, s, ceil: false }
    }

    #[test]
    fn the_course_formula() {
        assert_eq!(axis(32, 0, 5, 1).out(), Some(28));
        assert_eq!(axis(224, 3, 7, 2).out(), Some(112));
        assert_eq!(axis(14, 0, 5, 2).out(), Some(5));
        assert_eq!(axis(14, 0, 5, 2).formula(), "(14 + 2·0 − 5)/2 + 1 = 5.5");
        assert_eq!(axis(4, 0, 5, 1).out(), None);
    }

    #[test]
    fn ceil_rounding_matches_pytorch() {
        let mut a = axis(112, 0, 3, 2);
        assert_eq!(a.out(), Some(55));
        a.ceil = true;
        assert_eq!(a.out(), Some(56));
        // A window that would start in the trailing padding is dropped.
        let b = AxisCalc { axis: 0, n: 5, pad: (1, 1), f: 2, dilation: 1, s: 2, ceil: true };
        assert_eq!(b.out(), Some(3));
    }

    #[test]
    fn same_padding_keeps_size_at_stride_one_and_divides_by_stride() {
        for n in 1..40 {
            for f in [1, 2, 3, 5, 7] {
                for s in 1..4 {
                    let pad = same_padding(n, f, s);
                    let calc = AxisCalc { axis: 0, n, pad, f, dilation: 1, s, ceil: false };
                    assert_eq!(calc.out(), Some(n.div_ceil(s)), "n={n} f={f} s={s}");
                }
            }
        }
    }

    #[test]
    fn unread_counts_the_remainder() {
        assert_eq!(axis(14, 0, 5, 2).unread(), 1);
        assert_eq!(axis(15, 0, 5, 2).unread(), 0);
        // A 1×1 convolution with stride 2 skips every other row on purpose.
        assert_eq!(axis(56, 0, 1, 2).unread(), 0);
    }
}
