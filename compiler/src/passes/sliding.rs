//! Convolutional sliding windows: a model trained on crops, made fully convolutional so that
//! one run over a larger image gives every window's result at once (the course's "convolutional
//! implementation of sliding windows", OverFeat's). A `flatten` of an `[h, w, c]` map feeding
//! dense layers becomes, for each of them, an `h × w` valid convolution whose filters are the
//! dense weights seen as `[h, w, c, units]` (cnnc flattens channels last, so the bytes are the
//! same); a dense layer on a vector of channels becomes a 1 × 1 convolution; a `flatten` that is
//! an output gives the map it flattens. The weights keep
//! their names and values, in the filters' shape (the same element count and order), so a
//! weights file trained on the crop model fills them unchanged.
//! Shapes are then inferred again for the new input size.

use crate::ir::op::{ConvOp, Op};
use crate::ir::{Graph, Node, NodeId, ValueId};
use crate::shape::{self, Shape, ShapeFault};
use std::fmt;

/// Why a model cannot slide over an input of the size asked.
#[derive(Clone, Debug, PartialEq)]
pub enum SlideError {
    /// The model has no input, or more than one.
    Inputs { count: usize },
    /// The new input does not have the model input's rank or channels.
    Input { expected: Shape, got: Vec<usize> },
    /// A `flatten` feeds something other than dense layers: its output has no meaning per window.
    Flatten { layer: String, user: String },
    /// A layer's shape rule fails at the new size.
    Shape { layer: String, fault: String },
    /// An output has no spatial axes at the new size (a global pooling before it).
    NoMap { output: String },
}

impl fmt::Display for SlideError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlideError::Inputs { count } => {
                write!(f, "sliding windows run models with one input; this one has {count}")
            }
            SlideError::Input { expected, got } => write!(
                f,
                "the model's input is {expected}; an input of shape {got:?} differs in more than its spatial size"
            ),
            SlideError::Flatten { layer, user } => write!(
                f,
                "`{layer}` flattens a map that `{user}` reads: only dense layers after a flatten become convolutions"
            ),
            SlideError::Shape { layer, fault } => write!(f, "at the new size, `{layer}`: {fault}"),
            SlideError::NoMap { output } => write!(
                f,
                "`{output}` has no spatial axes (a global pooling comes before it): it answers for the whole image, \
                 not for each window"
            ),
        }
    }
}

impl std::error::Error for SlideError {}

/// `graph` (an inference graph) made fully convolutional and its shapes inferred for an input of
/// `input` (the model input's rank and channels, a larger spatial size).
pub fn run(graph: &Graph, input: &[usize]) -> Result<Graph, SlideError> {
    let mut g = graph.clone();
    let &[x] = g.inputs() else { return Err(SlideError::Inputs { count: g.inputs().len() }) };
    let declared = g.node(x).shape.clone();
    if declared.rank() != input.len() || declared.channels() != input.last().copied().unwrap_or(0) {
        return Err(SlideError::Input { expected: declared, got: input.to_vec() });
    }
    let order = g.topo_order().unwrap_or_default();
    let mut filter_params: std::collections::HashMap<String, NodeId> = std::collections::HashMap::new();
    for id in order {
        let Op::Dense(dense) = g.node(id).op.clone() else { continue };
        let operands = g.operands(id);
        let (source, weight) = (operands[0], operands[1]);
        // The map the dense layer reads: through a flatten, or already a map of channels (a
        // dense layer after one made a convolution).
        let (map, size) = match g.node(source).op {
            Op::Flatten => {
                let from = g.operands(source)[0];
                let shape = g.node(from).shape.clone();
                if shape.rank() < 2 {
                    (from, vec![])
                } else {
                    (from, shape.0[..shape.rank() - 1].to_vec())
                }
            }
            _ => (source, vec![]),
        };
        let in_shape = g.node(map).shape.clone();
        let spatial = in_shape.rank().saturating_sub(1);
        if spatial == 0 {
            continue;
        }
        let size = if size.is_empty() { vec![1; spatial] } else { size };
        let channels = in_shape.channels();
        let filters: Vec<usize> = size.iter().copied().chain([channels, dense.units]).collect();
        let node = g.node(id).clone();
        // The weights as filters: a parameter of the same name and values, in the filter shape
        // (one per name, for dense layers that share weights).
        let param = g.node(weight).clone();
        let view = match filter_params.get(&param.name) {
            Some(&existing) => existing,
            None => {
                let created = g.add(Node::new(param.op.clone(), param.name.clone(), param.loc, Shape(filters)), &[]);
                filter_params.insert(param.name.clone(), created);
                created
            }
        };
        let conv = ConvOp {
            filters: dense.units,
            size: size.clone(),
            stride: vec![1; spatial],
            pad: vec![(0, 0); spatial],
            dilation: vec![1; spatial],
            groups: 1,
        };
        let mut inputs = vec![map, view];
        inputs.extend(operands.get(2).copied());
        let out_shape: Vec<usize> = vec![1; spatial].into_iter().chain([dense.units]).collect();
        let replaced = g.add(Node::new(Op::Conv(conv), node.name.clone(), node.loc, Shape(out_shape)), &inputs);
        g.replace_all_uses(ValueId::from(id), ValueId::from(replaced));
        g.remove(id);
        if g.users(weight).is_empty() {
            g.remove(weight);
        }
        if matches!(g.node(source).op, Op::Flatten) && g.users(source).is_empty() {
            g.remove(source);
        }
        // What reads it now sees a map (`[1, 1, units]`), so the next dense layer converts too
        // (the dense layers not converted yet keep their shapes until then).
        reinfer(&mut g, false)?;
    }
    // A flatten that is an output and feeds nothing gives the map itself (a result per
    // window); one that feeds something else would mean nothing per window.
    for id in g.node_ids().collect::<Vec<_>>() {
        let is_output = g.outputs().iter().any(|(_, o)| *o == id);
        if matches!(g.node(id).op, Op::Flatten) && is_output && g.users(id).is_empty() {
            let from = g.operands(id)[0];
            g.replace_all_uses(ValueId::from(id), ValueId::from(from));
            g.remove(id);
        }
    }
    for id in g.node_ids().collect::<Vec<_>>() {
        if matches!(g.node(id).op, Op::Flatten) && g.node(g.operands(id)[0]).shape.rank() > 1 {
            let user = g.users(id).first().map_or_else(|| "an output".to_string(), |&u| g.node(u).name.clone());
            return Err(SlideError::Flatten { layer: g.node(id).name.clone(), user });
        }
    }
    g.node_mut(x).shape = Shape(input.to_vec());
    reinfer(&mut g, true)?;
    // An output with no spatial axes left (after a global pooling) answers for the whole image,
    // not for each window.
    if let Some((name, _)) = g.outputs().iter().find(|(_, id)| g.node(*id).shape.rank() < 2) {
        return Err(SlideError::NoMap { output: name.clone() });
    }
    Ok(g)
}

/// Infers every node's shapes again, in order, from the inputs' and parameters'; unless `strict`,
/// a node whose rule fails keeps its shapes.
fn reinfer(g: &mut Graph, strict: bool) -> Result<(), SlideError> {
    for id in g.topo_order().unwrap_or_default() {
        if matches!(g.node(id).op, Op::Input(_) | Op::Param(_)) {
            continue;
        }
        let inputs = g.inputs_of(id);
        let shapes: Vec<Shape> = inputs.iter().map(|&v| g.shape(v).clone()).collect();
        let refs: Vec<&Shape> = shapes.iter().collect();
        let inferred = match shape::infer(&g.node(id).op, &refs) {
            Ok(inferred) => inferred,
            Err(_) if !strict => continue,
            Err(fault) => return Err(SlideError::Shape { layer: g.node(id).name.clone(), fault: describe(&fault) }),
        };
        let node = g.node_mut(id);
        node.shape = inferred.shape;
        node.extra = inferred.extra;
    }
    Ok(())
}

fn describe(fault: &ShapeFault) -> String {
    match fault {
        ShapeFault::OutputTooSmall { calc } => format!(
            "its window of {} does not fit an input of {} on axis {} (padding {} and {})",
            calc.f_eff(),
            calc.n,
            calc.axis,
            calc.pad.0,
            calc.pad.1
        ),
        ShapeFault::ParamShape { expected, got } => format!("it needs shape {expected}, and gets {got}"),
        ShapeFault::AddMismatch { first, other, .. } => format!("it adds {first} and {other}"),
        ShapeFault::ConcatMismatch { first, other, .. } => format!("it concatenates {first} and {other}"),
        ShapeFault::TooLarge { shape } => format!("a tensor of {shape:?} is too large"),
        other => format!("{other:?}"),
    }
}

/// Positions of the windows: how far apart in input pixels neighbouring results are, per
/// spatial axis (the product of the strides on the way to the first converted layer).
pub fn window_stride(graph: &Graph) -> Vec<usize> {
    let Some(&x) = graph.inputs().first() else { return vec![] };
    let spatial = graph.node(x).shape.rank().saturating_sub(1);
    let mut strides: std::collections::HashMap<NodeId, Vec<usize>> = std::collections::HashMap::new();
    let mut result = vec![1; spatial];
    for id in graph.topo_order().unwrap_or_default() {
        let from = graph.operands(id).first().and_then(|o| strides.get(o).cloned()).unwrap_or(vec![1; spatial]);
        let here = match &graph.node(id).op {
            Op::Conv(c) => from.iter().zip(&c.stride).map(|(a, b)| a * b).collect(),
            Op::Pool(p) => from.iter().zip(&p.stride).map(|(a, b)| a * b).collect(),
            _ => from,
        };
        if graph.outputs().iter().any(|(_, o)| *o == id) {
            result = here.clone();
        }
        strides.insert(id, here);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lenet() -> Graph {
        let text = "model L {\n input image: [32, 32, 1]\n x = image |> conv(6, 5x5) |> tanh |> avgpool(2x2) |> conv(16, 5x5) |> tanh |> avgpool(2x2) |> flatten |> dense(120) |> tanh |> dense(10)\n output logits = x\n}\n";
        let c = crate::compile_source("l.cnn", None, text.as_bytes());
        assert!(!c.has_errors());
        let mut pipe = crate::passes::Pipeline::new(Default::default()).unwrap();
        crate::passes::inference::run(&c.models[0], &mut pipe).unwrap()
    }

    #[test]
    fn dense_layers_become_convolutions_over_a_larger_input() {
        let g = lenet();
        assert_eq!(window_stride(&g), vec![4, 4]);
        let slid = run(&g, &[32, 64, 1]).unwrap();
        crate::ir::verify(&slid).unwrap();
        assert!(!slid.node_ids().any(|id| matches!(slid.node(id).op, Op::Dense(_) | Op::Flatten)));
        let convs: Vec<(Vec<usize>, Shape)> = slid
            .node_ids()
            .filter_map(|id| match &slid.node(id).op {
                Op::Conv(c) => Some((c.size.clone(), slid.node(id).shape.clone())),
                _ => None,
            })
            .collect();
        // The two convolutions, dense(120) as a 5×5 one, dense(10) as a 1×1 one.
        assert_eq!(convs.len(), 4);
        assert!(convs.contains(&(vec![5, 5], Shape(vec![1, 9, 120]))), "{convs:?}");
        assert!(convs.contains(&(vec![1, 1], Shape(vec![1, 9, 10]))), "{convs:?}");
        let logits = slid.outputs()[0].1;
        assert_eq!(slid.node(logits).shape, Shape(vec![1, 9, 10]));
        // The weights keep their names, in the filters' shape.
        let weight = slid.node_ids().find(|&id| slid.node(id).name == "dense1/weight").unwrap();
        assert_eq!(slid.node(weight).shape, Shape(vec![5, 5, 16, 120]));
        // The original size gives one window.
        let same = run(&g, &[32, 32, 1]).unwrap();
        assert_eq!(same.node(same.outputs()[0].1).shape, Shape(vec![1, 1, 10]));
    }

    #[test]
    fn what_cannot_slide_is_an_error() {
        let text =
            "model G {\n input image: [8, 8, 1]\n output y = image |> conv(4, 3) |> global_avgpool |> dense(2)\n}\n";
        let c = crate::compile_source("g.cnn", None, text.as_bytes());
        let mut pipe = crate::passes::Pipeline::new(Default::default()).unwrap();
        let pooled = crate::passes::inference::run(&c.models[0], &mut pipe).unwrap();
        let e = run(&pooled, &[16, 16, 1]).unwrap_err();
        assert!(matches!(e, SlideError::NoMap { .. }), "{e}");
        let g = lenet();
        assert!(matches!(run(&g, &[32, 64, 3]), Err(SlideError::Input { .. })));
        assert!(matches!(run(&g, &[20, 64, 1]), Err(SlideError::Shape { .. })));
        let e = run(&g, &[20, 64, 1]).unwrap_err().to_string();
        assert!(e.contains("does not fit"), "{e}");
    }
}
