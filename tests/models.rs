//! Every stdlib and example file compiles cleanly; each model's summary and IR are snapshots;
//! the classic networks have exactly their published parameter counts.

mod common;

use cnnc_compiler::summary::Summary;
use std::path::Path;

fn clean(path: &Path) -> cnnc_compiler::Compilation {
    let c = common::compile(path);
    let diags = c.diagnostics();
    assert!(diags.is_empty(), "{} has diagnostics:\n{}", path.display(), common::rendered(&c));
    assert!(c.internal.is_empty(), "verifier: {:?}", c.internal);
    c
}

#[test]
fn stdlib_summaries() {
    insta::glob!("../stdlib", "*.cnn", |path| {
        let c = clean(path);
        let text: Vec<String> = c.models.iter().map(|m| Summary::of(&m.graph).to_text()).collect();
        insta::assert_snapshot!(text.join("\n"));
    });
}

#[test]
fn example_summaries() {
    insta::glob!("../examples", "*.cnn", |path| {
        let c = clean(path);
        let text: Vec<String> = c.models.iter().map(|m| Summary::of(&m.graph).to_text()).collect();
        insta::assert_snapshot!(text.join("\n"));
    });
}

#[test]
fn example_ir() {
    insta::glob!("../examples", "*.cnn", |path| {
        let c = clean(path);
        let text: Vec<String> = c.models.iter().map(|m| m.graph.to_text()).collect();
        insta::assert_snapshot!(text.join("\n"));
    });
}

fn params(file: &str, model: &str) -> Summary {
    let c = clean(&common::root().join(file));
    let m = c.model(Some(model)).unwrap_or_else(|| panic!("{model} in {file}"));
    Summary::of(&m.graph)
}

#[test]
fn classic_networks_have_their_published_parameter_counts() {
    let expected = [
        ("stdlib/lenet.cnn", "LeNet5", 61_706),
        ("stdlib/alexnet.cnn", "AlexNet", 61_100_840),
        ("stdlib/vgg.cnn", "VGG16", 138_357_544),
        ("stdlib/resnet.cnn", "ResNet18", 11_689_512),
        ("stdlib/resnet.cnn", "ResNet34", 21_797_672),
        ("stdlib/resnet.cnn", "ResNet50", 25_557_032),
        ("stdlib/resnet.cnn", "ResNet20", 272_474),
        ("stdlib/inception.cnn", "GoogLeNet", 6_998_552),
        ("stdlib/inception.cnn", "GoogLeNetBN", 6_624_904),
    ];
    for (file, model, count) in expected {
        let s = params(file, model);
        assert_eq!(s.params(), count, "{model}");
        assert_eq!(s.frozen, 0, "{model} has no frozen parameters");
    }
}

#[test]
fn resnet50_shapes_and_state() {
    let c = clean(&common::root().join("stdlib/resnet.cnn"));
    let g = &c.model(Some("ResNet50")).unwrap().graph;
    let (_, logits) = &g.outputs()[0];
    assert_eq!(g.node(*logits).shape.0, vec![1000]);
    // 53 batchnorms: their running mean and variance are state, not parameters.
    let s = Summary::of(g);
    assert_eq!(s.state, 2 * 26_560);
    // Block paths are kept in names.
    assert!(g.node_ids().any(|id| g.node(id).name == "bottleneck_down2/conv_bn_relu2/conv1"));
}

#[test]
fn frozen_and_constant_parameters_are_not_trainable() {
    let s = params("examples/transfer.cnn", "Flowers");
    assert_eq!(s.frozen, 2_469_696, "AlexNet's convolutions");
    assert_eq!(s.trainable, 256 * 5 + 5);
    let edges = params("examples/edges.cnn", "Edges");
    assert_eq!((edges.trainable, edges.frozen), (0, 36));
}

#[test]
fn shared_instances_share_their_parameters() {
    let c = clean(&common::root().join("examples/siamese.cnn"));
    let g = &c.model(Some("FaceNet")).unwrap().graph;
    let outputs: Vec<_> = g.outputs().iter().map(|(_, id)| *id).collect();
    assert_eq!(outputs.len(), 3);
    // All three embeddings (each the l2norm of a dense layer) read the same final weight node.
    let weight_of = |id| g.operands(g.operands(id)[0])[1];
    assert_eq!(weight_of(outputs[0]), weight_of(outputs[1]));
    assert_eq!(weight_of(outputs[0]), weight_of(outputs[2]));
    let one = Summary::of(g).params();
    // Convolutions with biases, batchnorm scale and shift, dense with bias.
    let per_encoder = (9 * 32 + 32) + 64 + (9 * 32 * 64 + 64) + 128 + (9 * 64 * 128 + 128) + 256 + (128 * 64 + 64);
    assert_eq!(one, per_encoder);
}
