//! The editor files under `editors/` are well-formed and agree with the compiler: the TextMate
//! grammar highlights every built-in layer and keyword, the VS Code manifest names files that
//! exist, and the Neovim configuration starts `cnnc lsp`.

mod common;

use cnnc_compiler::elaborate::LAYERS;
use cnnc_grammar::lex::KEYWORDS;
use serde_json::Value;

fn json(path: &str) -> Value {
    let text = std::fs::read_to_string(common::root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// The words of a TextMate `match` of the form `\b(a|b|c)\b`.
fn alternatives(pattern: &str) -> Vec<String> {
    let inner = pattern.split('(').nth(1).and_then(|s| s.split(')').next()).unwrap_or_default();
    inner.split('|').map(String::from).collect()
}

#[test]
fn the_grammar_knows_every_layer_and_keyword() {
    let grammar = json("editors/vscode/syntaxes/cnn.tmLanguage.json");
    assert_eq!(grammar["scopeName"], "source.cnn");
    let layers = alternatives(grammar["repository"]["layers"]["match"].as_str().unwrap());
    let mut expected: Vec<&str> = LAYERS.iter().map(|l| l.name).collect();
    expected.sort_unstable();
    let mut found: Vec<&str> = layers.iter().map(String::as_str).collect();
    found.sort_unstable();
    assert_eq!(found, expected, "the grammar's built-in layers differ from the compiler's");
    let keyword_patterns = grammar["repository"]["keywords"]["patterns"].as_array().unwrap();
    let words: Vec<String> =
        keyword_patterns.iter().flat_map(|p| alternatives(p["match"].as_str().unwrap_or_default())).collect();
    for k in KEYWORDS {
        assert!(words.iter().any(|w| w == k), "keyword `{k}` is not highlighted");
    }
}

#[test]
fn the_vscode_manifest_names_files_that_exist() {
    let manifest = json("editors/vscode/package.json");
    let dir = common::root().join("editors/vscode");
    assert!(dir.join(manifest["main"].as_str().unwrap()).exists());
    let language = &manifest["contributes"]["languages"][0];
    assert_eq!(language["extensions"][0], ".cnn");
    assert!(dir.join(language["configuration"].as_str().unwrap()).exists());
    json("editors/vscode/language-configuration.json");
    let grammar = &manifest["contributes"]["grammars"][0];
    assert!(dir.join(grammar["path"].as_str().unwrap()).exists());
    let extension = std::fs::read_to_string(dir.join("extension.js")).unwrap();
    assert!(extension.contains(r#"args: ["lsp"]"#));
}

#[test]
fn the_neovim_configuration_starts_the_server() {
    let lua = std::fs::read_to_string(common::root().join("editors/nvim/cnnc.lua")).unwrap();
    for needed in ["vim.lsp.start_client", "vim.lsp.buf_attach_client", r#"{ "cnnc", "lsp" }"#, "*.cnn"] {
        assert!(lua.contains(needed), "cnnc.lua lacks {needed}");
    }
}
