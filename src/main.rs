//! `cnnc`: the command-line driver over the compiler, the language server and the formatter (and,
//! later, the runtime).
//!
//! Exit codes: 0 success (warnings allowed), 1 the model file has errors, 2 usage or input error
//! (a missing or corrupt file), 3 internal compiler error (a bug in cnnc), 4 training diverged.

mod bench;
mod build;
mod data;
mod distributed;
mod facedb;
mod faces;
mod import;
mod run;
mod style;
mod visualize;

use clap::{Parser, Subcommand, ValueEnum};
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
    Run(Box<RunArgs>),
    /// Compile a model file and print what was asked for.
    Build {
        /// The .cnn file.
        file: PathBuf,
        /// What to print or write (default: `summary`; `object` when `--output` ends in `.o`,
        /// `header` when it ends in `.h`).
        #[arg(long, value_enum)]
        emit: Option<Emit>,
        /// Which model, when the file has several (default: all).
        #[arg(long)]
        model: Option<String>,
        /// With `--emit train-ir` or `infer-ir`: print the graph as it is after this pass.
        #[arg(long, value_name = "PASS")]
        after: Option<String>,
        /// Skip an optional pass (repeatable); `--disable-pass list` lists the passes.
        #[arg(long, value_name = "PASS")]
        disable_pass: Vec<String>,
        /// Winograd's tile for 3×3 stride-1 convolutions in inference: 2 (F(2×2, 3×3), the
        /// default) or 4 (F(4×4, 3×3): fewer multiplies, 6–16 times the rounding error).
        #[arg(long, default_value_t = 2, value_parser = winograd_tile)]
        winograd_tile: usize,
        /// Examples per run for `--emit lir` and `--emit memory` (default: the train section's
        /// batch, else 1).
        #[arg(long)]
        batch: Option<usize>,
        /// Where `--emit onnx`, `weights`, `object` or `header` writes.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// The weights `--emit onnx` or `object` exports (default: the initial weights of the
        /// train section's seed).
        #[arg(long, value_name = "FILE")]
        weights: Option<PathBuf>,
        /// The instruction set of `--emit object`: `host` (this machine's), `x86-64-v3` (AVX2,
        /// FMA) or `x86-64-v4` (AVX-512).
        #[arg(long, value_name = "ISA")]
        target: Option<String>,
        /// Colour in human-readable diagnostics.
        #[arg(long, value_enum, default_value_t = Color::Auto)]
        color: Color,
    },
    /// Convert another framework's weights (a PyTorch state dict as safetensors, or an ONNX
    /// model's initializers) into a weights file of this model, in cnnc's layout.
    Import {
        /// The .cnn file.
        file: PathBuf,
        /// The weights to convert: `.safetensors` (PyTorch names and layouts) or `.onnx`.
        from: PathBuf,
        /// Which model, when the file has several.
        #[arg(long)]
        model: Option<String>,
        /// Rules pairing the file's layers with the model's (`SRC => DST`, `ignore SRC`,
        /// `flatten chw|whc|hwc`); layers no rule names pair by order, kind by kind.
        #[arg(long, value_name = "FILE")]
        map: Option<PathBuf>,
        /// How the file orders the axes it flattens before a dense layer (default: chw for
        /// PyTorch, hwc for cnnc's own ONNX).
        #[arg(long, value_parser = flatten_order)]
        flatten: Option<cnnc_runtime::import::Flatten>,
        /// The weights file to write (safetensors, cnnc's names and layout).
        #[arg(long, short = 'o', value_name = "FILE")]
        output: PathBuf,
    },
    /// Time compiling a model and running its steps on a synthetic batch (no data, no evaluation).
    Bench(BenchArgs),
    /// Make datasets: `mnist-detection` (digits on canvases, with YOLO label files) and
    /// `anchors` (k-means anchors from a detection folder's boxes).
    #[command(subcommand)]
    Data(DataCommand),
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

#[derive(Subcommand)]
enum DataCommand {
    /// Digits from MNIST on larger canvases, several per canvas (some overlapping, some cut by
    /// the border), as OUT/train and OUT/test folders of images/ and labels/ (YOLO text files:
    /// `class cx cy w h`). The test canvases take MNIST's test digits. Deterministic.
    MnistDetection {
        /// The folder to write (made whole, or not at all).
        out: PathBuf,
        /// The folder of MNIST's four files.
        #[arg(long, value_name = "DIR")]
        mnist: PathBuf,
        /// Training canvases.
        #[arg(long, default_value_t = 30000)]
        train: usize,
        /// Test canvases.
        #[arg(long, default_value_t = 500)]
        test: usize,
        /// Canvas side in pixels.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Digits per canvas: at least this many (0 makes some canvases background)...
        #[arg(long, default_value_t = 1)]
        least: usize,
        /// ... and at most this many.
        #[arg(long, default_value_t = 4)]
        most: usize,
        /// Smallest side of a digit's 28×28 frame, in pixels.
        #[arg(long, default_value_t = 18)]
        smallest: usize,
        /// Largest side of a digit's 28×28 frame, in pixels.
        #[arg(long, default_value_t = 34)]
        largest: usize,
        /// Seed of every random choice.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Also write landmarks.csv in each split: the digit's four extreme points of ink (top,
        /// bottom, left, right) in pixels; needs --least 1 --most 1.
        #[arg(long)]
        landmarks: bool,
    },
    /// Anchors by k-means (distance 1 − IoU) over the boxes of DIR/labels, in cells of the
    /// grid, printed as a model's `anchors` declaration.
    Anchors {
        /// A detection folder (with labels/).
        dir: PathBuf,
        /// How many anchors.
        #[arg(long, short = 'k', default_value_t = 5)]
        k: usize,
        /// The grid, ROWSxCOLS (or one number for a square grid).
        #[arg(long, value_parser = grid)]
        grid: (usize, usize),
        /// The declaration's name.
        #[arg(long, default_value = "boxes")]
        name: String,
    },
}

fn grid(s: &str) -> Result<(usize, usize), String> {
    let parse = |v: &str| v.trim().parse::<usize>().map_err(|_| format!("`{s}` is not a grid: give ROWSxCOLS, as 8x8"));
    match s.split_once(['x', '×']) {
        Some((r, c)) => Ok((parse(r)?, parse(c)?)),
        None => parse(s).map(|n| (n, n)),
    }
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
    #[arg(long, conflicts_with = "init")]
    resume: bool,
    /// With --resume: when the last save is incomplete (a run stopped while saving), resume from
    /// the save before it.
    #[arg(long, requires = "resume")]
    fallback: bool,
    /// Start training from pretrained weights: every parameter the file has (by name and shape)
    /// is loaded, the others start fresh (a new head); constants keep the model file's values.
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,
    /// With --predict: write every output of every file at full precision to this safetensors
    /// file (each output stacked over the files, in order). In style transfer: write the final
    /// image to this PNG too. With --enroll: the database file.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Style transfer: the content image (instead of the train section's).
    #[arg(long, value_name = "IMAGE")]
    content: Option<PathBuf>,
    /// Style transfer: the style image (instead of the train section's).
    #[arg(long, value_name = "IMAGE")]
    style: Option<PathBuf>,
    /// Style transfer: override the number of optimizer steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Draw the 9 dataset patches that activate each unit of this layer most (a grid PNG, to -o
    /// or OUT/LAYER_patches.png), over the train section's data, with the trained weights.
    #[arg(long, value_name = "LAYER")]
    visualize: Option<String>,
    /// Draw a convolution's filters as images (to -o or OUT/LAYER_filters.png); without a
    /// value, the first convolution's.
    #[arg(long, value_name = "LAYER", num_args = 0..=1, default_missing_value = "")]
    filters: Option<String>,
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
    /// What runs the model: `jit` (native kernels, the default), `lir` (the kernel-IR
    /// interpreter) or `reference` (the layer-level reference executor).
    #[arg(long, default_value = "jit", value_parser = backend)]
    backend: cnnc_runtime::backend::Backend,
    /// Find faces in these photos with MTCNN's cascade: the file's PNet, RNet and ONet (as
    /// examples/mtcnn.cnn) with their imported weights in DIR/NAME/weights.safetensors (DIR: runs,
    /// or --weights DIR); boxes and landmarks printed and drawn (OUT/IMAGE.faces.png, OUT default
    /// runs/MTCNN).
    #[arg(long, num_args = 1.., value_name = "IMAGE")]
    faces: Vec<PathBuf>,
    /// With --predict: run over whole images of any size with the model made fully
    /// convolutional (its dense layers as convolutions, the same weights), printing the map of
    /// every window's result (convolutional sliding windows).
    #[arg(long, requires = "predict")]
    slide: bool,
    /// Detection, --predict: the least score (objectness × class probability) of a box shown;
    /// with --slide, the least probability of a window's top class shown.
    #[arg(long, default_value_t = 0.5, value_parser = fraction)]
    threshold: f32,
    /// Detection: non-max suppression drops a box overlapping a better one of its class by more
    /// than this IoU.
    #[arg(long, default_value_t = 0.5, value_parser = fraction)]
    iou: f32,
    /// A one-shot database of people: embed every image of DIR/PERSON/ (one folder a person, one
    /// image or more) with the trained encoder and write them, with the distance threshold
    /// chosen on the train section's held-out pairs, to OUT/faces.safetensors (or -o FILE).
    #[arg(long, value_name = "DIR")]
    enroll: Option<PathBuf>,
    /// Name the person in each image from the database (or "not in the database" beyond its
    /// threshold).
    #[arg(long, num_args = 1.., value_name = "IMAGE")]
    identify: Vec<PathBuf>,
    /// Whether two images show the same person: their distance against the database's threshold.
    #[arg(long, num_args = 2, value_names = ["IMAGE", "IMAGE"])]
    verify: Vec<PathBuf>,
    /// The database --identify and --verify read (default: OUT/faces.safetensors).
    #[arg(long, value_name = "FILE")]
    database: Option<PathBuf>,
    /// With --enroll: the distance below which two images show one person (a pretrained
    /// network's published threshold, such as FaceRecognitionNet's 0.6), rather than the one
    /// chosen on the train section's held-out pairs.
    #[arg(long, requires = "enroll", value_name = "D", value_parser = positive_distance)]
    distance: Option<f32>,
}

fn positive_distance(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive distance")),
    }
}

fn fraction(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number from 0 to 1")),
    }
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
    /// Backends to time, in one run: reference, lir, jit (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "reference,lir,jit", value_parser = backend)]
    backend: Vec<cnnc_runtime::backend::Backend>,
    /// Leave out a kernel-program pass (repeatable), to measure what it gains:
    /// fold_batchnorm, fuse_maps, fuse_epilogue, fuse_im2col, fuse_bn_stats, merge_siblings,
    /// winograd, concat_in_place, in_place.
    #[arg(long = "disable-pass", value_name = "PASS")]
    disable_pass: Vec<String>,
    /// Winograd's tile for 3×3 stride-1 convolutions in inference: 2 (F(2×2, 3×3), the
    /// default) or 4 (F(4×4, 3×3): fewer multiplies, 6–16 times the rounding error).
    #[arg(long, default_value_t = 2, value_parser = winograd_tile)]
    winograd_tile: usize,
}

/// Adds to the passes left out (`disabled`) the opt-in variants the flags ask for: `winograd_f4`
/// for `--winograd-tile 4`. An opt-in variant named with `--disable-pass`, or a larger tile with
/// `winograd` disabled, is an error.
fn opt_in(disabled: &mut Vec<String>, winograd_tile: usize) -> Result<(), String> {
    let f4 = cnnc_compiler::lir::passes::OPT_IN[0].0;
    if disabled.iter().any(|d| d == f4) {
        return Err(format!("`{f4}` is not a pass to disable: --winograd-tile 4 takes it"));
    }
    if winograd_tile == 4 && disabled.iter().any(|d| d == "winograd") {
        return Err("--winograd-tile 4 asks for the `winograd` pass that --disable-pass winograd leaves out".into());
    }
    if winograd_tile == 4 {
        disabled.push(f4.to_string());
    }
    Ok(())
}

/// `--winograd-tile`: 2 or 4.
fn winograd_tile(s: &str) -> Result<usize, String> {
    match s {
        "2" => Ok(2),
        "4" => Ok(4),
        _ => Err(format!("`{s}` is not a Winograd tile: 2 (F(2×2, 3×3)) or 4 (F(4×4, 3×3))")),
    }
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
pub(crate) enum Emit {
    /// Per-layer table: output shapes, parameters, MACs, totals.
    Summary,
    /// The graph IR as text.
    Ir,
    /// The training graph as IR: forward in training mode, losses and the backward graph.
    TrainIr,
    /// The inference graph as IR: batchnorm on running statistics, no dropout.
    InferIr,
    /// The kernel program (the training step when the model has a train section, else
    /// inference), at `--batch` examples.
    Lir,
    /// The kernel program's memory plan: each arena buffer's size, offset and life; the arena
    /// against the sum of all buffers and the peak live.
    Memory,
    /// The kernels with their shapes, FLOPs and who runs them (native code, a library, the
    /// interpreter).
    Kernels,
    /// The Cranelift IR of the kernels compiled to native code.
    Clif,
    /// The inference graph and its weights as an ONNX model, written to `--output`.
    Onnx,
    /// The model's parameters as a safetensors file, written to `--output`: the initial ones of
    /// the train section's seed (those `--emit onnx` exports without `--weights`).
    Weights,
    /// The inference code and its weights compiled ahead of time into an object file, written
    /// to `--output`: one C function per output, no runtime needed (see `--emit header`).
    Object,
    /// The C header of `--emit object`'s file, written to `--output`.
    Header,
}

/// Parses `--backend`.
fn backend(text: &str) -> Result<cnnc_runtime::backend::Backend, String> {
    cnnc_runtime::backend::Backend::parse(text)
}

/// Parses `--flatten`.
fn flatten_order(text: &str) -> Result<cnnc_runtime::import::Flatten, String> {
    text.parse()
}

/// Parses `--multi-crop`: 1, 5 or 10.
fn crops(text: &str) -> Result<usize, String> {
    match text {
        "1" | "5" | "10" => Ok(text.parse().unwrap_or(1)),
        _ => Err("use 1 (centre), 5 (four corners and centre) or 10 (and their mirrors)".into()),
    }
}

const EXIT_DIAGNOSTICS: u8 = 1;
pub(crate) const EXIT_USAGE: u8 = 2;
pub(crate) const EXIT_INTERNAL: u8 = 3;

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
            // Under `mpirun`: one of several processes training one model.
            let group = match distributed::start() {
                Ok(g) => g,
                Err(f) => return finish(Err(f)),
            };
            let Some(c) = compile(&a.file) else { return ExitCode::from(EXIT_USAGE) };
            // Rank 0 alone shows the diagnostics (every process finds the same).
            let status = if cnnc_runtime::dist::leader() {
                report(&c, MessageFormat::Human, Color::Auto)
            } else {
                report_nothing(&c)
            };
            if status != ExitCode::SUCCESS {
                return status;
            }
            let args = run::Args {
                file: a.file,
                model: a.model,
                out: a.out,
                weights: a.weights,
                resume: a.resume,
                fallback: a.fallback,
                eval: a.eval,
                predict: a.predict,
                epochs: a.epochs,
                limit: a.limit,
                quiet: a.quiet,
                multi_crop: a.multi_crop,
                ensemble: a.ensemble,
                preview: a.preview_augment,
                backend: a.backend,
                init: a.init,
                output: a.output,
                content: a.content,
                style: a.style,
                steps: a.steps,
                visualize: a.visualize,
                filters: a.filters,
                slide: a.slide,
                faces: a.faces,
                threshold: a.threshold,
                iou: a.iou,
                enroll: a.enroll,
                identify: a.identify,
                verify: a.verify,
                database: a.database,
                distance: a.distance,
            };
            distributed::finish(group, run::run(&c, &args))
        }
        Command::Build {
            file,
            emit,
            model,
            after,
            mut disable_pass,
            winograd_tile,
            batch,
            output,
            weights,
            target,
            color,
        } => {
            if disable_pass.iter().any(|p| p == "list") {
                for (name, contract) in cnnc_compiler::passes::PASSES {
                    println!("{name:<16}{contract}");
                }
                println!("on the kernel program:");
                for (name, contract) in cnnc_compiler::lir::passes::PASSES {
                    println!("{name:<16}{contract}");
                }
                println!("opt-in (--winograd-tile 4):");
                for (name, contract) in cnnc_compiler::lir::passes::OPT_IN {
                    println!("{name:<16}{contract}");
                }
                return ExitCode::SUCCESS;
            }
            if let Err(e) = opt_in(&mut disable_pass, winograd_tile) {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
            let options =
                cnnc_compiler::passes::Options { disabled: disable_pass, dump_after: after, verify_each: true };
            if let Err(e) = options.validate() {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
            let extension = output.as_ref().and_then(|o| o.extension()).and_then(|e| e.to_str());
            let emit = emit.unwrap_or(match extension {
                Some("o") => Emit::Object,
                Some("h") => Emit::Header,
                _ => Emit::Summary,
            });
            let isa = match (&target, emit) {
                (None, _) => cnnc_codegen::aot::Target::Host,
                (Some(t), Emit::Object | Emit::Header) => match cnnc_codegen::aot::Target::parse(t) {
                    Some(isa) => isa,
                    None => {
                        eprintln!("error: unknown --target `{t}` (host, x86-64-v3, x86-64-v4)");
                        return ExitCode::from(EXIT_USAGE);
                    }
                },
                (Some(_), _) => {
                    eprintln!("error: --target goes with --emit object (or an --output ending in .o)");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            if options.dump_after.is_some() && !matches!(emit, Emit::TrainIr | Emit::InferIr) {
                eprintln!("error: --after shows a pass's output: use it with --emit train-ir or --emit infer-ir");
                return ExitCode::from(EXIT_USAGE);
            }
            let Some(c) = compile(&file) else { return ExitCode::from(EXIT_USAGE) };
            let status = report(&c, MessageFormat::Human, color);
            if status != ExitCode::SUCCESS {
                return status;
            }
            if matches!(emit, Emit::Onnx | Emit::Weights) {
                return build::export(&c, emit, model.as_deref(), output.as_deref(), weights.as_deref());
            }
            if matches!(emit, Emit::Object | Emit::Header) {
                if batch.is_some() {
                    eprintln!("error: --batch goes with --emit lir or memory: an object file's call takes any batch");
                    return ExitCode::from(EXIT_USAGE);
                }
                let (model, out, w) = (model.as_deref(), output.as_deref(), weights.as_deref());
                return build::object(&c, &file, emit, model, out, w, isa, &options);
            }
            if output.is_some() || weights.is_some() {
                eprintln!("error: --output and --weights go with --emit onnx, weights, object or header");
                return ExitCode::from(EXIT_USAGE);
            }
            build::build(&c, emit, model.as_deref(), &options, batch)
        }
        Command::Import { file, from, model, map, flatten, output } => {
            let Some(c) = compile(&file) else { return ExitCode::from(EXIT_USAGE) };
            let status = report(&c, MessageFormat::Human, Color::Auto);
            if status != ExitCode::SUCCESS {
                return status;
            }
            import::import(&c, model.as_deref(), &from, map.as_deref(), flatten, &output)
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
                disabled: {
                    let mut passes = a.disable_pass;
                    if let Err(e) = opt_in(&mut passes, a.winograd_tile) {
                        eprintln!("error: {e}");
                        return ExitCode::from(EXIT_USAGE);
                    }
                    passes
                },
            };
            finish(bench::run(&c, &args, compiled))
        }
        Command::Data(DataCommand::MnistDetection {
            out,
            mnist,
            train,
            test,
            size,
            least,
            most,
            smallest,
            largest,
            seed,
            landmarks,
        }) => {
            let o = cnnc_runtime::data::canvas::CanvasOptions {
                size,
                train,
                test,
                least,
                most,
                smallest,
                largest,
                seed,
                landmarks,
            };
            finish(data::mnist_detection(&mnist, &out, &o))
        }
        Command::Data(DataCommand::Anchors { dir, k, grid, name }) => finish(data::anchors(&dir, k, grid, &name)),
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

/// The exit code the diagnostics call for, printing nothing.
fn report_nothing(c: &Compilation) -> ExitCode {
    if !c.internal.is_empty() {
        ExitCode::from(EXIT_INTERNAL)
    } else if c.has_errors() {
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
