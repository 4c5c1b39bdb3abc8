//! Inputs, parameters, and the ops that move or combine values: flatten, reshape, channel
//! slices, add, concat.

use super::{axes_text, map, need, not_lowered, GradRule, LayerSpec, OpRule, Tensors};
use crate::ir::op::{Op, Read};
use crate::lir::lower::Lowerer;
use crate::lir::{Expr, Kernel};
use crate::shape::{Inferred, Shape, ShapeFault};
use std::sync::Arc;

/// Attributes of [`Op::Input`]: a model input; its shape is declared.
#[derive(Clone, Debug, PartialEq)]
pub struct InputOp {
    /// The name declared in the model.
    pub name: String,
}

/// What a parameter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamRole {
    /// Convolution or dense weights.
    Weight,
    /// Additive bias.
    Bias,
    /// Batchnorm scale.
    Gamma,
    /// Batchnorm shift.
    Beta,
    /// Batchnorm running mean (state, not trained by gradients).
    RunningMean,
    /// Batchnorm running variance (state, not trained by gradients).
    RunningVar,
    /// PReLU slopes.
    Slope,
}

impl ParamRole {
    /// The last segment of the parameter's name.
    pub fn suffix(self) -> &'static str {
        match self {
            ParamRole::Weight => "weight",
            ParamRole::Bias => "bias",
            ParamRole::Gamma => "gamma",
            ParamRole::Beta => "beta",
            ParamRole::RunningMean => "running_mean",
            ParamRole::RunningVar => "running_var",
            ParamRole::Slope => "slope",
        }
    }

    /// Whether this is state updated outside of gradient descent.
    pub fn is_state(self) -> bool {
        matches!(self, ParamRole::RunningMean | ParamRole::RunningVar)
    }
}

/// How a parameter starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// He (Kaiming) normal, for layers followed by ReLU.
    He,
    /// Glorot (Xavier) uniform.
    Glorot,
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Every value the same constant.
    Fill(f32),
    /// Values written in the model file.
    Constant,
}

/// Attributes of [`Op::Param`]: a learned (or constant) tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamOp {
    /// What it is for.
    pub role: ParamRole,
    /// How it starts.
    pub init: Init,
    /// Excluded from training (transfer learning, fixed filters).
    pub frozen: bool,
    /// Values given in the file, row-major, for [`Init::Constant`].
    pub value: Option<Arc<[f32]>>,
}

impl ParamOp {
    /// Not changed by training: frozen, or a constant written in the model file. A batchnorm
    /// whose scale is fixed runs on its running statistics in training too, and a frozen body
    /// is made of such layers ([`crate::frozen`]).
    pub fn fixed(&self) -> bool {
        self.frozen || self.init == Init::Constant
    }
}

/// Any shape to `[product]` ([`Op::Flatten`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flatten;

/// Element-wise sum of two or more tensors of one shape ([`Op::Add`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Add;

/// Concatenation along the channel (last) axis; other axes must agree ([`Op::Concat`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Concat;

/// Attributes of [`Op::Reshape`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReshapeOp {
    /// The new shape (batch axis excluded).
    pub shape: Vec<usize>,
}

/// Attributes of [`Op::ChannelSlice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceOp {
    /// First channel.
    pub start: usize,
    /// Number of channels.
    pub len: usize,
}

/// `flatten`.
pub const FLATTEN: LayerSpec = LayerSpec {
    name: "flatten",
    tensors: Tensors::One,
    params: &[],
    signature: "flatten",
    doc: "Any shape to [product of axes].",
    build: |_| Some((Op::Flatten, vec![])),
};

/// `add(a, b, ...)`, also written `a + b`.
pub const ADD: LayerSpec = LayerSpec {
    name: "add",
    tensors: Tensors::Many(2),
    params: &[],
    signature: "add(a, b, ...)",
    doc: "Element-wise sum; `a + b` is the same.",
    build: |_| Some((Op::Add, vec![])),
};

/// `concat(a, b, ...)`.
pub const CONCAT: LayerSpec = LayerSpec {
    name: "concat",
    tensors: Tensors::Many(1),
    params: &[],
    signature: "concat(a, b, ...)",
    doc: "Concatenation along channels; other axes must agree.",
    build: |_| Some((Op::Concat, vec![])),
};

/// A reshape (or flatten) is a view of the same elements: no kernel.
fn lower_reshape(l: &mut Lowerer) -> Result<(), String> {
    let x = l.input(0)?;
    let x = l.contiguous(x);
    let shape = l.result_shape(0);
    l.alias(0, x.reshaped(shape));
    Ok(())
}

fn leaf(inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
    Err(ShapeFault::Arity { expected: 0, got: inputs.len() })
}

impl OpRule for InputOp {
    fn mnemonic(&self) -> String {
        "input".into()
    }

    /// Its shape is declared, not inferred.
    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        leaf(inputs)
    }

    fn arity(&self, n: usize) -> bool {
        n == 0
    }

    fn macs(&self, _: &[&Shape], _: &Shape) -> u64 {
        0
    }

    fn grad(&self) -> GradRule {
        GradRule::Leaf
    }

    fn reads(&self, _: usize) -> Vec<Read> {
        Vec::new()
    }

    fn lower(&self, _: &mut Lowerer) -> Result<(), String> {
        not_lowered("an input or parameter (the driver places it)")
    }

    fn lower_grad(&self, _: &mut Lowerer, _: &[usize]) -> Result<(), String> {
        not_lowered("the gradient of an input or parameter")
    }
}

impl OpRule for ParamOp {
    fn mnemonic(&self) -> String {
        "param".into()
    }

    fn attributes(&self) -> String {
        let init = match self.init {
            Init::He => "he".to_string(),
            Init::Glorot => "glorot".to_string(),
            Init::Zeros => "zeros".to_string(),
            Init::Ones => "ones".to_string(),
            Init::Fill(v) => format!("fill({v})"),
            Init::Constant => "constant".to_string(),
        };
        format!("[init={init}{}]", if self.frozen { ",frozen" } else { "" })
    }

    /// Its shape is the layer's need, not inferred.
    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        leaf(inputs)
    }

    fn arity(&self, n: usize) -> bool {
        n == 0
    }

    fn macs(&self, _: &[&Shape], _: &Shape) -> u64 {
        0
    }

    fn grad(&self) -> GradRule {
        GradRule::Leaf
    }

    fn reads(&self, _: usize) -> Vec<Read> {
        Vec::new()
    }

    fn lower(&self, _: &mut Lowerer) -> Result<(), String> {
        not_lowered("an input or parameter (the driver places it)")
    }

    fn lower_grad(&self, _: &mut Lowerer, _: &[usize]) -> Result<(), String> {
        not_lowered("the gradient of an input or parameter")
    }
}

impl OpRule for Flatten {
    fn mnemonic(&self) -> String {
        "flatten".into()
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        let x = need(inputs, 1)?;
        Ok(Shape(vec![x.elements().ok_or(ShapeFault::TooLarge { shape: x.0.clone() })?]).into())
    }

    fn arity(&self, n: usize) -> bool {
        n == 1
    }

    fn macs(&self, _: &[&Shape], _: &Shape) -> u64 {
        0
    }

    fn grad(&self) -> GradRule {
        GradRule::Reshape
    }

    fn reads(&self, _: usize) -> Vec<Read> {
        Vec::new()
    }

    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        lower_reshape(l)
    }

    /// Autodiff reshapes the gradient back with a reshape node of its own.
    fn lower_grad(&self, _: &mut Lowerer, _: &[usize]) -> Result<(), String> {
        not_lowered("a reshape's gradient (a reshape)")
    }
}

impl OpRule for ReshapeOp {
    fn mnemonic(&self) -> String {
        "reshape".into()
    }

    fn attributes(&self) -> String {
        format!("[{}]", axes_text(&self.shape))
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        let x = need(inputs, 1)?;
        let to = Shape(self.shape.clone());
        if x.elements() != to.elements() {
            return Err(ShapeFault::ParamShape { expected: to, got: x.clone() });
        }
        Ok(to.into())
    }

    fn arity(&self, n: usize) -> bool {
        n == 1
    }

    fn macs(&self, _: &[&Shape], _: &Shape) -> u64 {
        0
    }

    fn grad(&self) -> GradRule {
        GradRule::Reshape
    }

    fn reads(&self, _: usize) -> Vec<Read> {
        Vec::new()
    }

    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        lower_reshape(l)
    }

    /// Autodiff reshapes the gradient back with a reshape node of its own.
    fn lower_grad(&self, _: &mut Lowerer, _: &[usize]) -> Result<(), String> {
        not_lowered("a reshape's gradient (a reshape)")
    }
}

impl OpRule for SliceOp {
    fn mnemonic(&self) -> String {
        "channel_slice".into()
    }

    fn attributes(&self) -> String {
        format!("[start={},len={}]", self.start, self.len)
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        let x = need(inputs, 1)?;
        let end = self.start.checked_add(self.len);
        if x.rank() == 0 || self.len == 0 || end.is_none_or(|end| end > x.channels()) {
            return Err(ShapeFault::Zero { what: "channel slice" });
        }
        let mut out = x.0.clone();
        if let Some(last) = out.last_mut() {
            *last = self.len;
        }
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

    /// The slice's gradient is `dy` placed in zeros of the input's shape.
    fn reads(&self, _: usize) -> Vec<Read> {
        vec![Read::Grad]
    }

    /// A view of the channels: no kernel.
    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        let x = l.input(0)?;
        l.alias(0, x.columns(self.start, self.len));
        Ok(())
    }

    /// `dy` in its channels of zeros.
    fn lower_grad(&self, l: &mut Lowerer, _: &[usize]) -> Result<(), String> {
        let dy = l.read(Read::Grad)?;
        let dx = l.output(0);
        l.emit(Kernel::Fill { dst: dx.clone(), value: 0.0 });
        l.emit(Kernel::Copy { src: dy, dst: dx.columns(self.start, self.len) });
        Ok(())
    }
}

impl OpRule for Add {
    fn mnemonic(&self) -> String {
        "add".into()
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        let first = need(inputs, 2)?;
        for (i, other) in inputs.iter().enumerate().skip(1) {
            if *other != first {
                return Err(ShapeFault::AddMismatch { first: first.clone(), other: (*other).clone(), index: i });
            }
        }
        Ok(first.clone().into())
    }

    fn arity(&self, n: usize) -> bool {
        n >= 2
    }

    fn macs(&self, _: &[&Shape], _: &Shape) -> u64 {
        0
    }

    fn grad(&self) -> GradRule {
        GradRule::Alias
    }

    fn reads(&self, _: usize) -> Vec<Read> {
        Vec::new()
    }

    /// One map summing left to right.
    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        let inputs = l.inputs()?;
        let y = l.output(0);
        let mut expr = vec![Expr::Input(0)];
        for i in 1..inputs.len() {
            expr.push(Expr::Input(i));
            let (sum, next) = (expr.len() - 2, expr.len() - 1);
            expr.push(Expr::Add(sum, next));
        }
        l.emit(map(expr, inputs, vec![], y));
        Ok(())
    }

    /// Autodiff passes the gradient itself to every addend.
    fn lower_grad(&self, _: &mut Lowerer, _: &[usize]) -> Result<(), String> {
        not_lowered("an add's gradient (an alias)")
    }
}

impl OpRule for Concat {
    fn mnemonic(&self) -> String {
        "concat".into()
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        let first = need(inputs, 1)?;
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
        Ok(Shape(out).into())
    }

    fn arity(&self, n: usize) -> bool {
        n >= 1
    }

    fn macs(&self, _: &[&Shape], _: &Shape) -> u64 {
        0
    }

    fn grad(&self) -> GradRule {
        GradRule::Slice
    }

    fn reads(&self, _: usize) -> Vec<Read> {
        Vec::new()
    }

    /// Each input copied into its channels of the output.
    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        let inputs = l.inputs()?;
        let y = l.output(0);
        let mut start = 0;
        for x in inputs {
            let c = x.cols();
            l.emit(Kernel::Copy { src: x, dst: y.columns(start, c) });
            start += c;
        }
        Ok(())
    }

    /// Autodiff takes each input's channels of the gradient with a slice node.
    fn lower_grad(&self, _: &mut Lowerer, _: &[usize]) -> Result<(), String> {
        not_lowered("a concat's gradient (channel slices)")
    }
}
