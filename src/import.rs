//! `cnnc import MODEL.cnn FROM -o W.safetensors`: another framework's weights converted into a
//! weights file of the model (see `cnnc_runtime::import`).

use crate::run::EXIT_INPUT;
use crate::{build, EXIT_INTERNAL, EXIT_USAGE};
use cnnc_compiler::passes::{inference, Options, Pipeline};
use cnnc_compiler::Compilation;
use cnnc_runtime::import::{self, Flatten, Mapping};
use std::path::Path;
use std::process::ExitCode;

pub(crate) fn import(
    c: &Compilation,
    model: Option<&str>,
    from: &Path,
    map: Option<&Path>,
    flatten: Option<Flatten>,
    output: &Path,
) -> ExitCode {
    let fail = |code: u8, message: String| {
        eprintln!("error: {message}");
        ExitCode::from(code)
    };
    let m = match build::pick(c, model, "import into") {
        Ok(m) => m,
        Err(message) => return fail(EXIT_USAGE, message),
    };
    let mut mapping = match map {
        None => Mapping::default(),
        Some(path) => {
            let text = match cnnc_runtime::atomic::read(path) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) => return fail(EXIT_INPUT, format!("cannot read mapping `{}`: {e}", path.display())),
            };
            match Mapping::parse(&text) {
                Ok(m) => m,
                Err(e) => return fail(EXIT_INPUT, format!("{}: {e}", path.display())),
            }
        }
    };
    if flatten.is_some() {
        mapping.flatten = flatten;
    }
    let graph = match Pipeline::new(Options::default()).and_then(|mut pipe| inference::run(m, &mut pipe)) {
        Ok(g) => g,
        Err(e) => return fail(EXIT_INTERNAL, e.to_string()),
    };
    let source = match import::read(from) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_INPUT, e.to_string()),
    };
    let layers = import::layers(&graph);
    let done = match import::import(&layers, &source, &mapping) {
        Ok(d) => d,
        Err(e) => return fail(EXIT_INPUT, format!("`{}` into `{}`: {e}", from.display(), m.name)),
    };
    let named: Vec<cnnc_runtime::weights::Named> =
        done.tensors.iter().map(|(n, (s, v))| (n.as_str(), s.as_slice(), v.as_slice())).collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "cnnc".to_string());
    meta.insert("model".to_string(), m.name.clone());
    meta.insert("imported_from".to_string(), from.display().to_string());
    if let Err(e) = cnnc_runtime::weights::save(output, &named, meta) {
        return fail(EXIT_INPUT, e.to_string());
    }
    let width = done.pairs.iter().map(|p| p.from.len()).max().unwrap_or(0).min(512);
    for p in &done.pairs {
        let how = match (p.rule, p.by_name) {
            (Some(l), _) => format!("rule, line {l}"),
            (None, true) => "by name".to_string(),
            (None, false) => "by order".to_string(),
        };
        println!("  {:<width$}  →  {}  ({}, {how})", p.from, p.to, p.kind);
    }
    for name in &done.ignored {
        println!("  {name:<width$}     ignored");
    }
    println!(
        "{}: {} tensors of `{}` from {} layers of `{}`",
        output.display(),
        named.len(),
        m.name,
        done.pairs.len(),
        from.display()
    );
    if !done.fresh.is_empty() {
        println!(
            "not in the file, so they start fresh with --init: {}",
            done.fresh.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        );
    }
    ExitCode::SUCCESS
}
