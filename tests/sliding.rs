//! Convolutional sliding windows (`--predict --slide`): LeNet-5 trained on 32×32 digits, made
//! fully convolutional and run once over a wider image. On a single window it gives the
//! original model's numbers; over three digits side by side, each digit's class peaks at its
//! window; what cannot slide is refused clearly.

mod common;

use common::cnnc;
use std::path::Path;
use std::process::Output;

fn run(args: &[&str]) -> Output {
    cnnc().args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn gunzip(p: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(std::fs::File::open(p).unwrap()), &mut out).unwrap();
    out
}

/// The first tensor of a safetensors file written by `--output`: its shape and values.
fn first_output(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let (tensors, _) = cnnc_runtime::weights::load(path).unwrap();
    let mut all: Vec<_> = tensors.into_iter().collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all.into_iter().next().unwrap().1
}

#[test]
fn lenet5_slides_over_a_row_of_digits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("run");
    let o = run(&[
        "run",
        "examples/lenet5.cnn",
        "--epochs",
        "2",
        "--limit",
        "3000",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let images = gunzip(&common::root().join("examples/data/mnist10k/t10k-images-idx3-ubyte.gz"));
    let labels = gunzip(&common::root().join("examples/data/mnist10k/t10k-labels-idx1-ubyte.gz"));
    // Three test digits of different classes, each in a 32-pixel slot (2 pixels of padding, as
    // the training data).
    let mut chosen: Vec<usize> = Vec::new();
    for i in 0..100 {
        if chosen.len() < 3 && !chosen.iter().any(|&j| labels[8 + j] == labels[8 + i]) {
            chosen.push(i);
        }
    }
    let digit = |i: usize| &images[16 + i * 784..16 + (i + 1) * 784];
    let mut row = image::GrayImage::new(96, 32);
    for (k, &i) in chosen.iter().enumerate() {
        for y in 0..28 {
            for x in 0..28 {
                row.put_pixel((32 * k + 2 + x) as u32, (2 + y) as u32, image::Luma([digit(i)[y * 28 + x]]));
            }
        }
    }
    let row_png = d.join("row.png");
    row.save(&row_png).unwrap();
    let map = d.join("map.safetensors");
    let o = run(&[
        "run",
        "examples/lenet5.cnn",
        "--out",
        out.to_str().unwrap(),
        "--predict",
        row_png.to_str().unwrap(),
        "--slide",
        "--output",
        map.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("32×32 windows every 4×4 pixels"), "{}", text(&o));
    let (shape, probs) = first_output(&map);
    // (96 − 32)/4 + 1 = 17 windows across, one down.
    assert_eq!(shape, vec![1, 1, 17, 10]);
    for (k, &i) in chosen.iter().enumerate() {
        // The digit's crop through the original model (`--predict` pads a 28×28 file by 2).
        let crop = image::GrayImage::from_raw(28, 28, digit(i).to_vec()).unwrap();
        let crop_png = d.join(format!("d{k}.png"));
        crop.save(&crop_png).unwrap();
        let exact = d.join(format!("d{k}.safetensors"));
        let o = run(&[
            "run",
            "examples/lenet5.cnn",
            "--out",
            out.to_str().unwrap(),
            "--predict",
            crop_png.to_str().unwrap(),
            "--output",
            exact.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let (_, original) = first_output(&exact);
        // The window over the digit is the original model's input: the same numbers.
        let window = &probs[8 * k * 10..(8 * k + 1) * 10];
        let worst = window.iter().zip(&original).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst <= 1e-5, "window {} of the map against the crop: {window:?} vs {original:?}", 8 * k);
        // Where the model knows the digit, its class peaks at the digit's window.
        let label = labels[8 + i] as usize;
        let top = (0..10).max_by(|&a, &b| original[a].total_cmp(&original[b])).unwrap();
        if top == label {
            let along: Vec<f32> = (0..17).map(|c| probs[c * 10 + label]).collect();
            let peak = (0..17).max_by(|&a, &b| along[a].total_cmp(&along[b])).unwrap();
            assert!(
                peak.abs_diff(8 * k) <= 2,
                "class {label} peaks at window {peak}, the digit is at {}: {along:?}",
                8 * k
            );
        }
    }
    // The backends agree on the converted model.
    let reference = d.join("reference.safetensors");
    let o = run(&[
        "run",
        "examples/lenet5.cnn",
        "--out",
        out.to_str().unwrap(),
        "--predict",
        row_png.to_str().unwrap(),
        "--slide",
        "--backend",
        "reference",
        "--output",
        reference.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (_, want) = first_output(&reference);
    assert!(probs.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-4), "jit against reference");

    // An image smaller than a window, and --slide without --predict, are refused.
    let small = d.join("small.png");
    image::GrayImage::new(20, 40).save(&small).unwrap();
    let o = run(&[
        "run",
        "examples/lenet5.cnn",
        "--out",
        out.to_str().unwrap(),
        "--predict",
        small.to_str().unwrap(),
        "--slide",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("smaller than the model's 32×32 window"), "{}", text(&o));
    let o = run(&["run", "examples/lenet5.cnn", "--slide"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn a_flatten_that_feeds_no_dense_layer_cannot_slide() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("flat.cnn");
    std::fs::write(
        &model,
        "model Flat {\n    input image: [8, 8, 1]\n    output features = image |> conv(2, 3x3) |> flatten |> relu\n}\n",
    )
    .unwrap();
    let png = dir.path().join("big.png");
    image::GrayImage::new(16, 16).save(&png).unwrap();
    let weights = dir.path().join("w.safetensors");
    let o = run(&["build", model.to_str().unwrap(), "--emit", "weights", "-o", weights.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (model, png, weights) = (model.to_str().unwrap(), png.to_str().unwrap(), weights.to_str().unwrap());
    let o =
        run(&["run", model, "--predict", png, "--slide", "--weights", weights, "--out", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("only dense layers after a flatten become convolutions"), "{}", text(&o));
}
