//! The per-layer table of `cnnc build --emit summary`, like Keras' `model.summary()`: block path,
//! op, output shape, parameters, multiply-accumulates; totals of trainable, frozen and all
//! parameters, MACs and activation memory per example.

use crate::ir::op::{Op, ParamOp};
use crate::ir::{Graph, NodeId};
use std::collections::HashMap;
use std::fmt::Write;

/// One row: a layer (an op node that is not a parameter).
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Block path.
    pub name: String,
    /// Op mnemonic.
    pub op: String,
    /// Output shape as text.
    pub shape: String,
    /// Parameters first used by this layer (running statistics excluded).
    pub params: u64,
    /// Multiply-accumulates per example.
    pub macs: u64,
}

/// A model's summary.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The model's name.
    pub model: String,
    /// Layers in topological order.
    pub rows: Vec<Row>,
    /// Parameters that training updates.
    pub trainable: u64,
    /// Parameters kept fixed (`frozen`, constants).
    pub frozen: u64,
    /// Batchnorm running statistics (state, not parameters).
    pub state: u64,
    /// Multiply-accumulates per example.
    pub macs: u64,
    /// Bytes of all layer outputs for one example, in f32.
    pub activation_bytes: u64,
}

impl Summary {
    /// All parameters, trainable and frozen.
    pub fn params(&self) -> u64 {
        self.trainable + self.frozen
    }

    /// Summarizes a graph.
    pub fn of(graph: &Graph) -> Summary {
        let order = graph.topo_order().unwrap_or_else(|| graph.node_ids().collect());
        let mut first_user: HashMap<NodeId, NodeId> = HashMap::new();
        for &id in &order {
            for p in graph.operands(id) {
                first_user.entry(p).or_insert(id);
            }
        }
        let mut s = Summary {
            model: graph.name.clone(),
            rows: Vec::new(),
            trainable: 0,
            frozen: 0,
            state: 0,
            macs: 0,
            activation_bytes: 0,
        };
        for &id in &order {
            let node = graph.node(id);
            let elements = node.shape.elements().unwrap_or(0) as u64;
            if let Op::Param(ParamOp { role, frozen, .. }) = &node.op {
                match (role.is_state(), frozen) {
                    (true, _) => s.state += elements,
                    (false, true) => s.frozen += elements,
                    (false, false) => s.trainable += elements,
                }
                continue;
            }
            let params = graph
                .operands(id)
                .into_iter()
                .filter(|p| first_user.get(p) == Some(&id))
                .map(|p| graph.node(p))
                .filter(|p| matches!(&p.op, Op::Param(ParamOp { role, .. }) if !role.is_state()))
                .map(|p| p.shape.elements().unwrap_or(0) as u64)
                .sum();
            let macs = macs(graph, id);
            s.macs = s.macs.saturating_add(macs);
            s.activation_bytes = s.activation_bytes.saturating_add(elements * 4);
            let name = match &node.op {
                Op::Input(i) => i.name.clone(),
                _ => node.name.clone(),
            };
            s.rows.push(Row { name, op: node.op.mnemonic(), shape: node.shape.to_string(), params, macs });
        }
        s
    }

    /// The table as text.
    pub fn to_text(&self) -> String {
        let headers = ["Layer (block path)", "Op", "Output shape", "Params", "MACs"];
        let cells: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|r| [r.name.clone(), r.op.clone(), r.shape.clone(), thousands(r.params), thousands(r.macs)])
            .collect();
        let mut widths = headers.map(|h| h.chars().count());
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        // A column as wide as its widest cell, up to a point: formatting widths stop at 65,535
        // (a longer name, from a huge file, just sticks out).
        let widths = widths.map(|w| w.min(512));
        let total: usize = widths.iter().sum::<usize>() + 8;
        let mut out = format!("Model: {}\n", self.model);
        let line = |out: &mut String, row: [&str; 5]| {
            let _ = writeln!(
                out,
                "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:>w4$}",
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3],
                w4 = widths[4]
            );
        };
        out.push_str(&"─".repeat(total));
        out.push('\n');
        line(&mut out, headers);
        out.push_str(&"─".repeat(total));
        out.push('\n');
        for row in &cells {
            line(&mut out, [&row[0], &row[1], &row[2], &row[3], &row[4]]);
        }
        out.push_str(&"─".repeat(total));
        out.push('\n');
        let _ = writeln!(out, "Total params:        {}", thousands(self.params()));
        let _ = writeln!(out, "Trainable params:    {}", thousands(self.trainable));
        let _ = writeln!(out, "Frozen params:       {}", thousands(self.frozen));
        let _ =
            writeln!(out, "Batchnorm state:     {} (running mean and variance, not trained)", thousands(self.state));
        let _ = writeln!(out, "MACs per example:    {}", thousands(self.macs));
        let _ =
            writeln!(out, "Activation memory:   {} per example (f32, all layer outputs)", bytes(self.activation_bytes));
        out
    }
}

fn macs(graph: &Graph, id: NodeId) -> u64 {
    let node = graph.node(id);
    let inputs: Vec<&crate::shape::Shape> = graph.inputs_of(id).iter().map(|&v| graph.shape(v)).collect();
    node.op.rule().macs(&inputs, &node.shape)
}

/// `61706` as `61,706`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(61706), "61,706");
        assert_eq!(thousands(138357544), "138,357,544");
    }
}
