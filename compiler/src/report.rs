//! The one place where problems become words: every [`Problem`] variant gets a stable code, a
//! message, a primary label on the culprit, secondary labels on where values came from, a help
//! line, and the arithmetic worked out with the user's numbers.

use crate::diag::{Diagnostic, Severity};
use crate::error::*;
use crate::shape::{Shape, ShapeFault};
use cnnc_grammar::ParseErrorKind;

/// Every diagnostic code, for tools and for the test that each has a UI test.
pub const CODES: &[&str] = &[
    "cnnc::parse::bad_number",
    "cnnc::parse::int_too_large",
    "cnnc::parse::invalid_utf8",
    "cnnc::parse::syntax",
    "cnnc::parse::too_complex",
    "cnnc::parse::too_deep",
    "cnnc::resolve::arithmetic",
    "cnnc::resolve::bad_value",
    "cnnc::resolve::const_size",
    "cnnc::resolve::cycle",
    "cnnc::resolve::duplicate_argument",
    "cnnc::resolve::duplicate_definition",
    "cnnc::resolve::incomplete_model",
    "cnnc::resolve::misplaced_statement",
    "cnnc::resolve::missing_argument",
    "cnnc::resolve::missing_file",
    "cnnc::resolve::missing_return",
    "cnnc::resolve::recursion",
    "cnnc::resolve::too_large",
    "cnnc::resolve::too_much_work",
    "cnnc::resolve::too_many_arguments",
    "cnnc::resolve::unknown_argument",
    "cnnc::resolve::unknown_import",
    "cnnc::resolve::unknown_layer",
    "cnnc::resolve::unknown_model",
    "cnnc::resolve::unknown_name",
    "cnnc::resolve::unknown_type",
    "cnnc::resolve::unused_binding",
    "cnnc::resolve::wrong_type",
    "cnnc::shape::add_mismatch",
    "cnnc::shape::channel_mismatch",
    "cnnc::shape::concat_mismatch",
    "cnnc::shape::dense_unflattened",
    "cnnc::shape::elementwise_mismatch",
    "cnnc::shape::loss_mismatch",
    "cnnc::shape::output_too_small",
    "cnnc::shape::rank_mismatch",
    "cnnc::shape::too_large",
    "cnnc::shape::unread_input",
    "cnnc::train::augment_mismatch",
    "cnnc::train::cache",
    "cnnc::train::data_mismatch",
    "cnnc::train::duplicate_setting",
    "cnnc::train::inputs",
    "cnnc::train::missing_setting",
    "cnnc::train::style_transfer",
    "cnnc::train::unknown_function",
    "cnnc::train::unknown_output",
    "cnnc::train::unknown_setting",
];

const AXES: [&str; 3] = ["height", "width", "depth"];

fn axis_name(axis: usize, rank: usize) -> &'static str {
    match rank {
        1 => "length",
        2 => AXES[axis.min(2)],
        _ => ["depth", "height", "width"][axis.min(2)],
    }
}

fn did_you_mean(candidates: &[String]) -> Option<String> {
    match candidates {
        [] => None,
        [one] => Some(format!("did you mean `{one}`?")),
        many => Some(format!(
            "did you mean one of {}?",
            many.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Adds a secondary label on the definition of a block the diagnostic is about, if it has one.
fn defined_here(d: Diagnostic, def: Option<crate::source::Loc>, callee: &str) -> Diagnostic {
    match def {
        Some(def) => d.label(def, format!("`{callee}` is defined here")),
        None => d,
    }
}

fn with_help(d: Diagnostic, help: Option<String>) -> Diagnostic {
    match help {
        Some(h) => d.help(h),
        None => d,
    }
}

/// Turns a problem into a diagnostic.
pub fn diagnostic(p: &Problem) -> Diagnostic {
    match p {
        Problem::Load(e) => load(e),
        Problem::Resolve(e) => resolve(e),
        Problem::Shape(e) => shape(e),
        Problem::Train(e) => train(e),
        Problem::Warning(w) => warning(w),
        Problem::Within { problem, instances } => {
            let mut d = diagnostic(problem);
            for (what, loc) in instances.iter().rev() {
                d = d.label(*loc, format!("in {what} created here"));
            }
            d
        }
    }
}

fn load(e: &LoadError) -> Diagnostic {
    use Severity::Error;
    match e {
        LoadError::Parse { loc, kind } => match kind {
            ParseErrorKind::Syntax { expected, found } => {
                let found = match found {
                    Some(f) => format!("`{f}`"),
                    None => "the end of the file".into(),
                };
                let expected = match expected.as_slice() {
                    [] => "something else".to_string(),
                    [one] => one.clone(),
                    [init @ .., last] => format!("{} or {last}", init.join(", ")),
                };
                Diagnostic::new(
                    "cnnc::parse::syntax",
                    Error,
                    format!("expected {expected}, found {found}"),
                    *loc,
                    format!("expected {expected} here"),
                )
                .help("see docs/language.md for the grammar of .cnn files")
            }
            ParseErrorKind::IntTooLarge { text } => Diagnostic::new(
                "cnnc::parse::int_too_large",
                Error,
                format!("the integer `{text}` is too large"),
                *loc,
                "does not fit in 64 bits",
            )
            .help("integers in .cnn files go up to 9223372036854775807"),
            ParseErrorKind::BadNumber { text } => Diagnostic::new(
                "cnnc::parse::bad_number",
                Error,
                format!("`{text}` is not a finite number"),
                *loc,
                "not representable",
            )
            .help("write a number within the range of 64-bit floats"),
            ParseErrorKind::TooDeep { limit } => Diagnostic::new(
                "cnnc::parse::too_deep",
                Error,
                format!("brackets nest more than {limit} levels deep"),
                *loc,
                "too deep from here",
            )
            .help("split the expression with bindings (`h = ...`)"),
            ParseErrorKind::TooComplex { limit } => Diagnostic::new(
                "cnnc::parse::too_complex",
                Error,
                "this expression is too long to parse".to_string(),
                *loc,
                format!("more than {limit} operators or parser steps"),
            )
            .help("split the expression with bindings (`h = ...`)"),
        },
        LoadError::InvalidUtf8 { loc } => Diagnostic::new(
            "cnnc::parse::invalid_utf8",
            Error,
            "the file is not valid UTF-8 text",
            *loc,
            "invalid byte here",
        )
        .help("save the file as UTF-8"),
        LoadError::MissingFile { loc, module, tried, candidates } => with_help(
            Diagnostic::new(
                "cnnc::resolve::missing_file",
                Error,
                format!("cannot find module `{module}`"),
                *loc,
                format!("looked for {tried}"),
            ),
            did_you_mean(&candidates.iter().map(|c| format!("std.{c}")).collect::<Vec<_>>()).or_else(|| {
                Some(
                    "`use std.NAME.item` for the standard library, `use file.item` for file.cnn beside this one".into(),
                )
            }),
        ),
        LoadError::UnknownImport { loc, module, item, candidates } => with_help(
            Diagnostic::new(
                "cnnc::resolve::unknown_import",
                Error,
                format!("`{module}` has no block or constant `{item}`"),
                *loc,
                "not defined there",
            ),
            did_you_mean(candidates),
        ),
    }
}

fn resolve(e: &ResolveError) -> Diagnostic {
    use Severity::Error;
    match e {
        ResolveError::UnknownName { loc, name, candidates } => with_help(
            Diagnostic::new(
                "cnnc::resolve::unknown_name",
                Error,
                format!("unknown name `{name}`"),
                *loc,
                "not bound in this model or block",
            ),
            did_you_mean(candidates).or_else(|| Some(format!("bind it first: `{name} = ...`"))),
        ),
        ResolveError::UnknownLayer { loc, name, candidates } => with_help(
            Diagnostic::new(
                "cnnc::resolve::unknown_layer",
                Error,
                format!("unknown layer or block `{name}`"),
                *loc,
                "neither a layer, a block nor a shared instance",
            ),
            did_you_mean(candidates).or_else(|| Some("define it with `block`, or import it with `use`".into())),
        ),
        ResolveError::UnknownArgument { loc, callee, name, candidates, def } => {
            let d = Diagnostic::new(
                "cnnc::resolve::unknown_argument",
                Error,
                format!("`{callee}` has no parameter `{name}`"),
                *loc,
                "unknown parameter",
            );
            let d = defined_here(d, *def, callee);
            with_help(d, did_you_mean(candidates).or_else(|| signature(callee)))
        }
        ResolveError::MissingArgument { loc, callee, name, def } => {
            let d = Diagnostic::new(
                "cnnc::resolve::missing_argument",
                Error,
                format!("`{callee}` needs an argument `{name}`"),
                *loc,
                format!("`{name}` missing"),
            );
            let d = defined_here(d, *def, callee);
            with_help(d, signature(callee))
        }
        ResolveError::TooManyArguments { loc, callee, max, got, def } => {
            let d = Diagnostic::new(
                "cnnc::resolve::too_many_arguments",
                Error,
                format!(
                    "`{callee}` takes {max} positional argument{}, this is argument {got}",
                    if *max == 1 { "" } else { "s" }
                ),
                *loc,
                "one too many",
            );
            let d = defined_here(d, *def, callee);
            with_help(d, signature(callee))
        }
        ResolveError::DuplicateArgument { loc, first, name } => Diagnostic::new(
            "cnnc::resolve::duplicate_argument",
            Error,
            format!("argument `{name}` given twice"),
            *loc,
            "given again here",
        )
        .label(*first, "first given here")
        .help("remove one of them"),
        ResolveError::WrongType { loc, what, expected, found, origin } => {
            let d = Diagnostic::new(
                "cnnc::resolve::wrong_type",
                Error,
                format!("{what} must be {expected}, found {found}"),
                *loc,
                format!("this is {} {found}", if found.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }),
            );
            match origin {
                Some(o) => d.label(*o, "the value comes from here"),
                None => d,
            }
        }
        ResolveError::BadValue { loc, what, value, expected, candidates } => with_help(
            Diagnostic::new(
                "cnnc::resolve::bad_value",
                Error,
                format!("`{value}` is not a valid {}", what.trim_start_matches("a ").trim_start_matches("an ")),
                *loc,
                format!("expected {expected}"),
            ),
            did_you_mean(candidates),
        ),
        ResolveError::UnknownType { loc, name, candidates } => with_help(
            Diagnostic::new(
                "cnnc::resolve::unknown_type",
                Error,
                format!("unknown parameter type `{name}`"),
                *loc,
                "not a type",
            ),
            did_you_mean(candidates).or_else(|| Some(format!("types are {}", crate::elaborate::TYPES.join(", ")))),
        ),
        ResolveError::DuplicateDefinition { loc, first, name } => Diagnostic::new(
            "cnnc::resolve::duplicate_definition",
            Error,
            format!("`{name}` is defined twice"),
            *loc,
            "defined again here",
        )
        .label(*first, "first defined here")
        .help("give one of them another name"),
        ResolveError::Cycle { names } => {
            let chain: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
            let first = names.first().map(|(n, l)| (n.clone(), *l)).unwrap_or_default();
            let mut d = Diagnostic::new(
                "cnnc::resolve::cycle",
                Error,
                format!("`{}` depends on itself: {} → {}", first.0, chain.join(" → "), first.0),
                first.1,
                "this binding is part of a cycle",
            );
            for (n, l) in names.iter().skip(1) {
                d = d.label(*l, format!("`{n}` is in the cycle"));
            }
            d.help("a network is a directed acyclic graph: no value may be computed from itself")
        }
        ResolveError::Recursion { loc, block, def } => Diagnostic::new(
            "cnnc::resolve::recursion",
            Error,
            format!("block `{block}` instantiates itself"),
            *loc,
            "recursive instance",
        )
        .label(*def, "block defined here")
        .help("use `repeat n { ... }` to stack copies of a block"),
        ResolveError::Misplaced { loc, what, place } => Diagnostic::new(
            "cnnc::resolve::misplaced_statement",
            Error,
            format!("`{what}` cannot stand in {place}"),
            *loc,
            "not allowed here",
        ),
        ResolveError::MissingReturn { loc, block } => Diagnostic::new(
            "cnnc::resolve::missing_return",
            Error,
            format!("block `{block}` has no `return`"),
            *loc,
            "returns nothing",
        )
        .help("end the block with `return <tensor>`"),
        ResolveError::IncompleteModel { loc, model, missing } => Diagnostic::new(
            "cnnc::resolve::incomplete_model",
            Error,
            format!("model `{model}` has no {missing}"),
            *loc,
            format!("needs at least one `{missing}`"),
        )
        .help(if *missing == "input" {
            "declare one: `input image: [28, 28, 1]`"
        } else {
            "declare one: `output logits = x`"
        }),
        ResolveError::ConstSize { loc, name, shape, expected, got } => Diagnostic::new(
            "cnnc::resolve::const_size",
            Error,
            format!(
                "constant `{name}` has {got} value{} but its shape {} needs {expected}",
                if *got == 1 { "" } else { "s" },
                list(shape)
            ),
            *loc,
            format!("{got} values"),
        )
        .help("give one value per element, in row-major order"),
        ResolveError::Arithmetic { loc, problem } => Diagnostic::new(
            "cnnc::resolve::arithmetic",
            Error,
            format!("arithmetic error: {problem}"),
            *loc,
            problem.to_string(),
        ),
        ResolveError::TooLarge { loc, nodes, limit } => Diagnostic::new(
            "cnnc::resolve::too_large",
            Error,
            format!("the model has more than {limit} operations"),
            *loc,
            format!("stopped here, after {nodes}"),
        )
        .help("check `repeat` counts"),
        ResolveError::TooMuchWork { loc, limit } => Diagnostic::new(
            "cnnc::resolve::too_much_work",
            Error,
            format!(
                "the file's models take more than {limit} steps to build together (layers, repeats, block instances)"
            ),
            *loc,
            "stopped here",
        )
        .help("check `repeat` counts and how deeply blocks call blocks; split very large files into several"),
        ResolveError::UnknownModel { loc, name, candidates } => with_help(
            Diagnostic::new(
                "cnnc::resolve::unknown_model",
                Error,
                format!("no model `{name}` in this file"),
                *loc,
                "unknown model",
            ),
            did_you_mean(candidates),
        ),
    }
}

fn signature(callee: &str) -> Option<String> {
    crate::elaborate::LAYERS.iter().find(|l| l.name == callee).map(|l| format!("the signature is `{}`", l.signature))
}

fn list(v: &[i64]) -> String {
    format!("[{}]", v.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

fn shape(e: &ShapeError) -> Diagnostic {
    use Severity::Error;
    match e {
        ShapeError::SizeRank { loc, what, written, input, origin } => {
            let spatial = input.rank().saturating_sub(1);
            Diagnostic::new(
                "cnnc::shape::rank_mismatch",
                Error,
                format!(
                    "{what} has {written} axes but the input {input} has {spatial} spatial ax{}",
                    if spatial == 1 { "is" } else { "es" }
                ),
                *loc,
                format!("{written} axes"),
            )
            .label(*origin, format!("input of shape {input}"))
            .help(format!(
                "write {spatial} size{} (`{}`), or a single integer for all axes",
                if spatial == 1 { "" } else { "s" },
                vec!["3"; spatial.max(1)].join("x")
            ))
        }
        ShapeError::Loss { loc, loss, problem, inputs } => {
            let mut d = Diagnostic::new(
                "cnnc::shape::loss_mismatch",
                Error,
                format!("`{loss}` cannot apply here: {problem}"),
                *loc,
                "loss inputs do not fit",
            );
            for (name, shape, l) in inputs {
                d = d.label(*l, format!("`{name}` has shape {shape}"));
            }
            d
        }
        ShapeError::Layer { loc, layer, op, fault, inputs } => layer_fault(*loc, layer, op, fault, inputs),
    }
}

fn layer_fault(
    loc: crate::source::Loc,
    layer: &str,
    op: &str,
    fault: &ShapeFault,
    inputs: &[(Shape, crate::source::Loc)],
) -> Diagnostic {
    use Severity::Error;
    let who = if layer.is_empty() { format!("`{op}`") } else { format!("`{layer}` ({op})") };
    let add_inputs = |mut d: Diagnostic| {
        for (i, (s, l)) in inputs.iter().enumerate() {
            let what = if inputs.len() == 1 { "input".to_string() } else { format!("input {}", i + 1) };
            d = d.label(*l, format!("{what} has shape {s}"));
        }
        d
    };
    match fault {
        ShapeFault::OutputTooSmall { calc } => {
            let rank = inputs.first().map_or(2, |(s, _)| s.rank().saturating_sub(1));
            let axis = axis_name(calc.axis, rank);
            let d = Diagnostic::new(
                "cnnc::shape::output_too_small",
                Error,
                format!("{who} leaves no output along the {axis}: (n + 2p − f)/s + 1 = {}", calc.formula().rsplit("= ").next().unwrap_or("")),
                loc,
                format!("{axis}: {}", calc.formula()),
            );
            let f_eff = calc.f_eff();
            let need = f_eff.saturating_sub(calc.pad.0 + calc.pad.1);
            add_inputs(d)
                .note(format!("a window of {f_eff} does not fit in {} plus padding {}", calc.n, calc.pad.0 + calc.pad.1))
                .help(format!("the {axis} must be at least {need} here: use a smaller window, `pad: same`, or remove a downsampling layer before this one"))
        }
        ShapeFault::Rank { expected, got } => add_inputs(Diagnostic::new(
            "cnnc::shape::rank_mismatch",
            Error,
            format!("{who} needs an input of shape {expected}, found {got}"),
            loc,
            format!("needs {expected}"),
        ))
        .help(if got.rank() == 1 { "windowed layers need spatial axes; this tensor was already flattened" } else { "check the input's declared shape" }),
        ShapeFault::ChannelsNotDivisible { channels, groups } => add_inputs(Diagnostic::new(
            "cnnc::shape::channel_mismatch",
            Error,
            format!("{who}: {channels} input channels cannot be split into {groups} groups"),
            loc,
            format!("{channels} % {groups} = {}", channels % groups.max(&1)),
        ))
        .help("groups must divide both the input channels and the filters"),
        ShapeFault::FiltersNotDivisible { filters, groups } => add_inputs(Diagnostic::new(
            "cnnc::shape::channel_mismatch",
            Error,
            format!("{who}: {filters} filters cannot be split into {groups} groups"),
            loc,
            format!("{filters} % {groups} = {}", filters % groups.max(&1)),
        ))
        .help("groups must divide both the input channels and the filters"),
        ShapeFault::ParamShape { expected, got } => add_inputs(Diagnostic::new(
            "cnnc::shape::channel_mismatch",
            Error,
            format!("{who} needs weights of shape {expected}, but they have shape {got}"),
            loc,
            format!("weights {got} do not fit"),
        ))
        .note("convolution weights are [f.., n_C_in / groups, filters]; a shared instance keeps the shapes of its first use")
        .help("make the input channels match the weights (a 1×1 convolution can change the channel count)"),
        ShapeFault::DenseUnflattened { got } => add_inputs(Diagnostic::new(
            "cnnc::shape::dense_unflattened",
            Error,
            format!("{who} needs a flat [n] input, found {got}"),
            loc,
            format!("input still has shape {got}"),
        ))
        .help(format!("insert `|> flatten` (giving [{}]) or `|> global_avgpool` (giving [{}]) before it", got.elements().unwrap_or(0), got.channels())),
        ShapeFault::AddMismatch { first, other, index } => {
            let help = projection_help(first, other);
            add_inputs(Diagnostic::new(
                "cnnc::shape::add_mismatch",
                Error,
                format!("cannot add tensors of shapes {first} and {other}"),
                loc,
                format!("the shapes of input 1 and input {} differ", index + 1),
            ))
            .help(help)
        }
        ShapeFault::ElementwiseMismatch { verb, first, other } => add_inputs(Diagnostic::new(
            "cnnc::shape::elementwise_mismatch",
            Error,
            format!("cannot {verb} tensors of shapes {first} and {other}"),
            loc,
            "the two inputs' shapes differ".to_string(),
        ))
        .help("element-wise arithmetic takes two tensors of one shape: make them equal (both branches through the same layers, or a dense layer to the other's size)"),
        ShapeFault::ConcatMismatch { first, other, index } => add_inputs(Diagnostic::new(
            "cnnc::shape::concat_mismatch",
            Error,
            format!("cannot concatenate {first} and {other}: all axes but channels must agree"),
            loc,
            format!("the spatial sizes of input 1 and input {} differ", index + 1),
        ))
        .help("give every branch the same spatial size, e.g. `pad: same` on its convolutions and pools"),
        ShapeFault::TooLarge { shape } => Diagnostic::new(
            "cnnc::shape::too_large",
            Error,
            format!("{who} would make a tensor of shape {} with more than 2^40 elements", Shape(shape.clone())),
            loc,
            "too large",
        )
        .help("check the sizes: a model this size cannot run"),
        ShapeFault::Zero { what } => Diagnostic::new("cnnc::shape::output_too_small", Error, format!("{who} has a {what} of zero"), loc, "zero"),
        ShapeFault::Arity { expected, got } => add_inputs(Diagnostic::new(
            "cnnc::resolve::missing_argument",
            Error,
            format!("{who} needs {expected} inputs, found {got}"),
            loc,
            "wrong number of inputs",
        )),
        // Backward nodes are built by autodiff, never written: the verifier alone meets this.
        ShapeFault::BackwardOperand { port, expected, got } => Diagnostic::new(
            "cnnc::resolve::missing_argument",
            Error,
            format!("internal error: {who} reads {got} at port {port} where {expected} was expected"),
            loc,
            "miswired gradient",
        ),
    }
}

fn projection_help(first: &Shape, other: &Shape) -> String {
    if first.rank() == other.rank() && first.rank() >= 2 {
        let (big, small) = if first.spatial().iter().product::<usize>() >= other.spatial().iter().product::<usize>() {
            (first, other)
        } else {
            (other, first)
        };
        let stride: Vec<usize> =
            big.spatial().iter().zip(small.spatial()).map(|(b, s)| if *s == 0 { 1 } else { (b / s).max(1) }).collect();
        let ones = vec!["1"; stride.len()].join("x");
        let stride_text =
            if stride.iter().all(|&s| s == 1) { String::new() } else { format!(", stride: {}", stride[0]) };
        return format!(
            "project the shortcut with a 1×1 convolution: `x |> conv({}, {ones}{stride_text})` maps {big} to {small}",
            small.channels()
        );
    }
    "both sides of `+` must have the same shape".to_string()
}

fn train(e: &TrainError) -> Diagnostic {
    use Severity::Error;
    match e {
        TrainError::UnknownSetting { loc, name, candidates } => with_help(
            Diagnostic::new(
                "cnnc::train::unknown_setting",
                Error,
                format!("unknown training setting `{name}`"),
                *loc,
                "not a setting",
            ),
            did_you_mean(candidates).or_else(|| Some(format!("settings are {}", crate::train::SETTINGS.join(", ")))),
        ),
        TrainError::Cache { loc, problem } => Diagnostic::new(
            "cnnc::train::cache",
            Error,
            format!("the frozen body's activations cannot be cached: {problem}"),
            *loc,
            "cache asked here",
        )
        .help(
            "freeze the layers from the input on with `frozen` (they run once per example), put no augmentation in \
             the section, or remove `cache true`",
        ),
        TrainError::Inputs { loc, problem } => Diagnostic::new(
            "cnnc::train::inputs",
            Error,
            format!("the model's inputs cannot be fed: {problem}"),
            *loc,
            "here",
        )
        .help(
            "a model of several inputs trains on tuples of the data's examples chosen by identity: `inputs pairs(a, \
             b)` with a loss on a same-or-not output, or `inputs triplets(anchor, positive, negative)` with \
             `triplet(a, p, n)`",
        ),
        TrainError::StyleTransfer { loc, problem } => Diagnostic::new(
            "cnnc::train::style_transfer",
            Error,
            format!("style transfer optimizes the input image: {problem}"),
            *loc,
            "here",
        )
        .help(
            "a style-transfer section has `data style_transfer(content: ..., style: ...)`, a loss of content, style \
             and total_variation terms, an optimizer (adam or lbfgs) and `steps`",
        ),
        TrainError::DuplicateSetting { loc, first, name } => Diagnostic::new(
            "cnnc::train::duplicate_setting",
            Error,
            format!("`{name}` is set twice"),
            *loc,
            "set again here",
        )
        .label(*first, "first set here"),
        TrainError::MissingSetting { loc, name, example } => Diagnostic::new(
            "cnnc::train::missing_setting",
            Error,
            format!("the train section has no `{name}`"),
            *loc,
            format!("`{name}` missing"),
        )
        .help(format!("add e.g. `{example}`")),
        TrainError::UnknownFunction { loc, kind, name, candidates } => with_help(
            Diagnostic::new(
                "cnnc::train::unknown_function",
                Error,
                format!("unknown {kind} `{name}`"),
                *loc,
                format!("no such {kind}"),
            ),
            did_you_mean(candidates),
        ),
        TrainError::DataMismatch { loc, data, shape, augmented, input, expected, at } => {
            let after = if *augmented { " after augmentation" } else { "" };
            Diagnostic::new(
                "cnnc::train::data_mismatch",
                Error,
                format!("`{data}` gives examples of shape {shape}{after} but input `{input}` is {expected}"),
                *loc,
                format!("examples of shape {shape}"),
            )
            .label(*at, format!("`{input}` is declared {expected} here"))
            .help(format!(
                "make the input `{input}: {expected}` match the data, or crop or pad the examples with `augment {{ random_crop(...) }}` or the data source's `pad:`"
            ))
        }
        TrainError::Augment { loc, step, problem, input } => Diagnostic::new(
            "cnnc::train::augment_mismatch",
            Error,
            format!("`{step}` cannot apply here: {problem}"),
            *loc,
            "this step does not fit the examples",
        )
        .label(*input, "the model's input")
        .help("remove the step, or change it to fit the examples' size and channels"),
        TrainError::UnknownOutput { loc, name, candidates } => with_help(
            Diagnostic::new(
                "cnnc::train::unknown_output",
                Error,
                format!("the model has no output `{name}`"),
                *loc,
                "not an output",
            ),
            did_you_mean(candidates)
                .or_else(|| Some("losses apply to outputs declared with `output name = ...`".into())),
        ),
    }
}

fn warning(w: &Warning) -> Diagnostic {
    use Severity::Warning as W;
    match w {
        Warning::UnreadInput { loc, layer, calcs, rank } => {
            let parts: Vec<String> = calcs
                .iter()
                .map(|c| {
                    let unread = c.unread();
                    let what = match (axis_name(c.axis, *rank), unread == 1) {
                        ("height", true) => "row",
                        ("height", false) => "rows",
                        ("width", true) => "column",
                        ("width", false) => "columns",
                        ("depth", true) => "slice",
                        ("depth", false) => "slices",
                        (_, true) => "sample",
                        (_, false) => "samples",
                    };
                    format!("{unread} {what}")
                })
                .collect();
            let label: Vec<String> = calcs
                .iter()
                .map(|c| format!("{}: {} → {}", axis_name(c.axis, *rank), c.formula(), c.out().unwrap_or(0)))
                .collect();
            let first = &calcs[0];
            Diagnostic::new(
                "cnnc::shape::unread_input",
                W,
                format!("`{layer}` leaves the last {} of its input unread", parts.join(" and ")),
                *loc,
                label.join("; "),
            )
            .note(format!(
                "(n + 2p − f) = {} is not a multiple of the stride {}, and floor rounding drops the remainder",
                first.numerator(),
                first.s
            ))
            .help("pad the input, choose a size and stride with (n + 2p − f) divisible by s, or use `round: ceil` for pooling")
        }
        Warning::UnusedBinding { loc, name } => Diagnostic::new(
            "cnnc::resolve::unused_binding",
            W,
            format!("`{name}` is never used"),
            *loc,
            "bound here, never used",
        )
        .help(format!("remove it, or name it `_{name}` to keep it quietly")),
    }
}
