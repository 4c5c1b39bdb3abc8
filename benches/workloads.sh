#!/usr/bin/env bash
# The `cnnc bench` workloads, one after the other, with the same binary: `bash benches/workloads.sh
# [extra cnnc bench flags]` from the repository root (builds the release binary first).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
cnnc=target/release/cnnc
"$cnnc" bench examples/lenet5.cnn --train --batch 64 --steps 20 "$@"
"$cnnc" bench benches/models/resnet20_train.cnn --train --batch 64 --steps 5 "$@"
"$cnnc" bench stdlib/vgg.cnn --infer --batch 1 --steps 3 --warmup 1 "$@"
"$cnnc" bench stdlib/resnet.cnn --model ResNet50 --infer --batch 1 --steps 5 "$@"
"$cnnc" bench stdlib/resnet.cnn --model ResNet50 --infer --batch 16 --steps 3 --warmup 1 "$@"
"$cnnc" bench stdlib/inception.cnn --model GoogLeNet --infer --batch 1 --steps 5 "$@"
"$cnnc" bench examples/inception_module.cnn --infer --batch 32 --steps 5 "$@"
