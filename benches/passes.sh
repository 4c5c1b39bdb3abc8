#!/usr/bin/env bash
# Each kernel-program pass on and off, in one run: for GoogLeNet and ResNet-50 inference (b1)
# and ResNet-20 training (b64), `cnnc bench` with every pass, then with each pass left out
# (`--disable-pass`), on the JIT. Prints one Markdown table: the step's median, and the arena's
# peak against the sum of all buffers (no planning). `bash benches/passes.sh` from the repository
# root (builds the release binary first). Outside CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
cnnc=target/release/cnnc
passes=(fold_batchnorm fuse_maps fuse_epilogue fuse_im2col fuse_bn_stats merge_siblings winograd concat_in_place fuse_pool in_place)
step() { # args...: the median step in ms, the arena peak and the sum of buffers in MiB
    local out
    out=$("$cnnc" bench "$@" --backend jit 2>&1)
    local ms arena sum
    ms=$(sed -n 's/.*step on jit .*: median \([0-9.]*\) ms.*/\1/p' <<<"$out")
    arena=$(sed -n 's/.*memory: arena peak live (least possible) *\([0-9.]*\) MiB.*/\1/p' <<<"$out")
    sum=$(sed -n 's/.*memory: sum of all buffers (no reuse) *\([0-9.]*\) MiB.*/\1/p' <<<"$out")
    echo "$ms ms, arena $arena / $sum MiB"
}
echo "| workload | all passes | $(printf 'without %s | ' "${passes[@]}")"
echo "|---|---|$(printf -- '---|%.0s' "${passes[@]}")"
for w in "GoogLeNet b1|stdlib/inception.cnn --model GoogLeNet --infer --batch 1 --steps 5" \
         "ResNet-50 b1|stdlib/resnet.cnn --model ResNet50 --infer --batch 1 --steps 5" \
         "ResNet-20 training b64|benches/models/resnet20_train.cnn --train --batch 64 --steps 5"; do
    name=${w%%|*}
    read -r -a args <<<"${w#*|}"
    row="| $name | $(step "${args[@]}") |"
    for p in "${passes[@]}"; do
        row+=" $(step "${args[@]}" --disable-pass "$p") |"
    done
    echo "$row"
done
