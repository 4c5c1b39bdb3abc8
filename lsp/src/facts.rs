//! What the compilation knows about a place of the document: the calls evaluated there and the
//! nodes they made, shapes, parameter counts, the output-size arithmetic of a window, block
//! signatures and doc comments. Hover, inlay hints and symbols read it through these.

use crate::analysis::Analysis;
use cnnc_compiler::elaborate::{CallSite, ModelInfo};
use cnnc_compiler::ir::op::{Op, ParamOp};
use cnnc_compiler::ir::{Graph, NodeId};
use cnnc_compiler::load::{Def, Program};
use cnnc_compiler::shape::AxisCalc;
use cnnc_compiler::source::{FileId, Loc};
use cnnc_compiler::summary::thousands;
use cnnc_grammar::ast::{self, Span};

/// The calls evaluated at `span` of the document, in every model and instance.
pub fn sites(a: &Analysis, span: Span) -> Vec<(&ModelInfo, &CallSite)> {
    let at = Loc { file: FileId(0), span };
    a.compilation.models.iter().flat_map(|m| m.calls.iter().filter(move |c| c.loc == at).map(move |c| (m, c))).collect()
}

/// The nodes computing the binding whose name is at `span` of the document.
pub fn binding_nodes(a: &Analysis, span: Span) -> Vec<(&ModelInfo, NodeId)> {
    let at = Loc { file: FileId(0), span };
    a.compilation
        .models
        .iter()
        .flat_map(|m| m.bindings.iter().filter(move |(l, _)| *l == at).map(move |(_, n)| (m, *n)))
        .collect()
}

/// Distinct shapes as one label: `[8, 8, 16]`, or `[8, 8, 16] | [4, 4, 32]` for a block's
/// instances (at most three, then `…`).
pub fn shapes_label(shapes: impl IntoIterator<Item = String>) -> Option<String> {
    let mut distinct: Vec<String> = Vec::new();
    for s in shapes {
        if !distinct.contains(&s) {
            distinct.push(s);
        }
    }
    if distinct.len() > 3 {
        distinct.truncate(3);
        distinct.push("…".into());
    }
    (!distinct.is_empty()).then(|| distinct.join(" | "))
}

/// Trainable and frozen parameters a node reads (running statistics excluded).
pub fn node_params(g: &Graph, id: NodeId) -> u64 {
    g.operands(id).into_iter().map(|p| param_size(g, p)).sum()
}

/// Parameters created under a block path (`stage2/block1`).
pub fn path_params(g: &Graph, path: &str) -> u64 {
    let prefix = format!("{path}/");
    g.node_ids().filter(|&id| g.node(id).name.starts_with(&prefix)).map(|id| param_size(g, id)).sum()
}

fn param_size(g: &Graph, id: NodeId) -> u64 {
    match &g.node(id).op {
        Op::Param(ParamOp { role, .. }) if !role.is_state() => g.node(id).shape.elements().unwrap_or(0) as u64,
        _ => 0,
    }
}

/// The tensors (not parameters) a node reads.
pub fn tensor_inputs(g: &Graph, id: NodeId) -> Vec<NodeId> {
    g.operands(id).into_iter().filter(|&p| !matches!(g.node(p).op, Op::Param(_))).collect()
}

/// The tensors flowing into the nodes under a block path from outside it.
pub fn path_inputs(g: &Graph, path: &str) -> Vec<NodeId> {
    let prefix = format!("{path}/");
    let inside = |id: NodeId| g.node(id).name.starts_with(&prefix);
    let mut inputs = Vec::new();
    for id in g.node_ids().filter(|&id| inside(id)) {
        for p in tensor_inputs(g, id) {
            if !inside(p) && !inputs.contains(&p) {
                inputs.push(p);
            }
        }
    }
    inputs
}

/// Per spatial axis of a convolution or pooling: the axis name and `(n + 2p − f)/s + 1 = out`.
pub fn window_arithmetic(g: &Graph, id: NodeId) -> Vec<(String, String)> {
    let Some(&x) = tensor_inputs(g, id).first() else { return Vec::new() };
    let spatial = g.node(x).shape.spatial().to_vec();
    let out = g.node(id).shape.spatial().to_vec();
    let Some(w) = g.node(id).op.rule().window() else { return Vec::new() };
    let (size, stride, pad, dilation, ceil) = (w.size, w.stride, w.pad, w.dilation, w.ceil);
    let rank = size.len();
    (0..rank)
        .filter_map(|axis| {
            let calc = AxisCalc {
                axis,
                n: *spatial.get(axis)?,
                pad: *pad.get(axis)?,
                f: *size.get(axis)?,
                dilation: *dilation.get(axis)?,
                s: *stride.get(axis)?,
                ceil,
            };
            let formula = calc.formula();
            let result = out.get(axis).copied().or(calc.out()).unwrap_or(0);
            let shown = if formula.ends_with(&format!("= {result}")) {
                formula
            } else {
                format!("{formula} → {result}{}", if ceil { " (rounded up)" } else { " (rounded down)" })
            };
            Some((axis_name(axis, rank).to_string(), shown))
        })
        .collect()
}

/// The name of spatial axis `axis` of `rank` spatial axes.
pub fn axis_name(axis: usize, rank: usize) -> &'static str {
    match rank {
        1 => "length",
        2 => ["height", "width"][axis.min(1)],
        _ => ["depth", "height", "width"][axis.min(2)],
    }
}

/// A node's numbers as aligned lines: inputs, output, parameters, window arithmetic.
pub fn node_table(g: &Graph, id: NodeId, inputs: &[NodeId], params: u64) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    for (i, &x) in inputs.iter().enumerate() {
        let key = if inputs.len() == 1 { "input".to_string() } else { format!("input {}", i + 1) };
        rows.push((key, g.node(x).shape.to_string()));
    }
    rows.push(("output".into(), g.node(id).shape.to_string()));
    rows.push(("params".into(), thousands(params)));
    rows.extend(window_arithmetic(g, id));
    let width = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0).min(512);
    rows.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
}

/// `block name(x, c: int, stride: int = 1)`, as written in the block's file.
pub fn block_signature(program: &Program, def: &Def<ast::Block>) -> String {
    let Some(module) = program.modules.get(def.module) else { return String::new() };
    let sources = &program.sources;
    let params: Vec<&str> =
        def.item.params.iter().map(|p| sources.snippet(Loc { file: module.file, span: p.span })).collect();
    format!("block {}({})", def.item.name.name, params.join(", "))
}

/// The `//` comment lines right above byte `start` of `text`, without their slashes.
pub fn doc_comment(text: &str, start: usize) -> String {
    let before = text.get(..start).unwrap_or("");
    let mut lines: Vec<&str> = Vec::new();
    for line in before.lines().rev().skip(usize::from(!before.ends_with('\n'))) {
        match line.trim_start().strip_prefix("//") {
            Some(c) => lines.push(c.strip_prefix(' ').unwrap_or(c)),
            None => break,
        }
    }
    lines.reverse();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_doc_comments() {
        assert_eq!(shapes_label(["[1]".to_string(), "[1]".into(), "[2]".into()]).as_deref(), Some("[1] | [2]"));
        assert_eq!(shapes_label((0..5).map(|i| format!("[{i}]"))).as_deref(), Some("[0] | [1] | [2] | …"));
        assert_eq!(shapes_label(Vec::new()), None);
        let text = "x\n// One.\n//   Two.\nblock b() {}";
        assert_eq!(doc_comment(text, text.find("block").unwrap()), "One.\n  Two.");
        assert_eq!(doc_comment("block", 0), "");
    }
}
