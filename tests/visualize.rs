//! What units respond to: the top patches are the true maxima over the dataset, receptive fields
//! follow the window geometry, and the command draws them.

mod common;

use cnnc_compiler::ir::ValueId;
use cnnc_runtime::backend::{Backend, Programs};
use cnnc_runtime::executor::Executor;
use cnnc_runtime::params::Params;
use cnnc_runtime::reference::{Ctx, Tensor};
use cnnc_runtime::visualize::{self, Field};
use common::{cnnc, compile, root};

fn graph_of(source: &str) -> cnnc_compiler::ir::Graph {
    let c = cnnc_compiler::compile_source("m.cnn", None, source.as_bytes());
    assert!(c.diagnostics().iter().all(|d| !d.is_error()));
    let mut pipe = cnnc_compiler::passes::Pipeline::new(Default::default()).unwrap();
    cnnc_compiler::passes::inference::run(&c.models[0], &mut pipe).unwrap()
}

fn node(g: &cnnc_compiler::ir::Graph, name: &str) -> cnnc_compiler::ir::NodeId {
    g.node_ids().find(|&id| g.node(id).name == name).unwrap()
}

#[test]
fn receptive_fields_follow_kernels_strides_paddings_and_branches() {
    let g = graph_of(
        "model M { input i: [32, 32, 1]\n a = i |> conv(4, 5x5) |> tanh |> avgpool(2x2) |> conv(8, 5x5)\n \
         b = i |> conv(2, 3x3, pad: same, stride: 2) |> conv(2, 3x3, dilation: 2)\n output o = a\n output p = b\n \
         output q = a |> flatten |> dense(3) }",
    );
    let f = |name: &str| visualize::receptive_field(&g, node(&g, name));
    assert_eq!(f("conv1"), Some(Field { jump: vec![1, 1], start: vec![0, 0], size: vec![5, 5] }));
    assert_eq!(f("avgpool1"), Some(Field { jump: vec![2, 2], start: vec![0, 0], size: vec![6, 6] }));
    assert_eq!(f("conv2"), Some(Field { jump: vec![2, 2], start: vec![0, 0], size: vec![14, 14] }));
    // `same` at stride 2 pads the odd pixel after (none before); dilation 2 over jump 2 widens
    // the field by 2·2·2.
    assert_eq!(f("conv3"), Some(Field { jump: vec![2, 2], start: vec![0, 0], size: vec![3, 3] }));
    assert_eq!(f("conv4"), Some(Field { jump: vec![2, 2], start: vec![0, 0], size: vec![11, 11] }));
    // At stride 1, `same` pads one before: the field starts outside the image.
    let g2 =
        graph_of("model M { input i: [8, 8, 3]\n output o = i |> conv(2, 3x3, pad: same) |> relu |> maxpool(2x2) }");
    assert_eq!(
        visualize::receptive_field(&g2, node(&g2, "maxpool1")),
        Some(Field { jump: vec![2, 2], start: vec![-1, -1], size: vec![4, 4] })
    );
    assert_eq!(f("dense1"), None);
}

#[test]
fn the_top_patches_are_the_true_maxima_over_the_dataset() {
    let c = compile(&root().join("examples/lenet5.cnn"));
    let model = &c.models[0];
    let mut pipe = cnnc_compiler::passes::Pipeline::new(Default::default()).unwrap();
    let graph = cnnc_compiler::passes::inference::run(model, &mut pipe).unwrap();
    let params = Params::init(&graph, 3);
    let spec = &c.trains[0];
    let (prep, _) = cnnc_runtime::preprocess::steps(&spec.preprocess);
    let input = vec![32, 32, 1];
    let data =
        cnnc_runtime::data::load(spec.data.as_ref().unwrap(), &root().join("examples"), &input, 1, &prep).unwrap();
    let per = 32 * 32;
    let n = 150;
    // The examples as the model sees them (padded to 32×32 by the data source).
    let x: Vec<f32> = data.train.x[..n * data.features()].iter().map(|v| v * data.scale).collect();
    assert_eq!(x.len(), n * per);
    for layer in ["tanh1", "conv2", "avgpool2"] {
        let id = node(&graph, layer);
        let mut programs = Programs::new(vec![ValueId::from(id)], Vec::new());
        programs.set_backend(Backend::Jit).unwrap();
        let top = visualize::top_activations(&graph, &mut programs, &params, id, &x, 9).unwrap();
        // Brute force on the reference executor: every example's maximum per unit, all sorted.
        let exec = Executor::new(&graph, &params.layout, &[ValueId::from(id)]).unwrap();
        let batch = Tensor::from_shape_vec(ndarray::IxDyn(&[n, 32, 32, 1]), x.clone()).unwrap();
        let values = exec.run(&graph, &params, &[(graph.inputs()[0], batch.view())], Ctx::default()).unwrap();
        let act = values.get(id).unwrap().as_standard_layout().to_owned();
        let act = act.as_slice().unwrap();
        let units = graph.node(id).shape.channels();
        let positions = act.len() / n / units;
        assert_eq!(top.len(), units);
        for u in 0..units {
            let mut all: Vec<(f32, usize)> = (0..n)
                .map(|e| {
                    let m =
                        (0..positions).map(|p| act[(e * positions + p) * units + u]).fold(f32::NEG_INFINITY, f32::max);
                    (m, e)
                })
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for (hit, want) in top[u].iter().zip(&all[..9]) {
                assert!(
                    (hit.value - want.0).abs() <= 1e-4 * want.0.abs().max(1.0),
                    "{layer} unit {u}: {hit:?} vs {want:?}"
                );
                let at = (hit.example * positions + hit.position) * units + u;
                assert!((act[at] - hit.value).abs() <= 1e-4 * hit.value.abs().max(1.0), "the position holds the value");
            }
            // The ninth best is no weaker than any example left out.
            let ninth = top[u][8].value;
            let chosen: Vec<usize> = top[u].iter().map(|h| h.example).collect();
            assert!(all
                .iter()
                .filter(|(_, e)| !chosen.contains(e))
                .all(|(v, _)| *v <= ninth + 1e-4 * ninth.abs().max(1.0)));
        }
    }
}

#[test]
fn the_command_draws_patches_and_filters_and_refuses_a_dense_layer() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    let o = cnnc().args(["build", "examples/lenet5.cnn", "--emit", "weights", "--output"]).arg(&w).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let patches = dir.path().join("p.png");
    let o = cnnc()
        .args(["run", "examples/lenet5.cnn", "--visualize", "tanh2", "--limit", "100", "--weights"])
        .arg(&w)
        .arg("-o")
        .arg(&patches)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("receptive field 14×14"));
    let img = image::open(&patches).unwrap();
    // 16 units: 8 blocks a row, 2 rows; 3 patches of 14 px zoomed ×3 (+1) and 6 px a block.
    assert_eq!((img.width(), img.height()), (8 * (3 * 43 + 6), 2 * (3 * 43 + 6)));
    let filters = dir.path().join("f.png");
    let o = cnnc()
        .args(["run", "examples/lenet5.cnn", "--filters", "--weights"])
        .arg(&w)
        .arg("-o")
        .arg(&filters)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(image::open(&filters).is_ok());
    let o = cnnc().args(["run", "examples/lenet5.cnn", "--visualize", "dense1", "--weights"]).arg(&w).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("feature map"));
}
