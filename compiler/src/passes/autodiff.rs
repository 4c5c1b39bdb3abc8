//! Reverse-mode autodiff: appends to the graph, for every loss, the backward nodes that compute
//! the gradient of the total loss with respect to every trainable parameter (and, when asked,
//! every model input). Frozen parameters and batchnorm statistics get none.

use crate::ir::op::{BackwardOp, Op, ParamOp};
use crate::ir::{Graph, Node, NodeId};
use std::collections::{HashMap, HashSet};

/// Where the gradients are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gradients {
    /// `(parameter, its gradient)` for every trainable parameter that the losses depend on.
    pub params: Vec<(NodeId, NodeId)>,
    /// `(model input, its gradient)` when inputs were asked for.
    pub inputs: Vec<(NodeId, NodeId)>,
}

/// Appends the backward graph of `losses` (loss nodes of `graph`); `wrt_inputs` also
/// differentiates with respect to the model inputs (style transfer optimizes its input image).
/// Inputs listed in `constants` (such as labels) are never differentiated.
pub fn run(graph: &mut Graph, losses: &[NodeId], wrt_inputs: bool, constants: &[NodeId]) -> Gradients {
    let Some(order) = graph.topo_order() else { return Gradients::default() };
    let needs = needs_gradient(graph, &order, wrt_inputs, constants);
    let mut contributions: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    let mut grads = Gradients::default();
    let loss_set: HashSet<NodeId> = losses.iter().copied().collect();
    for &id in order.iter().rev() {
        let node = graph.node(id).clone();
        let operands = graph.operands(id);
        let dy = if loss_set.contains(&id) {
            None
        } else {
            let Some(parts) = contributions.remove(&id) else { continue };
            Some(sum(graph, &node, parts))
        };
        match (&node.op, dy) {
            (Op::Param(_), Some(dy)) => grads.params.push((id, dy)),
            (Op::Input(_), Some(dy)) => grads.inputs.push((id, dy)),
            _ => {}
        }
        if matches!(node.op, Op::Input(_) | Op::Param(_)) {
            continue;
        }
        for (wrt, &operand) in operands.iter().enumerate() {
            if !needs.contains(&operand) {
                continue;
            }
            let op = Op::Backward(BackwardOp { of: Box::new(node.op.clone()), wrt, arity: operands.len() });
            let mut inputs = operands.clone();
            inputs.push(id);
            inputs.extend(dy);
            let shape = graph.node(operand).shape.clone();
            let grad = graph.add(Node { op, name: format!("{}.d{wrt}", node.name), loc: node.loc, shape }, &inputs);
            contributions.entry(operand).or_default().push(grad);
        }
    }
    grads.params.sort_unstable();
    grads.inputs.sort_unstable();
    grads
}

/// Nodes whose gradient is needed: trainable parameters, inputs if asked, and everything computed
/// from them.
fn needs_gradient(graph: &Graph, order: &[NodeId], wrt_inputs: bool, constants: &[NodeId]) -> HashSet<NodeId> {
    let mut needs = HashSet::new();
    for &id in order {
        let wanted = match &graph.node(id).op {
            Op::Param(ParamOp { frozen, role, .. }) => !frozen && !role.is_state(),
            Op::Input(_) => wrt_inputs && !constants.contains(&id),
            _ => graph.operands(id).iter().any(|o| needs.contains(o)),
        };
        if wanted {
            needs.insert(id);
        }
    }
    needs
}

/// The sum of gradient contributions, as one node.
fn sum(graph: &mut Graph, node: &Node, parts: Vec<NodeId>) -> NodeId {
    if parts.len() == 1 {
        return parts[0];
    }
    let shape = node.shape.clone();
    graph.add(Node { op: Op::Add, name: format!("{}.grad", node.name), loc: node.loc, shape }, &parts)
}
