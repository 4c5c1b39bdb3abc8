#!/usr/bin/env bash
# The ahead-of-time object file's latency against `cnnc bench --infer` on the same model, in one
# run: each model is built with `cnnc build -o M.o` (and its header), linked into a small C
# program that times `M_infer` on one example (median of N calls after a warm-up), then `cnnc
# bench --infer --batch 1` runs the same model on the JIT with both cores and with one
# (`--threads 1`: an object file's call is single-threaded by design). Prints one
# Markdown table. `bash benches/aot.sh` from the repository root (builds the release binary
# first). Outside CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
cnnc=$PWD/target/release/cnnc
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "| model | object file | object | cnnc JIT, 2 threads | cnnc JIT, 1 thread | object / JIT (1 thread) |"
echo "|---|---|---|---|---|---|"
for w in "LeNet-5|examples/lenet5.cnn|LeNet5|200" \
         "ResNet-20|stdlib/resnet.cnn|ResNet20|50" \
         "FaceRecognitionNet|examples/face_recognition.cnn|FaceRecognitionNet|10" \
         "GoogLeNet|stdlib/inception.cnn|GoogLeNet|5"; do
    IFS='|' read -r label file model steps <<<"$w"
    name=$(tr 'A-Z' 'a-z' <<<"$model" | tr -c 'a-z0-9\n' '_')
    up=$(tr 'a-z' 'A-Z' <<<"$name")
    "$cnnc" build "$file" --model "$model" -o "$work/$name.o" >/dev/null 2>&1
    "$cnnc" build "$file" --model "$model" -o "$work/$name.h" >/dev/null 2>&1
    cat >"$work/$name.c" <<C
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "$name.h"
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
int main(void) {
    int n = $steps;
    float *in = malloc(sizeof(float) * ${up}_INPUT_SIZE), *out = malloc(sizeof(float) * 1000000);
    for (int i = 0; i < ${up}_INPUT_SIZE; i++) in[i] = (float)((i * 7919) % 1000) / 500.0f - 1.0f;
    void *scratch = malloc(${up}_SCRATCH_BYTES);
    double *t = malloc(sizeof(double) * n);
    ${name}_infer(in, out, 1, scratch);
    for (int i = 0; i < n; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        ${name}_infer(in, out, 1, scratch);
        clock_gettime(CLOCK_MONOTONIC, &b);
        t[i] = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
    }
    qsort(t, n, sizeof(double), cmp);
    printf("%.3f\n", t[n / 2]);
    return 0;
}
C
    cc -O2 -o "$work/$name" "$work/$name.c" "$work/$name.o" -lm
    size=$(stat -c %s "$work/$name.o")
    object=$("$work/$name")
    jit() { "$cnnc" bench "$file" --model "$model" --infer --batch 1 --steps "$steps" --backend jit "$@" 2>&1 \
        | sed -n 's/.*step on jit .*: median \([0-9.]*\) ms.*/\1/p'; }
    two=$(jit)
    one=$(jit --threads 1)
    ratio=$(awk -v a="$object" -v b="$one" 'BEGIN { printf "%.2f", a / b }')
    echo "| $label | $((size / 1024)) KiB | $object ms | $two ms | $one ms | $ratio× |"
done
