//! face-api's pretrained FaceRecognitionNet (`examples/face_recognition.cnn`), its TF.js weights
//! imported as they are: its descriptors equal a numpy implementation of the original network
//! (`tests/faceapi/make.py`, outputs committed), and it serves a one-shot database of real faces:
//! the astronaut's photo and 20 faces of Labeled Faces in the Wild.

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

fn npy(path: &Path) -> Vec<f32> {
    cnnc_runtime::predict::read_tensors(path, &[128], "").unwrap().concat()
}

/// Imports the weights into `dir/w.safetensors`.
fn import(dir: &Path) -> String {
    let weights = dir.join("w.safetensors");
    let o = run(&[
        "import",
        "examples/face_recognition.cnn",
        "examples/data/faceapi/face_recognition_model.safetensors",
        "-o",
        weights.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    // Every layer by its name: the convolutions, their scale layers, and `fc`.
    assert!(stdout.contains("117 tensors of `FaceRecognitionNet` from 59 layers"), "{stdout}");
    assert!(stdout.contains("conv256_down_out/conv2/scale  →  conv256_down_out/conv2/scale  (convolution, by name)"));
    assert!(!stdout.contains("by order"), "{stdout}");
    weights.to_str().unwrap().to_string()
}

#[test]
fn imported_face_recognition_net_gives_the_original_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let weights = import(dir.path());
    let want = npy(&root().join("tests/faceapi/descriptors.npy"));
    assert_eq!(want.len(), 3 * 128);
    for backend in ["jit", "reference"] {
        let out = dir.path().join(format!("{backend}.npy"));
        let o = run(&[
            "run",
            "examples/face_recognition.cnn",
            "--weights",
            &weights,
            "--predict",
            "tests/faceapi/input.npy",
            "--output",
            out.to_str().unwrap(),
            "--backend",
            backend,
            "--out",
            dir.path().to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{backend}: {}", text(&o));
        let got = npy(&out);
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let worst = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 1e-4 * scale, "{backend}: ‖a − b‖∞ = {worst}");
        // The astronaut and two LFW faces: three people, each pair farther than face-api's 0.6.
        let d = |i: usize, j: usize| cnnc_runtime::metric::distance(&got[i * 128..][..128], &got[j * 128..][..128]);
        assert!(d(0, 1) > 0.6 && d(0, 2) > 0.6 && d(1, 2) > 0.6, "{backend}: {} {} {}", d(0, 1), d(0, 2), d(1, 2));
    }
}

#[test]
fn a_one_shot_database_of_real_faces() {
    let dir = tempfile::tempdir().unwrap();
    let weights = import(dir.path());
    let db = dir.path().join("faces.safetensors");
    let db = db.to_str().unwrap();
    let model = "examples/face_recognition.cnn";
    // One image a person: the astronaut and 20 LFW faces. The threshold comes from the train
    // section's held-out pairs (augmented views of the 20 LFW faces it holds out).
    let o = run(&["run", model, "--weights", &weights, "--enroll", "examples/data/faces/people", "-o", db]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("enrolled 21 people (21 images)"), "{stdout}");
    let line = stdout.lines().find(|l| l.starts_with("distance threshold")).unwrap();
    let threshold: f32 = line.split_whitespace().nth(2).unwrap().trim_end_matches(':').parse().unwrap();
    assert!((0.3..0.7).contains(&threshold), "{stdout}");
    assert!(line.contains("ROC AUC 0.99"), "{stdout}");
    // Augmented copies of her face are named; an LFW face never enrolled is not, and a mirrored
    // enrolled one is.
    let queries = root().join("examples/data/faces/queries");
    let mut files: Vec<String> =
        std::fs::read_dir(&queries).unwrap().map(|e| e.unwrap().path().to_str().unwrap().to_string()).collect();
    files.sort();
    let mut args = vec!["run", model, "--weights", &weights, "--database", db, "--identify"];
    args.extend(files.iter().map(String::as_str));
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    for f in &files {
        let line = stdout.lines().find(|l| l.starts_with(f.as_str())).unwrap_or_else(|| panic!("{f}: {stdout}"));
        let answer = line[f.len() + 2..].split(' ').next().unwrap();
        let name = Path::new(f).file_stem().unwrap().to_str().unwrap();
        let expected = match name {
            n if n.starts_with("astronaut") => "astronaut",
            "face085_mirrored" => "face085",
            _ => "not",
        };
        assert_eq!(answer, expected, "{line}");
    }
    let o = run(&[
        "run",
        model,
        "--weights",
        &weights,
        "--database",
        db,
        "--verify",
        "examples/data/faces/people/astronaut/astronaut.png",
        "examples/data/faces/queries/face000.png",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("different people (distance 0.87"), "{}", text(&o));
    // A distance given with --distance, and refused when it is no distance.
    let o = run(&[
        "run",
        model,
        "--weights",
        &weights,
        "--enroll",
        "examples/data/faces/people",
        "--distance",
        "0.6",
        "-o",
        db,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("distance threshold 0.6000: given with --distance"), "{}", text(&o));
    let o = run(&["run", model, "--enroll", "examples/data/faces/people", "--distance", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("is not a positive distance"), "{}", text(&o));
}
