//! Half-typed and mangled text, as an editor sends it mid-edit: every prefix of every repository
//! file and random token edits of them go through the whole server side (analysis, diagnostics,
//! hover, definition, completion, inlay hints, symbols, formatting) without a panic, and a text
//! that does not parse always gets an error diagnostic.

use cnnc_grammar::lex::{lex, TokenKind};
use cnnc_lsp::document::Document;
use cnnc_lsp::files::StdFiles;
use cnnc_lsp::position::Encoding;
use cnnc_lsp::{completion, definition, diagnostics, formatting, hover, inlay, symbols};
use lsp_types::{DiagnosticSeverity, Position, Range};
use proptest::prelude::*;
use std::path::PathBuf;

fn repo_files() -> Vec<(String, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["stdlib", "examples", "tests/ui"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .expect("repository folder")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
            .collect();
        paths.sort();
        for p in paths {
            let text = String::from_utf8_lossy(&std::fs::read(&p).expect("readable")).into_owned();
            files.push((p.display().to_string(), text));
        }
    }
    files
}

/// Runs every feature on `text`; returns the diagnostics' severities.
fn exercise(text: &str) -> Vec<Option<DiagnosticSeverity>> {
    let std = StdFiles::default();
    let mut doc = Document::new("untitled:fuzz.cnn".parse().unwrap(), 1, text.to_string(), Encoding::Utf16);
    let lines = text.split('\n').count() as u32;
    let view = doc.view(&std);
    let diags = diagnostics::diagnostics(&view);
    symbols::symbols(&view);
    let all = Range { start: Position::new(0, 0), end: Position::new(lines, 0) };
    inlay::hints(&view, all);
    let mut positions: Vec<Position> = view
        .analysis
        .index
        .occurrences
        .iter()
        .step_by(3)
        .map(|o| view.lines.position(text, o.span.start as usize + 1))
        .collect();
    positions.extend([
        Position::new(0, 0),
        Position::new(lines, 0),
        Position::new(lines / 2, 7),
        Position::new(lines, 99),
    ]);
    for p in positions {
        hover::hover(&view, p);
        definition::definition(&view, p);
        completion::complete(&view, p);
    }
    if let Ok(edits) = formatting::edits(text, view.lines) {
        assert!(edits.len() <= 1);
    }
    diags.iter().map(|d| d.severity).collect()
}

fn assert_reported(text: &str, severities: &[Option<DiagnosticSeverity>]) {
    if cnnc_grammar::parse(text).is_err() {
        assert!(
            severities.contains(&Some(DiagnosticSeverity::ERROR)),
            "no error for text that does not parse:\n{text}"
        );
    }
}

#[test]
fn every_prefix_of_every_repository_file() {
    for (name, text) in repo_files() {
        let step = (text.len() / 40).max(1);
        for cut in (0..=text.len()).step_by(step).filter(|&c| text.is_char_boundary(c)) {
            let prefix = &text[..cut];
            let severities = exercise(prefix);
            assert_reported(prefix, &severities);
        }
        assert!(!name.is_empty());
    }
}

/// A repository file with some tokens deleted, duplicated or swapped with the next.
fn mangled() -> impl Strategy<Value = String> {
    let files = repo_files();
    let count = files.len();
    (0..count, proptest::collection::vec((any::<prop::sample::Index>(), 0..3u8), 1..6)).prop_map(move |(f, edits)| {
        let text = &files[f].1;
        let mut pieces: Vec<String> =
            lex(text).into_iter().filter(|t| t.kind != TokenKind::Space).map(|t| t.text(text).to_string()).collect();
        for (at, op) in edits {
            if pieces.is_empty() {
                break;
            }
            let i = at.index(pieces.len());
            match op {
                0 => {
                    pieces.remove(i);
                }
                1 => pieces.insert(i, pieces[i].clone()),
                _ if i + 1 < pieces.len() => pieces.swap(i, i + 1),
                _ => {}
            }
        }
        pieces.join(" ").replace(" \n ", "\n")
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn mangled_repository_files(text in mangled()) {
        let severities = exercise(&text);
        assert_reported(&text, &severities);
    }
}
