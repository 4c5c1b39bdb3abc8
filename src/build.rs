//! `cnnc build`: compile a model file and print what `--emit` asks for: the summary, the graph
//! IR, the training or inference graph (after any pass), or the kernel program and its memory
//! plan.

use crate::run::EXIT_INPUT;
use crate::{Emit, EXIT_INTERNAL, EXIT_USAGE};
use cnnc_compiler::elaborate::ModelInfo;
use cnnc_compiler::passes::{inference, training, Options, PassError, Pipeline};
use cnnc_compiler::summary::Summary;
use cnnc_compiler::Compilation;
use std::io::Write;
use std::process::ExitCode;

pub(crate) fn build(
    c: &Compilation,
    emit: Emit,
    model: Option<&str>,
    options: &Options,
    batch: Option<usize>,
) -> ExitCode {
    let models: Vec<_> = match model {
        Some(name) => match c.models.iter().find(|m| m.name == name) {
            Some(m) => vec![m],
            None => {
                let names: Vec<&str> = c.models.iter().map(|m| m.name.as_str()).collect();
                eprintln!("error: no model `{name}` in this file (models: {})", names.join(", "));
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => c.models.iter().collect(),
    };
    let mut out = std::io::stdout().lock();
    if models.is_empty() {
        // A library of blocks: list what it offers; blocks compile when a model instantiates them.
        let _ = writeln!(out, "No model in this file; its blocks compile when a model uses them:");
        if let Some(entry) = c.program.modules.first() {
            for item in &entry.ast.items {
                if let cnnc_grammar::ast::Item::Block(b) = item {
                    let params: Vec<String> = b
                        .params
                        .iter()
                        .map(|p| match &p.ty {
                            Some(t) => format!("{}: {}", p.name, t),
                            None => p.name.to_string(),
                        })
                        .collect();
                    let _ = writeln!(out, "  block {}({})", b.name, params.join(", "));
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    for (i, m) in models.iter().enumerate() {
        if i > 0 {
            let _ = writeln!(out);
        }
        let text = match emit {
            Emit::Summary => Summary::of(&m.graph).to_text(),
            Emit::Ir => m.graph.to_text(),
            // Written to a file by `onnx`, never printed.
            Emit::Onnx | Emit::Weights | Emit::Object | Emit::Header => String::new(),
            Emit::Lir | Emit::Memory | Emit::Kernels | Emit::Clif => match lir_text(c, m, emit, options, batch) {
                Ok(text) => text,
                Err((code, message)) => {
                    eprintln!("error: {message}");
                    return ExitCode::from(code);
                }
            },
            Emit::TrainIr | Emit::InferIr => match passes_text(c, m, emit, options) {
                Ok(text) => text,
                Err((code, message)) => {
                    eprintln!("error: {message}");
                    return ExitCode::from(code);
                }
            },
        };
        let _ = write!(out, "{text}");
    }
    ExitCode::SUCCESS
}

/// The training or inference graph of `m` as text: the finished graph, or the graph after the
/// pass `options` names.
fn passes_text(c: &Compilation, m: &ModelInfo, emit: Emit, options: &Options) -> Result<String, (u8, String)> {
    let code = |e: &PassError| if matches!(e, PassError::Verify { .. }) { EXIT_INTERNAL } else { EXIT_USAGE };
    let mut pipe = Pipeline::new(options.clone()).map_err(|e| (code(&e), e.to_string()))?;
    let graph = if emit == Emit::InferIr {
        inference::run(m, &mut pipe).map_err(|e| (code(&e), e.to_string()))?
    } else {
        let Some(spec) = c.trains.iter().find(|t| t.model == m.name) else {
            return Err((EXIT_USAGE, format!("model `{}` has no train section, so no training graph", m.name)));
        };
        match training::run(m, spec, false, &mut pipe) {
            Ok(tg) => tg.graph,
            Err(training::PlanError::Pass(e)) => return Err((code(&e), e.to_string())),
            Err(e) => return Err((EXIT_USAGE, e.to_string())),
        }
    };
    match (&options.dump_after, pipe.dumped) {
        (None, _) => Ok(graph.to_text()),
        (Some(_), Some(text)) => Ok(text),
        (Some(pass), None) => Err((EXIT_USAGE, format!("the `{pass}` pass does not run when building this graph"))),
    }
}

/// The kernel program of `m` (its training step when it has a train section, else inference)
/// at `batch` examples, or its memory plan.
fn lir_text(
    c: &Compilation,
    m: &ModelInfo,
    emit: Emit,
    options: &Options,
    batch: Option<usize>,
) -> Result<String, (u8, String)> {
    let internal = |e: &dyn std::fmt::Display| (EXIT_INTERNAL, e.to_string());
    let mut pipe = Pipeline::new(options.clone()).map_err(|e| (EXIT_USAGE, e.to_string()))?;
    let spec = c.trains.iter().find(|t| t.model == m.name);
    let batch = batch.or(spec.map(|s| s.batch)).unwrap_or(1);
    if batch == 0 {
        return Err((EXIT_USAGE, "--batch must be at least 1".into()));
    }
    let lowered = match spec {
        Some(spec) => {
            let tg = training::run(m, spec, false, &mut pipe).map_err(|e| (EXIT_USAGE, e.to_string()))?;
            let layout = cnnc_compiler::params::ParamLayout::of(&tg.graph);
            cnnc_compiler::lir::lower(&tg.graph, batch, &layout, &tg.grads.params, &tg.results())
                .map_err(|e| internal(&e))?
        }
        None => {
            let graph = inference::run(m, &mut pipe).map_err(|e| (EXIT_USAGE, e.to_string()))?;
            let layout = cnnc_compiler::params::ParamLayout::of(&graph);
            let keep: Vec<_> = graph.outputs().iter().map(|(_, id)| cnnc_compiler::ir::ValueId::from(*id)).collect();
            cnnc_compiler::lir::lower(&graph, batch, &layout, &[], &keep).map_err(|e| internal(&e))?
        }
    };
    let mut program = lowered.program;
    pipe.optimize(&mut program);
    Ok(match emit {
        Emit::Memory => cnnc_compiler::lir::plan(&program).to_text(&program),
        Emit::Kernels | Emit::Clif => {
            let mut jit = cnnc_codegen::Jit::new(cnnc_codegen::Options::default()).map_err(|e| internal(&e))?;
            let mut text = String::new();
            if emit == Emit::Kernels {
                text += &format!("kernels {} (batch {}) on {}\n", program.name, program.batch, jit.isa);
            }
            let mut total = 0u64;
            for (i, k) in program.kernels.iter().enumerate() {
                if let cnnc_compiler::lir::Kernel::Map { expr, .. } = k {
                    jit.map(expr).map_err(|e| internal(&e))?;
                }
                let provider = cnnc_runtime::interp::provider(&program, k);
                total += k.flops();
                if emit == Emit::Kernels {
                    let (_, writes) = k.access();
                    let shape = writes.first().map(|v| format!("{:?}", v.shape)).unwrap_or_default();
                    // An epilogue's routes: column ranges written to destinations of their own.
                    let routes = match k {
                        cnnc_compiler::lir::Kernel::Gemm { epilogue: Some(e), .. }
                        | cnnc_compiler::lir::Kernel::ConvGemm { epilogue: Some(e), .. }
                        | cnnc_compiler::lir::Kernel::PoolGemm { epilogue: Some(e), .. }
                            if !e.routes.is_empty() =>
                        {
                            format!(", {} column ranges to destinations of their own", e.routes.len())
                        }
                        _ => String::new(),
                    };
                    text +=
                        &format!("  k{i:<4} {:<16} {shape:<24} {:>14} FLOP  {provider}{routes}\n", k.name(), k.flops());
                }
            }
            if emit == Emit::Kernels {
                text += &format!("total: {total} FLOP; {} native functions compiled\n", jit.compiled());
            } else {
                for (name, clif) in jit.clif() {
                    text += &format!("; {name}\n{clif}\n");
                }
            }
            text
        }
        _ => program.to_string(),
    })
}

/// The model `name` of `c`, or its only model.
pub(crate) fn pick<'c>(c: &'c Compilation, name: Option<&str>, verb: &str) -> Result<&'c ModelInfo, String> {
    match (name, c.models.as_slice()) {
        (Some(name), models) => {
            models.iter().find(|m| m.name == name).ok_or_else(|| format!("no model `{name}` in this file"))
        }
        (None, [m]) => Ok(m),
        (None, []) => Err(format!("this file has no model to {verb}")),
        (None, models) => {
            let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
            Err(format!("pick the model to {verb} with --model ({})", names.join(", ")))
        }
    }
}

/// `cnnc build --emit onnx|weights -o FILE [--weights W]`: one model's inference graph with its
/// weights (those of `W`, else the initial ones of the train section's seed) as an ONNX model, or
/// its weights alone as a safetensors file.
pub(crate) fn export(
    c: &Compilation,
    emit: Emit,
    model: Option<&str>,
    output: Option<&std::path::Path>,
    weights: Option<&std::path::Path>,
) -> ExitCode {
    let fail = |code: u8, message: String| {
        eprintln!("error: {message}");
        ExitCode::from(code)
    };
    let Some(output) = output else {
        let what = if emit == Emit::Onnx { "onnx" } else { "weights" };
        return fail(EXIT_USAGE, format!("--emit {what} writes a file: give it with --output FILE"));
    };
    let m = match pick(c, model, "export") {
        Ok(m) => m,
        Err(message) => return fail(EXIT_USAGE, message),
    };
    let mut pipe = match Pipeline::new(Options::default()) {
        Ok(p) => p,
        Err(e) => return fail(EXIT_INTERNAL, e.to_string()),
    };
    let graph = match inference::run(m, &mut pipe) {
        Ok(g) => g,
        Err(e) => return fail(EXIT_INTERNAL, e.to_string()),
    };
    let seed = c.trains.iter().find(|t| t.model == m.name).map_or(0, |t| t.seed);
    let mut params = cnnc_runtime::params::Params::init(&graph, seed);
    match weights {
        Some(w) => {
            if let Err(e) = cnnc_runtime::weights::load_into(w, &mut params) {
                return fail(EXIT_INPUT, e.to_string());
            }
        }
        None => eprintln!("note: no --weights given: exporting the initial weights of seed {seed}"),
    }
    if emit == Emit::Weights {
        let named: Vec<cnnc_runtime::weights::Named> = params.named().collect();
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "cnnc".to_string());
        meta.insert("model".to_string(), m.name.clone());
        if let Err(e) = cnnc_runtime::weights::save(output, &named, meta) {
            return fail(EXIT_INPUT, e.to_string());
        }
        println!("{}: {} tensors, cnnc's layout", output.display(), named.len());
        return ExitCode::SUCCESS;
    }
    let bytes = match cnnc_runtime::onnx::export(&graph, &params) {
        Ok(b) => b,
        Err(e) => return fail(EXIT_USAGE, format!("`{}` cannot be exported to ONNX: {e}", m.name)),
    };
    if let Err(e) = cnnc_runtime::atomic::write(output, &bytes) {
        return fail(EXIT_INPUT, format!("cannot write {}: {e}", output.display()));
    }
    println!("{}: {} bytes, opset 17, input and output channels-last as in cnnc", output.display(), bytes.len());
    ExitCode::SUCCESS
}

/// `cnnc build FILE -o model.o` (`--emit object`) or `--emit header -o model.h`: one model's
/// inference code and weights (those of `W`, else the initial ones of the train section's seed)
/// compiled ahead of time into an object file for `target`, or its C header.
#[allow(clippy::too_many_arguments)]
pub(crate) fn object(
    c: &Compilation,
    source: &std::path::Path,
    emit: Emit,
    model: Option<&str>,
    output: Option<&std::path::Path>,
    weights: Option<&std::path::Path>,
    target: cnnc_codegen::aot::Target,
    options: &Options,
) -> ExitCode {
    let fail = |code: u8, message: String| {
        eprintln!("error: {message}");
        ExitCode::from(code)
    };
    let Some(output) = output else {
        return fail(EXIT_USAGE, "--emit object and --emit header write a file: give it with --output FILE".into());
    };
    let m = match pick(c, model, "compile") {
        Ok(m) => m,
        Err(message) => return fail(EXIT_USAGE, message),
    };
    let compiled = match compile_object(c, source, m, weights, target, options) {
        Ok(o) => o,
        Err((code, message)) => return fail(code, message),
    };
    let (bytes, what) = if emit == Emit::Header {
        (compiled.header.as_bytes(), "C header".to_string())
    } else {
        (&compiled.bytes[..], format!("object file, {} weight bytes", compiled.weight_bytes))
    };
    if let Err(e) = cnnc_runtime::atomic::write(output, bytes) {
        return fail(EXIT_INPUT, format!("cannot write {}: {e}", output.display()));
    }
    println!(
        "{}: {} bytes, {what}; {} ({} scratch bytes a call); {}",
        output.display(),
        bytes.len(),
        compiled.functions.join(", "),
        compiled.scratch_bytes,
        compiled.isa
    );
    ExitCode::SUCCESS
}

/// The object file of model `m`: its batch-1 inference program after the passes, the prepare
/// phase run on the weights and its results placed among them (the generated code computes
/// every convolution from its filters, so Winograd's transformed filters are left out).
pub(crate) fn compile_object(
    c: &Compilation,
    source: &std::path::Path,
    m: &ModelInfo,
    weights: Option<&std::path::Path>,
    target: cnnc_codegen::aot::Target,
    options: &Options,
) -> Result<cnnc_codegen::aot::Object, (u8, String)> {
    use cnnc_compiler::lir::{BufId, Purpose, Space, View};
    let internal = |e: &dyn std::fmt::Display| (EXIT_INTERNAL, e.to_string());
    // The generated code computes convolutions from their filters: no Winograd form (its
    // filters' transform would only cost build time).
    let mut options = options.clone();
    if !options.disabled.iter().any(|d| d == "winograd") {
        options.disabled.push("winograd".into());
    }
    let mut pipe = Pipeline::new(options).map_err(|e| (EXIT_USAGE, e.to_string()))?;
    let graph = inference::run(m, &mut pipe).map_err(|e| (EXIT_USAGE, e.to_string()))?;
    if graph.inputs().len() != 1 {
        return Err((
            EXIT_USAGE,
            format!("`{}` has {} inputs; an object file takes models of one input", m.name, graph.inputs().len()),
        ));
    }
    let seed = c.trains.iter().find(|t| t.model == m.name).map_or(0, |t| t.seed);
    let mut params = cnnc_runtime::params::Params::init(&graph, seed);
    match weights {
        Some(w) => {
            cnnc_runtime::weights::load_into(w, &mut params).map_err(|e| (EXIT_INPUT, e.to_string()))?;
        }
        None => eprintln!("note: no --weights given: compiling the initial weights of seed {seed}"),
    }
    let keep: Vec<_> = graph.outputs().iter().map(|(_, id)| cnnc_compiler::ir::ValueId::from(*id)).collect();
    let lowered = cnnc_compiler::lir::lower(&graph, 1, &params.layout, &[], &keep).map_err(|e| internal(&e))?;
    let mut program = lowered.program;
    pipe.optimize(&mut program);
    // The prepare phase, run here: what it derives becomes constants after the parameters.
    let mut machine = cnnc_runtime::interp::Machine::new(program.clone()).map_err(|e| internal(&e))?;
    machine.prepare(params.data()).map_err(|e| internal(&e))?;
    let mut constants = params.data().to_vec();
    let derived: Vec<usize> = program
        .prepare
        .iter()
        .flat_map(|k| k.access().1.into_iter().map(|v| v.buf.0 as usize).collect::<Vec<_>>())
        .collect();
    for i in derived {
        let b = &program.buffers[i];
        if b.space != Space::Arena {
            continue;
        }
        let values = machine.read(&View::whole(BufId(i as u32), vec![b.len]), params.data(), &[]);
        let at = constants.len();
        constants.extend(values.iter());
        program.buffers[i].space = Space::Param(at);
    }
    program.prepare.clear();
    let outputs = graph
        .outputs()
        .iter()
        .map(|(name, id)| {
            let v = cnnc_compiler::ir::ValueId::from(*id);
            program
                .result(&Purpose::Value(v))
                .map(|view| (name.clone(), view.clone()))
                .ok_or_else(|| (EXIT_INTERNAL, format!("output `{name}` is not among the program's results")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let model = cnnc_codegen::aot::Model {
        program: &program,
        constants: &constants,
        prefix: cnnc_codegen::aot::identifier(&m.name),
        outputs,
        about: format!("Model `{}` of {}.", m.name, source.display()),
    };
    cnnc_codegen::aot::compile(&model, target).map_err(|e| match e {
        cnnc_codegen::aot::Error::Refused(why) => {
            (EXIT_USAGE, format!("`{}` cannot be compiled to an object file: {why}", m.name))
        }
        e @ cnnc_codegen::aot::Error::Internal(_) => (EXIT_INTERNAL, format!("`{}`: {e}", m.name)),
    })
}
