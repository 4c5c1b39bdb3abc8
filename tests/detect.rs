//! Object detection end to end: `cnnc data mnist-detection` and `cnnc data anchors`, a YOLO and
//! a localization model trained on the canvases, `--eval` with mAP, `--predict` with the boxes
//! drawn, a loss mixing cross-entropy and L2, and bad label files (clear errors naming the file
//! and line, exit 2).

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

/// Small canvases (32 pixels, digits of 10 to 16) in `dir`.
fn generate(dir: &Path, train: usize, test: usize, most: usize) -> Output {
    let (train, test, most) = (train.to_string(), test.to_string(), most.to_string());
    let dir = dir.to_str().unwrap();
    #[rustfmt::skip]
    let args = ["data", "mnist-detection", dir, "--mnist", "examples/data/mnist10k", "--train", &train, "--test", &test,
        "--size", "32", "--smallest", "10", "--largest", "16", "--most", &most];
    run(&args)
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for split in ["train", "test"] {
        for sub in ["images", "labels"] {
            let mut names: Vec<PathBuf> =
                std::fs::read_dir(dir.join(split).join(sub)).unwrap().map(|e| e.unwrap().path()).collect();
            names.sort();
            out.extend(names.into_iter().map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p.strip_prefix(dir).unwrap().to_path_buf(), bytes)
            }));
        }
    }
    out
}

#[test]
fn mnist_detection_is_deterministic_and_its_labels_are_well_formed() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for dir in [&a, &b] {
        let o = generate(dir, 30, 10, 3);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let (fa, fb) = (files(&a), files(&b));
    assert_eq!(fa.len(), 2 * 40);
    assert!(fa == fb, "the same options give the same bytes");
    assert!(!tmp.path().join("a.partial").exists());
    let mut objects = 0;
    for (path, bytes) in &fa {
        if path.extension().is_some_and(|e| e == "png") {
            let img = image::load_from_memory(bytes).unwrap();
            assert_eq!((img.width(), img.height()), (32, 32), "{path:?}");
            continue;
        }
        for line in String::from_utf8(bytes.clone()).unwrap().lines() {
            let v: Vec<f64> = line.split_whitespace().map(|f| f.parse().unwrap()).collect();
            assert_eq!(v.len(), 5, "{line}");
            assert!(v[0] >= 0.0 && v[0] <= 9.0 && v[0].fract() == 0.0, "{line}");
            assert!(v[3] > 0.0 && v[4] > 0.0, "{line}");
            assert!(v[1] - v[3] / 2.0 >= -1e-6 && v[1] + v[3] / 2.0 <= 1.0 + 1e-6, "{line}");
            assert!(v[2] - v[4] / 2.0 >= -1e-6 && v[2] + v[4] / 2.0 <= 1.0 + 1e-6, "{line}");
            objects += 1;
        }
    }
    assert!((40..=120).contains(&objects), "1 to 3 digits a canvas: {objects}");
    // Regenerating replaces the dataset; a folder it did not make is left alone.
    let o = generate(&a, 5, 2, 1);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(files(&a).len(), 2 * 7);
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let o = generate(&other, 5, 2, 1);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("is not a dataset this command made"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(other.join("notes.txt")).unwrap(), "mine");
}

/// The `anchors` line `cnnc data anchors` prints for the training boxes of `dir`.
fn anchors(dir: &Path, k: usize, grid: usize) -> String {
    let o = run(&[
        "data",
        "anchors",
        dir.join("train").to_str().unwrap(),
        "-k",
        &k.to_string(),
        "--grid",
        &grid.to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let line = out.lines().find(|l| l.starts_with("anchors boxes = [")).unwrap_or_else(|| panic!("{out}"));
    assert!(out.contains("mean best IoU"), "{out}");
    line.to_string()
}

fn yolo_model(anchors: &str, data: &Path) -> String {
    format!(
        "use std.layers.conv_bn_relu

model Tiny {{
    input image: [32, 32, 1]
    {anchors}
    x = image
        |> conv_bn_relu(8, 3, pad: 1) |> maxpool(2x2)
        |> conv_bn_relu(16, 3, pad: 1) |> maxpool(2x2)
        |> conv_bn_relu(16, 3, pad: 1) |> maxpool(2x2)
        |> conv(30, 1x1)
    output grid = x
}}

train Tiny {{
    data detection(\"{0}/train\", test: \"{0}/test\")
    loss yolo(grid, label, anchors: boxes, classes: 10)
    optimizer adam(lr: 0.003)
    augment {{ mirror(), random_crop(32, pad: 2) }}
    batch 16 epochs 3 seed 0
}}
",
        data.display()
    )
}

#[test]
fn a_small_yolo_trains_reports_map_and_draws_its_boxes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("digits");
    let o = generate(&data, 240, 30, 2);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let line = anchors(&data, 2, 4);
    let model = tmp.path().join("tiny.cnn");
    std::fs::write(&model, yolo_model(&line, &data)).unwrap();
    let (model, out) = (model.to_str().unwrap(), tmp.path().join("run"));
    // The augmentation preview draws the boxes where the mirrored, shifted digits are.
    let preview = tmp.path().join("preview.png");
    let o = run(&["run", model, "--preview-augment", preview.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let picture = image::open(&preview).unwrap().to_rgb8();
    let red = picture.pixels().filter(|p| p.0 == [230, 30, 30]).count();
    assert!(red > 64 * 20, "boxes drawn: {red} red pixels");
    let o = run(&["run", model, "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let losses: Vec<f64> = stdout
        .lines()
        .filter(|l| l.starts_with("epoch"))
        .map(|l| l.split("  loss ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(losses.len(), 3, "{stdout}");
    assert!(losses[2] < losses[0], "the loss falls: {losses:?}");
    assert!(stdout.contains("test mAP@0.5"), "{stdout}");

    let e = run(&["run", model, "--out", out.to_str().unwrap(), "--eval"]);
    assert_eq!(e.status.code(), Some(0), "{}", text(&e));
    let eval = String::from_utf8_lossy(&e.stdout).to_string();
    let map: f64 = eval
        .lines()
        .find_map(|l| l.strip_prefix("test mAP@0.5: "))
        .and_then(|l| l.split('%').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{eval}"));
    assert!((0.0..=100.0).contains(&map), "{eval}");
    assert!(eval.contains("test mAP@0.5:0.95: ") && eval.contains("AP@0.5 by class: "), "{eval}");

    let image = data.join("test/images/00000.png");
    let p = run(&[
        "run",
        model,
        "--out",
        out.to_str().unwrap(),
        "--predict",
        image.to_str().unwrap(),
        "--threshold",
        "0.05",
    ]);
    assert_eq!(p.status.code(), Some(0), "{}", text(&p));
    let said = String::from_utf8_lossy(&p.stdout).to_string();
    assert!(said.contains("objects"), "{said}");
    let drawn = image::open(out.join("00000.boxes.png")).unwrap();
    assert_eq!((drawn.width(), drawn.height()), (256, 256), "enlarged 8 times");
    for line in said.lines().filter(|l| l.trim_start().starts_with("class ")) {
        assert!(line.contains("score") && line.contains("box ("), "{line}");
    }
    let bad = run(&["run", model, "--out", out.to_str().unwrap(), "--predict", image.to_str().unwrap(), "--iou", "2"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
}

#[test]
fn localization_trains_and_reports_the_iou_of_its_box() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("one");
    let o = generate(&data, 200, 30, 1);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let model = tmp.path().join("loc.cnn");
    std::fs::write(
        &model,
        format!(
            "model Loc {{
    input image: [32, 32, 1]
    output y = image |> conv(8, 3, pad: 1) |> relu |> maxpool(2x2) |> conv(16, 3, pad: 1) |> relu |> maxpool(2x2)
        |> flatten |> dense(64) |> relu |> dense(15)
}}

train Loc {{
    data detection(\"{0}/train\", test: \"{0}/test\")
    loss localization(y, label, classes: 10)
    optimizer adam(lr: 0.002)
    batch 16 epochs 3 seed 0
}}
",
            data.display()
        ),
    )
    .unwrap();
    let (model, out) = (model.to_str().unwrap(), tmp.path().join("run"));
    let o = run(&["run", model, "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let e = run(&["run", model, "--out", out.to_str().unwrap(), "--eval"]);
    assert_eq!(e.status.code(), Some(0), "{}", text(&e));
    let eval = String::from_utf8_lossy(&e.stdout).to_string();
    let iou: f64 = eval
        .lines()
        .find_map(|l| l.strip_prefix("best box: mean IoU "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{eval}"));
    assert!(iou > 0.1 && iou <= 1.0, "the box has learned where the digit is: {eval}");

    // Two digits on a canvas are refused by localization, naming the label file and line.
    let two = tmp.path().join("two");
    assert_eq!(generate(&two, 20, 5, 4).status.code(), Some(0));
    let text_of =
        std::fs::read_to_string(model).unwrap().replace(&data.display().to_string(), &two.display().to_string());
    std::fs::write(model, text_of).unwrap();
    let o = run(&["run", model, "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("finds one object per image") && text(&o).contains(".txt`, line 2"), "{}", text(&o));
}

/// A one-image detection folder whose label file holds `label`, and a model reading it.
fn bad_label(tmp: &Path, label: Option<&str>) -> (PathBuf, PathBuf) {
    let dir = tmp.join("set");
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("labels")).unwrap();
    image::GrayImage::new(32, 32).save(dir.join("images/a.png")).unwrap();
    if let Some(label) = label {
        std::fs::write(dir.join("labels/a.txt"), label).unwrap();
    }
    let model = tmp.join("m.cnn");
    std::fs::write(
        &model,
        yolo_model("anchors boxes = [[1, 1], [2, 2]]", &dir)
            .replace("/train\", test: \"", "\", test: \"")
            .replace("/test\")", "\")"),
    )
    .unwrap();
    (model, dir.join("labels/a.txt"))
}

#[test]
fn bad_label_files_are_errors_that_name_the_file_and_line() {
    for (label, expected) in [
        (Some("1 0.5 0.5 0.2 0.2\n0 0.9 0.5 0.4 0.2\n"), "line 2: the box reaches outside the image"),
        (Some("1 0.5 0.5 0.2\n"), "line 1: an object is `class cx cy w h` (5 values), this line has 4"),
        (Some("\n\n12 0.5 0.5 0.2 0.2\n"), "line 3: class 12 is not one of the loss's 10 classes"),
        (Some("x 0.5 0.5 0.2 0.2\n"), "line 1: the class `x` is not a class index"),
        (Some("1 0.5 nan 0.2 0.2\n"), "line 1: `cy` = `nan` is not a number"),
        (Some("1 0.5 0.5 0 0.2\n"), "line 1: the box is 0 × 0.2"),
        (None, "has no label file"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (model, file) = bad_label(tmp.path(), label);
        let o = run(&["run", model.to_str().unwrap(), "--out", tmp.path().join("run").to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{label:?}: {}", text(&o));
        let said = text(&o);
        assert!(said.contains(expected), "{label:?}: {said}");
        if label.is_some() {
            assert!(said.contains(&format!("`{}`", file.display())), "names the file: {said}");
        }
        assert!(!said.contains("panicked"), "{said}");
    }
    // An empty label file is an image without objects.
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = bad_label(tmp.path(), Some(""));
    let o = run(&["run", model.to_str().unwrap(), "--out", tmp.path().join("run").to_str().unwrap(), "--epochs", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn losses_reading_boxes_and_labels_are_checked_against_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = bad_label(tmp.path(), Some("1 0.5 0.5 0.2 0.2\n"));
    let text_of = std::fs::read_to_string(&model).unwrap();
    // Boxes read by a class loss, and a detection loss on class data: refused by `cnnc check`.
    let wrong = text_of.replace("loss yolo(grid, label, anchors: boxes, classes: 10)", "loss l2(grid, label)");
    std::fs::write(&model, wrong).unwrap();
    let o = run(&["check", model.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("`detection` data gives boxes"), "{}", text(&o));
    let wrong = text_of.replace("data detection(", "data images(");
    std::fs::write(&model, wrong).unwrap();
    let o = run(&["check", model.to_str().unwrap()]);
    assert!(text(&o).contains("it reads boxes"), "{}", text(&o));
    // Boxes follow mirrors and crops, not rotations.
    let wrong = text_of.replace("mirror()", "rotate(10)");
    std::fs::write(&model, wrong).unwrap();
    let o = run(&["check", model.to_str().unwrap()]);
    assert!(text(&o).contains("`rotate` cannot apply here: it bends the image"), "{}", text(&o));
    // A resized crop larger than the examples: evaluation could not take its centre crop.
    let wrong = text_of
        .replace("[32, 32, 1]", "[40, 40, 1]")
        .replace("augment {", "preprocess { resize(32, 32) }\n    augment {")
        .replace("mirror(), random_crop(32, pad: 2)", "random_resized_crop(40)");
    std::fs::write(&model, wrong).unwrap();
    let o = run(&["check", model.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("a 40×40 crop is larger than the 32×32 examples"), "{}", text(&o));
}

#[test]
fn a_loss_mixing_cross_entropy_and_l2_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("mixed.cnn");
    let mnist = std::fs::canonicalize("examples/data/mnist10k").unwrap();
    std::fs::write(
        &model,
        format!(
            "model Mixed {{
    input image: [28, 28, 1]
    h = image |> conv(6, 5) |> relu |> maxpool(2x2) |> flatten |> dense(32) |> relu
    output logits = h |> dense(10)
    output value = h |> dense(1)
}}

train Mixed {{
    data mnist(\"{}\", limit: 600)
    loss softmax_cross_entropy(logits, label) + 0.01 * l2(value, label)
    optimizer adam(lr: 0.003)
    batch 32 epochs 2 seed 0
}}
",
            mnist.display()
        ),
    )
    .unwrap();
    let out = tmp.path().join("run");
    let o = run(&["run", model.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let rows: Vec<Vec<f64>> = csv.lines().skip(1).map(|l| l.split(',').map(|v| v.parse().unwrap()).collect()).collect();
    assert!(rows[1][2] < rows[0][2], "the loss falls: {rows:?}");
    assert!(rows[1][5] > 0.5, "the class head learns: {rows:?}");
}

/// IoU, non-max suppression and COCO's mAP against the fixtures `tests/detect/make.py` made with
/// torchvision and pycocotools.
#[test]
fn iou_nms_and_map_agree_with_torchvision_and_pycocotools() {
    use cnnc_runtime::detect::{self, Detection, Object};
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("tests/detect/detect.json").unwrap()).unwrap();
    let rows = |v: &serde_json::Value| -> Vec<Vec<f32>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
            .collect()
    };
    let boxes: Vec<[f32; 4]> = rows(&json["boxes"]).into_iter().map(|b| [b[0], b[1], b[2], b[3]]).collect();
    let scores: Vec<f32> = json["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap() as f32).collect();
    let iou = rows(&json["iou"]);
    let mut overlapping = 0;
    for (i, a) in boxes.iter().enumerate() {
        for (j, b) in boxes.iter().enumerate() {
            let mine = detect::iou(a, b);
            assert!((mine - iou[i][j]).abs() <= 1e-4 * iou[i][j].abs().max(1.0), "{i}, {j}: {mine} vs {}", iou[i][j]);
            overlapping += usize::from(i != j && mine > 0.3);
        }
    }
    assert!(overlapping > 20, "the fixture's boxes overlap: {overlapping}");
    for (threshold, kept) in json["nms"].as_object().unwrap() {
        let kept: Vec<usize> = kept.as_array().unwrap().iter().map(|k| k.as_u64().unwrap() as usize).collect();
        let mine = detect::nms_indices(&boxes, &scores, threshold.parse().unwrap());
        assert_eq!(mine, kept, "nms at {threshold}");
        // The per-class form keeps the same boxes when every box is one class.
        let dets: Vec<Detection> =
            boxes.iter().zip(&scores).map(|(b, &s)| Detection { class: 0, score: s, corners: *b }).collect();
        let per_class: Vec<f32> = detect::nms(dets, threshold.parse().unwrap()).iter().map(|d| d.score).collect();
        assert_eq!(per_class, kept.iter().map(|&k| scores[k]).collect::<Vec<_>>());
    }
    let coco = &json["coco"];
    let (w, h) = (coco["size"][0].as_f64().unwrap() as f32, coco["size"][1].as_f64().unwrap() as f32);
    let images = coco["images"].as_u64().unwrap() as usize;
    let mut truths: Vec<Vec<Object>> = vec![Vec::new(); images];
    for t in rows(&coco["truths"]) {
        let (bx, by, bw, bh) = (t[2] / w, t[3] / h, t[4] / w, t[5] / h);
        truths[t[0] as usize].push(Object { class: t[1] as u32, cx: bx + bw / 2.0, cy: by + bh / 2.0, w: bw, h: bh });
    }
    let mut found: Vec<Vec<Detection>> = vec![Vec::new(); images];
    for d in rows(&coco["detections"]) {
        let corners = [d[3] / w, d[4] / h, (d[3] + d[5]) / w, (d[4] + d[6]) / h];
        found[d[0] as usize].push(Detection { class: d[1] as u32, score: d[2], corners });
    }
    let (_, map50) = detect::average_precision(&found, &truths, 3, 0.5);
    let want50 = coco["map50"].as_f64().unwrap();
    let want = coco["map50_95"].as_f64().unwrap();
    assert!(want50 > 0.1, "a fixture with matches: {want50}");
    assert!((map50 - want50).abs() < 1e-6, "mAP@0.5 {map50} vs pycocotools {want50}");
    let map = detect::map_50_95(&found, &truths, 3);
    assert!((map - want).abs() < 1e-6, "mAP@0.5:0.95 {map} vs pycocotools {want}");
}

/// A cascade file whose network gives other outputs than MTCNN's is refused, naming them.
#[test]
fn mtcnn_outputs_of_other_sizes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = std::fs::read_to_string("examples/mtcnn.cnn").unwrap();
    let file = tmp.path().join("mtcnn.cnn");
    std::fs::write(&file, model.replacen("output box = x |> conv(4, 1x1)", "output box = x |> conv(3, 1x1)", 1))
        .unwrap();
    let o = run(&["run", file.to_str().unwrap(), "--faces", "examples/data/astronaut.png"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("MTCNN's `PNet` needs an output `box` of 4 values"), "{}", text(&o));
}

/// MTCNN's cascade (PNet slid over a pyramid, RNet, ONet) with facenet-pytorch's weights: one
/// face on the astronaut, its landmarks where a face has them; none on a cup of coffee.
#[test]
fn mtcnn_finds_the_astronauts_face_and_none_in_the_coffee() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = tmp.path().join("weights");
    let (out, w) = (tmp.path().join("out"), weights.to_str().unwrap());
    let o = run(&["run", "examples/mtcnn.cnn", "--faces", "examples/data/astronaut.png", "--weights", w]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains(
            "import them first (`cnnc import examples/mtcnn.cnn examples/mtcnn/pnet.safetensors --model PNet"
        ),
        "{}",
        text(&o)
    );
    for name in ["PNet", "RNet", "ONet"] {
        let file = format!("examples/mtcnn/{}.safetensors", name.to_lowercase());
        let to = weights.join(name).join("weights.safetensors");
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let mut args = vec!["import", "examples/mtcnn.cnn", &file, "--model", name, "-o", to.to_str().unwrap()];
        if name != "PNet" {
            args.extend(["--flatten", "whc"]);
        }
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let mut boxes = Vec::new();
    for backend in ["jit", "reference"] {
        let args = ["run", "examples/mtcnn.cnn", "--faces", "examples/data/astronaut.png", "examples/data/coffee.png"];
        let o = run(&[&args[..], &["--weights", w, "--out", out.to_str().unwrap(), "--backend", backend]].concat());
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let said = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(said.contains("examples/data/astronaut.png: 1 face ("), "{said}");
        assert!(said.contains("examples/data/coffee.png: 0 faces ("), "{said}");
        let numbers = |line: &str| -> Vec<f32> {
            line.replace(['(', ')', ','], " ").split_whitespace().filter_map(|t| t.parse().ok()).collect()
        };
        let face = said.lines().find(|l| l.trim_start().starts_with("probability")).unwrap();
        let v = numbers(face);
        let (p, b) = (v[0], [v[1], v[2], v[3], v[4]]);
        assert!(p > 0.99, "{said}");
        // The face of the 512 × 512 photo: in its upper half, about 90 pixels across.
        assert!(b[0] > 150.0 && b[2] < 300.0 && b[1] > 30.0 && b[3] < 210.0, "{said}");
        assert!((60.0..130.0).contains(&(b[2] - b[0])), "{said}");
        let m = numbers(said.lines().find(|l| l.trim_start().starts_with("eyes")).unwrap());
        let (le, re, nose, lm, rm) = ([m[0], m[1]], [m[2], m[3]], [m[4], m[5]], [m[6], m[7]], [m[8], m[9]]);
        for pt in [le, re, nose, lm, rm] {
            assert!(pt[0] > b[0] && pt[0] < b[2] && pt[1] > b[1] && pt[1] < b[3], "landmarks inside the box: {said}");
        }
        assert!(le[0] < re[0] && lm[0] < rm[0], "left of right: {said}");
        assert!(le[1] < nose[1] && re[1] < nose[1] && nose[1] < lm[1] && nose[1] < rm[1], "eyes, nose, mouth: {said}");
        boxes.push(b);
    }
    assert!(boxes[0].iter().zip(&boxes[1]).all(|(a, b)| (a - b).abs() <= 1.0), "the backends agree: {boxes:?}");
    let drawn = image::open(out.join("astronaut.faces.png")).unwrap();
    assert_eq!((drawn.width(), drawn.height()), (512, 512));
    assert!(out.join("coffee.faces.png").exists());
}

#[test]
fn landmarks_train_and_report_their_error_and_bad_rows_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("points");
    let d = data.to_str().unwrap();
    #[rustfmt::skip]
    let o = run(&["data", "mnist-detection", d, "--mnist", "examples/data/mnist10k", "--train", "300", "--test", "40",
        "--size", "32", "--smallest", "12", "--largest", "18", "--least", "1", "--most", "1", "--landmarks"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The points of the test rows, and how far they are from the image's centre.
    let csv = std::fs::read_to_string(data.join("test/landmarks.csv")).unwrap();
    let rows: Vec<Vec<f32>> =
        csv.lines().skip(1).map(|l| l.split(',').skip(1).map(|v| v.parse().unwrap()).collect()).collect();
    assert_eq!(rows.len(), 40);
    let centre: f32 =
        rows.iter().flat_map(|r| r.chunks(2).map(|p| (p[0] - 16.0).hypot(p[1] - 16.0))).sum::<f32>() / 160.0;
    let model = tmp.path().join("points.cnn");
    let text_of = format!(
        "model P {{
    input image: [32, 32, 1]
    output points = image |> conv(8, 3, pad: 1) |> relu |> maxpool(2x2) |> conv(16, 3, pad: 1) |> relu |> maxpool(2x2)
        |> flatten |> dense(64) |> relu |> dense(8)
}}

train P {{
    data landmarks(\"{d}/train/landmarks.csv\", test: \"{d}/test/landmarks.csv\")
    loss l2(points, label)
    optimizer adam(lr: 0.003)
    batch 16 epochs 6 seed 0
}}
"
    );
    std::fs::write(&model, &text_of).unwrap();
    let (m, out) = (model.to_str().unwrap(), tmp.path().join("run"));
    let o = run(&["run", m, "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let e = run(&["run", m, "--out", out.to_str().unwrap(), "--eval"]);
    assert_eq!(e.status.code(), Some(0), "{}", text(&e));
    let said = String::from_utf8_lossy(&e.stdout).to_string();
    let error: f32 = said
        .lines()
        .find_map(|l| l.strip_prefix("landmark error: mean "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(said.contains("over 160 points (4 an image)"), "{said}");
    assert!(error < 0.8 * centre, "the points are learned: {error} px against {centre} px for the centre");
    // --predict prints the points in the file's pixels and draws them.
    let image = data.join("test/images/00000.png");
    let p = run(&["run", m, "--out", out.to_str().unwrap(), "--predict", image.to_str().unwrap()]);
    assert_eq!(p.status.code(), Some(0), "{}", text(&p));
    let said = String::from_utf8_lossy(&p.stdout).to_string();
    assert_eq!(said.lines().filter(|l| l.trim_start().starts_with("point ")).count(), 4, "{said}");
    let drawn = image::open(out.join("00000.points.png")).unwrap().to_rgb8();
    assert_eq!((drawn.width(), drawn.height()), (256, 256));
    assert!(drawn.pixels().any(|p| p.0 == [230, 30, 30]), "points drawn");

    // An output of the wrong size, and a class loss, on landmark data.
    std::fs::write(&model, text_of.replace("dense(8)", "dense(6)")).unwrap();
    let o = run(&["run", m, "--out", out.to_str().unwrap(), "--epochs", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("the data gives 4 landmarks (8 values) an example"), "{}", text(&o));
    std::fs::write(
        &model,
        text_of.replace("dense(8)", "dense(10)").replace("l2(points, label)", "softmax_cross_entropy(points, label)"),
    )
    .unwrap();
    let o = run(&["check", m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("`landmarks` data gives points"), "{}", text(&o));

    // Bad rows name the file and line.
    std::fs::write(&model, &text_of).unwrap();
    let train_csv = data.join("train/landmarks.csv");
    let good = std::fs::read_to_string(&train_csv).unwrap();
    let first: Vec<&str> = good.lines().nth(1).unwrap().split(',').collect();
    for (row, expected) in [
        (format!("{},1,2,3", first[0]), "line 3: a row is `image,x1,y1,…,xk,yk`"),
        (format!("{},1,2,3,4", first[0]), "line 3: 2 points, where the rows before have 4"),
        (format!("{},1,2,3,4,5,6,7,99", first[0]), "line 3: point 4 is outside the 32×32 image: y = 99"),
        (format!("{},1,2,3,4,5,6,7,x", first[0]), "line 3: `x` (value 8) is not a number"),
        ("images/missing.png,1,2,3,4,5,6,7,8".to_string(), "line 3: cannot read"),
    ] {
        let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
        lines.insert(2, row.clone());
        std::fs::write(&train_csv, lines.join("\n")).unwrap();
        let o = run(&["run", m, "--out", out.to_str().unwrap(), "--epochs", "1"]);
        assert_eq!(o.status.code(), Some(2), "{row}: {}", text(&o));
        assert!(text(&o).contains(expected) && text(&o).contains("landmarks.csv"), "{row}: {}", text(&o));
    }
}
