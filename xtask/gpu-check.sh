#!/bin/sh
# The GPU checks of issue 8, in one call on a machine with an NVIDIA GPU, the driver and
# PyTorch (whose CUDA 13 libraries the CUDA build loads), with `.gpu/` from
# `xtask/gpu-pack.sh` in the current folder:
#   1. the host's unit tests from the CUDA build: the fused-op kernels on CUDA against
#      the composed reference, forward and backward;
#   2. the quickstart on cuda:0 and on the CPU, their k-NN side by side;
#   3. DINO's ViT-S/16 step, patchwork then PyTorch, fp32 and bf16, at BATCH (default 64).
set -u
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
work=/tmp/pw-gpu
rm -rf "$work" && mkdir -p "$work"
xz -dc .gpu/patchwork.xz >"$work/patchwork" && xz -dc .gpu/unit-tests.xz >"$work/unit-tests"
chmod +x "$work/patchwork" "$work/unit-tests"
cp .gpu/plugins/*.so "$work/"
lib=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
unset RUST_BACKTRACE
batch=${BATCH:-64}
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    echo "== unit tests (CUDA build)"
    "$work/unit-tests" engine::ops 2>&1 | tail -n 30
    echo "== quickstart, cuda:0"
    ( cd "$work" && time ./patchwork run "$OLDPWD/.gpu/quickstart.ron" --device cuda:0 --no-reload \
        --set "output=\"$work/runs-cuda\"" ) 2>&1 | tail -n 5
    echo "== quickstart, cpu"
    ( cd "$work" && time ./patchwork run "$OLDPWD/.gpu/quickstart.ron" --no-reload \
        --set "output=\"$work/runs-cpu\"" ) 2>&1 | tail -n 5
    for d in cuda cpu; do
        echo "-- k-NN, $d"
        grep -h '"evaluator":"Knn"' "$work/runs-$d"/quickstart/*/metrics.jsonl
    done
    for p in f32 bf16; do
        echo "== DINO ViT-S/16, $p, batch $batch"
        "$work/patchwork" bench train --plugins "$work" --device cuda:0 --precision "$p" \
            --models dino-s16 --batch "$batch" --warmup 2 --vit-steps 5 2>&1
        python3 .gpu/pytorch_reference.py --device cuda --precision "$p" --models dino-s16 \
            --batch "$batch" --warmup 2 --steps 5 2>&1
    done
} 2>&1 | tee "$out/gpu-check.log"
