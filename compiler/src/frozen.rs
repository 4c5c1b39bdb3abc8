//! A model's frozen body and trainable head, for training with the body's activations cached
//! (the train section's `cache true`): the body is what the input goes through by frozen or
//! constant parameters alone, deterministically (no dropout; batchnorm with frozen scale and
//! shift normalizes with its running statistics, as in inference); the head is the rest, fed by
//! the one value where the body ends. The body runs once per example; every epoch trains the
//! head alone on what it gave.

use crate::ir::op::{InputOp, Op};
use crate::ir::{Graph, Node, NodeId};
use crate::shape::Shape;
use std::collections::{HashMap, HashSet};

/// A model graph cut where its frozen body ends.
#[derive(Clone, Debug)]
pub struct Split {
    /// The model's graph with one output, `features`: the cut value.
    pub body: Graph,
    /// The rest, whose one input is the cut value (named as the node that computes it).
    pub head: Graph,
    /// The cut value's node name.
    pub cut: String,
    /// Its shape (one example).
    pub shape: Shape,
}

/// Cuts `graph` where its frozen body ends, or says why it cannot be cut.
pub fn split(graph: &Graph) -> Result<Split, String> {
    let order = graph.topo_order().ok_or("the graph has a cycle")?;
    let mut frozen: HashSet<NodeId> = HashSet::new();
    for &id in &order {
        let node = graph.node(id);
        let is_frozen = match &node.op {
            Op::Input(_) => true,
            Op::Param(p) => p.fixed() || p.role.is_state(),
            Op::Dropout(_) => false,
            _ => graph.operands(id).iter().all(|o| frozen.contains(o)),
        };
        if is_frozen {
            frozen.insert(id);
        }
    }
    let outputs: HashSet<NodeId> = graph.outputs().iter().map(|(_, id)| *id).collect();
    let cuts: Vec<NodeId> = order
        .iter()
        .copied()
        .filter(|id| frozen.contains(id) && !matches!(graph.node(*id).op, Op::Param(_)))
        .filter(|id| outputs.contains(id) || graph.users(*id).iter().any(|u| !frozen.contains(u)))
        .collect();
    let name = |id: NodeId| format!("`{}`", graph.node(id).name);
    let cut = match cuts[..] {
        [only] if matches!(graph.node(only).op, Op::Input(_)) => {
            return Err(
                "nothing between the input and the first trainable layer is frozen: there is no body to cache".into()
            )
        }
        [only] if outputs.contains(&only) => {
            return Err(format!("the output {} is computed by the frozen body alone: nothing would train", name(only)))
        }
        [only] => only,
        [] => return Err("the model has no trainable layer after its frozen body".into()),
        _ => {
            let names: Vec<String> = cuts.iter().map(|&c| name(c)).collect();
            return Err(format!(
                "the trainable layers read the frozen part at {} places ({}): caching needs one value where the frozen body ends",
                cuts.len(),
                names.join(", ")
            ));
        }
    };
    let cut_node = graph.node(cut);
    let mut head = Graph::new(graph.name.clone());
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    let input = Node::new(
        Op::Input(InputOp { name: cut_node.name.clone() }),
        cut_node.name.clone(),
        cut_node.loc,
        cut_node.shape.clone(),
    );
    map.insert(cut, head.add(input, &[]));
    for &id in &order {
        if frozen.contains(&id) || matches!(graph.node(id).op, Op::Param(_)) {
            continue;
        }
        let mut inputs = Vec::new();
        for v in graph.inputs_of(id) {
            let from = match map.get(&v.node) {
                Some(&n) => n,
                None if matches!(graph.node(v.node).op, Op::Param(_)) => {
                    let n = head.add(graph.node(v.node).clone(), &[]);
                    map.insert(v.node, n);
                    n
                }
                None => return Err(format!("{} reads {} of the frozen body", name(id), name(v.node))),
            };
            inputs.push(crate::ir::ValueId { node: from, result: v.result });
        }
        let n = head.add_values(graph.node(id).clone(), &inputs);
        map.insert(id, n);
    }
    for (output, id) in graph.outputs() {
        let Some(&n) = map.get(id) else {
            return Err(format!("the output `{output}` is computed by the frozen body alone: nothing would train"));
        };
        head.add_output(output.clone(), n);
    }
    let mut body = graph.clone();
    body.set_outputs(vec![("features".to_string(), cut)]);
    for &id in order.iter().rev() {
        // The head's layers, and the frozen values only the head reads.
        if !frozen.contains(&id) || (id != cut && body.users(id).is_empty()) {
            body.remove(id);
        }
    }
    Ok(Split { body, head, cut: cut_node.name.clone(), shape: cut_node.shape.clone() })
}
