//! The `.cnn` language: a pest grammar (`cnn.pest`), the syntax tree ([`ast`]) and its parser,
//! and the text-level tools that keep comments: a lexer ([`lex`]) and the formatter ([`format`]).

pub mod ast;
pub mod format;
pub mod lex;
mod parser;

pub use parser::{parse, ParseError, ParseErrorKind, MAX_CHAIN, MAX_NESTING};
