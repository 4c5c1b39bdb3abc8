//! `cnnc run`: train a model as its `train` section says, evaluate it, or predict on files.

use cnnc_compiler::elaborate::ModelInfo;
use cnnc_compiler::ir::op::Op;
use cnnc_compiler::train::{Arg, TrainSpec};
use cnnc_compiler::Compilation;
use cnnc_runtime::augment::{self, Pipeline};
use cnnc_runtime::detect::{self, Detection};
use cnnc_runtime::params::Params;
use cnnc_runtime::predict::{PredictError, Prediction, Predictor};
use cnnc_runtime::train::{self, RunOptions, Session};
use std::path::{Path, PathBuf};

/// What `cnnc run` was asked to do.
pub struct Args {
    pub file: PathBuf,
    pub model: Option<String>,
    pub out: Option<PathBuf>,
    pub weights: Option<PathBuf>,
    pub resume: bool,
    pub eval: bool,
    pub predict: Vec<PathBuf>,
    pub epochs: Option<usize>,
    pub limit: Option<usize>,
    pub quiet: bool,
    pub multi_crop: usize,
    pub ensemble: Vec<PathBuf>,
    pub preview: Option<PathBuf>,
    pub backend: cnnc_runtime::backend::Backend,
    pub init: Option<PathBuf>,
    pub output: Option<PathBuf>,
    /// With `resume`: from the save before the last when the last is incomplete.
    pub fallback: bool,
    /// Style transfer: the content image.
    pub content: Option<PathBuf>,
    /// Style transfer: the style image.
    pub style: Option<PathBuf>,
    /// Style transfer: optimizer steps.
    pub steps: Option<usize>,
    /// Draw the top patches of this layer's units.
    pub visualize: Option<String>,
    /// Draw this convolution's filters (empty: the first).
    pub filters: Option<String>,
    /// MTCNN's cascade over these images (the file's PNet, RNet and ONet).
    pub faces: Vec<PathBuf>,
    /// `--predict` over whole images with the model made fully convolutional: every window's
    /// result at once.
    pub slide: bool,
    /// Detection: the least score of a box `--predict` reports.
    pub threshold: f32,
    /// Detection: the IoU above which non-max suppression drops the lesser of two boxes.
    pub iou: f32,
    /// A one-shot database: the folder of people to enroll.
    pub enroll: Option<PathBuf>,
    /// Images to name from the database.
    pub identify: Vec<PathBuf>,
    /// Two images to compare.
    pub verify: Vec<PathBuf>,
    /// The database file.
    pub database: Option<PathBuf>,
    /// `--enroll`'s distance threshold, when given rather than chosen.
    pub distance: Option<f32>,
}

/// A failure with its exit code.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

pub fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure { code, message: message.into() }
}

pub const EXIT_INPUT: u8 = 2;
pub const EXIT_DIVERGED: u8 = 4;
pub const EXIT_INTERNAL: u8 = 3;

/// Runs the command; `Ok` carries what to print last.
pub fn run(c: &Compilation, args: &Args) -> Result<(), Failure> {
    let ranks = cnnc_runtime::dist::place().1;
    if ranks > 1 {
        let other = [
            (!args.faces.is_empty(), "--faces"),
            (args.visualize.is_some(), "--visualize"),
            (args.filters.is_some(), "--filters"),
            (args.eval, "--eval"),
            (!args.predict.is_empty(), "--predict"),
            (args.preview.is_some(), "--preview-augment"),
            (args.enroll.is_some(), "--enroll"),
            (!args.identify.is_empty(), "--identify"),
            (!args.verify.is_empty(), "--verify"),
        ];
        if let Some((_, flag)) = other.iter().find(|(on, _)| *on) {
            return Err(fail(
                EXIT_INPUT,
                format!("mpirun shares training between processes; run {flag} as one process, without mpirun"),
            ));
        }
    }
    if !args.faces.is_empty() {
        return crate::faces::run(c, args);
    }
    let model = pick_model(c, args)?;
    if args.visualize.is_some() || args.filters.is_some() {
        return crate::visualize::run(model, c.trains.iter().find(|t| t.model == model.name), args);
    }
    let image_section =
        c.trains.iter().find(|t| t.model == model.name && t.data.as_ref().is_some_and(|d| d.name == "style_transfer"));
    if image_section.is_some() && ranks > 1 {
        return Err(fail(
            EXIT_INPUT,
            "mpirun shares the examples of a batch between processes, and style transfer optimizes one image: run it as \
             one process, without mpirun",
        ));
    }
    if let Some(spec) = image_section.filter(|_| args.predict.is_empty()) {
        if args.eval || args.resume || args.init.is_some() || args.preview.is_some() {
            return Err(fail(
                EXIT_INPUT,
                "the train section optimizes an image (style transfer): --eval, --resume, --init and \
                 --preview-augment are for training weights; give the model's weights with --weights FILE",
            ));
        }
        return crate::style::run(model, spec, args);
    }
    if args.content.is_some() || args.style.is_some() || args.steps.is_some() {
        return Err(fail(
            EXIT_INPUT,
            format!(
                "--content, --style and --steps are for style transfer, and the train section of `{}` trains weights \
                 (style transfer's has `data style_transfer(content: ..., style: ...)`)",
                model.name
            ),
        ));
    }
    if args.output.is_some() && args.predict.is_empty() && !args.eval && args.enroll.is_none() {
        return Err(fail(
            EXIT_INPUT,
            "--output writes the outputs of --predict or --eval, or --enroll's database: give the files to predict on, \
             or --eval",
        ));
    }
    if args.init.is_some() && (args.eval || !args.predict.is_empty()) {
        return Err(fail(
            EXIT_INPUT,
            "--init starts training from pretrained weights; --eval and --predict take --weights FILE",
        ));
    }
    let spec = c.trains.iter().find(|t| t.model == model.name).cloned();
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&model.name));
    let base = args.file.parent().map(Path::to_path_buf).unwrap_or_default();
    if args.enroll.is_some() || !args.identify.is_empty() || !args.verify.is_empty() {
        return crate::facedb::run(model, spec.as_ref(), args, &out, &base);
    }
    if !args.predict.is_empty() {
        return predict(model, spec.as_ref(), args, &out);
    }
    let Some(mut spec) = spec else {
        return Err(fail(
            EXIT_INPUT,
            format!(
                "model `{}` has no train section: add `train {} {{ ... }}`, or pass --predict FILE",
                model.name, model.name
            ),
        ));
    };
    if let Some(e) = args.epochs {
        spec.epochs = e;
    }
    let input = model.graph.inputs().first().map(|&id| model.graph.node(id).shape.0.clone()).unwrap_or_default();
    let (data, pipeline) = data_of(model, &spec, &base, args.limit)?;
    if let Some(path) = &args.preview {
        pipeline
            .preview(&data, 8, 8, path)
            .map_err(|e| fail(EXIT_INPUT, format!("cannot write `{}`: {e}", path.display())))?;
        println!("wrote {} augmented training examples to {}", data.train.len().min(64), path.display());
        return Ok(());
    }
    if args.eval {
        let mut session = Session::new(model, &spec).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
        session.set_backend(args.backend).map_err(|e| fail(EXIT_INTERNAL, e.to_string()))?;
        session.check(&data).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
        if session.feed().is_some() && (args.multi_crop > 1 || args.ensemble.len() > 1) {
            return Err(fail(
                EXIT_INPUT,
                "--multi-crop and --ensemble average the class probabilities of single examples: a model fed pairs or \
                 triplets is evaluated on its own",
            ));
        }
        if !session.classifies && (args.multi_crop > 1 || args.ensemble.len() > 1) {
            return Err(fail(
                EXIT_INPUT,
                "--multi-crop and --ensemble average class probabilities: they need a model trained with softmax_cross_entropy",
            ));
        }
        let models = weights_of(&session.params, args, &out)?;
        if args.output.is_some() && (models.len() > 1 || args.multi_crop > 1) {
            return Err(fail(
                EXIT_INPUT,
                "--eval --output writes one model's outputs: without --ensemble and --multi-crop",
            ));
        }
        if args.output.is_some() {
            // Each test example in every input: right for a Siamese network's embeddings only.
            cnnc_runtime::predict::one_input_each(&session.infer).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
        }
        // The test split as evaluation sees it, once: an embedding on `views` views of each example.
        let eval = pipeline.for_eval_views(&data, session.views(spec.views));
        let (loss, acc) = if models.len() == 1 && args.multi_crop <= 1 {
            session.params = models.into_iter().next().unwrap_or_default();
            if let Some(path) = &args.output {
                let exact =
                    session.outputs(&eval, &eval.test, spec.batch).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
                write_outputs(path, &exact, "the test split".into())?;
            }
            session.evaluate(&eval, &eval.test, spec.batch)
        } else {
            cnnc_runtime::evaluate::averaged(&session, &models, &data, &pipeline, args.multi_crop, spec.batch)
        }
        .map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
        println!("test loss: {loss:.4}");
        if data.target.len() == 1 {
            let outputs =
                session.outputs(&eval, &eval.test, spec.batch).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
            let name = &session.infer.node(session.prediction()).name;
            let predicted = outputs.iter().find(|(n, _, _)| n == name).or(outputs.first());
            if let Some((_, _, values)) = predicted {
                print_landmark_error(values, &eval.test.t, data.target[0], &input);
            }
            return Ok(());
        }
        if let Some(verified) =
            session.verify(&eval, &eval.test, spec.batch).map_err(|e| fail(EXIT_INPUT, e.to_string()))?
        {
            print_verification(&verified, spec.unseen, &out)?;
            return Ok(());
        }
        if let Some((_, grid)) = session.detector() {
            let (found, truths) = session
                .detections(&eval, &eval.test, spec.batch, 0.01, args.iou)
                .map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
            print_map(&found, &truths, grid.classes);
            return Ok(());
        }
        print_accuracy(acc, session.evaluated(&eval.test), session.feed());
        print_pair_auc(&session, &eval, spec.batch)?;
        return Ok(());
    }
    let leader = cnnc_runtime::dist::leader();
    if !args.quiet && leader {
        println!(
            "training {} on {} examples ({} held out), {} epochs, batch {}; writing to {}{}",
            model.name,
            data.train.len(),
            data.test.len(),
            spec.epochs,
            spec.batch,
            out.display(),
            if ranks > 1 { format!("; {ranks} processes share each batch") } else { String::new() }
        );
    }
    if args.weights.is_some() {
        return Err(fail(
            EXIT_INPUT,
            "--weights chooses the weights that --eval and --predict use; to start training from them, use --init FILE",
        ));
    }
    let mut opts = RunOptions {
        out: out.clone(),
        resume: args.resume,
        fallback: args.fallback,
        quiet: args.quiet,
        backend: args.backend,
        init: args.init.clone(),
        body: None,
    };
    // `cache true`: the frozen body runs once per example; the head trains on what it gave.
    if spec.cache && ranks > 1 {
        return Err(fail(
            EXIT_INPUT,
            "`cache true` computes the frozen body's activations once, in one process: train the head as one \
             process, without mpirun (or leave out `cache true` to share the whole model's steps)",
        ));
    }
    let cached = if spec.cache {
        let from = (args.init.as_deref(), args.resume);
        let c = cnnc_runtime::frozen::prepare(model, &spec, &data, &pipeline, from, args.backend, &out).map_err(
            |e| match e {
                train::RunError::Internal(_) => fail(EXIT_INTERNAL, e.to_string()),
                _ => fail(EXIT_INPUT, e.to_string()),
            },
        )?;
        if let (Some(init), false) = (&args.init, args.quiet) {
            let total = c.body.layout.entries().len();
            println!(
                "frozen body: {} of its {total} parameters from {}{}",
                total - c.fresh.len(),
                init.display(),
                if c.fresh.is_empty() { String::new() } else { format!(" (fresh: {})", c.fresh.join(", ")) }
            );
        }
        if !args.quiet {
            let how = if c.reused { "read back from" } else { "computed and kept in" };
            println!(
                "frozen body up to `{}` {:?}: activations of {} examples {how} {} ({:.2} s); training the head alone",
                c.cut.0,
                c.cut.1,
                c.data.train.len() + c.data.test.len(),
                cnnc_runtime::frozen::cache_path(&out).display(),
                c.seconds
            );
        }
        // The head starts from the file's values of its own parameters, if it has any.
        if let Some(init) = &args.init {
            // Its names alone, from the header (`prepare` has read and checked the whole file).
            let head = cnnc_compiler::params::ParamLayout::of(&c.model.graph);
            // (A file that does not read stays, for the run to report.)
            if let Some((names, _)) = cnnc_runtime::weights::header(init) {
                if !head.entries().iter().any(|e| names.contains(&e.name)) {
                    opts.init = None;
                }
            }
        }
        opts.body = Some(c.body.clone());
        Some(c)
    } else {
        None
    };
    let (model, data, pipeline) = match &cached {
        Some(c) => (&c.model, &c.data, &c.pipeline),
        None => (model, &data, &pipeline),
    };
    match train::train(model, &spec, data, pipeline, &opts) {
        Ok(_) if !leader => Ok(()),
        Ok((session, history)) => {
            println!("weights: {}", train::weights_path(&out).display());
            if let Some(last) = history.last() {
                println!("test loss: {:.4}", last.test_loss);
                let eval = pipeline.for_eval_views(data, session.views(spec.views));
                // (None, without reading the data, for a model that embeds nothing.)
                let verified =
                    session.verify(&eval, &eval.test, spec.batch).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
                match verified {
                    Some(verified) => print_verification(&verified, spec.unseen, &out)?,
                    None => {
                        let n = session.evaluated(&eval.test);
                        print_accuracy(last.test_accuracy, n, session.feed());
                        print_pair_auc(&session, &eval, spec.batch)?;
                    }
                }
            }
            Ok(())
        }
        Err(e @ train::RunError::NonFinite { .. }) => Err(fail(EXIT_DIVERGED, e.to_string())),
        Err(e @ train::RunError::Internal(_)) => Err(fail(EXIT_INTERNAL, e.to_string())),
        Err(e) => Err(fail(EXIT_INPUT, e.to_string())),
    }
}

/// The weights to evaluate or predict with: every `--ensemble` file, else `--weights`, else the
/// run's own. `template` holds every parameter (for names and shapes).
/// Whether the model has parameters that training sets (not only constants written in the file).
pub(crate) fn trainable(model: &ModelInfo) -> bool {
    model.graph.node_ids().any(|id| matches!(&model.graph.node(id).op, Op::Param(p) if p.value.is_none()))
}

pub(crate) fn weights_of(template: &Params, args: &Args, out: &Path) -> Result<Vec<Params>, Failure> {
    let files = if args.ensemble.is_empty() {
        vec![args.weights.clone().unwrap_or_else(|| train::weights_path(out))]
    } else {
        args.ensemble.clone()
    };
    files
        .iter()
        .map(|f| {
            if !f.exists() {
                return Err(fail(
                    EXIT_INPUT,
                    format!(
                        "no weights at `{}`: train first (`cnnc run {}`) or pass --weights FILE",
                        f.display(),
                        args.file.display()
                    ),
                ));
            }
            let mut p = template.clone();
            cnnc_runtime::weights::load_into(f, &mut p).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
            Ok(p)
        })
        .collect()
}

/// Prints how an embedding tells the test split's identities apart, and draws the distances of
/// its same and different pairs (OUT/distances.png).
fn print_verification(verified: &cnnc_runtime::metric::Verified, unseen: usize, out: &Path) -> Result<(), Failure> {
    let (verification, (one_shot, asked)) = (&verified.verification, &verified.one_shot);
    let whose = if unseen > 0 {
        format!("of the {unseen} identities never seen in training")
    } else {
        "of the test split".into()
    };
    let Some(v) = verification else {
        println!("verification: the test split has no pair of the same identity and of two ({whose})");
        return Ok(());
    };
    println!("verification on every pair {whose}: {} same, {} different", v.same, v.different);
    println!("  ROC AUC: {:.4}", v.auc);
    println!(
        "  accuracy: {:.2}% at distance threshold {:.4} (same and different pairs weigh alike)",
        v.accuracy * 100.0,
        v.threshold
    );
    for (far, tar) in &v.tar {
        println!("  TAR at FAR {far}: {:.2}%", tar * 100.0);
    }
    if one_shot.is_finite() {
        println!(
            "one-shot identification: {:.2}% of {asked} examples named by the nearest of one enrolled example per identity",
            one_shot * 100.0
        );
    }
    let path = out.join("distances.png");
    std::fs::create_dir_all(out).map_err(|e| fail(EXIT_INPUT, format!("cannot create `{}`: {e}", out.display())))?;
    cnnc_runtime::plot::distances(&path, &verified.pairs, v.threshold)
        .map_err(|e| fail(EXIT_INPUT, format!("cannot write `{}`: {e}", path.display())))?;
    println!("distances of same and different pairs: {}", path.display());
    Ok(())
}

/// A model of pairs: how well its scores rank same above different pairs.
fn print_pair_auc(session: &Session, eval: &cnnc_runtime::data::Dataset, batch: usize) -> Result<(), Failure> {
    if let Some(auc) = session.pair_auc(eval, &eval.test, batch).map_err(|e| fail(EXIT_INPUT, e.to_string()))? {
        println!("  ROC AUC of its same-or-not scores: {auc:.4}");
    }
    Ok(())
}

/// Accuracy on `n` test examples, or on `n` test pairs (each test example with another, of its
/// identity or not) for a model fed pairs.
fn print_accuracy(acc: f64, n: usize, feed: Option<cnnc_compiler::train::FeedKind>) {
    if !acc.is_finite() {
        return;
    }
    let right = (acc * n as f64).round() as usize;
    match feed {
        Some(cnnc_compiler::train::FeedKind::Pairs) => println!(
            "test accuracy: {:.2}% ({right}/{n} test pairs told same or different: each test example with others, of \
             its identity or not)",
            acc * 100.0
        ),
        _ => println!("test accuracy: {:.2}% ({right}/{n})", acc * 100.0),
    }
}

/// The mean distance between predicted and labelled points, in pixels of the model's input.
fn print_landmark_error(predicted: &[f32], truth: &[f32], per: usize, input: &[usize]) {
    let (h, w) = (input.first().copied().unwrap_or(1) as f32, input.get(1).copied().unwrap_or(1) as f32);
    let mut distances = Vec::new();
    for (p, t) in predicted.chunks_exact(per).zip(truth.chunks_exact(per)) {
        for (a, b) in p.chunks_exact(2).zip(t.chunks_exact(2)) {
            distances.push(((a[0] - b[0]) * w).hypot((a[1] - b[1]) * h));
        }
    }
    let n = distances.len().max(1) as f32;
    let mean = distances.iter().sum::<f32>() / n;
    let within = |d: f32| 100.0 * distances.iter().filter(|&&v| v <= d).count() as f32 / n;
    println!(
        "landmark error: mean {mean:.2} pixels of the {w}×{h} input over {} points ({} an image); within 2 px: {:.1}%, within 4 px: {:.1}%",
        distances.len(),
        per / 2,
        within(2.0),
        within(4.0)
    );
}

/// mAP at IoU 0.5 and over 0.5:0.95, and the AP of each class at 0.5, as COCO computes them.
fn print_map(found: &[Vec<Detection>], truths: &[Vec<detect::Object>], classes: usize) {
    let (per_class, map50) = detect::average_precision(found, truths, classes, 0.5);
    let objects: usize = truths.iter().map(Vec::len).sum();
    println!("test mAP@0.5: {:.2}% over {} images and {objects} objects", 100.0 * map50, truths.len());
    println!("test mAP@0.5:0.95: {:.2}%", 100.0 * detect::map_50_95(found, truths, classes));
    let shown: Vec<String> =
        per_class.iter().enumerate().filter_map(|(c, ap)| ap.map(|ap| format!("{c}: {:.1}%", 100.0 * ap))).collect();
    println!("AP@0.5 by class: {}", shown.join("  "));
    // One object an image (localization): how well the best box fits it.
    if truths.iter().all(|t| t.len() <= 1) {
        let ious: Vec<f32> = found
            .iter()
            .zip(truths)
            .filter_map(|(f, t)| {
                let truth = t.first()?;
                Some(f.first().map_or(0.0, |best| detect::iou(&best.corners, &truth.corners())))
            })
            .collect();
        let mean = ious.iter().sum::<f32>() / ious.len().max(1) as f32;
        let hits = ious.iter().filter(|&&v| v >= 0.5).count();
        println!(
            "best box: mean IoU {mean:.3} with the object; IoU ≥ 0.5 on {hits} of {} images ({:.2}%)",
            ious.len(),
            100.0 * hits as f64 / ious.len().max(1) as f64
        );
    }
}

fn pick_model<'c>(c: &'c Compilation, args: &Args) -> Result<&'c ModelInfo, Failure> {
    if let Some(name) = &args.model {
        return c.models.iter().find(|m| &m.name == name).ok_or_else(|| {
            let names: Vec<&str> = c.models.iter().map(|m| m.name.as_str()).collect();
            fail(EXIT_INPUT, format!("no model `{name}` in this file (models: {})", names.join(", ")))
        });
    }
    let trained: Vec<&ModelInfo> = c.models.iter().filter(|m| c.trains.iter().any(|t| t.model == m.name)).collect();
    match (trained.as_slice(), c.models.as_slice()) {
        ([one], _) => Ok(one),
        (_, [one]) => Ok(one),
        (_, []) => Err(fail(EXIT_INPUT, "the file defines no model")),
        _ => Err(fail(EXIT_INPUT, "the file has several models: choose one with --model NAME")),
    }
}

/// The train section's data, read as its `preprocess` says (the last `unseen` classes held out
/// as the test split, the first `limit` training examples kept), and its augmentation pipeline.
pub(crate) fn data_of(
    model: &ModelInfo,
    spec: &TrainSpec,
    base: &Path,
    limit: Option<usize>,
) -> Result<(cnnc_runtime::data::Dataset, Pipeline), Failure> {
    let data_call = spec.data.as_ref().ok_or_else(|| fail(EXIT_INPUT, "the train section has no data source"))?;
    let input = model.graph.inputs().first().map(|&id| model.graph.node(id).shape.0.clone()).unwrap_or_default();
    let (prep, values) = cnnc_runtime::preprocess::steps(&spec.preprocess);
    let mut data = cnnc_runtime::data::load(data_call, base, &input, spec.seed, &prep)
        .map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
    if spec.unseen > 0 {
        data = data.hold_out(spec.unseen).map_err(|e| fail(EXIT_INPUT, e))?;
    }
    if let Some(limit) = limit.filter(|&l| l < data.train.len()) {
        let f = data.features();
        data.train.truncate(f, limit);
    }
    let steps = [augment::steps(&spec.augment), values].concat();
    let pipeline = Pipeline::new(steps, &data.shape, &input, &data.train, spec.seed)
        .map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
    Ok((data, pipeline))
}

/// Calls `f` with a predictor of `model`'s inference graph (its weights as `--weights`,
/// `--ensemble` or the run's own say, images read as the train section reads them), its graph,
/// and its softmax outputs.
pub(crate) fn with_predictor<T>(
    model: &ModelInfo,
    spec: Option<&TrainSpec>,
    args: &Args,
    out: &Path,
    f: impl FnOnce(&Predictor, &cnnc_compiler::ir::Graph, &[String]) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let seed = spec.map_or(0, |s| s.seed);
    let mut pipe =
        cnnc_compiler::passes::Pipeline::new(Default::default()).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
    let graph = cnnc_compiler::passes::inference::run(model, &mut pipe).map_err(|e| fail(3, e.to_string()))?;
    let keep: Vec<cnnc_compiler::ir::ValueId> = graph.outputs().iter().map(|(_, id)| (*id).into()).collect();
    cnnc_runtime::train::fits_in_memory(&graph, 1, &[], &keep, 4).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
    let params = Params::init(&graph, seed);
    let models = if trainable(model) { weights_of(&params, args, out)? } else { vec![params] };
    let input = model.graph.inputs().first().map(|&id| model.graph.node(id).shape.0.clone()).unwrap_or_default();
    let input_name = model.graph.inputs().first().map(|&id| model.graph.node(id).name.clone()).unwrap_or_default();
    let data_call = spec.and_then(|s| s.data.as_ref());
    let (prep, values) = cnnc_runtime::preprocess::steps(spec.map_or(&[][..], |s| &s.preprocess[..]));
    let data_shape =
        data_call.map_or_else(|| input.clone(), |d| prep.shape(&cnnc_runtime::data::example_shape(d, &input)));
    let steps = [spec.map(|s| augment::steps(&s.augment)).unwrap_or_default(), values].concat();
    let pipeline = Pipeline::new(steps, &data_shape, &input, &Default::default(), seed)
        .map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
    let pad = data_call.filter(|d| d.name == "mnist").map_or(0, |d| d.num("pad", 0.0) as usize);
    let softmax: Vec<String> = spec
        .map(|s| {
            s.loss
                .iter()
                .filter(|t| t.call.name == "softmax_cross_entropy")
                .filter_map(|t| match t.call.args.get("logits") {
                    Some(Arg::Name(n)) => Some(n.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let predictor = Predictor {
        graph: &graph,
        models: &models,
        pipeline: &pipeline,
        pad,
        prep: &prep,
        crops: args.multi_crop,
        softmax: &softmax,
        backend: args.backend,
        input_name: &input_name,
        programs: cnnc_runtime::predict::programs_for(&graph),
    };
    f(&predictor, &graph, &softmax)
}

fn predict(model: &ModelInfo, spec: Option<&TrainSpec>, args: &Args, out: &Path) -> Result<(), Failure> {
    with_predictor(model, spec, args, out, |predictor, graph, softmax| {
        predict_with(model, spec, args, out, predictor, graph, softmax)
    })
}

#[allow(clippy::too_many_arguments)]
fn predict_with(
    model: &ModelInfo,
    spec: Option<&TrainSpec>,
    args: &Args,
    out: &Path,
    predictor: &Predictor,
    graph: &cnnc_compiler::ir::Graph,
    softmax: &[String],
) -> Result<(), Failure> {
    let models = predictor.models;
    let prep = predictor.prep;
    let npy = args.output.as_ref().is_some_and(|p| p.extension().is_some_and(|e| e == "npy"));
    if let Some(path) = &args.output {
        if npy && graph.outputs().len() != 1 {
            return Err(fail(
                EXIT_INPUT,
                format!(
                    "--output {}: a .npy file holds one tensor and this model has {} outputs; write a .safetensors file",
                    path.display(),
                    graph.outputs().len()
                ),
            ));
        }
    }
    if args.slide {
        let seed = spec.map_or(0, |s| s.seed);
        return slide(graph, &models[0], prep, &values_of(spec), softmax, args, seed);
    }
    let detector = spec
        .and_then(|s| cnnc_compiler::passes::training::detector(model, s))
        .map(|(name, g)| (name, detect::Grid { rows: g.rows, cols: g.cols, anchors: g.anchors, classes: g.classes }));
    // The output an `l2` loss regresses points onto, when the section reads `landmarks` data.
    let points = spec.filter(|s| s.data.as_ref().is_some_and(|d| d.name == "landmarks")).and_then(|s| {
        s.loss.iter().find_map(|t| match (t.call.name.as_str(), t.call.args.get("output")) {
            ("l2", Some(Arg::Name(n))) => Some(n.clone()),
            _ => None,
        })
    });
    let mut exact: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for file in &args.predict {
        let failed = |e: PredictError| match e {
            PredictError::Internal(_) => fail(EXIT_INTERNAL, e.to_string()),
            _ => fail(EXIT_INPUT, e.to_string()),
        };
        let examples = predictor.outputs(file).map_err(failed)?;
        let batch = examples.len() > 1;
        for (index, outputs) in examples.into_iter().enumerate() {
            if args.output.is_some() {
                for (name, value) in &outputs {
                    match exact.iter_mut().find(|(n, _, _)| n == name) {
                        Some((_, shape, values)) => {
                            shape[0] += 1;
                            values.extend(value.iter());
                        }
                        None => {
                            let shape = std::iter::once(1).chain(value.shape().iter().copied()).collect();
                            exact.push((name.clone(), shape, value.iter().copied().collect()));
                        }
                    }
                }
            }
            let out = if batch { out.join(index.to_string()) } else { out.to_path_buf() };
            if let Some((name, grid)) = &detector {
                let Some((_, value)) = outputs.iter().find(|(n, _)| n == name) else { continue };
                let flat: Vec<f32> = value.iter().copied().collect();
                let found = detect::nms(grid.decode(&flat, args.threshold), args.iou);
                show_detections(file, &found, &out, batch.then_some(index))?;
                continue;
            }
            // A landmark model: its points, in the file's pixels, printed and drawn.
            if let Some(name) = &points {
                if let Some((_, value)) = outputs.iter().find(|(n, _)| n == name) {
                    let flat: Vec<f32> = value.iter().copied().collect();
                    show_points(file, &flat, &out)?;
                    continue;
                }
            }
            let answers = predictor.answers(outputs, &out).map_err(failed)?;
            if batch {
                println!("{}[{index}]:", file.display());
            } else {
                println!("{}:", file.display());
            }
            print_answers(answers);
        }
    }
    if let Some(path) = &args.output {
        let files: Vec<String> = args.predict.iter().map(|f| f.display().to_string()).collect();
        write_outputs(path, &exact, files.join("\n"))?;
    }
    Ok(())
}

/// The value steps (scale, normalize) of a section's preprocessing.
fn values_of(spec: Option<&TrainSpec>) -> Vec<augment::Step> {
    cnnc_runtime::preprocess::steps(spec.map_or(&[][..], |s| &s.preprocess[..])).1
}

/// `--predict --slide`: each image read at its own size, the inference graph made fully
/// convolutional for it (dense layers as convolutions, the same weights) and run once; each
/// output is a map of the windows' results, printed as the top class of every window (where its
/// probability reaches `--threshold`) and written with `--output`.
fn slide(
    graph: &cnnc_compiler::ir::Graph,
    params: &Params,
    prep: &cnnc_runtime::preprocess::Prep,
    values: &[augment::Step],
    softmax: &[String],
    args: &Args,
    seed: u64,
) -> Result<(), Failure> {
    use cnnc_compiler::passes::sliding;
    let input = graph.inputs().first().map(|&x| graph.node(x).shape.0.clone()).unwrap_or_default();
    let [wh, ww, c] = input[..] else {
        return Err(fail(EXIT_INPUT, format!("--slide runs over images; this model's input is {input:?}")));
    };
    let stride = sliding::window_stride(graph);
    let whole = cnnc_runtime::preprocess::Prep { resize: None, ..prep.clone() };
    let mut exact: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for file in &args.predict {
        let (_, w, h) = detect::read_rgb(file)
            .map_err(|e| fail(EXIT_INPUT, format!("--slide reads images: cannot read `{}`: {e}", file.display())))?;
        if h < wh || w < ww {
            return Err(fail(
                EXIT_INPUT,
                format!("`{}` is {w}×{h}, smaller than the model's {ww}×{wh} window", file.display()),
            ));
        }
        let shape = [h, w, c];
        let example =
            cnnc_runtime::data::load_image_as(file, &shape, &whole).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
        let pipeline = Pipeline::new(values.to_vec(), &shape, &shape, &Default::default(), seed)
            .map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
        let x = cnnc_runtime::reference::Tensor::from_shape_vec(vec![1, h, w, c], pipeline.eval(&example))
            .map_err(|e| fail(EXIT_INTERNAL, e.to_string()))?;
        let outputs =
            cnnc_runtime::predict::outputs_slid(graph, params, x.view(), args.backend).map_err(|e| match e {
                PredictError::Internal(_) => fail(EXIT_INTERNAL, e.to_string()),
                _ => fail(EXIT_INPUT, format!("`{}`: {e}", file.display())),
            })?;
        println!("{}: {ww}×{wh} windows every {} pixels", file.display(), list(&stride));
        for (name, value) in outputs {
            let value = if softmax.contains(&name) { cnnc_runtime::reference::softmax(&value.view()) } else { value };
            let flat: Vec<f32> = value.iter().copied().collect();
            print_windows(&name, &value.shape()[1..], &flat, softmax.contains(&name), args.threshold);
            if args.output.is_some() {
                exact.push((format!("{name}:{}", file.display()), value.shape().to_vec(), flat));
            }
        }
    }
    if let Some(path) = &args.output {
        let files: Vec<String> = args.predict.iter().map(|f| f.display().to_string()).collect();
        write_outputs(path, &exact, files.join("\n"))?;
    }
    Ok(())
}

fn list(v: &[usize]) -> String {
    v.iter().map(ToString::to_string).collect::<Vec<_>>().join("×")
}

/// One output map `[rows, cols, n]` (`values` row-major): its shape, and the top class of every
/// window (`·` where its probability is below `threshold`, for probabilities).
fn print_windows(name: &str, shape: &[usize], values: &[f32], probabilities: bool, threshold: f32) {
    println!("  `{name}` {shape:?}");
    let [rows, cols, n] = shape[..] else { return };
    if n < 2 {
        return;
    }
    let what = if probabilities { format!(" (· below probability {threshold})") } else { String::new() };
    println!("  top class of each window{what}:");
    let width = (n - 1).to_string().len();
    for r in 0..rows {
        let row: Vec<String> = (0..cols)
            .map(|col| {
                let scores = values[(r * cols + col) * n..(r * cols + col + 1) * n].iter().copied();
                let (best, p) = scores.enumerate().fold((0, f32::MIN), |b, (k, v)| if v > b.1 { (k, v) } else { b });
                if probabilities && p < threshold {
                    format!("{:>width$}", "·")
                } else {
                    format!("{best:>width$}")
                }
            })
            .collect();
        println!("    {}", row.join(" "));
    }
}

/// Prints a landmark model's points (fractions of the image, `x, y` pairs) in `file`'s pixels
/// and draws them on it, to `OUT/STEM.points.png`.
fn show_points(file: &Path, fractions: &[f32], out: &Path) -> Result<(), Failure> {
    println!("{}:", file.display());
    let picture = if cnnc_runtime::predict::is_tensor_file(file) { None } else { detect::read_rgb(file).ok() };
    let (w, h) = picture.as_ref().map_or((1, 1), |p| (p.1, p.2));
    let pixels: Vec<[f32; 2]> = fractions.chunks_exact(2).map(|p| [p[0] * w as f32, p[1] * h as f32]).collect();
    for (k, p) in pixels.iter().enumerate() {
        println!("  point {}: ({:.1}, {:.1})", k + 1, p[0], p[1]);
    }
    let Some((rgb, w, h)) = picture else { return Ok(()) };
    let scale = enlargement(w, h);
    let mut drawn = detect::draw(&rgb, w, h, scale, &[]);
    let mut pen = detect::Pen::new(&mut drawn, w * scale, h * scale);
    for p in &pixels {
        let (x, y) = ((p[0] * scale as f32) as i64, (p[1] * scale as f32) as i64);
        pen.dot(x, y, (scale as i64).max(2), [230, 30, 30]);
    }
    write_drawing(file, "points", &drawn, w * scale, h * scale, out)
}

/// How many times a picture of `w × h` is enlarged to be at least 256 pixels a side.
fn enlargement(w: usize, h: usize) -> usize {
    (256 / w.min(h).max(1)).max(1)
}

/// Writes a drawing made over `file` to `OUT/STEM.WHAT.png` and says so.
pub(crate) fn write_drawing(
    file: &Path,
    what: &str,
    rgb: &[u8],
    w: usize,
    h: usize,
    out: &Path,
) -> Result<(), Failure> {
    std::fs::create_dir_all(out).map_err(|e| fail(EXIT_INPUT, format!("cannot create `{}`: {e}", out.display())))?;
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let path = out.join(format!("{stem}.{what}.png"));
    cnnc_runtime::atomic::write_png(&path, rgb, w, h, 3)
        .map_err(|e| fail(EXIT_INPUT, format!("cannot write `{}`: {e}", path.display())))?;
    println!("  drawn: {}", path.display());
    Ok(())
}

/// Prints the boxes found in `file` (in its pixels) and draws them on it, to
/// `OUT/STEM.boxes.png` (enlarged to at least 256 pixels a side).
fn show_detections(file: &Path, found: &[Detection], out: &Path, index: Option<usize>) -> Result<(), Failure> {
    match index {
        Some(i) => println!("{}[{i}]: {} objects", file.display(), found.len()),
        None => println!("{}: {} objects", file.display(), found.len()),
    }
    // (The file was read as the model's input already: a tensor file has no picture.)
    let picture = if cnnc_runtime::predict::is_tensor_file(file) { None } else { detect::read_rgb(file).ok() };
    let (w, h) = picture.as_ref().map_or((1, 1), |p| (p.1, p.2));
    for d in found {
        let c = d.corners;
        println!(
            "  class {}  score {:.3}  box ({:.0}, {:.0}) to ({:.0}, {:.0})",
            d.class,
            d.score,
            c[0].clamp(0.0, 1.0) * w as f32,
            c[1].clamp(0.0, 1.0) * h as f32,
            c[2].clamp(0.0, 1.0) * w as f32,
            c[3].clamp(0.0, 1.0) * h as f32
        );
    }
    let Some(picture) = picture else { return Ok(()) };
    let scale = enlargement(w, h);
    write_drawing(file, "boxes", &detect::draw(&picture.0, w, h, scale, found), w * scale, h * scale, out)
}

/// Writes outputs stacked over examples to `path`: a `.npy` file (one output) or a
/// safetensors file (every output), with `source` (what was run on) in its metadata.
fn write_outputs(path: &Path, exact: &[(String, Vec<usize>, Vec<f32>)], source: String) -> Result<(), Failure> {
    let rows: usize = exact.first().map_or(0, |(_, s, _)| s[0]);
    if path.extension().is_some_and(|e| e == "npy") {
        let [(_, shape, values)] = exact else {
            return Err(fail(
                EXIT_INPUT,
                format!(
                    "--output {}: a .npy file holds one tensor and there are {} outputs; write a .safetensors file",
                    path.display(),
                    exact.len()
                ),
            ));
        };
        cnnc_runtime::weights::save_npy(path, shape, values).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
    } else {
        let named: Vec<cnnc_runtime::weights::Named> =
            exact.iter().map(|(n, s, v)| (n.as_str(), s.as_slice(), v.as_slice())).collect();
        let mut meta = std::collections::HashMap::new();
        meta.insert("files".to_string(), source);
        cnnc_runtime::weights::save(path, &named, meta).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
    }
    println!("wrote every output ({} of them, {rows} examples, full precision) to {}", exact.len(), path.display());
    Ok(())
}

/// Prints one example's answers: top classes, written maps, or the first values.
fn print_answers(answers: Vec<Prediction>) {
    for a in answers {
        match a {
            Prediction::Classes { output, top, probabilities } => {
                let what = if probabilities { "probability" } else { "score" };
                println!("  {output}: top classes ({what})");
                for (class, score) in top {
                    println!("    {class:>4}  {score:.4}");
                }
            }
            Prediction::Image { output, path } => println!("  {output}: wrote {}", path.display()),
            Prediction::Values { output, shape, values } => {
                let shown: Vec<String> = values.iter().take(8).map(|v| format!("{v:.4}")).collect();
                println!("  {output} {shape:?}: [{}{}]", shown.join(", "), if values.len() > 8 { ", ..." } else { "" });
            }
        }
    }
}
