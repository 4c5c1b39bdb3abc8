//! A one-shot database of people, from a trained encoder (a model whose train section mines
//! triplets, or any model with one output): `--enroll DIR` embeds every image of DIR/PERSON/ and
//! writes the embeddings with the distance threshold chosen on the train section's held-out
//! pairs; `--identify` names the person in an image, or says they are not in the database;
//! `--verify` says whether two images show one person.
//!
//! The database is a safetensors file (`embeddings` `[images, d]`) whose metadata names each
//! row's person, the model, its output, the threshold and the checksum of the weights that made
//! it, so that a database is never read with another model or other weights.

use crate::run::{data_of, fail, with_predictor, Args, Failure, EXIT_INPUT, EXIT_INTERNAL};
use cnnc_compiler::elaborate::ModelInfo;
use cnnc_compiler::train::{Arg, FeedKind, TrainSpec};
use cnnc_runtime::predict::{PredictError, Predictor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const FORMAT: &str = "cnnc-people";

/// The file `--identify` and `--verify` read and `--enroll` writes.
fn database_path(args: &Args, out: &Path) -> PathBuf {
    match (&args.enroll, &args.output, &args.database) {
        (Some(_), Some(o), _) => o.clone(),
        (_, _, Some(d)) => d.clone(),
        _ => out.join("faces.safetensors"),
    }
}

/// The output that embeds: the first triplet loss's (a given triplet's anchor), else the model's
/// only output.
fn embedding(model: &ModelInfo, spec: Option<&TrainSpec>) -> Result<String, Failure> {
    // The mined loss's embedding, or the anchor's of given triplets.
    let mined = spec.and_then(|s| {
        s.loss.iter().find_map(|t| {
            match (t.call.name.as_str(), t.call.args.get("embedding"), t.call.args.get("anchor")) {
                ("triplet_mining", Some(Arg::Name(n)), _) | ("triplet", _, Some(Arg::Name(n))) => Some(n.clone()),
                _ => None,
            }
        })
    });
    let outputs = model.graph.outputs();
    match (mined, outputs.len()) {
        (Some(name), _) => Ok(name),
        (None, 1) => Ok(outputs[0].0.clone()),
        (None, n) => Err(fail(
            EXIT_INPUT,
            format!(
                "`{}` has {n} outputs and no `triplet_mining` or `triplet` loss to say which one embeds: a database needs an \
                 encoder with one output",
                model.name
            ),
        )),
    }
}

/// `--verify A B` on a model fed pairs: its same-or-not output on A in the first input and B in
/// the second, read as the probability that they show the same person (sigmoid of the score, or
/// softmax's class 1).
fn verify_pair(
    model: &ModelInfo,
    spec: Option<&TrainSpec>,
    args: &Args,
    out: &Path,
    feed: &cnnc_compiler::train::Feed,
) -> Result<(), Failure> {
    if args.verify.is_empty() {
        return Err(fail(
            EXIT_INPUT,
            format!(
                "`{}` compares two images with its same-or-not output and keeps no embeddings for a database: use \
                 --verify A B",
                model.name
            ),
        ));
    }
    let loss = spec.and_then(|s| s.loss.first());
    let output = loss.and_then(|t| t.call.name_arg(&["logits", "output"]));
    let (Some(output), Some(loss)) = (output, loss) else {
        return Err(fail(EXIT_INPUT, format!("`{}` has no loss on a same-or-not output", model.name)));
    };
    with_predictor(model, spec, args, out, |predictor, _, _| {
        let (a, b) = (&args.verify[0], &args.verify[1]);
        let files = [(feed.inputs[0].as_str(), a.as_path()), (feed.inputs[1].as_str(), b.as_path())];
        let outputs = predictor.joint_outputs(&files).map_err(|e| match e {
            PredictError::Internal(_) => fail(EXIT_INTERNAL, e.to_string()),
            _ => fail(EXIT_INPUT, e.to_string()),
        })?;
        let score: Vec<f32> = outputs
            .iter()
            .find(|(n, _)| *n == output)
            .map(|(_, v)| v.iter().copied().collect())
            .ok_or_else(|| fail(EXIT_INTERNAL, format!("the model gave no `{output}`")))?;
        let p = match (loss.call.name.as_str(), score.as_slice()) {
            ("sigmoid_cross_entropy", [s]) => 1.0 / (1.0 + (-s).exp()),
            ("softmax_cross_entropy", [s0, s1]) => 1.0 / (1.0 + (s0 - s1).exp()),
            (_, [s]) => s.clamp(0.0, 1.0),
            _ => {
                return Err(fail(
                    EXIT_INPUT,
                    format!(
                        "`{output}` has {} values: a same-or-not output has one score, or two classes",
                        score.len()
                    ),
                ))
            }
        };
        let verdict = if p >= 0.5 { "the same person" } else { "different people" };
        println!(
            "{} and {}: {verdict} (probability of the same person {p:.4}, from `{output}`)",
            a.display(),
            b.display()
        );
        Ok(())
    })
}

/// Every example's embedding in `file` (one for an image).
fn embed(predictor: &Predictor, output: &str, file: &Path) -> Result<Vec<Vec<f32>>, Failure> {
    let examples = predictor.outputs(file).map_err(|e| match e {
        PredictError::Internal(_) => fail(EXIT_INTERNAL, e.to_string()),
        _ => fail(EXIT_INPUT, e.to_string()),
    })?;
    examples
        .into_iter()
        .map(|outputs| {
            outputs
                .into_iter()
                .find(|(n, _)| n == output)
                .map(|(_, v)| v.iter().copied().collect())
                .ok_or_else(|| fail(EXIT_INTERNAL, format!("the model gave no `{output}`")))
        })
        .collect()
}

/// The image files of a folder, sorted.
fn images(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| fail(EXIT_INPUT, format!("cannot read `{}`: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Runs `--enroll`, `--identify` or `--verify`.
pub fn run(model: &ModelInfo, spec: Option<&TrainSpec>, args: &Args, out: &Path, base: &Path) -> Result<(), Failure> {
    if let Some(feed) = spec.and_then(|s| s.inputs.as_ref()).filter(|f| f.kind == FeedKind::Pairs) {
        return verify_pair(model, spec, args, out, feed);
    }
    let output = embedding(model, spec)?;
    with_predictor(model, spec, args, out, |predictor, _, _| {
        let weights = cnnc_runtime::weights::checksum(predictor.models[0].named());
        if let Some(dir) = &args.enroll {
            return enroll(model, spec, args, out, base, predictor, &output, &weights, dir);
        }
        let path = database_path(args, out);
        let db = Database::read(&path, &model.name, &output, &weights)?;
        if !args.verify.is_empty() {
            let (a, b) = (&args.verify[0], &args.verify[1]);
            let one = |f: &Path| -> Result<Vec<f32>, Failure> {
                let mut all = embed(predictor, &output, f)?;
                if all.len() != 1 {
                    return Err(fail(
                        EXIT_INPUT,
                        format!("`{}` holds {} examples; --verify compares two images", f.display(), all.len()),
                    ));
                }
                Ok(all.remove(0))
            };
            let d = cnnc_runtime::metric::distance(&one(a)?, &one(b)?);
            let (verdict, sign) = if d < db.threshold { ("the same person", "<") } else { ("different people", "≥") };
            println!(
                "{} and {}: {verdict} (distance {d:.4} {sign} threshold {:.4})",
                a.display(),
                b.display(),
                db.threshold
            );
            return Ok(());
        }
        for file in &args.identify {
            for (k, e) in embed(predictor, &output, file)?.iter().enumerate() {
                let at = if k > 0 { format!("[{k}]") } else { String::new() };
                let Some((person, d)) = db.nearest(e) else { continue };
                if d < db.threshold {
                    println!("{}{at}: {person} (distance {d:.4} < threshold {:.4})", file.display(), db.threshold);
                } else {
                    println!(
                        "{}{at}: not in the database (nearest: {person} at distance {d:.4} ≥ threshold {:.4})",
                        file.display(),
                        db.threshold
                    );
                }
            }
        }
        Ok(())
    })
}

/// The enrolled people and the threshold.
struct Database {
    people: Vec<String>,
    rows: Vec<Vec<f32>>,
    threshold: f32,
}

impl Database {
    /// Reads `path`, refusing a database made by another model, output or weights.
    fn read(path: &Path, model: &str, output: &str, weights: &str) -> Result<Database, Failure> {
        if !path.exists() {
            return Err(fail(
                EXIT_INPUT,
                format!(
                    "no database at `{}`: make one with --enroll DIR (one folder of images a person), or name it with \
                     --database FILE",
                    path.display()
                ),
            ));
        }
        let (tensors, meta) = cnnc_runtime::weights::load(path).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
        let bad = |what: String| fail(EXIT_INPUT, format!("`{}` {what}", path.display()));
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad("is not a database of people (cnnc run --enroll writes one)".into()));
        }
        let field = |k: &str| meta.get(k).cloned().unwrap_or_default();
        if field("model") != model || field("output") != output {
            return Err(bad(format!(
                "was enrolled with model `{}` (output `{}`), not `{model}` (output `{output}`): enroll again with this model",
                field("model"),
                field("output")
            )));
        }
        if field("weights") != weights {
            return Err(bad(
                "was enrolled with other weights of this model (their checksums differ): its embeddings would not \
                 compare; enroll again with these weights, or give the enrolling ones with --weights"
                    .into(),
            ));
        }
        let people: Vec<String> =
            serde_json::from_str(&field("people")).map_err(|e| bad(format!("names no people: {e}")))?;
        let threshold: f32 = field("threshold").parse().map_err(|_| bad("has no threshold".into()))?;
        let (shape, values) = tensors.get("embeddings").ok_or_else(|| bad("has no embeddings".into()))?;
        let d = shape.get(1).copied().unwrap_or(0);
        if people.is_empty() {
            return Err(bad("enrolls nobody".into()));
        }
        if shape.len() != 2 || shape[0] != people.len() || d == 0 {
            return Err(bad(format!("has embeddings {shape:?} for {} names", people.len())));
        }
        let rows = values.chunks_exact(d).map(<[f32]>::to_vec).collect();
        Ok(Database { people, rows, threshold })
    }

    /// The nearest enrolled person and the distance to their nearest image.
    fn nearest(&self, e: &[f32]) -> Option<(&str, f32)> {
        self.people
            .iter()
            .zip(&self.rows)
            .map(|(p, r)| (p.as_str(), cnnc_runtime::metric::distance(e, r)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

#[allow(clippy::too_many_arguments)]
fn enroll(
    model: &ModelInfo,
    spec: Option<&TrainSpec>,
    args: &Args,
    out: &Path,
    base: &Path,
    predictor: &Predictor,
    output: &str,
    weights: &str,
    dir: &Path,
) -> Result<(), Failure> {
    if !dir.is_dir() {
        return Err(fail(
            EXIT_INPUT,
            format!("--enroll `{}` is not a folder (one sub-folder of images a person)", dir.display()),
        ));
    }
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| fail(EXIT_INPUT, format!("cannot read `{}`: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    if folders.is_empty() {
        return Err(fail(EXIT_INPUT, format!("`{}` has no folder of a person (DIR/NAME/*.png)", dir.display())));
    }
    // Every person's images first, then the threshold (which can fail for the model), then the
    // embeddings: nothing expensive before an error the input makes.
    let mut listed = Vec::new();
    for folder in &folders {
        let name = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let found = images(folder)?;
        if found.is_empty() {
            return Err(fail(
                EXIT_INPUT,
                format!(
                    "`{}` has no image of {name} (PNG or JPEG): give each person one image or more",
                    folder.display()
                ),
            ));
        }
        listed.push((name, found));
    }
    let (threshold, how) = match args.distance {
        Some(d) => (d, "given with --distance".to_string()),
        None => threshold(model, spec, args, base, &predictor.models[0])?,
    };
    let (mut people, mut rows) = (Vec::new(), Vec::new());
    let mut files = 0;
    for (name, found) in listed {
        for file in found {
            for e in embed(predictor, output, &file)? {
                people.push(name.clone());
                rows.push(e);
            }
            files += 1;
        }
    }
    let Some(d) = rows.first().map(Vec::len) else {
        return Err(fail(EXIT_INPUT, format!("the images of `{}` hold no example to enroll", dir.display())));
    };
    let flat: Vec<f32> = rows.concat();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("model".to_string(), model.name.clone());
    meta.insert("output".to_string(), output.to_string());
    meta.insert("weights".to_string(), weights.to_string());
    meta.insert("threshold".to_string(), threshold.to_string());
    meta.insert("people".to_string(), serde_json::to_string(&people).unwrap_or_default());
    let path = database_path(args, out);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| fail(EXIT_INPUT, format!("cannot create `{}`: {e}", parent.display())))?;
    }
    let shape = [people.len(), d];
    cnnc_runtime::weights::save(&path, &[("embeddings", &shape, &flat)], meta)
        .map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
    println!("enrolled {} people ({files} images) from {} into {}", folders.len(), dir.display(), path.display());
    println!("distance threshold {threshold:.4}: {how}");
    Ok(())
}

/// The distance below which two images show one person: the best verification threshold on
/// every pair of the train section's held-out examples, with `weights` (the database's).
fn threshold(
    model: &ModelInfo,
    spec: Option<&TrainSpec>,
    args: &Args,
    base: &Path,
    weights: &cnnc_runtime::params::Params,
) -> Result<(f32, String), Failure> {
    let Some(spec) = spec.filter(|s| s.data.is_some()) else {
        return Err(fail(
            EXIT_INPUT,
            format!(
                "the threshold is chosen on held-out pairs of the train section's data, and `{}` has no train section \
                 with data",
                model.name
            ),
        ));
    };
    let (data, pipeline) = data_of(model, spec, base, None)?;
    let mut session = cnnc_runtime::train::Session::new(model, spec).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
    session.set_backend(args.backend).map_err(|e| fail(EXIT_INTERNAL, e.to_string()))?;
    session.params =
        cnnc_runtime::params::Params::same_values(&session.tg.graph, weights).map_err(|e| fail(EXIT_INTERNAL, e))?;
    let eval = pipeline.for_eval_views(&data, spec.views);
    let verified = session.verify(&eval, &eval.test, spec.batch).map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
    match verified.and_then(|v| v.verification) {
        Some(v) => Ok((
            v.threshold,
            format!(
                "the best verification accuracy ({:.2}%, same and different pairs weighing alike) on {} held-out pairs \
                 of the train section's data (ROC AUC {:.4})",
                v.accuracy * 100.0,
                v.same + v.different,
                v.auc
            ),
        )),
        _ => Err(fail(
            EXIT_INPUT,
            "the train section's held-out examples give no pair of one identity and of two, to choose the threshold on"
                .to_string(),
        )),
    }
}
