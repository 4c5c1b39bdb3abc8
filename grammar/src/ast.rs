//! The syntax tree of a `.cnn` file. Every node carries the [`Span`] of the text it came from.

use std::fmt;

/// A byte range `start..end` in one source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    /// A span from byte offsets.
    pub fn new(start: usize, end: usize) -> Self {
        Span { start: start as u32, end: end as u32 }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span { start: self.start.min(other.start), end: self.end.max(other.end) }
    }

    /// Length in bytes.
    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether the span covers no byte.
    pub fn is_empty(self) -> bool {
        self.end == self.start
    }
}

/// A name as written, with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where it stands.
    pub span: Span,
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A whole `.cnn` file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct File {
    /// Top-level items in source order.
    pub items: Vec<Item>,
}

/// A top-level item.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `use std.resnet.bottleneck`
    Use(Use),
    /// `block name(params) { ... }`
    Block(Block),
    /// `model Name { ... }`
    Model(Model),
    /// `train Name { ... }`
    Train(Train),
    /// `const name: [shape] = [values]`
    Const(Const),
}

/// `use a.b.c` or `use a.b.*`.
#[derive(Clone, Debug, PartialEq)]
pub struct Use {
    /// The dotted path, without a trailing `*`.
    pub path: Vec<Ident>,
    /// Whether the path ends in `.*` (import every block of the file).
    pub glob: bool,
    /// The whole declaration.
    pub span: Span,
}

/// A parameterized, reusable sub-graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// The block's name.
    pub name: Ident,
    /// Parameters: untyped ones are tensors, typed ones are values.
    pub params: Vec<Param>,
    /// Statements; exactly one `return`.
    pub body: Vec<Stmt>,
    /// The whole declaration.
    pub span: Span,
}

/// One block parameter: `x`, `c: int`, `stride: int = 1`.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// Its name.
    pub name: Ident,
    /// Its declared type; none means a tensor.
    pub ty: Option<Ident>,
    /// Its default value.
    pub default: Option<Expr>,
    /// The whole parameter.
    pub span: Span,
}

/// A network: inputs, bindings, outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// The model's name.
    pub name: Ident,
    /// Statements.
    pub body: Vec<Stmt>,
    /// The whole declaration.
    pub span: Span,
}

/// A statement inside a block or model.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `input image: [32, 32, 1]`
    Input { name: Ident, shape: Expr, span: Span },
    /// `output logits = x` or `output x`
    Output { name: Ident, value: Option<Expr>, span: Span },
    /// `return expr`
    Return { value: Expr, span: Span },
    /// `shared enc = encoder(128)`: one instance whose weights every use shares.
    Shared { name: Ident, call: Call, span: Span },
    /// `const k: [3, 3, 1, 1] = [...]`
    Const(Const),
    /// `anchors boxes = [[1.0, 2.0], ...]`
    Anchors { name: Ident, value: Expr, span: Span },
    /// `name = expr`
    Binding { name: Ident, value: Expr, span: Span },
}

/// A constant tensor written in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Const {
    /// Its name.
    pub name: Ident,
    /// Its shape, a list of integers.
    pub shape: Expr,
    /// Its values, a (possibly nested) list of numbers in row-major order.
    pub value: Expr,
    /// The whole declaration.
    pub span: Span,
}

/// How to train a model.
#[derive(Clone, Debug, PartialEq)]
pub struct Train {
    /// The model trained.
    pub model: Ident,
    /// Settings in source order.
    pub settings: Vec<Setting>,
    /// The whole section.
    pub span: Span,
}

/// One setting of a `train` section.
#[derive(Clone, Debug, PartialEq)]
pub enum Setting {
    /// `augment { mirror(), random_crop(28, pad: 2) }`
    Augment { steps: Vec<Call>, span: Span },
    /// `preprocess { resize(12x12), rgb, scale(255) }`: applied to every example, in training,
    /// evaluation and prediction.
    Preprocess { steps: Vec<Call>, span: Span },
    /// `key value`, such as `batch 64` or `optimizer sgd(lr: 0.1)`.
    Value { key: Ident, value: Expr, span: Span },
}

/// An expression with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where it stands.
    pub span: Span,
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }
}

/// The kinds of expression.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// `64`
    Int(i64),
    /// `0.5`, `1e-5`
    Float(f64),
    /// `"data/mnist"`
    Str(String),
    /// `true`
    Bool(bool),
    /// `3x3`, `3x3x3`
    Size(Vec<i64>),
    /// `[a, b, c]`
    List(Vec<Expr>),
    /// A name: a binding, a parameter, a constant, or a bare keyword value like `same`.
    Name(Ident),
    /// `f(args)`
    Call(Call),
    /// `-e`
    Neg(Box<Expr>),
    /// `a + b`
    Binary { op: BinOp, lhs: Box<Expr>, rhs: Box<Expr> },
    /// `x |> f |> g(1)`
    Pipe { input: Box<Expr>, stages: Vec<Stage> },
}

/// A call of a layer, block, shared instance or function.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// What is called.
    pub callee: Ident,
    /// Positional then named arguments, in source order.
    pub args: Vec<Arg>,
    /// `frozen f(...)`: the parameters it creates are not trained.
    pub frozen: bool,
    /// Written without parentheses, as a pipeline stage (`|> relu`).
    pub bare: bool,
    /// The whole call.
    pub span: Span,
}

/// One argument of a call.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// `name:` for a named argument.
    pub name: Option<Ident>,
    /// Its value.
    pub value: Expr,
    /// The whole argument.
    pub span: Span,
}

/// A stage of a pipeline.
#[derive(Clone, Debug, PartialEq)]
pub enum Stage {
    /// `|> f(args)` or `|> f`
    Call(Call),
    /// `|> repeat n as i { f |> g }`
    Repeat { count: Expr, var: Option<Ident>, stages: Vec<Stage>, frozen: bool, span: Span },
}

impl Stage {
    /// The span of the whole stage.
    pub fn span(&self) -> Span {
        match self {
            Stage::Call(c) => c.span,
            Stage::Repeat { span, .. } => *span,
        }
    }
}
