//! Binding arguments to parameters (positional, then named) and converting argument values to
//! what a layer needs, with a reported error for anything else.

use super::eval::ArgValue;
use super::value::Value;
use super::{Elab, Scope};
use crate::error::{similar, ResolveError, ShapeError};
use crate::shape::Shape;
use crate::source::Loc;

/// A parameter as the binder sees it.
#[derive(Clone, Copy, Debug)]
pub struct ParamDecl<'a> {
    /// Its name.
    pub name: &'a str,
    /// Whether a call must give it.
    pub required: bool,
}

impl Elab<'_> {
    /// Binds `args` to `params`; returns one slot per parameter, or `None` after reporting.
    pub(super) fn bind_args(
        &mut self,
        sc: &Scope,
        callee: &str,
        params: &[ParamDecl],
        args: Vec<ArgValue>,
        call: Loc,
        def: Option<Loc>,
    ) -> Option<Vec<Option<ArgValue>>> {
        let mut slots: Vec<Option<ArgValue>> = vec![None; params.len()];
        let mut ok = true;
        let mut position = 0;
        for arg in args {
            let index = match &arg.name {
                None => {
                    position += 1;
                    if position > params.len() {
                        self.report(
                            sc,
                            ResolveError::TooManyArguments {
                                loc: arg.loc,
                                callee: callee.into(),
                                max: params.len(),
                                got: position,
                                def,
                            },
                        );
                        ok = false;
                        continue;
                    }
                    position - 1
                }
                Some(name) => match params.iter().position(|p| p.name == name.name) {
                    Some(i) => i,
                    None => {
                        let candidates = similar(&name.name, params.iter().map(|p| p.name).chain(["name"]));
                        let loc = sc.loc(name.span);
                        self.report(
                            sc,
                            ResolveError::UnknownArgument {
                                loc,
                                callee: callee.into(),
                                name: name.name.clone(),
                                candidates,
                                def,
                            },
                        );
                        ok = false;
                        continue;
                    }
                },
            };
            if let Some(first) = &slots[index] {
                let loc = arg.name.as_ref().map_or(arg.loc, |n| sc.loc(n.span));
                self.report(
                    sc,
                    ResolveError::DuplicateArgument { loc, first: first.loc, name: params[index].name.into() },
                );
                ok = false;
                continue;
            }
            slots[index] = Some(arg);
        }
        for (p, slot) in params.iter().zip(&slots) {
            if p.required && slot.is_none() && ok {
                self.report(
                    sc,
                    ResolveError::MissingArgument { loc: call, callee: callee.into(), name: p.name.into(), def },
                );
                ok = false;
            }
        }
        ok.then_some(slots)
    }

    pub(super) fn wrong(&mut self, sc: &Scope, arg: &ArgValue, what: &str, expected: &str) {
        if matches!(arg.value, Value::Poison) {
            return;
        }
        if let Value::Word(name) = &arg.value {
            let candidates = similar(name, self.visible_names(sc).iter().map(String::as_str));
            self.report(sc, ResolveError::UnknownName { loc: arg.loc, name: name.clone(), candidates });
            return;
        }
        let found = arg.value.describe(&self.graph);
        let origin = self.origin(&arg.value);
        self.report(
            sc,
            ResolveError::WrongType { loc: arg.loc, what: what.into(), expected: expected.into(), found, origin },
        );
    }

    fn out_of_range(&mut self, sc: &Scope, arg: &ArgValue, what: &str, value: String, expected: &str) {
        self.report(
            sc,
            ResolveError::BadValue {
                loc: arg.loc,
                what: what.into(),
                value,
                expected: expected.into(),
                candidates: vec![],
            },
        );
    }

    /// An integer of at least `min`.
    pub(super) fn arg_int(&mut self, sc: &Scope, arg: &ArgValue, what: &str, min: i64) -> Option<usize> {
        match arg.value {
            Value::Int(v) if v >= min => usize::try_from(v).ok(),
            Value::Int(v) => {
                self.out_of_range(sc, arg, what, v.to_string(), &format!("an integer of at least {min}"));
                None
            }
            _ => {
                self.wrong(sc, arg, what, "an integer");
                None
            }
        }
    }

    /// A number in `[lo, hi)` (or `[lo, hi]` when `closed`).
    pub(super) fn arg_float(
        &mut self,
        sc: &Scope,
        arg: &ArgValue,
        what: &str,
        lo: f64,
        hi: f64,
        closed: bool,
    ) -> Option<f32> {
        let v = match arg.value {
            Value::Int(v) => v as f64,
            Value::Float(v) => v,
            _ => {
                self.wrong(sc, arg, what, "a number");
                return None;
            }
        };
        if v >= lo && (v < hi || (closed && v == hi)) {
            Some(v as f32)
        } else {
            let range = format!("a number from {lo} to {hi}{}", if closed { "" } else { " (exclusive)" });
            self.out_of_range(sc, arg, what, v.to_string(), &range);
            None
        }
    }

    /// `true` or `false`.
    pub(super) fn arg_bool(&mut self, sc: &Scope, arg: &ArgValue, what: &str) -> Option<bool> {
        match arg.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.wrong(sc, arg, what, "`true` or `false`");
                None
            }
        }
    }

    /// One of `choices`, written as a bare name.
    pub(super) fn arg_choice(
        &mut self,
        sc: &Scope,
        arg: &ArgValue,
        what: &str,
        choices: &[&'static str],
    ) -> Option<&'static str> {
        match &arg.value {
            Value::Word(w) | Value::Str(w) => match choices.iter().find(|c| *c == w) {
                Some(c) => Some(c),
                None => {
                    let candidates = similar(w, choices.iter().copied());
                    let expected =
                        format!("one of {}", choices.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "));
                    self.report(
                        sc,
                        ResolveError::BadValue {
                            loc: arg.loc,
                            what: what.into(),
                            value: w.clone(),
                            expected,
                            candidates,
                        },
                    );
                    None
                }
            },
            _ => {
                let expected = format!("one of {}", choices.join(", "));
                self.wrong(sc, arg, what, &expected);
                None
            }
        }
    }

    /// One non-negative (or positive, `min = 1`) integer per spatial axis: a single integer applies to
    /// every axis; a size `3x3` or list `[3, 3]` must have one entry per axis of `input`.
    pub(super) fn arg_axes(
        &mut self,
        sc: &Scope,
        arg: &ArgValue,
        what: &'static str,
        min: i64,
        input: &Shape,
        origin: Loc,
    ) -> Option<Vec<usize>> {
        let rank = input.rank().saturating_sub(1).max(1);
        let items: Vec<Value> = match &arg.value {
            Value::Int(_) => vec![arg.value.clone(); rank],
            Value::Size(v) => v.iter().map(|&d| Value::Int(d)).collect(),
            Value::List(v) => v.iter().map(|(d, _)| d.clone()).collect(),
            _ => {
                self.wrong(sc, arg, what, "an integer, a size like `3x3`, or a list like `[3, 3]`");
                return None;
            }
        };
        if items.len() != rank {
            self.report(
                sc,
                ShapeError::SizeRank { loc: arg.loc, what, written: items.len(), input: input.clone(), origin },
            );
            return None;
        }
        let mut out = Vec::with_capacity(rank);
        for item in items {
            match item {
                Value::Int(v) if v >= min && v <= i64::from(u32::MAX) => out.push(v as usize),
                Value::Int(v) => {
                    let expected = format!("integers from {min} to {}", u32::MAX);
                    self.out_of_range(sc, arg, what, v.to_string(), &expected);
                    return None;
                }
                _ => {
                    self.wrong(sc, arg, what, "integers");
                    return None;
                }
            }
        }
        Some(out)
    }
}
