//! Multi-head self-attention (`qkv` and `proj` as in DINO's `vision_transformer.py`).

use super::{Linear, Module, linear};
use crate::{ParamScope, Result, Tensor};

/// Multi-head self-attention with a fused host attention kernel.
#[derive(Clone, Debug)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    /// `dim` wide with `heads` heads, qkv bias on.
    pub fn new(dim: usize, heads: usize, scope: ParamScope) -> Result<Self> {
        let head_dim = dim / heads.max(1);
        Ok(Self {
            qkv: linear(dim, 3 * dim, scope.pp("qkv"))?,
            proj: linear(dim, dim, scope.pp("proj"))?,
            heads,
            scale: 1.0 / (head_dim as f64).sqrt(),
        })
    }

    /// `(B, N, D)` → `(B, N, D)`, and `(B, heads, N, N)` probabilities when `want_attn`.
    pub fn forward_attn(&self, xs: &Tensor, want_attn: bool) -> Result<(Tensor, Option<Tensor>)> {
        let qkv = xs.apply(&self.qkv)?;
        let (out, probs) = Tensor::self_attention(&qkv, self.heads, self.scale, want_attn)?;
        let out = out.apply(&self.proj)?;
        Ok((out, probs))
    }
}

impl Module for Attention {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.forward_attn(xs, false)?.0)
    }
}
