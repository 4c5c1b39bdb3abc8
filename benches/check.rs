//! How long `cnnc check` takes: parse, resolve, elaborate and shape-check whole networks.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

fn check(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, label) in [
        ("stdlib/resnet.cnn", "ResNet-18/34/50/20"),
        ("stdlib/inception.cnn", "GoogLeNet"),
        ("examples/lenet5.cnn", "LeNet-5"),
    ] {
        let path = root.join(file);
        let bytes = std::fs::read(&path).expect("bundled model");
        c.bench_function(&format!("check {label}"), |b| {
            b.iter(|| {
                let c = cnnc_compiler::compile_source(file, Some(&path), black_box(&bytes));
                assert!(!c.has_errors());
                black_box(c.models.len())
            })
        });
    }
    let resnet50 = "use std.resnet.*\nmodel M {\n input image: [224, 224, 3]\n output y = image |> stem |> bottleneck_down(64, stride: 1) |> repeat 2 { bottleneck(64) } |> bottleneck_down(128) |> repeat 3 { bottleneck(128) } |> bottleneck_down(256) |> repeat 5 { bottleneck(256) } |> bottleneck_down(512) |> repeat 2 { bottleneck(512) } |> global_avgpool |> dense(1000)\n}\n";
    c.bench_function("check ResNet-50 alone", |b| {
        b.iter(|| {
            black_box(cnnc_compiler::compile_source("r50.cnn", None, black_box(resnet50.as_bytes())).models.len())
        })
    });
}

criterion_group!(benches, check);
criterion_main!(benches);
