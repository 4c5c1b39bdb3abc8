//! Hover: on a layer call, its signature and, per instance, its input and output shapes, its
//! parameter count and the `(n + 2p − f)/s + 1` arithmetic of each axis; on a block call, the
//! block's signature, documentation and per-instance shapes and parameters; on a binding, its
//! shape and the same numbers for the layer computing it; on a model, its summary.

use crate::document::View;
use crate::facts::{self, block_signature, doc_comment, node_table};
use crate::syntax::{DefKind, Occurrence, Ref};
use cnnc_compiler::elaborate::LAYERS;
use cnnc_compiler::ir::op::Op;
use cnnc_compiler::source::{FileId, Loc};
use cnnc_compiler::summary::{thousands, Summary};
use cnnc_grammar::ast::{self, Span};
use lsp_types::{Hover, HoverContents, MarkupContent, MarkupKind, Position};
use std::fmt::Write;

/// Most instances described in one hover.
const MAX_INSTANCES: usize = 3;

/// The hover at `pos`, if there is something to say.
pub fn hover(view: &View, pos: Position) -> Option<Hover> {
    let occ = view.analysis.index.at(view.offset(pos))?;
    let value = match &occ.kind {
        Ref::Callee { call } => callee(view, occ, *call),
        Ref::Name | Ref::Def(_) => name(view, occ),
        Ref::ArgName { callee } => argument(view, callee, &occ.name),
        Ref::UsePath { item, segment } => use_path(view, *item, *segment),
        Ref::TrainModel => model(view, &occ.name),
    }?;
    Some(Hover {
        contents: HoverContents::Markup(MarkupContent { kind: MarkupKind::Markdown, value }),
        range: Some(view.range(occ.span)),
    })
}

fn code(text: &str) -> String {
    format!("```cnn\n{text}\n```\n")
}

fn callee(view: &View, occ: &Occurrence, call: Span) -> Option<String> {
    let a = view.analysis;
    let program = &a.compilation.program;
    let mut out = String::new();
    if let Some(spec) = LAYERS.iter().find(|l| l.name == occ.name) {
        out += &code(spec.signature);
        out += spec.doc;
        out.push('\n');
    } else if let Some(def) = program.modules.first().and_then(|m| m.blocks.get(&occ.name)) {
        out += &code(&block_signature(program, def));
        let text = &program.sources.get(program.modules[def.module].file).text;
        let doc = doc_comment(text, def.item.span.start as usize);
        if !doc.is_empty() {
            out += &doc;
            out.push('\n');
        }
    } else if let Some((span, DefKind::Shared)) = a.index.definition(&occ.name, occ.scope) {
        let stmt = a.compilation.program.sources.snippet(Loc { file: FileId(0), span });
        let _ = writeln!(out, "shared instance `{stmt}`: every use applies the same weights");
    }
    let sites = facts::sites(a, call);
    for (m, site) in sites.iter().take(MAX_INSTANCES) {
        let g = &m.graph;
        let is_layer = g.node(site.node).name == site.path;
        let (inputs, params) = if is_layer {
            (facts::tensor_inputs(g, site.node), facts::node_params(g, site.node))
        } else {
            (facts::path_inputs(g, &site.path), facts::path_params(g, &site.path))
        };
        let node = g.node(site.node);
        let _ = write!(out, "\n---\n`{}` in model `{}`", site.path, m.name);
        if is_layer {
            let _ = write!(out, ": **{}** `{}`", node.op.mnemonic(), node.op.attributes());
        }
        let _ = write!(out, "\n```text\n{}```\n", node_table(g, site.node, &inputs, params));
    }
    if sites.len() > MAX_INSTANCES {
        let _ = writeln!(out, "\n… and {} more instances", sites.len() - MAX_INSTANCES);
    }
    (!out.is_empty()).then_some(out)
}

fn name(view: &View, occ: &Occurrence) -> Option<String> {
    let a = view.analysis;
    let program = &a.compilation.program;
    let snippet = |span: Span| program.sources.snippet(Loc { file: FileId(0), span }).to_string();
    let def = match occ.kind {
        Ref::Def(kind) => Some((occ.span, kind)),
        _ => a.index.definition(&occ.name, occ.scope),
    };
    let Some((span, kind)) = def else {
        // A constant from another file.
        let def = program.modules.first()?.consts.get(&occ.name)?;
        let file = program.modules.get(def.module)?.file;
        let shape = program.sources.snippet(Loc { file, span: def.item.shape.span });
        return Some(code(&format!("const {}: {shape}", occ.name)));
    };
    let scope = occ.scope.and_then(|s| a.index.scopes.get(s));
    let info = scope.filter(|s| !s.is_block).and_then(|s| a.compilation.models.iter().find(|m| m.name == s.name));
    match kind {
        DefKind::Binding => {
            let nodes = facts::binding_nodes(a, span);
            let shapes = facts::shapes_label(nodes.iter().map(|(m, n)| m.graph.node(*n).shape.to_string()));
            let mut out = code(&format!("{}: {}", occ.name, shapes.as_deref().unwrap_or("?")));
            for (m, n) in nodes.iter().take(MAX_INSTANCES) {
                let (g, node) = (&m.graph, m.graph.node(*n));
                let _ =
                    write!(out, "\n---\ncomputed by `{}` ({}) in model `{}`", node.name, node.op.mnemonic(), m.name);
                let table = node_table(g, *n, &facts::tensor_inputs(g, *n), facts::node_params(g, *n));
                let _ = write!(out, "\n```text\n{table}```\n");
            }
            Some(out)
        }
        DefKind::Output => {
            let m = info?;
            let id = m.graph.outputs().iter().find(|(n, _)| *n == occ.name)?.1;
            let node = m.graph.node(id);
            Some(code(&format!("output {}: {}", occ.name, node.shape)))
        }
        DefKind::Input => {
            let m = info?;
            let id = m
                .graph
                .inputs()
                .iter()
                .copied()
                .find(|&id| matches!(&m.graph.node(id).op, Op::Input(i) if i.name == occ.name))?;
            Some(code(&format!("input {}: {}", occ.name, m.graph.node(id).shape)))
        }
        DefKind::Param => {
            let block = program.modules.first()?.blocks.get(&scope?.name)?;
            let param = block.item.params.iter().find(|p| p.name.name == occ.name)?;
            let ty = if param.ty.is_none() { " (a tensor)" } else { "" };
            Some(code(&format!("parameter {}", snippet(param.span))) + ty)
        }
        DefKind::Shared | DefKind::Const | DefKind::Anchors => {
            let stmt = statement_at(view, span)?;
            Some(code(&stmt))
        }
        DefKind::RepeatVar => Some(format!("`{}`: the index of a `repeat`, from 0", occ.name)),
        DefKind::Model => model(view, &occ.name),
        DefKind::Block => {
            let def = program.modules.first()?.blocks.get(&occ.name)?;
            let doc = doc_comment(&program.sources.get(FileId(0)).text, def.item.span.start as usize);
            Some(code(&block_signature(program, def)) + &doc)
        }
    }
}

/// The first line of the statement or item whose name is at `span`.
fn statement_at(view: &View, span: Span) -> Option<String> {
    let text = &view.analysis.compilation.program.sources.get(FileId(0)).text;
    let start = text.get(..span.start as usize)?.rfind('\n').map_or(0, |i| i + 1);
    let end = text.get(span.end as usize..)?.find('\n').map_or(text.len(), |i| span.end as usize + i);
    Some(text.get(start..end)?.trim().to_string())
}

fn argument(view: &View, callee: &str, name: &str) -> Option<String> {
    let program = &view.analysis.compilation.program;
    if let Some(spec) = LAYERS.iter().find(|l| l.name == callee) {
        return Some(format!("argument `{name}` of\n{}{}", code(spec.signature), spec.doc));
    }
    let def = program.modules.first()?.blocks.get(callee)?;
    let param = def.item.params.iter().find(|p| p.name.name == name)?;
    let file = program.modules.get(def.module)?.file;
    let decl = program.sources.snippet(Loc { file, span: param.span });
    Some(format!("parameter `{decl}` of\n{}", code(&block_signature(program, def))))
}

fn use_path(view: &View, item: usize, segment: usize) -> Option<String> {
    let program = &view.analysis.compilation.program;
    let entry = program.modules.first()?;
    let ast::Item::Use(u) = entry.ast.items.get(item)? else { return None };
    let last = segment + 1 == u.path.len();
    if last && !u.glob {
        let name = &u.path[segment].name;
        if let Some(def) = entry.blocks.get(name) {
            let text = &program.sources.get(program.modules[def.module].file).text;
            return Some(code(&block_signature(program, def)) + &doc_comment(text, def.item.span.start as usize));
        }
        let c = entry.consts.get(name)?;
        let file = program.modules.get(c.module)?.file;
        return Some(code(&format!(
            "const {name}: {}",
            program.sources.snippet(Loc { file, span: c.item.shape.span })
        )));
    }
    let module: Vec<&str> = u.path[..=segment].iter().map(|i| i.name.as_str()).collect();
    let wanted = format!("{}.cnn", module.join("/"));
    let found = program.modules.iter().skip(1).find(|m| {
        let f = program.sources.get(m.file);
        f.name == wanted || f.path.as_ref().is_some_and(|p| p.ends_with(&wanted))
    })?;
    let mut blocks = Vec::new();
    let mut models = Vec::new();
    for i in &found.ast.items {
        match i {
            ast::Item::Block(b) => blocks.push(format!("`{}`", b.name.name)),
            ast::Item::Model(m) => models.push(format!("`{}`", m.name.name)),
            _ => {}
        }
    }
    let mut out = format!("module `{}` ({})\n", module.join("."), program.sources.get(found.file).name);
    if !blocks.is_empty() {
        let _ = writeln!(out, "\nblocks: {}", blocks.join(", "));
    }
    if !models.is_empty() {
        let _ = writeln!(out, "\nmodels: {}", models.join(", "));
    }
    Some(out)
}

fn model(view: &View, name: &str) -> Option<String> {
    let m = view.analysis.compilation.models.iter().find(|m| m.name == name)?;
    let g = &m.graph;
    let shapes = |ids: Vec<_>| ids.iter().map(|&id| g.node(id).shape.to_string()).collect::<Vec<_>>().join(", ");
    let inputs = shapes(g.inputs().to_vec());
    let outputs = shapes(g.outputs().iter().map(|(_, id)| *id).collect());
    let s = Summary::of(g);
    let mut out = code(&format!("model {name}: {inputs} → {outputs}"));
    let _ = writeln!(
        out,
        "{} layers, {} parameters ({} trainable, {} frozen), {} MACs per example",
        s.rows.len(),
        thousands(s.params()),
        thousands(s.trainable),
        thousands(s.frozen),
        thousands(s.macs)
    );
    if m.failed {
        out += "\n(incomplete: the model has errors)\n";
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use crate::document::Document;
    use crate::files::StdFiles;
    use crate::position::Encoding;
    use lsp_types::Position;

    const TEXT: &str = "block twice(x, c: int) {\n    h = x |> conv(c, 3x3, pad: same)\n    return h |> relu\n}\nmodel M {\n    input i: [8, 8, 1]\n    a = i |> twice(4)\n    b = a |> maxpool(2)\n        |> twice(8)\n    output o = b\n}\n";

    #[test]
    fn hover_on_a_block_call_shows_the_instance() {
        let mut doc = Document::new("untitled:i".parse().unwrap(), 1, TEXT.into(), Encoding::Utf16);
        let std = StdFiles::default();
        let view = doc.view(&std);
        let hover = crate::hover::hover(&view, Position::new(8, 12)).unwrap();
        let lsp_types::HoverContents::Markup(m) = hover.contents else { panic!("markdown expected") };
        for expected in
            ["block twice(x, c: int)", "`twice2` in model `M`", "input   [4, 4, 4]", "output  [4, 4, 8]", "params  296"]
        {
            assert!(m.value.contains(expected), "{expected:?} not in {}", m.value);
        }
    }
}
