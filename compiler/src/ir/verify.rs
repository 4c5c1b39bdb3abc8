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

/// Checks the invariants of `graph`.
pub fn verify(graph: &Graph) -> Result<(), VerifyError> {
    let order = graph
        .topo_order()
        .ok_or_else(|| VerifyError { node: graph.name.clone(), problem: "the graph has a cycle".into() })?;
    for id in order {
        let node = graph.node(id);
        let operands = graph.operands(id);
        let fail = |problem: String| VerifyError { node: node.name.clone(), problem };
        let arity_ok = match &node.op {
            Op::Input(_) | Op::Param(_) => operands.is_empty(),
            Op::Conv(_) | Op::Dense(_) => operands.len() == 2 || operands.len() == 3,
            Op::BatchNorm(_) => operands.len() == 5,
            Op::PRelu => operands.len() == 2,
            Op::Add => operands.len() >= 2,
            Op::Concat => !operands.is_empty(),
            Op::Loss(_) => operands.len() == 2,
            Op::Backward(b) => operands.len() == b.arity + if matches!(*b.of, Op::Loss(_)) { 1 } else { 2 },
            _ => operands.len() == 1,
        };
        if !arity_ok {
            return Err(fail(format!("{} has {} operands", node.op.mnemonic(), operands.len())));
        }
        if let Some(&weights) = operands.get(1) {
            let param_ports = !matches!(node.op, Op::Add | Op::Concat | Op::Loss(_) | Op::Backward(_));
            if param_ports && operands[1..].iter().any(|&p| !matches!(graph.node(p).op, Op::Param(_))) {
                return Err(fail(format!(
                    "operand `{}` in a parameter port is not a parameter",
                    graph.node(weights).name
                )));
            }
        }
        if matches!(node.op, Op::Input(_) | Op::Param(_)) {
            continue;
        }
        let shapes: Vec<&shape::Shape> = operands.iter().map(|&o| &graph.node(o).shape).collect();
        match shape::infer(&node.op, &shapes) {
            Ok(inferred) if inferred.shape == node.shape => {}
            Ok(inferred) => {
                return Err(fail(format!("stored shape {} but the rule gives {}", node.shape, inferred.shape)))
            }
            Err(e) => return Err(fail(format!("shape rule rejects the operands: {e:?}"))),
        }
    }
    Ok(())
}
