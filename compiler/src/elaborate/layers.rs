//! The built-in layers: their signatures, and how a call becomes parameter nodes and an op node
//! whose shape the op's rule infers.

use super::args::ParamDecl;
use super::eval::ArgValue;
use super::value::Value;
use super::{Elab, Naming, Scope};
use crate::error::{ResolveError, ShapeError, Warning};
use crate::ir::op::*;
use crate::ir::{Node, NodeId};
use crate::shape::{self, Shape, ShapeFault, MAX_ELEMENTS};
use crate::source::Loc;
use std::sync::Arc;

/// How many tensors a layer takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tensors {
    /// One, piped or first positional.
    One,
    /// Two or more (`add`) or one or more (`concat`), all positional.
    Many(usize),
}

/// A built-in layer's signature.
#[derive(Clone, Copy, Debug)]
pub struct LayerSpec {
    /// Its name in `.cnn` files.
    pub name: &'static str,
    /// Tensor inputs.
    pub tensors: Tensors,
    /// Value parameters in positional order, with whether each is required.
    pub params: &'static [(&'static str, bool)],
    /// The signature as documented.
    pub signature: &'static str,
    /// One line on what it computes.
    pub doc: &'static str,
}

const POOL: &[(&str, bool)] = &[("size", true), ("stride", false), ("pad", false), ("round", false)];

/// Every built-in layer.
pub static LAYERS: &[LayerSpec] = &[
    LayerSpec {
        name: "conv",
        tensors: Tensors::One,
        params: &[
            ("filters", true),
            ("size", true),
            ("stride", false),
            ("pad", false),
            ("dilation", false),
            ("groups", false),
            ("bias", false),
            ("weights", false),
            ("init", false),
        ],
        signature:
            "conv(filters, size, stride: 1, pad: valid, dilation: 1, groups: 1, bias: true, weights: CONST, init: he)",
        doc: "Convolution over 1, 2 or 3 spatial axes (by the input's rank).",
    },
    LayerSpec {
        name: "maxpool",
        tensors: Tensors::One,
        params: POOL,
        signature: "maxpool(size, stride: size, pad: valid, round: floor)",
        doc: "Maximum over each window.",
    },
    LayerSpec {
        name: "avgpool",
        tensors: Tensors::One,
        params: POOL,
        signature: "avgpool(size, stride: size, pad: valid, round: floor)",
        doc: "Mean over each window (padding not counted).",
    },
    LayerSpec {
        name: "global_avgpool",
        tensors: Tensors::One,
        params: &[],
        signature: "global_avgpool",
        doc: "Mean over all positions: [.., n_C] to [n_C].",
    },
    LayerSpec {
        name: "global_maxpool",
        tensors: Tensors::One,
        params: &[],
        signature: "global_maxpool",
        doc: "Maximum over all positions: [.., n_C] to [n_C].",
    },
    LayerSpec {
        name: "dense",
        tensors: Tensors::One,
        params: &[("units", true), ("bias", false), ("init", false)],
        signature: "dense(units, bias: true, init: glorot)",
        doc: "Fully connected layer on a flat [n] input.",
    },
    LayerSpec {
        name: "flatten",
        tensors: Tensors::One,
        params: &[],
        signature: "flatten",
        doc: "Any shape to [product of axes].",
    },
    LayerSpec {
        name: "batchnorm",
        tensors: Tensors::One,
        params: &[("eps", false), ("momentum", false)],
        signature: "batchnorm(eps: 1e-5, momentum: 0.1)",
        doc: "Batch normalization over the channel axis.",
    },
    LayerSpec {
        name: "dropout",
        tensors: Tensors::One,
        params: &[("rate", true)],
        signature: "dropout(rate)",
        doc: "Zeroes a fraction of values while training.",
    },
    LayerSpec { name: "relu", tensors: Tensors::One, params: &[], signature: "relu", doc: "max(x, 0)." },
    LayerSpec {
        name: "leaky_relu",
        tensors: Tensors::One,
        params: &[("alpha", false)],
        signature: "leaky_relu(alpha: 0.01)",
        doc: "x if positive, else alpha·x.",
    },
    LayerSpec {
        name: "prelu",
        tensors: Tensors::One,
        params: &[],
        signature: "prelu",
        doc: "Leaky ReLU with a learned slope per channel.",
    },
    LayerSpec { name: "tanh", tensors: Tensors::One, params: &[], signature: "tanh", doc: "Hyperbolic tangent." },
    LayerSpec { name: "sigmoid", tensors: Tensors::One, params: &[], signature: "sigmoid", doc: "Logistic sigmoid." },
    LayerSpec {
        name: "softmax",
        tensors: Tensors::One,
        params: &[],
        signature: "softmax",
        doc: "Softmax over the last axis.",
    },
    LayerSpec {
        name: "add",
        tensors: Tensors::Many(2),
        params: &[],
        signature: "add(a, b, ...)",
        doc: "Element-wise sum; `a + b` is the same.",
    },
    LayerSpec {
        name: "concat",
        tensors: Tensors::Many(1),
        params: &[],
        signature: "concat(a, b, ...)",
        doc: "Concatenation along channels; other axes must agree.",
    },
];

/// The built-in layer called `name`.
pub fn spec(name: &str) -> Option<&'static LayerSpec> {
    LAYERS.iter().find(|l| l.name == name)
}

/// A parameter a layer needs.
struct ParamNeed {
    role: ParamRole,
    shape: Shape,
    init: Init,
    value: Option<Arc<[f32]>>,
    frozen: bool,
}

impl ParamNeed {
    fn new(role: ParamRole, shape: Vec<usize>, init: Init) -> Self {
        ParamNeed { role, shape: Shape(shape), init, value: None, frozen: false }
    }
}

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
        let built = match name {
            "conv" => self.conv(sc, &b),
            "maxpool" | "avgpool" => self.pool(sc, &b, if name == "maxpool" { PoolKind::Max } else { PoolKind::Avg }),
            "global_avgpool" => Some((Op::GlobalPool(PoolKind::Avg), vec![])),
            "global_maxpool" => Some((Op::GlobalPool(PoolKind::Max), vec![])),
            "dense" => self.dense(sc, &b),
            "flatten" => Some((Op::Flatten, vec![])),
            "batchnorm" => self.batchnorm(sc, &b),
            "dropout" => b
                .get("rate")
                .and_then(|a| self.arg_float(sc, a, "a dropout rate", 0.0, 1.0, false))
                .map(|rate| (Op::Dropout(DropoutOp { rate, salt: crate::ir::name_hash(&naming.node) }), vec![])),
            "relu" => Some((Op::Activation(Activation::Relu), vec![])),
            "tanh" => Some((Op::Activation(Activation::Tanh), vec![])),
            "sigmoid" => Some((Op::Activation(Activation::Sigmoid), vec![])),
            "softmax" => Some((Op::Activation(Activation::Softmax), vec![])),
            "leaky_relu" => match b.get("alpha") {
                Some(a) => self.arg_float(sc, a, "a leaky ReLU slope", 0.0, 1.0, true),
                None => Some(0.01),
            }
            .map(|alpha| (Op::Activation(Activation::LeakyRelu { alpha }), vec![])),
            "prelu" => {
                let c = self.graph.node(x).shape.channels();
                Some((Op::PRelu, vec![ParamNeed::new(ParamRole::Slope, vec![c], Init::Fill(0.25))]))
            }
            _ => None,
        };
        let Some((op, params)) = built else { return Value::Poison };
        self.finish(sc, op, &[(x, b.x_loc)], params, loc, naming)
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
        let op = if spec.name == "add" { Op::Add } else { Op::Concat };
        self.finish(sc, op, &inputs, vec![], loc, naming)
    }

    /// Infers the op's shape; if it checks, adds its parameters and the op node.
    fn finish(
        &mut self,
        sc: &mut Scope,
        op: Op,
        inputs: &[(NodeId, Loc)],
        params: Vec<ParamNeed>,
        loc: Loc,
        naming: Naming,
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
        if !inferred.unread.is_empty() {
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

    fn conv(&mut self, sc: &Scope, b: &Bound) -> Option<(Op, Vec<ParamNeed>)> {
        let x = self.window_rank(sc, b, "conv")?;
        let ones = vec![1; x.rank() - 1];
        let filters = self.arg_int(sc, b.get("filters")?, "a filter count", 1)?;
        let size = self.arg_axes(sc, b.get("size")?, "filter size", 1, &x, b.x_loc)?;
        let stride = match b.get("stride") {
            Some(a) => self.arg_axes(sc, a, "stride", 1, &x, b.x_loc)?,
            None => ones.clone(),
        };
        let dilation = match b.get("dilation") {
            Some(a) => self.arg_axes(sc, a, "dilation", 1, &x, b.x_loc)?,
            None => ones,
        };
        let pad = self.padding(sc, b, &size, &stride, &dilation)?;
        let groups = match b.get("groups") {
            Some(a) => self.arg_int(sc, a, "a group count", 1)?,
            None => 1,
        };
        let bias = match b.get("bias") {
            Some(a) => self.arg_bool(sc, a, "`bias`")?,
            None => true,
        };
        let init = match b.get("init") {
            Some(a) => init_of(self.arg_choice(sc, a, "an initializer", &["he", "glorot"])?),
            None => Init::He,
        };
        let op = ConvOp { filters, size, stride, pad, dilation, groups };
        let mut weight = ParamNeed::new(ParamRole::Weight, shape::conv_weight_shape(&op, x.channels()).0, init);
        let mut fixed = false;
        if let Some(a) = b.get("weights") {
            match &a.value {
                Value::Const(c) => {
                    weight.shape = Shape(c.shape.clone());
                    weight.init = Init::Constant;
                    weight.value = Some(c.data.clone());
                    weight.frozen = true;
                    fixed = true;
                }
                _ => {
                    self.wrong(sc, a, "`weights`", "a constant declared with `const`");
                    return None;
                }
            }
        }
        let mut params = vec![weight];
        if bias {
            let mut bias = ParamNeed::new(ParamRole::Bias, vec![op.filters], Init::Zeros);
            bias.frozen = fixed;
            params.push(bias);
        }
        Some((Op::Conv(op), params))
    }

    fn pool(&mut self, sc: &Scope, b: &Bound, kind: PoolKind) -> Option<(Op, Vec<ParamNeed>)> {
        let x = self.window_rank(sc, b, if kind == PoolKind::Max { "maxpool" } else { "avgpool" })?;
        let size = self.arg_axes(sc, b.get("size")?, "window size", 1, &x, b.x_loc)?;
        let stride = match b.get("stride") {
            Some(a) => self.arg_axes(sc, a, "stride", 1, &x, b.x_loc)?,
            None => size.clone(),
        };
        let ones = vec![1; size.len()];
        let pad = self.padding(sc, b, &size, &stride, &ones)?;
        let ceil = match b.get("round") {
            Some(a) => self.arg_choice(sc, a, "rounding", &["floor", "ceil"])? == "ceil",
            None => false,
        };
        Some((Op::Pool(PoolOp { kind, size, stride, pad, ceil }), vec![]))
    }

    fn dense(&mut self, sc: &Scope, b: &Bound) -> Option<(Op, Vec<ParamNeed>)> {
        let units = self.arg_int(sc, b.get("units")?, "a unit count", 1)?;
        let bias = match b.get("bias") {
            Some(a) => self.arg_bool(sc, a, "`bias`")?,
            None => true,
        };
        let init = match b.get("init") {
            Some(a) => init_of(self.arg_choice(sc, a, "an initializer", &["he", "glorot"])?),
            None => Init::Glorot,
        };
        let x = &self.graph.node(b.x).shape;
        // A non-flat input is reported by the shape rule; the weight shape then does not matter.
        let n = if x.rank() == 1 { x.0[0] } else { 0 };
        let mut params = vec![ParamNeed::new(ParamRole::Weight, vec![n, units], init)];
        if bias {
            params.push(ParamNeed::new(ParamRole::Bias, vec![units], Init::Zeros));
        }
        Some((Op::Dense(DenseOp { units }), params))
    }

    fn batchnorm(&mut self, sc: &Scope, b: &Bound) -> Option<(Op, Vec<ParamNeed>)> {
        let eps = match b.get("eps") {
            Some(a) => self.arg_float(sc, a, "`eps`", 0.0, 1.0, true)?,
            None => 1e-5,
        };
        let momentum = match b.get("momentum") {
            Some(a) => self.arg_float(sc, a, "`momentum`", 0.0, 1.0, true)?,
            None => 0.1,
        };
        let c = self.graph.node(b.x).shape.channels();
        let params = vec![
            ParamNeed::new(ParamRole::Gamma, vec![c], Init::Ones),
            ParamNeed::new(ParamRole::Beta, vec![c], Init::Zeros),
            ParamNeed::new(ParamRole::RunningMean, vec![c], Init::Zeros),
            ParamNeed::new(ParamRole::RunningVar, vec![c], Init::Ones),
        ];
        Some((Op::BatchNorm(BatchNormOp { eps, momentum, training: false }), params))
    }
}

fn init_of(name: &str) -> Init {
    if name == "glorot" {
        Init::Glorot
    } else {
        Init::He
    }
}
