//! Neural style transfer: the pixels of an image are optimized, the weights stay fixed. The
//! cost's gradient with respect to the input comes from the image graph
//! ([`cnnc_compiler::passes::image`]) on any backend; the optimizers (Adam, L-BFGS with a
//! backtracking line search) work on the pixels in `[0, 1]`, each step projected back onto that
//! range. The section's `scale` and `normalize` preprocessing map pixels to the model's input.

use crate::backend::{Backend, Programs};
use crate::executor::{Executor, Values};
use crate::optim::Optimizer;
use crate::params::Params;
use crate::preprocess::Prep;
use crate::reference::{Ctx, Tensor, View};
use cnnc_compiler::elaborate::ModelInfo;
use cnnc_compiler::ir::{Graph, NodeId, ValueId};
use cnnc_compiler::passes::image::{self, Compare, ImageGraph};
use cnnc_compiler::passes::{inference, Pipeline};
use cnnc_compiler::train::TrainSpec;
use ndarray::IxDyn;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Why style transfer stopped.
#[derive(Debug)]
pub enum StyleError {
    /// Bad input: an image that cannot be read, weights that do not fit, a model that does not.
    Input(String),
    /// A fault of cnnc's.
    Internal(String),
    /// The cost or its gradient stopped being finite.
    NonFinite { step: usize },
}

impl fmt::Display for StyleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StyleError::Input(s) | StyleError::Internal(s) => f.write_str(s),
            StyleError::NonFinite { step } => write!(
                f,
                "the cost stopped being finite at step {step}: lower the optimizer's `lr` or the style weights"
            ),
        }
    }
}

impl std::error::Error for StyleError {}

/// The cost of an image and its parts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cost {
    /// `α·J_content + β·J_style + γ·J_tv`.
    pub total: f64,
    /// The weighted content terms.
    pub content: f64,
    /// The weighted style terms.
    pub style: f64,
    /// The weighted total variation.
    pub total_variation: f64,
}

/// A model set up to optimize its input image: the image graph, the fixed weights, the targets.
pub struct Transfer {
    /// The image graph.
    pub ig: ImageGraph,
    infer: Graph,
    /// The weights (fixed).
    pub params: Params,
    /// The image's `[h, w, c]`.
    pub shape: [usize; 3],
    scale: Vec<f32>,
    shift: Vec<f32>,
    targets: Vec<Tensor>,
    backend: Backend,
    programs: Programs,
    infer_programs: Programs,
    /// What a cost evaluation keeps: each term's loss, the image's gradient.
    keep: Vec<ValueId>,
    /// What a target computation keeps: the outputs the costs read.
    infer_keep: Vec<ValueId>,
}

/// The section's `scale` and `normalize` steps as one affine map per channel:
/// `input = pixel·scale[c] + shift[c]`.
fn affine(spec: &TrainSpec, channels: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut scale, mut shift) = (vec![1f32; channels], vec![0f32; channels]);
    for step in &spec.preprocess {
        let per = |v: &[f64], c: usize, d: f64| v.get(if v.len() == 1 { 0 } else { c }).copied().unwrap_or(d) as f32;
        match step.name.as_str() {
            "scale" => {
                let (f, o) = (step.num("factor", 1.0) as f32, step.num("offset", 0.0) as f32);
                for c in 0..channels {
                    scale[c] *= f;
                    shift[c] = shift[c] * f + o;
                }
            }
            "normalize" => {
                let (mean, std) = (step.numbers("mean"), step.numbers("std"));
                for c in 0..channels {
                    let (m, s) = (per(&mean, c, 0.0), per(&std, c, 1.0));
                    scale[c] /= s;
                    shift[c] = (shift[c] - m) / s;
                }
            }
            _ => {}
        }
    }
    (scale, shift)
}

impl Transfer {
    /// Builds the image graph of `model` under `spec`, with weights `params` (of the model's
    /// inference graph), run by `backend`.
    pub fn new(
        model: &ModelInfo,
        spec: &TrainSpec,
        params: Option<Params>,
        backend: Backend,
    ) -> Result<Self, StyleError> {
        let mut pipe = Pipeline::new(Default::default()).map_err(|e| StyleError::Internal(e.to_string()))?;
        let ig = image::run(model, spec, &mut pipe).map_err(|e| StyleError::Input(e.to_string()))?;
        let mut pipe = Pipeline::new(Default::default()).map_err(|e| StyleError::Internal(e.to_string()))?;
        let mut infer = inference::run(model, &mut pipe).map_err(|e| StyleError::Internal(e.to_string()))?;
        let wanted: Vec<(String, NodeId)> =
            infer.outputs().iter().filter(|(n, _)| ig.terms.iter().any(|t| &t.output == n)).cloned().collect();
        infer.set_outputs(wanted);
        let &[h, w, c] = &ig.graph.node(ig.input).shape.0[..] else {
            return Err(StyleError::Input("the model's input must be an image [n_H, n_W, n_C]".into()));
        };
        let mut keep: Vec<ValueId> = ig.terms.iter().map(|t| ValueId::from(t.loss)).collect();
        keep.push(ig.grad);
        crate::train::fits_in_memory(&ig.graph, 1, &[], &keep, 4).map_err(|e| StyleError::Input(e.to_string()))?;
        let params = match params {
            Some(p) => p,
            None => Params::init(&infer, spec.seed),
        };
        let (scale, shift) = affine(spec, c);
        let infer_keep: Vec<ValueId> = infer.outputs().iter().map(|(_, id)| ValueId::from(*id)).collect();
        let mut t = Transfer {
            ig,
            infer,
            params,
            shape: [h, w, c],
            scale,
            shift,
            targets: Vec::new(),
            backend: Backend::Reference,
            programs: Programs::new(keep.clone(), Vec::new()),
            infer_programs: Programs::new(infer_keep.clone(), Vec::new()),
            keep,
            infer_keep,
        };
        t.set_backend(backend)?;
        Ok(t)
    }

    /// Runs on `backend` from now on.
    pub fn set_backend(&mut self, backend: Backend) -> Result<(), StyleError> {
        self.programs.set_backend(backend).map_err(StyleError::Internal)?;
        self.infer_programs.set_backend(backend).map_err(StyleError::Internal)?;
        self.backend = backend;
        Ok(())
    }

    /// `pixels` (`[h, w, c]` in `[0, 1]`) as the model's input: scaled and normalized.
    fn input(&self, pixels: &[f32]) -> Result<Tensor, StyleError> {
        let [h, w, c] = self.shape;
        let values = pixels.iter().enumerate().map(|(i, &p)| p * self.scale[i % c] + self.shift[i % c]).collect();
        Tensor::from_shape_vec(IxDyn(&[1, h, w, c]), values).map_err(|_| {
            StyleError::Input(format!("an image of {h}×{w}×{c} pixels has {} values, not {}", h * w * c, pixels.len()))
        })
    }

    /// The inference graph's values on `pixels`.
    fn infer(&mut self, pixels: &[f32]) -> Result<Values, StyleError> {
        let x = self.input(pixels)?;
        let feeds = [(self.infer.inputs()[0], x.view())];
        run_graph(self.backend, &self.infer, &mut self.infer_programs, &self.params, &self.infer_keep, &feeds)
    }

    /// Sets the targets from the content and style images (`[h, w, c]` pixels in `[0, 1]`):
    /// the content image's features and the style image's Gram matrices.
    pub fn set_targets(&mut self, content: &[f32], style: &[f32]) -> Result<(), StyleError> {
        let of = |values: &Values, infer: &Graph, output: &str| -> Result<Tensor, StyleError> {
            let id = infer.outputs().iter().find(|(n, _)| n == output).map(|(_, id)| *id);
            id.and_then(|id| values.get(id))
                .cloned()
                .ok_or_else(|| StyleError::Internal(format!("no value of `{output}`")))
        };
        let content_values = self.infer(content)?;
        let style_values = self.infer(style)?;
        let mut targets = Vec::new();
        for term in &self.ig.terms {
            targets.push(match term.compare {
                Compare::Content => of(&content_values, &self.infer, &term.output)?,
                Compare::Style => crate::reference::gram(&of(&style_values, &self.infer, &term.output)?.view()),
            });
        }
        self.targets = targets;
        Ok(())
    }

    /// The cost of `pixels` and its gradient with respect to them.
    pub fn cost(&mut self, pixels: &[f32]) -> Result<(Cost, Vec<f32>), StyleError> {
        if self.targets.len() != self.ig.terms.len() {
            return Err(StyleError::Internal("the targets were not set".into()));
        }
        let x = self.input(pixels)?;
        let mut feeds = vec![(self.ig.input, x.view())];
        feeds.extend(self.ig.terms.iter().zip(&self.targets).map(|(t, v)| (t.target, v.view())));
        let values = run_graph(self.backend, &self.ig.graph, &mut self.programs, &self.params, &self.keep, &feeds)?;
        let mut cost = Cost::default();
        for term in &self.ig.terms {
            let v = values.get(term.loss).map_or(f64::NAN, |t| t.iter().map(|&x| f64::from(x)).sum::<f64>());
            let weighted = f64::from(term.weight) * v;
            match term.compare {
                Compare::Content => cost.content += weighted,
                Compare::Style => cost.style += weighted,
            }
        }
        let dx = values.get(self.ig.grad).ok_or_else(|| StyleError::Internal("no gradient of the image".into()))?;
        let c = self.shape[2];
        let mut grad: Vec<f32> = dx.iter().enumerate().map(|(i, &g)| g * self.scale[i % c]).collect();
        if self.ig.total_variation != 0.0 {
            let weight = self.ig.total_variation;
            cost.total_variation = weight * total_variation(pixels, self.shape, Some((&mut grad, weight as f32)));
        }
        cost.total = cost.content + cost.style + cost.total_variation;
        Ok((cost, grad))
    }
}

/// Runs `graph` on `feeds` on `backend`, keeping `keep`.
fn run_graph(
    backend: Backend,
    graph: &Graph,
    programs: &mut Programs,
    params: &Params,
    keep: &[ValueId],
    feeds: &[(NodeId, View)],
) -> Result<Values, StyleError> {
    match backend {
        Backend::Reference => {
            let exec = Executor::new(graph, &params.layout, keep).map_err(|e| StyleError::Internal(e.to_string()))?;
            exec.run(graph, params, feeds, Ctx::default()).map_err(|e| StyleError::Internal(e.to_string()))
        }
        Backend::Lir | Backend::Jit => {
            programs.run(graph, params, &mut [], feeds, Ctx::default()).map_err(StyleError::Internal)
        }
    }
}

/// `Σ (x[i+1, j] − x[i, j])² + (x[i, j+1] − x[i, j])²` over every channel; adds `weight` times
/// its gradient to `grad` when given.
pub fn total_variation(x: &[f32], [h, w, c]: [usize; 3], mut grad: Option<(&mut Vec<f32>, f32)>) -> f64 {
    let mut sum = 0.0f64;
    let at = |i: usize, j: usize, k: usize| (i * w + j) * c + k;
    for i in 0..h {
        for j in 0..w {
            for k in 0..c {
                let here = at(i, j, k);
                for (ok, next) in [(i + 1 < h, at(i + 1, j, k)), (j + 1 < w, at(i, j + 1, k))] {
                    if !ok {
                        continue;
                    }
                    let d = x[next] - x[here];
                    sum += f64::from(d * d);
                    if let Some((g, weight)) = grad.as_mut() {
                        g[next] += 2.0 * *weight * d;
                        g[here] -= 2.0 * *weight * d;
                    }
                }
            }
        }
    }
    sum
}

/// An optimizer over the pixels.
pub enum PixelOptimizer {
    /// A training optimizer (Adam, SGD) on the pixels as one flat buffer, at learning rate `lr`.
    Gradient { opt: Optimizer, lr: f32 },
    /// L-BFGS with `history` pairs and a weak Wolfe line search from step `lr`.
    Lbfgs { lr: f32, history: usize, pairs: Vec<(Vec<f32>, Vec<f32>)>, iterations: usize },
}

impl PixelOptimizer {
    /// The section's optimizer, over `n` pixels.
    pub fn of(spec: &TrainSpec, n: usize) -> PixelOptimizer {
        match spec.optimizer.as_ref() {
            Some(o) if o.name == "lbfgs" => PixelOptimizer::Lbfgs {
                lr: o.num("lr", 1.0) as f32,
                history: (o.num("history", 10.0) as usize).max(1),
                pairs: Vec::new(),
                iterations: 0,
            },
            _ => {
                let spec = spec.optimizer_spec();
                PixelOptimizer::Gradient { opt: Optimizer::flat(spec, n), lr: spec.lr() }
            }
        }
    }

    /// One step from `x` (its cost `cost`, gradient `g`): `x`, `cost` and `g` become the new
    /// point's. `eval` computes a point's cost and gradient. Returns the evaluations it made.
    pub fn step(
        &mut self,
        x: &mut Vec<f32>,
        cost: &mut Cost,
        g: &mut Vec<f32>,
        mut eval: impl FnMut(&[f32]) -> Result<(Cost, Vec<f32>), StyleError>,
    ) -> Result<usize, StyleError> {
        match self {
            PixelOptimizer::Gradient { opt, lr } => {
                opt.step_flat(x, g, *lr);
                x.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
                (*cost, *g) = eval(x)?;
                Ok(1)
            }
            PixelOptimizer::Lbfgs { lr, history, pairs, iterations } => {
                // As PyTorch's: the first step scaled by 1/‖g‖₁, then `lr` along −H·g (−g while
                // no curvature pair is kept), shortened until the cost falls enough.
                let d = direction(pairs, g);
                let slope: f64 = d.iter().zip(g.iter()).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                let first = *iterations == 0;
                *iterations += 1;
                let d = if slope < 0.0 && slope.is_finite() {
                    d
                } else {
                    pairs.clear();
                    g.iter().map(|&v| -v).collect()
                };
                let norm1: f64 = g.iter().map(|&v| f64::from(v.abs())).sum();
                let mut t = if first { f64::from(*lr) * (1.0 / norm1.max(1e-12)).min(1.0) } else { f64::from(*lr) };
                // A weak Wolfe line search: shorten the step until the cost falls enough
                // (Armijo); lengthen it while it does and the slope is still steep (the cost is
                // not convex everywhere, and a step along negative curvature may go further).
                let mut evals = 0;
                let mut best: Option<(Vec<f32>, Cost, Vec<f32>)> = None;
                let mut lengthening = false;
                for _ in 0..16 {
                    let trial: Vec<f32> =
                        x.iter().zip(&d).map(|(&xi, &di)| (xi + (t as f32) * di).clamp(0.0, 1.0)).collect();
                    let (ct, gt) = eval(&trial)?;
                    let ft = ct.total;
                    evals += 1;
                    let moved: f64 =
                        trial.iter().zip(x.iter()).zip(g.iter()).map(|((&a, &b), &gi)| f64::from((a - b) * gi)).sum();
                    let enough = ft.is_finite() && ft <= cost.total + 1e-4 * moved;
                    let better = enough && best.as_ref().is_none_or(|b| ft < b.1.total);
                    if better {
                        let steep: f64 = gt.iter().zip(&d).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>();
                        best = Some((trial, ct, gt));
                        if steep < 0.9 * slope.min(0.0) && slope < 0.0 {
                            lengthening = true;
                            t *= 2.0;
                            continue;
                        }
                        break;
                    }
                    if lengthening {
                        break;
                    }
                    t *= 0.5;
                }
                let Some((trial, ct, gt)) = best else {
                    // No decrease along this direction: start the curvature memory again.
                    pairs.clear();
                    return Ok(evals);
                };
                let s: Vec<f32> = trial.iter().zip(x.iter()).map(|(&a, &b)| a - b).collect();
                let y: Vec<f32> = gt.iter().zip(g.iter()).map(|(&a, &b)| a - b).collect();
                let sy: f64 = s.iter().zip(&y).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                let yy: f64 = y.iter().map(|&b| f64::from(b) * f64::from(b)).sum();
                // Curvature relative to the change of gradient: a short first step still gives
                // a pair; negative curvature gives none.
                if sy > 1e-10 * yy && sy > 0.0 {
                    pairs.push((s, y));
                    if pairs.len() > *history {
                        pairs.remove(0);
                    }
                }
                *x = trial;
                *cost = ct;
                *g = gt;
                Ok(evals)
            }
        }
    }
}

/// `−H·g` by the two-loop recursion over the stored `(s, y)` pairs (`H₀ = s·y/y·y`).
fn direction(pairs: &[(Vec<f32>, Vec<f32>)], g: &[f32]) -> Vec<f32> {
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum::<f64>();
    let mut q: Vec<f64> = g.iter().map(|&v| f64::from(v)).collect();
    let mut alphas = Vec::with_capacity(pairs.len());
    for (s, y) in pairs.iter().rev() {
        let rho = 1.0 / dot(y, s);
        let a = rho * s.iter().zip(&q).map(|(&si, &qi)| f64::from(si) * qi).sum::<f64>();
        q.iter_mut().zip(y).for_each(|(qi, &yi)| *qi -= a * f64::from(yi));
        alphas.push((a, rho));
    }
    if let Some((s, y)) = pairs.last() {
        let gamma = dot(s, y) / dot(y, y);
        q.iter_mut().for_each(|v| *v *= gamma);
    }
    for ((s, y), (a, rho)) in pairs.iter().zip(alphas.into_iter().rev()) {
        let b = rho * y.iter().zip(&q).map(|(&yi, &qi)| f64::from(yi) * qi).sum::<f64>();
        q.iter_mut().zip(s).for_each(|(qi, &si)| *qi += (a - b) * f64::from(si));
    }
    q.into_iter().map(|v| -v as f32).collect()
}

/// Where the images come from and where the results go.
#[derive(Clone, Debug)]
pub struct StyleOptions {
    /// The content image.
    pub content: PathBuf,
    /// The style image.
    pub style: PathBuf,
    /// The share of uniform noise in the first image (0: the content image; 1: noise).
    pub noise: f64,
    /// Optimizer steps.
    pub steps: usize,
    /// Save the image every this many steps (0: at the end only).
    pub every: usize,
    /// Folder for `generated.png`, the intermediate images, `costs.csv` and `costs.png`.
    pub out: PathBuf,
    /// Also write the final image here.
    pub output: Option<PathBuf>,
    /// Print nothing but errors.
    pub quiet: bool,
    /// The seed of the noise.
    pub seed: u64,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The cost before the first step and after each, with the evaluations made so far.
    pub history: Vec<(usize, Cost)>,
    /// Wall time of the optimization.
    pub seconds: f64,
    /// The final image, `[h, w, c]` in `[0, 1]`.
    pub image: Vec<f32>,
}

/// Reads an image as `[h, w, c]` pixels in `[0, 1]`, resized to the model's input.
pub fn read_image(path: &Path, [h, w, c]: [usize; 3]) -> Result<Vec<f32>, StyleError> {
    let prep = Prep {
        resize: Some((h, w)),
        colour: Some(if c == 1 { crate::preprocess::Colour::Grey } else { crate::preprocess::Colour::Rgb }),
    };
    crate::data::load_image_as(path, &[h, w, c], &prep).map_err(|e| StyleError::Input(e.to_string()))
}

/// Encodes `[h, w, c]` pixels in `[0, 1]` as a PNG at `path` (atomically).
pub fn write_png(path: &Path, pixels: &[f32], [h, w, c]: [usize; 3]) -> Result<(), StyleError> {
    let bytes: Vec<u8> = pixels.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
    crate::atomic::write_png(path, &bytes, w, h, c)
        .map_err(|e| StyleError::Input(format!("cannot write `{}`: {e}", path.display())))
}

/// Optimizes an image as the style-transfer section `spec` says.
pub fn run(transfer: &mut Transfer, spec: &TrainSpec, opts: &StyleOptions) -> Result<Outcome, StyleError> {
    let shape = transfer.shape;
    let content = read_image(&opts.content, shape)?;
    let style = read_image(&opts.style, shape)?;
    transfer.set_targets(&content, &style)?;
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(opts.seed);
    let noise = opts.noise as f32;
    let mut x: Vec<f32> =
        content.iter().map(|&p| (1.0 - noise) * p + noise * rand::RngExt::random::<f32>(&mut rng)).collect();
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| StyleError::Input(format!("cannot create `{}`: {e}", opts.out.display())))?;
    let started = Instant::now();
    let (mut cost, mut g) = transfer.cost(&x)?;
    let mut history = vec![(1, cost.clone())];
    let mut evaluations = 1;
    let mut optimizer = PixelOptimizer::of(spec, x.len());
    let bar = (!opts.quiet).then(|| crate::train::bar(opts.steps as u64, "style transfer".into()));
    for step in 1..=opts.steps {
        evaluations += optimizer.step(&mut x, &mut cost, &mut g, |p| transfer.cost(p))?;
        if !cost.total.is_finite() || g.iter().any(|v| !v.is_finite()) {
            return Err(StyleError::NonFinite { step });
        }
        history.push((evaluations, cost.clone()));
        if let Some(bar) = &bar {
            bar.set_position(step as u64);
            bar.set_message(format!("cost {:.4e}", cost.total));
        }
        if opts.every > 0 && step % opts.every == 0 && step < opts.steps {
            write_png(&opts.out.join(format!("step_{step:04}.png")), &x, shape)?;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    write_png(&opts.out.join("generated.png"), &x, shape)?;
    if let Some(path) = &opts.output {
        write_png(path, &x, shape)?;
    }
    write_costs(&opts.out, &history)?;
    Ok(Outcome { history, seconds, image: x })
}

fn write_costs(out: &Path, history: &[(usize, Cost)]) -> Result<(), StyleError> {
    let mut csv = String::from("step,evaluations,total,content,style,total_variation\n");
    for (step, (evals, c)) in history.iter().enumerate() {
        csv.push_str(&format!("{step},{evals},{},{},{},{}\n", c.total, c.content, c.style, c.total_variation));
    }
    let path = out.join("costs.csv");
    crate::atomic::write(&path, csv.as_bytes())
        .map_err(|e| StyleError::Input(format!("cannot write `{}`: {e}", path.display())))?;
    let totals: Vec<f64> = history.iter().map(|(_, c)| c.total).collect();
    crate::plot::costs(&out.join("costs.png"), &totals).map_err(StyleError::Internal)
}
