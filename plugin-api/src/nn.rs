//! Building blocks written on host tensors, shared by every plugin so there is one
//! implementation of each: one small struct per block, constructors that take the
//! scope last, parameter names as in the reference PyTorch state dicts.

mod attention;
mod block;
mod head;
mod linear;
mod mlp;
mod norm;
mod patch_embed;

pub use attention::Attention;
pub use block::{Block, drop_path};
pub use head::{ProjectionHead, projection_head};
pub use linear::{Linear, linear, linear_no_bias};
pub use mlp::{Mlp, mlp};
pub use norm::{LayerNorm, layer_norm};
pub use patch_embed::{PatchEmbed, patch_embed};

use crate::{Result, Tensor};

/// A layer with one input and one output, as candle's `Module`.
pub trait Module {
    /// Applies the layer.
    fn forward(&self, xs: &Tensor) -> Result<Tensor>;
}
