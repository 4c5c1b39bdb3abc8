//! The parser and checker never panic or hang: random text, mutated model files (truncations,
//! swapped and duplicated tokens, huge numbers, deep nesting, invalid bytes) all end in success
//! or diagnostics.

mod common;

use proptest::prelude::*;

fn seeds() -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    for dir in ["examples", "stdlib", "tests/ui"] {
        let mut paths: Vec<_> =
            std::fs::read_dir(common::root().join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_some_and(|e| e == "cnn") {
                files.push(std::fs::read(&p).unwrap());
            }
        }
    }
    files
}

/// Compiles without panicking; diagnostics, if any, render and serialize.
fn survives(bytes: &[u8]) {
    let c = cnnc_compiler::compile_source("fuzz.cnn", None, bytes);
    for d in c.diagnostics() {
        let _ = d.render(&c.program.sources, false);
        let _ = d.to_json(&c.program.sources);
    }
    assert!(c.internal.is_empty(), "verifier failed: {:?}", c.internal);
    for m in &c.models {
        let _ = m.graph.to_text();
        let _ = cnnc_compiler::summary::Summary::of(&m.graph).to_text();
    }
}

const TOKENS: &[&str] = &[
    "|>",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "=",
    "+",
    "*",
    "/",
    "-",
    "x",
    "3x3",
    "0",
    "99999999999999999999",
    "1e400",
    "conv",
    "relu",
    "model",
    "block",
    "repeat",
    "frozen",
    "shared",
    "use std.resnet.*",
    "\"",
    "//",
    "\u{0}",
    "é",
    "\n",
];

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Delete(usize, usize),
    Insert(usize, usize),
    Swap(usize, usize),
    Byte(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..20).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(a, t)| Mutation::Insert(a, t)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Byte(a, b)),
    ]
}

fn apply(mut text: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let len = text.len().max(1);
    match *m {
        Mutation::Truncate(a) => text.truncate(a % len),
        Mutation::Delete(a, n) => {
            let a = a % len;
            let b = (a + n).min(text.len());
            if a < b {
                text.drain(a..b);
            }
        }
        Mutation::Insert(a, t) => {
            let a = a % (text.len() + 1);
            text.splice(a..a, TOKENS[t].bytes());
        }
        Mutation::Swap(a, b) => {
            if !text.is_empty() {
                let (a, b) = (a % text.len(), b % text.len());
                text.swap(a, b);
            }
        }
        Mutation::Byte(a, v) => {
            if !text.is_empty() {
                let a = a % text.len();
                text[a] = v;
            }
        }
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn mutated_model_files_never_panic(seed in any::<prop::sample::Index>(), muts in prop::collection::vec(mutation(), 1..6)) {
        let seeds = seeds();
        let mut text = seed.get(&seeds).clone();
        for m in &muts {
            text = apply(text, m);
        }
        survives(&text);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        survives(&bytes);
    }

    #[test]
    fn random_token_soup_never_panics(tokens in prop::collection::vec(0..TOKENS.len(), 0..80)) {
        let text: String = tokens.iter().map(|&t| TOKENS[t]).collect::<Vec<_>>().join(" ");
        survives(text.as_bytes());
    }
}

#[test]
fn deep_nesting_and_long_chains_are_diagnostics() {
    for depth in [63, 64, 65, 10_000] {
        let text =
            format!("model M {{ input x: [4] output y = x |> dense({}1{}) }}", "(".repeat(depth), ")".repeat(depth));
        survives(text.as_bytes());
    }
    let blocks = "block b(x) { return x |> b }\n".repeat(3) + "model M { input x: [4] output y = x |> b }";
    survives(blocks.as_bytes());
    let chain = format!("model M {{ input x: [4] output y = x |> dense({}) }}", vec!["1"; 5000].join("+"));
    survives(chain.as_bytes());
    let negs = format!("model M {{ input x: [4] output y = x |> dense({}1) }}", "-".repeat(5000));
    survives(negs.as_bytes());
    let pipes = format!("model M {{ input x: [4] output y = x {} }}", "|> relu ".repeat(20_000));
    survives(pipes.as_bytes());
}

#[test]
fn huge_numbers_are_diagnostics() {
    for text in [
        "model M { input x: [4611686018427387904, 4611686018427387904, 3] output y = x }",
        "model M { input x: [8, 8, 3] output y = x |> conv(9223372036854775807, 3) }",
        "model M { input x: [8, 8, 3] output y = x |> conv(4, 9223372036854775807) }",
        "model M { input x: [8, 8, 3] output y = x |> conv(4, 3, stride: 9223372036854775807, dilation: 4294967295) }",
        "model M { input x: [8, 8, 3] output y = x |> maxpool(3, pad: 4294967295) }",
        "model M { input x: [8] output y = x |> dense(9223372036854775807 * 2) }",
        "model M { input x: [8] output y = x |> dense(-9223372036854775807 - 2) }",
    ] {
        let c = cnnc_compiler::compile_source("huge.cnn", None, text.as_bytes());
        assert!(c.has_errors(), "{text}");
        survives(text.as_bytes());
    }
}

/// A diagnostic on a line longer than the renderer can show (past column 65,535) still renders,
/// with its place by line and column, and `cnnc check` exits 1, not with a panic.
#[test]
fn a_diagnostic_on_a_very_long_line_renders() {
    let text = format!(
        "model M {{\n    input image: [8, 8, 1]\n    x = image |> {}nope\n    output y = x\n}}\n",
        " ".repeat(70_000)
    );
    let c = cnnc_compiler::compile_source("long.cnn", None, text.as_bytes());
    let d = c.diagnostics();
    assert!(!d.is_empty());
    let shown = d[0].render(&c.program.sources, false);
    assert!(shown.contains("long.cnn:3:70018") && shown.contains("unknown layer or block `nope`"), "{shown}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.cnn");
    std::fs::write(&path, &text).unwrap();
    let o = common::cnnc().args(["check", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A `repeat` whose body fails stops at its first failure: nested repeats of a million million
/// iterations of an unknown name end at once with one diagnostic (they used to run until memory
/// ran out).
#[test]
fn a_failing_repeat_body_ends_at_its_first_failure() {
    let text = "model M {\n input image: [8, 8, 1]\n x = image |> repeat 10000 { repeat 10000 { repeat 10000 { nope } } }\n output y = x\n}\n";
    let c = cnnc_compiler::compile_source("repeat.cnn", None, text.as_bytes());
    let errors: Vec<_> = c.diagnostics().into_iter().filter(|d| d.is_error()).collect();
    assert_eq!(errors.len(), 1, "{}", common::rendered(&c));
    assert!(errors[0].message.contains("nope"));
}

/// A layer named with 70,000 characters (past the 65,535 that formatting widths allow) still
/// gets its summary table: found by `fuzz/mutate.py`, which made such a name; it used to panic.
#[test]
fn a_summary_with_a_very_long_layer_name_renders() {
    let name = "n".repeat(70_000);
    let text = format!("model M {{\n    input image: [8, 8, 1]\n    output y = image |> relu(name: \"{name}\")\n}}\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long_name.cnn");
    std::fs::write(&path, &text).unwrap();
    let o = common::cnnc().args(["build", path.to_str().unwrap(), "--emit", "summary"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&name));
}
