//! Reverse-mode autodiff: appends to the graph, for every loss, the backward nodes that compute
//! the gradient of the total loss with respect to every trainable parameter (and, when asked,
//! every model input). Frozen parameters and batchnorm statistics get none. Each backward node
//! reads only what its rule needs ([`crate::ir::backward`]); identity gradients are aliases.

use crate::ir::op::{BackwardOp, Op, ParamOp, Read, ReshapeOp, SliceOp};
use crate::ir::{Graph, Node, NodeId, ValueId};
use crate::ops::{reads_all, GradRule as Rule};
use std::collections::{HashMap, HashSet};

/// Where the gradients are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gradients {
    /// `(parameter, its gradient)` for every trainable parameter that the losses depend on.
    pub params: Vec<(NodeId, ValueId)>,
    /// `(model input, its gradient)` when inputs were asked for.
    pub inputs: Vec<(NodeId, ValueId)>,
}

/// Appends the backward graph of `losses` (loss nodes of `graph`); `wrt_inputs` also
/// differentiates with respect to the model inputs (style transfer optimizes its input image).
/// Inputs listed in `constants` (such as labels) are never differentiated.
pub fn run(graph: &mut Graph, losses: &[NodeId], wrt_inputs: bool, constants: &[NodeId]) -> Gradients {
    let Some(order) = graph.topo_order() else { return Gradients::default() };
    let needs = needs_gradient(graph, &order, wrt_inputs, constants);
    let mut contributions: HashMap<NodeId, Vec<ValueId>> = HashMap::new();
    let mut grads = Gradients::default();
    let loss_set: HashSet<NodeId> = losses.iter().copied().collect();
    for &id in order.iter().rev() {
        let dy = if loss_set.contains(&id) {
            None
        } else {
            let Some(parts) = contributions.remove(&id) else { continue };
            Some(sum(graph, id, parts))
        };
        let node = graph.node(id).clone();
        match (&node.op, dy) {
            (Op::Param(_), Some(dy)) => grads.params.push((id, dy)),
            (Op::Input(_), Some(dy)) => grads.inputs.push((id, dy)),
            _ => {}
        }
        let inputs = graph.inputs_of(id);
        let wanted: Vec<usize> = (0..inputs.len()).filter(|&i| needs.contains(&inputs[i].node)).collect();
        let mut give = |i: usize, g: ValueId| contributions.entry(inputs[i].node).or_default().push(g);
        let name = |wrt: &str| format!("{}.d{wrt}", node.name);
        match (node.op.rule().grad(), dy) {
            (Rule::Leaf, _) => {}
            (Rule::Alias, Some(dy)) => wanted.iter().for_each(|&i| give(i, dy)),
            (Rule::Reshape, Some(dy)) => {
                for &i in &wanted {
                    let op = Op::Reshape(ReshapeOp { shape: graph.shape(inputs[i]).0.clone() });
                    give(i, add(graph, op, name(&i.to_string()), &node, &[dy]).into());
                }
            }
            (Rule::Slice, Some(dy)) => {
                let widths: Vec<usize> = inputs.iter().map(|&v| graph.shape(v).channels()).collect();
                for &i in &wanted {
                    let op = Op::ChannelSlice(SliceOp { start: widths[..i].iter().sum(), len: widths[i] });
                    give(i, add(graph, op, name(&i.to_string()), &node, &[dy]).into());
                }
            }
            (Rule::PerInput, dy) => {
                for &i in &wanted {
                    let g = differentiate(graph, id, &node, &inputs, &[i], dy, name(&i.to_string()));
                    give(i, g.into());
                }
            }
            (Rule::Grouped, dy) if !wanted.is_empty() => {
                let all: Vec<String> = wanted.iter().map(usize::to_string).collect();
                let g = differentiate(graph, id, &node, &inputs, &wanted, dy, name(&all.join(",")));
                for (k, &i) in wanted.iter().enumerate() {
                    give(i, ValueId { node: g, result: k as u16 });
                }
            }
            // Ops without a gradient seed (no loss below them) contribute nothing.
            (Rule::Alias | Rule::Reshape | Rule::Slice | Rule::Grouped, _) => {}
        }
    }
    grads.params.sort_unstable();
    grads.inputs.sort_unstable();
    grads
}

/// A backward node for the gradients of `node` (id `id`) with respect to inputs `wrt`.
fn differentiate(
    graph: &mut Graph,
    id: NodeId,
    node: &Node,
    inputs: &[ValueId],
    wrt: &[usize],
    dy: Option<ValueId>,
    name: String,
) -> NodeId {
    let reads = reads_all(&node.op, wrt);
    let operands: Vec<ValueId> = reads
        .iter()
        .filter_map(|r| match r {
            Read::Input(i) => inputs.get(*i).copied(),
            Read::Result(r) => Some(ValueId { node: id, result: *r }),
            Read::Grad => dy,
        })
        .collect();
    let shapes = inputs.iter().map(|&v| graph.shape(v).clone()).collect();
    let op = Op::Backward(BackwardOp { of: Box::new(node.op.clone()), wrt: wrt.to_vec(), reads, inputs: shapes });
    add(graph, op, name, node, &operands)
}

/// Adds a gradient node; its shapes come from its rule, which cannot fail on shapes autodiff
/// took from a verified graph (the verifier after this pass re-checks them all).
fn add(graph: &mut Graph, op: Op, name: String, of: &Node, operands: &[ValueId]) -> NodeId {
    let shapes: Vec<&crate::shape::Shape> = operands.iter().map(|&v| graph.shape(v)).collect();
    let (shape, extra) = match crate::shape::infer(&op, &shapes) {
        Ok(i) => (i.shape, i.extra),
        Err(_) => (of.shape.clone(), Vec::new()),
    };
    graph.add_values(Node { op, name, loc: of.loc, shape, extra }, operands)
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

/// The sum of gradient contributions to node `id`'s output, as one value.
fn sum(graph: &mut Graph, id: NodeId, parts: Vec<ValueId>) -> ValueId {
    if parts.len() == 1 {
        return parts[0];
    }
    let node = graph.node(id).clone();
    add(graph, Op::Add, format!("{}.grad", node.name), &node, &parts).into()
}
