//! Which GEMM for the JIT: the real (M, K, N) of the workloads' kernel programs (batch 1 and 64,
//! transposed operands in backward), timed with matrixmultiply (what the interpreter calls; its
//! threads from `MATMUL_NUM_THREADS`), the `gemm` crate on 1 and 2 threads, and cnnc's own
//! micro-kernels on 1 thread, AVX2 and (where the host has it) AVX-512, over filters packed once.
//! Prints a table of GFLOP/s. `cargo bench --bench gemm` (and with `MATMUL_NUM_THREADS=1`;
//! `-- Inception` for the workloads whose name holds the word).

use cnnc_compiler::ir::ValueId;
use cnnc_compiler::lir::{self, Kernel};
use cnnc_compiler::params::ParamLayout;
use cnnc_compiler::passes::{inference, training, Pipeline};
use cnnc_runtime::interp::microkernel;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// `(m, k, n, a transposed, b transposed)`.
type Shape = (usize, usize, usize, bool, bool);

fn shapes(file: &str, model: Option<&str>, train: bool, batch: usize) -> Vec<(Shape, u64)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let c = cnnc_compiler::compile_file(&root.join(file)).expect("the workload reads");
    let m = c.model(model).expect("the model");
    let mut pipe = Pipeline::new(Default::default()).expect("default passes");
    let program = if train {
        let spec = c.trains.iter().find(|t| t.model == m.name).expect("a train section");
        let tg = training::run(m, spec, false, &mut pipe).expect("a training graph");
        let layout = ParamLayout::of(&tg.graph);
        lir::lower(&tg.graph, batch, &layout, &tg.grads.params, &tg.results()).expect("lowers").program
    } else {
        let g = inference::run(m, &mut pipe).expect("an inference graph");
        let layout = ParamLayout::of(&g);
        let keep: Vec<ValueId> = g.outputs().iter().map(|(_, id)| ValueId::from(*id)).collect();
        lir::lower(&g, batch, &layout, &[], &keep).expect("lowers").program
    };
    let mut found: BTreeMap<Shape, u64> = BTreeMap::new();
    for k in &program.kernels {
        if let Kernel::Gemm { a, c, ta, tb, .. } = k {
            let kk = if *ta { a.rows() } else { a.cols() };
            *found.entry((c.rows(), kk, c.cols(), *ta, *tb)).or_default() += 1;
        }
    }
    found.into_iter().collect()
}

/// Seconds per product, timed over enough repetitions to take about 40 ms.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let started = Instant::now();
    let mut runs = 0u32;
    while started.elapsed() < Duration::from_millis(40) || runs < 3 {
        f();
        runs += 1;
    }
    started.elapsed().as_secs_f64() / f64::from(runs)
}

fn main() {
    let workloads: [(&str, &str, Option<&str>, bool, usize); 8] = [
        ("LeNet-5 train", "examples/lenet5.cnn", None, true, 1),
        ("LeNet-5 train", "examples/lenet5.cnn", None, true, 64),
        ("ResNet-20 train", "benches/models/resnet20_train.cnn", None, true, 1),
        ("ResNet-20 train", "benches/models/resnet20_train.cnn", None, true, 64),
        ("ResNet-50 infer", "stdlib/resnet.cnn", Some("ResNet50"), false, 1),
        ("GoogLeNet infer", "stdlib/inception.cnn", Some("GoogLeNet"), false, 1),
        ("VGG-16 infer", "stdlib/vgg.cnn", Some("VGG16"), false, 1),
        ("Inception 3a", "examples/inception_module.cnn", None, false, 32),
    ];
    // `cargo bench --bench gemm -- WORDS`: only the workloads whose name holds one of the words.
    let words: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let workloads =
        workloads.into_iter().filter(|w| words.is_empty() || words.iter().any(|s| w.0.contains(s.as_str())));
    let threads = std::env::var("MATMUL_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!(
        "| workload | b | M | K | N | op | count | matrixmultiply ({threads} threads) | gemm 1 thread | gemm 2 threads | cnnc AVX2 1 thread | cnnc AVX-512 1 thread |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let wide = std::is_x86_feature_detected!("avx512f");
    for (name, file, model, train, batch) in workloads {
        let mut list = shapes(file, model, train, batch);
        // The shapes that carry the most work, and at most eight per workload.
        list.sort_by_key(|&((m, k, n, _, _), count)| std::cmp::Reverse((m * k * n) as u64 * count));
        for ((m, k, n, ta, tb), count) in list.into_iter().take(8) {
            let a = vec![0.5f32; m * k];
            let b = vec![0.25f32; k * n];
            let mut c = vec![0f32; m * n];
            // Row-major operands: op(A) is m×k, op(B) is k×n; a transposed one is stored k×m / n×k.
            let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
            let (rsb, csb) = if tb { (1, k as isize) } else { (n as isize, 1) };
            let flops = 2.0 * (m * k * n) as f64;
            let mm = time(|| unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    rsa,
                    csa,
                    b.as_ptr(),
                    rsb,
                    csb,
                    0.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                )
            });
            let mut g = |p: gemm::Parallelism| {
                time(|| unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        csa,
                        rsa,
                        b.as_ptr(),
                        csb,
                        rsb,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        p,
                    )
                })
            };
            let (g1, g2) = (g(gemm::Parallelism::None), g(gemm::Parallelism::Rayon(2)));
            // The micro-kernels take products whose left operand is read in rows (not Aᵀ).
            let mut micro = |avx512: bool| {
                if ta || (avx512 && !wide) || !microkernel::runs(m, k) {
                    return "—".to_string();
                }
                let packed = microkernel::pack(&b, k, n, rsb as usize, csb as usize);
                // SAFETY: `runs` checked AVX2 and FMA (AVX-512F where asked); the buffers hold
                // what the shapes say.
                // In blocks of rows, as the runtime calls them (each block's rows stay in cache
                // across its panels).
                let t = time(|| {
                    for first in (0..m).step_by(microkernel::BLOCK_ROWS) {
                        let rows = microkernel::BLOCK_ROWS.min(m - first);
                        unsafe {
                            microkernel::gemm_on(
                                avx512,
                                rows,
                                k,
                                n,
                                &a[first * k..],
                                k,
                                &packed,
                                &mut c[first * n..],
                                n,
                                false,
                            )
                        }
                    }
                });
                format!("{:.1}", flops / t / 1e9)
            };
            let (avx2, avx512) = (micro(false), micro(true));
            let op = match (ta, tb) {
                (false, false) => "A·B",
                (true, false) => "Aᵀ·B",
                (false, true) => "A·Bᵀ",
                (true, true) => "Aᵀ·Bᵀ",
            };
            println!(
                "| {name} | {batch} | {m} | {k} | {n} | {op} | {count} | {:.1} | {:.1} | {:.1} | {avx2} | {avx512} |",
                flops / mm / 1e9,
                flops / g1 / 1e9,
                flops / g2 / 1e9
            );
        }
    }
}
