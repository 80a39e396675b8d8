//! Patch embedding: a conv with kernel = stride = patch size.

use super::Module;
use crate::{Init, ParamScope, Result, Tensor};

/// `(B, C, H, W)` → `(B, N, D)` tokens; parameters `proj.weight`, `proj.bias`.
#[derive(Clone, Debug)]
pub struct PatchEmbed {
    weight: Tensor,
    bias: Tensor,
    patch: usize,
}

/// A patch embedding of `in_chans` → `dim` with `patch`×`patch` patches
/// (PyTorch's default conv init).
pub fn patch_embed(
    in_chans: usize,
    dim: usize,
    patch: usize,
    scope: ParamScope,
) -> Result<PatchEmbed> {
    let fan_in = in_chans * patch * patch;
    let proj = scope.pp("proj");
    let weight = proj.get(
        &[dim, in_chans, patch, patch],
        "weight",
        Init::kaiming_uniform(fan_in),
    )?;
    let bias = proj.get(&[dim], "bias", Init::kaiming_uniform(fan_in))?;
    Ok(PatchEmbed {
        weight,
        bias,
        patch,
    })
}

impl PatchEmbed {
    /// Patch side in pixels.
    pub fn patch_size(&self) -> usize {
        self.patch
    }
}

impl Module for PatchEmbed {
    /// `(B, C, H, W)` → `(B, (H/p)·(W/p), D)`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = xs.conv2d(&self.weight, Some(&self.bias), self.patch, 0)?;
        ys.flatten_from(2)?.transpose(1, 2)
    }
}
