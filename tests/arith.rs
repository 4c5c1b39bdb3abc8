//! The element-wise arithmetic (`-`, `*`, `abs`, `square`) and `l2norm` against PyTorch: the
//! output of `tests/arith/head.cnn` and the gradients of an L2 loss with respect to its input and
//! weights equal those `tests/arith/make.py` computed with PyTorch (in float64), within
//! ‖a − b‖∞ ≤ 1e-4 · max(‖b‖∞, 1). Also: `a - b` and `a * b` of tensors of different shapes are
//! diagnostics, and `-` and `*` still refuse a tensor with a number.

mod common;

use cnnc_compiler::ir::op::{InputOp, LossKind, LossOp, Op};
use cnnc_compiler::ir::{Node, ValueId};
use cnnc_compiler::passes::{autodiff, training_mode};
use cnnc_compiler::shape::Shape;
use cnnc_runtime::executor::Executor;
use cnnc_runtime::params::Params;
use cnnc_runtime::reference::Ctx;
use ndarray::{ArrayD, IxDyn};

fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let diff = got.iter().zip(want).map(|(&a, &b)| (f64::from(a) - b).abs()).fold(0.0, f64::max);
    let norm = want.iter().map(|v| v.abs()).fold(1.0, f64::max);
    assert!(diff <= 1e-4 * norm, "{what}: ‖a − b‖∞ = {diff}");
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|e| e.as_f64().unwrap()).collect()
}

#[test]
fn arithmetic_and_l2norm_match_pytorch_forward_and_backward() {
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::root().join("tests/arith/head.json")).unwrap()).unwrap();
    let compiled = common::compile(&common::root().join("tests/arith/head.cnn"));
    assert!(!compiled.has_errors(), "{}", common::rendered(&compiled));
    let mut graph = compiled.models.into_iter().next().unwrap().graph;
    training_mode::run(&mut graph);
    let (x, y) = (graph.inputs()[0], graph.outputs()[0].1);
    let loc = graph.node(y).loc;
    let t = graph.add(Node::new(Op::Input(InputOp { name: "t".into() }), "t", loc, graph.node(y).shape.clone()), &[]);
    let loss =
        graph.add(Node::new(Op::Loss(LossOp { kind: LossKind::L2, weight: 1.0 }), "loss", loc, Shape(vec![])), &[y, t]);
    let grads = autodiff::run(&mut graph, &[loss], true, &[t]);

    let mut params = Params::init(&graph, 1);
    for (name, values) in fixture["weights"].as_object().unwrap() {
        let id = params.layout.id(name).unwrap_or_else(|| panic!("no parameter {name}"));
        let values: Vec<f32> = floats(values).iter().map(|&v| v as f32).collect();
        params.slice_mut(id).copy_from_slice(&values);
    }
    let tensor = |key: &str, cols: usize| {
        let v: Vec<f32> = floats(&fixture[key]).iter().map(|&v| v as f32).collect();
        ArrayD::from_shape_vec(IxDyn(&[v.len() / cols, cols]), v).unwrap()
    };
    let (xs, ts) = (tensor("x", 6), tensor("t", 5));
    let mut keep: Vec<ValueId> = vec![y.into(), loss.into()];
    keep.extend(grads.params.iter().map(|(_, g)| *g));
    keep.extend(grads.inputs.iter().map(|(_, g)| *g));
    let exec = Executor::new(&graph, &params.layout, &keep).unwrap();
    let values = exec.run(&graph, &params, &[(x, xs.view()), (t, ts.view())], Ctx::default()).unwrap();

    let got = |v: ValueId| values.get(v).unwrap().iter().copied().collect::<Vec<f32>>();
    close(&got(y.into()), &floats(&fixture["y"]), "y");
    let losses = got(loss.into());
    let mean = losses.iter().map(|&v| f64::from(v)).sum::<f64>() / losses.len() as f64;
    close(&[mean as f32], &[fixture["loss"].as_f64().unwrap()], "loss");
    for (p, g) in &grads.params {
        let name = &graph.node(*p).name;
        close(&got(*g), &floats(&fixture["grads"][name.as_str()]), &format!("∂loss/∂{name}"));
    }
    assert_eq!(grads.params.len(), 4);
    let (_, gx) = grads.inputs.iter().find(|(n, _)| *n == x).expect("the input's gradient");
    close(&got(*gx), &floats(&fixture["grads"]["x"]), "∂loss/∂x");
}

#[test]
fn arithmetic_of_mismatched_or_mixed_operands_is_a_diagnostic() {
    for (expr, code, message) in [
        ("a - c", "cnnc::shape::elementwise_mismatch", "cannot subtract tensors of shapes [5] and [3]"),
        ("a * c", "cnnc::shape::elementwise_mismatch", "cannot multiply tensors of shapes [5] and [3]"),
        ("a * 2", "cnnc::resolve::wrong_type", "an operand of `*` must be a tensor, found integer `2`"),
        ("2 - a", "cnnc::resolve::wrong_type", "this is an integer `2`"),
        ("a / a", "cnnc::resolve::wrong_type", "`-` and `*` apply to tensors"),
    ] {
        let text =
            format!("model M {{\n input x: [6]\n a = x |> dense(5)\n c = x |> dense(3)\n output y = {expr}\n}}\n");
        let compiled = cnnc_compiler::compile_source("m.cnn", None, text.as_bytes());
        let rendered = common::rendered(&compiled);
        assert!(compiled.has_errors(), "{expr}: {rendered}");
        assert!(rendered.contains(code), "{expr}: {rendered}");
        assert!(rendered.contains(message), "{expr}: {rendered}");
    }
}
