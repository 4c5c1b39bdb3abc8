//! Loader throughput (images/s) with the full augmentation pipeline on 1, 2 and 4 worker threads,
//! against the rate at which LeNet-5's training step consumes images, measured in the same run.

use cnnc_compiler::train::{Arg, FnCall};
use cnnc_runtime::augment::{Pipeline, Step};
use cnnc_runtime::data::Dataset;
use cnnc_runtime::loader::Loader;
use cnnc_runtime::train::Session;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;

const IMAGES: usize = 1024;
const BATCH: usize = 64;

fn mnist(root: &Path) -> Dataset {
    let mut args = BTreeMap::new();
    args.insert("dir".to_string(), Arg::Str("examples/data/mnist10k".into()));
    args.insert("pad".to_string(), Arg::Int(2));
    args.insert("limit".to_string(), Arg::Int(IMAGES as i64));
    let call = FnCall { name: "mnist".into(), args, loc: Default::default() };
    cnnc_runtime::data::load(&call, root, &[32, 32, 1], 0, &Default::default()).expect("the bundled MNIST digits load")
}

fn full_pipeline() -> Vec<Step> {
    vec![
        Step::Mirror { p: 0.5 },
        Step::RandomCrop { size: 32, pad: 2, p: 1.0 },
        Step::Rotate { degrees: 12.0, p: 0.8 },
        Step::Shear { degrees: 8.0, p: 0.5 },
        Step::Warp { alpha: 2.0, sigma: 3.0, p: 0.5 },
        Step::Brightness { max: 0.1, p: 0.5 },
        Step::Contrast { max: 0.2, p: 0.5 },
        Step::Normalize { mean: vec![0.1307], std: vec![0.3081] },
    ]
}

fn loader(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = mnist(root);
    let pipeline = Pipeline::new(full_pipeline(), &data.shape, &[32, 32, 1], &data.train, 1).expect("a valid pipeline");
    let order: Vec<usize> = (0..data.train.len()).collect();
    let mut group = c.benchmark_group("images per second");
    group.throughput(Throughput::Elements(data.train.len() as u64));
    group.sample_size(10);
    for workers in [1, 2, 4] {
        let l = Loader { data: &data, pipeline: &pipeline, workers };
        group.bench_function(format!("loader, full pipeline, {workers} worker(s)"), |b| {
            b.iter(|| {
                l.epoch(&order, BATCH, 0, |x, _, _| {
                    black_box(x);
                    Ok::<(), ()>(())
                })
            })
        });
    }
    // The training step that consumes the batches: LeNet-5 forward, backward and update.
    let c2 = cnnc_compiler::compile_file(&root.join("examples/lenet5.cnn")).expect("the example reads");
    let (model, spec) = (&c2.models[0], &c2.trains[0]);
    let mut session = Session::new(model, spec).expect("LeNet-5 trains");
    let l = Loader { data: &data, pipeline: &pipeline, workers: 1 };
    let batches: Vec<_> = order.chunks(BATCH).map(|chunk| l.batch(&data.train, chunk, 0)).collect();
    group.bench_function("LeNet-5 training step (consumption)", |b| {
        b.iter(|| {
            for (x, y) in &batches {
                session.step(x.view(), y.view(), 0.01).expect("a finite step");
            }
        })
    });
    group.finish();
}

criterion_group!(benches, loader);
criterion_main!(benches);
