//! The image-optimization graph of neural style transfer: a model's inference graph with its
//! parameters fixed, the content and style costs of its `train` section on the model's outputs
//! (each against a target input), and the backward graph of the total cost with respect to the
//! input image alone.
//!
//! The costs are the course's (Gatys et al.): for a feature map `a` of `n_H × n_W × n_C`,
//! `J_content = 1/(4·n_H·n_W·n_C) · Σ (a_C − a_G)²` and, with `G = gram(a)`,
//! `J_style = 1/(2·n_H·n_W·n_C)² · Σ (G_S − G_G)²`. Both are the `l2` loss (`½‖p − t‖²`)
//! with the normalization folded into its weight.

use super::autodiff;
use super::{dce, inference_mode, PassError, Pipeline};
use crate::elaborate::ModelInfo;
use crate::ir::op::{InputOp, LossKind, LossOp, Op};
use crate::ir::{Graph, Node, NodeId, ValueId};
use crate::shape::Shape;
use crate::train::{Arg, TrainSpec};

/// What a cost compares: the feature map itself, or its Gram matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The content cost.
    Content,
    /// The style cost (Gram matrices).
    Style,
}

/// One cost term of the total.
#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    /// Content or style.
    pub compare: Compare,
    /// The model output it reads.
    pub output: String,
    /// The input that receives the target (the content image's features, the style image's
    /// Gram matrix).
    pub target: NodeId,
    /// Its loss node.
    pub loss: NodeId,
    /// Its weight in the section, times the normalization: the loss node's weight.
    pub weight: f32,
}

/// A model ready to optimize its input image.
#[derive(Clone, Debug)]
pub struct ImageGraph {
    /// Forward, cost and backward nodes.
    pub graph: Graph,
    /// The input image.
    pub input: NodeId,
    /// The gradient of the total cost with respect to the input image.
    pub grad: ValueId,
    /// The content and style terms.
    pub terms: Vec<Term>,
    /// The weight of the total-variation term (0 when there is none): computed on the image
    /// outside the graph.
    pub total_variation: f64,
}

/// Why a section cannot be turned into an image graph.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageError {
    /// A pass failed.
    Pass(PassError),
    /// The section does not fit (the checker refuses it; a driver that skipped it).
    Section(String),
}

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageError::Pass(e) => write!(f, "{e}"),
            ImageError::Section(s) => f.write_str(s),
        }
    }
}

impl From<PassError> for ImageError {
    fn from(e: PassError) -> Self {
        ImageError::Pass(e)
    }
}

/// Builds the image graph of `model` under the style-transfer section `spec` through `pipe`.
pub fn run(model: &ModelInfo, spec: &TrainSpec, pipe: &mut Pipeline) -> Result<ImageGraph, ImageError> {
    let mut graph = model.graph.clone();
    let &[input] = graph.inputs() else {
        return Err(ImageError::Section(format!("`{}` must have one input image", model.name)));
    };
    pipe.run("inference_mode", &mut graph, inference_mode::run)?;
    // The weights are fixed: only the image is optimized.
    let ids: Vec<NodeId> = graph.node_ids().collect();
    for id in ids {
        if let Op::Param(p) = &mut graph.node_mut(id).op {
            p.frozen = true;
        }
    }
    let (terms, tv) = match pipe.run("losses", &mut graph, |g| add_costs(g, spec))? {
        Some(result) => result?,
        None => return Err(ImageError::Section("the section has no loss".into())),
    };
    let losses: Vec<NodeId> = terms.iter().map(|t| t.loss).collect();
    let targets: Vec<NodeId> = terms.iter().map(|t| t.target).collect();
    let grads = pipe.run("autodiff", &mut graph, |g| autodiff::run(g, &losses, true, &targets))?.unwrap_or_default();
    let grad = grads
        .inputs
        .iter()
        .find(|(i, _)| *i == input)
        .map(|(_, g)| *g)
        .ok_or_else(|| ImageError::Section("the costs do not depend on the input image".into()))?;
    graph.set_outputs(Vec::new());
    let mut roots = losses.clone();
    roots.push(grad.node);
    pipe.run("dce", &mut graph, |g| dce::run(g, &roots))?;
    pipe.finish(&graph)?;
    Ok(ImageGraph { graph, input, grad, terms, total_variation: tv })
}

/// Adds each content and style term's target input and loss node; the total variation's weight.
fn add_costs(graph: &mut Graph, spec: &TrainSpec) -> Result<(Vec<Term>, f64), ImageError> {
    let mut terms = Vec::new();
    let mut tv = 0.0;
    for term in &spec.loss {
        let compare = match term.call.name.as_str() {
            "content" => Compare::Content,
            "style" => Compare::Style,
            "total_variation" => {
                tv += term.weight;
                continue;
            }
            other => return Err(ImageError::Section(format!("`{other}` is not a cost of style transfer"))),
        };
        let Some(Arg::Name(output)) = term.call.args.get("output") else { continue };
        let Some(&(_, feature)) = graph.outputs().iter().find(|(n, _)| n == output) else {
            return Err(ImageError::Section(format!("the model has no output `{output}`")));
        };
        let shape = graph.node(feature).shape.clone();
        let size = shape.elements().unwrap_or(0) as f64;
        if shape.rank() < 2 || size == 0.0 {
            return Err(ImageError::Section(format!("`{output}` must be a feature map, not {shape}")));
        }
        let loc = term.call.loc;
        let c = shape.channels();
        let (read, target_shape, weight) = match compare {
            // ½Σ(a_C − a_G)² · 2/(4·size) = Σ(a_C − a_G)²/(4·n_H·n_W·n_C).
            Compare::Content => (feature, shape.clone(), term.weight / (2.0 * size)),
            // ½Σ(G_S − G_G)² · 2/(2·size)².
            Compare::Style => {
                let gram = graph.add(Node::new(Op::Gram, format!("{output}.gram"), loc, Shape(vec![c, c])), &[feature]);
                (gram, Shape(vec![c, c]), term.weight * 2.0 / (2.0 * size).powi(2))
            }
        };
        let kind = if compare == Compare::Content { "content" } else { "style" };
        let target_name = format!("{kind}.{output}");
        let target =
            graph.add(Node::new(Op::Input(InputOp { name: target_name.clone() }), target_name, loc, target_shape), &[]);
        let op = Op::Loss(LossOp { kind: LossKind::L2, weight: weight as f32 });
        let loss = graph.add(Node::new(op, format!("{kind}_cost.{output}"), loc, Shape(vec![])), &[read, target]);
        terms.push(Term { compare, output: output.clone(), target, loss, weight: weight as f32 });
    }
    if terms.is_empty() {
        return Err(ImageError::Section("the loss needs a `content(...)` or `style(...)` term".into()));
    }
    Ok((terms, tv))
}
