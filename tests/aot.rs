//! Ahead-of-time builds: `cnnc build FILE -o model.o` and `--emit header -o model.h` give an
//! object file and a header that a C program compiles against with the system's C compiler,
//! and the linked program gives the reference executor's outputs on the same inputs within
//! ‖a − b‖∞ ≤ 1e-4 · max(‖b‖∞, 1), on several threads at once with separate scratch buffers.

mod common;

use cnnc_compiler::ir::ValueId;
use cnnc_runtime::executor::Executor;
use cnnc_runtime::params::Params;
use cnnc_runtime::reference::Ctx;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Models above this many parameters are left out of the sweep (object files of tens of MB).
const MOST_PARAMETERS: usize = 6_000_000;

/// Examples per call: the object file runs them one after another.
const BATCH: usize = 3;

fn run(cmd: &mut Command) -> std::process::Output {
    let o = cmd.output().expect("the command starts");
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Builds `model` of `file` into `dir/NAME.o` and `dir/NAME.h`; compiles the test program
/// against them. Returns the program.
fn build(file: &str, model: &str, weights: Option<&Path>, dir: &Path) -> PathBuf {
    let name = cnnc_codegen::aot::identifier(model);
    let object = dir.join(format!("{name}.o"));
    let header = dir.join(format!("{name}.h"));
    for (out, emit) in [(&object, None), (&header, Some("header"))] {
        let mut cmd = common::cnnc();
        cmd.args(["build", file, "--model", model, "-o"]).arg(out);
        if let Some(w) = weights {
            cmd.arg("--weights").arg(w);
        }
        if let Some(e) = emit {
            cmd.args(["--emit", e]);
        }
        run(&mut cmd);
    }
    let text = std::fs::read_to_string(&header).unwrap();
    // Each output: its size macro, then its function.
    let mut size = None;
    let mut functions = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("#define ") {
            let key = rest.split_whitespace().next().unwrap();
            if key.ends_with("_SIZE") && !key.ends_with("_INPUT_SIZE") {
                size = Some(key.to_string());
            }
        }
        if let Some(rest) = line.strip_prefix("int ") {
            let f = rest.split('(').next().unwrap().to_string();
            functions.push((f, size.take().expect("a size before each function")));
        }
    }
    assert!(!functions.is_empty(), "{text}");
    let up = name.to_uppercase();
    let fns: Vec<&str> = functions.iter().map(|(f, _)| f.as_str()).collect();
    let sizes: Vec<&str> = functions.iter().map(|(_, s)| s.as_str()).collect();
    let source = format!(
        r#"#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "{name}.h"

typedef int (*infer_fn)(const float *, float *, int, void *);
static const infer_fn fns[] = {{{fns}}};
static const size_t sizes[] = {{{sizes}}};
#define OUTPUTS (sizeof fns / sizeof fns[0])

static const float *input;
static int batch;

struct job {{ infer_fn f; float *out; int rc; }};

static void *work(void *p) {{
    struct job *j = p;
    void *scratch = malloc({up}_SCRATCH_BYTES);
    j->rc = j->f(input, j->out, batch, scratch);
    free(scratch);
    return NULL;
}}

int main(int argc, char **argv) {{
    if (argc != 4) return 2;
    batch = atoi(argv[1]);
    size_t n = (size_t){up}_INPUT_SIZE * batch;
    float *in = malloc(n * sizeof *in);
    FILE *f = fopen(argv[2], "rb");
    if (!f || fread(in, sizeof *in, n, f) != n) return 2;
    fclose(f);
    input = in;
    void *scratch = malloc({up}_SCRATCH_BYTES);
    FILE *o = fopen(argv[3], "wb");
    if (!o) return 2;
    for (size_t k = 0; k < OUTPUTS; k++) {{
        size_t len = sizes[k] * batch;
        float *out = malloc(len * sizeof *out);
        if (fns[k](in, out, batch, scratch) != 0) return 3;
        /* Two calls at once on two threads, each with its own scratch: the same bits. */
        struct job jobs[2];
        pthread_t threads[2];
        for (int t = 0; t < 2; t++) {{
            jobs[t].f = fns[k];
            jobs[t].out = malloc(len * sizeof *out);
            pthread_create(&threads[t], NULL, work, &jobs[t]);
        }}
        for (int t = 0; t < 2; t++) {{
            pthread_join(threads[t], NULL);
            if (jobs[t].rc != 0 || memcmp(jobs[t].out, out, len * sizeof *out) != 0) return 4;
            free(jobs[t].out);
        }}
        if (fwrite(out, sizeof *out, len, o) != len) return 2;
        free(out);
    }}
    /* Bad arguments: a negative batch, a null pointer; no work for an empty batch. */
    if (fns[0](in, NULL, -1, scratch) != -1) return 5;
    if (fns[0](in, NULL, 1, scratch) != -2) return 5;
    if (fns[0](in, NULL, 0, scratch) != 0) return 5;
    free(scratch);
    free(in);
    return fclose(o) == 0 ? 0 : 2;
}}
"#,
        fns = fns.join(", "),
        sizes = sizes.join(", "),
    );
    let c = dir.join(format!("{name}_main.c"));
    std::fs::write(&c, source).unwrap();
    let program = dir.join(format!("{name}_main"));
    run(Command::new("cc")
        .args(["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&program)
        .arg(&c)
        .arg(&object)
        .args(["-lm", "-lpthread"]));
    // The header is C++ too.
    let cpp = dir.join(format!("{name}_check.cpp"));
    std::fs::write(
        &cpp,
        format!("#include \"{name}.h\"\nint (*f)(const float *, float *, int, void *) = {};\n", fns[0]),
    )
    .unwrap();
    run(Command::new("c++").args(["-c", "-Wall", "-Werror", "-o"]).arg(dir.join("check.o")).arg(&cpp));
    program
}

/// The reference executor's outputs of `model` on `x` (`BATCH` examples), with `params`.
fn reference(graph: &cnnc_compiler::ir::Graph, params: &Params, x: &[f32]) -> Vec<Vec<f32>> {
    let input = graph.inputs()[0];
    let shape: Vec<usize> = std::iter::once(BATCH).chain(graph.node(input).shape.0.iter().copied()).collect();
    let tensor = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), x.to_vec()).unwrap();
    let keep: Vec<ValueId> = graph.outputs().iter().map(|(_, id)| ValueId::from(*id)).collect();
    let exec = Executor::new(graph, &params.layout, &keep).unwrap();
    let values = exec.run(graph, params, &[(input, tensor.view())], Ctx::default()).unwrap();
    keep.iter().map(|v| values.get(*v).unwrap().iter().copied().collect()).collect()
}

/// Runs the linked `program` on `x`; returns its outputs, one after another.
fn linked(program: &Path, x: &[f32], dir: &Path) -> Vec<f32> {
    let (input, output) = (dir.join("input.bin"), dir.join("output.bin"));
    std::fs::write(&input, x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    run(Command::new(program).arg(BATCH.to_string()).arg(&input).arg(&output));
    std::fs::read(&output).unwrap().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Whether `a` equals `b` within the norm-relative bound; the worst difference.
fn agrees(a: &[f32], b: &[f32]) -> (bool, f32) {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    (a.len() == b.len() && worst <= 1e-4 * scale, worst)
}

/// The graph and parameters of `model` in `file`: the seed's, or `weights`.
fn model(file: &str, name: &str, weights: Option<&Path>) -> (cnnc_compiler::ir::Graph, Params) {
    let c = common::compile(&common::root().join(file));
    assert!(!c.has_errors(), "{}", common::rendered(&c));
    let m = c.models.iter().find(|m| m.name == name).unwrap();
    let mut pipe = cnnc_compiler::passes::Pipeline::new(Default::default()).unwrap();
    let graph = cnnc_compiler::passes::inference::run(m, &mut pipe).unwrap();
    let seed = c.trains.iter().find(|t| t.model == m.name).map_or(0, |t| t.seed);
    let mut params = Params::init(&graph, seed);
    if let Some(w) = weights {
        cnnc_runtime::weights::load_into(w, &mut params).unwrap();
    }
    (graph, params)
}

fn input(graph: &cnnc_compiler::ir::Graph) -> Vec<f32> {
    let n: usize = BATCH * graph.node(graph.inputs()[0]).shape.0.iter().product::<usize>();
    (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect()
}

/// Builds model `name` of `file` (with `weights`, else the seed's) into a C program linked
/// against its object file, runs it on the test's input, and asserts that it gives the
/// reference executor's outputs; returns them.
fn check(file: &str, name: &str, weights: Option<&Path>, dir: &Path) -> Vec<f32> {
    let (graph, params) = model(file, name, weights);
    let program = build(file, name, weights, dir);
    let x = input(&graph);
    let want: Vec<f32> = reference(&graph, &params, &x).concat();
    let got = linked(&program, &x, dir);
    let (ok, worst) = agrees(&got, &want);
    assert!(ok, "{name} ({file}): worst difference {worst:e}");
    got
}

#[test]
fn lenet5_trained_briefly_and_resnet20_link_into_a_c_program_that_gives_cnncs_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let mut train = common::cnnc();
    train.args(["run", "examples/lenet5.cnn", "--epochs", "1", "--limit", "640", "--quiet", "--out"]).arg(&runs);
    run(&mut train);
    let weights = runs.join("weights.safetensors");
    for (file, name, w) in [("examples/lenet5.cnn", "LeNet5", Some(&weights)), ("stdlib/resnet.cnn", "ResNet20", None)]
    {
        check(file, name, w.map(|p| p.as_path()), dir.path());
    }
}

#[test]
fn every_model_of_one_input_compiles_ahead_of_time_and_agrees() {
    let files = common::model_files();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    for file in files {
        let c = common::compile(&file);
        assert!(!c.has_errors(), "{}", common::rendered(&c));
        let rel = common::relative(&file);
        for m in &c.models {
            let (graph, mut params) = model(&rel, &m.name, None);
            if params.data().len() > MOST_PARAMETERS || graph.inputs().len() != 1 {
                continue;
            }
            let case = dir.path().join(&m.name);
            std::fs::create_dir_all(&case).unwrap();
            // Every parameter moved off its initial value (biases and batchnorm's statistics
            // start at 0 and 1), then saved for `cnnc build --weights`.
            for (i, v) in params.data_mut().iter_mut().enumerate() {
                *v += 0.05 * (((i * 7919 + 13) % 2000) as f32 / 1000.0 - 1.0);
            }
            let weights = case.join("weights.safetensors");
            let named: Vec<cnnc_runtime::weights::Named> = params.named().collect();
            let meta = [("format", "cnnc"), ("model", m.name.as_str())].map(|(k, v)| (k.to_string(), v.to_string()));
            cnnc_runtime::weights::save(&weights, &named, meta.into_iter().collect()).unwrap();
            // The reference reads them back as `cnnc build` does (constant weights written in
            // the file stay).
            let got = check(&rel, &m.name, Some(&weights), &case);
            assert!(got.iter().all(|v| v.is_finite()), "{}", m.name);
            checked.push(m.name.clone());
            std::fs::remove_dir_all(&case).unwrap();
        }
    }
    eprintln!("checked: {checked:?}");
    assert!(checked.len() >= 10, "only {checked:?} were checked");
}

/// Pooling's edge cases compiled ahead of time: padded windows (average counts only the
/// elements inside), ceil rounding, strides, channel counts that are not a multiple of four,
/// and 1D and 3D windows, each against the reference executor.
#[test]
fn padded_and_strided_pooling_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pools.cnn");
    std::fs::write(
        &file,
        "model Pools2D {\n    input x: [9, 11, 7]\n    a = x |> avgpool(3x3, stride: 2, pad: 1)\n    \
         b = x |> maxpool(3x3, stride: 2, round: ceil)\n    c = x |> avgpool(2x3, stride: 1, pad: same)\n    \
         output y = a |> conv(6, 1x1) |> maxpool(2x2, stride: 1, pad: same)\n    output z = b\n    output w = c\n}\n\n\
         model Pools1D {\n    input s: [23, 5]\n    output y = s |> avgpool(4, stride: 3, pad: 2)\n}\n\n\
         model Pools3D {\n    input v: [5, 6, 7, 3]\n    output y = v |> avgpool(3x3x3, stride: 2, pad: 1)\n}\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    for name in ["Pools2D", "Pools1D", "Pools3D"] {
        check(path, name, None, dir.path());
    }
}

/// A Rust program links the same object file (declared `extern "C"`, linked by `rustc`) and
/// gets the C program's outputs, bit for bit.
#[test]
fn a_rust_program_links_the_object_file_too() {
    let dir = tempfile::tempdir().unwrap();
    let program = build("examples/lenet5.cnn", "LeNet5", None, dir.path());
    let (graph, _) = model("examples/lenet5.cnn", "LeNet5", None);
    let x = input(&graph);
    let from_c = linked(&program, &x, dir.path());
    let main = dir.path().join("main.rs");
    std::fs::write(
        &main,
        r#"use std::io::{Read, Write};
#[link(name = "m")]
unsafe extern "C" {
    fn lenet5_infer(input: *const f32, output: *mut f32, batch: i32, scratch: *mut u8) -> i32;
}
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args[1].parse().unwrap();
    let mut bytes = Vec::new();
    std::fs::File::open(&args[2]).unwrap().read_to_end(&mut bytes).unwrap();
    let input: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let mut output = vec![0f32; 10 * batch];
    let mut scratch = vec![0u8; args[4].parse().unwrap()];
    let status = unsafe { lenet5_infer(input.as_ptr(), output.as_mut_ptr(), batch as i32, scratch.as_mut_ptr()) };
    assert_eq!(status, 0);
    let out: Vec<u8> = output.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::File::create(&args[3]).unwrap().write_all(&out).unwrap();
}
"#,
    )
    .unwrap();
    // The scratch size, as the header gives it.
    let header = std::fs::read_to_string(dir.path().join("lenet5.h")).unwrap();
    let scratch = header
        .lines()
        .find_map(|l| l.strip_prefix("#define LENET5_SCRATCH_BYTES "))
        .expect("the header gives the scratch size")
        .to_string();
    let rust = dir.path().join("main");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    run(Command::new(rustc)
        .args(["--edition", "2024", "-O", "-o"])
        .arg(&rust)
        .arg(&main)
        .arg("-C")
        .arg(format!("link-arg={}", dir.path().join("lenet5.o").display())));
    let (input, output) = (dir.path().join("input.bin"), dir.path().join("rust.bin"));
    run(Command::new(&rust).arg(BATCH.to_string()).arg(&input).arg(&output).arg(&scratch));
    let from_rust: Vec<f32> =
        std::fs::read(&output).unwrap().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(from_rust.len(), BATCH * 10);
    assert_eq!(from_rust, from_c);
}

/// Named instruction sets compile (an ELF object each, whatever the host); bad requests are
/// refused with exit 2 and write nothing.
#[test]
fn a_named_target_compiles_and_bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("lenet.o");
    let cnnc = |args: &[&str]| common::cnnc().args(args).output().unwrap();
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let lenet = ["build", "examples/lenet5.cnn", "--model", "LeNet5"];
    for target in ["x86-64-v3", "x86-64-v4"] {
        let out = cnnc(&[&lenet[..], &["-o", o.to_str().unwrap(), "--target", target]].concat());
        assert!(out.status.success(), "{target}: {}", text(&out));
        let bytes = std::fs::read(&o).unwrap();
        assert_eq!(&bytes[..4], b"\x7fELF", "an ELF object");
        assert!(String::from_utf8_lossy(&out.stdout).contains("has_avx2"), "{}", String::from_utf8_lossy(&out.stdout));
    }
    // An unknown target; a target without an object; no output file; a model of two inputs; a
    // batch (a call takes any).
    let bad: [&[&str]; 5] = [
        &[&lenet[..], &["-o", o.to_str().unwrap(), "--target", "pentium"]].concat(),
        &[&lenet[..], &["--target", "x86-64-v3"]].concat(),
        &[&lenet[..], &["--emit", "object"]].concat(),
        &["build", "examples/siamese.cnn", "--model", "Verifier", "-o", o.to_str().unwrap()],
        &[&lenet[..], &["-o", o.to_str().unwrap(), "--batch", "4"]].concat(),
    ];
    // Outputs whose C names would collide, with each other or with the input's.
    let names = dir.path().join("names.cnn");
    std::fs::write(
        &names,
        "model Twice {\n    input x: [4, 4, 2]\n    output y = x |> conv(2, 1x1)\n    output Y = x |> conv(3, 1x1)\n}\n\n\
         model Input {\n    input x: [4, 4, 2]\n    output Input = x |> conv(2, 1x1)\n}\n",
    )
    .unwrap();
    let names = names.to_str().unwrap().to_string();
    let twice = ["build", &names, "--model", "Twice", "-o", o.to_str().unwrap()];
    let input = ["build", &names, "--model", "Input", "-o", o.to_str().unwrap()];
    std::fs::remove_file(&o).unwrap();
    for args in [&twice[..], &input[..]] {
        let out = cnnc(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("rename one of them"), "{args:?}: {}", text(&out));
        assert!(!o.exists(), "{args:?} wrote a file");
    }
    for args in bad {
        let out = cnnc(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).starts_with("error: "), "{args:?}: {}", text(&out));
        assert!(!o.exists(), "{args:?} wrote a file");
    }
}
