//! cnnc's editor support: a language server over stdio (`cnnc lsp`) and the formatter command
//! (`cnnc fmt`). The server checks each open file on every change with the compiler, recovering
//! from syntax errors, and answers hover, inlay hints, definition, completion, symbols and
//! formatting from the compilation.

pub mod analysis;
pub mod completion;
pub mod definition;
pub mod diagnostics;
pub mod document;
pub mod facts;
pub mod files;
pub mod fmt;
pub mod formatting;
pub mod hover;
pub mod inlay;
pub mod position;
pub mod recover;
pub mod server;
pub mod symbols;
pub mod syntax;

pub use server::{run_stdio, serve};
pub mod transport;
