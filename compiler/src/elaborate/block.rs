//! Instantiating blocks: arguments bound to typed parameters, a scope whose names extend the
//! block path, the body evaluated, the `return` value handed back. Shared instances reuse the
//! parameters of their first application.

use super::args::ParamDecl;
use super::eval::ArgValue;
use super::value::{SharedInstance, Value};
use super::{Elab, Naming, Scope, Slot, MAX_DEPTH};
use crate::error::{similar, ResolveError};
use crate::load::Def;
use crate::source::Loc;
use cnnc_grammar::ast;

/// Types a block parameter may declare.
pub const TYPES: &[&str] = &["tensor", "int", "float", "bool", "size", "str"];

impl Elab<'_> {
    /// Instantiates `def` with `args` under `naming`.
    pub(super) fn instantiate(
        &mut self,
        sc: &mut Scope,
        def: &Def<ast::Block>,
        args: Vec<ArgValue>,
        loc: Loc,
        naming: Naming,
    ) -> Value {
        let block = def.item.clone();
        let def_loc = Loc { file: self.program.modules[def.module].file, span: block.name.span };
        let key = (def.module, block.name.name.clone());
        if !self.tick(sc, loc) {
            return Value::Poison;
        }
        if self.active_blocks.contains(&key) || self.active_blocks.len() >= MAX_DEPTH {
            self.report(sc, ResolveError::Recursion { loc, block: block.name.name.clone(), def: def_loc });
            return Value::Poison;
        }
        let decls: Vec<ParamDecl> =
            block.params.iter().map(|p| ParamDecl { name: &p.name.name, required: p.default.is_none() }).collect();
        let Some(slots) = self.bind_args(sc, &block.name.name, &decls, args, loc, Some(def_loc)) else {
            return Value::Poison;
        };
        let local = naming.node.rsplit('/').next().unwrap_or_default().to_string();
        let mut inner = self.new_scope(def.module, naming.node.clone(), naming.params.clone(), Some(sc));
        inner.reuse = naming.reuse;
        inner.frozen = naming.frozen;
        inner.trace.push((format!("`{local}`, an instance of block `{}`", block.name.name), loc));
        let mut ok = true;
        for (param, slot) in block.params.iter().zip(slots) {
            let value = match slot {
                Some(arg) => self.check_param_type(&inner, param, arg),
                None => match &param.default {
                    Some(d) => {
                        let value = self.eval(&mut inner, d);
                        let loc = inner.loc(d.span);
                        self.check_param_type(&inner, param, ArgValue { name: None, value, loc })
                    }
                    None => Value::Poison,
                },
            };
            ok &= !matches!(value, Value::Poison);
            let loc = inner.loc(param.name.span);
            inner.slots.insert(param.name.name.clone(), Slot::Done { value, loc, binding: false });
        }
        if !ok {
            return Value::Poison;
        }
        self.active_blocks.push(key);
        let mut ret = None;
        for stmt in &block.body {
            match stmt {
                ast::Stmt::Return { value, .. } => ret = Some(value),
                other => self.declare(&mut inner, other),
            }
        }
        self.force_all(&mut inner);
        let result = match ret {
            Some(e) => {
                let v = self.eval(&mut inner, e);
                let rloc = inner.loc(e.span);
                match v {
                    Value::Tensor(_) | Value::Poison => v,
                    other => self
                        .expect_tensor(&inner, &other, rloc, "a block's result")
                        .map_or(Value::Poison, Value::Tensor),
                }
            }
            None => {
                self.report(&inner, ResolveError::MissingReturn { loc: def_loc, block: block.name.name.clone() });
                Value::Poison
            }
        };
        self.warn_unused(&inner);
        self.active_blocks.pop();
        result
    }

    fn check_param_type(&mut self, sc: &Scope, param: &ast::Param, arg: ArgValue) -> Value {
        let ty = param.ty.as_ref().map_or("tensor", |t| t.name.as_str());
        let ok = match (ty, &arg.value) {
            (_, Value::Poison) => return Value::Poison,
            ("tensor", Value::Tensor(_))
            | ("int", Value::Int(_))
            | ("bool", Value::Bool(_))
            | ("str", Value::Str(_)) => true,
            ("float", Value::Float(_)) => true,
            ("float", Value::Int(v)) => return Value::Float(*v as f64),
            ("size", Value::Int(_) | Value::Size(_) | Value::List(_)) => true,
            (t, _) if !TYPES.contains(&t) => {
                let candidates = similar(t, TYPES.iter().copied());
                let loc = param.ty.as_ref().map_or(arg.loc, |t| Loc { file: sc.file, span: t.span });
                self.report(sc, ResolveError::UnknownType { loc, name: t.to_string(), candidates });
                return Value::Poison;
            }
            _ => false,
        };
        if ok {
            return arg.value;
        }
        if let Value::Word(name) = &arg.value {
            let candidates = vec![];
            self.report(sc, ResolveError::UnknownName { loc: arg.loc, name: name.clone(), candidates });
            return Value::Poison;
        }
        let found = arg.value.describe(&self.graph);
        let origin = self.origin(&arg.value);
        let what = format!("parameter `{}`", param.name.name);
        let expected = if ty == "tensor" { "a tensor".to_string() } else { format!("a value of type `{ty}`") };
        self.report(sc, ResolveError::WrongType { loc: arg.loc, what, expected, found, origin });
        Value::Poison
    }

    /// Applies a shared instance: the first use creates its parameters, later uses share them.
    pub(super) fn apply_shared(
        &mut self,
        sc: &mut Scope,
        shared: &SharedInstance,
        mut args: Vec<ArgValue>,
        loc: Loc,
        frozen: bool,
    ) -> Value {
        let uses = shared.uses.get() + 1;
        shared.uses.set(uses);
        for a in &shared.call.args {
            let value = self.eval(sc, &a.value);
            args.push(ArgValue { name: a.name.clone(), value, loc: sc.loc(a.value.span) });
        }
        let local = if uses == 1 { shared.name.clone() } else { format!("{}@{uses}", shared.name) };
        let naming = Naming {
            node: Scope::join(&sc.path, &local),
            params: Scope::join(&sc.param_path, &shared.name),
            reuse: true,
            frozen: sc.frozen || frozen || shared.call.frozen,
        };
        let name = shared.call.callee.name.as_str();
        let path = naming.node.clone();
        if super::layers::spec(name).is_some() {
            let value = self.layer(sc, name, args, loc, naming);
            return self.record(loc, path, value);
        }
        if let Some(def) = self.program.modules[shared.module].blocks.get(name).cloned() {
            let value = self.instantiate(sc, &def, args, loc, naming);
            return self.record(loc, path, value);
        }
        let mut names: Vec<&str> = super::LAYERS.iter().map(|l| l.name).collect();
        names.extend(self.program.modules[shared.module].blocks.keys().map(String::as_str));
        let candidates = similar(name, names);
        let loc = Loc { file: shared.loc.file, span: shared.call.callee.span };
        self.report(sc, ResolveError::UnknownLayer { loc, name: name.to_string(), candidates });
        Value::Poison
    }
}
