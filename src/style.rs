//! `cnnc run` on a style-transfer section: optimize an image, write it and the costs.

use crate::run::{fail, trainable, Args, Failure, EXIT_DIVERGED, EXIT_INPUT, EXIT_INTERNAL};
use cnnc_compiler::elaborate::ModelInfo;
use cnnc_compiler::train::TrainSpec;
use cnnc_runtime::style::{self, StyleError, StyleOptions, Transfer};
use std::path::{Path, PathBuf};

fn failure(e: StyleError) -> Failure {
    match e {
        StyleError::Input(m) => fail(EXIT_INPUT, m),
        StyleError::Internal(m) => fail(EXIT_INTERNAL, m),
        e @ StyleError::NonFinite { .. } => fail(EXIT_DIVERGED, e.to_string()),
    }
}

/// Runs the style-transfer section `spec` of `model` as `args` say.
pub fn run(model: &ModelInfo, spec: &TrainSpec, args: &Args) -> Result<(), Failure> {
    let base = args.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let data = spec.data.as_ref().ok_or_else(|| fail(EXIT_INPUT, "the train section has no data"))?;
    let from_section = |key: &str| data.str(key).map(|p| base.join(p));
    let content = args.content.clone().or_else(|| from_section("content"));
    let style_image = args.style.clone().or_else(|| from_section("style"));
    let (Some(content), Some(style_image)) = (content, style_image) else {
        return Err(fail(EXIT_INPUT, "style transfer needs a content and a style image"));
    };
    let mut transfer = Transfer::new(model, spec, None, args.backend).map_err(failure)?;
    match &args.weights {
        Some(w) => {
            cnnc_runtime::weights::load_into(w, &mut transfer.params).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
        }
        None if trainable(model) && !args.quiet => println!(
            "the features are {}'s with random weights (seed {}): pass pretrained ones with --weights FILE",
            model.name, spec.seed
        ),
        None => {}
    }
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&model.name));
    let opts = StyleOptions {
        content,
        style: style_image,
        noise: data.num("noise", 0.0),
        steps: args.steps.unwrap_or(spec.steps),
        every: spec.every,
        out: out.clone(),
        output: args.output.clone(),
        quiet: args.quiet,
        seed: spec.seed,
    };
    let [h, w, c] = transfer.shape;
    if !args.quiet {
        println!(
            "style transfer on {}: {h}×{w}×{c}, {} content and {} style terms, {} steps, backend {}",
            model.name,
            transfer.ig.terms.iter().filter(|t| t.compare == cnnc_compiler::passes::image::Compare::Content).count(),
            transfer.ig.terms.iter().filter(|t| t.compare == cnnc_compiler::passes::image::Compare::Style).count(),
            opts.steps,
            args.backend
        );
    }
    let outcome = style::run(&mut transfer, spec, &opts).map_err(failure)?;
    let first = &outcome.history[0].1;
    let (evals, last) = outcome.history.last().map(|(e, c)| (*e, c.clone())).unwrap_or_default();
    let steps = outcome.history.len() - 1;
    println!(
        "{steps} steps ({evals} evaluations of the cost) in {:.1} s, {:.3} s a step",
        outcome.seconds,
        outcome.seconds / steps.max(1) as f64
    );
    println!(
        "cost {:.4e} -> {:.4e} (content {:.4e}, style {:.4e}, total variation {:.4e})",
        first.total, last.total, last.content, last.style, last.total_variation
    );
    let mut wrote = vec![out.join("generated.png").display().to_string(), out.join("costs.csv").display().to_string()];
    if let Some(o) = &args.output {
        wrote.push(o.display().to_string());
    }
    println!("wrote {}", wrote.join(", "));
    Ok(())
}
