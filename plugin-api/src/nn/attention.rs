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
        let dims = xs.dims()?;
        let (b, n, d) = (dims[0], dims[1], dims[2]);
        let hd = d / self.heads;
        let qkv = xs
            .apply(&self.qkv)?
            .reshape(&[b, n, 3, self.heads, hd])?
            .permute(&[2, 0, 3, 1, 4])?;
        let q = qkv.narrow(0, 0, 1)?.squeeze(0)?;
        let k = qkv.narrow(0, 1, 1)?.squeeze(0)?;
        let v = qkv.narrow(0, 2, 1)?.squeeze(0)?;
        let (out, probs) = Tensor::attention(&q, &k, &v, self.scale, want_attn)?;
        let out = out
            .transpose(1, 2)?
            .reshape(&[b, n, d])?
            .apply(&self.proj)?;
        Ok((out, probs))
    }
}

impl Module for Attention {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.forward_attn(xs, false)?.0)
    }
}
