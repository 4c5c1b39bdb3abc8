//! The one-shot database of people (`--enroll`, `--identify`, `--verify`) on digits as
//! identities: an encoder trained briefly on the digits 0–6 enrolls one image each of 7, 8 and 9,
//! then names and compares images; and every kind of bad input is a clear error, exit 2.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;

fn cnnc(args: &[&str]) -> Output {
    common::cnnc().args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// MNIST test images of `digit` as 28×28 grey PNGs: the first `n`, written to `dir`.
fn digits(digit: u8, n: usize, dir: &Path) -> Vec<PathBuf> {
    let read = |name: &str| {
        let mut bytes = Vec::new();
        let path = common::root().join("examples/data/mnist10k").join(name);
        flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut bytes).unwrap();
        bytes
    };
    let (images, labels) = (read("t10k-images-idx3-ubyte.gz"), read("t10k-labels-idx1-ubyte.gz"));
    std::fs::create_dir_all(dir).unwrap();
    let mut out = Vec::new();
    for (i, &label) in labels[8..].iter().enumerate() {
        if label != digit || out.len() == n {
            continue;
        }
        let pixels = images[16 + i * 784..16 + (i + 1) * 784].to_vec();
        let path = dir.join(format!("{digit}_{i}.png"));
        image::GrayImage::from_raw(28, 28, pixels).unwrap().save(&path).unwrap();
        out.push(path);
    }
    out
}

#[test]
fn enroll_identify_and_verify_digits_never_seen_in_training() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let o = cnnc(&["run", "examples/digits_metric.cnn", "--epochs", "1", "--limit", "2000", "--quiet", "--out", run_s]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let people = dir.path().join("people");
    let seven = digits(7, 1, &people.join("seven"));
    digits(8, 1, &people.join("eight"));
    digits(9, 2, &people.join("nine"));
    let o = cnnc(&["run", "examples/digits_metric.cnn", "--enroll", people.to_str().unwrap(), "--out", run_s]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("enrolled 3 people (4 images)"), "{stdout}");
    assert!(stdout.contains("held-out pairs of the train section's data"), "{stdout}");
    let (tensors, meta) = cnnc_runtime::weights::load(&run.join("faces.safetensors")).unwrap();
    assert_eq!(tensors["embeddings"].0, vec![4, 32]);
    assert_eq!(meta["people"], r#"["eight","nine","nine","seven"]"#);
    let threshold: f32 = meta["threshold"].parse().unwrap();
    assert!(threshold > 0.0 && threshold < 2.0, "on the unit sphere: {threshold}");

    // An enrolled image is its own person, at distance 0.
    let o = cnnc(&["run", "examples/digits_metric.cnn", "--identify", seven[0].to_str().unwrap(), "--out", run_s]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(": seven (distance 0.0000 <"), "{}", text(&o));
    // Every query gets an answer: a person, or not in the database.
    let queries = digits(8, 3, &dir.path().join("queries"));
    let mut args = vec!["run", "examples/digits_metric.cnn", "--out", run_s, "--identify"];
    args.extend(queries.iter().map(|q| q.to_str().unwrap()));
    let o = cnnc(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let lines: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().all(|l| l.contains("distance") && l.contains("threshold")), "{lines:?}");

    // One image against itself: the same person; the distance of two images is symmetric.
    let (a, b) = (seven[0].to_str().unwrap(), queries[0].to_str().unwrap());
    let o = cnnc(&["run", "examples/digits_metric.cnn", "--verify", a, a, "--out", run_s]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("the same person (distance 0.0000 <"), "{}", text(&o));
    let distance = |x: &str, y: &str| {
        let o = cnnc(&["run", "examples/digits_metric.cnn", "--verify", x, y, "--out", run_s]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let s = String::from_utf8_lossy(&o.stdout).to_string();
        s.split("distance ").nth(1).unwrap().split(' ').next().unwrap().to_string()
    };
    assert_eq!(distance(a, b), distance(b, a));
}

#[test]
fn bad_people_folders_and_databases_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    // Without trained weights: says so.
    let img = digits(7, 1, &dir.path().join("img"));
    let o = cnnc(&["run", "examples/digits_metric.cnn", "--identify", img[0].to_str().unwrap(), "--out", run_s]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no weights at"), "{}", text(&o));
    // Trained, without a database yet: says how to make one.
    let o = cnnc(&["run", "examples/digits_metric.cnn", "--epochs", "1", "--limit", "500", "--quiet", "--out", run_s]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = cnnc(&["run", "examples/digits_metric.cnn", "--identify", img[0].to_str().unwrap(), "--out", run_s]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no database at") && text(&o).contains("--enroll DIR"), "{}", text(&o));
    // A person folder without an image.
    let people = dir.path().join("people");
    digits(7, 1, &people.join("seven"));
    std::fs::create_dir_all(people.join("nobody")).unwrap();
    let o = cnnc(&["run", "examples/digits_metric.cnn", "--enroll", people.to_str().unwrap(), "--out", run_s]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("has no image of nobody"), "{}", text(&o));
    assert!(!run.join("faces.safetensors").exists(), "nothing written");
    // A folder without people, and a file that is not a folder.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = cnnc(&["run", "examples/digits_metric.cnn", "--enroll", empty.to_str().unwrap(), "--out", run_s]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("has no folder of a person"), "{}", text(&o));
    // A database from other weights of the model is refused.
    std::fs::remove_dir_all(people.join("nobody")).unwrap();
    let o = cnnc(&["run", "examples/digits_metric.cnn", "--enroll", people.to_str().unwrap(), "--out", run_s]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = cnnc(&["run", "examples/digits_metric.cnn", "--epochs", "1", "--limit", "300", "--quiet", "--out", run_s]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = cnnc(&["run", "examples/digits_metric.cnn", "--identify", img[0].to_str().unwrap(), "--out", run_s]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("was enrolled with other weights of this model"), "{}", text(&o));
    // A database enrolled with another model: the same encoder under another name, given the
    // enrolling run's weights, refuses it by the model it names.
    let src = std::fs::read_to_string("examples/digits_metric.cnn").unwrap();
    let data = std::fs::canonicalize("examples/data/mnist10k").unwrap();
    let other = dir.path().join("other.cnn");
    let renamed = src.replace("DigitEncoder", "OtherEncoder").replace("\"data/mnist10k\"", &format!("{:?}", data));
    std::fs::write(&other, renamed).unwrap();
    let o = cnnc(&[
        "run",
        other.to_str().unwrap(),
        "--identify",
        img[0].to_str().unwrap(),
        "--database",
        run.join("faces.safetensors").to_str().unwrap(),
        "--weights",
        run.join("weights.safetensors").to_str().unwrap(),
        "--out",
        dir.path().join("other").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("was enrolled with model `DigitEncoder`"), "{}", text(&o));
    // A file that is not a database (the run's weights file).
    let o = cnnc(&[
        "run",
        "examples/digits_metric.cnn",
        "--identify",
        img[0].to_str().unwrap(),
        "--database",
        run.join("weights.safetensors").to_str().unwrap(),
        "--out",
        run_s,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("is not a database of people"), "{}", text(&o));
    // A model with several outputs and no triplet loss cannot say which output embeds.
    let two = dir.path().join("two.cnn");
    std::fs::write(&two, "model Two {\n input x: [28, 28, 1]\n output a = x |> flatten |> dense(4)\n output b = x |> flatten |> dense(3)\n}\n").unwrap();
    let o = cnnc(&["run", two.to_str().unwrap(), "--verify", img[0].to_str().unwrap(), img[0].to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("has 2 outputs"), "{}", text(&o));
}
