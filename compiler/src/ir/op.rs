//! The closed set of operations. One variant per layer kind, each with an attribute struct;
//! the shape rule of each lives in [`crate::shape`], following the variant.

use std::fmt;
use std::sync::Arc;

/// An operation of the graph IR.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A model input; its shape is declared.
    Input(InputOp),
    /// A learned (or constant) tensor: weights, biases, batchnorm scale and statistics.
    Param(ParamOp),
    /// Convolution over 1, 2 or 3 spatial axes. Inputs: x, weight `[f.., c_in/groups, filters]`, bias?
    Conv(ConvOp),
    /// Max or average pooling over windows.
    Pool(PoolOp),
    /// Max or average over all spatial positions: `[.., c]` to `[c]`.
    GlobalPool(PoolKind),
    /// Fully connected layer. Inputs: x `[n]`, weight `[n, units]`, bias?
    Dense(DenseOp),
    /// Any shape to `[product]`.
    Flatten,
    /// Batch normalization over the last axis. In inference: inputs x, gamma, beta, running mean,
    /// running var; one result. In training: inputs x, gamma, beta; results y and the batch's
    /// mean and (biased) variance per channel, which backward and the running averages read.
    BatchNorm(BatchNormOp),
    /// Zeroes a fraction of values while training; identity at inference.
    Dropout(DropoutOp),
    /// An element-wise (or, for softmax, last-axis) activation.
    Activation(Activation),
    /// Leaky ReLU with a learned slope per channel. Inputs: x, slopes `[c]`.
    PRelu,
    /// Element-wise sum of two or more tensors of one shape.
    Add,
    /// Concatenation along the channel (last) axis; other axes must agree.
    Concat,
    /// The same values in another shape of as many elements: an alias, no data moves (the
    /// gradient of `flatten`).
    Reshape(ReshapeOp),
    /// Channels `start .. start + len` of the last axis: a view, no data moves (the gradient of
    /// `concat` for one of its inputs).
    ChannelSlice(SliceOp),
    /// A weighted loss per example (a scalar `[]`). Inputs: prediction, target.
    Loss(LossOp),
    /// The vector-Jacobian products of a forward op with respect to its inputs `wrt`: the
    /// gradients of the loss with respect to them, one result each. Its operands are only what
    /// the rule reads ([`Read`]): some forward inputs, some forward results, and the gradient of
    /// the forward output (absent for a loss, whose gradient is weight/batch per example).
    Backward(BackwardOp),
}

/// What a backward node reads, in the order of its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Read {
    /// Forward input (port) `i`.
    Input(usize),
    /// Forward result `r` (0 is the output).
    Result(u16),
    /// The gradient of the forward output.
    Grad,
}

impl fmt::Display for Read {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Read::Input(i) => write!(f, "x{i}"),
            Read::Result(r) => write!(f, "y{r}"),
            Read::Grad => f.write_str("dy"),
        }
    }
}

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

/// Attributes of [`Op::Loss`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossOp {
    /// Which loss.
    pub kind: LossKind,
    /// Its weight in the total loss.
    pub weight: f32,
}

/// Losses, computed per example.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    /// `−log softmax(logits)[label]`; the target is a class index.
    SoftmaxCrossEntropy,
    /// Binary cross-entropy of `sigmoid(logits)` against targets in [0, 1], summed over the vector.
    SigmoidCrossEntropy,
    /// `½‖prediction − target‖²`.
    L2,
}

impl LossKind {
    /// The loss called `name` in a train section, if the runtime implements it.
    pub fn from_name(name: &str) -> Option<LossKind> {
        match name {
            "softmax_cross_entropy" => Some(LossKind::SoftmaxCrossEntropy),
            "sigmoid_cross_entropy" => Some(LossKind::SigmoidCrossEntropy),
            "l2" => Some(LossKind::L2),
            _ => None,
        }
    }
}

impl fmt::Display for LossKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LossKind::SoftmaxCrossEntropy => "softmax_cross_entropy",
            LossKind::SigmoidCrossEntropy => "sigmoid_cross_entropy",
            LossKind::L2 => "l2",
        })
    }
}

/// Attributes of [`Op::Backward`].
#[derive(Clone, Debug, PartialEq)]
pub struct BackwardOp {
    /// The forward op.
    pub of: Box<Op>,
    /// Which of its inputs the gradients are for, one result each, in this order.
    pub wrt: Vec<usize>,
    /// What each operand is, in port order.
    pub reads: Vec<Read>,
    /// The shapes of the forward op's inputs (so the verifier can check every operand and
    /// result, and rules that need only a shape read no tensor).
    pub inputs: Vec<crate::shape::Shape>,
}

/// Attributes of [`Op::Input`].
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

/// Attributes of [`Op::Param`].
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

/// Attributes of [`Op::Conv`]. Every vector has one entry per spatial axis.
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

/// Max or average.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Maximum of the window.
    Max,
    /// Mean of the window (padding excluded from the count).
    Avg,
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

/// Attributes of [`Op::Dense`].
#[derive(Clone, Debug, PartialEq)]
pub struct DenseOp {
    /// Output size.
    pub units: usize,
}

/// Attributes of [`Op::BatchNorm`].
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormOp {
    /// Added to the variance.
    pub eps: f32,
    /// Weight of the new batch statistics in the running averages.
    pub momentum: f32,
    /// Normalize with the batch's statistics (and give them as results 1 and 2), not the
    /// running ones.
    pub training: bool,
}

/// Attributes of [`Op::Dropout`].
#[derive(Clone, Debug, PartialEq)]
pub struct DropoutOp {
    /// Fraction of values zeroed while training.
    pub rate: f32,
    /// Part of the mask's hash, fixed from the layer's name when it is built, so that passes
    /// that renumber nodes never change a mask.
    pub salt: u64,
}

/// Activations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `max(x, 0)`
    Relu,
    /// `x` if positive, else `alpha·x`.
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f32,
    },
    /// Hyperbolic tangent.
    Tanh,
    /// Logistic sigmoid.
    Sigmoid,
    /// Softmax over the last axis.
    Softmax,
}

impl Op {
    /// The op's name in IR text and summaries.
    pub fn mnemonic(&self) -> String {
        match self {
            Op::Input(_) => "input".into(),
            Op::Param(_) => "param".into(),
            Op::Conv(c) => format!("conv{}d", c.size.len()),
            Op::Pool(p) => format!("{}pool{}d", p.kind, p.size.len()),
            Op::GlobalPool(k) => format!("global_{k}pool"),
            Op::Dense(_) => "dense".into(),
            Op::Flatten => "flatten".into(),
            Op::BatchNorm(b) => if b.training { "batchnorm.train" } else { "batchnorm" }.into(),
            Op::Dropout(_) => "dropout".into(),
            Op::Activation(a) => a.to_string(),
            Op::PRelu => "prelu".into(),
            Op::Add => "add".into(),
            Op::Concat => "concat".into(),
            Op::Reshape(_) => "reshape".into(),
            Op::ChannelSlice(_) => "channel_slice".into(),
            Op::Loss(l) => format!("loss.{}", l.kind),
            Op::Backward(b) => format!("vjp.{}", b.of.mnemonic()),
        }
    }

    /// The attributes as `[k=v,...]`, empty when there are none.
    pub fn attributes(&self) -> String {
        let list = |v: &[usize]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("x");
        let pads = |v: &[(usize, usize)]| {
            if v.iter().all(|(a, b)| a == b) {
                v.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>().join("x")
            } else {
                v.iter().map(|(a, b)| format!("{a}+{b}")).collect::<Vec<_>>().join("x")
            }
        };
        match self {
            Op::Conv(c) => {
                let mut s = format!("[n={},f={},s={},p={}", c.filters, list(&c.size), list(&c.stride), pads(&c.pad));
                if c.dilation.iter().any(|&d| d != 1) {
                    s += &format!(",d={}", list(&c.dilation));
                }
                if c.groups != 1 {
                    s += &format!(",g={}", c.groups);
                }
                s + "]"
            }
            Op::Pool(p) => format!(
                "[f={},s={},p={}{}]",
                list(&p.size),
                list(&p.stride),
                pads(&p.pad),
                if p.ceil { ",ceil" } else { "" }
            ),
            Op::Dense(d) => format!("[units={}]", d.units),
            Op::Loss(l) => format!("[weight={}]", l.weight),
            Op::Backward(b) => {
                let inner = b.of.attributes();
                let inner = inner.trim_start_matches('[').trim_end_matches(']');
                let wrt: Vec<String> = b.wrt.iter().map(|w| w.to_string()).collect();
                let reads: Vec<String> = b.reads.iter().map(|r| r.to_string()).collect();
                let head = format!("wrt={};reads={}", wrt.join(","), reads.join(","));
                if inner.is_empty() {
                    format!("[{head}]")
                } else {
                    format!("[{head};{inner}]")
                }
            }
            Op::BatchNorm(b) => format!("[eps={},momentum={}]", b.eps, b.momentum),
            Op::Dropout(d) => format!("[rate={},salt={:016x}]", d.rate, d.salt),
            Op::Activation(Activation::LeakyRelu { alpha }) => format!("[alpha={alpha}]"),
            Op::Reshape(r) => format!("[{}]", list(&r.shape)),
            Op::ChannelSlice(c) => format!("[start={},len={}]", c.start, c.len),
            Op::Param(p) => {
                let init = match p.init {
                    Init::He => "he".to_string(),
                    Init::Glorot => "glorot".to_string(),
                    Init::Zeros => "zeros".to_string(),
                    Init::Ones => "ones".to_string(),
                    Init::Fill(v) => format!("fill({v})"),
                    Init::Constant => "constant".to_string(),
                };
                format!("[init={init}{}]", if p.frozen { ",frozen" } else { "" })
            }
            Op::Activation(Activation::Relu | Activation::Tanh | Activation::Sigmoid | Activation::Softmax)
            | Op::Input(_)
            | Op::GlobalPool(_)
            | Op::Flatten
            | Op::PRelu
            | Op::Add
            | Op::Concat => String::new(),
        }
    }
}

impl fmt::Display for PoolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolKind::Max => "max",
            PoolKind::Avg => "avg",
        })
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Activation::Relu => "relu",
            Activation::LeakyRelu { .. } => "leaky_relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Softmax => "softmax",
        })
    }
}
