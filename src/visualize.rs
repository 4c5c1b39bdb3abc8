//! `cnnc run --visualize LAYER` and `--filters [LAYER]`: what a trained network's units respond
//! to, and its filters, as PNG grids.

use crate::run::{fail, trainable, weights_of, Args, Failure, EXIT_INPUT, EXIT_INTERNAL};
use cnnc_compiler::elaborate::ModelInfo;
use cnnc_compiler::ir::op::Op;
use cnnc_compiler::ir::{Graph, NodeId, ValueId};
use cnnc_compiler::train::TrainSpec;
use cnnc_runtime::augment::{self, Pipeline};
use cnnc_runtime::backend::{Backend, Programs};
use cnnc_runtime::params::Params;
use cnnc_runtime::visualize;
use std::path::{Path, PathBuf};

fn layer(graph: &Graph, name: &str) -> Result<NodeId, Failure> {
    graph.node_ids().find(|&id| graph.node(id).name == name).ok_or_else(|| {
        let names: Vec<&str> = graph
            .node_ids()
            .filter(|&id| !matches!(graph.node(id).op, Op::Param(_) | Op::Input(_)))
            .map(|id| graph.node(id).name.as_str())
            .collect();
        fail(EXIT_INPUT, format!("no layer `{name}` in the model (layers: {})", names.join(", ")))
    })
}

/// Runs the visualizations `args` ask for.
pub fn run(model: &ModelInfo, spec: Option<&TrainSpec>, args: &Args) -> Result<(), Failure> {
    let mut pipe =
        cnnc_compiler::passes::Pipeline::new(Default::default()).map_err(|e| fail(EXIT_INTERNAL, e.to_string()))?;
    let graph =
        cnnc_compiler::passes::inference::run(model, &mut pipe).map_err(|e| fail(EXIT_INTERNAL, e.to_string()))?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&model.name));
    let template = Params::init(&graph, spec.map_or(0, |s| s.seed));
    let params = if trainable(model) { weights_of(&template, args, &out)?.remove(0) } else { template };
    let target = |name: &str, suffix: &str| -> PathBuf {
        args.output.clone().unwrap_or_else(|| out.join(format!("{}_{suffix}.png", name.replace('/', "_"))))
    };
    if args.visualize.is_some() && args.filters.is_some() && args.output.is_some() {
        return Err(fail(
            EXIT_INPUT,
            "--visualize and --filters write one picture each: leave out -o to write both to OUT",
        ));
    }
    let create = |path: &Path| {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or(Ok(()), std::fs::create_dir_all)
            .map_err(|e| fail(EXIT_INPUT, format!("cannot create the folder of `{}`: {e}", path.display())))
    };
    if let Some(name) = &args.filters {
        let conv = if name.is_empty() {
            graph
                .topo_order()
                .unwrap_or_default()
                .into_iter()
                .find(|&id| matches!(graph.node(id).op, Op::Conv(_)))
                .ok_or_else(|| fail(EXIT_INPUT, "the model has no convolution"))?
        } else {
            layer(&graph, name)?
        };
        if !matches!(graph.node(conv).op, Op::Conv(_)) {
            return Err(fail(
                EXIT_INPUT,
                format!("`{}` is not a convolution: --filters draws a convolution's filters", graph.node(conv).name),
            ));
        }
        let w = graph.operands(conv)[1];
        let shape = graph.node(w).shape.0.clone();
        let values: Vec<f32> = params
            .get(&graph.node(w).name)
            .ok_or_else(|| fail(EXIT_INTERNAL, "the filters have no values"))?
            .iter()
            .copied()
            .collect();
        let path = target(&graph.node(conv).name, "filters");
        create(&path)?;
        visualize::write_filters(&path, &values, &shape).map_err(|e| fail(EXIT_INPUT, e))?;
        println!(
            "wrote the {} filters of `{}` ({}) to {}",
            shape.last().unwrap_or(&0),
            graph.node(conv).name,
            shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×"),
            path.display()
        );
    }
    let Some(name) = &args.visualize else { return Ok(()) };
    let node = layer(&graph, name)?;
    let spec = spec.ok_or_else(|| {
        fail(EXIT_INPUT, format!("--visualize runs over the train section's data, and `{}` has none", model.name))
    })?;
    let input = model.graph.inputs().first().map(|&id| model.graph.node(id).shape.0.clone()).unwrap_or_default();
    let (&[h, w, c], &[_, out_w, _]) = (&input[..], &graph.node(node).shape.0[..]) else {
        return Err(fail(
            EXIT_INPUT,
            format!("--visualize draws image patches: the input must be [h, w, c] and `{name}` a feature map [h, w, c], not {}", graph.node(node).shape),
        ));
    };
    let field = visualize::receptive_field(&graph, node).ok_or_else(|| {
        fail(EXIT_INPUT, format!("`{name}` reads the whole input (after a flatten, dense layer or global pooling): choose a convolution, activation or pooling layer"))
    })?;
    let data_call = spec.data.clone().ok_or_else(|| fail(EXIT_INPUT, "the train section has no data source"))?;
    if data_call.name == "style_transfer" {
        return Err(fail(EXIT_INPUT, "--visualize runs over a dataset; this section's data are two images"));
    }
    let base = args.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let (prep, values) = cnnc_runtime::preprocess::steps(&spec.preprocess);
    let mut data = cnnc_runtime::data::load(&data_call, &base, &input, spec.seed, &prep)
        .map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
    // Every example: the training ones, then the held-out ones (unless they are the same
    // examples, as when a section evaluates on its training files).
    let train = std::mem::take(&mut data.train);
    if train.x == data.test.x {
        data.test = train;
    } else {
        data.test.x.splice(0..0, train.x);
        data.test.y.splice(0..0, train.y);
        data.test.t.splice(0..0, train.t);
        data.test.origin.splice(0..0, train.origin);
    }
    if let Some(limit) = args.limit.filter(|&l| l < data.test.len()) {
        let f = data.features();
        data.test.truncate(f, limit);
    }
    let steps = [augment::steps(&spec.augment), values].concat();
    let pipeline = Pipeline::new(steps, &data.shape, &input, &Default::default(), spec.seed)
        .map_err(|e| fail(EXIT_INPUT, e.to_string()))?;
    let eval = pipeline.for_eval(&data);
    let mut programs = Programs::new(vec![ValueId::from(node)], Vec::new());
    let backend = if args.backend == Backend::Reference { Backend::Lir } else { args.backend };
    programs.set_backend(backend).map_err(|e| fail(EXIT_INTERNAL, e))?;
    let top = visualize::top_activations(&graph, &mut programs, &params, node, &eval.test.x, 9)
        .map_err(|e| fail(EXIT_INTERNAL, e))?;
    let path = target(name, "patches");
    create(&path)?;
    visualize::write_patches(&path, &eval.test.x, [h, w, c], &field, out_w, &top).map_err(|e| fail(EXIT_INPUT, e))?;
    println!(
        "wrote the 9 patches of {} examples that activate each of the {} units of `{name}` most (receptive field {}×{}) to {}",
        eval.test.len(),
        top.len(),
        field.size[0],
        field.size[1],
        path.display()
    );
    Ok(())
}
