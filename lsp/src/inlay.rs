//! Inlay hints: the shape of each binding after its name (`x: [28, 28, 6]`), of each output, and
//! after each pipeline stage that ends a line. In a block body, the shapes of every instance.

use crate::document::View;
use crate::facts;
use cnnc_compiler::ir::NodeId;
use cnnc_compiler::source::{FileId, Loc};
use cnnc_grammar::ast::{self, ExprKind, Span, Stage, Stmt};
use lsp_types::{InlayHint, InlayHintKind, InlayHintLabel, Range};
use std::collections::HashMap;

/// Inlay hints within `range` of the document.
pub fn hints(view: &View, range: Range) -> Vec<InlayHint> {
    let a = view.analysis;
    let Some(entry) = a.compilation.program.modules.first() else { return Vec::new() };
    let window = view.lines.span(view.text, range);
    let mut calls: HashMap<Span, Vec<String>> = HashMap::new();
    let mut bindings: HashMap<Span, Vec<String>> = HashMap::new();
    for m in &a.compilation.models {
        let shape = |id: NodeId| m.graph.node(id).shape.to_string();
        for c in m.calls.iter().filter(|c| c.loc.file == FileId(0)) {
            calls.entry(c.loc.span).or_default().push(shape(c.node));
        }
        for (l, id) in m.bindings.iter().filter(|(l, _)| l.file == FileId(0)) {
            bindings.entry(l.span).or_default().push(shape(*id));
        }
    }
    let mut h = Hints { view, window, calls, out: Vec::new() };
    for item in &entry.ast.items {
        match item {
            ast::Item::Model(m) => {
                let info = a.compilation.models.iter().find(|i| i.loc == Loc { file: FileId(0), span: m.name.span });
                for stmt in &m.body {
                    if let (Stmt::Output { name, value: Some(_), .. }, Some(info)) = (stmt, info) {
                        let shape = info.graph.outputs().iter().find(|(n, _)| *n == name.name).map(|(_, id)| *id);
                        let label = shape.map(|id| info.graph.node(id).shape.to_string());
                        h.push(name.span.end, label.map(|l| format!(": {l}")), false);
                    }
                    h.stmt(stmt, &bindings);
                }
            }
            ast::Item::Block(b) => b.body.iter().for_each(|s| h.stmt(s, &bindings)),
            _ => {}
        }
    }
    h.out
}

struct Hints<'v> {
    view: &'v View<'v>,
    window: Span,
    calls: HashMap<Span, Vec<String>>,
    out: Vec<InlayHint>,
}

impl Hints<'_> {
    fn push(&mut self, at: u32, label: Option<String>, padding_left: bool) {
        let Some(label) = label else { return };
        if at < self.window.start || at > self.window.end {
            return;
        }
        self.out.push(InlayHint {
            position: self.view.lines.position(self.view.text, at as usize),
            label: InlayHintLabel::String(label),
            kind: Some(InlayHintKind::TYPE),
            text_edits: None,
            tooltip: None,
            padding_left: Some(padding_left),
            padding_right: None,
            data: None,
        });
    }

    fn stmt(&mut self, stmt: &Stmt, bindings: &HashMap<Span, Vec<String>>) {
        match stmt {
            Stmt::Binding { name, value, .. } => {
                let label = bindings.get(&name.span).and_then(|s| facts::shapes_label(s.iter().cloned()));
                self.push(name.span.end, label.map(|l| format!(": {l}")), false);
                self.expr(value);
            }
            Stmt::Output { value: Some(value), .. } | Stmt::Return { value, .. } => self.expr(value),
            _ => {}
        }
    }

    fn expr(&mut self, e: &ast::Expr) {
        match &e.kind {
            ExprKind::Pipe { input, stages } => {
                self.expr(input);
                self.stages(stages);
            }
            ExprKind::Call(c) => c.args.iter().for_each(|a| self.expr(&a.value)),
            ExprKind::Binary { lhs, rhs, .. } => {
                self.expr(lhs);
                self.expr(rhs);
            }
            ExprKind::List(items) => items.iter().for_each(|i| self.expr(i)),
            _ => {}
        }
    }

    /// A hint after each stage that ends its line, except the last stage (the binding's hint
    /// shows its shape).
    fn stages(&mut self, stages: &[Stage]) {
        for (i, stage) in stages.iter().enumerate() {
            if let Stage::Repeat { stages: inner, .. } = stage {
                self.stages(inner);
            }
            if let Stage::Call(c) = stage {
                c.args.iter().for_each(|a| self.expr(&a.value));
            }
            let Some(next) = stages.get(i + 1) else { continue };
            let end = stage.span().end;
            let text = self.view.text;
            let between = text.get(end as usize..next.span().start as usize).unwrap_or("");
            if !between.contains('\n') {
                continue;
            }
            let label = self.calls.get(&stage.span()).and_then(|s| facts::shapes_label(s.iter().cloned()));
            self.push(end, label, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::document::Document;
    use crate::files::StdFiles;
    use crate::position::Encoding;
    use lsp_types::{InlayHintLabel, Position, Range};

    const TEXT: &str = "block twice(x, c: int) {\n    h = x |> conv(c, 3x3, pad: same)\n    return h |> relu\n}\nmodel M {\n    input i: [8, 8, 1]\n    a = i |> twice(4)\n    b = a |> maxpool(2)\n        |> twice(8)\n    output o = b\n}\n";

    #[test]
    fn a_block_body_shows_the_shapes_of_every_instance() {
        let mut doc = Document::new("untitled:i".parse().unwrap(), 1, TEXT.into(), Encoding::Utf16);
        let std = StdFiles::default();
        let view = doc.view(&std);
        let all = Range { start: Position::new(0, 0), end: Position::new(20, 0) };
        let hints: Vec<(u32, u32, String)> = super::hints(&view, all)
            .into_iter()
            .map(|h| match h.label {
                InlayHintLabel::String(s) => (h.position.line, h.position.character, s),
                InlayHintLabel::LabelParts(_) => (h.position.line, h.position.character, String::new()),
            })
            .collect();
        assert!(hints.contains(&(1, 5, ": [8, 8, 4] | [4, 4, 8]".into())), "{hints:?}");
        assert!(hints.contains(&(7, 23, "[4, 4, 4]".into())), "{hints:?}");
        assert!(hints.contains(&(9, 12, ": [4, 4, 8]".into())), "{hints:?}");
        // Only the range asked for.
        let first_line = Range { start: Position::new(0, 0), end: Position::new(1, 80) };
        assert_eq!(super::hints(&view, first_line).len(), 1);
    }

    #[test]
    fn a_repeat_stage_ending_a_line_shows_its_shape() {
        let text = "model M {\n    input i: [8, 8, 1]\n    x = i |> repeat 2 { conv(4, 3x3, stride: 2) }\n        |> relu\n    output o = x\n}\n";
        let mut doc = Document::new("untitled:r".parse().unwrap(), 1, text.into(), Encoding::Utf16);
        let std = StdFiles::default();
        let view = doc.view(&std);
        let all = Range { start: Position::new(0, 0), end: Position::new(9, 0) };
        let labels: Vec<(Position, String)> = super::hints(&view, all)
            .into_iter()
            .filter_map(|h| match h.label {
                InlayHintLabel::String(s) => Some((h.position, s)),
                InlayHintLabel::LabelParts(_) => None,
            })
            .collect();
        let end = text.lines().nth(2).unwrap().len() as u32;
        assert!(labels.contains(&(Position::new(2, end), "[1, 1, 4]".into())), "{labels:?}");
    }
}
