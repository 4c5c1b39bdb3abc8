//! Pass snapshots: `tests/passes/<pass>/*.cnn`, the IR before and after, built through the
//! pipeline that verifies after every pass.

mod common;

use cnnc_compiler::ir::op::{Op, Read};
use cnnc_compiler::passes::{inference, training, Options, Pipeline};

fn pipeline() -> Pipeline {
    Pipeline::new(Options { verify_each: true, ..Options::default() }).unwrap()
}

#[test]
fn autodiff() {
    insta::glob!("passes/autodiff/*.cnn", |path| {
        let c = common::compile(path);
        assert!(!c.has_errors(), "{}", common::rendered(&c));
        let model = &c.models[0];
        let spec = c.trains.iter().find(|t| t.model == model.name).expect("a train section");
        let tg = training::run(model, spec, false, &mut pipeline()).unwrap();
        let g = &tg.graph;
        // Every trainable parameter has a gradient of its own shape; frozen and state ones none.
        for id in g.node_ids() {
            if let Op::Param(p) = &g.node(id).op {
                let grad = tg.grads.params.iter().find(|(q, _)| *q == id);
                let used = !g.users(id).is_empty();
                assert_eq!(grad.is_some(), used && !p.frozen && !p.role.is_state(), "{}", g.node(id).name);
                if let Some((_, v)) = grad {
                    assert_eq!(g.shape(*v), &g.node(id).shape);
                }
            }
        }
        // Backward nodes read only what their rule names, never the whole forward node.
        for id in g.node_ids() {
            if let Op::Backward(b) = &g.node(id).op {
                assert_eq!(g.inputs_of(id).len(), b.reads.len());
                if let Op::Activation(_) = *b.of {
                    assert_eq!(b.reads, vec![Read::Result(0), Read::Grad], "activations read y");
                }
            }
            // Identity gradients are no nodes of their own.
            assert!(!matches!(&g.node(id).op, Op::Backward(b) if matches!(*b.of, Op::Add | Op::Flatten | Op::Concat)));
        }
        insta::assert_snapshot!(format!("before:\n{}\nafter:\n{}", model.graph.to_text(), g.to_text()));
    });
}

/// `tests/passes/<pass>/*.cnn`: the training program (batch 2) where the file has a train
/// section, else the inference program, with the kernel-IR passes before `pass`, then with `pass`
/// too; the pass must rewrite something, and the result must still be a program whose memory plan
/// checks.
fn kernel_pass(pass: &str) {
    let names: Vec<&str> = cnnc_compiler::lir::passes::PASSES.iter().map(|(n, _)| *n).collect();
    let at = names.iter().position(|n| *n == pass).expect("a kernel pass");
    insta::glob!(&format!("passes/{pass}/*.cnn"), |path| {
        let c = common::compile(path);
        assert!(!c.has_errors(), "{}", common::rendered(&c));
        let model = &c.models[0];
        let (graph, grads, keep) = match c.trains.iter().find(|t| t.model == model.name) {
            Some(spec) => {
                let tg = training::run(model, spec, false, &mut pipeline()).unwrap();
                let keep = tg.results();
                (tg.graph, tg.grads.params, keep)
            }
            None => {
                let graph = inference::run(model, &mut pipeline()).unwrap();
                let keep: Vec<_> =
                    graph.outputs().iter().map(|(_, id)| cnnc_compiler::ir::ValueId::from(*id)).collect();
                (graph, Vec::new(), keep)
            }
        };
        let layout = cnnc_compiler::params::ParamLayout::of(&graph);
        let program = |upto: usize| {
            let mut p = cnnc_compiler::lir::lower(&graph, 2, &layout, &grads, &keep).unwrap().program;
            let disabled: Vec<String> = names[upto..].iter().map(|n| n.to_string()).collect();
            let done = cnnc_compiler::lir::passes::optimize(&mut p, &disabled);
            (p, done)
        };
        let (before, _) = program(at);
        let (after, done) = program(at + 1);
        assert!(done.iter().any(|&(n, count)| n == pass && count > 0), "{pass} rewrote nothing: {done:?}");
        cnnc_compiler::lir::plan(&after).check(&after).unwrap();
        let name = format!("{pass}@{}", path.file_name().and_then(|f| f.to_str()).unwrap_or_default());
        insta::assert_snapshot!(name, format!("before:\n{before}\nafter:\n{after}"));
    });
}

#[test]
fn fold_batchnorm() {
    kernel_pass("fold_batchnorm");
}

#[test]
fn fuse_maps() {
    kernel_pass("fuse_maps");
}

#[test]
fn fuse_epilogue() {
    kernel_pass("fuse_epilogue");
}

#[test]
fn fuse_im2col() {
    kernel_pass("fuse_im2col");
}

#[test]
fn fuse_bn_stats() {
    kernel_pass("fuse_bn_stats");
}

#[test]
fn merge_siblings() {
    kernel_pass("merge_siblings");
}

#[test]
fn winograd() {
    kernel_pass("winograd");
}

#[test]
fn concat_in_place() {
    kernel_pass("concat_in_place");
}

#[test]
fn fuse_pool() {
    kernel_pass("fuse_pool");
}

#[test]
fn in_place() {
    kernel_pass("in_place");
}

#[test]
fn inference_graph_has_no_dropout_and_batchnorm_on_running_statistics() {
    let src = "model M {\n    input x: [8, 8, 3]\n    output y = x |> conv(4, 3x3) |> batchnorm |> relu |> dropout(0.5) |> flatten |> dense(2)\n}\n";
    let c = cnnc_compiler::compile_source("m.cnn", None, src.as_bytes());
    assert!(!c.has_errors());
    let g = inference::run(&c.models[0], &mut pipeline()).unwrap();
    let ops: Vec<String> = g.node_ids().map(|id| g.node(id).op.mnemonic()).collect();
    assert!(!ops.iter().any(|o| o == "dropout"), "{ops:?}");
    assert!(ops.iter().any(|o| o == "batchnorm"), "{ops:?}");
    assert_eq!(g.outputs().len(), 1);
    insta::assert_snapshot!(g.to_text());
}

#[test]
fn pipeline_refuses_unknown_and_required_passes() {
    let unknown = Options { disabled: vec!["fusion".into()], ..Options::default() };
    assert!(Pipeline::new(unknown).unwrap_err().to_string().contains("no pass is called `fusion`"));
    let required = Options { disabled: vec!["autodiff".into()], ..Options::default() };
    assert!(Pipeline::new(required).unwrap_err().to_string().contains("cannot be disabled"));
}

#[test]
fn dump_after_a_pass_shows_the_graph_at_that_point() {
    let src = std::fs::read("examples/lenet5.cnn").unwrap();
    let c = cnnc_compiler::compile_source("lenet5.cnn", Some(std::path::Path::new("examples/lenet5.cnn")), &src);
    let opts = Options { dump_after: Some("losses".into()), ..Options::default() };
    let mut pipe = Pipeline::new(opts).unwrap();
    let tg = training::run(&c.models[0], &c.trains[0], false, &mut pipe).unwrap();
    let dumped = pipe.dumped.expect("the graph after `losses`");
    assert!(dumped.contains("loss.softmax_cross_entropy") && !dumped.contains("vjp."), "{dumped}");
    assert!(tg.graph.to_text().contains("vjp."));
}
