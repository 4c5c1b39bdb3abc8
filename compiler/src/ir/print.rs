//! The IR as stable text: `%3 = conv2d[n=6,f=5x5,s=1x1,p=0x0] "conv1" %0, %1, %2 : [28, 28, 6]`.
//! Nodes are renumbered in topological order; nothing depends on hash order or addresses. A
//! node's second and later results are `%3.1`, `%3.2`, their shapes listed after the first.

use super::{Graph, NodeId, Op};
use std::collections::HashMap;
use std::fmt::Write;

pub(super) fn print(graph: &Graph) -> String {
    let order = graph.topo_order().unwrap_or_else(|| graph.node_ids().collect());
    let number: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut out = format!("graph {} {{\n", graph.name);
    for &id in &order {
        let node = graph.node(id);
        let operands: Vec<String> = graph
            .inputs_of(id)
            .iter()
            .map(|v| match v.result {
                0 => format!("%{}", number[&v.node]),
                r => format!("%{}.{r}", number[&v.node]),
            })
            .collect();
        let name = match &node.op {
            Op::Input(i) => &i.name,
            _ => &node.name,
        };
        let _ = write!(out, "  %{} = {}{} \"{}\"", number[&id], node.op.mnemonic(), node.op.attributes(), name);
        if !operands.is_empty() {
            let _ = write!(out, " {}", operands.join(", "));
        }
        let _ = write!(out, " : {}", node.shape);
        for extra in &node.extra {
            let _ = write!(out, ", {extra}");
        }
        out.push('\n');
    }
    for (name, id) in graph.outputs() {
        let _ = writeln!(out, "  output {name} = %{}", number[id]);
    }
    out.push_str("}\n");
    out
}
