//! Finite-difference checks of every op's gradient: for a random direction v over the input and
//! every trainable parameter, (L(θ + εv) − L(θ − εv)) / 2ε must match ⟨∇L, v⟩, where ∇L comes
//! from the autodiff pass and the reference executor's vector-Jacobian products.

use cnnc_compiler::ir::op::{DetectLoss, InputOp, LossKind, LossOp, Op, TripletLoss};
use cnnc_compiler::ir::{Graph, Node, NodeId, ValueId};
use cnnc_compiler::passes::{autodiff, inference_mode, training_mode};
use cnnc_compiler::shape::Shape;
use cnnc_runtime::executor::Executor;
use cnnc_runtime::params::Params;
use cnnc_runtime::reference::{Ctx, Tensor};
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;

mod common;
use common::{list, model, random, size};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

struct Case {
    graph: Graph,
    x: NodeId,
    target: NodeId,
    loss: NodeId,
    grads: autodiff::Gradients,
}

/// Adds a loss on output `y` (L2 against a random target unless `kind` says otherwise) and the
/// backward graph with respect to the input and parameters, in training mode (batchnorm on batch
/// statistics, dropout active) or inference mode.
fn with_loss(mut graph: Graph, kind: LossKind) -> Case {
    with_loss_in(graph_in_mode(&mut graph, true), kind)
}

fn graph_in_mode(graph: &mut Graph, training: bool) -> Graph {
    if training {
        training_mode::run(graph);
    } else {
        inference_mode::run(graph);
    }
    graph.clone()
}

fn with_loss_in(mut graph: Graph, kind: LossKind) -> Case {
    let y = graph.outputs()[0].1;
    let x = graph.inputs()[0];
    let y_shape = graph.node(y).shape.clone();
    let class = matches!(kind, LossKind::SoftmaxCrossEntropy | LossKind::Triplet(_) | LossKind::GivenTriplet { .. });
    let t_shape = if class { Shape(vec![]) } else { y_shape };
    let loc = graph.node(y).loc;
    let target = graph.add(Node::new(Op::Input(InputOp { name: "t".into() }), "t", loc, t_shape), &[]);
    let loss = graph.add(Node::new(Op::Loss(LossOp { kind, weight: 0.7 }), "loss", loc, Shape(vec![])), &[y, target]);
    let grads = autodiff::run(&mut graph, &[loss], true, &[target]);
    cnnc_compiler::ir::verify(&graph).expect("the training graph verifies");
    Case { graph, x, target, loss, grads }
}

fn total_loss(case: &Case, params: &Params, x: &Tensor, t: &Tensor, ctx: Ctx) -> f64 {
    let exec = Executor::new(&case.graph, &params.layout, &[case.loss.into()]).unwrap();
    let values = exec.run(&case.graph, params, &[(case.x, x.view()), (case.target, t.view())], ctx).unwrap();
    values.get(case.loss).unwrap().iter().map(|&v| v as f64).sum::<f64>() * 0.7 / x.shape()[0] as f64
}

/// Checks the gradient of a case by central differences along random directions. Non-smooth ops
/// (ReLU, max pooling) have kinks: a difference step that crosses one changes the slope, so a
/// mismatch is retried with a new direction and a smaller step; three mismatches fail.
fn check(case: &Case, batch: usize, kind: LossKind, seed: u64) -> Result<(), TestCaseError> {
    let mut last = String::new();
    for (attempt, eps) in [1e-2f32, 3e-3, 1e-3].into_iter().enumerate() {
        match check_once(case, batch, kind, seed, attempt as u64, eps) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(TestCaseError::fail(last))
}

fn check_once(case: &Case, batch: usize, kind: LossKind, seed: u64, attempt: u64, eps: f32) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut params = Params::init(&case.graph, seed);
    // Random, not the initializer's zeros and ones, so every path carries signal.
    let layout = params.layout.clone();
    for (id, e) in layout.entries().iter().enumerate() {
        let mut r = random(&e.shape, &mut rng);
        if e.shape.len() == 1 {
            r.mapv_inplace(|a| 1.0 + 0.5 * a);
        }
        params.slice_mut(id).copy_from_slice(r.as_slice().unwrap());
    }
    let x_shape: Vec<usize> = std::iter::once(batch).chain(case.graph.node(case.x).shape.0.iter().copied()).collect();
    let x = random(&x_shape, &mut rng);
    let y_shape: Vec<usize> =
        std::iter::once(batch).chain(case.graph.node(case.graph.outputs()[0].1).shape.0.iter().copied()).collect();
    let t = match kind {
        LossKind::SoftmaxCrossEntropy => {
            let classes = y_shape[1];
            ArrayD::from_shape_vec(IxDyn(&[batch]), (0..batch).map(|_| rng.random_range(0..classes) as f32).collect())
                .unwrap()
        }
        LossKind::SigmoidCrossEntropy => random(&y_shape, &mut rng).mapv(|v| (v + 1.0) / 2.0),
        LossKind::L2 => random(&y_shape, &mut rng),
        // Identities: three, so that every anchor has a positive and negatives (and, in larger
        // batches, a choice of them).
        LossKind::Triplet(_) => {
            ArrayD::from_shape_vec(IxDyn(&[batch]), (0..batch).map(|b| (b % 3) as f32).collect()).unwrap()
        }
        // The anchor's identity, which the loss does not read.
        LossKind::GivenTriplet { .. } => ArrayD::zeros(IxDyn(&[batch])),
        // Objectness flags 0 or 1 (by the sign), the rest in [0, 1].
        LossKind::Detect(_) => random(&y_shape, &mut rng).mapv(|v| (v + 1.0) / 2.0),
    };
    let ctx = Ctx { seed, step: 3, ..Ctx::default() };
    let mut keep: Vec<ValueId> = case.grads.params.iter().chain(&case.grads.inputs).map(|(_, g)| *g).collect();
    keep.push(case.loss.into());
    let exec = Executor::new(&case.graph, &params.layout, &keep).unwrap();
    let values = exec.run(&case.graph, &params, &[(case.x, x.view()), (case.target, t.view())], ctx).unwrap();

    // Direction over the input and every trainable parameter; analytic ⟨∇L, v⟩.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (attempt + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let dx = random(&x_shape, &mut rng);
    let mut analytic = 0.0f64;
    let gx = case.grads.inputs.iter().find(|(i, _)| *i == case.x).map(|(_, g)| values.get(*g).unwrap());
    if let Some(gx) = gx {
        analytic += gx.iter().zip(dx.iter()).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>();
    }
    let mut dirs = Vec::new();
    for &(p, g) in &case.grads.params {
        let name = case.graph.node(p).name.clone();
        let d = random(&case.graph.node(p).shape.0, &mut rng);
        analytic += values.get(g).unwrap().iter().zip(d.iter()).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>();
        dirs.push((name, d));
    }
    let shifted = |sign: f32| {
        let mut p = params.clone();
        for (name, d) in &dirs {
            let id = p.layout.id(name).unwrap();
            p.slice_mut(id).iter_mut().zip(d.iter()).for_each(|(v, d)| *v += d * sign * eps);
        }
        let xs = if gx.is_some() { &x + &(&dx * (sign * eps)) } else { x.clone() };
        total_loss(case, &p, &xs, &t, ctx)
    };
    let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps as f64);
    let tolerance = 2e-2 * numeric.abs().max(analytic.abs()) + 2e-3;
    if (numeric - analytic).abs() <= tolerance {
        Ok(())
    } else {
        Err(format!("numeric {numeric} vs analytic {analytic} (ε = {eps})"))
    }
}

fn run(input: &[usize], layers: &str, kind: LossKind, batch: usize, seed: u64) -> Result<(), TestCaseError> {
    run_in(input, layers, kind, batch, seed, true)
}

fn run_in(
    input: &[usize],
    layers: &str,
    kind: LossKind,
    batch: usize,
    seed: u64,
    training: bool,
) -> Result<(), TestCaseError> {
    let Some(mut graph) = model(input, layers) else {
        return Err(TestCaseError::reject("does not shape-check"));
    };
    let case = with_loss_in(graph_in_mode(&mut graph, training), kind);
    check(&case, batch, kind, seed)
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
            groups in 1usize..=2, filters in 1usize..=3, channels in 1usize..=2, n in 4usize..=7, seed in any::<u64>()) {
        let (f, s, d) = (&f[..rank], &s[..rank], &d[..rank]);
        let p: Vec<usize> = p[..rank].iter().map(|v| v - 1).collect();
        let input: Vec<usize> = std::iter::repeat_n(n, rank).chain([channels * groups]).collect();
        let layer = format!("conv({}, {}, stride: {}, pad: {}, dilation: {}, groups: {groups})", filters * groups, list(f), list(s), list(&p), list(d));
        run(&input, &layer, LossKind::L2, 2, seed)?;
    }

    #[test]
    fn conv_same_padding(rank in 1usize..=3, f in 1usize..=4, s in 1usize..=3, n in 3usize..=6, seed in any::<u64>()) {
        let input: Vec<usize> = std::iter::repeat_n(n, rank).chain([2]).collect();
        run(&input, &format!("conv(3, {f}, stride: {s}, pad: same)"), LossKind::L2, 2, seed)?;
    }

    #[test]
    fn pooling(rank in 1usize..=3, max in any::<bool>(), f in 1usize..=3, s in 1usize..=3, p in 0usize..=1, ceil in any::<bool>(), n in 3usize..=7, seed in any::<u64>()) {
        prop_assume!(p * 2 <= f);
        let input: Vec<usize> = std::iter::repeat_n(n, rank).chain([2]).collect();
        let kind = if max { "maxpool" } else { "avgpool" };
        let round = if ceil { "ceil" } else { "floor" };
        run(&input, &format!("{kind}({f}, stride: {s}, pad: {p}, round: {round})"), LossKind::L2, 2, seed)?;
    }

    #[test]
    fn global_pooling(rank in 1usize..=3, max in any::<bool>(), n in 1usize..=4, seed in any::<u64>()) {
        let input: Vec<usize> = std::iter::repeat_n(n, rank).chain([3]).collect();
        run(&input, if max { "global_maxpool" } else { "global_avgpool" }, LossKind::L2, 2, seed)?;
    }

    #[test]
    fn gram(rank in 1usize..=3, n in 1usize..=4, c in 1usize..=4, seed in any::<u64>()) {
        let input: Vec<usize> = std::iter::repeat_n(n, rank).chain([c]).collect();
        run(&input, "gram |> flatten", LossKind::L2, 2, seed)?;
    }

    #[test]
    fn dense_and_flatten(h in 1usize..=4, w in 1usize..=4, c in 1usize..=3, units in 1usize..=5, bias in any::<bool>(), seed in any::<u64>()) {
        run(&[h, w, c], &format!("flatten |> dense({units}, bias: {bias})"), LossKind::L2, 3, seed)?;
    }

    #[test]
    fn batchnorm(rank in 1usize..=3, n in 2usize..=4, c in 1usize..=3, seed in any::<u64>()) {
        let input: Vec<usize> = std::iter::repeat_n(n, rank).chain([c]).collect();
        run(&input, "batchnorm(eps: 0.001)", LossKind::L2, 3, seed)?;
        // Inference mode (running statistics): the gradient style transfer takes through a net.
        run_in(&input, "batchnorm(eps: 0.001)", LossKind::L2, 3, seed, false)?;
    }

    /// Zeros before and after each spatial axis and after the channels; the convolution after
    /// it reads the zeros, so they carry gradient into its weights.
    #[test]
    fn pad(rank in 1usize..=3, before in 0usize..=2, after in 0usize..=2, channels in 0usize..=2, n in 1usize..=3, seed in any::<u64>()) {
        let input: Vec<usize> = std::iter::repeat_n(n, rank).chain([2]).collect();
        let layers = format!("conv(2, 1) |> pad(before: {before}, after: {after}, channels: {channels}) |> conv(2, 2, pad: same) |> tanh");
        run(&input, &layers, LossKind::L2, 2, seed)?;
    }

    #[test]
    fn activations(which in 0usize..7, n in 1usize..=5, seed in any::<u64>()) {
        let layer = ["relu", "leaky_relu(alpha: 0.1)", "tanh", "sigmoid", "softmax", "prelu", "dropout(0.3)"][which];
        run(&[n, 3], layer, LossKind::L2, 2, seed)?;
    }

    #[test]
    fn add_and_concat(n in 1usize..=4, c in 1usize..=3, seed in any::<u64>()) {
        run(&[n, n, c], "conv(2, 1) |> relu", LossKind::L2, 2, seed)?;
        let graph = model_dag(n, c);
        let case = with_loss(graph, LossKind::L2);
        check(&case, 2, LossKind::L2, seed)?;
    }

    /// Every element-wise case, each op alone and in compositions, on each drawn size.
    #[test]
    fn arithmetic(n in 1usize..=3, c in 1usize..=4, seed in any::<u64>()) {
        for expr in ARITHMETIC {
            let case = with_loss(arithmetic_model(expr, n, c), LossKind::L2);
            check(&case, 2, LossKind::L2, seed).map_err(|e| TestCaseError::fail(format!("{expr}: {e}")))?;
        }
    }

    #[test]
    fn l2norm_of_vectors(units in 1usize..=6, seed in any::<u64>()) {
        run(&[3], &format!("dense({units}) |> l2norm"), LossKind::L2, 3, seed)?;
    }

    /// Batch-hard mining: its loss is continuous (its slope has kinks where two distances tie,
    /// which the check steps around). Semi-hard mining's loss jumps where a negative's distance
    /// crosses the positive's, so a random step over every parameter cannot check it here;
    /// `metric::gradient` checks it where the triplets chosen stay the same.
    #[test]
    fn triplet_loss_with_mining(margin in 0.0f32..1.0, units in 2usize..=5, seed in any::<u64>()) {
        let kind = LossKind::Triplet(TripletLoss { margin, semi_hard: false });
        run(&[4], &format!("dense({units})"), kind, 7, seed)?;
        // On the unit sphere, as an encoder ends.
        run(&[4], &format!("dense({units}) |> l2norm"), kind, 6, seed)?;
    }

    /// Given triplets (`triplet(a, p, n)`): the prediction is `[a | p | n]`; a margin of 1 keeps
    /// most triplets active, a margin of 0 most inactive.
    #[test]
    fn triplet_loss_given(margin in 0.0f32..1.5, units in 1usize..=3, batch in 1usize..=4, seed in any::<u64>()) {
        let kind = LossKind::GivenTriplet { margin };
        run(&[4], &format!("dense({})", 3 * units), kind, batch, seed)?;
    }

    #[test]
    fn losses(which in 0usize..3, classes in 2usize..=6, seed in any::<u64>()) {
        let kind = [LossKind::SoftmaxCrossEntropy, LossKind::SigmoidCrossEntropy, LossKind::L2][which];
        run(&[4], &format!("dense({classes})"), kind, 3, seed)?;
    }

    #[test]
    fn detection_loss(n in 1usize..=3, anchors in 1u32..=2, classes in 0usize..=3, seed in any::<u64>()) {
        let kind = LossKind::Detect(DetectLoss { anchors, coord: 5.0, noobj: 0.5 });
        run(&[n, n, 2], &format!("conv({}, 1)", anchors as usize * (5 + classes)), kind, 2, seed)?;
    }
}

/// The element-wise arithmetic cases, of `a` and `b` (two branches from one input).
const ARITHMETIC: [&str; 7] =
    ["a - b", "a * b", "abs(a)", "square(a)", "l2norm(a)", "l2norm(abs(a - b) * b)", "square(a - b) * a - b"];

/// A model whose output is `expr` of `a = x |> conv(c, 1)` and `b = x |> conv(c, 3, pad: same) |> tanh`.
fn arithmetic_model(expr: &str, n: usize, c: usize) -> Graph {
    let text = format!(
        "model M {{\n input x: [{n}, {n}, {c}]\n a = x |> conv({c}, 1)\n b = x |> conv({c}, 3, pad: same) |> tanh\n output y = {expr}\n}}"
    );
    let compiled = cnnc_compiler::compile_source("arith.cnn", None, text.as_bytes());
    assert!(!compiled.has_errors(), "{expr}: {:?}", compiled.diagnostics());
    compiled.models.into_iter().next().unwrap().graph
}

/// A DAG with a residual add, a concat and a shared value used three times.
fn model_dag(n: usize, c: usize) -> Graph {
    let text = format!(
        "model M {{\n input x: [{n}, {n}, {c}]\n a = x |> conv({c}, 3, pad: same) |> tanh\n b = a + x\n y2 = concat(a, b, x)\n output y = y2 |> conv(2, 1)\n}}"
    );
    let c = cnnc_compiler::compile_source("dag.cnn", None, text.as_bytes());
    assert!(!c.has_errors());
    c.models.into_iter().next().unwrap().graph
}
