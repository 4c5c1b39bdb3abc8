//! The compiler's diagnostics as LSP diagnostics: the primary label's range, the code, the
//! worked arithmetic, notes and help in the message, and every secondary label (where an
//! offending shape came from, the block instance it happened in) as related information, in
//! whichever file it is.

use crate::document::View;
use cnnc_compiler::diag::{self, Severity};
use cnnc_compiler::source::{FileId, Loc};
use cnnc_grammar::ast::{self, Span};
use lsp_types::{Diagnostic, DiagnosticRelatedInformation, DiagnosticSeverity, DiagnosticTag, NumberOrString};

/// The code of the unused-binding warning, shown faded.
const UNUSED: &str = "cnnc::resolve::unused_binding";

/// Every diagnostic of a document's analysis.
pub fn diagnostics(view: &View) -> Vec<Diagnostic> {
    view.analysis.diagnostics.iter().map(|d| convert(view, d)).collect()
}

fn convert(view: &View, d: &diag::Diagnostic) -> Diagnostic {
    let primary = d.labels.iter().find(|l| l.primary).or(d.labels.first());
    let primary_loc = primary.map(|l| l.loc).unwrap_or_default();
    let mut message = d.message.clone();
    if let Some(label) = primary.filter(|l| !l.message.is_empty() && l.message != d.message) {
        message.push('\n');
        message.push_str(&label.message);
    }
    for note in &d.notes {
        message.push_str("\nnote: ");
        message.push_str(note);
    }
    if let Some(help) = &d.help {
        message.push_str("\nhelp: ");
        message.push_str(help);
    }
    let mut related = Vec::new();
    let range = if primary_loc.file == FileId(0) {
        view.range(primary_loc.span)
    } else {
        // The culprit is in another file: show it here where that file comes in.
        let file = &view.analysis.compilation.program.sources.get(primary_loc.file).name;
        message = format!("in {file}: {message}");
        if let Some(location) = view.location(primary_loc) {
            related.push(DiagnosticRelatedInformation {
                location,
                message: primary.map_or_else(|| d.message.clone(), |l| l.message.clone()),
            });
        }
        let here = d.labels.iter().find(|l| l.loc.file == FileId(0)).map(|l| l.loc.span);
        view.range(here.or_else(|| entry_point(view, primary_loc)).unwrap_or_default())
    };
    for l in d.labels.iter().filter(|l| !l.primary) {
        if let Some(location) = view.location(l.loc) {
            related.push(DiagnosticRelatedInformation { location, message: l.message.clone() });
        }
    }
    Diagnostic {
        range,
        severity: Some(match d.severity {
            Severity::Error => DiagnosticSeverity::ERROR,
            Severity::Warning => DiagnosticSeverity::WARNING,
        }),
        code: Some(NumberOrString::String(d.code.to_string())),
        source: Some("cnnc".into()),
        message,
        related_information: (!related.is_empty()).then_some(related),
        tags: (d.code == UNUSED).then(|| vec![DiagnosticTag::UNNECESSARY]),
        ..Diagnostic::default()
    }
}

/// The `use` declaration of the document that loads the file of `loc`, or its first `use`.
fn entry_point(view: &View, loc: Loc) -> Option<Span> {
    let program = &view.analysis.compilation.program;
    let file = program.sources.get(loc.file);
    let entry = program.modules.first()?;
    let uses: Vec<&ast::Use> = entry
        .ast
        .items
        .iter()
        .filter_map(|i| match i {
            ast::Item::Use(u) => Some(u),
            _ => None,
        })
        .collect();
    let names = |u: &ast::Use| -> Vec<String> {
        let n = if u.glob { u.path.len() } else { u.path.len().saturating_sub(1) };
        u.path[..n].iter().map(|i| i.name.clone()).collect()
    };
    let matches = |u: &ast::Use| {
        let module = names(u);
        match file.path.as_ref() {
            None => file.name == format!("{}.cnn", module.join("/")),
            Some(p) => p.with_extension("").ends_with(module.join("/")),
        }
    };
    uses.iter().find(|u| matches(u)).or(uses.first()).map(|u| u.span)
}

#[cfg(test)]
mod tests {
    use crate::document::Document;
    use crate::files::StdFiles;
    use crate::position::Encoding;

    #[test]
    fn related_information_points_into_other_files_and_arithmetic_is_in_the_message() {
        let text = "use std.layers.conv_bn_relu\nmodel M {\n    input i: [4, 4, 3]\n    output o = i |> conv_bn_relu(8, 7)\n}\n";
        let mut doc = Document::new("untitled:a".parse().unwrap(), 1, text.into(), Encoding::Utf16);
        let std = StdFiles::default();
        let view = doc.view(&std);
        let diags = super::diagnostics(&view);
        assert_eq!(diags.len(), 1, "{diags:?}");
        let d = &diags[0];
        assert!(d.message.contains("(4 + 2·0 − 7)/1 + 1"), "{}", d.message);
        // Without a cache folder the standard module has no URI: the call site is the range.
        assert_eq!(d.range.start.line, 3);
    }
}
