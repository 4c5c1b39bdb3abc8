//! Text to [`ast::File`]: one function per grammar rule. Errors are [`ParseError`]s; nothing here
//! panics on any input, and no pest type leaves this module.

use crate::ast::*;
use pest::iterators::Pair;
use pest::Parser as _;
use std::num::NonZeroUsize;
use std::sync::Once;

#[derive(pest_derive::Parser)]
#[grammar = "cnn.pest"]
struct CnnParser;

/// Deepest nesting of brackets and parentheses accepted; deeper text is refused before parsing so
/// that neither the parser nor later stages can exhaust the stack.
pub const MAX_NESTING: usize = 64;

/// Longest chain of binary operators in one expression.
pub const MAX_CHAIN: usize = 1000;

/// Why a file could not be parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum ParseErrorKind {
    /// The text does not follow the grammar: `expected` lists what could stand at the span.
    Syntax { expected: Vec<String>, found: Option<String> },
    /// An integer literal does not fit in 64 bits.
    IntTooLarge { text: String },
    /// A number literal is not a finite number.
    BadNumber { text: String },
    /// Brackets nest deeper than [`MAX_NESTING`].
    TooDeep { limit: usize },
    /// An expression chains more than [`MAX_CHAIN`] operators, or the parser gave up.
    TooComplex { limit: usize },
}

/// A parse error: what went wrong and where.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseError {
    /// What went wrong.
    pub kind: ParseErrorKind,
    /// Where.
    pub span: Span,
}

type Result<T> = std::result::Result<T, ParseError>;

/// Parses a whole file.
pub fn parse(text: &str) -> Result<File> {
    static LIMIT: Once = Once::new();
    LIMIT.call_once(|| pest::set_call_limit(NonZeroUsize::new(20_000_000)));
    check_nesting(text)?;
    let mut pairs = CnnParser::parse(Rule::file, text).map_err(|e| convert_error(e, text))?;
    let Some(file) = pairs.next() else {
        return Ok(File { items: Vec::new() });
    };
    let mut items = Vec::new();
    for pair in file.into_inner() {
        match pair.as_rule() {
            Rule::use_decl => items.push(Item::Use(use_decl(pair))),
            Rule::block_decl => items.push(Item::Block(block_decl(pair)?)),
            Rule::model_decl => items.push(Item::Model(model_decl(pair)?)),
            Rule::train_decl => items.push(Item::Train(train_decl(pair)?)),
            Rule::const_decl => items.push(Item::Const(const_decl(pair)?)),
            _ => {}
        }
    }
    Ok(File { items })
}

fn check_nesting(text: &str) -> Result<()> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(ParseError {
                        kind: ParseErrorKind::TooDeep { limit: MAX_NESTING },
                        span: Span::new(i, i + 1),
                    });
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

fn convert_error(e: pest::error::Error<Rule>, text: &str) -> ParseError {
    use pest::error::{ErrorVariant, InputLocation};
    let (start, end) = match e.location {
        InputLocation::Pos(p) => (p, p),
        InputLocation::Span((a, b)) => (a, b),
    };
    let start = start.min(text.len());
    let found = found_token(text, start);
    let end = if end > start { end } else { start + found.as_ref().map_or(0, |f| f.len()) };
    let span = Span::new(start, end.min(text.len()));
    let kind = match e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut expected: Vec<String> = positives.iter().filter_map(|r| describe(*r)).map(String::from).collect();
            expected.sort();
            expected.dedup();
            ParseErrorKind::Syntax { expected, found }
        }
        ErrorVariant::CustomError { .. } => ParseErrorKind::TooComplex { limit: 20_000_000 },
    };
    ParseError { kind, span }
}

/// The token-ish text at `pos`, for "found ..." in messages.
fn found_token(text: &str, pos: usize) -> Option<String> {
    let rest = text.get(pos..)?;
    let first = rest.chars().next()?;
    let len = if first.is_alphanumeric() || first == '_' {
        rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len())
    } else if rest.starts_with("|>") {
        2
    } else {
        first.len_utf8()
    };
    Some(rest[..len].to_string())
}

fn describe(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of file",
        Rule::ident => "a name",
        Rule::expr | Rule::sum | Rule::product | Rule::unary => "an expression",
        Rule::stage | Rule::call | Rule::repeat => "a layer or block",
        Rule::int => "an integer",
        Rule::list => "a list `[...]`",
        Rule::use_decl => "`use`",
        Rule::block_decl => "`block`",
        Rule::model_decl => "`model`",
        Rule::train_decl => "`train`",
        Rule::const_decl => "`const`",
        Rule::input_stmt => "`input`",
        Rule::output_stmt => "`output`",
        Rule::return_stmt => "`return`",
        Rule::shared_stmt => "`shared`",
        Rule::anchors_stmt => "`anchors`",
        Rule::binding => "a binding `name = ...`",
        Rule::augment | Rule::kv => "a setting",
        Rule::params | Rule::param => "a parameter",
        Rule::arg => "an argument",
        Rule::add_op | Rule::mul_op => "an operator",
        Rule::glob => "`*`",
        Rule::body => "`{`",
        _ => return None,
    })
}

fn span_of(pair: &Pair<Rule>) -> Span {
    let s = pair.as_span();
    Span::new(s.start(), s.end())
}

fn ident(pair: Pair<Rule>) -> Ident {
    Ident { name: pair.as_str().to_string(), span: span_of(&pair) }
}

fn use_decl(pair: Pair<Rule>) -> Use {
    let span = span_of(&pair);
    let mut path = Vec::new();
    let mut glob = false;
    for p in pair.into_inner().flat_map(|p| p.into_inner()) {
        match p.as_rule() {
            Rule::ident => path.push(ident(p)),
            _ => glob = true,
        }
    }
    Use { path, glob, span }
}

fn block_decl(pair: Pair<Rule>) -> Result<Block> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    let name = ident(next(&mut inner, span)?);
    let mut params = Vec::new();
    let mut body = Vec::new();
    for p in inner {
        match p.as_rule() {
            Rule::params => {
                for param in p.into_inner() {
                    params.push(param_decl(param)?);
                }
            }
            Rule::body => body = stmts(p)?,
            _ => {}
        }
    }
    Ok(Block { name, params, body, span })
}

fn param_decl(pair: Pair<Rule>) -> Result<Param> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    let name = ident(next(&mut inner, span)?);
    let mut ty = None;
    let mut default = None;
    for p in inner {
        match p.as_rule() {
            Rule::ident => ty = Some(ident(p)),
            _ => default = Some(expr(p)?),
        }
    }
    Ok(Param { name, ty, default, span })
}

fn model_decl(pair: Pair<Rule>) -> Result<Model> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    let name = ident(next(&mut inner, span)?);
    let body = match inner.next() {
        Some(b) => stmts(b)?,
        None => Vec::new(),
    };
    Ok(Model { name, body, span })
}

fn stmts(body: Pair<Rule>) -> Result<Vec<Stmt>> {
    body.into_inner().map(stmt).collect()
}

fn stmt(pair: Pair<Rule>) -> Result<Stmt> {
    let span = span_of(&pair);
    let rule = pair.as_rule();
    if rule == Rule::const_decl {
        return Ok(Stmt::Const(const_decl(pair)?));
    }
    let mut inner = pair.into_inner();
    Ok(match rule {
        Rule::input_stmt => {
            let name = ident(next(&mut inner, span)?);
            let shape = expr_like(next(&mut inner, span)?)?;
            Stmt::Input { name, shape, span }
        }
        Rule::output_stmt => {
            let name = ident(next(&mut inner, span)?);
            let value = inner.next().map(expr).transpose()?;
            Stmt::Output { name, value, span }
        }
        Rule::return_stmt => Stmt::Return { value: expr(next(&mut inner, span)?)?, span },
        Rule::shared_stmt => {
            let name = ident(next(&mut inner, span)?);
            let call = call(next(&mut inner, span)?, false)?;
            Stmt::Shared { name, call, span }
        }
        Rule::anchors_stmt => {
            let name = ident(next(&mut inner, span)?);
            Stmt::Anchors { name, value: expr(next(&mut inner, span)?)?, span }
        }
        _ => {
            let name = ident(next(&mut inner, span)?);
            Stmt::Binding { name, value: expr(next(&mut inner, span)?)?, span }
        }
    })
}

fn const_decl(pair: Pair<Rule>) -> Result<Const> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    let name = ident(next(&mut inner, span)?);
    let shape = expr_like(next(&mut inner, span)?)?;
    let value = expr(next(&mut inner, span)?)?;
    Ok(Const { name, shape, value, span })
}

fn train_decl(pair: Pair<Rule>) -> Result<Train> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    let model = ident(next(&mut inner, span)?);
    let mut settings = Vec::new();
    for p in inner {
        let s = span_of(&p);
        match p.as_rule() {
            Rule::augment => {
                let steps = p.into_inner().map(|c| call(c, false)).collect::<Result<_>>()?;
                settings.push(Setting::Augment { steps, span: s });
            }
            Rule::preprocess => {
                let steps = p
                    .into_inner()
                    .map(|c| match c.as_rule() {
                        Rule::ident => {
                            let callee = ident(c);
                            let span = callee.span;
                            Ok(Call { callee, args: Vec::new(), frozen: false, bare: true, span })
                        }
                        _ => call(c, false),
                    })
                    .collect::<Result<_>>()?;
                settings.push(Setting::Preprocess { steps, span: s });
            }
            _ => {
                let mut kv = p.into_inner();
                let key = ident(next(&mut kv, s)?);
                let value = expr(next(&mut kv, s)?)?;
                settings.push(Setting::Value { key, value, span: s });
            }
        }
    }
    Ok(Train { model, settings, span })
}

/// A pair that the grammar promises exists; a missing one is reported, never unwrapped.
fn next<'a>(inner: &mut pest::iterators::Pairs<'a, Rule>, span: Span) -> Result<Pair<'a, Rule>> {
    inner
        .next()
        .ok_or(ParseError { kind: ParseErrorKind::Syntax { expected: vec!["more input".into()], found: None }, span })
}

fn expr(pair: Pair<Rule>) -> Result<Expr> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    let input = sum(next(&mut inner, span)?)?;
    let stages: Vec<Stage> = inner.map(stage).collect::<Result<_>>()?;
    if stages.is_empty() {
        return Ok(input);
    }
    Ok(Expr { kind: ExprKind::Pipe { input: Box::new(input), stages }, span })
}

fn stage(pair: Pair<Rule>) -> Result<Stage> {
    let span = span_of(&pair);
    let mut frozen = false;
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::frozen => frozen = true,
            Rule::repeat => {
                let rspan = span_of(&p);
                let mut inner = p.into_inner();
                let count = sum(next(&mut inner, rspan)?)?;
                let mut var = None;
                let mut stages = Vec::new();
                for q in inner {
                    match q.as_rule() {
                        Rule::ident => var = Some(ident(q)),
                        _ => stages.push(stage(q)?),
                    }
                }
                return Ok(Stage::Repeat { count, var, stages, frozen, span });
            }
            Rule::call => return Ok(Stage::Call(Call { span, ..call(p, frozen)? })),
            _ => {
                let callee = ident(p);
                return Ok(Stage::Call(Call { callee, args: Vec::new(), frozen, bare: true, span }));
            }
        }
    }
    Err(ParseError { kind: ParseErrorKind::Syntax { expected: vec!["a layer or block".into()], found: None }, span })
}

fn call(pair: Pair<Rule>, frozen: bool) -> Result<Call> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    let callee = ident(next(&mut inner, span)?);
    let mut args = Vec::new();
    for a in inner {
        let aspan = span_of(&a);
        let mut parts: Vec<Pair<Rule>> = a.into_inner().collect();
        let value = match parts.pop() {
            Some(v) => expr(v)?,
            None => continue,
        };
        let name = parts.pop().map(ident);
        args.push(Arg { name, value, span: aspan });
    }
    Ok(Call { callee, args, frozen, bare: false, span })
}

fn sum(pair: Pair<Rule>) -> Result<Expr> {
    binary_chain(pair, product)
}

fn product(pair: Pair<Rule>) -> Result<Expr> {
    binary_chain(pair, unary)
}

fn binary_chain(pair: Pair<Rule>, operand: fn(Pair<Rule>) -> Result<Expr>) -> Result<Expr> {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    let mut lhs = operand(next(&mut inner, span)?)?;
    let mut count = 0;
    while let Some(op) = inner.next() {
        count += 1;
        if count > MAX_CHAIN {
            return Err(ParseError { kind: ParseErrorKind::TooComplex { limit: MAX_CHAIN }, span: span_of(&op) });
        }
        let op = match op.as_str() {
            "+" => BinOp::Add,
            "-" => BinOp::Sub,
            "*" => BinOp::Mul,
            "/" => BinOp::Div,
            _ => BinOp::Rem,
        };
        let rhs = operand(next(&mut inner, span)?)?;
        let span = lhs.span.to(rhs.span);
        lhs = Expr { kind: ExprKind::Binary { op, lhs: Box::new(lhs), rhs: Box::new(rhs) }, span };
    }
    Ok(lhs)
}

fn unary(pair: Pair<Rule>) -> Result<Expr> {
    let span = span_of(&pair);
    let mut negs = Vec::new();
    let mut value = None;
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::neg => negs.push(span_of(&p)),
            _ => value = Some(atom(p)?),
        }
    }
    let mut e = value.ok_or(ParseError {
        kind: ParseErrorKind::Syntax { expected: vec!["an expression".into()], found: None },
        span,
    })?;
    if negs.len() > MAX_CHAIN {
        return Err(ParseError { kind: ParseErrorKind::TooComplex { limit: MAX_CHAIN }, span });
    }
    for n in negs.into_iter().rev() {
        let span = n.to(e.span);
        e = Expr { kind: ExprKind::Neg(Box::new(e)), span };
    }
    Ok(e)
}

/// An atom that the grammar allows in place of an expression (the shape of `input`, `const`).
fn expr_like(pair: Pair<Rule>) -> Result<Expr> {
    atom(pair)
}

fn atom(pair: Pair<Rule>) -> Result<Expr> {
    let span = span_of(&pair);
    let kind = match pair.as_rule() {
        Rule::int => ExprKind::Int(int(pair.as_str(), span)?),
        Rule::float => {
            let v: f64 = pair.as_str().parse().map_err(|_| bad_number(pair.as_str(), span))?;
            if !v.is_finite() {
                return Err(bad_number(pair.as_str(), span));
            }
            ExprKind::Float(v)
        }
        Rule::size => ExprKind::Size(pair.as_str().split('x').map(|d| int(d, span)).collect::<Result<_>>()?),
        Rule::string => ExprKind::Str(unescape(pair.into_inner().as_str())),
        Rule::boolean => ExprKind::Bool(pair.as_str() == "true"),
        Rule::list => ExprKind::List(pair.into_inner().map(expr).collect::<Result<_>>()?),
        Rule::paren => {
            let mut inner = pair.into_inner();
            return expr(next(&mut inner, span)?).map(|e| Expr { span, ..e });
        }
        Rule::call => ExprKind::Call(call(pair, false)?),
        Rule::frozen_call => {
            let mut inner = pair.into_inner();
            let _frozen = next(&mut inner, span)?;
            ExprKind::Call(Call { span, ..call(next(&mut inner, span)?, true)? })
        }
        Rule::expr => return expr(pair),
        _ => ExprKind::Name(ident(pair)),
    };
    Ok(Expr { kind, span })
}

fn int(text: &str, span: Span) -> Result<i64> {
    text.parse().map_err(|_| ParseError { kind: ParseErrorKind::IntTooLarge { text: text.to_string() }, span })
}

fn bad_number(text: &str, span: Span) -> ParseError {
    ParseError { kind: ParseErrorKind::BadNumber { text: text.to_string() }, span }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_pipeline_with_named_arguments() {
        let file =
            parse("model M { input x: [8, 8, 1]\n y = x |> conv(4, 3x3, pad: same) |> relu\n output y }").unwrap();
        let Item::Model(m) = &file.items[0] else { panic!("not a model") };
        assert_eq!(m.body.len(), 3);
        let Stmt::Binding { value, .. } = &m.body[1] else { panic!("not a binding") };
        let ExprKind::Pipe { stages, .. } = &value.kind else { panic!("not a pipe") };
        assert_eq!(stages.len(), 2);
        let Stage::Call(conv) = &stages[0] else { panic!("not a call") };
        assert_eq!(conv.args[1].value.kind, ExprKind::Size(vec![3, 3]));
        assert_eq!(conv.args[2].name.as_ref().unwrap().name, "pad");
    }

    #[test]
    fn arithmetic_binds_tighter_than_pipes() {
        let file = parse("block b(x, c: int) { return x |> conv(c * 2 + 1, 1) }").unwrap();
        let Item::Block(b) = &file.items[0] else { panic!() };
        assert_eq!(b.params[1].ty.as_ref().unwrap().name, "int");
    }

    #[test]
    fn reports_position_of_syntax_error() {
        let err = parse("model M { x = |> relu }").unwrap_err();
        assert_eq!(err.span.start, 14);
        assert!(matches!(err.kind, ParseErrorKind::Syntax { .. }));
    }

    #[test]
    fn refuses_deep_nesting_and_huge_ints() {
        let deep = format!("model M {{ x = {}1{} }}", "(".repeat(500), ")".repeat(500));
        assert!(matches!(parse(&deep).unwrap_err().kind, ParseErrorKind::TooDeep { .. }));
        let huge = parse("model M { x = 99999999999999999999999 }").unwrap_err();
        assert!(matches!(huge.kind, ParseErrorKind::IntTooLarge { .. }));
    }
}
