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

#[test]
fn given_triplets_match_pytorch() {
    let f: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::root().join("tests/metric/triplet.json")).unwrap()).unwrap();
    let rows: Vec<f32> = floats(&f["given"]["rows"]).iter().map(|&v| v as f32).collect();
    let losses: Vec<f32> = rows.chunks(15).map(|r| metric::given_triplet_loss(r, 0.3)).collect();
    close(&losses, &floats(&f["given"]["losses"]), "given triplet losses");
    assert!(losses.contains(&0.0) && losses.iter().any(|&l| l > 0.0), "active and inactive triplets");
    let mut grad = vec![0.0; rows.len()];
    for (r, g) in rows.chunks(15).zip(grad.chunks_mut(15)) {
        metric::given_triplet_grad(r, 0.3, 1.0 / 8.0, g);
    }
    close(&grad, &floats(&f["given"]["grad"]), "given triplet gradient");
}

#[test]
fn tuples_pair_and_triple_examples_by_identity() {
    use cnnc_compiler::train::FeedKind;
    // Identities 0–3 of three examples each, and 4 of one.
    let labels: Vec<usize> = (0..12).map(|i| i % 4).chain([4]).collect();
    for kind in [FeedKind::Pairs, FeedKind::Triplets] {
        let order = metric::tuples(&labels, kind, 7, 2, false);
        assert_eq!(order, metric::tuples(&labels, kind, 7, 2, false), "one epoch's tuples are the same every time");
        assert_ne!(order, metric::tuples(&labels, kind, 7, 3, false), "another epoch shuffles anew");
        let k = kind.arity();
        assert_eq!(order.len(), labels.len() * k);
        let mut anchors: Vec<usize> = order.chunks(k).map(|t| t[0]).collect();
        anchors.sort();
        assert_eq!(anchors, (0..labels.len()).collect::<Vec<_>>(), "every example an anchor once");
        let mut same = 0;
        for t in order.chunks(k) {
            match kind {
                FeedKind::Pairs => same += usize::from(labels[t[0]] == labels[t[1]]),
                FeedKind::Triplets => {
                    assert_eq!(labels[t[0]], labels[t[1]], "{t:?}: the positive shares the identity");
                    assert_ne!(labels[t[0]], labels[t[2]], "{t:?}: the negative does not");
                    // Another example of the identity when it has one; the one of a single itself.
                    assert_eq!(t[0] == t[1], t[0] == 12, "{t:?}");
                }
            }
        }
        if kind == FeedKind::Pairs {
            assert!((2..=11).contains(&same), "about half the pairs are of one identity: {same} of 13");
            // Evaluation's pairs never show one image twice: the single example's is of two.
            let order = metric::tuples(&labels, kind, 7, 2, true);
            let t = order.chunks(2).find(|t| t[0] == 12).unwrap();
            assert_ne!(labels[t[1]], 4, "{t:?}");
        }
    }
}

/// A small Siamese encoder on 4,000 digits, as triplets and as pairs with the course's head;
/// each trains on the JIT as on the reference executor, and is measured on digits it never saw.
#[test]
fn siamese_models_train_on_triplets_and_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::root().join("examples/data/mnist10k");
    let file = dir.path().join("siamese.cnn");
    let source = format!(
        r#"block enc(x) {{
    return x |> conv(8, 5x5, stride: 2) |> relu |> flatten |> dense(16) |> l2norm
}}
model Triple {{
    input anchor: [28, 28, 1]
    input positive: [28, 28, 1]
    input negative: [28, 28, 1]
    shared f = enc()
    output a = anchor |> f
    output p = positive |> f
    output n = negative |> f
}}
train Triple {{
    data mnist({data:?}, limit: 4000)
    inputs triplets(anchor, positive, negative)
    unseen 3
    loss triplet(a, p, n, margin: 0.2)
    optimizer adam(lr: 0.003)
    batch 32 epochs 2 seed 1
}}
model Pair {{
    input left: [28, 28, 1]
    input right: [28, 28, 1]
    shared f = enc()
    output same = abs((left |> f) - (right |> f)) |> dense(1)
}}
train Pair {{
    data mnist({data:?}, limit: 4000)
    inputs pairs(left, right)
    unseen 3
    loss sigmoid_cross_entropy(same, label)
    optimizer adam(lr: 0.003)
    batch 32 epochs 2 seed 1
}}
"#,
        data = data.to_str().unwrap()
    );
    std::fs::write(&file, source).unwrap();
    let f = file.to_str().unwrap();
    let losses = |stdout: &str| -> Vec<f64> {
        stdout
            .lines()
            .filter(|l| l.starts_with("epoch"))
            .map(|l| l.split("  loss ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap())
            .collect()
    };
    for model in ["Triple", "Pair"] {
        let mut runs = Vec::new();
        for backend in ["jit", "reference"] {
            let out = dir.path().join(format!("{model}-{backend}"));
            let o = cnnc(&["run", f, "--model", model, "--backend", backend, "--out", out.to_str().unwrap()]);
            assert_eq!(o.status.code(), Some(0), "{model} {backend}: {}", text(&o));
            runs.push(String::from_utf8_lossy(&o.stdout).into_owned());
        }
        let (jit, reference) = (losses(&runs[0]), losses(&runs[1]));
        assert_eq!(jit.len(), 2, "{}", runs[0]);
        for (a, b) in jit.iter().zip(&reference) {
            assert!((a - b).abs() <= 2e-3 * b.abs().max(1.0), "{model}: jit {jit:?} reference {reference:?}");
        }
        let stdout = &runs[0];
        if model == "Triple" {
            // Measured as an embedding: the anchor's output on the unseen digits 7, 8, 9.
            assert!(stdout.contains("of the 3 identities never seen in training"), "{stdout}");
            let line = stdout.lines().find(|l| l.contains("ROC AUC:")).unwrap();
            let auc: f64 = line.split(':').nth(1).unwrap().trim().parse().unwrap();
            assert!(auc > 0.6, "{stdout}");
            assert!(jit[1] < jit[0], "the loss falls: {jit:?}");
        } else {
            let line = stdout.lines().find(|l| l.starts_with("test accuracy:")).unwrap();
            assert!(line.contains("test pairs"), "{stdout}");
            let acc: f64 = line.split(':').nth(1).unwrap().trim().split('%').next().unwrap().parse().unwrap();
            assert!(acc > 55.0, "better than chance on pairs of unseen digits: {stdout}");
        }
    }
    // The pair model answers --verify with its head; it has no database, and --predict cannot
    // give it one image.
    let digits: Vec<std::path::PathBuf> = ["7", "9"].iter().map(|d| dir.path().join(format!("{d}.png"))).collect();
    for (path, value) in digits.iter().zip([0.2f32, 0.9]) {
        image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * 7 + y * 3) as f32 * value) as u8]))
            .save(path)
            .unwrap();
    }
    let out = dir.path().join("Pair-jit");
    let (a, b, out) = (digits[0].to_str().unwrap(), digits[1].to_str().unwrap(), out.to_str().unwrap());
    let o = cnnc(&["run", f, "--model", "Pair", "--verify", a, b, "--out", out]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("probability of the same person"), "{}", text(&o));
    let o = cnnc(&["run", f, "--model", "Pair", "--predict", a, "--out", out]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("is computed from 2 inputs (`left`, `right`)"), "{}", text(&o));
    let o = cnnc(&[
        "run",
        f,
        "--model",
        "Pair",
        "--eval",
        "--output",
        dir.path().join("o.npy").to_str().unwrap(),
        "--out",
        out,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("is computed from 2 inputs"), "{}", text(&o));
    let o = cnnc(&["run", f, "--model", "Pair", "--enroll", dir.path().to_str().unwrap(), "--out", out]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("use --verify A B"), "{}", text(&o));
    // A model of two inputs that does not say what they receive: a diagnostic before training
    // (exit 1, as every error `cnnc check` finds).
    let two = dir.path().join("two.cnn");
    let text_of = std::fs::read_to_string(&file).unwrap().replace("    inputs pairs(left, right)\n", "");
    std::fs::write(&two, text_of).unwrap();
    let o = cnnc(&["run", two.to_str().unwrap(), "--model", "Pair", "--out", out]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("`Pair` has 2 inputs (`left`, `right`): say what each receives"), "{}", text(&o));
    // The triplet model embeds each image on its own: --predict gives every branch's embedding.
    let out = dir.path().join("Triple-jit");
    let o = cnnc(&["run", f, "--model", "Triple", "--predict", a, "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
