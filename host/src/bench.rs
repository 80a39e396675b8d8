//! `patchwork bench` (train-step throughput, plugin path vs the same model compiled
//! natively into the host) and `patchwork embed` (CLS features to safetensors).

pub mod embed;
pub mod native;
pub mod train;

pub use embed::{EmbedArgs, embed};
pub use train::{BenchArgs, bench};
