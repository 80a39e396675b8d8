//! `patchwork bench` (ViT-Tiny train-step and forward throughput; the quickstart's
//! train step, plugin path vs the same model compiled natively into the host), `patchwork bench data` (loader vs train step), `patchwork bench peak` (the CPU's
//! measured fp32 peak) and
//! `patchwork embed` (CLS features to safetensors).

pub mod data;
pub mod dino;
pub mod embed;
pub mod native;
pub mod peak;
pub mod train;
pub mod vit;

pub use embed::{EmbedArgs, embed};
pub use train::{BenchArgs, bench};
