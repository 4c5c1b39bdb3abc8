//! One check of a document: the compilation (of the text, or of what [`recover`] kept of it when
//! it does not parse), its diagnostics and the index of its names. Everything the server answers
//! comes from an [`Analysis`].

use crate::recover::{recover, Recovered};
use crate::syntax::Index;
use cnnc_compiler::diag::{Diagnostic, Severity};
use cnnc_compiler::error::{LoadError, Problem, ResolveError, Warning};
use cnnc_compiler::source::{FileId, Loc};
use cnnc_compiler::{compile_source, report, Compilation};
use cnnc_grammar::ast::Span;
use std::path::Path;

/// The code of the diagnostic for a verifier failure.
pub const INTERNAL: &str = "cnnc::internal";

/// A checked document.
#[derive(Debug)]
pub struct Analysis {
    /// The compilation; of the recovered text when the document does not parse.
    pub compilation: Compilation,
    /// Diagnostics, sorted: syntax errors of the document, then what the compiler found in the rest.
    pub diagnostics: Vec<Diagnostic>,
    /// The names of the entry file.
    pub index: Index,
    /// What was removed to make the text parse, if anything.
    pub recovered: Option<Recovered>,
}

impl Analysis {
    /// The entry file's id (always the first file).
    pub fn entry(&self) -> FileId {
        FileId(0)
    }
}

/// Checks `text` as a file called `name` at `path` (for relative `use`).
pub fn analyze(name: &str, path: Option<&Path>, text: &str) -> Analysis {
    let compilation = compile_source(name, path, text.as_bytes());
    let broken = compilation
        .problems
        .iter()
        .any(|p| matches!(p, Problem::Load(LoadError::Parse { loc, .. }) if loc.file == FileId(0)));
    if broken {
        if let Some(r) = recover(text) {
            let compilation = compile_source(name, path, r.text.as_bytes());
            let mut problems: Vec<Problem> = r
                .errors
                .iter()
                .map(|e| LoadError::Parse { loc: Loc { file: FileId(0), span: e.span }, kind: e.kind.clone() }.into())
                .collect();
            problems.extend(compilation.problems.iter().filter(|p| keep(p, &r)).cloned());
            let mut analysis = finish(compilation, &problems, Some(r));
            // What reaches into the brackets added at the end is about text the user did not type.
            analysis.diagnostics.retain(|d| {
                let at = d.primary();
                d.code.starts_with("cnnc::parse::") || at.file != FileId(0) || at.span.end as usize <= text.len()
            });
            return analysis;
        }
    }
    let problems = compilation.problems.clone();
    finish(compilation, &problems, None)
}

fn finish(compilation: Compilation, problems: &[Problem], recovered: Option<Recovered>) -> Analysis {
    let mut diagnostics: Vec<Diagnostic> = problems.iter().map(report::diagnostic).collect();
    diagnostics.sort_by_key(|d| (d.primary().file, d.primary().span.start, d.severity, d.code));
    diagnostics.dedup_by(|a, b| a.code == b.code && a.primary() == b.primary());
    let at = compilation.models.first().map(|m| m.loc).unwrap_or_default();
    for e in &compilation.internal {
        diagnostics.push(Diagnostic::new(
            INTERNAL,
            Severity::Error,
            format!("internal compiler error: {e}"),
            at,
            "this is a bug in cnnc: please report it",
        ));
    }
    let index = compilation.program.modules.first().map(|m| Index::new(&m.ast)).unwrap_or_default();
    Analysis { compilation, diagnostics, index, recovered }
}

/// Whether a problem of the recovered text is real rather than a consequence of the removal.
fn keep(p: &Problem, r: &Recovered) -> bool {
    let inner = match p {
        Problem::Within { problem, .. } => problem,
        p => p,
    };
    let in_damaged = |loc: &Loc| loc.file == FileId(0) && r.damaged.iter().any(|d| contains(*d, loc.span));
    match inner {
        Problem::Load(LoadError::Parse { loc, .. }) => loc.file != FileId(0),
        Problem::Resolve(ResolveError::UnknownName { name, .. }) => !r.names.contains(name),
        Problem::Resolve(ResolveError::IncompleteModel { loc, .. } | ResolveError::MissingReturn { loc, .. }) => {
            !in_damaged(loc)
        }
        Problem::Warning(Warning::UnusedBinding { loc, .. }) => !in_damaged(loc),
        _ => true,
    }
}

fn contains(outer: Span, inner: Span) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_half_typed_statement_still_checks_the_rest() {
        let text =
            "model A {\n    input i: [8, 8, 1]\n    x = i |> conv(4,\n    y = i |> maxpool(16)\n    output y\n}\n";
        let a = analyze("a.cnn", None, text);
        let codes: Vec<&str> = a.diagnostics.iter().map(|d| d.code).collect();
        assert_eq!(codes, ["cnnc::parse::syntax", "cnnc::shape::output_too_small"]);
        assert!(!a.compilation.models.is_empty());
    }

    #[test]
    fn nothing_is_reported_about_the_brackets_closed_at_the_end() {
        let text = "model A {\n    input i: [8]\n    output o = i |> dense(";
        let a = analyze("a.cnn", None, text);
        let codes: Vec<&str> = a.diagnostics.iter().map(|d| d.code).collect();
        assert_eq!(codes, ["cnnc::parse::syntax"]);
        assert_eq!(a.compilation.models.len(), 1);
    }

    #[test]
    fn a_clean_file_has_no_diagnostics() {
        let a = analyze("a.cnn", None, "model A {\n    input i: [4]\n    output o = i |> dense(2)\n}\n");
        assert!(a.diagnostics.is_empty(), "{:?}", a.diagnostics);
        assert!(a.recovered.is_none());
        assert_eq!(a.index.scopes.len(), 1);
    }
}
