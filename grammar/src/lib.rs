//! The `.cnn` language: a pest grammar (`cnn.pest`), the syntax tree ([`ast`]) and its parser.

pub mod ast;
mod parser;

pub use parser::{parse, ParseError, ParseErrorKind, MAX_CHAIN, MAX_NESTING};
