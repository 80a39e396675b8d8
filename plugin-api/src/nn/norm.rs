//! Layer normalisation.

use super::Module;
use crate::{Init, ParamScope, Result, Tensor};

/// LayerNorm over the last dim, host-fused.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

/// A LayerNorm of width `dim` (weight 1, bias 0).
pub fn layer_norm(dim: usize, eps: f64, scope: ParamScope) -> Result<LayerNorm> {
    let weight = scope.get(&[dim], "weight", Init::ONES)?;
    let bias = scope.get(&[dim], "bias", Init::ZEROS)?;
    Ok(LayerNorm { weight, bias, eps })
}

impl Module for LayerNorm {
    /// `(…, dim)` → `(…, dim)`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.layer_norm(&self.weight, &self.bias, self.eps)
    }
}
