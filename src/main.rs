//! `cnnc`: the command-line driver over the compiler, the language server and the formatter (and,
//! later, the runtime).
//!
//! Exit codes: 0 success (warnings allowed), 1 the model file has errors, 2 usage or input error
//! (a missing or corrupt file), 3 internal compiler error (a bug in cnnc), 4 training diverged.

mod bench;
mod run;

use clap::{Parser, Subcommand, ValueEnum};
use cnnc_compiler::summary::Summary;
use cnnc_compiler::Compilation;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cnnc", version, about = "A compiler for convolutional neural networks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and shape-check a model file; print diagnostics only.
    Check {
        /// The .cnn file.
        file: PathBuf,
        /// How to print diagnostics.
        #[arg(long, value_enum, default_value_t = MessageFormat::Human)]
        message_format: MessageFormat,
        /// Colour in human-readable diagnostics.
        #[arg(long, value_enum, default_value_t = Color::Auto)]
        color: Color,
    },
    /// Train a model as its train section says, evaluate it, or predict on files.
    Run(RunArgs),
    /// Compile a model file and print what was asked for.
    Build {
        /// The .cnn file.
        file: PathBuf,
        /// What to print.
        #[arg(long, value_enum, default_value_t = Emit::Summary)]
        emit: Emit,
        /// Which model, when the file has several (default: all).
        #[arg(long)]
        model: Option<String>,
        /// With `--emit train-ir` or `infer-ir`: print the graph as it is after this pass.
        #[arg(long, value_name = "PASS")]
        after: Option<String>,
        /// Skip an optional pass (repeatable); `--disable-pass list` lists the passes.
        #[arg(long, value_name = "PASS")]
        disable_pass: Vec<String>,
        /// Colour in human-readable diagnostics.
        #[arg(long, value_enum, default_value_t = Color::Auto)]
        color: Color,
    },
    /// Time compiling a model and running its steps on a synthetic batch (no data, no evaluation).
    Bench(BenchArgs),
    /// Run the language server on standard input and output (for editors).
    Lsp,
    /// Format .cnn files in place.
    Fmt {
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Change nothing: list the files that would change, and exit with 1 if any would.
        #[arg(long)]
        check: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The .cnn file.
    file: PathBuf,
    /// Which model, when the file has several.
    #[arg(long)]
    model: Option<String>,
    /// Folder for weights, optimizer state, metrics.csv and metrics.png (default: runs/MODEL).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Weights to evaluate or predict with (default: OUT/weights.safetensors).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Continue training from the weights and optimizer state in OUT.
    #[arg(long)]
    resume: bool,
    /// Only evaluate saved weights on the test split.
    #[arg(long)]
    eval: bool,
    /// Run the model on these image files instead of training.
    #[arg(long, num_args = 1..)]
    predict: Vec<PathBuf>,
    /// Override the number of epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Train on the first N training examples only.
    #[arg(long)]
    limit: Option<usize>,
    /// Print only errors and the final results.
    #[arg(long)]
    quiet: bool,
    /// Test-time crops averaged by --eval and --predict: 1 (centre), 5 (corners and centre) or 10 (and mirrors).
    #[arg(long, default_value_t = 1, value_parser = crops)]
    multi_crop: usize,
    /// Average the predictions of several weights files (comma-separated) for --eval and --predict.
    #[arg(long, value_delimiter = ',')]
    ensemble: Vec<PathBuf>,
    /// Write a grid of augmented training examples to this PNG and stop.
    #[arg(long)]
    preview_augment: Option<PathBuf>,
    /// What runs the model: `lir` (the kernel-IR interpreter, the default) or `reference`.
    #[arg(long, default_value = "lir", value_parser = backend)]
    backend: cnnc_runtime::backend::Backend,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The .cnn file.
    file: PathBuf,
    /// Which model, when the file has several.
    #[arg(long)]
    model: Option<String>,
    /// Time training steps (forward, backward, update); needs the model's train section.
    #[arg(long, conflicts_with = "infer")]
    train: bool,
    /// Time inference (the default).
    #[arg(long)]
    infer: bool,
    /// Examples per step (default: the train section's batch, else 1).
    #[arg(long)]
    batch: Option<usize>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Break the step down by op (reference backend): time per step, share of the step.
    #[arg(long)]
    profile: bool,
    /// Backends to time, in one run: reference, lir (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "reference,lir", value_parser = backend)]
    backend: Vec<cnnc_runtime::backend::Backend>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MessageFormat {
    /// Rendered reports with the source underlined.
    Human,
    /// One JSON object per diagnostic, one per line, on standard output.
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Emit {
    /// Per-layer table: output shapes, parameters, MACs, totals.
    Summary,
    /// The graph IR as text.
    Ir,
    /// The training graph as IR: forward in training mode, losses and the backward graph.
    TrainIr,
    /// The inference graph as IR: batchnorm on running statistics, no dropout.
    InferIr,
}

/// Parses `--backend`.
fn backend(text: &str) -> Result<cnnc_runtime::backend::Backend, String> {
    cnnc_runtime::backend::Backend::parse(text)
}

/// Parses `--multi-crop`: 1, 5 or 10.
fn crops(text: &str) -> Result<usize, String> {
    match text {
        "1" | "5" | "10" => Ok(text.parse().unwrap_or(1)),
        _ => Err("use 1 (centre), 5 (four corners and centre) or 10 (and their mirrors)".into()),
    }
}

const EXIT_DIAGNOSTICS: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_INTERNAL: u8 = 3;

fn main() -> ExitCode {
    // Output piped into a program that stops reading (`cnnc build ... | head`) ends cnnc quietly,
    // as it ends any command-line tool, instead of failing a write.
    #[cfg(unix)]
    // SAFETY: restoring the default action of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file, message_format, color } => {
            let Some(c) = compile(&file) else { return ExitCode::from(EXIT_USAGE) };
            report(&c, message_format, color)
        }
        Command::Run(a) => {
            let Some(c) = compile(&a.file) else { return ExitCode::from(EXIT_USAGE) };
            let status = report(&c, MessageFormat::Human, Color::Auto);
            if status != ExitCode::SUCCESS {
                return status;
            }
            let args = run::Args {
                file: a.file,
                model: a.model,
                out: a.out,
                weights: a.weights,
                resume: a.resume,
                eval: a.eval,
                predict: a.predict,
                epochs: a.epochs,
                limit: a.limit,
                quiet: a.quiet,
                multi_crop: a.multi_crop,
                ensemble: a.ensemble,
                preview: a.preview_augment,
                backend: a.backend,
            };
            finish(run::run(&c, &args))
        }
        Command::Build { file, emit, model, after, disable_pass, color } => {
            if disable_pass.iter().any(|p| p == "list") {
                for (name, contract) in cnnc_compiler::passes::PASSES {
                    println!("{name:<16}{contract}");
                }
                return ExitCode::SUCCESS;
            }
            let options =
                cnnc_compiler::passes::Options { disabled: disable_pass, dump_after: after, verify_each: true };
            if let Err(e) = options.validate() {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
            if options.dump_after.is_some() && !matches!(emit, Emit::TrainIr | Emit::InferIr) {
                eprintln!("error: --after shows a pass's output: use it with --emit train-ir or --emit infer-ir");
                return ExitCode::from(EXIT_USAGE);
            }
            let Some(c) = compile(&file) else { return ExitCode::from(EXIT_USAGE) };
            let status = report(&c, MessageFormat::Human, color);
            if status != ExitCode::SUCCESS {
                return status;
            }
            build(&c, emit, model.as_deref(), &options)
        }
        Command::Bench(a) => {
            let started = std::time::Instant::now();
            let Some(c) = compile(&a.file) else { return ExitCode::from(EXIT_USAGE) };
            let compiled = started.elapsed();
            let status = report(&c, MessageFormat::Human, Color::Auto);
            if status != ExitCode::SUCCESS {
                return status;
            }
            let args = bench::Args {
                file: a.file,
                model: a.model,
                train: a.train,
                batch: a.batch,
                threads: a.threads,
                steps: a.steps,
                warmup: a.warmup,
                profile: a.profile,
                backends: a.backend,
            };
            finish(bench::run(&c, &args, compiled))
        }
        Command::Lsp => match cnnc_lsp::run_stdio() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: language server: {e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Fmt { files, check } => {
            let outcome = cnnc_lsp::fmt::run(&files, check, &mut std::io::stdout(), &mut std::io::stderr());
            ExitCode::from(outcome.code())
        }
    }
}

/// The exit code of a command's outcome, its error printed.
fn finish(outcome: Result<(), run::Failure>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn compile(file: &Path) -> Option<Compilation> {
    match cnnc_compiler::compile_file(file) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("error: cannot read `{}`: {e}", file.display());
            None
        }
    }
}

/// Prints diagnostics; returns the exit code they call for.
fn report(c: &Compilation, format: MessageFormat, color: Color) -> ExitCode {
    let diags = c.diagnostics();
    let sources = &c.program.sources;
    match format {
        MessageFormat::Json => {
            let mut out = std::io::stdout().lock();
            for d in &diags {
                let _ = writeln!(out, "{}", d.to_json(sources));
            }
        }
        MessageFormat::Human => {
            let color = match color {
                Color::Always => true,
                Color::Never => false,
                Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            };
            let mut err = std::io::stderr().lock();
            for d in &diags {
                let _ = write!(err, "{}", d.render(sources, color));
            }
            let errors = diags.iter().filter(|d| d.is_error()).count();
            let warnings = diags.len() - errors;
            if !diags.is_empty() {
                let _ = writeln!(err, "{errors} error{}, {warnings} warning{}", plural(errors), plural(warnings));
            }
        }
    }
    if !c.internal.is_empty() {
        for e in &c.internal {
            eprintln!("{e}");
        }
        return ExitCode::from(EXIT_INTERNAL);
    }
    if c.has_errors() {
        ExitCode::from(EXIT_DIAGNOSTICS)
    } else {
        ExitCode::SUCCESS
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn build(c: &Compilation, emit: Emit, model: Option<&str>, options: &cnnc_compiler::passes::Options) -> ExitCode {
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
fn passes_text(
    c: &Compilation,
    m: &cnnc_compiler::elaborate::ModelInfo,
    emit: Emit,
    options: &cnnc_compiler::passes::Options,
) -> Result<String, (u8, String)> {
    use cnnc_compiler::passes::{inference, training, PassError, Pipeline};
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
