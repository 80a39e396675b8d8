//! With the `cuda` feature, compiles the fused-op CUDA kernels
//! (`src/engine/ops/kernels.cu`) to PTX in `OUT_DIR`, which the host embeds and the
//! driver compiles for the GPU it runs on. Without the feature it does nothing.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: &str = "src/engine/ops/kernels.cu";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo::rerun-if-changed={KERNELS}");
    for var in ["NVCC", "CUDA_ROOT", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // PTX for a virtual architecture runs on it and every later GPU (the driver compiles
    // it at load); 8.0 (Ampere) unless CUDA_COMPUTE_CAP names the target.
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let status = Command::new(nvcc())
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg(KERNELS)
        .arg("-o")
        .arg(out.join("patchwork_ops.ptx"))
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("nvcc failed on {KERNELS} ({s}); see its output above"),
        Err(e) => panic!(
            "cannot run nvcc ({e}): the `cuda` feature needs the CUDA toolkit; \
             `. xtask/cuda-env.sh` installs it and sets NVCC's path"
        ),
    }
}

/// `$NVCC`, else `nvcc` under `$CUDA_ROOT`/`$CUDA_HOME`, else `nvcc` on the PATH.
fn nvcc() -> PathBuf {
    if let Some(path) = std::env::var_os("NVCC") {
        return path.into();
    }
    for root in ["CUDA_ROOT", "CUDA_HOME"] {
        if let Some(root) = std::env::var_os(root) {
            let path = PathBuf::from(root).join("bin").join("nvcc");
            if path.exists() {
                return path;
            }
        }
    }
    "nvcc".into()
}
