//! Document symbols: models (with their input → output shapes), blocks (with their parameters),
//! `train` sections and constants, each with its inputs, bindings, outputs and other statements.

use crate::document::View;
use crate::facts;
use cnnc_compiler::elaborate::ModelInfo;
use cnnc_compiler::source::{FileId, Loc};
use cnnc_grammar::ast::{self, Span, Stmt};
use lsp_types::{DocumentSymbol, SymbolKind};

/// The document's outline.
pub fn symbols(view: &View) -> Vec<DocumentSymbol> {
    let a = view.analysis;
    let Some(entry) = a.compilation.program.modules.first() else { return Vec::new() };
    let snippet = |span: Span| a.compilation.program.sources.snippet(Loc { file: FileId(0), span }).to_string();
    let mut out = Vec::new();
    for item in &entry.ast.items {
        match item {
            ast::Item::Model(m) => {
                let info = a.compilation.models.iter().find(|i| i.loc == Loc { file: FileId(0), span: m.name.span });
                let detail = info.map(|i| {
                    let g = &i.graph;
                    let shapes =
                        |ids: Vec<_>| ids.iter().map(|&id| g.node(id).shape.to_string()).collect::<Vec<_>>().join(", ");
                    format!("{} → {}", shapes(g.inputs().to_vec()), shapes(g.outputs().iter().map(|o| o.1).collect()))
                });
                let children = m.body.iter().filter_map(|s| statement(view, s, info)).collect();
                out.push(symbol(view, &m.name.name, SymbolKind::CLASS, detail, m.span, m.name.span, Some(children)));
            }
            ast::Item::Block(b) => {
                let params: Vec<String> = b.params.iter().map(|p| snippet(p.span)).collect();
                let detail = Some(format!("({})", params.join(", ")));
                let children = b.body.iter().filter_map(|s| statement(view, s, None)).collect();
                out.push(symbol(view, &b.name.name, SymbolKind::FUNCTION, detail, b.span, b.name.span, Some(children)));
            }
            ast::Item::Train(t) => {
                let name = format!("train {}", t.model.name);
                out.push(symbol(view, &name, SymbolKind::EVENT, None, t.span, t.model.span, None));
            }
            ast::Item::Const(c) => {
                let detail = Some(snippet(c.shape.span));
                out.push(symbol(view, &c.name.name, SymbolKind::CONSTANT, detail, c.span, c.name.span, None));
            }
            ast::Item::Use(_) => {}
        }
    }
    out
}

fn statement(view: &View, s: &Stmt, model: Option<&ModelInfo>) -> Option<DocumentSymbol> {
    let a = view.analysis;
    let shape_of_binding = |name: &ast::Ident| {
        facts::shapes_label(facts::binding_nodes(a, name.span).iter().map(|(m, n)| m.graph.node(*n).shape.to_string()))
    };
    let (name, kind, detail, span) = match s {
        Stmt::Input { name, span, .. } => {
            let shape = model.and_then(|m| {
                m.graph
                    .inputs()
                    .iter()
                    .map(|&id| m.graph.node(id))
                    .find(|n| n.loc.span == *span)
                    .map(|n| n.shape.to_string())
            });
            (name, SymbolKind::VARIABLE, shape, *span)
        }
        Stmt::Output { name, span, .. } => {
            let shape = model.and_then(|m| {
                let id = m.graph.outputs().iter().find(|(n, _)| *n == name.name)?.1;
                Some(m.graph.node(id).shape.to_string())
            });
            (name, SymbolKind::FIELD, shape, *span)
        }
        Stmt::Binding { name, span, .. } => (name, SymbolKind::VARIABLE, shape_of_binding(name), *span),
        Stmt::Shared { name, span, .. } => (name, SymbolKind::OBJECT, None, *span),
        Stmt::Const(c) => (&c.name, SymbolKind::CONSTANT, None, c.span),
        Stmt::Anchors { name, span, .. } => (name, SymbolKind::ARRAY, None, *span),
        Stmt::Return { .. } => return None,
    };
    Some(symbol(view, &name.name, kind, detail, span, name.span, None))
}

fn symbol(
    view: &View,
    name: &str,
    kind: SymbolKind,
    detail: Option<String>,
    span: Span,
    selection: Span,
    children: Option<Vec<DocumentSymbol>>,
) -> DocumentSymbol {
    #[allow(deprecated)]
    DocumentSymbol {
        name: name.to_string(),
        detail,
        kind,
        tags: None,
        deprecated: None,
        range: view.range(span),
        selection_range: view.range(selection),
        children,
    }
}
