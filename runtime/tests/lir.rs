//! Differential tests: the kernel IR on its interpreter equals the layer IR on the reference
//! executor, and the kernels compiled to native code (bounds-checked) equal the interpreter,
//! forward and backward, for every op in every configuration the property tests generate and
//! for the stdlib and example models, within ‖a − b‖∞ ≤ 1e-4 · max(‖b‖∞, 1) per tensor.

use cnnc_codegen::{Jit, Options};
use cnnc_compiler::ir::op::{DetectLoss, InputOp, LossKind, LossOp, Op, TripletLoss};
use cnnc_compiler::ir::{Graph, Node, NodeId, ValueId};
use cnnc_compiler::lir::{self, Purpose};
use cnnc_compiler::passes::{autodiff, inference_mode, training_mode};
use cnnc_compiler::shape::Shape;
use cnnc_runtime::executor::Executor;
use cnnc_runtime::interp::{Feed, Machine};
use cnnc_runtime::params::Params;
use cnnc_runtime::reference::{Ctx, Tensor};
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;

mod common;
use common::{list, model, random, size};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

thread_local! {
    /// One bounds-checked JIT per test thread: its kernels are compiled once per expression.
    static JIT: std::cell::RefCell<Jit> = std::cell::RefCell::new(Jit::new(Options { checked: true }).expect("a JIT for this host"));
}

/// `‖a − b‖∞ ≤ 1e-4 · max(‖b‖∞, 1)`.
fn close(a: &Tensor, b: &Tensor, what: &str) -> Result<(), String> {
    if a.shape() != b.shape() {
        return Err(format!("{what}: shape {:?} against {:?}", a.shape(), b.shape()));
    }
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(b.iter()).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    if diff <= 1e-4 * scale {
        Ok(())
    } else {
        Err(format!("{what}: ‖a − b‖∞ = {diff} (scale {scale})"))
    }
}

/// Runs `graph` (a training graph with `loss` and `grads`, or a forward graph when `loss` is
/// `None`) on both backends and compares every kept value and every parameter gradient.
fn compare(
    graph: &Graph,
    loss: Option<(NodeId, NodeId)>,
    grads: &autodiff::Gradients,
    batch: usize,
    seed: u64,
) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut params = Params::init(graph, seed);
    let layout = params.layout.clone();
    for (id, e) in layout.entries().iter().enumerate() {
        let mut r = random(&e.shape, &mut rng);
        if e.shape.len() == 1 {
            r.mapv_inplace(|a| 1.0 + 0.5 * a);
        }
        params.slice_mut(id).copy_from_slice(r.as_slice().unwrap());
    }
    let target_node = loss.map(|(_, t)| t);
    let mut fed: Vec<(NodeId, Tensor)> = Vec::new();
    for &id in graph.inputs().iter().filter(|&&id| Some(id) != target_node) {
        let shape: Vec<usize> = std::iter::once(batch).chain(graph.node(id).shape.0.iter().copied()).collect();
        fed.push((id, random(&shape, &mut rng)));
    }
    let mut keep: Vec<ValueId> = graph.outputs().iter().map(|(_, id)| ValueId::from(*id)).collect();
    let mut labels_i32 = Vec::new();
    if let Some((loss, t)) = loss {
        keep.push(loss.into());
        let y = graph.operands(loss)[0];
        let y_shape: Vec<usize> = std::iter::once(batch).chain(graph.node(y).shape.0.iter().copied()).collect();
        let target = match graph.node(loss).op {
            Op::Loss(l) if l.kind == LossKind::SoftmaxCrossEntropy => {
                labels_i32 = (0..batch).map(|_| rng.random_range(0..y_shape[1]) as i32).collect();
                ArrayD::from_shape_vec(IxDyn(&[batch]), labels_i32.iter().map(|&v| v as f32).collect()).unwrap()
            }
            // Identities, three of them.
            Op::Loss(l) if matches!(l.kind, LossKind::Triplet(_) | LossKind::GivenTriplet { .. }) => {
                labels_i32 = (0..batch).map(|_| rng.random_range(0..3)).collect();
                ArrayD::from_shape_vec(IxDyn(&[batch]), labels_i32.iter().map(|&v| v as f32).collect()).unwrap()
            }
            // Objectness flags 0 or 1, the rest in [0, 1].
            Op::Loss(l) if matches!(l.kind, LossKind::Detect(_)) => {
                random(&y_shape, &mut rng).mapv(|v| (v + 1.0) / 2.0)
            }
            _ => random(&y_shape, &mut rng),
        };
        fed.push((t, target));
    }
    let feeds_ref: Vec<(NodeId, cnnc_runtime::reference::View)> = fed.iter().map(|(id, t)| (*id, t.view())).collect();
    keep.extend(grads.inputs.iter().map(|(_, g)| *g));
    let mut keep_ref = keep.clone();
    keep_ref.extend(grads.params.iter().map(|(_, g)| *g));
    let ctx = Ctx { seed, step: 3, ..Ctx::default() };
    let exec = Executor::new(graph, &layout, &keep_ref).map_err(|e| e.to_string())?;
    let want = exec.run(graph, &params, &feeds_ref, ctx).map_err(|e| e.to_string())?;

    let lowered = lir::lower(graph, batch, &layout, &grads.params, &keep).map_err(|e| e.to_string())?;
    let mut machine = Machine::new(lowered.program.clone()).map_err(|e| format!("machine: {e}"))?;
    // The same program after the kernel-IR passes, its kernels compiled to native code, every
    // access bounds-checked.
    let mut optimized = lowered.program.clone();
    lir::passes::optimize(&mut optimized, &[]);
    // Inference, once more with `--winograd-tile 4` where it changes a layer.
    let f4 = grads.params.is_empty().then(|| {
        let mut f4 = lowered.program.clone();
        lir::passes::optimize(&mut f4, &["winograd_f4".to_string()]);
        f4
    });
    let f4 = f4.filter(|p| {
        p.prepare.iter().any(|k| matches!(k, lir::Kernel::WinogradFilters { w, u } if u.rows() == 4 * w.rows()))
    });
    let mut native = Machine::new(optimized).map_err(|e| format!("machine: {e}"))?;
    JIT.with(|jit| native.compile(&mut jit.borrow_mut())).map_err(|e| format!("jit: {e}"))?;
    let feeds: Vec<Feed> = lowered
        .feeds
        .iter()
        .zip(&machine.program.inputs)
        .map(|(id, (_, _, dtype))| match dtype {
            lir::DType::I32 => Feed::I32(&labels_i32),
            lir::DType::F32 => Feed::F32(fed.iter().find(|(f, _)| f == id).unwrap().1.as_slice().unwrap()),
        })
        .collect();
    let mut grad_store = vec![f32::NAN; layout.len()];
    machine.run(params.data(), &mut grad_store, &feeds, ctx)?;
    let mut native_grads = vec![f32::NAN; layout.len()];
    native.prepare(params.data())?;
    native.run(params.data(), &mut native_grads, &feeds, ctx)?;
    for v in &keep {
        let view = native.program.result(&Purpose::Value(*v)).ok_or("a kept value has no view")?.clone();
        let got = native.read(&view, params.data(), &native_grads);
        let interpreted = machine.read(&view, params.data(), &grad_store);
        close(&got, &interpreted, &format!("native value of `{}`", graph.node(v.node).name))?;
    }
    if let Some(f4) = f4 {
        let mut m4 = Machine::new(f4).map_err(|e| format!("machine: {e}"))?;
        JIT.with(|jit| m4.compile(&mut jit.borrow_mut())).map_err(|e| format!("jit: {e}"))?;
        m4.prepare(params.data())?;
        let mut unused = vec![f32::NAN; layout.len()];
        m4.run(params.data(), &mut unused, &feeds, ctx)?;
        for v in &keep {
            let view = m4.program.result(&Purpose::Value(*v)).ok_or("a kept value has no view")?.clone();
            let got = m4.read(&view, params.data(), &unused);
            let interpreted =
                machine.read(machine.program.result(&Purpose::Value(*v)).unwrap(), params.data(), &grad_store);
            let f2 = native.read(native.program.result(&Purpose::Value(*v)).unwrap(), params.data(), &native_grads);
            // The measured errors, norm-relative (`--nocapture` shows them).
            let error = |a: &Tensor| {
                let scale = interpreted.iter().fold(1f32, |m, x| m.max(x.abs()));
                a.iter().zip(interpreted.iter()).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
            };
            eprintln!(
                "winograd error of `{}`: F(2×2) {:.2e}, F(4×4) {:.2e}",
                graph.node(v.node).name,
                error(&f2),
                error(&got)
            );
            close(&got, &interpreted, &format!("F(4×4, 3×3) value of `{}`", graph.node(v.node).name))?;
        }
    }
    for &(p, _) in &grads.params {
        let e = layout.get(&graph.node(p).name).unwrap();
        let got = ArrayD::from_shape_vec(IxDyn(&e.shape), native_grads[e.range()].to_vec()).unwrap();
        let interpreted = ArrayD::from_shape_vec(IxDyn(&e.shape), grad_store[e.range()].to_vec()).unwrap();
        close(&got, &interpreted, &format!("native gradient of `{}`", e.name))?;
    }
    for v in &keep {
        let view = machine.program.result(&Purpose::Value(*v)).ok_or("a kept value has no view")?.clone();
        let got = machine.read(&view, params.data(), &grad_store);
        close(
            &got,
            want.get(*v).ok_or("the reference lacks a value")?,
            &format!("value of `{}`", graph.node(v.node).name),
        )?;
    }
    for &(p, g) in &grads.params {
        let e = layout.get(&graph.node(p).name).unwrap();
        let got = ArrayD::from_shape_vec(IxDyn(&e.shape), grad_store[e.range()].to_vec()).unwrap();
        close(&got, want.get(g).unwrap(), &format!("gradient of `{}`", e.name))?;
    }
    Ok(())
}

/// A loss on the model's output (and a target input), then autodiff, in training or inference
/// mode; returns the graph, (loss, target) and the gradients.
fn training(mut graph: Graph, kind: LossKind, train: bool) -> (Graph, (NodeId, NodeId), autodiff::Gradients) {
    if train {
        training_mode::run(&mut graph);
    } else {
        inference_mode::run(&mut graph);
    }
    let y = graph.outputs()[0].1;
    let y_shape = graph.node(y).shape.clone();
    let class = matches!(kind, LossKind::SoftmaxCrossEntropy | LossKind::Triplet(_) | LossKind::GivenTriplet { .. });
    let t_shape = if class { Shape(vec![]) } else { y_shape };
    let loc = graph.node(y).loc;
    let t = graph.add(Node::new(Op::Input(InputOp { name: "label".into() }), "label", loc, t_shape), &[]);
    let loss = graph.add(Node::new(Op::Loss(LossOp { kind, weight: 0.7 }), "loss", loc, Shape(vec![])), &[y, t]);
    let grads = autodiff::run(&mut graph, &[loss], true, &[t]);
    cnnc_compiler::ir::verify(&graph).expect("the training graph verifies");
    (graph, (loss, t), grads)
}

fn both(input: &[usize], layers: &str, kind: LossKind, batch: usize, seed: u64) -> Result<(), TestCaseError> {
    let Some(graph) = model(input, layers) else { return Err(TestCaseError::reject("does not shape-check")) };
    let mut forward = graph.clone();
    inference_mode::run(&mut forward);
    compare(&forward, None, &autodiff::Gradients::default(), batch, seed)
        .map_err(|e| TestCaseError::fail(format!("forward: {e}")))?;
    for train in [true, false] {
        let (g, loss, grads) = training(graph.clone(), kind, train);
        compare(&g, Some(loss), &grads, batch, seed)
            .map_err(|e| TestCaseError::fail(format!("training={train}: {e}")))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        max_global_rejects: 4096,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x00c0_ffee),
        ..ProptestConfig::default()
    })]

    #[test]
    fn conv(rank in 1usize..=3, f in size(3, 3), s in size(3, 2), p in size(3, 2), d in size(3, 2),
            groups in 1usize..=2, filters in 1usize..=3, channels in 1usize..=2, n in 4usize..=7, batch in 1usize..=3, seed in any::<u64>()) {
        let (f, s, d) = (&f[..rank], &s[..rank], &d[..rank]);
        let p: Vec<usize> = p[..rank].iter().map(|v| v - 1).collect();
        let input: Vec<usize> = std::iter::repeat_n(n, rank).chain([channels * groups]).collect();
        let layer = format!("conv({}, {}, stride: {}, pad: {}, dilation: {}, groups: {groups})", filters * groups, list(f), list(s), list(&p), list(d));
        both(&input, &layer, LossKind::L2, batch, seed)?;
    }

    /// Eight channels a group and more over maps large enough for blocks of rows (at least four
    /// blocks, `fuse_im2col`): the tuned convolution reads its input through an indirection
    /// table of taps, taps outside the input reading zeros.
    #[test]
    fn conv_reading_its_input_in_place(rank in 2usize..=3, f in size(3, 3), s in size(3, 2), p in size(3, 2), d in size(3, 2),
            groups in 1usize..=2, filters in 1usize..=20, channels in 8usize..=9, n in 0usize..=4, batch in 2usize..=4, seed in any::<u64>()) {
        let (f, s, d) = (&f[..rank], &s[..rank], &d[..rank]);
        let p: Vec<usize> = p[..rank].iter().map(|v| v - 1).collect();
        let n = if rank == 2 { 36 + n } else { 10 + n };
        let input: Vec<usize> = std::iter::repeat_n(n, rank).chain([channels * groups]).collect();
        let layer = format!("conv({}, {}, stride: {}, pad: {}, dilation: {}, groups: {groups})", filters * groups, list(f), list(s), list(&p), list(d));
        both(&input, &layer, LossKind::L2, batch, seed)?;
    }

    /// Fewer channels, all in one group, over maps large enough for blocks of rows, and more
    /// filters than a direct convolution takes: the tuned convolution reads its input through a
    /// table of window rows (one run of `fw·c` values each), rows overlapping the padding copied.
    #[test]
    fn conv_reading_window_rows(rank in 2usize..=3, f in size(3, 3), s in size(3, 2), p in size(3, 2), d in size(3, 2),
            filters in 17usize..=40, channels in 1usize..=7, n in 0usize..=4, batch in 2usize..=4, seed in any::<u64>()) {
        let (f, s, d) = (&f[..rank], &s[..rank], &d[..rank]);
        let p: Vec<usize> = p[..rank].iter().map(|v| v - 1).collect();
        let n = if rank == 2 { 36 + n } else { 10 + n };
        let input: Vec<usize> = std::iter::repeat_n(n, rank).chain([channels]).collect();
        let layer = format!("conv({filters}, {}, stride: {}, pad: {}, dilation: {})", list(f), list(s), list(&p), list(d));
        both(&input, &layer, LossKind::L2, batch, seed)?;
    }

    #[test]
    fn pointwise_conv(rank in 1usize..=3, n in 1usize..=5, c in 1usize..=4, filters in 1usize..=4, batch in 1usize..=3, seed in any::<u64>()) {
        let input: Vec<usize> = std::iter::repeat_n(n, rank).chain([c]).collect();
        both(&input, &format!("conv({filters}, 1)"), LossKind::L2, batch, seed)?;
    }

    #[test]
    fn pooling(rank in 1usize..=3, max in any::<bool>(), f in 1usize..=3, s in 1usize..=3, p in 0usize..=1, ceil in any::<bool>(), n in 3usize..=7, seed in any::<u64>()) {
        prop_assume!(p * 2 <= f);
        let input: Vec<usize> = std::iter::repeat_n(n, rank).chain([2]).collect();
        let kind = if max { "maxpool" } else { "avgpool" };
        let round = if ceil { "ceil" } else { "floor" };
        both(&input, &format!("{kind}({f}, stride: {s}, pad: {p}, round: {round})"), LossKind::L2, 2, seed)?;
    }

    #[test]
    fn global_pooling(rank in 1usize..=3, max in any::<bool>(), n in 1usize..=4, seed in any::<u64>()) {
        let input: Vec<usize> = std::iter::repeat_n(n, rank).chain([3]).collect();
        both(&input, if max { "global_maxpool" } else { "global_avgpool" }, LossKind::L2, 2, seed)?;
    }

    #[test]
    fn gram(rank in 1usize..=3, n in 1usize..=4, c in 1usize..=4, seed in any::<u64>()) {
        let input: Vec<usize> = std::iter::repeat_n(n, rank).chain([c]).collect();
        both(&input, "gram |> flatten", LossKind::L2, 2, seed)?;
    }

    #[test]
    fn dense_and_flatten(h in 1usize..=4, w in 1usize..=4, c in 1usize..=3, units in 1usize..=5, bias in any::<bool>(), batch in 1usize..=4, seed in any::<u64>()) {
        both(&[h, w, c], &format!("flatten |> dense({units}, bias: {bias})"), LossKind::L2, batch, seed)?;
    }

    #[test]
    fn batchnorm(rank in 1usize..=3, n in 2usize..=4, c in 1usize..=3, seed in any::<u64>()) {
        let input: Vec<usize> = std::iter::repeat_n(n, rank).chain([c]).collect();
        both(&input, "batchnorm(eps: 0.001)", LossKind::L2, 3, seed)?;
    }

    #[test]
    fn pad(rank in 1usize..=3, before in 0usize..=2, after in 0usize..=2, channels in 0usize..=2, n in 1usize..=3, batch in 1usize..=3, seed in any::<u64>()) {
        let input: Vec<usize> = std::iter::repeat_n(n, rank).chain([2]).collect();
        let layers = format!("conv(2, 1) |> pad(before: {before}, after: {after}, channels: {channels}) |> conv(2, 2, pad: same) |> tanh");
        both(&input, &layers, LossKind::L2, batch, seed)?;
        // Channels alone, of a vector.
        both(&[3], &format!("dense(2) |> pad(channels: {channels}) |> dense(2)"), LossKind::L2, batch, seed)?;
    }

    #[test]
    fn activations(which in 0usize..7, n in 1usize..=5, seed in any::<u64>()) {
        let layer = ["relu", "leaky_relu(alpha: 0.1)", "tanh", "sigmoid", "softmax", "prelu", "dropout(0.3)"][which];
        both(&[n, 3], layer, LossKind::L2, 2, seed)?;
    }

    #[test]
    fn losses(which in 0usize..3, classes in 2usize..=6, batch in 1usize..=4, seed in any::<u64>()) {
        let kind = [LossKind::SoftmaxCrossEntropy, LossKind::SigmoidCrossEntropy, LossKind::L2][which];
        both(&[4], &format!("dense({classes})"), kind, batch, seed)?;
    }

    #[test]
    fn triplet_loss_with_mining(semi_hard in any::<bool>(), margin in 0.0f32..1.0, batch in 1usize..=9, seed in any::<u64>()) {
        let kind = LossKind::Triplet(TripletLoss { margin, semi_hard });
        both(&[5], "dense(4) |> l2norm", kind, batch, seed)?;
    }

    #[test]
    fn triplet_loss_given(margin in 0.0f32..1.5, batch in 1usize..=5, seed in any::<u64>()) {
        both(&[5], "dense(6)", LossKind::GivenTriplet { margin }, batch, seed)?;
    }

    #[test]
    fn detection_loss(n in 1usize..=4, anchors in 1u32..=3, classes in 0usize..=3, batch in 1usize..=3, seed in any::<u64>()) {
        let kind = LossKind::Detect(DetectLoss { anchors, coord: 5.0, noobj: 0.5 });
        let channels = anchors as usize * (5 + classes);
        both(&[n, n, 2], &format!("conv({channels}, 1)"), kind, batch, seed)?;
    }
}

/// Element-wise arithmetic and L2 normalization, forward and backward, at batches 1 and 3:
/// the interpreter and the native code against the reference.
#[test]
fn arithmetic_and_l2norm() {
    let cases = ["a - b", "a * b", "abs(a) + square(b)", "l2norm(a)", "l2norm(abs(a - b) * b)"];
    for (k, expr) in cases.into_iter().enumerate() {
        for (n, c, batch) in [(1, 1, 1), (3, 4, 3)] {
            let text = format!(
                "model M {{\n input x: [{n}, {n}, {c}]\n a = x |> conv({c}, 1)\n b = x |> conv({c}, 3, pad: same) |> tanh\n output y = {expr}\n}}"
            );
            let compiled = cnnc_compiler::compile_source("arith.cnn", None, text.as_bytes());
            assert!(!compiled.has_errors(), "{expr}");
            let graph = compiled.models.into_iter().next().unwrap().graph;
            let (g, loss, grads) = training(graph, LossKind::L2, true);
            compare(&g, Some(loss), &grads, batch, 11 + k as u64).unwrap_or_else(|e| panic!("{expr}: {e}"));
        }
    }
    // A vector model and a zero vector, where l2norm divides by eps.
    both(&[3], "dense(5) |> l2norm", LossKind::L2, 2, 3).unwrap();
    both(&[3], "dense(4, bias: false) |> l2norm(eps: 0.5)", LossKind::L2, 2, 4).unwrap();
}

#[test]
fn add_concat_and_shared_values() {
    for (n, c) in [(1, 1), (3, 2), (4, 3)] {
        let text = format!(
            "model M {{\n input x: [{n}, {n}, {c}]\n a = x |> conv({c}, 3, pad: same) |> tanh\n b = a + x\n y2 = concat(a, b, x)\n output y = y2 |> conv(2, 1)\n}}"
        );
        let c = cnnc_compiler::compile_source("dag.cnn", None, text.as_bytes());
        let graph = c.models.into_iter().next().unwrap().graph;
        let (g, loss, grads) = training(graph, LossKind::L2, true);
        compare(&g, Some(loss), &grads, 2, 7).unwrap();
    }
}

/// Batches large enough that the tuned kernels of the JIT backend split their work (weight
/// gradients split over K, products and maps over the threads, im2col and pooling over the
/// examples, the forward im2col kept for the weight gradient, batchnorm folded and products
/// run in blocks of rows with their epilogues) agree with the interpreter and the reference; and
/// a step (backward through the inference-mode graph, so that the epilogues are fused) gives the
/// same bits on one, two and three threads.
#[test]
fn tuned_kernels_split_their_work_and_give_the_same_bits_on_any_number_of_threads() {
    let layers = "conv(8, 3x3, pad: same) |> batchnorm |> relu |> maxpool(3x3, stride: 2, pad: same) \
                  |> conv(6, 3x3) |> tanh |> avgpool(2x2, stride: 2) |> flatten |> dense(5)";
    both(&[12, 12, 3], layers, LossKind::SoftmaxCrossEntropy, 48, 5).unwrap();

    // Inference-mode batchnorm (its epilogues fused), then training mode (its batch statistics
    // taken by the convolution, block by block).
    for train in [false, true] {
        same_bits_on_any_threads(layers, train);
    }
}

fn same_bits_on_any_threads(layers: &str, train: bool) {
    let (graph, (_, label), grads) =
        training(model(&[12, 12, 3], layers).unwrap(), LossKind::SoftmaxCrossEntropy, train);
    let batch = 48;
    let params = Params::init(&graph, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let image = random(&[batch, 12, 12, 3], &mut rng);
    let labels: Vec<i32> = (0..batch as i32).map(|i| i % 5).collect();
    let keep: Vec<ValueId> = graph.outputs().iter().map(|(_, id)| ValueId::from(*id)).collect();
    let mut lowered = lir::lower(&graph, batch, &params.layout, &grads.params, &keep).unwrap();
    let fused = lir::passes::optimize(&mut lowered.program, &[]);
    let pass = if train { "fuse_bn_stats" } else { "fuse_epilogue" };
    assert!(fused.iter().any(|&(p, n)| p == pass && n > 0), "{fused:?}");
    let feeds: Vec<Feed> = lowered
        .feeds
        .iter()
        .map(|id| if *id == label { Feed::I32(&labels) } else { Feed::F32(image.as_slice().unwrap()) })
        .collect();
    let mut jit = Jit::new(Options::default()).unwrap();
    let mut step = |threads: usize| {
        let mut m = Machine::new(lowered.program.clone()).unwrap();
        m.compile(&mut jit).unwrap();
        m.prepare(params.data()).unwrap();
        let mut g = vec![f32::NAN; params.layout.len()];
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| m.run(params.data(), &mut g, &feeds, Ctx { seed: 1, step: 1, ..Ctx::default() })).unwrap();
        let outputs: Vec<Vec<f32>> = keep
            .iter()
            .map(|v| {
                m.read(m.program.result(&Purpose::Value(*v)).unwrap(), params.data(), &g).into_raw_vec_and_offset().0
            })
            .collect();
        (g, outputs)
    };
    let one = step(1);
    let trainable = params.layout.entries().iter().filter(|e| e.trainable);
    assert!(trainable.flat_map(|e| &one.0[e.range()]).all(|g| g.is_finite()), "every gradient written");
    for threads in [2, 3] {
        let other = step(threads);
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same(&one.0, &other.0), "gradients on 1 and {threads} threads differ");
        assert!(one.1.iter().zip(&other.1).all(|(a, b)| same(a, b)), "outputs on 1 and {threads} threads differ");
    }
}

/// Products with few rows (a 7×7 map at batch 1 and 2: 49 and 98 rows) read their constant
/// operands packed once by the prepare phase and split their columns over the threads: K longer
/// than one block of the micro-kernel's sum (600), widths that end in a partial panel (40, 700);
/// they equal the interpreter and give the same bits on one, two and three threads.
#[test]
fn few_row_products_read_operands_packed_once() {
    packed_once(&[7, 7, 600], "conv(40, 1x1) |> relu |> conv(700, 1x1)", &[1, 2], 2);
}

/// Tall products (a 20×19 map at batch 2 and 3: 760 and 1,140 rows, blocks of rows that end in
/// a partial one) read their operands packed once too, with an epilogue (blocks of about 128 KiB
/// of output) and without (blocks of 96): narrow ones, one 300 columns wide, and one 1,100 deep
/// (K summed in blocks of 512).
#[test]
fn tall_products_read_operands_packed_once() {
    let layers = "conv(40, 1x1) |> relu |> conv(300, 1x1) |> conv(1100, 1x1) |> relu |> conv(20, 1x1)";
    packed_once(&[20, 19, 24], layers, &[2, 3], 4);
}

/// An implicit-GEMM convolution of an inference program (a 5×5: not Winograd's, too many
/// channels for direct loops; a 3×3 over a 14×14 map, 1,170 deep) reads its filters packed once
/// by the prepare phase, as the 1×1 product after it does; at batch 1 its 196 rows (5 blocks of
/// 48) are cut into blocks that fall evenly on the threads, at batch 2 (9 blocks) they are not.
#[test]
fn implicit_convolutions_read_filters_packed_once() {
    packed_once(&[14, 14, 40], "conv(32, 5x5, pad: same) |> relu |> conv(20, 1x1)", &[1, 2], 2);
    // A deep one (3×3 over 130 channels: K = 1,170) runs on the micro-kernels too.
    packed_once(&[14, 14, 130], "conv(64, 3x3, pad: same) |> relu", &[6], 1);
}

/// Dense layers at batch 1 and 3 (fewer rows than a tile) stream their weights once, in fixed
/// parts of K over the pool (3,000 deep: the last part partial) or on one thread (a small
/// product): equal to the interpreter, nothing packed, the same bits on one, two and three
/// threads.
#[test]
fn few_row_products_stream_their_weights() {
    packed_once(&[3000], "dense(700) |> relu |> dense(20)", &[1, 3], 0);
}

/// A pooling read only by the 1×1 convolution after it runs inside that product (`fuse_pool`):
/// max and average, padded and strided; few rows (pooled whole, the product over panels of
/// columns) and more (blocks of output rows, one block's 5 rows fewer than a tile's); equal to
/// the interpreter, the filters packed once, the same bits on one, two and three threads.
#[test]
fn pooled_rows_are_made_inside_the_product() {
    let cases: [(&[usize], &str, &[usize]); 3] = [
        (&[14, 14, 40], "maxpool(3x3, stride: 1, pad: 1) |> conv(20, 1x1) |> relu", &[1, 3]),
        (&[9, 9, 24], "avgpool(3x3, stride: 2, pad: 1) |> conv(12, 1x1)", &[4, 11]),
        (&[21, 5, 160], "maxpool(3x3, stride: 1, pad: 1) |> conv(8, 1x1)", &[3]),
    ];
    for (input, layers, batches) in cases {
        let mut graph = model(input, layers).unwrap();
        inference_mode::run(&mut graph);
        let params = Params::init(&graph, 5);
        let keep: Vec<ValueId> = graph.outputs().iter().map(|(_, id)| ValueId::from(*id)).collect();
        let mut program = lir::lower(&graph, batches[0], &params.layout, &[], &keep).unwrap().program;
        lir::passes::optimize(&mut program, &[]);
        let kinds: Vec<&str> = program.kernels.iter().map(|k| k.name()).collect();
        assert!(kinds.contains(&"pool_gemm") && !kinds.contains(&"pool"), "{layers}: {kinds:?}");
        packed_once(input, layers, batches, 1);
    }
}

/// The model of `layers` over `input` at each batch: equal to the interpreter, `packed` constant
/// operands packed by the prepare phase (where the micro-kernels run), the same bits on one, two
/// and three threads.
fn packed_once(input: &[usize], layers: &str, batches: &[usize], packed: usize) {
    let mut graph = model(input, layers).unwrap();
    inference_mode::run(&mut graph);
    for &batch in batches {
        compare(&graph, None, &autodiff::Gradients::default(), batch, 11).unwrap();
        let params = Params::init(&graph, 5);
        let shape: Vec<usize> = std::iter::once(batch).chain(input.iter().copied()).collect();
        let image = random(&shape, &mut ChaCha8Rng::seed_from_u64(6));
        let keep: Vec<ValueId> = graph.outputs().iter().map(|(_, id)| ValueId::from(*id)).collect();
        let mut lowered = lir::lower(&graph, batch, &params.layout, &[], &keep).unwrap();
        lir::passes::optimize(&mut lowered.program, &[]);
        let mut jit = Jit::new(Options::default()).unwrap();
        let mut run = |threads: usize| {
            let mut m = Machine::new(lowered.program.clone()).unwrap();
            m.compile(&mut jit).unwrap();
            m.prepare(params.data()).unwrap();
            let packed = m.packed_operands();
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let feeds = [Feed::F32(image.as_slice().unwrap())];
            pool.install(|| m.run(params.data(), &mut [], &feeds, Ctx::default())).unwrap();
            let out = m.read(m.program.result(&Purpose::Value(keep[0])).unwrap(), params.data(), &[]);
            (packed, out.into_raw_vec_and_offset().0)
        };
        let one = run(1);
        if cnnc_runtime::interp::microkernel::available() {
            assert_eq!(one.0, packed, "products packed at batch {batch}");
        }
        for threads in [2, 3] {
            assert_eq!(run(threads).1, one.1, "batch {batch}, {threads} threads");
        }
    }
}

/// Every model of the standard library and the examples: forward on the inference graph, and
/// for those with a train section the whole training step, agree between the backends.
#[test]
fn stdlib_and_example_models() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<std::path::PathBuf> = ["stdlib", "examples"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .collect();
    files.sort();
    let mut checked = 0;
    for file in files {
        let c = cnnc_compiler::compile_file(&file).unwrap();
        assert!(!c.has_errors(), "{}", file.display());
        for m in &c.models {
            let name = format!("{}: {}", file.display(), m.name);
            let mut pipe = cnnc_compiler::passes::Pipeline::new(Default::default()).unwrap();
            let graph = cnnc_compiler::passes::inference::run(m, &mut pipe).unwrap();
            eprintln!("{name}");
            compare(&graph, None, &autodiff::Gradients::default(), 1, 11)
                .unwrap_or_else(|e| panic!("{name} forward: {e}"));
            checked += 1;
            let Some(spec) = c.trains.iter().find(|t| t.model == m.name) else { continue };
            let Ok(tg) = cnnc_compiler::passes::training::run(m, spec, false, &mut pipe) else { continue };
            // The first loss's target input (labels, or boxes encoded onto a grid).
            let target = tg.graph.operands(tg.losses[0].0)[1];
            compare(&tg.graph, Some((tg.losses[0].0, target)), &tg.grads, 2, 12)
                .unwrap_or_else(|e| panic!("{name} training: {e}"));
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} graphs compared");
}

/// `--winograd-tile 4`: a 3×3 convolution over a 56×56 map runs by F(4×4, 3×3) (filters
/// transformed into 36 values each), one over a 28×28 map keeps F(2×2, 3×3); the native program
/// equals the interpreter's unoptimized one within the project's bound, at batch 1 and 2.
#[test]
fn winograd_f4_equals_the_interpreter() {
    let layers = "conv(16, 3x3, pad: same) |> relu |> conv(24, 3x3, pad: same) |> maxpool(2x2) \
                  |> conv(16, 3x3, pad: same) |> relu";
    // 58×58: tiles over the map's last rows and columns only partly inside it.
    for (side, batch) in [(56, 1), (56, 2), (58, 2)] {
        let mut graph = model(&[side, side, 16], layers).unwrap();
        inference_mode::run(&mut graph);
        let mut params = Params::init(&graph, 7);
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for id in 0..params.layout.entries().len() {
            let shape = params.layout.entries()[id].shape.clone();
            params.slice_mut(id).copy_from_slice(random(&shape, &mut rng).as_slice().unwrap());
        }
        let keep: Vec<ValueId> = graph.outputs().iter().map(|(_, id)| ValueId::from(*id)).collect();
        let lowered = lir::lower(&graph, batch, &params.layout, &[], &keep).unwrap();
        let mut optimized = lowered.program.clone();
        let done = lir::passes::optimize(&mut optimized, &["winograd_f4".to_string()]);
        assert!(done.iter().any(|&(p, n)| p == "winograd" && n == 3), "{done:?}");
        let tiles: Vec<usize> = optimized
            .prepare
            .iter()
            .filter_map(|k| match k {
                lir::Kernel::WinogradFilters { w, u } => Some(u.rows() / (w.rows() / 9)),
                _ => None,
            })
            .collect();
        assert_eq!(tiles, [36, 36, 16], "F(4×4) over {side}×{side}, F(2×2) over half that");
        let x = random(&[batch, side, side, 16], &mut rng);
        let feeds = [Feed::F32(x.as_slice().unwrap())];
        let mut machine = Machine::new(lowered.program).unwrap();
        let mut grads = vec![0f32; params.layout.len()];
        machine.run(params.data(), &mut grads, &feeds, Ctx::default()).unwrap();
        let mut native = Machine::new(optimized).unwrap();
        JIT.with(|jit| native.compile(&mut jit.borrow_mut())).unwrap();
        native.prepare(params.data()).unwrap();
        native.run(params.data(), &mut grads, &feeds, Ctx::default()).unwrap();
        let view = native.program.result(&Purpose::Value(keep[0])).unwrap().clone();
        let want = machine.read(machine.program.result(&Purpose::Value(keep[0])).unwrap(), params.data(), &grads);
        close(&native.read(&view, params.data(), &grads), &want, "F(4×4, 3×3) output").unwrap();
    }
}
