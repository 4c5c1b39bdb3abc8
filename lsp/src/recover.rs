//! Checking what can be checked of text that does not parse, as an editor sends it mid-edit. The
//! parser stops at the first error; here the statement (or, failing that, the top-level item)
//! holding each error is blanked out with spaces, so that every other byte keeps its offset, and
//! the rest is parsed again. Unclosed brackets at the end of the text are closed. Every syntax
//! error met on the way is kept, one per broken statement or item.

use cnnc_grammar::ast::Span;
use cnnc_grammar::lex::{lex, Token, TokenKind};
use cnnc_grammar::ParseError;

/// Most syntax errors recovered from in one text.
const MAX_ERRORS: usize = 32;

/// Text that parses, made from text that did not.
#[derive(Clone, Debug, PartialEq)]
pub struct Recovered {
    /// The text with broken parts blanked and brackets closed at the end: the same length or
    /// longer, every original byte that was kept at its offset.
    pub text: String,
    /// The syntax errors, in the order met; the first is the parser's on the original text.
    pub errors: Vec<ParseError>,
    /// The parts blanked out.
    pub removed: Vec<Span>,
    /// Names the removed statements would have defined.
    pub names: Vec<String>,
    /// The models and blocks (whole declarations) that lost a statement.
    pub damaged: Vec<Span>,
}

/// A top-level item or a statement of a body: the unit that is blanked.
#[derive(Clone, Copy, Debug)]
struct Unit {
    span: Span,
    /// The top-level item it belongs to.
    item: usize,
    /// A statement of a model or block body (else the item's header or closing brace).
    statement: bool,
    /// A statement that leaves a bracket open: surely broken.
    open: bool,
}

/// Makes `text` parse by removing what does not, or gives up (`None`) when the parser's error is
/// not a syntax error or too many parts are broken.
pub fn recover(text: &str) -> Option<Recovered> {
    let first = cnnc_grammar::parse(text).err()?;
    let tokens = lex(text);
    let items = items(text, &tokens);
    let units = units(text, &tokens, &items);
    let mut buf = text.as_bytes().to_vec();
    let mut out = Recovered { text: String::new(), errors: vec![], removed: vec![], names: vec![], damaged: vec![] };
    let mut blanked_items = vec![false; items.len()];
    let mut closed = false;
    let mut error = first;
    let mut last_at = None;
    loop {
        if !matches!(error.kind, cnnc_grammar::ParseErrorKind::Syntax { .. }) || out.errors.len() >= MAX_ERRORS {
            return None;
        }
        let at = error.span.start as usize;
        // Errors in the closing brackets added at the end are not the user's.
        let added = closed && at >= text.len();
        if !added && !out.errors.iter().any(|e| e.span == error.span) {
            out.errors.push(error);
        }
        if at >= text.len() && !closed {
            closed = true;
            close_brackets(&mut buf);
        } else {
            let repeated = last_at == Some(at);
            last_at = Some(at);
            let target = culprit(&units, at, &out.removed);
            let unit = target.map(|i| units[i])?;
            if unit.statement && !repeated && !blanked_items[unit.item] {
                blank(&mut buf, unit.span);
                out.removed.push(unit.span);
                out.names.extend(defined_name(text, &tokens, unit.span));
                out.damaged.push(items[unit.item]);
            } else if !blanked_items[unit.item] {
                blanked_items[unit.item] = true;
                blank(&mut buf, items[unit.item]);
                out.removed.push(items[unit.item]);
            } else {
                return None;
            }
        }
        let candidate = String::from_utf8(buf.clone()).ok()?;
        match cnnc_grammar::parse(&candidate) {
            Ok(_) => {
                out.text = candidate;
                out.damaged.retain(|d| !out.removed.contains(d));
                return Some(out);
            }
            Err(e) => error = e,
        }
    }
}

/// The unit to remove for an error at `at`: an earlier statement of the same item that leaves a
/// bracket open (the parser read on past it), else the unit containing `at`, or the one before
/// when the error is at the first token of a unit (the one before was left unfinished).
fn culprit(units: &[Unit], at: usize, removed: &[Span]) -> Option<usize> {
    let at = at as u32;
    let kept = |i: &usize| !removed.iter().any(|r| r.start <= units[*i].span.start && units[*i].span.end <= r.end);
    let i = units.partition_point(|u| u.span.start <= at).checked_sub(1)?;
    let item = units[i].item;
    if let Some(open) = (0..=i).rev().take_while(|&j| units[j].item == item).filter(kept).find(|&j| units[j].open) {
        return Some(open);
    }
    if units[i].span.start == at {
        if let Some(before) = (0..i).rev().find(kept) {
            return Some(before);
        }
    }
    Some(i).filter(kept).or_else(|| (0..i).rev().find(kept))
}

/// Spans of the top-level items: each starts at a `use`, `block`, `model` or `train` keyword
/// (which stand nowhere else), or at a `const` outside brackets, and runs to the next.
fn items(text: &str, tokens: &[Token]) -> Vec<Span> {
    let mut starts = Vec::new();
    let mut depth = 0usize;
    for t in tokens {
        match t.kind {
            TokenKind::Open => depth += 1,
            TokenKind::Close => depth = depth.saturating_sub(1),
            TokenKind::Ident => match t.text(text) {
                "use" | "block" | "model" | "train" => {
                    starts.push(t.span.start as usize);
                    depth = 0;
                }
                "const" if depth == 0 => starts.push(t.span.start as usize),
                _ => {}
            },
            _ => {}
        }
    }
    if starts.first() != Some(&0) {
        starts.insert(0, 0);
    }
    let ends = starts.iter().skip(1).copied().chain([text.len()]);
    starts.iter().zip(ends).map(|(&a, b)| Span::new(a, b)).collect()
}

/// Each item split into its header, its statements and its closing brace. A statement of a model
/// or block starts a line with a statement keyword or with `name =`.
fn units(text: &str, tokens: &[Token], items: &[Span]) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut first = 0;
    for (item, span) in items.iter().enumerate() {
        // Token indices of this item.
        while first < tokens.len() && tokens[first].span.start < span.start {
            first += 1;
        }
        let mut last = first;
        while last < tokens.len() && tokens[last].span.end <= span.end {
            last += 1;
        }
        let inside: Vec<usize> = (first..last).filter(|&i| tokens[i].is_significant()).collect();
        let has_body = inside.first().is_some_and(|&i| matches!(tokens[i].text(text), "model" | "block"));
        let mut marks = vec![(span.start as usize, false)];
        if has_body {
            for (k, &i) in inside.iter().enumerate() {
                let line_start = k > 0
                    && tokens[..i]
                        .iter()
                        .rev()
                        .take_while(|p| p.kind != TokenKind::Newline)
                        .all(|p| !p.is_significant());
                let t = tokens[i];
                let next = inside.get(k + 1).map(|&n| tokens[n].kind);
                let keyword = matches!(t.text(text), "input" | "output" | "return" | "shared" | "const" | "anchors");
                if line_start && t.kind == TokenKind::Ident && (keyword || next == Some(TokenKind::Equals)) {
                    marks.push((t.span.start as usize, true));
                }
            }
            let close =
                inside.iter().rev().find(|&&i| tokens[i].text(text) == "}").map(|&i| tokens[i].span.start as usize);
            if let Some(close) = close.filter(|&c| marks.last().is_some_and(|m| c > m.0)) {
                marks.push((close, false));
            }
        }
        let ends: Vec<usize> = marks.iter().skip(1).map(|m| m.0).chain([span.end as usize]).collect();
        for (&(a, statement), &b) in marks.iter().zip(&ends) {
            let span = Span::new(a, b);
            let open = statement && leaves_open(tokens, span);
            units.push(Unit { span, item, statement, open });
        }
        first = last;
    }
    units
}

/// Whether the tokens of `span` open more brackets than they close.
fn leaves_open(tokens: &[Token], span: Span) -> bool {
    let mut depth = 0i64;
    for t in tokens.iter().filter(|t| span.start <= t.span.start && t.span.end <= span.end) {
        match t.kind {
            TokenKind::Open => depth += 1,
            TokenKind::Close => depth -= 1,
            _ => {}
        }
    }
    depth > 0
}

/// The name a statement defines: `name = ...`, `input name`, `output name`, `shared name`,
/// `const name`, `anchors name`.
fn defined_name(text: &str, tokens: &[Token], span: Span) -> Option<String> {
    let mut sig = tokens.iter().filter(|t| t.is_significant() && span.start <= t.span.start && t.span.end <= span.end);
    let first = sig.next()?;
    let second = sig.next()?;
    match (first.text(text), second.kind) {
        ("input" | "output" | "shared" | "const" | "anchors", TokenKind::Ident) => Some(second.text(text).to_string()),
        (name, TokenKind::Equals) if first.kind == TokenKind::Ident => Some(name.to_string()),
        _ => None,
    }
}

/// Replaces a span's bytes with spaces, keeping line breaks (and so every line and column).
fn blank(buf: &mut [u8], span: Span) {
    let end = (span.end as usize).min(buf.len());
    for b in &mut buf[(span.start as usize).min(end)..end] {
        if *b != b'\n' && *b != b'\r' {
            *b = b' ';
        }
    }
}

/// Appends the closing brackets of those left open, innermost first.
fn close_brackets(buf: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(buf).into_owned();
    let mut open = Vec::new();
    for t in lex(&text) {
        match (t.kind, t.text(&text)) {
            (TokenKind::Open, o) => open.push(o.to_string()),
            (TokenKind::Close, _) => {
                open.pop();
            }
            _ => {}
        }
    }
    buf.push(b'\n');
    for o in open.iter().rev() {
        buf.extend_from_slice(match o.as_str() {
            "(" => b")",
            "[" => b"]",
            _ => b"}",
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_statement_is_removed_and_the_rest_kept() {
        let text = "model M {\n    input i: [8, 8, 1]\n    x = i |> conv(4,\n    y = i |> relu\n    output y\n}\n";
        let r = recover(text).unwrap();
        assert_eq!(r.text.len(), text.len());
        assert_eq!(r.names, ["x"]);
        assert!(r.text.contains("y = i |> relu"), "{}", r.text);
        assert!(!r.text.contains("conv"));
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.damaged.len(), 1);
    }

    #[test]
    fn an_unfinished_pipeline_before_the_next_statement_is_removed() {
        let text = "model M {\n    input i: [8]\n    x = i |>\n    output o = i |> relu\n}\n";
        let r = recover(text).unwrap();
        assert_eq!(r.names, ["x"]);
        assert!(r.text.contains("output o = i |> relu"));
    }

    #[test]
    fn text_cut_short_is_closed() {
        let text =
            "model A {\n    input i: [8]\n    output o = i\n}\nmodel B {\n    input j: [4]\n    output p = j |> dense(";
        let r = recover(text).unwrap();
        assert!(r.text.starts_with(text.split("model B").next().unwrap()));
        assert!(cnnc_grammar::parse(&r.text).is_ok());
    }

    #[test]
    fn a_broken_header_removes_its_item() {
        let text = "model {\n    input i: [8]\n}\nmodel B {\n    input j: [4]\n    output p = j\n}\n";
        let r = recover(text).unwrap();
        let file = cnnc_grammar::parse(&r.text).unwrap();
        assert_eq!(file.items.len(), 1);
        assert!(r.text.ends_with("model B {\n    input j: [4]\n    output p = j\n}\n"));
    }

    #[test]
    fn several_broken_items_give_several_errors() {
        let text =
            "model A {\n    x = = 1\n}\nblock b(x) { return x |> }\nmodel C {\n    input i: [2]\n    output o = i\n}\n";
        let r = recover(text).unwrap();
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        assert!(r.text.contains("output o = i"));
    }
}
