//! Applying a built-in layer: its arguments are bound to its spec's parameters, its family's
//! builder ([`crate::ops`]) makes the op and the parameters it needs through [`LayerArgs`], and
//! the op node is added once its rule has inferred its shape.

use super::args::ParamDecl;
use super::eval::ArgValue;
use super::value::Value;
use super::{Elab, Naming, Scope};
use crate::error::{ResolveError, ShapeError, Warning};
use crate::ir::op::*;
use crate::ir::{Node, NodeId};
use crate::ops::ParamNeed;
use crate::shape::{self, Shape, ShapeFault, MAX_ELEMENTS};
use crate::source::Loc;

pub use crate::ops::{spec, LayerSpec, Tensors, LAYERS};

/// Arguments bound to a one-tensor layer's parameters, by name.
struct Bound {
    call: Loc,
    x: NodeId,
    x_loc: Loc,
    slots: Vec<Option<ArgValue>>,
    names: &'static [(&'static str, bool)],
}

impl Bound {
    fn get(&self, name: &str) -> Option<&ArgValue> {
        let i = self.names.iter().position(|(n, _)| *n == name)?;
        self.slots.get(i + 1)?.as_ref()
    }
}

impl Elab<'_> {
    /// Applies built-in layer `name` to `args`.
    pub(super) fn layer(&mut self, sc: &mut Scope, name: &str, args: Vec<ArgValue>, loc: Loc, naming: Naming) -> Value {
        let Some(spec) = spec(name) else { return Value::Poison };
        if let Tensors::Many(min) = spec.tensors {
            return self.many(sc, spec, args, loc, naming, min);
        }
        let mut decls = vec![ParamDecl { name: "x", required: true }];
        decls.extend(spec.params.iter().map(|&(name, required)| ParamDecl { name, required }));
        let Some(mut slots) = self.bind_args(sc, name, &decls, args, loc, None) else { return Value::Poison };
        let Some(x_arg) = slots[0].take() else { return Value::Poison };
        let Some(x) = self.expect_tensor(sc, &x_arg.value, x_arg.loc, &format!("the input of `{name}`")) else {
            return Value::Poison;
        };
        let b = Bound { call: loc, x, x_loc: x_arg.loc, slots, names: spec.params };
        let built = (spec.build)(&mut LayerArgs { elab: self, sc, b: &b, node: &naming.node });
        let Some((op, params)) = built else { return Value::Poison };
        // `round: floor` written out says the rows and columns a floor drops are meant.
        let meant = b.get("round").is_some();
        self.finish(sc, op, &[(x, b.x_loc)], params, loc, naming, meant)
    }

    fn many(
        &mut self,
        sc: &mut Scope,
        spec: &LayerSpec,
        args: Vec<ArgValue>,
        loc: Loc,
        naming: Naming,
        min: usize,
    ) -> Value {
        let mut inputs = Vec::new();
        let mut poisoned = false;
        for arg in args {
            if let Some(n) = &arg.name {
                let candidates = vec![];
                let loc = sc.loc(n.span);
                self.report(
                    sc,
                    ResolveError::UnknownArgument {
                        loc,
                        callee: spec.name.into(),
                        name: n.name.clone(),
                        candidates,
                        def: None,
                    },
                );
                return Value::Poison;
            }
            match self.expect_tensor(sc, &arg.value, arg.loc, &format!("an input of `{}`", spec.name)) {
                Some(id) => inputs.push((id, arg.loc)),
                None => poisoned = true,
            }
        }
        if poisoned {
            return Value::Poison;
        }
        if inputs.len() < min {
            let name = if inputs.is_empty() { "a" } else { "b" };
            self.report(
                sc,
                ResolveError::MissingArgument { loc, callee: spec.name.into(), name: name.into(), def: None },
            );
            return Value::Poison;
        }
        let b = Bound { call: loc, x: inputs[0].0, x_loc: inputs[0].1, slots: Vec::new(), names: &[] };
        let built = (spec.build)(&mut LayerArgs { elab: self, sc, b: &b, node: &naming.node });
        let Some((op, params)) = built else { return Value::Poison };
        self.finish(sc, op, &inputs, params, loc, naming, false)
    }

    /// Infers the op's shape; if it checks, adds its parameters and the op node. A floor that
    /// leaves input unread is a warning unless `unread_meant` (`round: floor` written out).
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        sc: &mut Scope,
        op: Op,
        inputs: &[(NodeId, Loc)],
        params: Vec<ParamNeed>,
        loc: Loc,
        naming: Naming,
        unread_meant: bool,
    ) -> Value {
        let input_shapes: Vec<Shape> = inputs.iter().map(|(id, _)| self.graph.node(*id).shape.clone()).collect();
        let mut shapes: Vec<&Shape> = input_shapes.iter().collect();
        shapes.extend(params.iter().map(|p| &p.shape));
        let fault = |this: &mut Self, sc: &Scope, fault: ShapeFault| {
            let inputs =
                inputs.iter().map(|(id, l)| (this.graph.node(*id).shape.clone(), this.origin_or(*id, *l))).collect();
            this.report(sc, ShapeError::Layer { loc, layer: naming.node.clone(), op: op.mnemonic(), fault, inputs });
            Value::Poison
        };
        if let Some(p) = params.iter().find(|p| p.shape.elements().is_none_or(|n| n > MAX_ELEMENTS)) {
            return fault(self, sc, ShapeFault::TooLarge { shape: p.shape.0.clone() });
        }
        let inferred = match shape::infer(&op, &shapes) {
            Ok(i) => i,
            Err(f) => return fault(self, sc, f),
        };
        let rank = input_shapes.first().map_or(0, |s| s.rank().saturating_sub(1));
        if !inferred.unread.is_empty() && !unread_meant {
            let w = Warning::UnreadInput { loc, layer: naming.node.clone(), calcs: inferred.unread.clone(), rank };
            self.report(sc, w);
        }
        let mut ids: Vec<NodeId> = inputs.iter().map(|(id, _)| *id).collect();
        for p in params {
            match self.param(sc, &naming, p, loc) {
                Ok(Some(id)) => ids.push(id),
                Ok(None) => return Value::Poison,
                Err(f) => return fault(self, sc, f),
            }
        }
        let node = Node { op, name: naming.node.clone(), loc, shape: inferred.shape, extra: inferred.extra };
        self.add_node(sc, node, &ids).map_or(Value::Poison, Value::Tensor)
    }

    /// Where the value of node `id` came from, for secondary labels: the op's own location, or
    /// where it was passed if it is a model input.
    fn origin_or(&self, id: NodeId, passed: Loc) -> Loc {
        let node = self.graph.node(id);
        if node.loc.file == passed.file {
            node.loc
        } else {
            passed
        }
    }

    /// Creates (or, in a shared instance, finds) a parameter node.
    fn param(&mut self, sc: &Scope, naming: &Naming, p: ParamNeed, loc: Loc) -> Result<Option<NodeId>, ShapeFault> {
        let name = format!("{}/{}", naming.params, p.role.suffix());
        if let Some(&id) = self.params.get(&name) {
            let existing = &self.graph.node(id).shape;
            if *existing != p.shape {
                return Err(ShapeFault::ParamShape { expected: existing.clone(), got: p.shape });
            }
            if naming.reuse {
                return Ok(Some(id));
            }
        }
        let frozen = naming.frozen || p.frozen;
        let op = Op::Param(ParamOp { role: p.role, init: p.init, frozen, value: p.value });
        let id = self.add_node(sc, Node::new(op, name.clone(), loc, p.shape), &[]);
        if let Some(id) = id {
            self.params.insert(name, id);
        }
        Ok(id)
    }

    /// The `pad` argument of a windowed layer: before and after, per axis.
    fn padding(
        &mut self,
        sc: &Scope,
        b: &Bound,
        size: &[usize],
        stride: &[usize],
        dilation: &[usize],
    ) -> Option<Vec<(usize, usize)>> {
        let Some(arg) = b.get("pad") else { return Some(vec![(0, 0); size.len()]) };
        let x = self.graph.node(b.x).shape.clone();
        if let Value::Word(_) | Value::Str(_) = arg.value {
            return match self.arg_choice(sc, arg, "padding", &["valid", "same"])? {
                "valid" => Some(vec![(0, 0); size.len()]),
                _ => Some(
                    (0..size.len())
                        .map(|i| {
                            shape::same_padding(
                                x.spatial()[i],
                                dilation[i].saturating_mul(size[i] - 1).saturating_add(1),
                                stride[i],
                            )
                        })
                        .collect(),
                ),
            };
        }
        let p = self.arg_axes(sc, arg, "padding", 0, &x, b.x_loc)?;
        Some(p.into_iter().map(|p| (p, p)).collect())
    }

    fn window_rank(&mut self, sc: &Scope, b: &Bound, op: &str) -> Option<Shape> {
        let x = self.graph.node(b.x).shape.clone();
        if (2..=4).contains(&x.rank()) {
            return Some(x);
        }
        let fault = ShapeFault::Rank { expected: "[n, n_C], [n_H, n_W, n_C] or [n_D, n_H, n_W, n_C]", got: x.clone() };
        let inputs = vec![(x, self.origin_or(b.x, b.x_loc))];
        self.report(sc, ShapeError::Layer { loc: b.call, layer: String::new(), op: op.into(), fault, inputs });
        None
    }
}

/// What a layer's builder sees: the call's arguments, read through checked accessors that report
/// a bad value (and then give `None`), and the input's shape.
pub(crate) struct LayerArgs<'e, 'p> {
    elab: &'e mut Elab<'p>,
    sc: &'e Scope,
    b: &'e Bound,
    node: &'e str,
}

impl LayerArgs<'_, '_> {
    /// The shape of the (first) input.
    pub fn x(&self) -> Shape {
        self.elab.graph.node(self.b.x).shape.clone()
    }

    /// A hash of the layer's name: a value fixed by the model file, never by node numbers.
    pub fn salt(&self) -> u64 {
        crate::ir::name_hash(self.node)
    }

    /// The input's shape if a window op (`op`) can take it; reported otherwise.
    pub fn window_input(&mut self, op: &str) -> Option<Shape> {
        self.elab.window_rank(self.sc, self.b, op)
    }

    /// Whether the call gives argument `name`.
    pub fn given(&self, name: &str) -> bool {
        self.b.get(name).is_some()
    }

    /// An integer of at least `min`, or `default` when not given.
    pub fn int(&mut self, name: &str, what: &str, min: i64, default: Option<usize>) -> Option<usize> {
        match self.b.get(name) {
            Some(a) => self.elab.arg_int(self.sc, a, what, min),
            None => default,
        }
    }

    /// One integer of at least `min` per spatial axis, or `default` when not given.
    pub fn axes(
        &mut self,
        name: &str,
        what: &'static str,
        min: i64,
        default: Option<Vec<usize>>,
    ) -> Option<Vec<usize>> {
        match self.b.get(name) {
            Some(a) => {
                let x = self.x();
                self.elab.arg_axes(self.sc, a, what, min, &x, self.b.x_loc)
            }
            None => default,
        }
    }

    /// A number in `[lo, hi)` (`[lo, hi]` when `closed`), or `default` when not given.
    pub fn float(&mut self, name: &str, what: &str, range: (f64, f64, bool), default: Option<f32>) -> Option<f32> {
        match self.b.get(name) {
            Some(a) => self.elab.arg_float(self.sc, a, what, range.0, range.1, range.2),
            None => default,
        }
    }

    /// `true` or `false`, or `default` when not given.
    pub fn flag(&mut self, name: &str, what: &str, default: bool) -> Option<bool> {
        match self.b.get(name) {
            Some(a) => self.elab.arg_bool(self.sc, a, what),
            None => Some(default),
        }
    }

    /// One of `choices`, or `default` when not given.
    pub fn choice(
        &mut self,
        name: &str,
        what: &str,
        choices: &[&'static str],
        default: &'static str,
    ) -> Option<&'static str> {
        match self.b.get(name) {
            Some(a) => self.elab.arg_choice(self.sc, a, what, choices),
            None => Some(default),
        }
    }

    /// The `pad` argument of a window op: before and after, per axis (`same` solved per axis).
    pub fn padding(&mut self, size: &[usize], stride: &[usize], dilation: &[usize]) -> Option<Vec<(usize, usize)>> {
        self.elab.padding(self.sc, self.b, size, stride, dilation)
    }

    /// A constant tensor argument: `Some(None)` when not given, `None` after reporting another value.
    pub fn constant(&mut self, name: &str, what: &str) -> Option<Option<super::value::ConstValue>> {
        let Some(a) = self.b.get(name) else { return Some(None) };
        match &a.value {
            Value::Const(c) => Some(Some((**c).clone())),
            _ => {
                self.elab.wrong(self.sc, a, what, "a constant declared with `const`");
                None
            }
        }
    }
}
