//! The training graph: a model's forward graph in training mode, its `train` section's losses
//! (with a `label` input for the targets), and the backward graph that autodiff appends.

use super::autodiff::{self, Gradients};
use super::training_mode::{self, BatchStats};
use super::{dce, PassError, Pipeline};
use crate::elaborate::ModelInfo;
use crate::ir::op::{InputOp, LossKind, LossOp, Op};
use crate::ir::{Graph, Node, NodeId, ValueId};
use crate::shape::Shape;
use crate::source::Loc;
use crate::train::{Arg, TrainSpec};

/// A model ready to train.
#[derive(Clone, Debug)]
pub struct TrainingGraph {
    /// Forward, loss and backward nodes.
    pub graph: Graph,
    /// The model input fed with examples.
    pub input: NodeId,
    /// The input that receives the targets.
    pub label: Option<NodeId>,
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
    /// The model does not have exactly one input.
    Inputs { model: String, count: usize },
    /// A pass failed or was misused.
    Pass(PassError),
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::UnsupportedLoss { name, .. } => write!(
                f,
                "the `{name}` loss is checked but `cnnc run` cannot train with it yet (supported: softmax_cross_entropy, sigmoid_cross_entropy, l2)"
            ),
            PlanError::NoLoss { .. } => write!(f, "the train section has no loss"),
            PlanError::Inputs { model, count } => {
                write!(f, "`cnnc run` feeds models with one input; `{model}` has {count}")
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
    let &[input] = graph.inputs() else {
        return Err(PlanError::Inputs { model: model.name.clone(), count: graph.inputs().len() });
    };
    let stats = pipe.run("training_mode", &mut graph, training_mode::run)?.unwrap_or_default();
    let (label, losses) = match pipe.run("losses", &mut graph, |g| add_losses(g, spec))? {
        Some(result) => result?,
        None => return Err(PlanError::NoLoss { loc: spec.loc }),
    };
    let (first, _) = losses[0];
    let first_loss = match graph.node(first).op {
        Op::Loss(l) => l.kind,
        _ => LossKind::L2,
    };
    let prediction = graph.operands(first)[0];
    let constants: Vec<NodeId> = label.into_iter().collect();
    let loss_ids: Vec<NodeId> = losses.iter().map(|(l, _)| *l).collect();
    let grads =
        pipe.run("autodiff", &mut graph, |g| autodiff::run(g, &loss_ids, wrt_inputs, &constants))?.unwrap_or_default();
    let mut roots = loss_ids.clone();
    roots.extend(grads.params.iter().chain(&grads.inputs).map(|(_, g)| g.node));
    roots.extend(stats.iter().map(|s| s.node));
    roots.push(prediction);
    pipe.run("dce", &mut graph, |g| dce::run(g, &roots))?;
    pipe.finish(&graph)?;
    Ok(TrainingGraph { graph, input, label, losses, prediction, first_loss, grads, stats })
}

type Losses = (Option<NodeId>, Vec<(NodeId, f32)>);

/// Adds a loss node per term of `spec`, and the `label` input they compare against.
fn add_losses(graph: &mut Graph, spec: &TrainSpec) -> Result<Losses, PlanError> {
    let mut label = None;
    let mut losses = Vec::new();
    for term in &spec.loss {
        let Some(kind) = LossKind::from_name(&term.call.name) else {
            return Err(PlanError::UnsupportedLoss { name: term.call.name.clone(), loc: term.call.loc });
        };
        let output = ["logits", "output"].iter().find_map(|k| match term.call.args.get(*k) {
            Some(Arg::Name(n)) => Some(n.clone()),
            _ => None,
        });
        let Some(pred) = output.and_then(|o| graph.outputs().iter().find(|(n, _)| *n == o).map(|(_, id)| *id)) else {
            continue;
        };
        let pred_shape = graph.node(pred).shape.clone();
        let label_shape = if kind == LossKind::SoftmaxCrossEntropy { Shape(vec![]) } else { pred_shape };
        let label_id = *label.get_or_insert_with(|| {
            let op = Op::Input(InputOp { name: "label".into() });
            graph.add(Node::new(op, "label", spec.loc, label_shape), &[])
        });
        let weight = term.weight as f32;
        let op = Op::Loss(LossOp { kind, weight });
        let name = format!("loss{}", losses.len() + 1);
        losses.push((graph.add(Node::new(op, name, term.call.loc, Shape(vec![])), &[pred, label_id]), weight));
    }
    if losses.is_empty() {
        return Err(PlanError::NoLoss { loc: spec.loc });
    }
    Ok((label, losses))
}
