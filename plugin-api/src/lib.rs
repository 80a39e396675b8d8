//! # patchwork-plugin-api
//!
//! The one crate a patchwork plugin links. Tensors live in the host: a plugin holds
//! [`Tensor`] handles and every operation goes through the host's op table, so
//! there is one autograd graph, one device and one thread pool, and a plugin binary
//! is the same on CPU and CUDA. Plugins never link candle.
//!
//! ## Writing a plugin
//!
//! 1. A `cdylib` crate depending on `patchwork-plugin-api` and `serde` only.
//! 2. A `Config` struct (`Deserialize + Serialize + Default`,
//!    `#[serde(deny_unknown_fields, default)]`) whose `Default` holds the paper's values.
//! 3. A type implementing [`Backbone`], [`PretextTask`] or [`Adaptation`]; its
//!    parameters are created by name through a [`ParamScope`] (`scope.pp("blocks").pp(3)`),
//!    so checkpoints, EMA teachers and hot reload work by name.
//! 4. One export macro, which writes the root module and catches every panic.
//!
//! ```no_run
//! use patchwork_plugin_api::prelude::*;
//!
//! #[derive(serde::Deserialize, serde::Serialize)]
//! #[serde(deny_unknown_fields, default)]
//! pub struct Config { dim: usize }
//! impl Default for Config { fn default() -> Self { Self { dim: 64 } } }
//!
//! /// Mean-pools patches of one linear embedding.
//! pub struct Tiny { embed: PatchEmbed, dim: usize }
//!
//! impl Backbone for Tiny {
//!     type Config = Config;
//!     fn new(cfg: Config, scope: ParamScope) -> Result<Self> {
//!         Ok(Self { embed: patch_embed(3, cfg.dim, 4, scope.pp("patch_embed"))?, dim: cfg.dim })
//!     }
//!     fn geometry(&self) -> Geometry {
//!         Geometry { in_chans: 3, img_size: 32, patch_size: 4, embed_dim: self.dim as u32, depth: 1, num_heads: 1 }
//!     }
//!     fn forward(&self, images: &Tensor, _opts: &ForwardOptions) -> Result<BackboneOutput> {
//!         let patches = images.apply(&self.embed)?;
//!         let cls = patches.mean(1)?;
//!         Ok(BackboneOutput { cls, patches, layers: vec![], attention: None })
//!     }
//! }
//!
//! export_backbone!(Tiny, name = "tiny", description = "mean-pooled patch embedding");
//! ```
//!
//! Start from `plugins/minimal-backbone`, `plugins/minimal-task` and
//! `plugins/minimal-adaptation` in the patchwork repository: the smallest complete
//! backbone (a one-block ViT), pretext task (SimSiam) and adaptation (a linear
//! classifier, probed or fine-tuned), each one file.
//! `patchwork new plugin NAME --kind backbone|pretext|adaptation` copies one into a
//! crate of your own, with a README and an example workspace.
//! `plugins/vit` and `plugins/dino` are full-size examples. `CHANGELOG.md` beside this
//! crate lists the ABI versions.
//!
//! ## Versioning
//!
//! This crate's version is the ABI version: under 0.y a minor bump is breaking and
//! the host refuses plugins built against another minor. New host ops are added
//! at the end of [`abi::HostOps`] and raise [`abi::HOST_OP_LEVEL`]; a plugin built
//! against a newer level is refused by an older host with both levels named.
#![deny(missing_docs)]

pub mod abi;
pub mod config;
mod error;
pub mod export;
mod kinds;
pub mod nn;
mod params;
mod tensor;

#[doc(hidden)]
pub use abi_stable;

pub use abi::{Geometry, Init, StepInfo, ViewSpec};
pub use error::{Error, Result};
pub use kinds::{
    Adaptation, Backbone, BackboneHandle, BackboneOutput, Batch, ForwardOptions, PretextTask,
    StepOutput,
};
pub use params::ParamScope;
pub use tensor::{D, Dim, Host, Tensor};

/// Everything a plugin usually needs.
pub mod prelude {
    pub use crate::nn::{
        Attention, Block, LayerNorm, Linear, Mlp, Module, PatchEmbed, ProjectionHead, layer_norm,
        linear, linear_no_bias, mlp, patch_embed, projection_head,
    };
    pub use crate::{
        Adaptation, Backbone, BackboneHandle, BackboneOutput, Batch, D, Error, ForwardOptions,
        Geometry, Host, Init, ParamScope, PretextTask, Result, StepInfo, StepOutput, Tensor,
        ViewSpec, abi::DType, config::parse_config, export_adaptation, export_backbone,
        export_pretext,
    };
}
