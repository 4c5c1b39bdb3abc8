//! The graph IR: a newtype over petgraph's `StableGraph`. A node is an op with its attributes, a
//! name that keeps its block path (`resnet50/stage2/block1/conv2`), the span it came from and its
//! inferred shape. Edges carry input ports.

pub mod op;
mod print;
mod verify;

pub use op::Op;
pub use verify::{verify, VerifyError};

use crate::shape::Shape;
use crate::source::Loc;
use petgraph::stable_graph::StableGraph;
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::BinaryHeap;

/// A node's id.
pub type NodeId = petgraph::stable_graph::NodeIndex<u32>;

/// One operation in the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// What it computes.
    pub op: Op,
    /// Its block path, unique in the graph for layers and parameters.
    pub name: String,
    /// Where in the source it came from.
    pub loc: Loc,
    /// The shape of its output (batch axis excluded).
    pub shape: Shape,
}

/// A model as a graph of ops.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// The model's name.
    pub name: String,
    graph: StableGraph<Node, u32>,
    inputs: Vec<NodeId>,
    outputs: Vec<(String, NodeId)>,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Self {
        Graph { name: name.into(), ..Graph::default() }
    }

    /// Adds a node fed by `inputs` (in port order) and returns its id.
    pub fn add(&mut self, node: Node, inputs: &[NodeId]) -> NodeId {
        let is_input = matches!(node.op, Op::Input(_));
        let id = self.graph.add_node(node);
        for (port, &src) in inputs.iter().enumerate() {
            self.graph.add_edge(src, id, port as u32);
        }
        if is_input {
            self.inputs.push(id);
        }
        id
    }

    /// Declares a named output.
    pub fn add_output(&mut self, name: impl Into<String>, id: NodeId) {
        self.outputs.push((name.into(), id));
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.graph[id]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    /// Whether the graph has no node.
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// Model inputs in declaration order.
    pub fn inputs(&self) -> &[NodeId] {
        &self.inputs
    }

    /// Named outputs in declaration order.
    pub fn outputs(&self) -> &[(String, NodeId)] {
        &self.outputs
    }

    /// The nodes feeding `id`, in port order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(u32, NodeId)> =
            self.graph.edges_directed(id, Direction::Incoming).map(|e| (*e.weight(), e.source())).collect();
        edges.sort_unstable();
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// The nodes that read `id`, in id order.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut users: Vec<NodeId> = self.graph.neighbors_directed(id, Direction::Outgoing).collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    /// Every node id in insertion order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.graph.node_indices()
    }

    /// A topological order, deterministic: among ready nodes the earliest inserted goes first.
    /// `None` if the graph has a cycle.
    pub fn topo_order(&self) -> Option<Vec<NodeId>> {
        let mut indegree: std::collections::HashMap<NodeId, usize> =
            self.graph.node_indices().map(|n| (n, self.graph.edges_directed(n, Direction::Incoming).count())).collect();
        let mut ready: BinaryHeap<std::cmp::Reverse<NodeId>> =
            indegree.iter().filter(|(_, &d)| d == 0).map(|(&n, _)| std::cmp::Reverse(n)).collect();
        let mut order = Vec::with_capacity(self.len());
        while let Some(std::cmp::Reverse(n)) = ready.pop() {
            order.push(n);
            for e in self.graph.edges_directed(n, Direction::Outgoing) {
                let d = indegree.get_mut(&e.target())?;
                *d -= 1;
                if *d == 0 {
                    ready.push(std::cmp::Reverse(e.target()));
                }
            }
        }
        (order.len() == self.len()).then_some(order)
    }

    /// The IR as deterministic text, nodes renumbered in topological order.
    pub fn to_text(&self) -> String {
        print::print(self)
    }
}
