//! cnnc's compiler: loads `.cnn` files, resolves and elaborates models into a graph IR, checks
//! every shape, checks `train` sections, and reports problems as diagnostics.
//!
//! ```text
//! .cnn text ─parse─▶ AST ─load─▶ modules ─elaborate─▶ IR graph (shapes inferred) ─verify─▶ typed IR
//! ```

pub mod diag;
pub mod elaborate;
pub mod error;
pub mod frozen;
pub mod ir;
pub mod lir;
pub mod load;
pub mod ops;
pub mod params;
pub mod passes;
pub mod report;
pub mod shape;
pub mod source;
pub mod stdlib;
pub mod summary;
pub mod train;

use diag::Diagnostic;
use elaborate::ModelInfo;
use error::Problem;
use ir::VerifyError;
use std::path::Path;
use train::TrainSpec;

/// Everything one compilation produced.
#[derive(Debug)]
pub struct Compilation {
    /// Files and modules read.
    pub program: load::Program,
    /// Problems found, in the order found.
    pub problems: Vec<Problem>,
    /// The entry file's models.
    pub models: Vec<ModelInfo>,
    /// The entry file's train sections.
    pub trains: Vec<TrainSpec>,
    /// Verifier failures: bugs in cnnc, not in the file.
    pub internal: Vec<VerifyError>,
}

impl Compilation {
    /// Diagnostics sorted by file and position, duplicates (a block instantiated twice) removed.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut diags: Vec<Diagnostic> = self.problems.iter().map(report::diagnostic).collect();
        diags.sort_by_key(|d| (d.primary().file, d.primary().span.start, d.severity, d.code));
        // A block instantiated several times reports a problem in its body once.
        diags.dedup_by(|a, b| a.code == b.code && a.primary() == b.primary());
        diags
    }

    /// Whether any error (not warning) was found.
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| !p.is_warning())
    }

    /// The model called `name`, or the only model when `name` is `None` and there is one.
    pub fn model(&self, name: Option<&str>) -> Option<&ModelInfo> {
        match name {
            Some(n) => self.models.iter().find(|m| m.name == n),
            None => self.models.last(),
        }
    }
}

/// Compiles the file at `path`. Fails only if the file cannot be read.
pub fn compile_file(path: &Path) -> std::io::Result<Compilation> {
    let bytes = std::fs::read(path)?;
    Ok(compile_source(&path.display().to_string(), Some(path), &bytes))
}

/// Compiles `bytes` as a file called `name` (at `path`, for relative `use`).
pub fn compile_source(name: &str, path: Option<&Path>, bytes: &[u8]) -> Compilation {
    let mut problems = Vec::new();
    let program = load::load(name, path, bytes, &mut problems);
    let models = elaborate::elaborate(&program, &mut problems);
    let trains = match program.modules.first() {
        Some(entry) => train::check(entry.file, &entry.ast, &models, &mut problems),
        None => Vec::new(),
    };
    let internal = models.iter().filter(|m| !m.failed).filter_map(|m| ir::verify(&m.graph).err()).collect();
    Compilation { program, problems, models, trains, internal }
}
