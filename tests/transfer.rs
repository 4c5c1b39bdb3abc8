//! Transfer learning as the course teaches it (examples/transfer_digits.cnn): a body pretrained
//! by cnnc, loaded with `--init` under a new head and frozen, with its activations cached.

mod common;

use common::{cnnc, root};
use std::path::Path;
use std::process::Output;

fn run(args: &[&str]) -> Output {
    cnnc().args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The test accuracy a run printed last.
fn accuracy(out: &Output) -> f64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with("test accuracy:")).expect("an accuracy line");
    line["test accuracy:".len()..].trim().split('%').next().unwrap().trim().parse().unwrap()
}

fn weights(path: &Path) -> cnnc_runtime::import::Tensors {
    cnnc_runtime::weights::load(path).unwrap().0
}

#[test]
fn a_pretrained_frozen_body_beats_a_random_one_and_caching_changes_no_weight() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let model = "examples/transfer_digits.cnn";
    let o = run(&["run", model, "--model", "Pretrain", "--out", &path("pre"), "--quiet"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let pretrained = path("pre/weights.safetensors");
    // The new head over the pretrained body, then over the seed's random body.
    let few = |out: &str, init: Option<&str>| {
        let mut args = vec!["run", model, "--model", "FewShot", "--out", out];
        if let Some(init) = init {
            args.extend(["--init", init]);
        }
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        o
    };
    let loaded = few(&path("few"), Some(&pretrained));
    let stdout = String::from_utf8_lossy(&loaded.stdout).to_string();
    assert!(stdout.contains("frozen body: 8 of its 8 parameters from"), "{stdout}");
    assert!(stdout.contains("computed and kept in"), "{stdout}");
    let random = few(&path("random"), None);
    let (a, b) = (accuracy(&loaded), accuracy(&random));
    assert!(a > b + 2.0, "a pretrained body ({a}%) beats a random one ({b}%) under the same head");
    // The frozen body is not changed by training (its batchnorm runs on its running
    // statistics, not updated), and the weights file holds the whole model.
    let (pre, trained) = (weights(Path::new(&pretrained)), weights(Path::new(&path("few/weights.safetensors"))));
    for (name, value) in &pre {
        if name.starts_with("features1/") {
            assert_eq!(trained.get(name), Some(value), "{name} kept as loaded");
        }
    }
    assert!(trained.contains_key("head/weight"));
    let o = run(&["run", model, "--model", "FewShot", "--out", &path("few"), "--eval"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!((accuracy(&o) - a).abs() < 1e-9, "evaluating the saved model gives the run's accuracy");
    // Resuming (no --init: the body comes from the run's own weights file, which holds the
    // whole model at every save) keeps the pretrained body.
    let o = run(&["run", model, "--model", "FewShot", "--out", &path("few"), "--resume", "--epochs", "17", "--quiet"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let resumed = weights(&dir.path().join("few/weights.safetensors"));
    for (name, value) in &pre {
        if name.starts_with("features1/") {
            assert_eq!(resumed.get(name), Some(value), "{name} kept on --resume");
        }
    }
    // A second run reads the activations back.
    let again = few(&path("few"), Some(&pretrained));
    assert!(String::from_utf8_lossy(&again.stdout).contains("read back from"), "{}", text(&again));
    // Without the cache, every step runs the body: the same weights come out.
    let source = std::fs::read_to_string(root().join(model)).unwrap();
    let data = root().join("examples/data/mnist10k");
    let uncached = source.replace("    cache true\n", "").replace("data/mnist10k", data.to_str().unwrap());
    assert_ne!(uncached, source);
    std::fs::write(path("uncached.cnn"), uncached).unwrap();
    let o = run(&[
        "run",
        &path("uncached.cnn"),
        "--model",
        "FewShot",
        "--init",
        &pretrained,
        "--out",
        &path("uncached"),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let plain = weights(Path::new(&path("uncached/weights.safetensors")));
    assert_eq!(plain.keys().collect::<Vec<_>>(), trained.keys().collect::<Vec<_>>());
    for (name, (_, want)) in &plain {
        let got = &trained[name].1;
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let worst = got.iter().zip(want).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(worst <= 1e-4 * scale, "{name}: cached against uncached training, ‖a − b‖∞ = {worst}");
    }
}
