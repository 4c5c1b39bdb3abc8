//! `dce`: removes the nodes that nothing kept needs: what the graph's outputs, the given roots
//! (losses, gradients, statistics) and parameters do not depend on. Parameters always stay, since
//! they are the model's state whatever reads them.

use crate::ir::op::Op;
use crate::ir::{Graph, NodeId};
use std::collections::HashSet;

/// Removes every node that neither an output nor `roots` depends on; returns how many.
pub fn run(graph: &mut Graph, roots: &[NodeId]) -> usize {
    let mut live: HashSet<NodeId> = HashSet::new();
    let mut stack: Vec<NodeId> = roots.to_vec();
    stack.extend(graph.outputs().iter().map(|(_, id)| *id));
    stack.extend(graph.inputs().iter().copied());
    while let Some(id) = stack.pop() {
        if live.insert(id) {
            stack.extend(graph.operands(id));
        }
    }
    let dead: Vec<NodeId> =
        graph.node_ids().filter(|id| !live.contains(id) && !matches!(graph.node(*id).op, Op::Param(_))).collect();
    for &id in &dead {
        graph.remove(id);
    }
    dead.len()
}
