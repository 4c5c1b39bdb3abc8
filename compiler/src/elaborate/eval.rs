//! Evaluating expressions: literals, arithmetic, names, pipelines, `repeat`, and calls of
//! layers, blocks and shared instances.

use super::value::Value;
use super::{CallSite, Elab, Scope, Slot};
use crate::error::{similar, ResolveError};
use crate::ir::Op;
use crate::source::Loc;
use cnnc_grammar::ast::{self, BinOp, ExprKind};

/// Largest `repeat` count.
pub const MAX_REPEAT: i64 = 10_000;

/// An evaluated argument.
#[derive(Clone, Debug)]
pub struct ArgValue {
    /// `name:` if named.
    pub name: Option<ast::Ident>,
    /// The value.
    pub value: Value,
    /// Where the argument is (the piped expression for a pipeline's input).
    pub loc: Loc,
}

impl Elab<'_> {
    pub(super) fn eval(&mut self, sc: &mut Scope, e: &ast::Expr) -> Value {
        if self.aborted {
            return Value::Poison;
        }
        let loc = sc.loc(e.span);
        match &e.kind {
            ExprKind::Int(v) => Value::Int(*v),
            ExprKind::Float(v) => Value::Float(*v),
            ExprKind::Str(s) => Value::Str(s.clone()),
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::Size(v) => Value::Size(v.clone()),
            ExprKind::List(items) => Value::List(items.iter().map(|i| (self.eval(sc, i), sc.loc(i.span))).collect()),
            ExprKind::Name(id) => self.lookup(sc, &id.name),
            ExprKind::Call(c) => self.call(sc, c, None),
            ExprKind::Neg(inner) => match self.eval(sc, inner) {
                Value::Int(v) => v.checked_neg().map_or_else(|| self.overflow(sc, loc), Value::Int),
                Value::Float(v) => Value::Float(-v),
                Value::Poison => Value::Poison,
                other => {
                    let found = other.describe(&self.graph);
                    self.report(
                        sc,
                        ResolveError::WrongType {
                            loc,
                            what: "`-`".into(),
                            expected: "a number".into(),
                            found,
                            origin: None,
                        },
                    );
                    Value::Poison
                }
            },
            ExprKind::Binary { op, lhs, rhs } => {
                let l = self.eval(sc, lhs);
                let r = self.eval(sc, rhs);
                self.binary(sc, *op, (l, sc.loc(lhs.span)), (r, sc.loc(rhs.span)), loc)
            }
            ExprKind::Pipe { input, stages } => {
                let mut value = self.eval(sc, input);
                let mut from = sc.loc(input.span);
                for stage in stages {
                    value = self.recorded_stage(sc, stage, value, from);
                    from = sc.loc(stage.span());
                }
                value
            }
        }
    }

    fn overflow(&mut self, sc: &Scope, loc: Loc) -> Value {
        self.report(sc, ResolveError::Arithmetic { loc, problem: "integer overflow" });
        Value::Poison
    }

    fn binary(&mut self, sc: &mut Scope, op: BinOp, l: (Value, Loc), r: (Value, Loc), loc: Loc) -> Value {
        use Value::*;
        match (&l.0, &r.0) {
            (Poison, _) | (_, Poison) => Poison,
            (Int(a), Int(b)) => {
                let (a, b) = (*a, *b);
                if matches!(op, BinOp::Div | BinOp::Rem) && b == 0 {
                    self.report(sc, ResolveError::Arithmetic { loc, problem: "division by zero" });
                    return Poison;
                }
                let v = match op {
                    BinOp::Add => a.checked_add(b),
                    BinOp::Sub => a.checked_sub(b),
                    BinOp::Mul => a.checked_mul(b),
                    BinOp::Div => a.checked_div_euclid(b),
                    BinOp::Rem => a.checked_rem_euclid(b),
                };
                v.map_or_else(|| self.overflow(sc, loc), Int)
            }
            (Int(_) | Float(_), Int(_) | Float(_)) => {
                let (a, b) = (super::number(&l.0).unwrap_or(0.0), super::number(&r.0).unwrap_or(0.0));
                let v = match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    BinOp::Div => a / b,
                    BinOp::Rem => a % b,
                };
                if v.is_finite() {
                    Float(v)
                } else {
                    self.report(sc, ResolveError::Arithmetic { loc, problem: "the result is not a finite number" });
                    Poison
                }
            }
            (Tensor(_) | Word(_), _) | (_, Tensor(_) | Word(_))
                if matches!(op, BinOp::Add | BinOp::Sub | BinOp::Mul) =>
            {
                let (layer, symbol) = match op {
                    BinOp::Add => ("add", "an operand of `+`"),
                    BinOp::Sub => ("sub", "an operand of `-`"),
                    _ => ("mul", "an operand of `*`"),
                };
                let a = self.expect_tensor(sc, &l.0, l.1, symbol);
                let b = self.expect_tensor(sc, &r.0, r.1, symbol);
                match (a, b) {
                    (Some(_), Some(_)) => {
                        let args = vec![
                            ArgValue { name: None, value: l.0.clone(), loc: l.1 },
                            ArgValue { name: None, value: r.0.clone(), loc: r.1 },
                        ];
                        let naming = self.naming(sc, layer, None, false);
                        self.layer(sc, layer, args, loc, naming)
                    }
                    _ => Poison,
                }
            }
            _ => {
                let found = format!("{} and {}", l.0.describe(&self.graph), r.0.describe(&self.graph));
                let expected = if matches!(l.0, Tensor(_)) || matches!(r.0, Tensor(_)) {
                    "numbers (of the operators, `+`, `-` and `*` apply to tensors, element-wise)".to_string()
                } else {
                    "numbers".to_string()
                };
                let what = format!("the operands of `{}`", op.symbol());
                self.report(sc, ResolveError::WrongType { loc, what, expected, found, origin: None });
                Poison
            }
        }
    }

    /// Evaluates a stage; a `repeat`'s value is noted for editors (a call notes its own).
    fn recorded_stage(&mut self, sc: &mut Scope, stage: &ast::Stage, input: Value, from: Loc) -> Value {
        let value = self.stage(sc, stage, input, from);
        match stage {
            ast::Stage::Repeat { .. } => self.record(sc.loc(stage.span()), String::new(), value),
            ast::Stage::Call(_) => value,
        }
    }

    fn stage(&mut self, sc: &mut Scope, stage: &ast::Stage, input: Value, from: Loc) -> Value {
        match stage {
            ast::Stage::Call(c) => self.call(sc, c, Some((input, from))),
            ast::Stage::Repeat { count, var, stages, frozen, .. } => {
                let count_loc = sc.loc(count.span);
                let n = match self.eval(sc, count) {
                    Value::Int(n) if (0..=MAX_REPEAT).contains(&n) => n,
                    Value::Poison => return Value::Poison,
                    other => {
                        let value = match other {
                            Value::Int(n) => n.to_string(),
                            o => o.describe(&self.graph),
                        };
                        let expected = format!("an integer from 0 to {MAX_REPEAT}");
                        self.report(
                            sc,
                            ResolveError::BadValue {
                                loc: count_loc,
                                what: "a repeat count".into(),
                                value,
                                expected,
                                candidates: vec![],
                            },
                        );
                        return Value::Poison;
                    }
                };
                let was_frozen = sc.frozen;
                sc.frozen |= *frozen;
                let mut value = input;
                let mut from = from;
                for i in 0..n {
                    if !self.tick(sc, count_loc) {
                        value = Value::Poison;
                        break;
                    }
                    if let Some(v) = var {
                        sc.slots.insert(
                            v.name.clone(),
                            Slot::Done { value: Value::Int(i), loc: sc.loc(v.span), binding: false },
                        );
                    }
                    for s in stages {
                        value = self.recorded_stage(sc, s, value, from);
                        from = sc.loc(s.span());
                    }
                    // A body that failed fails the same way every time: stop at the first.
                    if matches!(value, Value::Poison) {
                        break;
                    }
                }
                if let Some(v) = var {
                    sc.slots.remove(&v.name);
                }
                sc.frozen = was_frozen;
                value
            }
        }
    }

    /// Evaluates a call; `piped` is the pipeline's value, passed as the first argument.
    pub(super) fn call(&mut self, sc: &mut Scope, c: &ast::Call, piped: Option<(Value, Loc)>) -> Value {
        let loc = sc.loc(c.span);
        let mut args = Vec::with_capacity(c.args.len() + 1);
        if let Some((value, loc)) = piped {
            args.push(ArgValue { name: None, value, loc });
        }
        for a in &c.args {
            let value = self.eval(sc, &a.value);
            args.push(ArgValue { name: a.name.clone(), value, loc: sc.loc(a.value.span) });
        }
        let name = c.callee.name.as_str();
        let explicit = self.explicit_name(sc, &mut args);
        if super::layers::spec(name).is_some() {
            let naming = self.naming(sc, name, explicit, c.frozen);
            let path = naming.node.clone();
            let value = self.layer(sc, name, args, loc, naming);
            return self.record(loc, path, value);
        }
        if let Some(def) = self.program.modules[sc.module].blocks.get(name).cloned() {
            let naming = self.naming(sc, name, explicit, c.frozen);
            let path = naming.node.clone();
            let value = self.instantiate(sc, &def, args, loc, naming);
            return self.record(loc, path, value);
        }
        if let Some(Slot::Done { value: Value::Shared(shared), .. }) = sc.slots.get(name).cloned() {
            sc.referenced.insert(name.to_string());
            return self.apply_shared(sc, &shared, args, loc, c.frozen);
        }
        let mut names: Vec<&str> = super::LAYERS.iter().map(|l| l.name).collect();
        names.extend(self.program.modules[sc.module].blocks.keys().map(String::as_str));
        let candidates = similar(name, names);
        self.report(sc, ResolveError::UnknownLayer { loc: sc.loc(c.callee.span), name: name.to_string(), candidates });
        Value::Poison
    }

    /// Notes a call's value for editors, and returns it.
    pub(super) fn record(&mut self, loc: Loc, path: String, value: Value) -> Value {
        if let Value::Tensor(node) = value {
            self.calls.push(CallSite { loc, path, node });
        }
        value
    }

    /// Takes a `name: "..."` argument out of `args`, checking it is a fresh string.
    fn explicit_name(&mut self, sc: &mut Scope, args: &mut Vec<ArgValue>) -> Option<String> {
        let i = args.iter().position(|a| a.name.as_ref().is_some_and(|n| n.name == "name"))?;
        let arg = args.remove(i);
        match arg.value {
            Value::Str(s) if !s.is_empty() && !s.contains('/') && !s.contains('@') => {
                if let Some(first) = sc.explicit.get(&s) {
                    let first = *first;
                    self.report(sc, ResolveError::DuplicateDefinition { loc: arg.loc, first, name: s.clone() });
                }
                sc.explicit.insert(s.clone(), arg.loc);
                Some(s)
            }
            Value::Poison => None,
            other => {
                let value = other.describe(&self.graph);
                let expected = "a non-empty string without `/` or `@`".to_string();
                self.report(
                    sc,
                    ResolveError::BadValue {
                        loc: arg.loc,
                        what: "a layer name".into(),
                        value,
                        expected,
                        candidates: vec![],
                    },
                );
                None
            }
        }
    }

    /// Names for a new layer or block instance of `kind` in this scope.
    pub(super) fn naming(
        &mut self,
        sc: &mut Scope,
        kind: &str,
        explicit: Option<String>,
        frozen: bool,
    ) -> super::Naming {
        let local = explicit.unwrap_or_else(|| sc.local_name(kind));
        super::Naming {
            node: Scope::join(&sc.path, &local),
            params: Scope::join(&sc.param_path, &local),
            reuse: sc.reuse,
            frozen: sc.frozen || frozen,
        }
    }

    /// Whether a value is an op's output that can be fed onward (for messages).
    pub(super) fn origin(&self, value: &Value) -> Option<Loc> {
        match value {
            Value::Tensor(id) => {
                let node = self.graph.node(*id);
                (!matches!(node.op, Op::Param(_))).then_some(node.loc)
            }
            _ => None,
        }
    }
}
