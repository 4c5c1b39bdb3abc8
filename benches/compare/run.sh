#!/usr/bin/env bash
# cnnc against PyTorch (eager and torch.compile), ONNX Runtime, JAX and TensorFlow (with and
# without XLA), in one run on this machine: makes its own Python environment from the package
# registry (benches/compare/.venv; a framework that does not install is reported and skipped),
# builds cnnc, and writes benches/compare/results.md and results.json. Outside the tests and CI.
#
#   bash benches/compare/run.sh [--rounds 3] [--threads 2] [--only lenet5,resnet20,vgg16,...]
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=benches/compare/.venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
for pkg in numpy onnx onnxruntime torch "jax[cpu]" tensorflow-cpu; do
    "$venv/bin/python" -m pip install -q "$pkg" || echo "note: $pkg does not install here: skipped" >&2
done
cargo build --release --quiet
exec "$venv/bin/python" benches/compare/compare.py "$@"
