//! The graph IR: a newtype over petgraph's `StableGraph`. A node is an op with its attributes, a
//! name that keeps its block path (`resnet50/stage2/block1/conv2`), the span it came from and the
//! inferred shapes of its results (most ops have one; batchnorm in training also gives its batch
//! statistics, its backward gives dx, dγ and dβ). A value is a node's result ([`ValueId`]); an
//! edge carries the input port it feeds and the result it reads.
//!
//! Passes change a graph through a small rewrite API: [`Graph::build`] adds a node whose shapes
//! the op's rule infers, [`Graph::replace_all_uses`] rewires readers, [`Graph::remove`] deletes.

pub mod backward;
pub mod op;
mod print;
mod verify;

pub use op::Op;
pub use verify::{verify, VerifyError};

use crate::shape::{self, Shape, ShapeFault};
use crate::source::Loc;
use petgraph::stable_graph::StableGraph;
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;
use std::collections::BinaryHeap;

/// A node's id.
pub type NodeId = petgraph::stable_graph::NodeIndex<u32>;

/// A stable 64-bit hash of a name (FNV-1a): seeds each parameter's initial values and salts each
/// dropout layer's mask, so both depend on names, never on node numbers.
pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// A value: result `result` of node `node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId {
    /// The node computing it.
    pub node: NodeId,
    /// Which of its results.
    pub result: u16,
}

impl From<NodeId> for ValueId {
    fn from(node: NodeId) -> Self {
        ValueId { node, result: 0 }
    }
}

/// What an edge carries: the reader's input port and the writer's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Edge {
    port: u16,
    result: u16,
}

/// One operation in the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// What it computes.
    pub op: Op,
    /// Its block path, unique in the graph for layers and parameters.
    pub name: String,
    /// Where in the source it came from.
    pub loc: Loc,
    /// The shape of its first (for most ops, only) result, batch axis excluded.
    pub shape: Shape,
    /// The shapes of its further results, if any.
    pub extra: Vec<Shape>,
}

impl Node {
    /// A node with one result.
    pub fn new(op: Op, name: impl Into<String>, loc: Loc, shape: Shape) -> Self {
        Node { op, name: name.into(), loc, shape, extra: Vec::new() }
    }

    /// The shape of result `r`.
    pub fn result(&self, r: u16) -> Option<&Shape> {
        match r {
            0 => Some(&self.shape),
            _ => self.extra.get(usize::from(r) - 1),
        }
    }

    /// How many results it has.
    pub fn results(&self) -> usize {
        1 + self.extra.len()
    }
}

/// A model as a graph of ops.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// The model's name.
    pub name: String,
    graph: StableGraph<Node, Edge>,
    inputs: Vec<NodeId>,
    outputs: Vec<(String, NodeId)>,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Self {
        Graph { name: name.into(), ..Graph::default() }
    }

    /// Adds a node fed by `inputs` (in port order) and returns its id. The caller vouches for
    /// its shapes; [`Graph::build`] infers them.
    pub fn add(&mut self, node: Node, inputs: &[NodeId]) -> NodeId {
        let values: Vec<ValueId> = inputs.iter().map(|&n| n.into()).collect();
        self.add_values(node, &values)
    }

    /// Adds a node fed by the values `inputs` (in port order) and returns its id.
    pub fn add_values(&mut self, node: Node, inputs: &[ValueId]) -> NodeId {
        let is_input = matches!(node.op, Op::Input(_));
        let id = self.graph.add_node(node);
        for (port, v) in inputs.iter().enumerate() {
            self.graph.add_edge(v.node, id, Edge { port: port as u16, result: v.result });
        }
        if is_input {
            self.inputs.push(id);
        }
        id
    }

    /// Adds `op` on `inputs`, its result shapes inferred by the op's rule: the builder passes use.
    pub fn build(
        &mut self,
        op: Op,
        name: impl Into<String>,
        loc: Loc,
        inputs: &[ValueId],
    ) -> Result<NodeId, ShapeFault> {
        let shapes: Vec<&Shape> = inputs.iter().map(|&v| self.shape(v)).collect();
        let inferred = shape::infer(&op, &shapes)?;
        let node = Node { op, name: name.into(), loc, shape: inferred.shape, extra: inferred.extra };
        Ok(self.add_values(node, inputs))
    }

    /// Makes every reader of `old` (and every output naming it) read `new` instead.
    pub fn replace_all_uses(&mut self, old: ValueId, new: ValueId) {
        let edges: Vec<_> = self
            .graph
            .edges_directed(old.node, Direction::Outgoing)
            .filter(|e| e.weight().result == old.result)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        for (edge, target, weight) in edges {
            self.graph.remove_edge(edge);
            self.graph.add_edge(new.node, target, Edge { port: weight.port, result: new.result });
        }
        if old.result == 0 && new.result == 0 {
            for (_, id) in &mut self.outputs {
                if *id == old.node {
                    *id = new.node;
                }
            }
        }
    }

    /// Removes node `id` and its edges. Readers of it are left with a missing operand, which the
    /// verifier reports: rewire them first.
    pub fn remove(&mut self, id: NodeId) -> Option<Node> {
        self.inputs.retain(|&i| i != id);
        self.outputs.retain(|(_, o)| *o != id);
        self.graph.remove_node(id)
    }

    /// The node with this id, to change in place (its shapes must stay what its rule gives).
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.graph[id]
    }

    /// The shape of value `v`.
    pub fn shape(&self, v: ValueId) -> &Shape {
        self.graph[v.node].result(v.result).unwrap_or(&self.graph[v.node].shape)
    }

    /// Declares a named output.
    pub fn add_output(&mut self, name: impl Into<String>, id: NodeId) {
        self.outputs.push((name.into(), id));
    }

    /// Replaces the named outputs.
    pub fn set_outputs(&mut self, outputs: Vec<(String, NodeId)>) {
        self.outputs = outputs;
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

    /// The values feeding `id`, in port order.
    pub fn inputs_of(&self, id: NodeId) -> Vec<ValueId> {
        let mut edges: Vec<(u16, ValueId)> = self
            .graph
            .edges_directed(id, Direction::Incoming)
            .map(|e| (e.weight().port, ValueId { node: e.source(), result: e.weight().result }))
            .collect();
        edges.sort_unstable();
        edges.into_iter().map(|(_, v)| v).collect()
    }

    /// The nodes feeding `id`, in port order (which of their results is read is in
    /// [`Graph::inputs_of`]; forward layer ops have one result each).
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        self.inputs_of(id).into_iter().map(|v| v.node).collect()
    }

    /// Whether every port from 0 up is fed exactly once.
    pub(crate) fn ports_dense(&self, id: NodeId) -> bool {
        let mut ports: Vec<u16> = self.graph.edges_directed(id, Direction::Incoming).map(|e| e.weight().port).collect();
        ports.sort_unstable();
        ports.iter().enumerate().all(|(i, &p)| usize::from(p) == i)
    }

    /// The graph inputs that node `id` is computed from, in the graph's order of inputs.
    pub fn inputs_read(&self, id: NodeId) -> Vec<NodeId> {
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![id];
        while let Some(n) = stack.pop() {
            if seen.insert(n) {
                stack.extend(self.operands(n));
            }
        }
        self.inputs().iter().copied().filter(|i| seen.contains(i)).collect()
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
        let bound = self.graph.node_bound();
        let mut indegree = vec![0usize; bound];
        for e in self.graph.edge_indices() {
            let (_, target) = self.graph.edge_endpoints(e)?;
            indegree[target.index()] += 1;
        }
        let mut ready: BinaryHeap<std::cmp::Reverse<NodeId>> =
            self.graph.node_indices().filter(|n| indegree[n.index()] == 0).map(std::cmp::Reverse).collect();
        let mut order = Vec::with_capacity(self.len());
        while let Some(std::cmp::Reverse(n)) = ready.pop() {
            order.push(n);
            for e in self.graph.edges_directed(n, Direction::Outgoing) {
                let d = &mut indegree[e.target().index()];
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
