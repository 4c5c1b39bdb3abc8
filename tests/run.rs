//! `cnnc run`: training, determinism, resuming, evaluation, prediction, divergence, and every
//! kind of bad data or weights file (a clear error, a non-zero exit, nothing overwritten).

mod common;

use common::cnnc;
use std::path::{Path, PathBuf};
use std::process::Output;

fn run(args: &[&str]) -> Output {
    cnnc().args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn metrics(dir: &Path) -> Vec<Vec<f64>> {
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    csv.lines().skip(1).map(|l| l.split(',').map(|v| v.parse().unwrap()).collect()).collect()
}

#[test]
fn a_short_lenet5_run_learns() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = run(&["run", "examples/lenet5.cnn", "--epochs", "2", "--limit", "1500", "--out", out]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let m = metrics(dir.path());
    assert_eq!(m.len(), 2);
    // Columns: epoch, lr, train loss, train acc, test loss, test acc, img/s, seconds.
    assert!(m[1][2] < m[0][2], "training loss falls: {m:?}");
    assert!(m[1][4] < m[0][4], "test loss falls: {m:?}");
    assert!(m[1][5] > 0.8, "test accuracy well above chance (10%): {m:?}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.lines().last().is_some_and(|l| l.starts_with("test accuracy: ")),
        "the run ends with the accuracy: {stdout}"
    );
    for file in ["weights.safetensors", "state.safetensors", "metrics.csv", "metrics.png"] {
        assert!(dir.path().join(file).exists(), "{file}");
    }
    let png = image::open(dir.path().join("metrics.png")).unwrap();
    assert!(png.width() > 100 && png.height() > 100);

    // --eval on the saved weights gives the last epoch's test accuracy.
    let e = run(&["run", "examples/lenet5.cnn", "--eval", "--out", out]);
    assert_eq!(e.status.code(), Some(0), "{}", text(&e));
    let expected = format!("test accuracy: {:.2}%", m[1][5] * 100.0);
    assert!(String::from_utf8_lossy(&e.stdout).contains(&expected), "{} / {expected}", text(&e));
}

#[test]
fn two_runs_with_one_seed_give_the_same_weights_bit_for_bit() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for dir in [&a, &b] {
        let o = run(&[
            "run",
            "examples/lenet5.cnn",
            "--epochs",
            "1",
            "--limit",
            "300",
            "--quiet",
            "--out",
            dir.path().to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let (wa, _) = cnnc_runtime::weights::load(&a.path().join("weights.safetensors")).unwrap();
    let (wb, _) = cnnc_runtime::weights::load(&b.path().join("weights.safetensors")).unwrap();
    assert_eq!(wa.values().map(|(_, v)| v.len()).sum::<usize>(), 61_706);
    assert!(same_bits(&wa, &wb), "weights differ between identical runs");
    // The files themselves, metadata and save marks included, so `cmp` can confirm a run.
    for file in ["weights.safetensors", "state.safetensors"] {
        let (x, y) = (std::fs::read(a.path().join(file)).unwrap(), std::fs::read(b.path().join(file)).unwrap());
        assert!(x == y, "{file} differs byte for byte between identical runs");
    }
}

#[test]
fn resume_continues_from_saved_weights_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = run(&["run", "examples/lenet5.cnn", "--epochs", "1", "--limit", "300", "--quiet", "--out", out]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o =
        run(&["run", "examples/lenet5.cnn", "--epochs", "2", "--limit", "300", "--quiet", "--resume", "--out", out]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let m = metrics(dir.path());
    assert_eq!(m.iter().map(|r| r[0] as usize).collect::<Vec<_>>(), [1, 2]);
    // Resuming equals training two epochs straight.
    let straight = tempfile::tempdir().unwrap();
    let o = run(&[
        "run",
        "examples/lenet5.cnn",
        "--epochs",
        "2",
        "--limit",
        "300",
        "--quiet",
        "--out",
        straight.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (a, _) = cnnc_runtime::weights::load(&dir.path().join("weights.safetensors")).unwrap();
    let (b, _) = cnnc_runtime::weights::load(&straight.path().join("weights.safetensors")).unwrap();
    assert!(same_bits(&a, &b), "resumed and straight runs differ");
}

type Weights = std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn same_bits(a: &Weights, b: &Weights) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((na, ta), (nb, tb))| {
            na == nb && ta.0 == tb.0 && ta.1.iter().zip(tb.1.iter()).all(|(x, y)| x.to_bits() == y.to_bits())
        })
}

/// A copy of the LeNet-5 example whose data folder is `data` (beside it in `dir`).
fn lenet_with(dir: &Path, data: &str, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(common::root().join("examples/lenet5.cnn")).unwrap();
    let text = text.replace("mnist(\"data/mnist10k\", pad: 2)", &format!("mnist(\"{data}\", pad: 2{extra})"));
    let path = dir.join("lenet5.cnn");
    std::fs::write(&path, text).unwrap();
    path
}

fn copy_mnist(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(common::root().join("examples/data/mnist10k")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

fn gunzip(p: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(std::fs::File::open(p).unwrap()), &mut out).unwrap();
    out
}

/// Runs a model on corrupted data; asserts a clear error naming `expect` and that an existing
/// weights file is untouched.
fn fails_cleanly(corrupt: impl Fn(&Path), expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    copy_mnist(&dir.path().join("mnist"));
    corrupt(&dir.path().join("mnist"));
    let model = lenet_with(dir.path(), "mnist", "");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("weights.safetensors"), b"previous weights").unwrap();
    let o = cnnc().args(["run", model.to_str().unwrap(), "--out", out.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains(expect), "expected `{expect}` in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(std::fs::read(out.join("weights.safetensors")).unwrap(), b"previous weights");
}

#[test]
fn bad_data_files_are_clear_errors() {
    let images = "train-images-idx3-ubyte.gz";
    let labels = "train-labels-idx1-ubyte.gz";
    fails_cleanly(|d| std::fs::remove_file(d.join(images)).unwrap(), "cannot read");
    fails_cleanly(
        |d| {
            let raw = gunzip(&d.join(images));
            std::fs::remove_file(d.join(images)).unwrap();
            std::fs::write(d.join("train-images-idx3-ubyte"), &raw[..raw.len() / 2]).unwrap();
        },
        "is truncated: its header promises 6272000 bytes of data but it holds",
    );
    fails_cleanly(
        |d| {
            let mut raw = gunzip(&d.join(labels));
            raw[2] = 0x0d;
            std::fs::remove_file(d.join(labels)).unwrap();
            std::fs::write(d.join("train-labels-idx1-ubyte"), raw).unwrap();
        },
        "value type 0x0d is not unsigned bytes",
    );
    fails_cleanly(
        |d| {
            let mut raw = gunzip(&d.join(labels));
            raw[8 + 17] = 12;
            std::fs::remove_file(d.join(labels)).unwrap();
            std::fs::write(d.join("train-labels-idx1-ubyte"), raw).unwrap();
        },
        "label 12 of example 17 is not a class index (0 to 9)",
    );
    fails_cleanly(
        |d| {
            let mut raw = gunzip(&d.join(labels));
            raw.truncate(raw.len() - 10);
            raw[4..8].copy_from_slice(&7990u32.to_be_bytes());
            std::fs::remove_file(d.join(labels)).unwrap();
            std::fs::write(d.join("train-labels-idx1-ubyte"), raw).unwrap();
        },
        "has 8000 examples but",
    );
    fails_cleanly(|d| std::fs::write(d.join(images), b"\x1f\x8bnot really gzip").unwrap(), "cannot decode");
}

#[test]
fn bad_csv_and_image_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = |data: &str| {
        let text = format!(
            "model M {{ input image: [2, 2, 1]\n output logits = image |> flatten |> dense(3) }}\ntrain M {{\n data {data}\n loss softmax_cross_entropy(logits, label)\n optimizer sgd(lr: 0.1)\n}}\n"
        );
        let p = dir.path().join("m.cnn");
        std::fs::write(&p, text).unwrap();
        p
    };
    let check = |data: &str, expect: &str| {
        let p = model(data);
        let o = cnnc()
            .args(["run", p.to_str().unwrap(), "--out", dir.path().join("out").to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains(expect), "`{expect}` in {}", text(&o));
    };
    std::fs::write(dir.path().join("short.csv"), "1,2,3,4,0\n1,2,3,1\n").unwrap();
    check("csv(\"short.csv\", shape: [2, 2, 1])", "short.csv`, line 2: 4 fields, expected 4 values and a label");
    std::fs::write(dir.path().join("nan.csv"), "1,2,x,4,0\n").unwrap();
    check("csv(\"nan.csv\", shape: [2, 2, 1])", "line 1: `x` is not a number");
    std::fs::write(dir.path().join("label.csv"), "1,2,3,4,-1\n").unwrap();
    check("csv(\"label.csv\", shape: [2, 2, 1])", "label -1 of example 0 is not a class index");
    std::fs::write(dir.path().join("empty.csv"), "").unwrap();
    check("csv(\"empty.csv\", shape: [2, 2, 1])", "holds no examples");
    let class = dir.path().join("imgs/cat");
    std::fs::create_dir_all(&class).unwrap();
    image::GrayImage::new(3, 2).save(class.join("a.png")).unwrap();
    check("images(\"imgs\")", "is 3×2 but the model's input is 2×2");
    std::fs::write(class.join("a.png"), b"\x89PNG broken").unwrap();
    check("images(\"imgs\")", "cannot decode");
    check("images(\"nowhere\")", "cannot read");
}

#[test]
fn a_diverging_run_stops_with_the_last_good_weights() {
    let dir = tempfile::tempdir().unwrap();
    let source = std::fs::read_to_string(common::root().join("examples/lenet5.cnn"))
        .unwrap()
        .replace(
            "mnist(\"data/mnist10k\"",
            &format!("mnist(\"{}\"", common::root().join("examples/data/mnist10k").display()),
        )
        .replace("sgd(lr: 0.05, momentum: 0.9)", "sgd(lr: 1e38)");
    let model = dir.path().join("diverge.cnn");
    std::fs::write(&model, source).unwrap();
    let out = dir.path().join("out");
    let o = cnnc()
        .args(["run", model.to_str().unwrap(), "--limit", "640", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("the loss became NaN or infinite at epoch 1, step"), "{stderr}");
    assert!(stderr.contains("first non-finite value appeared in"), "{stderr}");
    assert!(stderr.contains("lower the learning rate"), "{stderr}");
    let (weights, _) = cnnc_runtime::weights::load(&out.join("weights.safetensors")).unwrap();
    assert!(weights.values().all(|(_, t)| t.iter().all(|v| v.is_finite())), "saved weights are finite");
}

#[test]
fn corrupt_or_mismatched_weights_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    std::fs::write(out.join("weights.safetensors"), b"garbage").unwrap();
    let o = run(&["run", "examples/lenet5.cnn", "--eval", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a valid safetensors file"), "{}", text(&o));
    let zeros = vec![0f32; 3 * 3 * 6];
    let t = [("conv1/weight", &[3usize, 3, 1, 6][..], zeros.as_slice())];
    cnnc_runtime::weights::save(&out.join("weights.safetensors"), &t, Default::default()).unwrap();
    let o = run(&["run", "examples/lenet5.cnn", "--eval", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("lacks parameters of this model"), "{}", text(&o));
    let o = run(&[
        "run",
        "examples/lenet5.cnn",
        "--predict",
        "examples/data/camera.png",
        "--out",
        dir.path().join("none").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no weights at"), "{}", text(&o));
}

#[test]
fn edge_detection_writes_the_filtered_images() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&[
        "run",
        "examples/edges.cnn",
        "--predict",
        "examples/data/camera.png",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let photo = image::open(common::root().join("examples/data/camera.png")).unwrap().to_luma8();
    // The Sobel map, computed directly: |Σ k·x| over the zero-padded image, scaled to its maximum.
    let k = [[1.0f32, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]];
    let (w, h) = (photo.width() as i64, photo.height() as i64);
    let px = |x: i64, y: i64| {
        if x < 0 || y < 0 || x >= w || y >= h {
            0.0
        } else {
            f32::from(photo.get_pixel(x as u32, y as u32)[0]) / 255.0
        }
    };
    let mut direct = vec![0f32; (w * h) as usize];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0;
            for (dy, row) in k.iter().enumerate() {
                for (dx, kv) in row.iter().enumerate() {
                    s += kv * px(x + dx as i64 - 1, y + dy as i64 - 1);
                }
            }
            direct[(y * w + x) as usize] = s.abs();
        }
    }
    let max = direct.iter().fold(0f32, |a, &b| a.max(b));
    let written = image::open(dir.path().join("sobel_edges.png")).unwrap().to_luma8();
    assert_eq!((written.width(), written.height()), (512, 512));
    let worst =
        written.pixels().zip(&direct).map(|(p, d)| (f32::from(p[0]) - d / max * 255.0).abs()).fold(0f32, f32::max);
    assert!(worst <= 1.0, "largest difference {worst}");
    for name in ["vertical_edges", "horizontal_edges", "scharr_edges"] {
        assert!(dir.path().join(format!("{name}.png")).exists());
    }
}

#[test]
fn predict_prints_the_top_classes_of_a_digit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = run(&["run", "examples/lenet5.cnn", "--epochs", "1", "--limit", "2000", "--quiet", "--out", out]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The first test digit as a PNG.
    let raw = gunzip(&common::root().join("examples/data/mnist10k/t10k-images-idx3-ubyte.gz"));
    let label = gunzip(&common::root().join("examples/data/mnist10k/t10k-labels-idx1-ubyte.gz"))[8];
    let digit = image::GrayImage::from_raw(28, 28, raw[16..16 + 784].to_vec()).unwrap();
    let png = dir.path().join("digit.png");
    digit.save(&png).unwrap();
    let o = run(&["run", "examples/lenet5.cnn", "--predict", png.to_str().unwrap(), "--out", out]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let first = stdout.lines().find(|l| l.starts_with("    ")).unwrap();
    let (class, p): (usize, f32) = {
        let mut it = first.split_whitespace();
        (it.next().unwrap().parse().unwrap(), it.next().unwrap().parse().unwrap())
    };
    assert_eq!(class, label as usize, "{stdout}");
    assert!(p > 0.5 && p <= 1.0, "{stdout}");
    // Every output at full precision, stacked over the files.
    let exact = dir.path().join("outputs.safetensors");
    let png = png.to_str().unwrap();
    let o =
        run(&["run", "examples/lenet5.cnn", "--predict", png, png, "--out", out, "--output", exact.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (tensors, meta) = cnnc_runtime::weights::load(&exact).unwrap();
    let (shape, probs) = &tensors["logits"];
    assert_eq!(shape, &vec![2, 10]);
    assert!((probs[..10].iter().sum::<f32>() - 1.0).abs() < 1e-5, "softmax outputs are probabilities: {probs:?}");
    assert_eq!(probs[..10], probs[10..], "the same file twice gives the same outputs");
    assert!((probs[class] - p).abs() < 1e-4, "{probs:?} / {p}");
    assert_eq!(meta["files"], format!("{png}\n{png}"));
    let o = run(&["run", "examples/lenet5.cnn", "--out", out, "--output", exact.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    // A picture of the wrong size is refused.
    let o = run(&["run", "examples/lenet5.cnn", "--predict", "examples/data/camera.png", "--out", out]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is 512×512 but the model's input is 28×28"), "{}", text(&o));
}

#[test]
fn augmented_training_multi_crop_ensembles_and_previews() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let model = "examples/mnist1k_augmented.cnn";
    for (out, seed_epochs) in [(&a, "1"), (&b, "2")] {
        let o =
            run(&["run", model, "--epochs", seed_epochs, "--limit", "300", "--quiet", "--out", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let wa = a.join("weights.safetensors");
    let wb = b.join("weights.safetensors");
    let ensemble = format!("{},{}", wa.display(), wb.display());
    for args in
        [vec!["--multi-crop", "10"], vec!["--ensemble", &ensemble], vec!["--multi-crop", "5", "--ensemble", &ensemble]]
    {
        let mut all = vec!["run", model, "--eval", "--out", a.to_str().unwrap()];
        all.extend(args.iter().copied());
        let o = run(&all);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let stdout = String::from_utf8_lossy(&o.stdout);
        let acc: f64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("test accuracy: "))
            .unwrap()
            .split('%')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(acc > 30.0, "{args:?}: {stdout}");
    }
    let o = run(&["run", model, "--eval", "--multi-crop", "3", "--out", a.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "only 1, 5 or 10 crops");
    // Predicting with an ensemble and ten crops.
    let png = dir.path().join("digit.png");
    let raw = gunzip(&common::root().join("examples/data/mnist10k/t10k-images-idx3-ubyte.gz"));
    image::GrayImage::from_raw(28, 28, raw[16..16 + 784].to_vec()).unwrap().save(&png).unwrap();
    let o = run(&["run", model, "--predict", png.to_str().unwrap(), "--multi-crop", "10", "--ensemble", &ensemble]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let total: f32 = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with("    "))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<f32>().unwrap())
        .sum();
    assert!(total > 0.5 && total <= 1.0001, "the top five averaged probabilities sum to at most 1: {total}");
    // A preview of the pipeline.
    let preview = dir.path().join("preview.png");
    let o = run(&["run", model, "--preview-augment", preview.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let img = image::open(&preview).unwrap();
    assert_eq!((img.width(), img.height()), (8 * 34 + 2, 8 * 34 + 2));
}

#[test]
fn too_few_class_scores_and_batchnorm_models() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::root().join("examples/data/digits.csv.gz");
    let write = |head: &str| {
        let text = format!(
            "model M {{\n input image: [8, 8, 1]\n x = image |> {head}\n output logits = x\n}}\ntrain M {{\n data csv(\"{}\", shape: [8, 8, 1], scale: 0.0625)\n loss softmax_cross_entropy(logits, label)\n optimizer adam(lr: 0.01)\n batch 32 epochs 2 seed 4\n}}\n",
            data.display()
        );
        let p = dir.path().join("m.cnn");
        std::fs::write(&p, text).unwrap();
        p
    };
    let p = write("flatten |> dense(5)");
    let o =
        cnnc().args(["run", p.to_str().unwrap(), "--out", dir.path().join("o").to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the data has 10 classes but `dense1` gives 5 scores"),
        "{}",
        text(&o)
    );
    let p =
        write("conv(8, 3x3, pad: same) |> batchnorm |> relu |> dropout(0.2) |> maxpool(2x2) |> flatten |> dense(10)");
    let out = dir.path().join("bn");
    let o = cnnc().args(["run", p.to_str().unwrap(), "--out", out.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let m = metrics(&out);
    assert!(m[1][5] > 0.8, "batchnorm and dropout train: {m:?}");
    let (w, _) = cnnc_runtime::weights::load(&out.join("weights.safetensors")).unwrap();
    let mean = &w["batchnorm1/running_mean"];
    assert!(mean.1.iter().any(|&v| v != 0.0), "running statistics were updated");
    // Both backends evaluate the saved weights alike (batchnorm on its running statistics).
    let eval = |backend: &str| {
        let args = ["run", p.to_str().unwrap(), "--eval", "--out", out.to_str().unwrap(), "--backend", backend];
        let o = cnnc().args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(eval("reference"), eval("lir"));
    // Training on the reference executor follows the same curve.
    let reference = dir.path().join("bn-reference");
    let args = ["run", p.to_str().unwrap(), "--out", reference.to_str().unwrap(), "--backend", "reference"];
    let o = cnnc().args(args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for (a, b) in m.iter().zip(metrics(&reference)) {
        assert!((a[2] - b[2]).abs() <= 1e-3 * b[2].abs().max(1.0), "train losses {a:?} / {b:?}");
    }
}

/// A model on the 8×8 digits with a fixed (constant) filter, a body and a head named `head`.
fn digits_model(dir: &Path, head: &str) -> PathBuf {
    let data = common::root().join("examples/data/digits.csv.gz");
    let text = format!(
        "const EDGE: [3, 3, 1, 1] = [1, 0, -1, 2, 0, -2, 1, 0, -1]\nmodel M {{\n input image: [8, 8, 1]\n e = image |> conv(1, 3x3, pad: same, weights: EDGE, bias: false)\n x = concat(image, e) |> conv(8, 3x3, pad: same, name: \"body\") |> relu |> flatten |> dense(10, name: \"{head}\")\n output logits = x\n}}\ntrain M {{\n data csv(\"{}\", shape: [8, 8, 1], scale: 0.0625)\n loss softmax_cross_entropy(logits, label)\n optimizer adam(lr: 0.01)\n batch 32 epochs 1 seed 4\n}}\n",
        data.display()
    );
    let p = dir.join(format!("{head}.cnn"));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn init_starts_from_pretrained_weights_and_bad_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = digits_model(dir.path(), "head");
    let out = dir.path().join("first");
    let o = cnnc().args(["run", first.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let trained = out.join("weights.safetensors");
    // A new head over the trained body: the body is loaded, the head starts fresh.
    let second = digits_model(dir.path(), "new_head");
    let run_init = |model: &Path, init: &Path| {
        let args = ["run", model.to_str().unwrap(), "--init", init.to_str().unwrap(), "--out"];
        cnnc().args(args).arg(dir.path().join("second")).output().unwrap()
    };
    let o = run_init(&second, &trained);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("initialized 2 of 4 parameters"), "{stdout}");
    assert!(stdout.contains("fresh (not in the file): new_head/bias, new_head/weight"), "{stdout}");
    // Constants come from the model file, never from weights: a file without them evaluates.
    let (mut tensors, _) = cnnc_runtime::weights::load(&trained).unwrap();
    assert!(tensors.remove("conv1/weight").is_some(), "the constant filter was saved too");
    let write = |path: &Path, tensors: &std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>| {
        let named: Vec<(&str, &[usize], &[f32])> =
            tensors.iter().map(|(n, (s, v))| (n.as_str(), s.as_slice(), v.as_slice())).collect();
        cnnc_runtime::weights::save(path, &named, Default::default()).unwrap();
    };
    let without = dir.path().join("without_constants.safetensors");
    write(&without, &tensors);
    let o = cnnc()
        .args(["run", first.to_str().unwrap(), "--eval", "--weights", without.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Non-finite values, wrong shapes and files of another model are errors that name them.
    let mut nan = tensors.clone();
    nan.get_mut("body/bias").unwrap().1[3] = f32::NAN;
    let nan_file = dir.path().join("nan.safetensors");
    write(&nan_file, &nan);
    let o = cnnc()
        .args(["run", first.to_str().unwrap(), "--eval", "--weights", nan_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tensor `body/bias` holds NaN"), "{}", text(&o));
    let mut shaped = tensors.clone();
    shaped.insert("body/bias".into(), (vec![7], vec![0.0; 7]));
    let shaped_file = dir.path().join("shaped.safetensors");
    write(&shaped_file, &shaped);
    let o = run_init(&second, &shaped_file);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("`body/bias` has shape [7]"), "{}", text(&o));
    let other: std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> =
        [("fc/weight".to_string(), (vec![2], vec![0.0, 1.0]))].into_iter().collect();
    let other_file = dir.path().join("other.safetensors");
    write(&other_file, &other);
    let o = run_init(&second, &other_file);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("has no parameter of this model (it has fc/weight)"),
        "{}",
        text(&o)
    );
    // --weights does not start training; it says what does.
    let o = cnnc().args(["run", first.to_str().unwrap(), "--weights", without.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("use --init FILE"), "{}", text(&o));
}

/// A model that passes the check but whose parameters and training step cannot fit in memory is
/// refused before anything is allocated, with the figures, exit 2 (it used to abort with exit 134).
#[test]
fn a_run_too_large_for_memory_is_refused_with_the_figures() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::root().join("examples/data/digits.csv.gz");
    let model = format!(
        "model M {{\n input image: [8, 8, 1]\n x = image |> flatten |> dense(1073741824) |> dense(10)\n output logits = x\n}}\ntrain M {{\n data csv(\"{}\", shape: [8, 8, 1], scale: 0.0625)\n loss softmax_cross_entropy(logits, label)\n optimizer sgd(lr: 0.01)\n batch 32 epochs 1\n}}\n",
        data.display()
    );
    let p = dir.path().join("huge.cnn");
    std::fs::write(&p, model).unwrap();
    let out = dir.path().join("out");
    let o = run(&["check", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = run(&["run", p.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("GiB available"), "{}", text(&o));
    assert!(!out.join("weights.safetensors").exists());
    // Prediction checks too, before it makes the parameters.
    let image = common::root().join("examples/data/camera.png");
    let o = run(&["run", p.to_str().unwrap(), "--predict", image.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("GiB available"), "{}", text(&o));
}

#[test]
fn predict_reads_tensors_of_any_rank_and_batch_and_writes_exact_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let model = "examples/signals.cnn";
    // The initial weights of the model's seed, written by `--emit weights`.
    let o = run(&["build", model, "--model", "Signal1D", "--emit", "weights", "-o", &path("w.safetensors")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (weights, _) = cnnc_runtime::weights::load(Path::new(&path("w.safetensors"))).unwrap();
    assert!(weights.contains_key("conv1/weight"), "{:?}", weights.keys());
    // A batch of three 1D signals [1000, 2] as .npy, and the second one alone as .safetensors.
    let values: Vec<f32> = (0..3 * 1000 * 2).map(|i| (i as f32 * 0.37).sin() * (i as f32 * 0.0011).cos()).collect();
    cnnc_runtime::weights::save_npy(Path::new(&path("batch.npy")), &[3, 1000, 2], &values).unwrap();
    let second: Vec<(&str, &[usize], &[f32])> = vec![("signal", &[1000, 2], &values[2000..4000])];
    cnnc_runtime::weights::save(Path::new(&path("one.safetensors")), &second, Default::default()).unwrap();
    let predict = |input: &str, output: &str, backend: &str| {
        let args = ["run", model, "--model", "Signal1D", "--weights", &path("w.safetensors"), "--predict", input];
        let o = run(&[&args[..], &["--output", &path(output), "--backend", backend, "--out", &path("runs")]].concat());
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let bytes = std::fs::read(path(output)).unwrap();
        // The .npy header: magic, version, header length, then a dict with the shape.
        assert_eq!(&bytes[..6], b"\x93NUMPY");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        let header = String::from_utf8_lossy(&bytes[10..10 + header_len]).to_string();
        let data: Vec<f32> =
            bytes[10 + header_len..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        (header, data, String::from_utf8_lossy(&o.stdout).to_string())
    };
    let (header, jit, stdout) = predict(&path("batch.npy"), "jit.npy", "jit");
    assert!(header.contains("'shape': (3, 4)") && header.contains("'descr': '<f4'"), "{header}");
    assert!(stdout.contains("batch.npy[2]:"), "each example of the batch is answered: {stdout}");
    let (_, reference, _) = predict(&path("batch.npy"), "reference.npy", "reference");
    let scale = reference.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = jit.iter().zip(&reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-4 * scale, "the JIT against the reference executor: {worst}");
    assert!(jit[..4] != jit[4..8], "different signals give different outputs: {jit:?}");
    let (header, one, _) = predict(&path("one.safetensors"), "one.npy", "jit");
    assert!(header.contains("'shape': (1, 4)"), "{header}");
    assert_eq!(one, jit[4..8], "the second example alone gives the batch's second row");
    // Tensors that are not the model's input, or not floats, or not finite, are refused.
    cnnc_runtime::weights::save_npy(Path::new(&path("wrong.npy")), &[1000, 3], &values[..3000]).unwrap();
    let mut bad = values[..2000].to_vec();
    bad[17] = f32::NAN;
    cnnc_runtime::weights::save_npy(Path::new(&path("nan.npy")), &[1000, 2], &bad).unwrap();
    std::fs::write(path("junk.npy"), b"not an array").unwrap();
    for (file, says) in [
        ("wrong.npy", "holds a tensor of shape [1000, 3]; the model's input is [1000, 2]"),
        ("nan.npy", "value 17 is NaN"),
        ("junk.npy", "is not a valid data file"),
    ] {
        let o =
            run(&["run", model, "--model", "Signal1D", "--weights", &path("w.safetensors"), "--predict", &path(file)]);
        assert_eq!(o.status.code(), Some(2), "{file}: {}", text(&o));
        assert!(text(&o).contains(says), "{file}: {}", text(&o));
    }
    // Crops are for images: a tensor is the model's input as is.
    let o = run(&[
        "run",
        model,
        "--model",
        "Signal1D",
        "--weights",
        &path("w.safetensors"),
        "--predict",
        &path("batch.npy"),
        "--multi-crop",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--multi-crop crops images"), "{}", text(&o));
}

#[test]
fn a_checkpoint_mixed_from_two_saves_or_damaged_is_refused_and_a_killed_run_resumes_exactly() {
    let lenet = |epochs: &str, out: &Path, resume: bool| {
        let mut args = vec!["run", "examples/lenet5.cnn", "--epochs", epochs, "--limit", "300", "--quiet"];
        if resume {
            args.push("--resume");
        }
        args.extend(["--out", out.to_str().unwrap()]);
        run(&args)
    };
    let (two, one, three) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    assert_eq!(lenet("2", two.path(), false).status.code(), Some(0));
    assert_eq!(lenet("1", one.path(), false).status.code(), Some(0));
    let started = std::time::Instant::now();
    assert_eq!(lenet("3", three.path(), false).status.code(), Some(0));
    let whole = started.elapsed().as_millis() as u64;
    // What a kill between the two writes of epoch 3's save leaves: the epoch-2 pair kept as the
    // previous save, epoch 3's weights written, epoch 2's state not yet replaced.
    let mixed = tempfile::tempdir().unwrap();
    let put = |from: &Path, to: &str| std::fs::copy(from, mixed.path().join(to)).unwrap();
    put(&two.path().join("weights.safetensors"), "weights.prev.safetensors");
    put(&two.path().join("state.safetensors"), "state.prev.safetensors");
    put(&two.path().join("state.safetensors"), "state.safetensors");
    put(&two.path().join("metrics.csv"), "metrics.csv");
    put(&three.path().join("weights.safetensors"), "weights.safetensors");
    let before = std::fs::read(mixed.path().join("weights.safetensors")).unwrap();
    let o = lenet("3", mixed.path(), true);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let said = text(&o);
    assert!(said.contains("different saves") && said.contains("epoch 3") && said.contains("epoch 2"), "{said}");
    assert!(said.contains("--fallback"), "the way on is named: {said}");
    assert_eq!(std::fs::read(mixed.path().join("weights.safetensors")).unwrap(), before, "nothing overwritten");
    // Asked to, it resumes from the save before (epoch 2) and ends where the straight run did.
    let o = run(&[
        "run",
        "examples/lenet5.cnn",
        "--epochs",
        "3",
        "--limit",
        "300",
        "--quiet",
        "--resume",
        "--fallback",
        "--out",
        mixed.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("resuming from the one before (epoch 2)"), "{}", text(&o));
    let (got, _) = cnnc_runtime::weights::load(&mixed.path().join("weights.safetensors")).unwrap();
    let (want, _) = cnnc_runtime::weights::load(&three.path().join("weights.safetensors")).unwrap();
    assert!(same_bits(&got, &want), "the fallback resume ends with the straight run's weights");
    // The mixed pair it resumed past was never kept as a previous save: what is kept is whole.
    let mark = |file: &str| cnnc_runtime::weights::metadata(&mixed.path().join(file)).unwrap()["checkpoint"].clone();
    assert_eq!(mark("weights.prev.safetensors"), mark("state.prev.safetensors"));
    // A new run in a folder of an old one does not keep the old run's saves as its previous.
    assert!(two.path().join("weights.prev.safetensors").exists());
    assert_eq!(lenet("1", two.path(), false).status.code(), Some(0));
    assert!(
        !two.path().join("weights.prev.safetensors").exists() && !two.path().join("state.prev.safetensors").exists()
    );
    // A damaged optimizer state (one value changed after the save) is refused too.
    let damaged = tempfile::tempdir().unwrap();
    for file in ["weights.safetensors", "state.safetensors", "metrics.csv"] {
        std::fs::copy(one.path().join(file), damaged.path().join(file)).unwrap();
    }
    let state = damaged.path().join("state.safetensors");
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x40;
    std::fs::write(&state, bytes).unwrap();
    let o = lenet("2", damaged.path(), true);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("checksum"), "{}", text(&o));
    // Killed at any moment, then resumed: the result equals the uninterrupted run, or the run
    // refuses to resume; never different weights. Temporary files of killed saves are removed.

    // Kills spread over the run's length (as long as the straight run took on this machine).
    let mut resumed = 0;
    for delay_ms in [whole * 4 / 10, whole * 6 / 10, whole * 7 / 10, whole * 8 / 10, whole * 9 / 10] {
        let killed = tempfile::tempdir().unwrap();
        let mut child = cnnc()
            .args(["run", "examples/lenet5.cnn", "--epochs", "3", "--limit", "300", "--quiet", "--out"])
            .arg(killed.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        std::fs::write(killed.path().join(".weights.safetensors.abc123.tmp"), b"left by a killed save").unwrap();
        if !killed.path().join("state.safetensors").exists() {
            continue; // killed before its first save: nothing to resume
        }
        let o = lenet("3", killed.path(), true);
        match o.status.code() {
            Some(0) => {
                let (got, _) = cnnc_runtime::weights::load(&killed.path().join("weights.safetensors")).unwrap();
                assert!(same_bits(&got, &want), "killed after {delay_ms} ms and resumed: different weights");
                assert!(
                    !killed.path().join(".weights.safetensors.abc123.tmp").exists(),
                    "stale temporary file removed"
                );
                resumed += 1;
            }
            Some(2) => assert!(text(&o).contains("different saves"), "{}", text(&o)),
            other => panic!("resume after a kill: exit {other:?}: {}", text(&o)),
        }
    }
    eprintln!("{resumed} of 5 killed runs resumed to the straight run's weights ({whole} ms a run)");
}

/// Losses read the data's one label per example: L2 on an output of one value trains (the
/// label as its target; it used to panic), and sigmoid cross-entropy on ten classes is refused
/// by the checker (its targets are 0 or 1), where it used to train on nonsense.
#[test]
fn l2_on_one_value_trains_and_sigmoid_on_ten_classes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::root().join("examples/data/mnist10k");
    let model = |loss: &str| {
        format!(
            "model R {{\n    input image: [28, 28, 1]\n    output value = image |> flatten |> dense(1)\n}}\n\n\
             train R {{\n    data mnist(\"{}\", limit: 200)\n    loss {loss}\n    optimizer sgd(lr: 0.001)\n    epochs 2\n}}\n",
            data.display()
        )
    };
    let path = dir.path().join("r.cnn");
    std::fs::write(&path, model("l2(value, label)")).unwrap();
    let out = dir.path().join("run");
    let o = run(&["run", path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let m = metrics(&out);
    assert!(m.iter().all(|r| r[2].is_finite() && r[2] > 0.0), "{m:?}");
    assert!(m[1][2] < m[0][2], "the L2 loss falls: {m:?}");
    // MNIST's ten classes are known to the checker: refused there (other data, at the run).
    std::fs::write(&path, model("sigmoid_cross_entropy(value, label)")).unwrap();
    let o = run(&["run", path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("0 or 1") && text(&o).contains("10 classes"), "{}", text(&o));
}
