//! ONNX export: every stdlib and example model's (and tests/arith's) inference graph, exported with its seeded
//! weights, passes the ONNX checker (full check) and ONNX Runtime gives the reference executor's
//! outputs on the same input within ‖a − b‖∞ ≤ 1e-4 · max(‖b‖∞, 1) (`tests/onnx_check.py`,
//! which needs `onnx` and `onnxruntime`: `.ci/run` installs them).

mod common;

use cnnc_compiler::ir::ValueId;
use cnnc_runtime::executor::Executor;
use cnnc_runtime::params::Params;
use cnnc_runtime::reference::Ctx;

/// Models above this many parameters are left out (VGG-16's file alone is 528 MB).
const MOST_PARAMETERS: usize = 30_000_000;

#[test]
fn every_model_exports_to_onnx_and_onnx_runtime_agrees() {
    let files = common::model_files();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    for file in files {
        let c = common::compile(&file);
        assert!(!c.has_errors(), "{}", common::rendered(&c));
        for m in &c.models {
            let mut pipe = cnnc_compiler::passes::Pipeline::new(Default::default()).unwrap();
            let graph = cnnc_compiler::passes::inference::run(m, &mut pipe).unwrap();
            let params = Params::init(&graph, 7);
            if params.data().len() > MOST_PARAMETERS || graph.inputs().len() != 1 {
                continue;
            }
            let input = graph.inputs()[0];
            let shape: Vec<usize> = std::iter::once(1).chain(graph.node(input).shape.0.iter().copied()).collect();
            let n: usize = shape.iter().product();
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
            let tensor = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), x.clone()).unwrap();
            let keep: Vec<ValueId> = graph.outputs().iter().map(|(_, id)| ValueId::from(*id)).collect();
            let exec = Executor::new(&graph, &params.layout, &keep).unwrap();
            let values = exec.run(&graph, &params, &[(input, tensor.view())], Ctx::default()).unwrap();

            let case = dir.path().join(&m.name);
            std::fs::create_dir_all(&case).unwrap();
            let bytes = cnnc_runtime::onnx::export(&graph, &params).unwrap_or_else(|e| panic!("{}: {e}", m.name));
            std::fs::write(case.join("model.onnx"), bytes).unwrap();
            let raw = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
            std::fs::write(case.join("input.bin"), raw(&x)).unwrap();
            for (i, v) in keep.iter().enumerate() {
                let out: Vec<f32> = values.get(*v).unwrap().iter().copied().collect();
                std::fs::write(case.join(format!("output{i}.bin")), raw(&out)).unwrap();
            }
            let o = std::process::Command::new("python3")
                .arg(common::root().join("tests/onnx_check.py"))
                .arg(&case)
                .output()
                .expect("python3 runs");
            let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            assert!(o.status.success(), "{} ({}): {text}", m.name, file.display());
            checked.push(m.name.clone());
        }
    }
    assert!(checked.len() >= 10, "only {checked:?} were checked");
}

/// `cnnc build --emit onnx`: writes the file with the weights given, refuses what it cannot
/// export (exit 2, nothing written), and the exported weights are the file's.
#[test]
fn the_onnx_command_writes_the_weights_given_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lenet.onnx");
    let run = |args: &[&str]| common::cnnc().args(args).output().unwrap();
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // No output file named; several models and none picked.
    let o = run(&["build", "examples/lenet5.cnn", "--emit", "onnx"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--output"), "{}", text(&o));
    let o = run(&["build", "stdlib/resnet.cnn", "--emit", "onnx", "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--model"), "{}", text(&o));
    assert!(!out.exists());

    // Weights: all of LeNet-5's parameters at 0.25, then one of them not finite.
    let c = common::compile(&common::root().join("examples/lenet5.cnn"));
    let mut pipe = cnnc_compiler::passes::Pipeline::new(Default::default()).unwrap();
    let graph = cnnc_compiler::passes::inference::run(&c.models[0], &mut pipe).unwrap();
    let params = Params::init(&graph, 1);
    // A weights file of `values` (one list per parameter, in name order), and an export of it.
    let save = |values: &[Vec<f32>], name: &str| {
        let named: Vec<(&str, &[usize], &[f32])> =
            params.named().zip(values).map(|((n, s, _), v)| (n, s, v.as_slice())).collect();
        let path = dir.path().join(name);
        cnnc_runtime::weights::save(&path, &named, Default::default()).unwrap();
        path
    };
    let export = |weights: &std::path::Path| {
        let args = ["build", "examples/lenet5.cnn", "--emit", "onnx", "-o", out.to_str().unwrap(), "--weights"];
        common::cnnc().args(args).arg(weights).output().unwrap()
    };
    let values: Vec<Vec<f32>> = params.named().map(|(_, _, v)| vec![0.25; v.len()]).collect();
    let good = save(&values, "good.safetensors");
    let mut nan = values.clone();
    nan[0][3] = f32::NAN;
    let bad = save(&nan, "bad.safetensors");

    let o = export(&bad);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!out.exists(), "nothing written");
    let o = export(&good);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The file holds the weights: every float of every initializer is 0.25 (LeNet-5's are all
    // parameters), and there are as many as the model has.
    let model: cnnc_runtime::onnx::proto::ModelProto = prost::Message::decode(&*std::fs::read(&out).unwrap()).unwrap();
    let inits = model.graph.unwrap().initializer;
    let floats: Vec<f32> = inits
        .iter()
        .filter(|t| t.data_type == 1)
        .flat_map(|t| {
            t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(floats.len(), params.data().len());
    assert!(floats.iter().all(|&v| v == 0.25));
}
