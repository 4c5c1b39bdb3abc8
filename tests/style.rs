//! Neural style transfer: the cost and its gradient with respect to the image equal PyTorch's
//! (fixtures made by tests/style/make.py) on every backend; the optimizers lower the cost; a
//! run writes its images and costs; bad sections and images are refused.

mod common;

use cnnc_runtime::backend::Backend;
use cnnc_runtime::style::{self, Transfer};
use common::{cnnc, compile, root};

fn close(a: &[f32], b: &[f32]) -> Result<(), String> {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max).max(1.0);
    if diff <= 1e-4 * scale {
        Ok(())
    } else {
        Err(format!("‖a − b‖∞ = {diff} > 1e-4·{scale}"))
    }
}

fn tiny(backend: Backend) -> (Transfer, cnnc_compiler::train::TrainSpec) {
    let c = compile(&root().join("tests/style/tiny.cnn"));
    assert!(c.diagnostics().iter().all(|d| !d.is_error()), "tiny.cnn checks");
    let model = c.models.iter().find(|m| m.name == "Tiny").unwrap();
    let spec = c.trains[0].clone();
    let mut t = Transfer::new(model, &spec, None, backend).unwrap();
    cnnc_runtime::weights::load_into(&root().join("tests/style/weights.safetensors"), &mut t.params).unwrap();
    (t, spec)
}

fn image(name: &str) -> Vec<f32> {
    style::read_image(&root().join("tests/style").join(name), [6, 8, 3]).unwrap()
}

#[test]
fn the_cost_and_its_gradient_with_respect_to_the_image_equal_pytorchs() {
    let (expected, _) = cnnc_runtime::weights::load(&root().join("tests/style/expected.safetensors")).unwrap();
    let cost = &expected["cost"].1;
    let grad = &expected["grad"].1;
    for backend in [Backend::Reference, Backend::Lir, Backend::Jit] {
        let (mut t, _) = tiny(backend);
        t.set_targets(&image("content.png"), &image("style.png")).unwrap();
        let (c, g) = t.cost(&image("generated.png")).unwrap();
        let got = [c.total, c.content, c.style, c.total_variation].map(|v| v as f32);
        close(&got, cost).unwrap_or_else(|e| panic!("{backend}: cost {got:?} vs {cost:?}: {e}"));
        close(&g, grad).unwrap_or_else(|e| panic!("{backend}: gradient: {e}"));
    }
}

#[test]
fn the_gradient_matches_finite_differences_of_the_cost() {
    let (mut t, _) = tiny(Backend::Reference);
    t.set_targets(&image("content.png"), &image("style.png")).unwrap();
    let x = image("generated.png");
    let (_, g) = t.cost(&x).unwrap();
    for i in [0, 17, 55, 100, 143] {
        let eps = 1e-3f32;
        let mut plus = x.clone();
        plus[i] += eps;
        let mut minus = x.clone();
        minus[i] -= eps;
        let numeric = (t.cost(&plus).unwrap().0.total - t.cost(&minus).unwrap().0.total) / f64::from(2.0 * eps);
        let analytic = f64::from(g[i]);
        assert!((numeric - analytic).abs() <= 2e-2 * analytic.abs().max(1.0), "pixel {i}: {numeric} vs {analytic}");
    }
}

#[test]
fn adam_and_lbfgs_lower_the_cost_and_keep_pixels_in_range() {
    for optimizer in ["adam(lr: 0.02)", "lbfgs(lr: 1)"] {
        let (mut t, mut spec) = tiny(Backend::Jit);
        let source = format!("model M {{ input i: [1, 1, 1] output o = i }} train M {{ optimizer {optimizer} }}");
        let c = cnnc_compiler::compile_source("o.cnn", None, source.as_bytes());
        spec.optimizer = c.trains[0].optimizer.clone();
        t.set_targets(&image("content.png"), &image("style.png")).unwrap();
        let mut x = image("generated.png");
        let (first, mut g) = t.cost(&x).unwrap();
        let mut cost = first.clone();
        let mut opt = style::PixelOptimizer::of(&spec, x.len());
        for _ in 0..20 {
            opt.step(&mut x, &mut cost, &mut g, |p| t.cost(p)).unwrap();
        }
        let f = cost.total;
        assert!(f < 0.5 * first.total, "{optimizer}: {} -> {f}", first.total);
        assert!(x.iter().all(|v| (0.0..=1.0).contains(v)), "{optimizer}: pixels left [0, 1]");
        assert_eq!(f, t.cost(&x).unwrap().0.total, "{optimizer}: the cost kept is the image's");
    }
}

#[test]
fn a_run_writes_the_image_the_intermediate_images_and_falling_costs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let png = dir.path().join("out.png");
    let o = cnnc()
        .args(["run", "tests/style/tiny.cnn", "--steps", "8", "--quiet", "--out"])
        .arg(&out)
        .arg("-o")
        .arg(&png)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{text}");
    let written = image::open(&png).unwrap();
    assert_eq!((written.width(), written.height()), (8, 6));
    assert_eq!(std::fs::read(&png).unwrap(), std::fs::read(out.join("generated.png")).unwrap());
    let costs = std::fs::read_to_string(out.join("costs.csv")).unwrap();
    let totals: Vec<f64> = costs.lines().skip(1).map(|l| l.split(',').nth(2).unwrap().parse().unwrap()).collect();
    assert_eq!(totals.len(), 9, "{costs}");
    assert!(totals.windows(2).all(|w| w[1] <= w[0]), "L-BFGS's line search never raises the cost: {totals:?}");
    assert!(out.join("costs.png").exists());
}

#[test]
fn sections_that_mix_style_transfer_with_training_are_refused() {
    let cases = [
        // An image cost without the images.
        ("data mnist(\"d\")\n loss content(s2)\n optimizer adam", "style_transfer"),
        // Labels in a style section.
        ("data style_transfer(content: \"a.png\", style: \"b.png\")\n loss style(s1) + softmax_cross_entropy(s2, label)\n optimizer adam", "labels"),
        // L-BFGS for weights.
        ("data mnist(\"d\")\n loss l2(s2, label)\n optimizer lbfgs", "L-BFGS"),
        // Epochs for an image.
        ("data style_transfer(content: \"a.png\", style: \"b.png\")\n loss style(s1)\n optimizer adam\n epochs 3", "`epochs`"),
        // Noise out of range.
        ("data style_transfer(content: \"a.png\", style: \"b.png\", noise: 2)\n loss style(s1)\n optimizer adam", "noise"),
    ];
    for (section, needle) in cases {
        let source = format!(
            "model M {{ input image: [6, 8, 3]\n s1 = image |> conv(2, 3x3) |> relu\n output a = s1\n output s2 = s1 |> flatten |> dense(1) }}\ntrain M {{ {} }}",
            section.replace("s1)", "a)").replace("(s1", "(a")
        );
        let c = cnnc_compiler::compile_source("m.cnn", None, source.as_bytes());
        let messages: Vec<String> =
            c.diagnostics().iter().filter(|d| d.is_error()).map(|d| d.render(&c.program.sources, false)).collect();
        assert!(
            messages.iter().any(|m| m.contains("cnnc::train::style_transfer") && m.contains(needle)),
            "{section}: {messages:?}"
        );
    }
}

#[test]
fn a_missing_image_is_an_input_error() {
    let o = cnnc().args(["run", "tests/style/tiny.cnn", "--content", "no/such.png", "--quiet"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("no/such.png"), "{text}");
}
