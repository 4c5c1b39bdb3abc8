//! The reference executor: runs a graph on a batch, node by node in topological order, with the
//! reference ops. Every value is kept, so callers can read any node (losses, gradients, outputs).

use crate::params::Params;
use crate::reference::{self, Ctx, Tensor};
use cnnc_compiler::ir::op::Op;
use cnnc_compiler::ir::{Graph, NodeId};
use std::collections::HashMap;

/// Why a graph could not run.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecError {
    /// An input was not fed.
    MissingInput { name: String },
    /// A parameter has no value (weights file and model disagree).
    MissingParam { name: String },
    /// A fed tensor or parameter has the wrong shape.
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecError::MissingInput { name } => write!(f, "input `{name}` was not given"),
            ExecError::MissingParam { name } => write!(f, "parameter `{name}` has no value"),
            ExecError::Shape { name, expected, found } => {
                write!(f, "`{name}` has shape {found:?}, expected {expected:?}")
            }
        }
    }
}

impl std::error::Error for ExecError {}

/// Values of the nodes computed by one run.
#[derive(Debug, Default)]
pub struct Values {
    values: HashMap<NodeId, Tensor>,
}

impl Values {
    /// The value of node `id`.
    pub fn get(&self, id: NodeId) -> Option<&Tensor> {
        self.values.get(&id)
    }
}

/// A graph prepared to run: its evaluation order fixed once.
#[derive(Debug)]
pub struct Executor<'g> {
    graph: &'g Graph,
    order: Vec<NodeId>,
}

impl<'g> Executor<'g> {
    /// Prepares `graph`; only the nodes that `targets` depend on run (all, if `targets` is empty).
    pub fn new(graph: &'g Graph, targets: &[NodeId]) -> Self {
        let order = graph.topo_order().unwrap_or_default();
        let order = if targets.is_empty() {
            order
        } else {
            let mut needed = std::collections::HashSet::new();
            let mut stack = targets.to_vec();
            while let Some(id) = stack.pop() {
                if needed.insert(id) {
                    stack.extend(graph.operands(id));
                }
            }
            order.into_iter().filter(|id| needed.contains(id)).collect()
        };
        Executor { graph, order }
    }

    /// Nodes in the order they run.
    pub fn order(&self) -> &[NodeId] {
        &self.order
    }

    /// Runs on a batch: `feeds` gives each input node its tensor `[n, shape..]`.
    pub fn run(&self, params: &Params, feeds: &[(NodeId, Tensor)], ctx: Ctx) -> Result<Values, ExecError> {
        let mut values: HashMap<NodeId, Tensor> = HashMap::with_capacity(self.order.len());
        for &id in &self.order {
            let node = self.graph.node(id);
            let value = match &node.op {
                Op::Input(_) => {
                    let fed = feeds.iter().find(|(f, _)| *f == id).map(|(_, t)| t.clone());
                    let t = fed.ok_or_else(|| ExecError::MissingInput { name: node.name.clone() })?;
                    if &t.shape()[1..] != node.shape.0.as_slice() {
                        return Err(ExecError::Shape {
                            name: node.name.clone(),
                            expected: node.shape.0.clone(),
                            found: t.shape()[1..].to_vec(),
                        });
                    }
                    t
                }
                Op::Param(_) => {
                    let t =
                        params.get(&node.name).ok_or_else(|| ExecError::MissingParam { name: node.name.clone() })?;
                    if t.shape() != node.shape.0.as_slice() {
                        return Err(ExecError::Shape {
                            name: node.name.clone(),
                            expected: node.shape.0.clone(),
                            found: t.shape().to_vec(),
                        });
                    }
                    t.clone()
                }
                op => {
                    let inputs: Vec<&Tensor> = self.graph.operands(id).iter().map(|o| &values[o]).collect();
                    // A backward node's mask (dropout) is that of the forward node it differentiates.
                    let forward_node = match op {
                        Op::Backward(b) => self.graph.operands(id)[b.arity],
                        _ => id,
                    };
                    reference::forward(op, &inputs, Ctx { node: forward_node.index() as u32, ..ctx })
                }
            };
            values.insert(id, value);
        }
        Ok(Values { values })
    }
}
