#!/bin/sh
# Packs what the GPU checks need into `.gpu/` (ignored by git), small enough to carry to a
# GPU machine that has no Rust toolchain and no network: the CUDA build of `patchwork`
# and of the host's unit tests (stripped, xz-compressed), the release plugin libraries,
# the PyTorch reference and the check script. Run from the repository root; then, on the
# GPU machine, `sh .gpu/gpu-check.sh` (it writes its log to $OUT or /tmp/gpu-out).
set -eu
cargo xtask cuda
. xtask/cuda-env.sh
tests=$(cargo test --release --features cuda -p patchwork --lib --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])')
rm -rf .gpu && mkdir -p .gpu/plugins
strip -o .gpu/patchwork target/release/patchwork
strip -o .gpu/unit-tests "$tests"
xz -T0 -6 .gpu/patchwork .gpu/unit-tests
for so in target/release/*.so; do strip -o ".gpu/plugins/$(basename "$so")" "$so"; done
cp benchmarks/pytorch_reference.py xtask/gpu-check.sh workspaces/quickstart.ron .gpu/
du -sh .gpu
