//! The user documentation agrees with the compiler: the layers table of `docs/language.md` has a
//! row for every built-in layer and no other, and each written signature is the layer's own.

mod common;

use cnnc_compiler::elaborate::LAYERS;

/// The rows of the table under `## Layers`: (layer names, signature column).
fn layer_rows() -> Vec<(Vec<String>, String)> {
    let text = std::fs::read_to_string(common::root().join("docs/language.md")).unwrap();
    let section = text.split("## Layers").nth(1).expect("a Layers section");
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let names = cells[1].split(',').map(|n| n.trim().trim_matches('`').to_string()).collect();
            (names, cells[2].trim_matches('`').to_string())
        })
        .collect()
}

#[test]
fn the_layers_table_matches_the_layer_specs() {
    let rows = layer_rows();
    let mut documented: Vec<&str> = rows.iter().flat_map(|(names, _)| names.iter().map(String::as_str)).collect();
    documented.sort_unstable();
    let mut specs: Vec<&str> = LAYERS.iter().map(|l| l.name).collect();
    specs.sort_unstable();
    assert_eq!(documented, specs, "docs/language.md's layers differ from the compiler's");
    for (names, signature) in &rows {
        let spec = LAYERS.iter().find(|l| l.name == names[0]).unwrap();
        if signature == "no arguments" {
            for name in names {
                let s = LAYERS.iter().find(|l| l.name == name).unwrap();
                assert!(s.params.is_empty(), "`{name}` takes arguments but the docs say none");
            }
        } else {
            assert_eq!(signature, spec.signature, "the documented signature of `{}`", spec.name);
        }
    }
}
