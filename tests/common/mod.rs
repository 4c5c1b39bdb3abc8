//! Helpers shared by the integration tests.
#![allow(dead_code)]

use cnnc_compiler::Compilation;
use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path relative to the root, with `/` separators, for stable snapshot text.
pub fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).to_string_lossy().replace('\\', "/")
}

/// Compiles a file, naming it by its path relative to the repository root.
pub fn compile(path: &Path) -> Compilation {
    let bytes = std::fs::read(path).expect("fixture exists");
    cnnc_compiler::compile_source(&relative(path), Some(path), &bytes)
}

/// Every diagnostic rendered without colour, then a line with the counts.
pub fn rendered(c: &Compilation) -> String {
    let diags = c.diagnostics();
    let mut out: String = diags.iter().map(|d| d.render(&c.program.sources, false)).collect();
    let errors = diags.iter().filter(|d| d.is_error()).count();
    out.push_str(&format!("{errors} error(s), {} warning(s)\n", diags.len() - errors));
    out
}

/// Every `.cnn` file of the stdlib, the examples and `tests/arith`, sorted.
pub fn model_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["stdlib", "examples", "tests/arith"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(root().join(d)).expect("the folder exists").map(|e| e.expect("an entry").path())
        })
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .collect();
    files.sort();
    files
}

/// The `cnnc` binary built for the tests.
pub fn cnnc() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cnnc"));
    cmd.current_dir(root());
    cmd
}
