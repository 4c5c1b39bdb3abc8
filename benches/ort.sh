#!/usr/bin/env bash
# The inference workloads on ONNX Runtime beside cnnc, interleaved in one run: each model exported
# by cnnc (`--emit onnx`, its initial weights), then `cnnc bench --infer` and `benches/ort.py` in
# turn, on the same number of threads (2). Needs `pip install onnxruntime`. Outside CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
cnnc=target/release/cnnc
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() { # file model batch steps [cnnc bench flags...]
    local file=$1 model=$2 batch=$3 steps=$4
    shift 4
    local flags=()
    [ -n "$model" ] && flags=(--model "$model")
    "$cnnc" build "$file" "${flags[@]}" --emit onnx -o "$out/m.onnx" 2>/dev/null
    "$cnnc" bench "$file" "${flags[@]}" --infer --batch "$batch" --steps "$steps" --threads 2 --backend jit "$@" | grep -E "^cnnc bench|median"
    python3 benches/ort.py "$out/m.onnx" "$batch" "$steps" 2
}
run stdlib/vgg.cnn VGG16 1 3
run stdlib/vgg.cnn VGG16 1 3 --winograd-tile 4
run stdlib/resnet.cnn ResNet50 1 5
run stdlib/resnet.cnn ResNet50 16 3
run stdlib/inception.cnn GoogLeNet 1 5
run examples/inception_module.cnn "" 32 5
