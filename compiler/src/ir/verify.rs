//! The IR verifier: every op has the inputs its variant needs, the graph is acyclic, and every
//! stored shape is what the op's shape rule gives. A failure is a bug in cnnc, never a user error.

use super::{Graph, Op};
use crate::shape;
use std::fmt;

/// What the verifier found wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyError {
    /// The node's name, or the graph's for graph-wide faults.
    pub node: String,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "internal error: IR verifier failed at `{}`: {} (this is a bug in cnnc; please report it)",
            self.node, self.problem
        )
    }
}

impl std::error::Error for VerifyError {}

/// Checks the invariants of `graph`: acyclic; every node's ports fed once each, from results
/// that exist; parameters in parameter ports; each op's arity; and every stored shape (every
/// result's) what the op's rule gives, which for a backward node checks every operand against
/// what it claims to read.
pub fn verify(graph: &Graph) -> Result<(), VerifyError> {
    let order = graph
        .topo_order()
        .ok_or_else(|| VerifyError { node: graph.name.clone(), problem: "the graph has a cycle".into() })?;
    for id in order {
        let node = graph.node(id);
        let inputs = graph.inputs_of(id);
        let fail = |problem: String| VerifyError { node: node.name.clone(), problem };
        if !graph.ports_dense(id) {
            return Err(fail("its input ports are not 0, 1, 2, ... each fed once".into()));
        }
        if let Some(v) = inputs.iter().find(|v| graph.node(v.node).result(v.result).is_none()) {
            return Err(fail(format!(
                "reads result {} of `{}`, which has no such result",
                v.result,
                graph.node(v.node).name
            )));
        }
        let n = inputs.len();
        let arity_ok = node.op.rule().arity(n);
        if !arity_ok {
            return Err(fail(format!("{} has {n} operands", node.op.mnemonic())));
        }
        let param_ports = node.op.rule().param_ports();
        if let Some(v) = inputs.iter().skip(1).find(|v| param_ports && !matches!(graph.node(v.node).op, Op::Param(_))) {
            return Err(fail(format!("operand `{}` in a parameter port is not a parameter", graph.node(v.node).name)));
        }
        if matches!(node.op, Op::Input(_) | Op::Param(_)) {
            continue;
        }
        let shapes: Vec<&shape::Shape> = inputs.iter().map(|&v| graph.shape(v)).collect();
        match shape::infer(&node.op, &shapes) {
            Ok(inferred) if inferred.shape == node.shape && inferred.extra == node.extra => {}
            Ok(inferred) => {
                return Err(fail(format!(
                    "stored shapes {} {:?} but the rule gives {} {:?}",
                    node.shape, node.extra, inferred.shape, inferred.extra
                )))
            }
            Err(e) => return Err(fail(format!("shape rule rejects the operands: {e:?}"))),
        }
    }
    Ok(())
}
