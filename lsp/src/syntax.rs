//! What each name of a file's syntax tree is: a call, a named argument, a use of a binding, a
//! definition, a segment of a `use` path. Hover, definition and completion start here.

use cnnc_grammar::ast::{self, ExprKind, Span, Stage, Stmt};
use std::collections::HashMap;

/// What a definition defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefKind {
    /// `name = expr`
    Binding,
    /// `input name: [...]`
    Input,
    /// `output name = expr`
    Output,
    /// `shared name = call`
    Shared,
    /// `const name: [...] = ...`
    Const,
    /// `anchors name = ...`
    Anchors,
    /// A block parameter.
    Param,
    /// `repeat n as i`
    RepeatVar,
    /// `model Name`
    Model,
    /// `block name(...)`
    Block,
}

/// What a name occurrence is.
#[derive(Clone, Debug, PartialEq)]
pub enum Ref {
    /// What a call calls (a layer, block or shared instance).
    Callee {
        /// The whole call.
        call: Span,
    },
    /// The name of a named argument.
    ArgName {
        /// The name of what the call calls.
        callee: String,
    },
    /// A name used as a value.
    Name,
    /// A name being defined.
    Def(DefKind),
    /// A segment of a `use` path.
    UsePath {
        /// The `use` declaration's index among the file's items.
        item: usize,
        /// The segment's index in the path.
        segment: usize,
    },
    /// The model a `train` section trains.
    TrainModel,
}

/// One name in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Occurrence {
    /// Where it is written.
    pub span: Span,
    /// The name.
    pub name: String,
    /// What it is.
    pub kind: Ref,
    /// The model or block it is in (an index into [`Index::scopes`]).
    pub scope: Option<usize>,
}

/// A model or block: the names its body defines.
#[derive(Clone, Debug, PartialEq)]
pub struct Scope {
    /// The whole declaration.
    pub span: Span,
    /// The model's or block's name.
    pub name: String,
    /// Whether it is a block (else a model).
    pub is_block: bool,
    /// Names defined in it, with where and how (the first definition of each).
    pub defs: HashMap<String, (Span, DefKind)>,
}

/// Every name of a file, in source order.
#[derive(Clone, Debug, Default)]
pub struct Index {
    /// Names in source order.
    pub occurrences: Vec<Occurrence>,
    /// Models and blocks.
    pub scopes: Vec<Scope>,
    /// Top-level definitions (models, blocks, constants).
    pub top: HashMap<String, (Span, DefKind)>,
}

impl Index {
    /// Indexes a syntax tree.
    pub fn new(file: &ast::File) -> Self {
        let mut ix = Index::default();
        for (i, item) in file.items.iter().enumerate() {
            match item {
                ast::Item::Use(u) => {
                    for (segment, id) in u.path.iter().enumerate() {
                        ix.push(id, Ref::UsePath { item: i, segment }, None);
                    }
                }
                ast::Item::Block(b) => {
                    ix.def_top(&b.name, DefKind::Block);
                    let scope = ix.open(b.span, &b.name.name, true);
                    for p in &b.params {
                        ix.def(&p.name, DefKind::Param, scope);
                        if let Some(d) = &p.default {
                            ix.expr(d, Some(scope));
                        }
                    }
                    ix.body(&b.body, scope);
                }
                ast::Item::Model(m) => {
                    ix.def_top(&m.name, DefKind::Model);
                    let scope = ix.open(m.span, &m.name.name, false);
                    ix.body(&m.body, scope);
                }
                ast::Item::Train(t) => {
                    ix.push(&t.model, Ref::TrainModel, None);
                }
                ast::Item::Const(c) => {
                    ix.def_top(&c.name, DefKind::Const);
                    ix.expr(&c.shape, None);
                    ix.expr(&c.value, None);
                }
            }
        }
        ix.occurrences.sort_by_key(|o| (o.span.start, o.span.end));
        ix
    }

    /// The name at byte `offset` (a cursor just after a name is on it).
    pub fn at(&self, offset: usize) -> Option<&Occurrence> {
        let offset = offset as u32;
        let i = self.occurrences.partition_point(|o| o.span.start <= offset);
        self.occurrences[..i].iter().rev().take(2).find(|o| o.span.end >= offset)
    }

    /// The model or block whose declaration contains `offset`.
    pub fn scope_at(&self, offset: usize) -> Option<&Scope> {
        let offset = offset as u32;
        self.scopes.iter().find(|s| s.span.start <= offset && offset <= s.span.end)
    }

    /// Where a name used in scope `scope` is defined: in the scope, else at the top level.
    pub fn definition(&self, name: &str, scope: Option<usize>) -> Option<(Span, DefKind)> {
        scope.and_then(|s| self.scopes.get(s)).and_then(|s| s.defs.get(name)).or_else(|| self.top.get(name)).copied()
    }

    fn push(&mut self, id: &ast::Ident, kind: Ref, scope: Option<usize>) {
        self.occurrences.push(Occurrence { span: id.span, name: id.name.clone(), kind, scope });
    }

    fn open(&mut self, span: Span, name: &str, is_block: bool) -> usize {
        self.scopes.push(Scope { span, name: name.to_string(), is_block, defs: HashMap::new() });
        self.scopes.len() - 1
    }

    fn def_top(&mut self, id: &ast::Ident, kind: DefKind) {
        self.top.entry(id.name.clone()).or_insert((id.span, kind));
        self.push(id, Ref::Def(kind), None);
    }

    fn def(&mut self, id: &ast::Ident, kind: DefKind, scope: usize) {
        if let Some(s) = self.scopes.get_mut(scope) {
            s.defs.entry(id.name.clone()).or_insert((id.span, kind));
        }
        self.push(id, Ref::Def(kind), Some(scope));
    }

    fn body(&mut self, body: &[Stmt], scope: usize) {
        for stmt in body {
            match stmt {
                Stmt::Input { name, shape, .. } => {
                    self.def(name, DefKind::Input, scope);
                    self.expr(shape, Some(scope));
                }
                Stmt::Output { name, value: Some(v), .. } => {
                    self.def(name, DefKind::Output, scope);
                    self.expr(v, Some(scope));
                }
                Stmt::Output { name, value: None, .. } => self.push(name, Ref::Name, Some(scope)),
                Stmt::Return { value, .. } => self.expr(value, Some(scope)),
                Stmt::Shared { name, call, .. } => {
                    self.def(name, DefKind::Shared, scope);
                    self.call(call, Some(scope));
                }
                Stmt::Const(c) => {
                    self.def(&c.name, DefKind::Const, scope);
                    self.expr(&c.shape, Some(scope));
                    self.expr(&c.value, Some(scope));
                }
                Stmt::Anchors { name, value, .. } => {
                    self.def(name, DefKind::Anchors, scope);
                    self.expr(value, Some(scope));
                }
                Stmt::Binding { name, value, .. } => {
                    self.def(name, DefKind::Binding, scope);
                    self.expr(value, Some(scope));
                }
            }
        }
    }

    fn expr(&mut self, e: &ast::Expr, scope: Option<usize>) {
        match &e.kind {
            ExprKind::Name(id) => self.push(id, Ref::Name, scope),
            ExprKind::Call(c) => self.call(c, scope),
            ExprKind::List(items) => items.iter().for_each(|i| self.expr(i, scope)),
            ExprKind::Neg(inner) => self.expr(inner, scope),
            ExprKind::Binary { lhs, rhs, .. } => {
                self.expr(lhs, scope);
                self.expr(rhs, scope);
            }
            ExprKind::Pipe { input, stages } => {
                self.expr(input, scope);
                stages.iter().for_each(|s| self.stage(s, scope));
            }
            ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Str(_) | ExprKind::Bool(_) | ExprKind::Size(_) => {}
        }
    }

    fn stage(&mut self, s: &Stage, scope: Option<usize>) {
        match s {
            Stage::Call(c) => self.call(c, scope),
            Stage::Repeat { count, var, stages, .. } => {
                self.expr(count, scope);
                if let (Some(v), Some(sc)) = (var, scope) {
                    self.def(v, DefKind::RepeatVar, sc);
                }
                stages.iter().for_each(|s| self.stage(s, scope));
            }
        }
    }

    fn call(&mut self, c: &ast::Call, scope: Option<usize>) {
        self.push(&c.callee, Ref::Callee { call: c.span }, scope);
        for a in &c.args {
            if let Some(n) = &a.name {
                self.push(n, Ref::ArgName { callee: c.callee.name.clone() }, scope);
            }
            self.expr(&a.value, scope);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_names_calls_and_their_definitions() {
        let text = "use std.layers.conv_bn\nblock b(x, c: int) { return x |> conv(c, 3, pad: same) }\nmodel M {\n  input i: [8, 8, 1]\n  y = i |> b(4)\n  output y\n}";
        let ix = Index::new(&cnnc_grammar::parse(text).unwrap());
        let at = |s: &str, skip: usize| ix.at(text.match_indices(s).nth(skip).unwrap().0 + 1).unwrap().clone();
        assert_eq!(at("conv_bn", 0).kind, Ref::UsePath { item: 0, segment: 2 });
        assert!(matches!(at("conv(", 0).kind, Ref::Callee { .. }));
        assert_eq!(at("pad", 0).kind, Ref::ArgName { callee: "conv".into() });
        let used = at("y\n}", 0);
        assert_eq!(used.kind, Ref::Name);
        let (span, kind) = ix.definition(&used.name, used.scope).unwrap();
        assert_eq!((span.start as usize, kind), (text.find("y = ").unwrap(), DefKind::Binding));
        let x = at("x |>", 0);
        assert_eq!(ix.definition(&x.name, x.scope).unwrap().1, DefKind::Param);
        assert_eq!(ix.definition("b", None).unwrap().1, DefKind::Block);
        assert!(ix.scope_at(text.find("input").unwrap()).is_some_and(|s| s.name == "M"));
    }
}
