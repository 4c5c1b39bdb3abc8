//! ONNX export: a model's inference graph and its parameters as an ONNX model (opset 17), for
//! ONNX Runtime and every tool that reads ONNX.
//!
//! cnnc keeps images channels-last (`[n, h, w, c]`); ONNX's convolution and pooling operators
//! take channels-first. The exported model takes and gives tensors exactly as cnnc does
//! (channels-last), with `Transpose` nodes where a value moves between the two layouts (after an
//! image input, before a flatten, before an image output), so that dense layers after a flatten
//! keep cnnc's weights and a caller feeds the same arrays to both. Filters are written as ONNX
//! wants them, `[c_out, c_in/groups, k..]`.
//!
//! The messages are the subset of `onnx.proto` the exporter writes, encoded with prost.

use crate::params::Params;
use cnnc_compiler::ir::op::{Activation, Arith, Op, PoolKind};
use cnnc_compiler::ir::{Graph, NodeId};
use std::collections::HashMap;

/// Protocol-buffer messages of `onnx.proto` (the fields written here, with their tags).
pub mod proto {
    #![allow(missing_docs)]

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(int64, tag = "1")]
        pub ir_version: i64,
        #[prost(string, tag = "2")]
        pub producer_name: String,
        #[prost(string, tag = "3")]
        pub producer_version: String,
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OperatorSetIdProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OperatorSetIdProto {
        #[prost(string, tag = "1")]
        pub domain: String,
        #[prost(int64, tag = "2")]
        pub version: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfoProto>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfoProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        #[prost(string, tag = "3")]
        pub name: String,
        #[prost(string, tag = "4")]
        pub op_type: String,
        #[prost(message, repeated, tag = "5")]
        pub attribute: Vec<AttributeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(float, tag = "2")]
        pub f: f32,
        #[prost(int64, tag = "3")]
        pub i: i64,
        #[prost(int64, repeated, tag = "8")]
        pub ints: Vec<i64>,
        /// 1 float, 2 int, 7 ints.
        #[prost(int32, tag = "20")]
        pub r#type: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        #[prost(int64, repeated, tag = "1")]
        pub dims: Vec<i64>,
        /// 1 float, 7 int64.
        #[prost(int32, tag = "2")]
        pub data_type: i32,
        /// Values as floats, when not in `raw_data` (read by the importer; never written).
        #[prost(float, repeated, tag = "4")]
        pub float_data: Vec<f32>,
        #[prost(string, tag = "8")]
        pub name: String,
        #[prost(bytes = "vec", tag = "9")]
        pub raw_data: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfoProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<TypeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeProto {
        #[prost(message, optional, tag = "1")]
        pub tensor_type: Option<TensorTypeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorTypeProto {
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<Dimension>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(int64, optional, tag = "1")]
        pub dim_value: Option<i64>,
        #[prost(string, optional, tag = "2")]
        pub dim_param: Option<String>,
    }
}

use proto::*;

/// Where a value's channels are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// As cnnc has it: channels last (also every vector `[n, d]`).
    Last,
    /// Channels first, as ONNX's convolution and pooling take them.
    First,
}

/// The ONNX model of the inference graph `graph` (from `inference::run`) with the values of
/// `params`, encoded.
pub fn export(graph: &Graph, params: &Params) -> Result<Vec<u8>, String> {
    let mut x =
        Exporter { graph, params, nodes: Vec::new(), inits: Vec::new(), names: HashMap::new(), moved: HashMap::new() };
    let order = graph.topo_order().ok_or("the graph has a cycle")?;
    let mut inputs = Vec::new();
    for id in order {
        x.node(id, &mut inputs)?;
    }
    let mut outputs = Vec::new();
    for (name, id) in graph.outputs() {
        let value = x.at(*id, Layout::Last)?;
        x.nodes.push(node("Identity", &format!("output/{name}"), vec![value], vec![name.clone()], vec![]));
        outputs.push(info(name, &batched(&graph.node(*id).shape.0)));
    }
    let model = ModelProto {
        ir_version: 8,
        producer_name: "cnnc".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(GraphProto {
            node: x.nodes,
            name: graph.name.clone(),
            initializer: x.inits,
            input: inputs,
            output: outputs,
        }),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
    };
    Ok(prost::Message::encode_to_vec(&model))
}

struct Exporter<'g> {
    graph: &'g Graph,
    params: &'g Params,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    /// Each value's ONNX name and layout.
    names: HashMap<NodeId, (String, Layout)>,
    /// Values already moved to the other layout.
    moved: HashMap<NodeId, String>,
}

impl Exporter<'_> {
    /// Rank of a value with its batch axis.
    fn rank(&self, id: NodeId) -> usize {
        self.graph.node(id).shape.0.len() + 1
    }

    /// Where value `id` keeps its channels now (element-wise ops keep that layout).
    fn layout_of(&self, id: NodeId) -> Layout {
        self.names.get(&id).map_or(Layout::Last, |v| v.1)
    }

    /// The name of value `id` in `layout`, moving it there (once) if it is elsewhere.
    fn at(&mut self, id: NodeId, layout: Layout) -> Result<String, String> {
        let (name, has) = self
            .names
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("`{}` is used before it is made", self.graph.node(id).name))?;
        let rank = self.rank(id);
        if has == layout || rank < 3 {
            return Ok(name);
        }
        if let Some(moved) = self.moved.get(&id) {
            return Ok(moved.clone());
        }
        let perm = match layout {
            Layout::First => first_perm(rank),
            Layout::Last => last_perm(rank),
        };
        let out = format!("{name}/{}", if layout == Layout::First { "channels_first" } else { "channels_last" });
        self.nodes.push(node("Transpose", &out, vec![name], vec![out.clone()], vec![ints("perm", &perm)]));
        self.moved.insert(id, out.clone());
        Ok(out)
    }

    fn set(&mut self, id: NodeId, layout: Layout) -> String {
        let name = self.graph.node(id).name.clone();
        self.names.insert(id, (name.clone(), layout));
        name
    }

    /// An initializer of `values` with `dims`, named `name`.
    fn init(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.inits.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: 1,
            name: name.into(),
            raw_data: raw,
            float_data: Vec::new(),
        });
        name.to_string()
    }

    fn init_i64(&mut self, name: &str, values: &[i64]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.inits.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: 7,
            name: name.into(),
            raw_data: raw,
            float_data: Vec::new(),
        });
        name.to_string()
    }

    fn param(&self, id: NodeId) -> Result<Vec<f32>, String> {
        let name = &self.graph.node(id).name;
        let view = self.params.get(name).ok_or_else(|| format!("no values for parameter `{name}`"))?;
        Ok(view.iter().copied().collect())
    }

    fn node(&mut self, id: NodeId, inputs: &mut Vec<ValueInfoProto>) -> Result<(), String> {
        let g = self.graph;
        let n = g.node(id);
        let ops = g.operands(id);
        let rank = self.rank(id);
        let name = n.name.clone();
        match &n.op {
            Op::Input(_) => {
                inputs.push(info(&name, &batched(&n.shape.0)));
                self.set(id, Layout::Last);
            }
            // Parameters become initializers where their op reads them.
            Op::Param(_) => {}
            Op::Conv(c) => {
                let x = self.at(ops[0], Layout::First)?;
                let w = self.param(ops[1])?;
                let shape = &g.node(ops[1]).shape.0;
                let (taps, cin, cout) = (
                    shape[..shape.len() - 2].iter().product::<usize>(),
                    shape[shape.len() - 2],
                    shape[shape.len() - 1],
                );
                // [k.., cin, cout] -> [cout, cin, k..]
                let mut turned = vec![0f32; w.len()];
                for t in 0..taps {
                    for ci in 0..cin {
                        for co in 0..cout {
                            turned[(co * cin + ci) * taps + t] = w[(t * cin + ci) * cout + co];
                        }
                    }
                }
                let mut dims = vec![cout, cin];
                dims.extend(&shape[..shape.len() - 2]);
                let mut ins = vec![x, self.init(&g.node(ops[1]).name, &dims, &turned)];
                if let Some(&b) = ops.get(2) {
                    let values = self.param(b)?;
                    ins.push(self.init(&g.node(b).name, &[cout], &values));
                }
                let pads: Vec<usize> = c.pad.iter().map(|p| p.0).chain(c.pad.iter().map(|p| p.1)).collect();
                let attrs = vec![
                    ints("kernel_shape", &c.size),
                    ints("strides", &c.stride),
                    ints("pads", &pads),
                    ints("dilations", &c.dilation),
                    int("group", c.groups as i64),
                ];
                let out = self.set(id, Layout::First);
                self.nodes.push(node("Conv", &name, ins, vec![out], attrs));
            }
            Op::Pool(p) => {
                let x = self.at(ops[0], Layout::First)?;
                let pads: Vec<usize> = p.pad.iter().map(|q| q.0).chain(p.pad.iter().map(|q| q.1)).collect();
                let mut attrs = vec![
                    ints("kernel_shape", &p.size),
                    ints("strides", &p.stride),
                    ints("pads", &pads),
                    int("ceil_mode", i64::from(p.ceil)),
                ];
                let op = match p.kind {
                    PoolKind::Max => "MaxPool",
                    PoolKind::Avg => {
                        attrs.push(int("count_include_pad", 0));
                        "AveragePool"
                    }
                };
                let out = self.set(id, Layout::First);
                self.nodes.push(node(op, &name, vec![x], vec![out], attrs));
            }
            Op::GlobalPool(kind) => {
                let x = self.at(ops[0], Layout::First)?;
                let op = if *kind == PoolKind::Max { "GlobalMaxPool" } else { "GlobalAveragePool" };
                let pooled = format!("{name}/pooled");
                self.nodes.push(node(op, &pooled, vec![x], vec![pooled.clone()], vec![]));
                let out = self.set(id, Layout::Last);
                self.nodes.push(node("Flatten", &name, vec![pooled], vec![out], vec![int("axis", 1)]));
            }
            Op::Dense(d) => {
                let x = self.at(ops[0], Layout::Last)?;
                let w = self.param(ops[1])?;
                let k = w.len() / d.units.max(1);
                let mut ins = vec![x, self.init(&g.node(ops[1]).name, &[k, d.units], &w)];
                if let Some(&b) = ops.get(2) {
                    let values = self.param(b)?;
                    ins.push(self.init(&g.node(b).name, &[d.units], &values));
                }
                let out = self.set(id, Layout::Last);
                self.nodes.push(node("Gemm", &name, ins, vec![out], vec![]));
            }
            Op::Flatten => {
                let x = self.at(ops[0], Layout::Last)?;
                let out = self.set(id, Layout::Last);
                self.nodes.push(node("Flatten", &name, vec![x], vec![out], vec![int("axis", 1)]));
            }
            Op::BatchNorm(b) => {
                if b.training {
                    return Err("batchnorm in training mode cannot be exported (export the inference graph)".into());
                }
                let x = self.at(ops[0], Layout::First)?;
                let mut ins = vec![x];
                for &p in &ops[1..5] {
                    let values = self.param(p)?;
                    ins.push(self.init(&g.node(p).name, &[values.len()], &values));
                }
                // cnnc's ports: x, γ, β, running mean, running var — ONNX's order too.
                let layout = if rank >= 3 { Layout::First } else { Layout::Last };
                let out = self.set(id, layout);
                self.nodes.push(node("BatchNormalization", &name, ins, vec![out], vec![float("epsilon", b.eps)]));
            }
            Op::Activation(a) => {
                let layout = self.layout_of(ops[0]);
                let x = self.at(ops[0], layout)?;
                let (op, attrs) = match a {
                    Activation::Relu => ("Relu", vec![]),
                    Activation::LeakyRelu { alpha } => ("LeakyRelu", vec![float("alpha", *alpha)]),
                    Activation::Tanh => ("Tanh", vec![]),
                    Activation::Sigmoid => ("Sigmoid", vec![]),
                    Activation::Softmax => {
                        let axis = if layout == Layout::First { 1 } else { -1 };
                        ("Softmax", vec![int("axis", axis)])
                    }
                };
                let out = self.set(id, layout);
                self.nodes.push(node(op, &name, vec![x], vec![out], attrs));
            }
            Op::PRelu => {
                let layout = self.layout_of(ops[0]);
                let x = self.at(ops[0], layout)?;
                let slope = self.param(ops[1])?;
                let mut dims = vec![slope.len()];
                if layout == Layout::First {
                    dims.extend(std::iter::repeat_n(1, rank - 2));
                }
                let s = self.init(&g.node(ops[1]).name, &dims, &slope);
                let out = self.set(id, layout);
                self.nodes.push(node("PRelu", &name, vec![x, s], vec![out], vec![]));
            }
            // `add(a, b, c, ...)`: ONNX's Sum takes them all (its Add takes two).
            Op::Add => {
                let layout = self.layout_of(ops[0]);
                let ins = ops.iter().map(|&o| self.at(o, layout)).collect::<Result<Vec<_>, _>>()?;
                let out = self.set(id, layout);
                let op = if ins.len() == 2 { "Add" } else { "Sum" };
                self.nodes.push(node(op, &name, ins, vec![out], vec![]));
            }
            Op::Arith(a) => {
                let layout = self.layout_of(ops[0]);
                let x = self.at(ops[0], layout)?;
                let (op, ins) = match a {
                    Arith::Sub => ("Sub", vec![x, self.at(ops[1], layout)?]),
                    Arith::Mul => ("Mul", vec![x, self.at(ops[1], layout)?]),
                    Arith::Abs => ("Abs", vec![x]),
                    Arith::Square => ("Mul", vec![x.clone(), x]),
                };
                let out = self.set(id, layout);
                self.nodes.push(node(op, &name, ins, vec![out], vec![]));
            }
            // x / max(ReduceL2(x), eps) over the channel axis.
            Op::L2Norm(o) => {
                let layout = self.layout_of(ops[0]);
                let x = self.at(ops[0], layout)?;
                let axis = if layout == Layout::First && rank >= 3 { 1 } else { rank.saturating_sub(1) };
                let norm = format!("{name}/norm");
                let attrs = vec![ints("axes", &[axis]), int("keepdims", 1)];
                self.nodes.push(node("ReduceL2", &norm, vec![x.clone()], vec![norm.clone()], attrs));
                let eps = self.init(&format!("{name}/eps"), &[], &[o.eps]);
                let clamped = format!("{name}/clamped");
                self.nodes.push(node("Max", &clamped, vec![norm, eps], vec![clamped.clone()], vec![]));
                let out = self.set(id, layout);
                self.nodes.push(node("Div", &name, vec![x, clamped], vec![out], vec![]));
            }
            Op::Concat => {
                let layout = self.layout_of(ops[0]);
                let ins = ops.iter().map(|&o| self.at(o, layout)).collect::<Result<Vec<_>, _>>()?;
                let axis = if layout == Layout::First && rank >= 3 { 1 } else { -1 };
                let out = self.set(id, layout);
                self.nodes.push(node("Concat", &name, ins, vec![out], vec![int("axis", axis)]));
            }
            Op::Reshape(r) => {
                let x = self.at(ops[0], Layout::Last)?;
                let shape: Vec<i64> = std::iter::once(0).chain(r.shape.iter().map(|&d| d as i64)).collect();
                let s = self.init_i64(&format!("{name}/shape"), &shape);
                let out = self.set(id, Layout::Last);
                self.nodes.push(node("Reshape", &name, vec![x, s], vec![out], vec![]));
            }
            Op::ChannelSlice(s) => {
                let layout = self.layout_of(ops[0]);
                let x = self.at(ops[0], layout)?;
                let axis = if layout == Layout::First && rank >= 3 { 1 } else { -1 };
                let starts = self.init_i64(&format!("{name}/starts"), &[s.start as i64]);
                let ends = self.init_i64(&format!("{name}/ends"), &[(s.start + s.len) as i64]);
                let axes = self.init_i64(&format!("{name}/axes"), &[axis]);
                let out = self.set(id, layout);
                self.nodes.push(node("Slice", &name, vec![x, starts, ends, axes], vec![out], vec![]));
            }
            Op::Pad(p) => {
                // Channels last: [n, axes.., c]; ONNX's pads are every axis's starts, then ends.
                let x = self.at(ops[0], Layout::Last)?;
                let starts = std::iter::once(0).chain(p.spatial.iter().map(|s| s.0 as i64)).chain([0]);
                let ends = std::iter::once(0).chain(p.spatial.iter().map(|s| s.1 as i64)).chain([p.channels as i64]);
                let pads: Vec<i64> = starts.chain(ends).collect();
                let pads = self.init_i64(&format!("{name}/pads"), &pads);
                let out = self.set(id, Layout::Last);
                self.nodes.push(node("Pad", &name, vec![x, pads], vec![out], vec![]));
            }
            Op::Gram => {
                // [n, .., c] as [n, positions, c]; G = Aᵀ·A per example.
                let x = self.at(ops[0], Layout::Last)?;
                let c = g.node(ops[0]).shape.channels();
                let s = self.init_i64(&format!("{name}/shape"), &[0, -1, c as i64]);
                let (a, at) = (format!("{name}/rows"), format!("{name}/transposed"));
                self.nodes.push(node("Reshape", &a, vec![x, s], vec![a.clone()], vec![]));
                self.nodes.push(node(
                    "Transpose",
                    &at,
                    vec![a.clone()],
                    vec![at.clone()],
                    vec![ints("perm", &[0, 2, 1])],
                ));
                let out = self.set(id, Layout::Last);
                self.nodes.push(node("MatMul", &name, vec![at, a], vec![out], vec![]));
            }
            Op::Dropout(_) => {
                let layout = self.layout_of(ops[0]);
                let x = self.at(ops[0], layout)?;
                let out = self.set(id, layout);
                self.nodes.push(node("Identity", &name, vec![x], vec![out], vec![]));
            }
            Op::Loss(_) | Op::Backward(_) => {
                return Err(format!("`{name}` is part of training, not of the inference graph"));
            }
        }
        Ok(())
    }
}

/// `[n, c, spatial..]` from `[n, spatial.., c]`.
fn first_perm(rank: usize) -> Vec<usize> {
    let mut p = vec![0, rank - 1];
    p.extend(1..rank - 1);
    p
}

/// `[n, spatial.., c]` from `[n, c, spatial..]`.
fn last_perm(rank: usize) -> Vec<usize> {
    let mut p = vec![0];
    p.extend(2..rank);
    p.push(1);
    p
}

fn batched(shape: &[usize]) -> Vec<Option<usize>> {
    std::iter::once(None).chain(shape.iter().map(|&d| Some(d))).collect()
}

/// A float tensor's value info; `None` dimensions are the batch (`N`).
fn info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Some(v) => Dimension { dim_value: Some(*v as i64), dim_param: None },
            None => Dimension { dim_value: None, dim_param: Some("N".into()) },
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto { elem_type: 1, shape: Some(TensorShapeProto { dim }) }),
        }),
    }
}

fn node(op: &str, name: &str, input: Vec<String>, output: Vec<String>, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto { input, output, name: name.into(), op_type: op.into(), attribute }
}

fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: values.iter().map(|&v| v as i64).collect(),
        r#type: 7,
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i: value, r#type: 2, ..Default::default() }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto { name: name.into(), f: value, r#type: 1, ..Default::default() }
}
