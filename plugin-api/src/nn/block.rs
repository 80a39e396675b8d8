//! The pre-norm transformer block with stochastic depth.

use super::{Attention, LayerNorm, Mlp, Module, layer_norm, mlp};
use crate::{ParamScope, Result, Tensor};

/// `x + drop_path(attn(norm1(x)))`, then `x + drop_path(mlp(norm2(x)))`.
#[derive(Clone, Debug)]
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    drop_path: f64,
}

impl Block {
    /// A block of width `dim`; names `norm1`, `attn`, `norm2`, `mlp` as DINO.
    pub fn new(
        dim: usize,
        heads: usize,
        mlp_ratio: f64,
        drop_path: f64,
        eps: f64,
        scope: ParamScope,
    ) -> Result<Self> {
        let hidden = (dim as f64 * mlp_ratio) as usize;
        Ok(Self {
            norm1: layer_norm(dim, eps, scope.pp("norm1"))?,
            attn: Attention::new(dim, heads, scope.pp("attn"))?,
            norm2: layer_norm(dim, eps, scope.pp("norm2"))?,
            mlp: mlp(dim, hidden, scope.pp("mlp"))?,
            drop_path,
        })
    }

    /// `(B, N, D)` → `(B, N, D)`; stochastic depth only when `train`.
    pub fn forward_opts(
        &self,
        xs: &Tensor,
        train: bool,
        want_attn: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let rate = if train { self.drop_path } else { 0.0 };
        let (a, probs) = self.attn.forward_attn(&xs.apply(&self.norm1)?, want_attn)?;
        let xs = xs.add(&drop_path(&a, rate)?)?;
        let m = xs.apply(&self.norm2)?.apply(&self.mlp)?;
        Ok((xs.add(&drop_path(&m, rate)?)?, probs))
    }
}

impl Module for Block {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.forward_opts(xs, false, false)?.0)
    }
}

/// Stochastic depth (timm's `drop_path`): zero whole samples with probability
/// `rate`, scale the rest by `1/(1−rate)`.
pub fn drop_path(xs: &Tensor, rate: f64) -> Result<Tensor> {
    if rate <= 0.0 {
        return Ok(xs.clone());
    }
    let keep = 1.0 - rate;
    let dims = xs.dims()?;
    let mut shape = vec![1; dims.len()];
    shape[0] = dims[0];
    let mask = xs
        .host()
        .rand_uniform(&shape, 0.0, 1.0)?
        .affine(1.0, keep)?
        .floor()?;
    xs.broadcast_mul(&mask.affine(1.0 / keep, 0.0)?)
}
