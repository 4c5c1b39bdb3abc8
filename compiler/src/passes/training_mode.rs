//! `training_mode`: every batchnorm normalizes with its batch's statistics and gives them as
//! results 1 and 2 (mean, biased variance), which its backward and the running averages read.
//! It no longer reads the running statistics; [`BatchStats`] says where they are updated from.
//! A frozen batchnorm (its scale and shift frozen: part of a frozen body) stays as it is in
//! inference, on its running statistics, which are not updated (as Keras does for a layer that
//! is not trainable).

use crate::ir::op::Op;
use crate::ir::{Graph, NodeId, ValueId};

/// One batchnorm's running statistics and the batch statistics that update them.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats {
    /// The batchnorm node (training mode).
    pub node: NodeId,
    /// The batch's mean (result 1) and biased variance (result 2).
    pub mean: ValueId,
    /// See `mean`.
    pub var: ValueId,
    /// The running-mean and running-variance parameters.
    pub running_mean: NodeId,
    /// See `running_mean`.
    pub running_var: NodeId,
    /// Weight of the batch statistics in the running averages.
    pub momentum: f32,
}

/// Switches every inference-mode batchnorm to training mode; returns their statistics.
pub fn run(graph: &mut Graph) -> Vec<BatchStats> {
    let ids: Vec<_> = graph.node_ids().collect();
    let mut stats = Vec::new();
    for id in ids {
        let Op::BatchNorm(b) = &graph.node(id).op else { continue };
        if b.training {
            continue;
        }
        let gamma = graph.operands(id).get(1).copied();
        if gamma.is_some_and(|g| matches!(&graph.node(g).op, Op::Param(p) if p.fixed())) {
            continue;
        }
        let mut b = b.clone();
        b.training = true;
        let momentum = b.momentum;
        let inputs = graph.inputs_of(id);
        let (name, loc) = (graph.node(id).name.clone(), graph.node(id).loc);
        let Ok(new) = graph.build(Op::BatchNorm(b), name, loc, &inputs[..3]) else { continue };
        graph.replace_all_uses(id.into(), new.into());
        graph.remove(id);
        stats.push(BatchStats {
            node: new,
            mean: ValueId { node: new, result: 1 },
            var: ValueId { node: new, result: 2 },
            running_mean: inputs[3].node,
            running_var: inputs[4].node,
            momentum,
        });
    }
    stats
}
