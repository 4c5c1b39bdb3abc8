//! Metric learning: the triplet loss with online mining against PyTorch (`tests/metric/make.py`),
//! an encoder trained on digits that verifies and names digits it never saw, and the checks of a
//! `triplet_mining` section.

mod common;

use cnnc_compiler::ir::op::TripletLoss;
use cnnc_runtime::metric;
use std::process::Output;

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|e| e.as_f64().unwrap()).collect()
}

fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let diff = got.iter().zip(want).map(|(&a, &b)| (f64::from(a) - b).abs()).fold(0.0, f64::max);
    let norm = want.iter().map(|v| v.abs()).fold(1.0, f64::max);
    assert!(diff <= 1e-4 * norm, "{what}: ‖a − b‖∞ = {diff}");
}

#[test]
fn triplet_mining_matches_pytorch() {
    let f: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::root().join("tests/metric/triplet.json")).unwrap()).unwrap();
    let emb: Vec<f32> = floats(&f["embeddings"]).iter().map(|&v| v as f32).collect();
    let labels: Vec<usize> = f["labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let margin = f["margin"].as_f64().unwrap() as f32;
    for (mining, semi_hard) in [("hard", false), ("semi_hard", true)] {
        let t = TripletLoss { margin, semi_hard };
        let losses = metric::triplet_losses(&t, &emb, 5, &labels);
        close(&losses, &floats(&f[mining]["losses"]), &format!("{mining} losses"));
        // The gradient of the mean over the batch: scale 1/batch.
        let mut grad = vec![0.0; emb.len()];
        metric::triplet_grad(&t, &emb, 5, &labels, 1.0 / labels.len() as f32, &mut grad);
        close(&grad, &floats(&f[mining]["grad"]), &format!("{mining} gradient"));
    }
}

fn cnnc(args: &[&str]) -> Output {
    common::cnnc().args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn an_encoder_trained_on_seven_digits_tells_the_other_three_apart() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = cnnc(&["run", "examples/digits_metric.cnn", "--epochs", "1", "--limit", "2000", "--out", out]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    // The digits 7, 8 and 9 of both splits are the test split: 3,000 of MNIST's 10,000.
    assert!(stdout.contains("2992 held out"), "{stdout}");
    assert!(stdout.contains("of the 3 identities never seen in training"), "{stdout}");
    let figure = |key: &str| -> f64 {
        let line = stdout.lines().find(|l| l.contains(key)).unwrap_or_else(|| panic!("no `{key}` in {stdout}"));
        let after = line.split(key).nth(1).unwrap().trim_start();
        after.split(['%', ' ']).next().unwrap().parse().unwrap()
    };
    // Chance is an AUC of 0.5 and one-shot naming right one time in three.
    let auc = figure("ROC AUC:");
    assert!(auc > 0.6, "{stdout}");
    assert!(figure("one-shot identification:") > 40.0, "{stdout}");
    assert!(figure("accuracy:") > 57.0, "{stdout}");
    // --eval measures the saved weights the same way.
    let o = cnnc(&["run", "examples/digits_metric.cnn", "--eval", "--out", out]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("ROC AUC: {auc:.4}")), "{}", text(&o));
}

#[test]
fn faces_of_one_image_each_learn_from_augmented_positives() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = cnnc(&["run", "examples/faces_metric.cnn", "--epochs", "12", "--out", out]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    // 20 faces never seen, 4 views each: 20 · C(4, 2) same pairs of 80 views.
    assert!(stdout.contains("of the 20 identities never seen in training: 120 same, 3040 different"), "{stdout}");
    let line = stdout.lines().find(|l| l.contains("ROC AUC:")).unwrap();
    let auc: f64 = line.split(':').nth(1).unwrap().trim().parse().unwrap();
    assert!(auc > 0.75, "{stdout}");
    // The chart of the distances of same and different pairs.
    let chart = image::open(dir.path().join("distances.png")).unwrap();
    assert!(chart.width() > 500 && chart.height() > 300);
    assert!(stdout.contains("distances of same and different pairs:"), "{stdout}");
}

#[test]
fn triplet_mining_sections_are_checked() {
    let model = "model E {\n input x: [4]\n output e = x |> dense(3) |> l2norm\n}\n";
    for (train, message) in [
        ("loss triplet_mining(e, label, mining: \"hardest\")", "`mining` is \"hard\""),
        ("loss triplet_mining(e, label, per_identity: 5)", "must be at least 2 and divide the batch (32)"),
        ("loss triplet_mining(e, label, per_identity: 32)", "into at least two identities"),
    ] {
        let text = format!(
            "{model}train E {{\n data csv(\"x.csv\", shape: [4])\n {train}\n optimizer sgd(lr: 0.1)\n batch 32\n}}\n"
        );
        let c = cnnc_compiler::compile_source("e.cnn", None, text.as_bytes());
        let rendered = common::rendered(&c);
        assert!(c.has_errors(), "{train}: {rendered}");
        assert!(rendered.contains(message), "{train}: {rendered}");
    }
    // `unseen` larger than the classes is an error at run time, naming both.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.cnn");
    let data = common::root().join("examples/data/mnist10k");
    std::fs::write(
        &file,
        format!(
            "model E {{\n input x: [28, 28, 1]\n output e = x |> flatten |> dense(3) |> l2norm\n}}\ntrain E {{\n data mnist({:?})\n unseen 10\n loss triplet_mining(e, label)\n optimizer sgd(lr: 0.1)\n batch 32\n}}\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let o = cnnc(&["run", file.to_str().unwrap(), "--out", dir.path().join("out").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("`unseen 10` holds out the last 10 classes, and the data has 10"), "{}", text(&o));
}
