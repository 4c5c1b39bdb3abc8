//! The formatter on every `.cnn` file of the repository: it keeps the token sequence and the
//! parse (up to spans), and formatting twice changes nothing; the same holds, as a property, for
//! those files with their spacing scrambled.

use cnnc_grammar::format::format;
use cnnc_grammar::lex::{lex, TokenKind};
use proptest::prelude::*;
use std::path::PathBuf;

/// Every `.cnn` file under `stdlib/`, `examples/` and `tests/ui/` that is UTF-8, with its name.
fn repo_files() -> Vec<(String, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["stdlib", "examples", "tests/ui"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .expect("repository folder")
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
            .collect();
        paths.sort();
        for p in paths {
            if let Ok(text) = String::from_utf8(std::fs::read(&p).expect("readable fixture")) {
                files.push((format!("{dir}/{}", p.file_name().unwrap_or_default().to_string_lossy()), text));
            }
        }
    }
    files
}

/// The tokens the parser sees and the comments, as text.
fn tokens(text: &str) -> Vec<(TokenKind, String)> {
    lex(text)
        .into_iter()
        .filter(|t| !matches!(t.kind, TokenKind::Space | TokenKind::Newline))
        .map(|t| {
            let s = t.text(text);
            // Formatting trims the ends of a block comment's inner lines and nothing else in one.
            let s = if t.kind == TokenKind::BlockComment {
                s.split('\n').map(str::trim_end).collect::<Vec<_>>().join("\n")
            } else {
                s.to_string()
            };
            (t.kind, s)
        })
        .collect()
}

/// The parse as text with every span removed, or the error kind.
fn parse_without_spans(text: &str) -> Result<String, String> {
    match cnnc_grammar::parse(text) {
        Ok(file) => Ok(strip_spans(&format!("{file:?}"))),
        Err(e) => Err(format!("{:?}", e.kind)),
    }
}

fn strip_spans(debug: &str) -> String {
    let mut out = String::with_capacity(debug.len());
    let mut rest = debug;
    while let Some(i) = rest.find("Span { start: ") {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let end = after.find('}').map_or(after.len(), |e| e + 1);
        out.push_str("Span");
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// What formatting must preserve, checked for one text.
fn check_preserves(name: &str, text: &str) -> Result<String, TestCaseError> {
    let formatted = format(text).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
    prop_assert_eq!(tokens(text), tokens(&formatted), "{}: tokens changed", name);
    prop_assert_eq!(parse_without_spans(text), parse_without_spans(&formatted), "{}: parse changed", name);
    prop_assert_eq!(format(&formatted).ok(), Some(formatted.clone()), "{}: not idempotent", name);
    prop_assert!(formatted.is_empty() || formatted.ends_with('\n'), "{}: no final newline", name);
    prop_assert!(formatted.lines().all(|l| l == l.trim_end()), "{}: trailing whitespace", name);
    prop_assert!(!formatted.contains("\n\n\n"), "{}: two blank lines in a row", name);
    Ok(formatted)
}

#[test]
fn every_repository_file_keeps_its_tokens_and_parse() {
    let files = repo_files();
    let mut formatted = 0;
    let mut parsed = 0;
    for (name, text) in &files {
        if lex(text).iter().any(|t| t.kind == TokenKind::Unknown) {
            assert!(format(text).is_err(), "{name}: formatted text that does not lex");
            continue;
        }
        check_preserves(name, text).unwrap_or_else(|e| panic!("{e}"));
        formatted += 1;
        parsed += usize::from(cnnc_grammar::parse(text).is_ok());
    }
    assert!(formatted >= 60, "only {formatted} of {} files formatted", files.len());
    assert!(parsed >= 55, "only {parsed} formatted files parse");
}

#[test]
fn formats_lenet_as_documented() {
    let text = "model LeNet5 {\n  input image: [32,32,1]\n  x = image\n      |> conv(6, 5x5)    // 6 filters\n      |> tanh\n  output logits=x\n}\n";
    // The comment keeps its column.
    let expected = "model LeNet5 {\n    input image: [32, 32, 1]\n    x = image\n        |> conv(6, 5x5)  // 6 filters\n        |> tanh\n    output logits = x\n}\n";
    assert_eq!(format(text).unwrap(), expected);
}

/// A repository file that lexes, with the spaces between some of its tokens replaced (never
/// removed between two words, which would glue them into one).
fn scrambled() -> impl Strategy<Value = (String, String)> {
    let files: Vec<(String, String)> =
        repo_files().into_iter().filter(|(_, t)| !lex(t).iter().any(|t| t.kind == TokenKind::Unknown)).collect();
    let count = files.len();
    (0..count, proptest::collection::vec((any::<prop::sample::Index>(), 0..5usize), 1..40)).prop_map(
        move |(file, edits)| {
            let (name, text) = &files[file];
            let toks = lex(text);
            let mut pieces: Vec<String> = toks.iter().map(|t| t.text(text).to_string()).collect();
            let word = |i: Option<usize>| {
                i.and_then(|i| toks.get(i)).is_some_and(|t| matches!(t.kind, TokenKind::Ident | TokenKind::Number))
            };
            for (at, choice) in edits {
                let i = at.index(toks.len().max(1));
                if toks.get(i).is_none_or(|t| t.kind != TokenKind::Space) {
                    continue;
                }
                let glue = word(i.checked_sub(1)) && word(Some(i + 1));
                let choice = if glue && choice == 0 { 1 } else { choice };
                pieces[i] = ["", " ", "\t", "      ", " \n  "][choice].to_string();
            }
            (name.clone(), pieces.concat())
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn scrambled_spacing_formats_to_a_fixed_point((name, text) in scrambled()) {
        check_preserves(&name, &text)?;
    }
}
