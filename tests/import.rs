//! `cnnc import`: weights made by PyTorch (tests/import/make.py, outputs committed) converted
//! into cnnc's layout give PyTorch's outputs; torchvision's state dicts pair with the stdlib's
//! nets; bad files are clear errors that write nothing.

mod common;

use cnnc_compiler::passes::{inference, Options, Pipeline};
use cnnc_runtime::import::{self, Mapping, Tensor};
use common::{cnnc, root};
use std::path::Path;
use std::process::Output;

fn run(args: &[&str]) -> Output {
    cnnc().args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A little-endian float32 .npy file's values.
fn npy(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..10 + header_len]).to_string();
    assert!(header.contains("'<f4'"), "{header}");
    bytes[10 + header_len..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-4 * scale, "{what}: ‖a − b‖∞ = {worst}");
}

/// Imports `from` into the model of `fixture.cnn`, predicts on `fixture_x.npy` with every
/// backend, and compares with PyTorch's `fixture_y.npy`.
fn imports_and_matches(dir: &Path, fixture: &str, from: &str) {
    let model = format!("tests/import/{fixture}.cnn");
    let weights = dir.join(format!("{fixture}.w.safetensors"));
    let o = run(&["import", &model, from, "-o", weights.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("by order"), "{}", text(&o));
    let want = npy(&root().join(format!("tests/import/{fixture}_y.npy")));
    for backend in ["jit", "reference"] {
        let out = dir.join(format!("{fixture}_{backend}.npy"));
        let o = run(&[
            "run",
            &model,
            "--weights",
            weights.to_str().unwrap(),
            "--predict",
            &format!("tests/import/{fixture}_x.npy"),
            "--output",
            out.to_str().unwrap(),
            "--backend",
            backend,
            "--out",
            dir.join("runs").to_str().unwrap(),
            "--quiet",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert_close(&npy(&out), &want, &format!("{fixture} from {from} on {backend} against PyTorch"));
    }
}

#[test]
fn pytorch_weights_converted_give_pytorch_outputs() {
    let dir = tempfile::tempdir().unwrap();
    // Convolution, batchnorm, PReLU (per channel and shared), grouped and depthwise
    // convolutions, a dense layer after PyTorch's [c, h, w] flatten.
    imports_and_matches(dir.path(), "small", "tests/import/small.safetensors");
    // The same from the ONNX file PyTorch exported: initializers by node, slopes unsqueezed.
    imports_and_matches(dir.path(), "small", "tests/import/small.onnx");
    // torchvision's ResNet with its own names (downsample.0/1, bn1, layer1.0.conv1), paired
    // with std.resnet's blocks by order.
    imports_and_matches(dir.path(), "tiny_resnet", "tests/import/tiny_resnet.safetensors");
}

#[test]
fn cnnc_onnx_files_import_back_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let o = run(&["import", "tests/import/small.cnn", "tests/import/small.safetensors", "-o", &path("a.safetensors")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = run(&[
        "build",
        "tests/import/small.cnn",
        "--emit",
        "onnx",
        "--weights",
        &path("a.safetensors"),
        "-o",
        &path("a.onnx"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = run(&["import", "tests/import/small.cnn", &path("a.onnx"), "-o", &path("b.safetensors")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (a, _) = cnnc_runtime::weights::load(Path::new(&path("a.safetensors"))).unwrap();
    let (b, _) = cnnc_runtime::weights::load(Path::new(&path("b.safetensors"))).unwrap();
    assert_eq!(a.len(), 19);
    assert_eq!(a, b, "cnnc's ONNX (channels-last flatten, [in, out] Gemm) imports to the exported weights");
}

/// The inference graph's layers of `model` in `file`.
fn model_layers(file: &str, model: &str) -> Vec<import::Layer> {
    let c = common::compile(&root().join(file));
    let m = c.models.iter().find(|m| m.name == model).unwrap();
    let graph = inference::run(m, &mut Pipeline::new(Options::default()).unwrap()).unwrap();
    import::layers(&graph)
}

#[test]
fn torchvision_state_dicts_pair_with_the_stdlib_nets() {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/import/torchvision.json")).unwrap()).unwrap();
    let source = |net: &str| {
        let tensors = json[net]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t[2] == "torch.float32")
            .map(|t| Tensor {
                name: t[0].as_str().unwrap().to_string(),
                shape: t[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect(),
                values: Vec::new(),
            })
            .collect();
        import::state_dict(tensors)
    };
    for (net, file, model, layers) in [
        ("resnet18", "stdlib/resnet.cnn", "ResNet18", 41),
        ("resnet34", "stdlib/resnet.cnn", "ResNet34", 73),
        ("resnet50", "stdlib/resnet.cnn", "ResNet50", 107),
        ("vgg16", "stdlib/vgg.cnn", "VGG16", 16),
        ("alexnet", "stdlib/alexnet.cnn", "AlexNet", 8),
        ("googlenet", "stdlib/inception.cnn", "GoogLeNetBN", 115),
    ] {
        let done = import::check(&model_layers(file, model), &source(net), &Mapping::default())
            .unwrap_or_else(|e| panic!("{net} into {model}: {e}"));
        assert_eq!(done.pairs.len(), layers, "{net}: every layer pairs");
        assert!(done.fresh.is_empty(), "{net}: {:?}", done.fresh);
        assert!(done.pairs.iter().all(|p| p.rule.is_none()), "by order, with no mapping");
    }
    // Transfer learning: torchvision's ResNet-18 under a new 5-class head. Its `fc` fits
    // nothing and is named in the error; ignored, the head starts fresh.
    let head = model_layers("tests/import/resnet18_flowers.cnn", "Flowers");
    let e = import::check(&head, &source("resnet18"), &Mapping::default()).unwrap_err();
    assert!(e.0.contains("`fc`") && e.0.contains("ignore fc"), "{e}");
    let done = import::check(&head, &source("resnet18"), &Mapping::parse("ignore fc").unwrap()).unwrap();
    assert_eq!(done.fresh, ["flowers"]);
    assert_eq!(done.ignored, ["fc"]);
}

#[test]
fn bad_files_and_mappings_are_clear_errors_that_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let import = |from: &str, extra: &[&str]| {
        let out = path("out.safetensors");
        let o = run(&[&["import", "tests/import/small.cnn", from, "-o", &out][..], extra].concat());
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(!Path::new(&out).exists(), "nothing written: {}", text(&o));
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    // PyTorch's file, its float tensors (cnnc's weights files hold float32 only).
    let tensors: import::Tensors = import::read(&root().join("tests/import/small.safetensors"))
        .unwrap()
        .layers
        .into_iter()
        .flat_map(|l| l.tensors.into_values())
        .map(|t| (t.name, (t.shape, t.values)))
        .collect();
    let write = |name: &str, edit: &dyn Fn(&mut import::Tensors)| {
        let mut t = tensors.clone();
        edit(&mut t);
        let named: Vec<(&str, &[usize], &[f32])> =
            t.iter().map(|(n, (s, v))| (n.as_str(), s.as_slice(), v.as_slice())).collect();
        cnnc_runtime::weights::save(Path::new(&path(name)), &named, Default::default()).unwrap();
        path(name)
    };
    // A NaN names its tensor.
    let nan = write("nan.safetensors", &|t| t.get_mut("grouped.weight").unwrap().1[5] = f32::NAN);
    let e = import(&nan, &[]);
    assert!(e.contains("`grouped.weight`") && e.contains("non-finite"), "{e}");
    // A module cnnc has no layer for (a layer norm: weight and bias of rank 1).
    let ln = write("ln.safetensors", &|t| {
        t.insert("norm.weight".into(), (vec![4], vec![1.0; 4]));
        t.insert("norm.bias".into(), (vec![4], vec![0.0; 4]));
    });
    let e = import(&ln, &[]);
    assert!(e.contains("module `norm`") && e.contains("`ignore norm`"), "{e}");
    // ... which a mapping may leave out.
    std::fs::write(path("ignore.map"), "ignore norm\n").unwrap();
    let o =
        run(&["import", "tests/import/small.cnn", &ln, "--map", &path("ignore.map"), "-o", &path("ok.safetensors")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Shapes that fit no layer: another network's weights.
    let e = import("tests/import/tiny_resnet.safetensors", &[]);
    assert!(e.contains("nothing in the model takes") || e.contains("shape"), "{e}");
    // A rule to a layer the model lacks, and a rule that is not one.
    std::fs::write(path("bad.map"), "conv1 => body/conv9\n").unwrap();
    let e = import("tests/import/small.safetensors", &["--map", &path("bad.map")]);
    assert!(e.contains("line 1") && e.contains("`body/conv9`"), "{e}");
    std::fs::write(path("typo.map"), "conv1 -> conv1\n").unwrap();
    let e = import("tests/import/small.safetensors", &["--map", &path("typo.map")]);
    assert!(e.contains("line 1") && e.contains("not a rule"), "{e}");
    // Not a weights file at all.
    std::fs::write(path("junk.safetensors"), b"not safetensors").unwrap();
    let e = import(&path("junk.safetensors"), &[]);
    assert!(e.contains("not a valid safetensors file"), "{e}");
    std::fs::write(path("junk.onnx"), b"\xff\xff\xff").unwrap();
    let e = import(&path("junk.onnx"), &[]);
    assert!(e.contains("not a valid ONNX model"), "{e}");
}

/// A safetensors file's float32 tensors, read without cnnc.
fn tensors(path: &Path) -> import::Tensors {
    cnnc_runtime::weights::load(path).unwrap().0
}

#[test]
fn mtcnn_imported_reproduces_the_original_networks_scores() {
    // PNet, RNet and ONet from facenet-pytorch's weights, read through `preprocess` (grey to
    // RGB, bilinear resize, (x − 127.5)/128), against the original networks run in numpy on the
    // same pixels (examples/mtcnn/reference.py): within 1e-5, and faces told from non-faces.
    let dir = tempfile::tempdir().unwrap();
    let gunzip = |name: &str| {
        let mut raw = Vec::new();
        let file = std::fs::File::open(root().join("examples/data/lfw_subset").join(name)).unwrap();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(file), &mut raw).unwrap();
        raw
    };
    let labels = gunzip("labels-idx1-ubyte.gz")[8..].to_vec();
    let images = gunzip("images-idx3-ubyte.gz")[16..].to_vec();
    for (model, file, flatten) in [("PNet", "pnet", "chw"), ("RNet", "rnet", "whc"), ("ONet", "onet", "whc")] {
        let out = dir.path().join(model);
        let weights = out.join("weights.safetensors");
        let o = run(&[
            "import",
            "examples/mtcnn.cnn",
            &format!("examples/mtcnn/{file}.safetensors"),
            "--model",
            model,
            "--flatten",
            flatten,
            "-o",
            weights.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let scores = dir.path().join(format!("{file}.safetensors"));
        let o = run(&[
            "run",
            "examples/mtcnn.cnn",
            "--model",
            model,
            "--eval",
            "--out",
            out.to_str().unwrap(),
            "--output",
            scores.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let (shape, face) = tensors(&scores).remove("face").unwrap();
        assert_eq!(shape, [200, 2]);
        let want = npy(&root().join(format!("examples/mtcnn/reference_{file}.npy")));
        let worst = face.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        assert!(worst <= 1e-5 * scale, "{model}: ‖cnnc − original‖∞ = {worst}");
        let probability = |row: &[f32]| 1.0 / (1.0 + (row[0] - row[1]).exp());
        let mean = |label: u8| {
            let p: Vec<f32> =
                face.chunks(2).zip(&labels).filter(|(_, &l)| l == label).map(|(r, _)| probability(r)).collect();
            p.iter().sum::<f32>() / p.len() as f32
        };
        assert!(mean(1) > 0.9 && mean(0) < 0.05, "{model}: faces {} non-faces {}", mean(1), mean(0));
        // The first patch as a 25×25 grey PNG file: `--predict` reads it through the same
        // `preprocess` (RGB, resized to the input) and answers what evaluation answered (as
        // probabilities: the output is trained with softmax cross-entropy).
        let png = dir.path().join("patch.png");
        image::save_buffer(&png, &images[..25 * 25], 25, 25, image::ExtendedColorType::L8).unwrap();
        let predicted = dir.path().join(format!("{file}_png.safetensors"));
        let o = run(&[
            "run",
            "examples/mtcnn.cnn",
            "--model",
            model,
            "--weights",
            weights.to_str().unwrap(),
            "--predict",
            png.to_str().unwrap(),
            "--output",
            predicted.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let (_, one) = tensors(&predicted).remove("face").unwrap();
        let p = probability(&face[..2]);
        assert!((one[1] - p).abs() <= 1e-6 && (one[0] - (1.0 - p)).abs() <= 1e-6, "{model}: {one:?} against {p}");
    }
}
