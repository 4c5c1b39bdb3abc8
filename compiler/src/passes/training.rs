//! The training graph: a model's forward graph in training mode, its `train` section's losses
//! (with a `label` input for the targets), and the backward graph that autodiff appends.

use super::autodiff::{self, Gradients};
use super::training_mode::{self, BatchStats};
use super::{dce, PassError, Pipeline};
use crate::elaborate::ModelInfo;
use crate::ir::op::{DetectLoss, InputOp, LossKind, LossOp, Op, TripletLoss};
use crate::ir::{Graph, Node, NodeId, ValueId};
use crate::shape::Shape;
use crate::source::Loc;
use crate::train::{Arg, FnCall, TrainSpec};

/// A model ready to train.
#[derive(Clone, Debug)]
pub struct TrainingGraph {
    /// Forward, loss and backward nodes.
    pub graph: Graph,
    /// The model inputs fed with examples: one, or the inputs a pair or triplet fills, in order.
    pub inputs: Vec<NodeId>,
    /// The first input that receives the data's labels as they are (class indices or values).
    pub label: Option<NodeId>,
    /// Every input that receives targets, and what each is made from.
    pub targets: Vec<Target>,
    /// Loss nodes, one per term, with their weights.
    pub losses: Vec<(NodeId, f32)>,
    /// The model output the first loss applies to.
    pub prediction: NodeId,
    /// What the first loss is (accuracy is meaningful for class-index targets).
    pub first_loss: LossKind,
    /// Where each trainable parameter's gradient is.
    pub grads: Gradients,
    /// Each batchnorm's batch statistics and the running averages they update.
    pub stats: Vec<BatchStats>,
}

/// An input of the training graph that receives targets.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// The input node (`label`, `label2`, … or `boxes1`, …).
    pub node: NodeId,
    /// What the runtime feeds it.
    pub from: TargetSource,
}

/// What a target input is made from.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetSource {
    /// The data's labels, one per example, in the input's shape: class indices for
    /// `softmax_cross_entropy`, values for `l2` and `sigmoid_cross_entropy`.
    Labels,
    /// The data's boxes encoded onto the grid of a detection loss (`yolo`, `localization`).
    Boxes(BoxGrid),
}

/// The geometry a detection loss's target is encoded for.
#[derive(Clone, Debug, PartialEq)]
pub struct BoxGrid {
    /// Grid rows and columns (1 × 1 for `localization`).
    pub rows: usize,
    pub cols: usize,
    /// Anchors `(width, height)` in cells.
    pub anchors: Vec<[f32; 2]>,
    /// Classes the loss scores.
    pub classes: usize,
}

impl TrainingGraph {
    /// The values a training step's caller reads: the losses, the prediction, and each
    /// batchnorm's batch statistics (for the running averages).
    pub fn results(&self) -> Vec<ValueId> {
        let mut keep: Vec<ValueId> = self.losses.iter().map(|(l, _)| ValueId::from(*l)).collect();
        keep.push(self.prediction.into());
        keep.extend(self.stats.iter().flat_map(|s| [s.mean, s.var]));
        keep
    }
}

/// Why a train section cannot be turned into a training graph.
#[derive(Clone, Debug, PartialEq)]
pub enum PlanError {
    /// A loss the runtime does not implement yet.
    UnsupportedLoss { name: String, loc: Loc },
    /// The section has no loss.
    NoLoss { loc: Loc },
    /// The model has several inputs and the section does not say what they receive, or names
    /// one that is not an input.
    Inputs { model: String, count: usize },
    /// A pass failed or was misused.
    Pass(PassError),
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::UnsupportedLoss { name, .. } => write!(
                f,
                "the `{name}` loss is checked but `cnnc run` cannot train with it yet (supported: softmax_cross_entropy, sigmoid_cross_entropy, l2, triplet, triplet_mining, yolo, localization)"
            ),
            PlanError::NoLoss { .. } => write!(f, "the train section has no loss"),
            PlanError::Inputs { model, count } => {
                write!(f, "`{model}` has {count} inputs: say what each receives with `inputs pairs(..)` or `inputs triplets(..)`")
            }
            PlanError::Pass(e) => write!(f, "{e}"),
        }
    }
}

impl From<PassError> for PlanError {
    fn from(e: PassError) -> Self {
        PlanError::Pass(e)
    }
}

/// Builds the training graph of `model` under `spec` through `pipe`, differentiating with
/// respect to the model inputs too when `wrt_inputs`.
pub fn run(
    model: &ModelInfo,
    spec: &TrainSpec,
    wrt_inputs: bool,
    pipe: &mut Pipeline,
) -> Result<TrainingGraph, PlanError> {
    let mut graph = model.graph.clone();
    let inputs: Vec<NodeId> = match &spec.inputs {
        Some(feed) => feed
            .inputs
            .iter()
            .map(|name| graph.inputs().iter().copied().find(|&i| graph.node(i).name == *name))
            .collect::<Option<_>>()
            .ok_or_else(|| PlanError::Inputs { model: model.name.clone(), count: graph.inputs().len() })?,
        None if graph.inputs().len() == 1 => graph.inputs().to_vec(),
        None => return Err(PlanError::Inputs { model: model.name.clone(), count: graph.inputs().len() }),
    };
    let stats = pipe.run("training_mode", &mut graph, training_mode::run)?.unwrap_or_default();
    let (targets, losses) = match pipe.run("losses", &mut graph, |g| add_losses(g, model, spec))? {
        Some(result) => result?,
        None => return Err(PlanError::NoLoss { loc: spec.loc }),
    };
    let (first, _) = losses[0];
    let first_loss = match graph.node(first).op {
        Op::Loss(l) => l.kind,
        _ => LossKind::L2,
    };
    let prediction = graph.operands(first)[0];
    let constants: Vec<NodeId> = targets.iter().map(|t| t.node).collect();
    let label = targets.iter().find(|t| t.from == TargetSource::Labels).map(|t| t.node);
    let loss_ids: Vec<NodeId> = losses.iter().map(|(l, _)| *l).collect();
    let grads =
        pipe.run("autodiff", &mut graph, |g| autodiff::run(g, &loss_ids, wrt_inputs, &constants))?.unwrap_or_default();
    let mut roots = loss_ids.clone();
    roots.extend(grads.params.iter().chain(&grads.inputs).map(|(_, g)| g.node));
    roots.extend(stats.iter().map(|s| s.node));
    roots.push(prediction);
    pipe.run("dce", &mut graph, |g| dce::run(g, &roots))?;
    pipe.finish(&graph)?;
    Ok(TrainingGraph { graph, inputs, label, targets, losses, prediction, first_loss, grads, stats })
}

type Losses = (Vec<Target>, Vec<(NodeId, f32)>);

/// The grid of a detection loss (`yolo` or `localization`) on an output of shape `pred`: its
/// rows and columns (1 × 1 for a vector), its anchors (one the size of the image without an
/// `anchors:` argument) and classes.
pub fn box_grid(model: &ModelInfo, call: &FnCall, pred: &Shape) -> BoxGrid {
    let classes = call.num("classes", 0.0).max(0.0) as usize;
    let anchors: Vec<[f32; 2]> = match call.args.get("anchors") {
        Some(Arg::Name(a)) => model
            .anchors
            .iter()
            .find(|(n, _, _)| n == a)
            .map(|(_, v, _)| v.iter().map(|p| [p[0] as f32, p[1] as f32]).collect())
            .unwrap_or_default(),
        _ => vec![[1.0, 1.0]],
    };
    let (rows, cols) = match pred.0.as_slice() {
        [rows, cols, _] => (*rows, *cols),
        _ => (1, 1),
    };
    BoxGrid { rows, cols, anchors, classes }
}

/// The first detection loss of `spec`, the output it reads and its grid.
pub fn detector(model: &ModelInfo, spec: &TrainSpec) -> Option<(String, BoxGrid)> {
    spec.loss.iter().find_map(|term| {
        if !matches!(term.call.name.as_str(), "yolo" | "localization") {
            return None;
        }
        let Some(Arg::Name(output)) = term.call.args.get("output") else { return None };
        let (_, id) = model.graph.outputs().iter().find(|(n, _)| n == output)?;
        Some((output.clone(), box_grid(model, &term.call, &model.graph.node(*id).shape)))
    })
}

/// Adds a loss node per term of `spec`, and the inputs they compare against: one per shape for
/// the data's labels (so a loss on class indices and one on values mix), one per detection loss.
fn add_losses(graph: &mut Graph, model: &ModelInfo, spec: &TrainSpec) -> Result<Losses, PlanError> {
    let mut targets: Vec<Target> = Vec::new();
    let mut losses = Vec::new();
    for term in &spec.loss {
        let call = &term.call;
        let output = call.name_arg(&["logits", "output", "embedding", "anchor"]);
        let find = |graph: &Graph, o: &str| graph.outputs().iter().find(|(n, _)| *n == o).map(|(_, id)| *id);
        let Some(mut pred) = output.and_then(|o| find(graph, &o)) else {
            continue;
        };
        if call.name == "triplet" {
            // The three embeddings side by side, [a | p | n], which the loss splits.
            let mut parts = vec![pred];
            for k in ["positive", "negative"] {
                let Some(Arg::Name(o)) = call.args.get(k) else { continue };
                parts.extend(find(graph, o));
            }
            let shape = graph.node(pred).shape.clone();
            let joined = Shape(vec![shape.elements().unwrap_or(0) * parts.len()]);
            let name = format!("triplet{}", losses.len() + 1);
            pred = graph.add(Node::new(Op::Concat, name, call.loc, joined), &parts);
        }
        let pred_shape = graph.node(pred).shape.clone();
        let (kind, target) = match call.name.as_str() {
            "yolo" | "localization" => {
                let grid = box_grid(model, call, &pred_shape);
                let detect = DetectLoss {
                    anchors: grid.anchors.len() as u32,
                    coord: call.num("coord", 5.0) as f32,
                    noobj: call.num("noobj", 0.5) as f32,
                };
                let op = Op::Input(InputOp { name: format!("boxes{}", losses.len() + 1) });
                let name = format!("boxes{}", losses.len() + 1);
                let node = graph.add(Node::new(op, name, spec.loc, pred_shape.clone()), &[]);
                targets.push(Target { node, from: TargetSource::Boxes(grid) });
                (LossKind::Detect(detect), node)
            }
            name => {
                let kind = match name {
                    "triplet" => LossKind::GivenTriplet { margin: call.num("margin", 0.2) as f32 },
                    "triplet_mining" => LossKind::Triplet(TripletLoss {
                        margin: call.num("margin", 0.2) as f32,
                        semi_hard: matches!(call.args.get("mining"), Some(Arg::Str(m)) if m == "semi_hard"),
                    }),
                    name => LossKind::from_name(name)
                        .ok_or_else(|| PlanError::UnsupportedLoss { name: name.to_string(), loc: call.loc })?,
                };
                let class = kind == LossKind::SoftmaxCrossEntropy || kind.embeds();
                let shape = if class { Shape(vec![]) } else { pred_shape };
                let existing = targets
                    .iter()
                    .find(|t| t.from == TargetSource::Labels && graph.node(t.node).shape == shape)
                    .map(|t| t.node);
                let node = match existing {
                    Some(node) => node,
                    None => {
                        let count = targets.iter().filter(|t| t.from == TargetSource::Labels).count();
                        let name = if count == 0 { "label".to_string() } else { format!("label{}", count + 1) };
                        let op = Op::Input(InputOp { name: name.clone() });
                        let node = graph.add(Node::new(op, name, spec.loc, shape), &[]);
                        targets.push(Target { node, from: TargetSource::Labels });
                        node
                    }
                };
                (kind, node)
            }
        };
        let weight = term.weight as f32;
        let op = Op::Loss(LossOp { kind, weight });
        let name = format!("loss{}", losses.len() + 1);
        losses.push((graph.add(Node::new(op, name, call.loc, Shape(vec![])), &[pred, target]), weight));
    }
    if losses.is_empty() {
        return Err(PlanError::NoLoss { loc: spec.loc });
    }
    Ok((targets, losses))
}
