//! Go to definition: of a block (in this file, a `use`d file or the standard library), a shared
//! instance, a binding, input, parameter or constant, a block's named argument, the model a
//! `train` section trains, and of each segment of a `use` path (the file, or the item in it).

use crate::document::View;
use crate::files::{to_path, to_uri};
use crate::syntax::{Occurrence, Ref};
use cnnc_compiler::load::Def;
use cnnc_compiler::source::{FileId, Loc};
use cnnc_grammar::ast;
use lsp_types::{Location, Position, Range};

/// Where what is at `pos` is defined.
pub fn definition(view: &View, pos: Position) -> Option<Location> {
    let occ = view.analysis.index.at(view.offset(pos))?;
    match &occ.kind {
        Ref::Callee { .. } => local(view, occ).or_else(|| block(view, &occ.name)),
        Ref::Name => local(view, occ).or_else(|| constant(view, &occ.name)),
        Ref::Def(_) => view.location(Loc { file: FileId(0), span: occ.span }),
        Ref::ArgName { callee } => {
            let program = &view.analysis.compilation.program;
            let def = program.modules.first()?.blocks.get(callee)?;
            let param = def.item.params.iter().find(|p| p.name.name == occ.name)?;
            view.location(Loc { file: program.modules.get(def.module)?.file, span: param.name.span })
        }
        Ref::UsePath { item, segment } => use_path(view, *item, *segment),
        Ref::TrainModel => {
            let (span, _) = view.analysis.index.definition(&occ.name, None)?;
            view.location(Loc { file: FileId(0), span })
        }
    }
}

/// A definition in the occurrence's model or block, or at the top of the document.
fn local(view: &View, occ: &Occurrence) -> Option<Location> {
    let (span, kind) = view.analysis.index.definition(&occ.name, occ.scope)?;
    if matches!(occ.kind, Ref::Callee { .. }) && kind != crate::syntax::DefKind::Shared {
        return None;
    }
    view.location(Loc { file: FileId(0), span })
}

fn def_location<T>(view: &View, def: &Def<T>, span: ast::Span) -> Option<Location> {
    let file = view.analysis.compilation.program.modules.get(def.module)?.file;
    view.location(Loc { file, span })
}

fn block(view: &View, name: &str) -> Option<Location> {
    let def = view.analysis.compilation.program.modules.first()?.blocks.get(name)?;
    def_location(view, def, def.item.name.span)
}

fn constant(view: &View, name: &str) -> Option<Location> {
    let def = view.analysis.compilation.program.modules.first()?.consts.get(name)?;
    def_location(view, def, def.item.name.span)
}

fn use_path(view: &View, item: usize, segment: usize) -> Option<Location> {
    let program = &view.analysis.compilation.program;
    let ast::Item::Use(u) = program.modules.first()?.ast.items.get(item)? else { return None };
    if segment + 1 == u.path.len() && !u.glob {
        let name = &u.path[segment].name;
        return block(view, name).or_else(|| constant(view, name));
    }
    let names: Vec<&str> = u.path.iter().map(|i| i.name.as_str()).collect();
    let module = &names[..if u.glob { names.len() } else { names.len() - 1 }];
    let path = match module {
        ["std", name] => view.std.path(name)?,
        _ => {
            let mut p = to_path(view.uri)?.parent()?.to_path_buf();
            p.extend(module);
            p.set_extension("cnn");
            p
        }
    };
    if !path.exists() {
        return None;
    }
    Some(Location { uri: to_uri(&path)?, range: Range::default() })
}
