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

/// Shape of the output of `op` applied to tensors of `inputs` shapes (weights included, in port order).
pub fn infer(op: &Op, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
    let x = inputs.first().copied();
    let inferred = match op {
        Op::Input(_) | Op::Param(_) => return Err(ShapeFault::Arity { expected: 0, got: inputs.len() }),
        Op::Conv(c) => {
            let x = need(x, 2)?;
            conv_rank(x)?;
            let w = inputs.get(1).ok_or(ShapeFault::Arity { expected: 2, got: inputs.len() })?;
            let calcs = windows(x, &c.size, &c.stride, &c.pad, &c.dilation, false)?;
            if c.groups == 0 || c.filters == 0 {
                return Err(ShapeFault::Zero { what: if c.groups == 0 { "groups" } else { "filters" } });
            }
            if x.channels() % c.groups != 0 {
                return Err(ShapeFault::ChannelsNotDivisible { channels: x.channels(), groups: c.groups });
            }
            if c.filters % c.groups != 0 {
                return Err(ShapeFault::FiltersNotDivisible { filters: c.filters, groups: c.groups });
            }
            let expected = conv_weight_shape(c, x.channels());
            if **w != expected {
                return Err(ShapeFault::ParamShape { expected, got: (*w).clone() });
            }
            if let Some(b) = inputs.get(2) {
                if **b != Shape(vec![c.filters]) {
                    return Err(ShapeFault::ParamShape { expected: Shape(vec![c.filters]), got: (*b).clone() });
                }
            }
            finish_windows(calcs, c.filters)?
        }
        Op::Pool(p) => {
            let x = need(x, 1)?;
            conv_rank(x)?;
            let ones = vec![1; p.size.len()];
            let calcs = windows(x, &p.size, &p.stride, &p.pad, &ones, p.ceil)?;
            finish_windows(calcs, x.channels())?
        }
        Op::GlobalPool(_) => {
            let x = need(x, 1)?;
            conv_rank(x)?;
            Shape(vec![x.channels()]).into()
        }
        Op::Dense(d) => {
            let x = need(x, 2)?;
            if x.rank() != 1 {
                return Err(ShapeFault::DenseUnflattened { got: x.clone() });
            }
            let expected = Shape(vec![x.0[0], d.units]);
            if *inputs[1] != expected {
                return Err(ShapeFault::ParamShape { expected, got: inputs[1].clone() });
            }
            Shape(vec![d.units]).into()
        }
        Op::Flatten => {
            let x = need(x, 1)?;
            Shape(vec![x.elements().ok_or(ShapeFault::TooLarge { shape: x.0.clone() })?]).into()
        }
        Op::BatchNorm(_) | Op::PRelu => {
            let x = need(x, 1)?;
            let c = Shape(vec![x.channels()]);
            for p in &inputs[1..] {
                if **p != c {
                    return Err(ShapeFault::ParamShape { expected: c, got: (*p).clone() });
                }
            }
            match op {
                Op::BatchNorm(b) if b.training => {
                    Inferred { shape: x.clone(), extra: vec![c.clone(), c], unread: Vec::new() }
                }
                _ => x.clone().into(),
            }
        }
        Op::Reshape(r) => {
            let x = need(x, 1)?;
            let to = Shape(r.shape.clone());
            if x.elements() != to.elements() {
                return Err(ShapeFault::ParamShape { expected: to, got: x.clone() });
            }
            to.into()
        }
        Op::ChannelSlice(c) => {
            let x = need(x, 1)?;
            if x.rank() == 0 || c.len == 0 || c.start.checked_add(c.len).is_none_or(|end| end > x.channels()) {
                return Err(ShapeFault::Zero { what: "channel slice" });
            }
            let mut out = x.0.clone();
            if let Some(last) = out.last_mut() {
                *last = c.len;
            }
            Shape(out).into()
        }
        Op::Dropout(_) | Op::Activation(_) => need(x, 1)?.clone().into(),
        Op::Add => {
            let first = need(x, 2)?;
            for (i, other) in inputs.iter().enumerate().skip(1) {
                if *other != first {
                    return Err(ShapeFault::AddMismatch { first: first.clone(), other: (*other).clone(), index: i });
                }
            }
            first.clone().into()
        }
        Op::Loss(crate::ir::op::LossOp { kind, .. }) => {
            let (pred, target) = (need(x, 2)?, inputs.get(1).ok_or(ShapeFault::Arity { expected: 2, got: 1 })?);
            let fits = match kind {
                crate::ir::op::LossKind::SoftmaxCrossEntropy => pred.rank() == 1 && target.rank() == 0,
                _ => pred == *target,
            };
            if !fits {
                return Err(ShapeFault::ParamShape { expected: pred.clone(), got: (*target).clone() });
            }
            Shape(vec![]).into()
        }
        Op::Backward(b) => backward(b, inputs)?,
        Op::Concat => {
            let first = need(x, 1)?;
            let mut channels = 0usize;
            for (i, other) in inputs.iter().enumerate() {
                if other.rank() != first.rank() || other.spatial() != first.spatial() || other.rank() == 0 {
                    return Err(ShapeFault::ConcatMismatch { first: first.clone(), other: (*other).clone(), index: i });
                }
                channels += other.channels();
            }
            let mut out = first.0.clone();
            if let Some(last) = out.last_mut() {
                *last = channels;
            }
            Shape(out).into()
        }
    };
    match inferred.shape.elements() {
        Some(n) if n <= MAX_ELEMENTS => Ok(inferred),
        _ => Err(ShapeFault::TooLarge { shape: inferred.shape.0 }),
    }
}

/// A backward node: every operand has the shape of what it reads, and each result the shape of
/// the forward input it is the gradient of.
fn backward(b: &crate::ir::op::BackwardOp, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
    use crate::ir::op::Read;
    if inputs.len() != b.reads.len() {
        return Err(ShapeFault::Arity { expected: b.reads.len(), got: inputs.len() });
    }
    let forward_inputs: Vec<&Shape> = b.inputs.iter().collect();
    let forward = infer(&b.of, &forward_inputs)?;
    for (port, (read, got)) in b.reads.iter().zip(inputs).enumerate() {
        let expected = match read {
            Read::Input(i) => b.inputs.get(*i),
            Read::Result(0) | Read::Grad => Some(&forward.shape),
            Read::Result(r) => forward.extra.get(usize::from(*r) - 1),
        };
        let Some(expected) = expected else {
            return Err(ShapeFault::Arity { expected: b.inputs.len(), got: port });
        };
        if expected != *got {
            return Err(ShapeFault::BackwardOperand { port, expected: expected.clone(), got: (*got).clone() });
        }
    }
    let mut results = Vec::with_capacity(b.wrt.len());
    for &w in &b.wrt {
        results.push(b.inputs.get(w).cloned().ok_or(ShapeFault::Arity { expected: w + 1, got: b.inputs.len() })?);
    }
    let mut results = results.into_iter();
    let shape = results.next().ok_or(ShapeFault::Arity { expected: 1, got: 0 })?;
    Ok(Inferred { shape, extra: results.collect(), unread: Vec::new() })
}

/// The weight shape of a convolution on `channels` input channels: `[f.., channels/groups, filters]`.
pub fn conv_weight_shape(c: &crate::ir::op::ConvOp, channels: usize) -> Shape {
    let mut w = c.size.clone();
    w.push(channels / c.groups.max(1));
    w.push(c.filters);
    Shape(w)
}

/// Output size of one axis with `same` padding, and the padding before and after that gives it:
/// `out = ceil(n/s)`, total padding `max((out − 1)·s + f_eff − n, 0)`, the odd pixel after.
pub fn same_padding(n: usize, f_eff: usize, s: usize) -> (usize, usize) {
    let s = s.max(1);
    let out = n.div_ceil(s);
    let total = (out.saturating_sub(1).saturating_mul(s)).saturating_add(f_eff).saturating_sub(n);
    (total / 2, total - total / 2)
}

fn need(x: Option<&Shape>, expected: usize) -> Result<&Shape, ShapeFault> {
    x.ok_or(ShapeFault::Arity { expected, got: 0 })
}

fn conv_rank(x: &Shape) -> Result<(), ShapeFault> {
    if (2..=4).contains(&x.rank()) {
        Ok(())
    } else {
        Err(ShapeFault::Rank { expected: "[n, n_C], [n_H, n_W, n_C] or [n_D, n_H, n_W, n_C]", got: x.clone() })
    }
}

fn windows(
    x: &Shape,
    size: &[usize],
    stride: &[usize],
    pad: &[(usize, usize)],
    dilation: &[usize],
    ceil: bool,
) -> Result<Vec<AxisCalc>, ShapeFault> {
    let spatial = x.spatial();
    if size.len() != spatial.len() || stride.len() != spatial.len() || pad.len() != spatial.len() {
        return Err(ShapeFault::Rank { expected: "as many spatial axes as the window has", got: x.clone() });
    }
    if size.contains(&0) {
        return Err(ShapeFault::Zero { what: "window size" });
    }
    if stride.contains(&0) {
        return Err(ShapeFault::Zero { what: "stride" });
    }
    if dilation.contains(&0) {
        return Err(ShapeFault::Zero { what: "dilation" });
    }
    Ok((0..spatial.len())
        .map(|axis| AxisCalc {
            axis,
            n: spatial[axis],
            pad: pad[axis],
            f: size[axis],
            dilation: dilation[axis],
            s: stride[axis],
            ceil,
        })
        .collect())
}

fn finish_windows(calcs: Vec<AxisCalc>, channels: usize) -> Result<Inferred, ShapeFault> {
    let mut out = Vec::with_capacity(calcs.len() + 1);
    for c in &calcs {
        out.push(c.out().ok_or_else(|| ShapeFault::OutputTooSmall { calc: c.clone() })?);
    }
    out.push(channels);
    Ok(Inferred {
        shape: Shape(out),
        extra: Vec::new(),
        unread: calcs.into_iter().filter(|c| c.unread() > 0).collect(),
    })
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
