# shellcheck shell=sh
# The CUDA toolkit for `cargo build --features cuda`, from PyPI, without a GPU or a system
# install. Source it from the repository root:
#
#     . xtask/cuda-env.sh && cargo build --release --features cuda
#
# The first time, it installs NVIDIA's CUDA 13.0 wheels (nvcc, CCCL, the runtime and math-library
# headers, cuBLAS, cuRAND, NVRTC; about 1.2 GB) into `.cuda/` with pip, adds the unversioned
# library names the linker looks for, and generates `libcuda.so`, a link-time stub of the
# driver library (no package carries the driver). Every time, it exports the environment
# the build needs: CUDA_ROOT, PATH (nvcc), CUDA_COMPUTE_CAP and CUDARC_CUDA_VERSION.
#
# The stub only satisfies the linker: the binary records `libcuda.so.1`, which the NVIDIA
# driver provides on the machine that runs it. Each stub function returns
# CUDA_ERROR_STUB_LIBRARY (34), like the stub in NVIDIA's own toolkit, should it ever be
# loaded instead of the driver.
#
# Settings (environment): PATCHWORK_CUDA_DIR (default `.cuda`), CUDA_COMPUTE_CAP (default
# 90, Hopper: H100/H200; 80 for A100, 89 for L4/L40). CUDA 13.0 needs driver 580 or newer
# on the machine that runs the binary.

patchwork_cuda_setup() {
    _dir=${PATCHWORK_CUDA_DIR:-$PWD/.cuda}
    _root=$_dir/site/nvidia/cu13
    if [ ! -x "$_root/bin/nvcc" ]; then
        # One pip call: `--target` skips a package whose top folder (`nvidia/`) exists.
        echo "cuda-env: installing the CUDA 13.0 toolkit wheels into $_dir (once)" >&2
        python3 -m pip install --quiet --disable-pip-version-check --target "$_dir/site" \
            'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-crt==13.0.*' 'nvidia-nvvm==13.0.*' \
            'nvidia-cuda-cccl==13.0.*' 'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-nvrtc==13.0.*' \
            'nvidia-cublas==13.0.*' 'nvidia-curand==10.4.0.*' || return 1
    fi
    # The wheels carry only versioned shared objects; `-lcublas` needs the plain name.
    for _lib in cublas cublasLt curand nvrtc cudart; do
        _versioned=$(cd "$_root/lib" && ls "lib$_lib.so."* 2>/dev/null | head -n 1)
        if [ -z "$_versioned" ]; then
            echo "cuda-env: lib$_lib.so.* missing in $_root/lib" >&2
            return 1
        fi
        ln -sf "$_versioned" "$_root/lib/lib$_lib.so"
    done
    if [ ! -f "$_root/lib/stubs/libcuda.so" ]; then
        mkdir -p "$_root/lib/stubs"
        # Every driver entry point cuda.h declares, under the versioned names its macros
        # select (`cuMemAlloc` -> `cuMemAlloc_v2`) and under the plain ones.
        {
            gcc -E -P -I"$_root/include" "$_root/include/cuda.h"
            gcc -E -P -D__CUDA_API_VERSION_INTERNAL -I"$_root/include" "$_root/include/cuda.h"
        } | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' \t(' | sort -u |
            sed 's/.*/int &(void) { return 34; }/' >"$_root/lib/stubs/libcuda_stub.c" || return 1
        gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$_root/lib/stubs/libcuda.so" \
            "$_root/lib/stubs/libcuda_stub.c" || return 1
    fi
    export CUDA_ROOT="$_root"
    export PATH="$_root/bin:$PATH"
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
    export CUDARC_CUDA_VERSION=13000
    echo "cuda-env: CUDA_ROOT=$CUDA_ROOT, compute capability $CUDA_COMPUTE_CAP" >&2
}

patchwork_cuda_setup
