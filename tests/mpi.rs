//! Data-parallel training under `mpirun` (the `mpi` feature: `cargo test --workspace --features
//! mpi --test mpi`, which `.ci/run` runs after installing Open MPI). Two processes must reach the weights
//! one process reaches on the same global batches, within the norm-relative 1e-4, with
//! batchnorm's statistics and dropout's masks the global batch's; a rank that dies must end the
//! run and leave the last save whole.
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn cnnc_path() -> &'static str {
    env!("CARGO_BIN_EXE_cnnc")
}

/// `cnnc ARGS` as one process.
fn one(args: &[&str]) -> Output {
    let o = Command::new(cnnc_path()).args(args).current_dir(common::root()).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    o
}

/// `mpirun -np N cnnc ARGS`.
fn mpirun(n: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.current_dir(common::root())
        // CI runs as root, which Open MPI refuses unless told.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "-np", &n.to_string(), cnnc_path()]);
    c
}

fn many(n: usize, args: &[&str]) -> Output {
    mpirun(n).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Every tensor of two weights files agrees: ‖a − b‖∞ ≤ 1e-4 · max(‖b‖∞, 1).
fn same_weights(a: &Path, b: &Path) {
    let (a, _) = cnnc_runtime::weights::load(a).unwrap();
    let (b, _) = cnnc_runtime::weights::load(b).unwrap();
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, (shape, x)) in &a {
        let (other, y) = &b[name];
        assert_eq!(shape, other, "{name}");
        let diff = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        let norm = y.iter().map(|v| v.abs()).fold(1f32, f32::max);
        assert!(diff <= 1e-4 * norm, "{name}: ‖a − b‖∞ = {diff} against ‖b‖∞ = {norm}");
    }
}

fn out(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).to_string_lossy().into_owned()
}

#[test]
fn two_processes_train_lenet5_as_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["run", "examples/lenet5.cnn", "--epochs", "2", "--limit", "650"];
    let single = one(&[&args[..], &["--out", &out(&dir, "one")]].concat());
    let o = many(2, &[&args[..], &["--out", &out(&dir, "two")]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    same_weights(&dir.path().join("two/weights.safetensors"), &dir.path().join("one/weights.safetensors"));
    // Rank 0 alone prints: one report, with the same losses (650 examples: the last batch of
    // each epoch, 10 examples, is split 5 and 5).
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.matches("weights: ").count(), 1, "{stdout}");
    assert!(stdout.contains("2 processes share each batch"), "{stdout}");
    assert!(stdout.contains("2 processes: 0.25 MB of gradients sent in buckets of 256 KB"), "{stdout}");
    // The epoch lines agree but for the images/s figure and the time.
    let losses = |s: &str| -> Vec<Vec<String>> {
        s.lines()
            .filter(|l| l.starts_with("epoch"))
            .map(|l| {
                let words: Vec<String> = l.split_whitespace().map(String::from).collect();
                let speed = words.iter().position(|w| w == "img/s").unwrap_or(words.len());
                words[..speed.saturating_sub(1)].to_vec()
            })
            .collect()
    };
    let expected = losses(&String::from_utf8_lossy(&single.stdout));
    assert_eq!(expected.len(), 2);
    assert_eq!(losses(&stdout), expected);
}

#[test]
fn synchronized_batchnorm_and_dropout_match_one_process_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    // 330 examples in batches of 50: six full batches, then 30 (15 on each process).
    for backend in ["jit", "reference"] {
        let args = ["run", "tests/mpi/batchnorm.cnn", "--limit", "330", "--quiet", "--backend", backend];
        let (a, b) = (format!("{backend}-one"), format!("{backend}-two"));
        one(&[&args[..], &["--out", &out(&dir, &a)]].concat());
        let o = many(2, &[&args[..], &["--out", &out(&dir, &b)]].concat());
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let (a, b) = (dir.path().join(a), dir.path().join(b));
        same_weights(&b.join("weights.safetensors"), &a.join("weights.safetensors"));
        // The running statistics too, which come from the global batch's statistics.
        let (w, _) = cnnc_runtime::weights::load(&b.join("weights.safetensors")).unwrap();
        assert!(w.contains_key("batchnorm1/running_var"), "{:?}", w.keys());
    }
    // Without the synchronization the processes would normalize by their own halves: three
    // processes split the batches differently and still agree. Buckets of 1 KB make the
    // gradient sums many, started between batchnorm's exchanges in a different order on each
    // process; one sum after the step (0) is the other way.
    let args = ["run", "tests/mpi/batchnorm.cnn", "--limit", "330"];
    for kb in ["1", "0"] {
        let name = format!("three-{kb}");
        let o = mpirun(3).env("CNNC_BUCKET_KB", kb).args(args).args(["--out", &out(&dir, &name)]).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let how = if kb == "0" { "summed after the backward pass" } else { "sent in buckets of 1 KB" };
        assert!(text(&o).contains(how), "{}", text(&o));
        same_weights(
            &dir.path().join(name).join("weights.safetensors"),
            &dir.path().join("jit-one/weights.safetensors"),
        );
    }
}

#[test]
fn resuming_under_mpirun_continues_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let base = ["run", "examples/lenet5.cnn", "--limit", "640", "--quiet"];
    one(&[&base[..], &["--epochs", "2", "--out", &out(&dir, "straight")]].concat());
    let two = out(&dir, "two");
    let o = many(2, &[&base[..], &["--epochs", "1", "--out", &two]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = many(2, &[&base[..], &["--epochs", "2", "--resume", "--out", &two]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    same_weights(&dir.path().join("two/weights.safetensors"), &dir.path().join("straight/weights.safetensors"));
    let metrics = std::fs::read_to_string(dir.path().join("two/metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 3, "a header and two epochs: {metrics}");
}

#[test]
fn a_rank_that_dies_ends_the_run_and_the_last_save_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("killed");
    let mut child = mpirun(2)
        .args(["run", "examples/lenet5.cnn", "--limit", "2000", "--epochs", "1000", "--quiet", "--out"])
        .arg(&run_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first save, then kill rank 1 in the middle of training.
    let weights = run_dir.join("weights.safetensors");
    let started = Instant::now();
    while !weights.exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "no save within two minutes");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rank1 = rank_pid(1).expect("rank 1 runs");
    assert!(Command::new("kill").args(["-9", &rank1.to_string()]).status().unwrap().success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the run goes on after a rank died");
        std::thread::sleep(Duration::from_millis(100));
    };
    let o = child.wait_with_output().unwrap();
    assert!(!status.success(), "{}", text(&o));
    assert!(text(&o).contains("exited on signal 9"), "mpirun names the rank that died: {}", text(&o));
    // The last save reads whole (checksums checked), and training resumes from it.
    cnnc_runtime::weights::load(&weights).unwrap();
    let saved = cnnc_runtime::weights::metadata(&run_dir.join("state.safetensors")).unwrap();
    let epochs: usize = saved["epochs"].parse().unwrap();
    let more = (epochs + 1).to_string();
    let o = many(
        2,
        &[
            "run",
            "examples/lenet5.cnn",
            "--limit",
            "2000",
            "--quiet",
            "--resume",
            "--fallback",
            "--epochs",
            &more,
            "--out",
            run_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// The process id of rank `rank` of a running `cnnc` under mpirun (from its environment).
fn rank_pid(rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else { continue };
        if exe != Path::new(cnnc_path()) {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else { continue };
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn what_one_process_does_is_refused_under_mpirun() {
    let o = many(2, &["run", "examples/lenet5.cnn", "--eval"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("run --eval as one process"), "{}", text(&o));
    // A batch that leaves a process no example for its batchnorm statistics (301 = 6·50 + 1).
    let dir = tempfile::tempdir().unwrap();
    let o = many(2, &["run", "tests/mpi/batchnorm.cnn", "--limit", "301", "--out", &out(&dir, "x")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("the last batch of each epoch has 1 example"), "{}", text(&o));
    assert!(!dir.path().join("x/weights.safetensors").exists());
    // Triplet mining needs the whole batch in one process.
    let o = many(2, &["run", "examples/digits_metric.cnn", "--limit", "200", "--out", &out(&dir, "y")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("mines its triplets among the whole batch"), "{}", text(&o));
}

#[test]
fn a_batch_smaller_than_the_group_trains_without_batchnorm() {
    // LeNet-5 has no batchnorm: a last batch of one example leaves rank 1 nothing, and the
    // step is still the global batch's.
    let dir = tempfile::tempdir().unwrap();
    let args = ["run", "examples/lenet5.cnn", "--epochs", "1", "--limit", "129", "--quiet"];
    one(&[&args[..], &["--out", &out(&dir, "one")]].concat());
    let o = many(2, &[&args[..], &["--out", &out(&dir, "two")]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    same_weights(&dir.path().join("two/weights.safetensors"), &dir.path().join("one/weights.safetensors"));
}

/// A Siamese model fed triplets: every process takes whole triplets of each global batch, an
/// example repeated across shares is augmented as one process would, and the weights are one
/// process's. (With SGD: Adam turns the noise-sized gradients of the convolutions' biases, which
/// the batchnorm after them cancels, into steps of the learning rate, which then differ.)
#[test]
fn two_processes_train_a_triplet_model_as_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("siamese.cnn");
    let source = std::fs::read_to_string(common::root().join("examples/siamese.cnn")).unwrap();
    let faces = common::root().join("examples/data/lfw_faces");
    let source = source
        .replace("optimizer adam(lr: 0.001)", "optimizer sgd(lr: 0.05, momentum: 0.9)")
        .replace("\"data/lfw_faces\"", &format!("{:?}", faces.to_str().unwrap()));
    std::fs::write(&model, source).unwrap();
    let args = ["run", model.to_str().unwrap(), "--model", "FaceNet", "--epochs", "2"];
    one(&[&args[..], &["--out", &out(&dir, "one")]].concat());
    let o = many(2, &[&args[..], &["--out", &out(&dir, "two")]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    same_weights(&dir.path().join("two/weights.safetensors"), &dir.path().join("one/weights.safetensors"));
}
