//! `inference_mode`: batchnorm normalizes with its running statistics, and dropout, the identity
//! at inference, is removed (its readers read its input).

use crate::ir::op::Op;
use crate::ir::Graph;

/// Puts every batchnorm in inference mode and removes every dropout.
pub fn run(graph: &mut Graph) {
    let ids: Vec<_> = graph.node_ids().collect();
    for id in ids {
        match &graph.node(id).op {
            Op::Dropout(_) => {
                let x = graph.inputs_of(id)[0];
                graph.replace_all_uses(id.into(), x);
                graph.remove(id);
            }
            Op::BatchNorm(b) if b.training => {
                let mut b = b.clone();
                b.training = false;
                graph.node_mut(id).op = Op::BatchNorm(b);
                graph.node_mut(id).extra.clear();
            }
            _ => {}
        }
    }
}
