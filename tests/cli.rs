//! The `cnnc` binary: exit codes, JSON diagnostics, `build --emit`.

mod common;

use common::cnnc;

#[test]
fn exit_code_zero_for_a_clean_file() {
    let out = cnnc().args(["check", "examples/lenet5.cnn"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn exit_code_zero_with_only_warnings() {
    let out = cnnc().args(["check", "--color", "never", "tests/ui/unused_binding.cnn"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cnnc::resolve::unused_binding"), "{stderr}");
    assert!(stderr.contains("0 errors, 1 warning"), "{stderr}");
}

#[test]
fn exit_code_one_for_diagnostics() {
    let out = cnnc().args(["check", "--color", "never", "tests/ui/output_too_small.cnn"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("(4 + 2·0 − 5)/1 + 1 = 0"), "{stderr}");
}

#[test]
fn exit_code_two_for_a_missing_file_or_bad_usage() {
    let out = cnnc().args(["check", "no/such/file.cnn"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/file.cnn"));
    let out = cnnc().args(["check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = cnnc().args(["build", "examples/lenet5.cnn", "--emit", "nonsense"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = cnnc().args(["build", "examples/lenet5.cnn", "--model", "Nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn json_message_format_prints_one_object_per_line() {
    let out = cnnc().args(["check", "--message-format", "json", "tests/ui/many_errors.cnn"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let diags: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let codes: Vec<&str> = diags.iter().map(|d| d["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["cnnc::shape::add_mismatch", "cnnc::shape::concat_mismatch", "cnnc::shape::dense_unflattened"]);
    let first = &diags[0];
    assert_eq!(first["file"], "tests/ui/many_errors.cnn");
    assert_eq!(first["severity"], "error");
    assert_eq!((first["line_start"].as_u64(), first["column_start"].as_u64()), (Some(6), Some(9)));
    assert_eq!((first["line_end"].as_u64(), first["column_end"].as_u64()), (Some(6), Some(14)));
    let text = std::fs::read_to_string(common::root().join("tests/ui/many_errors.cnn")).unwrap();
    let (a, b) = (first["byte_start"].as_u64().unwrap() as usize, first["byte_end"].as_u64().unwrap() as usize);
    assert_eq!(&text[a..b], "a + b");
    assert!(first["help"].as_str().unwrap().contains("1×1 convolution"));
    assert_eq!(first["labels"].as_array().unwrap().len(), 3);
}

#[test]
fn build_emits_summary_and_ir() {
    let out = cnnc().args(["build", "stdlib/resnet.cnn", "--model", "ResNet50"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("Total params:        25,557,032"), "{stdout}");
    let out = cnnc().args(["build", "examples/lenet5.cnn", "--emit", "ir"]).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("graph LeNet5 {"));
    assert!(stdout.contains("conv2d[n=6,f=5x5,s=1x1,p=0x0] \"conv1\" %0, %1, %2 : [28, 28, 6]"), "{stdout}");
}

#[test]
fn build_refuses_a_file_with_errors() {
    let out = cnnc().args(["build", "--color", "never", "tests/ui/cycle.cnn"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

#[test]
fn check_and_build_succeed_on_every_stdlib_and_example_file() {
    for dir in ["stdlib", "examples"] {
        for entry in std::fs::read_dir(common::root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "cnn") {
                continue;
            }
            for args in [vec!["check"], vec!["build", "--emit", "summary"], vec!["build", "--emit", "ir"]] {
                let out = cnnc().args(&args).arg(&path).output().unwrap();
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "cnnc {args:?} {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(!out.stdout.is_empty() || args[0] == "check");
            }
        }
    }
}

#[test]
fn the_bundled_models_are_formatted() {
    let mut files = Vec::new();
    for dir in ["stdlib", "examples"] {
        for entry in std::fs::read_dir(common::root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "cnn") {
                files.push(path);
            }
        }
    }
    let out = cnnc().arg("fmt").arg("--check").args(&files).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "run `cnnc fmt stdlib/*.cnn examples/*.cnn`: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn build_shows_the_graph_after_a_pass_and_skips_optional_passes() {
    let text = |args: &[&str]| {
        let out = cnnc().args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, after_losses, _) = text(&["build", "examples/lenet5.cnn", "--emit", "train-ir", "--after", "losses"]);
    assert_eq!(code, Some(0));
    assert!(after_losses.contains("loss.softmax_cross_entropy") && !after_losses.contains("vjp."), "{after_losses}");
    let (code, full, _) = text(&["build", "examples/lenet5.cnn", "--emit", "train-ir"]);
    assert_eq!(code, Some(0));
    assert!(full.contains("vjp.conv2d[wrt=1;reads=x0,dy"), "{full}");
    let (code, infer, _) = text(&["build", "tests/passes/autodiff/branches.cnn", "--emit", "infer-ir"]);
    assert_eq!(code, Some(0));
    assert!(!infer.contains("dropout") && infer.contains("concat"), "{infer}");
    let (code, no_dce, _) = text(&["build", "examples/lenet5.cnn", "--emit", "train-ir", "--disable-pass", "dce"]);
    assert_eq!(code, Some(0));
    assert_eq!(no_dce, full, "nothing in LeNet-5's training graph is dead");
    let (code, _, err) = text(&["build", "examples/lenet5.cnn", "--emit", "train-ir", "--disable-pass", "autodiff"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot be disabled"), "{err}");
    let (code, _, err) = text(&["build", "examples/lenet5.cnn", "--emit", "train-ir", "--after", "fusion"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no pass is called `fusion`"), "{err}");
    let (code, list, _) = text(&["build", "examples/lenet5.cnn", "--disable-pass", "list"]);
    assert_eq!(code, Some(0));
    assert!(list.contains("autodiff") && list.contains("inference_mode"), "{list}");
}

#[test]
fn bench_times_steps_and_names_the_cpu() {
    let out = cnnc()
        .args(["bench", "examples/lenet5.cnn", "--train", "--batch", "4", "--steps", "2", "--warmup", "0", "--profile"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = [
        "training b4",
        "cpu:",
        "parse + check",
        "step on reference (2 timed",
        "step on lir",
        "vjp.conv2d",
        "gemm",
        "reference / lir",
        "peak live values",
    ];
    for expected in expected {
        assert!(stdout.contains(expected), "`{expected}` missing from:\n{stdout}");
    }
    let out = cnnc().args(["bench", "examples/inception_module.cnn", "--batch", "1", "--steps", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("inference b1"));
    let out = cnnc().args(["bench", "examples/inception_module.cnn", "--train"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no train section"));
    let out = cnnc().args(["bench", "examples/lenet5.cnn", "--threads", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn build_emits_the_kernel_program_and_its_memory_plan() {
    let out = cnnc().args(["build", "examples/lenet5.cnn", "--emit", "lir", "--batch", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let lir = String::from_utf8_lossy(&out.stdout);
    for expected in ["program LeNet5 (batch 2)", "= im2col", "= gemm", "grad@", "I32 2 \"label\"", "= loss_grad"] {
        assert!(lir.contains(expected), "`{expected}` missing from:\n{lir}");
    }
    let out = cnnc().args(["build", "examples/inception_module.cnn", "--emit", "memory"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let memory = String::from_utf8_lossy(&out.stdout);
    assert!(
        memory.contains("arena:") && memory.contains("peak live:") && memory.contains("sum of buffers:"),
        "{memory}"
    );
    let out = cnnc().args(["build", "examples/lenet5.cnn", "--emit", "lir", "--batch", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The inception module's three 1×1 convolutions are one product, whose epilogue writes the
/// 1×1 branch into the concatenation and the 5×5 branch's input into its own buffer: the module
/// copies nothing; its pool branch's pooling is made inside the 1×1 product after it.
#[test]
fn the_inception_module_is_one_product_for_its_bottlenecks_and_copies_nothing() {
    let out = cnnc().args(["build", "examples/inception_module.cnn", "--emit", "kernels"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let kernels = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = kernels.lines().filter(|l| l.starts_with("  k")).collect();
    let merged: Vec<&&str> = lines.iter().filter(|l| l.contains("[784, 176]")).collect();
    assert_eq!(merged.len(), 1, "one product of 64 + 96 + 16 columns:\n{kernels}");
    assert!(
        merged[0].contains(" gemm ") && merged[0].contains("2 column ranges to destinations of their own"),
        "{kernels}"
    );
    assert!(!lines.iter().any(|l| l.contains(" copy ")), "no copy:\n{kernels}");
    assert!(!lines.iter().any(|l| l.contains(" pool ")), "no pooling of its own:\n{kernels}");
    let pooled: Vec<&&str> = lines.iter().filter(|l| l.contains(" pool_gemm ")).collect();
    assert!(pooled.len() == 1 && pooled[0].contains("[784, 32]"), "{kernels}");
    assert_eq!(lines.len(), 4, "1×1 product, 3×3, 5×5, pool branch:\n{kernels}");
}

/// `--winograd-tile 4` transforms the filters of layers over large maps into 36 values each
/// (VGG-16's 224×224 layer of 64 filters over 64 channels: 36·64·64), others into 16; other
/// tiles and the opt-in named as a pass to disable are usage errors.
#[test]
fn a_larger_winograd_tile_is_taken_behind_a_flag() {
    let lir = |tile: &str| {
        let args = ["build", "stdlib/vgg.cnn", "--model", "VGG16", "--emit", "lir", "--winograd-tile", tile];
        let out = cnnc().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let line =
        |text: &str, name: &str| text.lines().find(|l| l.ends_with(&format!("\"{name}\" kept"))).map(str::to_owned);
    let (f2, f4) = (lir("2"), lir("4"));
    let large = "vgg16_features1/vgg_stage1/conv2/winograd";
    let small = "vgg16_features1/vgg_stage4/conv2/winograd";
    assert!(line(&f2, large).unwrap().contains(&format!("F32 {} ", 16 * 64 * 64)), "{f2}");
    assert!(line(&f4, large).unwrap().contains(&format!("F32 {} ", 36 * 64 * 64)), "{f4}");
    assert!(line(&f2, small).unwrap().contains(&format!("F32 {} ", 16 * 512 * 512)), "{f2}");
    assert_eq!(line(&f2, small), line(&f4, small), "28×28 keeps F(2×2, 3×3)");
    let out = cnnc().args(["build", "stdlib/vgg.cnn", "--winograd-tile", "3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a Winograd tile"));
    for command in ["build", "bench"] {
        let out = cnnc().args([command, "stdlib/vgg.cnn", "--disable-pass", "winograd_f4"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{command}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--winograd-tile 4 takes it"), "{command}");
        let args = [command, "stdlib/vgg.cnn", "--disable-pass", "winograd", "--winograd-tile", "4"];
        let out = cnnc().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{command}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--disable-pass winograd leaves out"), "{command}");
    }
    let kernels = |tile: &str| {
        let args = ["build", "stdlib/vgg.cnn", "--model", "VGG16", "--emit", "kernels", "--winograd-tile", tile];
        let out = cnnc().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ["F(2×2, 3×3)", "F(4×4, 3×3)"].map(|f| text.matches(f).count())
    };
    // VGG-16's 3×3 layers over maps of 28×28 and more but the first (3 input channels): 6 over
    // 56×56 and larger, 3 at 28×28.
    assert_eq!(kernels("2"), [9, 0]);
    assert_eq!(kernels("4"), [3, 6]);
}

/// `--emit kernels` says how each product runs: the inception module's merged 1×1 filters (derived
/// by the prepare phase) and its pool branch's filters (parameters) packed once for the
/// micro-kernels, over blocks of rows (784 rows and more; the pool branch's pooled block by
/// block); GoogLeNet's products over 7×7 maps at batch 1 (49 rows) over panels of columns, its
/// pool branches there pooled whole.
#[test]
fn kernels_say_which_products_read_filters_packed_once() {
    let emit = |args: &[&str]| {
        let out = cnnc().args(["build"]).args(args).args(["--emit", "kernels"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for batch in ["32", "1"] {
        let text = emit(&["examples/inception_module.cnn", "--batch", batch]);
        let products: Vec<&str> = text.lines().filter(|l| l.contains(" gemm ")).collect();
        assert_eq!(products.len(), 1, "{text}");
        assert!(products.iter().all(|l| l.contains("over blocks of rows, packed once")), "batch {batch}: {text}");
        let pooled: Vec<&str> = text.lines().filter(|l| l.contains(" pool_gemm ")).collect();
        assert_eq!(pooled.len(), 1, "{text}");
        assert!(pooled[0].contains("made block by block, micro-kernel, filters packed once"), "batch {batch}: {text}");
    }
    let text = emit(&["stdlib/inception.cnn", "--model", "GoogLeNet", "--batch", "1"]);
    assert!(text.lines().any(|l| l.contains("[49, ") && l.contains("over panels of columns, packed once")), "{text}");
    let pooled = "pool_gemm        [49, 128]";
    let line = text.lines().find(|l| l.contains(pooled)).unwrap_or_default();
    assert!(line.contains("micro-kernel over panels of columns, filters packed once"), "{text}");
}

/// `--emit kernels` says how each implicit-GEMM convolution reads its input: GoogLeNet's first
/// layer (3 channels) through its window rows, its 14×14 3×3 layers (96 channels and more)
/// through their taps, none through im2col rows (every host here has AVX2 and FMA).
#[test]
fn kernels_name_how_convolutions_read_their_input() {
    let out = cnnc()
        .args(["build", "stdlib/inception.cnn", "--model", "GoogLeNet", "--emit", "kernels", "--batch", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().find(|l| l.contains(" k0 ")).unwrap_or_default();
    assert!(first.contains("window rows read in place"), "{text}");
    assert!(text.matches("taps read in place").count() >= 5, "{text}");
    assert!(!text.contains("im2col rows"), "{text}");
    // Inference: every one reads its filters packed once by the prepare phase; training packs
    // them on each call (they change every step).
    let implicit: Vec<&str> = text.lines().filter(|l| l.contains("implicit GEMM")).collect();
    assert!(implicit.iter().all(|l| l.contains("filters packed once")), "{text}");
    let out = cnnc().args(["build", "examples/lenet5.cnn", "--emit", "kernels", "--batch", "8"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("implicit GEMM") && !text.contains("filters packed once"), "{text}");
}

#[test]
fn the_jit_backend_trains_and_shows_its_code() {
    let out = cnnc().args(["build", "examples/lenet5.cnn", "--emit", "kernels", "--batch", "4"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let kernels = String::from_utf8_lossy(&out.stdout);
    assert!(
        kernels.contains("generated (cranelift)")
            && kernels.contains("gemm crate")
            && kernels.contains("FLOP")
            && kernels.contains("x86_64"),
        "{kernels}"
    );
    let out = cnnc().args(["build", "examples/lenet5.cnn", "--emit", "clif", "--batch", "4"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("function u0:0(i64)"));
    let dir = tempfile::tempdir().unwrap();
    let o = cnnc()
        .args([
            "run",
            "examples/digits.cnn",
            "--epochs",
            "1",
            "--backend",
            "jit",
            "--out",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("test accuracy: "));
}

/// Started by `mpirun` as one of several processes, a cnnc built without MPI would train its
/// own copy into the same files: it stops first, saying how to build with MPI.
#[cfg(not(feature = "mpi"))]
#[test]
fn without_mpi_a_process_of_several_refuses_to_train() {
    let dir = tempfile::tempdir().unwrap();
    let out = cnnc()
        .args(["run", "examples/lenet5.cnn", "--out"])
        .arg(dir.path().join("run"))
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("OMPI_COMM_WORLD_RANK", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("built without MPI"), "{stderr}");
    assert!(stderr.contains("--features mpi"), "{stderr}");
    assert!(!dir.path().join("run").exists(), "nothing written");
}
