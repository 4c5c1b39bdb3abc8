//! The inference graph: a model's forward graph with batchnorm on running statistics and no
//! dropout; what evaluation, `--predict`, multi-crop and ensembles run.

use super::{dce, inference_mode, PassError, Pipeline};
use crate::elaborate::ModelInfo;
use crate::ir::Graph;

/// Builds the inference graph of `model` through `pipe`.
pub fn run(model: &ModelInfo, pipe: &mut Pipeline) -> Result<Graph, PassError> {
    let mut graph = model.graph.clone();
    pipe.run("inference_mode", &mut graph, inference_mode::run)?;
    pipe.run("dce", &mut graph, |g| dce::run(g, &[]))?;
    pipe.finish(&graph)?;
    Ok(graph)
}
