//! UI tests: every `tests/ui/*.cnn` is a broken model; its rendered diagnostics are a snapshot,
//! its JSON form is checked against the same diagnostics, and together the files cover every
//! diagnostic code cnnc has.

mod common;

use std::collections::BTreeSet;

#[test]
fn rendered_diagnostics() {
    insta::glob!("ui/*.cnn", |path| {
        let c = common::compile(path);
        assert!(!c.diagnostics().is_empty(), "{} should produce a diagnostic", path.display());
        assert!(c.internal.is_empty(), "verifier failed on {}: {:?}", path.display(), c.internal);
        insta::assert_snapshot!(common::rendered(&c));
    });
}

#[test]
fn json_matches_the_rendered_diagnostics() {
    insta::glob!("ui/*.cnn", |path| {
        let c = common::compile(path);
        let diags = c.diagnostics();
        for d in &diags {
            let v = d.to_json(&c.program.sources);
            assert_eq!(v["code"], d.code);
            assert_eq!(v["file"], common::relative(path));
            assert!(matches!(v["severity"].as_str(), Some("error" | "warning")));
            let (start, end) = (v["byte_start"].as_u64().unwrap(), v["byte_end"].as_u64().unwrap());
            assert!(start <= end, "range in order");
            assert!(v["line_start"].as_u64().unwrap() >= 1 && v["column_start"].as_u64().unwrap() >= 1);
            let labels = v["labels"].as_array().unwrap();
            assert_eq!(labels.iter().filter(|l| l["primary"] == true).count(), 1);
            assert!(!v["message"].as_str().unwrap().is_empty());
        }
    });
}

#[test]
fn every_code_is_covered_by_a_ui_test() {
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(common::root().join("tests/ui")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cnn") {
            for d in common::compile(&path).diagnostics() {
                seen.insert(d.code);
            }
        }
    }
    let missing: Vec<&&str> = cnnc_compiler::report::CODES.iter().filter(|c| !seen.contains(**c)).collect();
    assert!(missing.is_empty(), "codes without a UI test: {missing:?}");
}

#[test]
fn every_code_in_the_reporter_is_listed() {
    let source = include_str!("../compiler/src/report.rs");
    let mut in_source = BTreeSet::new();
    for part in source.split('"').skip(1).step_by(2) {
        if part.starts_with("cnnc::") {
            in_source.insert(part);
        }
    }
    let listed: BTreeSet<&str> = cnnc_compiler::report::CODES.iter().copied().collect();
    assert_eq!(in_source, listed);
}
