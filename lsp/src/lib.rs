//! cnnc's editor support: a language server over stdio (`cnnc lsp`) and the formatter command
//! (`cnnc fmt`). The server checks each open file on every change with the compiler, recovering
//! from syntax errors, and answers hover, inlay hints, definition, completion, symbols and
//! formatting from the compilation.

pub mod files;
pub mod position;
pub mod recover;
pub mod syntax;
