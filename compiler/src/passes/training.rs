//! The training graph: a model's forward graph, its `train` section's losses (with a `label`
//! input for the targets), and the backward graph that autodiff appends.

use super::autodiff::{self, Gradients};
use crate::elaborate::ModelInfo;
use crate::ir::op::{InputOp, LossKind, LossOp, Op};
use crate::ir::{Graph, Node, NodeId};
use crate::shape::Shape;
use crate::source::Loc;
use crate::train::{Arg, TrainSpec};

/// A model ready to train.
#[derive(Clone, Debug)]
pub struct TrainingGraph {
    /// Forward, loss and backward nodes.
    pub graph: Graph,
    /// The input that receives the targets.
    pub label: Option<NodeId>,
    /// Loss nodes, one per term.
    pub losses: Vec<NodeId>,
    /// Where each trainable parameter's gradient is.
    pub grads: Gradients,
}

/// Why a train section cannot be turned into a training graph yet.
#[derive(Clone, Debug, PartialEq)]
pub enum PlanError {
    /// A loss the runtime does not implement yet.
    UnsupportedLoss { name: String, loc: Loc },
    /// The section has no loss.
    NoLoss { loc: Loc },
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::UnsupportedLoss { name, .. } => write!(
                f,
                "the `{name}` loss is checked but `cnnc run` cannot train with it yet (supported: softmax_cross_entropy, sigmoid_cross_entropy, l2)"
            ),
            PlanError::NoLoss { .. } => write!(f, "the train section has no loss"),
        }
    }
}

/// Builds the training graph of `model` under `spec`, differentiating with respect to the model
/// inputs too when `wrt_inputs`.
pub fn run(model: &ModelInfo, spec: &TrainSpec, wrt_inputs: bool) -> Result<TrainingGraph, PlanError> {
    let mut graph = model.graph.clone();
    let mut label = None;
    let mut losses = Vec::new();
    for term in &spec.loss {
        let kind = match term.call.name.as_str() {
            "softmax_cross_entropy" => LossKind::SoftmaxCrossEntropy,
            "sigmoid_cross_entropy" => LossKind::SigmoidCrossEntropy,
            "l2" => LossKind::L2,
            other => return Err(PlanError::UnsupportedLoss { name: other.to_string(), loc: term.call.loc }),
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
            graph.add(Node { op, name: "label".into(), loc: spec.loc, shape: label_shape }, &[])
        });
        let op = Op::Loss(LossOp { kind, weight: term.weight as f32 });
        let name = format!("loss{}", losses.len() + 1);
        losses.push(graph.add(Node { op, name, loc: term.call.loc, shape: Shape(vec![]) }, &[pred, label_id]));
    }
    if losses.is_empty() {
        return Err(PlanError::NoLoss { loc: spec.loc });
    }
    let constants: Vec<NodeId> = label.into_iter().collect();
    let grads = autodiff::run(&mut graph, &losses, wrt_inputs, &constants);
    Ok(TrainingGraph { graph, label, losses, grads })
}
