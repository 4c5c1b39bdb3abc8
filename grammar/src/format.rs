//! The formatter behind `cnnc fmt` and the language server's formatting: it rewrites the spaces
//! between [`lex`](crate::lex) tokens and never the tokens themselves, so comments survive and the
//! parse of its output equals the parse of its input. Line breaks stay where they are (blank lines
//! collapse to one); each line is indented four spaces per open bracket (brackets opened on one
//! line count once), and a line starting with `|>` one level beyond its statement. Formatting is
//! idempotent. Text that does not lex is refused.

use crate::ast::Span;
use crate::lex::{lex, Token, TokenKind, KEYWORDS};
use std::fmt;

/// Why a text cannot be formatted: it has something the lexer cannot read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError {
    /// The unreadable text.
    pub span: Span,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong, such as "unexpected character `@`".
    pub message: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for FormatError {}

const INDENT: &str = "    ";

/// Formats a whole file.
pub fn format(text: &str) -> Result<String, FormatError> {
    let tokens = lex(text);
    if let Some(bad) = tokens.iter().find(|t| t.kind == TokenKind::Unknown) {
        return Err(error(text, *bad));
    }
    let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let lines = split_lines(&tokens);
    // For each line, the first code token on a later line: a comment-only line is indented as
    // the code it precedes when that code continues a pipeline.
    let mut next_code = vec![None; lines.len()];
    for i in (0..lines.len().saturating_sub(1)).rev() {
        next_code[i] = lines[i + 1].iter().find(|t| !is_comment(t)).copied().or(next_code[i + 1]);
    }
    let unary = unary_operators(text, &tokens);
    let mut printer = Printer { text, newline, unary, out: String::new(), stack: Vec::new(), statements: Vec::new() };
    let mut blank = false;
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() {
            blank = !printer.out.is_empty();
            continue;
        }
        if blank {
            printer.out.push_str(newline);
            blank = false;
        }
        printer.line(line, next_code[i]);
    }
    Ok(printer.out)
}

fn error(text: &str, bad: Token) -> FormatError {
    let start = bad.span.start as usize;
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let found = bad.text(text);
    let message = if found.starts_with('"') {
        "unterminated string".to_string()
    } else if found.starts_with("/*") {
        "unterminated block comment".to_string()
    } else {
        format!("unexpected character `{found}`")
    };
    FormatError { span: bad.span, line, column, message }
}

/// The tokens of each line, spaces left out.
fn split_lines(tokens: &[Token]) -> Vec<Vec<Token>> {
    let mut lines = vec![Vec::new()];
    for t in tokens {
        match t.kind {
            TokenKind::Newline => lines.push(Vec::new()),
            TokenKind::Space => {}
            _ => {
                if let Some(line) = lines.last_mut() {
                    line.push(*t);
                }
            }
        }
    }
    lines
}

fn is_comment(t: &Token) -> bool {
    matches!(t.kind, TokenKind::LineComment | TokenKind::BlockComment)
}

/// Start offsets of the `-` (and `+`) tokens that are signs rather than binary operators.
fn unary_operators(text: &str, tokens: &[Token]) -> Vec<u32> {
    let mut unary = Vec::new();
    let mut prev: Option<Token> = None;
    for t in tokens.iter().filter(|t| t.is_significant()) {
        if t.kind == TokenKind::Operator && matches!(t.text(text), "-" | "+") {
            let sign = match prev {
                None => true,
                Some(p) => match p.kind {
                    TokenKind::Ident => KEYWORDS.contains(&p.text(text)),
                    TokenKind::Number | TokenKind::Str => false,
                    TokenKind::Close => false,
                    _ => true,
                },
            };
            if sign {
                unary.push(t.span.start);
            }
        }
        prev = Some(*t);
    }
    unary
}

struct Printer<'t> {
    text: &'t str,
    newline: &'static str,
    unary: Vec<u32>,
    out: String,
    /// Open brackets: the indentation level of the lines inside each.
    stack: Vec<usize>,
    /// Per bracket depth, the level of the last line that started a statement there.
    statements: Vec<usize>,
}

impl Printer<'_> {
    fn line(&mut self, line: &[Token], next_code: Option<Token>) {
        let Some(&first) = line.first() else { return };
        let depth = self.stack.len();
        let inner = self.stack.last().copied().unwrap_or(0);
        let lead = if is_comment(&first) && line.iter().all(is_comment) { next_code.unwrap_or(first) } else { first };
        let level = match lead.kind {
            TokenKind::Close if !is_comment(&first) => inner.saturating_sub(1),
            TokenKind::Pipe => self.statements.get(depth).copied().unwrap_or(inner.saturating_sub(1)) + 1,
            _ => inner,
        };
        if lead.kind != TokenKind::Pipe && !is_comment(&first) {
            self.statements.truncate(depth);
            self.statements.resize(depth, inner);
            self.statements.push(level);
        }
        let line_start = self.out.len();
        for _ in 0..level {
            self.out.push_str(INDENT);
        }
        let mut prev: Option<Token> = None;
        for &t in line {
            if let Some(p) = prev {
                if t.kind == TokenKind::LineComment {
                    let column = self.out[line_start..].rsplit('\n').next().map_or(0, |l| l.chars().count());
                    let wanted = self.original_column(t);
                    let pad = if wanted > column { wanted - column } else { 1 };
                    self.out.extend(std::iter::repeat_n(' ', pad));
                } else if self.space_between(p, t) {
                    self.out.push(' ');
                }
            }
            self.push_token(t);
            match t.kind {
                TokenKind::Open => self.stack.push(level + 1),
                TokenKind::Close => {
                    self.stack.pop();
                }
                _ => {}
            }
            prev = Some(t);
        }
        self.out.push_str(self.newline);
    }

    /// The column (in characters, 0-based) where a token stood in the input.
    fn original_column(&self, t: Token) -> usize {
        let before = &self.text[..t.span.start as usize];
        before.rsplit('\n').next().map_or(0, |l| l.chars().count())
    }

    fn push_token(&mut self, t: Token) {
        let text = t.text(self.text);
        if t.kind == TokenKind::BlockComment && text.contains('\n') {
            let lines: Vec<&str> = text.split('\n').map(str::trim_end).collect();
            self.out.push_str(&lines.join(self.newline));
        } else {
            self.out.push_str(text);
        }
    }

    fn is_unary(&self, t: Token) -> bool {
        t.kind == TokenKind::Operator && self.unary.binary_search(&t.span.start).is_ok()
    }

    fn space_between(&self, p: Token, n: Token) -> bool {
        use TokenKind::*;
        let (pt, nt) = (p.text(self.text), n.text(self.text));
        if is_comment(&p) || is_comment(&n) {
            return true;
        }
        match (p.kind, n.kind) {
            (_, Comma | Colon) => false,
            (Open, Close) => pt == "{" && nt != "}",
            (_, Close) => nt == "}",
            (Open, _) => pt == "{",
            (Dot, _) | (_, Dot) => false,
            _ if self.is_unary(p) => false,
            (Ident, Open) if nt == "(" => KEYWORDS.contains(&pt),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(text: &str) -> String {
        format(text).unwrap()
    }

    #[test]
    fn spaces_operators_commas_and_brackets() {
        assert_eq!(
            fmt("model M{\ninput x:[8,8 ,1]\ny=x|>conv( 4,3x3,pad:same )|>relu\nz = -y\noutput o=( y+z )*2\n}"),
            "model M {\n    input x: [8, 8, 1]\n    y = x |> conv(4, 3x3, pad: same) |> relu\n    z = -y\n    output o = (y + z) * 2\n}\n"
        );
    }

    #[test]
    fn indents_pipelines_one_level_beyond_their_statement() {
        let text = "model M {\n  input i: [4, 1]\n  x = i\n  |> relu  // first\n      |> tanh\n  output x\n}\n";
        assert_eq!(
            fmt(text),
            "model M {\n    input i: [4, 1]\n    x = i\n        |> relu // first\n        |> tanh\n    output x\n}\n"
        );
    }

    #[test]
    fn keeps_comments_blank_lines_and_nested_lists() {
        let text = "// head\n\n\n\nconst k: [2, 2] = [\n[1, -1],   /* a */\n  [0, 2],\n]   \nuse std.layers.*";
        assert_eq!(
            fmt(text),
            "// head\n\nconst k: [2, 2] = [\n    [1, -1], /* a */\n    [0, 2],\n]\nuse std.layers.*\n"
        );
    }

    #[test]
    fn brackets_opened_on_one_line_indent_once() {
        let text = "model M {\nx = concat([\na,\nb])\n}";
        assert_eq!(fmt(text), "model M {\n    x = concat([\n        a,\n        b])\n}\n");
    }

    #[test]
    fn refuses_what_it_cannot_lex() {
        let e = format("model M {\n  x = @\n}").unwrap_err();
        assert_eq!((e.line, e.column), (2, 7));
        assert_eq!(e.message, "unexpected character `@`");
        assert_eq!(format("x = \"open\n").unwrap_err().message, "unterminated string");
        assert_eq!(format("/* open").unwrap_err().message, "unterminated block comment");
    }

    #[test]
    fn is_idempotent_on_odd_input() {
        for text in
            ["", "\n\n", "}}} ((", "a\r\nb // c\r\n", "x = [\n/* a\n  b */ 1,\n]\n", "  |> f\n", "x =\r1 \r\r\n"]
        {
            let once = fmt(text);
            assert_eq!(fmt(&once), once, "{text:?}");
        }
    }
}
