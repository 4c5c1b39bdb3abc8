//! Errors and warnings as data: one enum per phase, each variant carrying locations and values but
//! no prose. [`crate::report`] turns them into [`crate::diag::Diagnostic`]s.

use crate::shape::{AxisCalc, Shape, ShapeFault};
use crate::source::Loc;
use cnnc_grammar::ParseErrorKind;

/// Reading and parsing files.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadError {
    /// The text does not parse.
    Parse { loc: Loc, kind: ParseErrorKind },
    /// The file is not UTF-8; `loc` points at the first bad byte.
    InvalidUtf8 { loc: Loc },
    /// A `use` names a file that does not exist.
    MissingFile { loc: Loc, module: String, tried: String, candidates: Vec<String> },
    /// A `use` names an item the file does not define.
    UnknownImport { loc: Loc, module: String, item: String, candidates: Vec<String> },
}

/// Resolving names, instantiating blocks and evaluating arguments.
#[derive(Clone, Debug, PartialEq)]
pub enum ResolveError {
    /// A name that is not bound here.
    UnknownName { loc: Loc, name: String, candidates: Vec<String> },
    /// A call of something that is neither a layer, a block nor a shared instance.
    UnknownLayer { loc: Loc, name: String, candidates: Vec<String> },
    /// A named argument the callee does not take.
    UnknownArgument { loc: Loc, callee: String, name: String, candidates: Vec<String>, def: Option<Loc> },
    /// A required argument is missing.
    MissingArgument { loc: Loc, callee: String, name: String, def: Option<Loc> },
    /// More positional arguments than the callee takes.
    TooManyArguments { loc: Loc, callee: String, max: usize, got: usize, def: Option<Loc> },
    /// The same argument given twice.
    DuplicateArgument { loc: Loc, first: Loc, name: String },
    /// A value of the wrong type.
    WrongType { loc: Loc, what: String, expected: String, found: String, origin: Option<Loc> },
    /// A value of the right type but out of range or not among the choices.
    BadValue { loc: Loc, what: String, value: String, expected: String, candidates: Vec<String> },
    /// A block parameter with a type cnnc does not know.
    UnknownType { loc: Loc, name: String, candidates: Vec<String> },
    /// A name defined twice in one scope.
    DuplicateDefinition { loc: Loc, first: Loc, name: String },
    /// Bindings that depend on themselves: the locations of each binding in the cycle, in order.
    Cycle { names: Vec<(String, Loc)> },
    /// A block that instantiates itself.
    Recursion { loc: Loc, block: String, def: Loc },
    /// A statement that does not belong where it is (an `input` in a block, a `return` in a model).
    Misplaced { loc: Loc, what: &'static str, place: &'static str },
    /// A block without `return`.
    MissingReturn { loc: Loc, block: String },
    /// A model without inputs or outputs.
    IncompleteModel { loc: Loc, model: String, missing: &'static str },
    /// A constant whose values do not fill its shape.
    ConstSize { loc: Loc, name: String, shape: Vec<i64>, expected: usize, got: usize },
    /// Integer overflow or division by zero.
    Arithmetic { loc: Loc, problem: &'static str },
    /// A graph too large to be meant (runaway `repeat`).
    TooLarge { loc: Loc, nodes: usize, limit: usize },
    /// The file's models together take too many elaboration steps.
    TooMuchWork { loc: Loc, limit: usize },
    /// A `train` section for a model that the file does not define.
    UnknownModel { loc: Loc, name: String, candidates: Vec<String> },
}

/// Shape inference and checking.
#[derive(Clone, Debug, PartialEq)]
pub enum ShapeError {
    /// A layer's shape rule rejects its inputs. `inputs` are the shapes and where they came from.
    Layer { loc: Loc, layer: String, op: String, fault: ShapeFault, inputs: Vec<(Shape, Loc)> },
    /// A window size written with more or fewer axes than the input has spatial axes.
    SizeRank { loc: Loc, what: &'static str, written: usize, input: Shape, origin: Loc },
    /// A loss applied to tensors that do not fit it.
    Loss { loc: Loc, loss: String, problem: String, inputs: Vec<(String, Shape, Loc)> },
}

/// Warnings: the file compiles, but probably not as meant.
#[derive(Clone, Debug, PartialEq)]
pub enum Warning {
    /// A stride that leaves rows or columns of the input unread, per affected axis.
    UnreadInput { loc: Loc, layer: String, calcs: Vec<AxisCalc>, rank: usize },
    /// A binding that nothing uses.
    UnusedBinding { loc: Loc, name: String },
}

/// Checking a `train` section.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainError {
    /// A setting name cnnc does not know.
    UnknownSetting { loc: Loc, name: String, candidates: Vec<String> },
    /// A setting given twice.
    DuplicateSetting { loc: Loc, first: Loc, name: String },
    /// `cache true` on a model or section whose frozen body cannot be cached.
    Cache { loc: Loc, problem: String },
    /// A model of several inputs without `inputs`, or `inputs` that does not fit the model, its
    /// data or its losses.
    Inputs { loc: Loc, problem: String },
    /// A required setting is missing.
    MissingSetting { loc: Loc, name: &'static str, example: &'static str },
    /// A data source, loss, optimizer, schedule or augmentation cnnc does not know.
    UnknownFunction { loc: Loc, kind: &'static str, name: String, candidates: Vec<String> },
    /// An augmentation step that cannot apply to the examples (colour on grey images, a crop
    /// larger than the image, ...).
    Augment { loc: Loc, step: String, problem: String, input: Loc },
    /// A loss names a model output that does not exist.
    UnknownOutput { loc: Loc, name: String, candidates: Vec<String> },
    /// A style-transfer section (which optimizes the input image) mixed with what trains
    /// weights, or the other way round.
    StyleTransfer { loc: Loc, problem: String },
    /// The data's examples (after augmentation) do not have the model input's shape.
    DataMismatch { loc: Loc, data: String, shape: Shape, augmented: bool, input: String, expected: Shape, at: Loc },
}

/// Any error or warning of any phase.
#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    /// See [`LoadError`].
    Load(LoadError),
    /// See [`ResolveError`].
    Resolve(ResolveError),
    /// See [`ShapeError`].
    Shape(ShapeError),
    /// See [`TrainError`].
    Train(TrainError),
    /// See [`Warning`].
    Warning(Warning),
    /// A problem inside a block body, with the chain of instances that led to it (outermost first).
    Within { problem: Box<Problem>, instances: Vec<(String, Loc)> },
}

impl Problem {
    /// Whether this is a warning rather than an error.
    pub fn is_warning(&self) -> bool {
        match self {
            Problem::Warning(_) => true,
            Problem::Within { problem, .. } => problem.is_warning(),
            _ => false,
        }
    }
}

macro_rules! into_problem {
    ($($t:ident => $v:ident),*) => {$(
        impl From<$t> for Problem {
            fn from(e: $t) -> Self {
                Problem::$v(e)
            }
        }
    )*};
}
into_problem!(LoadError => Load, ResolveError => Resolve, ShapeError => Shape, TrainError => Train, Warning => Warning);

/// Names among `candidates` close to `name`, best first (for "did you mean").
pub fn similar<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut scored: Vec<(f64, &str)> = candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(s, _)| *s >= 0.8)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(3).map(|(_, c)| c.to_string()).collect()
}
