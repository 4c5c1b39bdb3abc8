//! Pass snapshots: `tests/passes/<pass>/*.cnn`, the IR before and after the pass, with the
//! verifier run after it.

mod common;

use cnnc_compiler::passes::{self, training};

#[test]
fn autodiff() {
    insta::glob!("passes/autodiff/*.cnn", |path| {
        let c = common::compile(path);
        assert!(!c.has_errors(), "{}", common::rendered(&c));
        let model = &c.models[0];
        let spec = c.trains.iter().find(|t| t.model == model.name).expect("a train section");
        let mut graph = model.graph.clone();
        let tg = passes::checked(&mut graph, |_| training::run(model, spec, false)).unwrap().unwrap();
        cnnc_compiler::ir::verify(&tg.graph).unwrap();
        // Every trainable parameter has a gradient of its own shape; frozen and state ones none.
        for id in tg.graph.node_ids() {
            if let cnnc_compiler::ir::Op::Param(p) = &tg.graph.node(id).op {
                let grad = tg.grads.params.iter().find(|(q, _)| *q == id);
                assert_eq!(grad.is_some(), !p.frozen && !p.role.is_state(), "{}", tg.graph.node(id).name);
                if let Some((_, g)) = grad {
                    assert_eq!(tg.graph.node(*g).shape, tg.graph.node(id).shape);
                }
            }
        }
        insta::assert_snapshot!(format!("before:\n{}\nafter:\n{}", model.graph.to_text(), tg.graph.to_text()));
    });
}
