//! A lexer over `.cnn` text that keeps what the parser skips: comments and line breaks. The
//! formatter works on its tokens so that comments survive, and editors use it to read half-typed
//! text that does not parse. It never fails: what it cannot read becomes a [`TokenKind::Unknown`]
//! token, and joining every token's text gives back the input.

use crate::ast::Span;

/// What a token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A name or keyword: `conv`, `model`, `_x1`.
    Ident,
    /// A number or size: `64`, `0.5`, `1e-5`, `3x3` (digits and the letters that follow them).
    Number,
    /// A string literal with its quotes.
    Str,
    /// `// ...` up to the end of the line (the line break excluded).
    LineComment,
    /// `/* ... */`, possibly over several lines.
    BlockComment,
    /// One line break (`\n`, with a `\r` before it if there is one).
    Newline,
    /// Spaces and tabs.
    Space,
    /// `(`, `[` or `{`.
    Open,
    /// `)`, `]` or `}`.
    Close,
    /// `|>`
    Pipe,
    /// `=`
    Equals,
    /// `,`
    Comma,
    /// `:`
    Colon,
    /// `.`
    Dot,
    /// `+`, `-`, `*`, `/` or `%`.
    Operator,
    /// A character the language does not use, an unterminated string or block comment.
    Unknown,
}

/// One token: its kind and where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// What it is.
    pub kind: TokenKind,
    /// The bytes it covers.
    pub span: Span,
}

impl Token {
    /// The token's text in `source`.
    pub fn text(self, source: &str) -> &str {
        source.get(self.span.start as usize..self.span.end as usize).unwrap_or("")
    }

    /// Whether the token means something to the parser (not space, line break or comment).
    pub fn is_significant(self) -> bool {
        !matches!(self.kind, TokenKind::Space | TokenKind::Newline | TokenKind::LineComment | TokenKind::BlockComment)
    }
}

/// The language's keywords: they cannot name bindings, blocks or models.
pub const KEYWORDS: &[&str] = &[
    "use", "block", "model", "train", "input", "output", "return", "shared", "const", "anchors", "repeat", "frozen",
    "as", "true", "false",
];

/// Splits `text` into tokens, covering every byte.
pub fn lex(text: &str) -> Vec<Token> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let kind = match bytes[i] {
            b'\n' => {
                i += 1;
                TokenKind::Newline
            }
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                i += 2;
                TokenKind::Newline
            }
            b' ' | b'\t' | b'\r' => {
                // A carriage return not before a line feed is a space, as the parser takes it.
                while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\r') {
                    if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                        break;
                    }
                    i += 1;
                }
                TokenKind::Space
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i = skip_while(bytes, i, |b| b != b'\n');
                if i > start && bytes[i - 1] == b'\r' && i < bytes.len() {
                    i -= 1;
                }
                TokenKind::LineComment
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => match text[i + 2..].find("*/") {
                Some(end) => {
                    i += 2 + end + 2;
                    TokenKind::BlockComment
                }
                None => {
                    i = bytes.len();
                    TokenKind::Unknown
                }
            },
            b'"' => string(bytes, &mut i),
            b'|' if bytes.get(i + 1) == Some(&b'>') => {
                i += 2;
                TokenKind::Pipe
            }
            b'(' | b'[' | b'{' => single(&mut i, TokenKind::Open),
            b')' | b']' | b'}' => single(&mut i, TokenKind::Close),
            b'=' => single(&mut i, TokenKind::Equals),
            b',' => single(&mut i, TokenKind::Comma),
            b':' => single(&mut i, TokenKind::Colon),
            b'.' => single(&mut i, TokenKind::Dot),
            b'+' | b'-' | b'*' | b'/' | b'%' => single(&mut i, TokenKind::Operator),
            b if b.is_ascii_alphabetic() || b == b'_' => {
                i = skip_while(bytes, i, is_ident_byte);
                TokenKind::Ident
            }
            b if b.is_ascii_digit() => {
                number(bytes, &mut i);
                TokenKind::Number
            }
            _ => {
                // One whole character, so that spans stay on character boundaries.
                i += text[i..].chars().next().map_or(1, char::len_utf8);
                TokenKind::Unknown
            }
        };
        tokens.push(Token { kind, span: Span::new(start, i) });
    }
    tokens
}

fn single(i: &mut usize, kind: TokenKind) -> TokenKind {
    *i += 1;
    kind
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn skip_while(bytes: &[u8], mut i: usize, keep: impl Fn(u8) -> bool) -> usize {
    while i < bytes.len() && keep(bytes[i]) {
        i += 1;
    }
    i
}

/// A string literal: escapes take the next byte (a line break included); a bare line break or the
/// end of the text before the closing quote leaves it unterminated.
fn string(bytes: &[u8], i: &mut usize) -> TokenKind {
    *i += 1;
    while *i < bytes.len() {
        match bytes[*i] {
            b'"' => {
                *i += 1;
                return TokenKind::Str;
            }
            b'\n' => return TokenKind::Unknown,
            b'\\' if *i + 1 < bytes.len() => {
                // Skip a whole character after the backslash.
                *i += 1;
                *i += utf8_len(bytes[*i]);
            }
            b => *i += utf8_len(b),
        }
    }
    *i = (*i).min(bytes.len());
    TokenKind::Unknown
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Digits, an optional fraction and exponent, then any letters and digits glued to them (`3x3`).
fn number(bytes: &[u8], i: &mut usize) {
    *i = skip_while(bytes, *i, |b| b.is_ascii_digit());
    if bytes.get(*i) == Some(&b'.') && bytes.get(*i + 1).is_some_and(u8::is_ascii_digit) {
        *i = skip_while(bytes, *i + 1, |b| b.is_ascii_digit());
    }
    if matches!(bytes.get(*i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(*i + 1), Some(b'+' | b'-')));
        if bytes.get(*i + 1 + sign).is_some_and(u8::is_ascii_digit) {
            *i = skip_while(bytes, *i + 1 + sign, |b| b.is_ascii_digit());
        }
    }
    *i = skip_while(bytes, *i, is_ident_byte);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(TokenKind, &str)> {
        lex(text).into_iter().filter(|t| t.kind != TokenKind::Space).map(|t| (t.kind, t.text(text))).collect()
    }

    #[test]
    fn tokens_cover_the_text() {
        for text in
            ["x = a |> conv(6, 5x5) // c\r\n/* é */ \"s\\\"t\" 1e-5 2.5", "@#é\"open", "/* open", "a\r", "a \r\r\nb"]
        {
            let joined: String = lex(text).iter().map(|t| t.text(text)).collect();
            assert_eq!(joined, text);
        }
    }

    #[test]
    fn numbers_sizes_pipes_and_comments() {
        use TokenKind::*;
        assert_eq!(
            kinds("x = 3x3 |> f(1e-5, -2.5) // done\n"),
            vec![
                (Ident, "x"),
                (Equals, "="),
                (Number, "3x3"),
                (Pipe, "|>"),
                (Ident, "f"),
                (Open, "("),
                (Number, "1e-5"),
                (Comma, ","),
                (Operator, "-"),
                (Number, "2.5"),
                (Close, ")"),
                (LineComment, "// done"),
                (Newline, "\n"),
            ]
        );
    }

    #[test]
    fn unreadable_text_becomes_unknown_tokens() {
        let text = "a @ \"open\nb /* open";
        let unknown: Vec<&str> =
            lex(text).into_iter().filter(|t| t.kind == TokenKind::Unknown).map(|t| t.text(text)).collect();
        assert_eq!(unknown, ["@", "\"open", "/* open"]);
    }
}
