//! SelfPatch's aggregation module (`SelfPatchHead`): a learnable query token that
//! attends over a set of patch tokens through class-attention blocks (CaiT), then a
//! LayerNorm (eps 1e-6). Only the query produces a query; keys and values come from
//! the query and the tokens; the tokens themselves pass through unchanged.

use patchwork_plugin_api::prelude::*;

/// One class-attention block: `q ← q + CA(LN[q; x])`, `q ← q + MLP(LN q)`.
pub struct ClassAttention {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    proj: Linear,
    norm2: LayerNorm,
    mlp: Mlp,
    heads: usize,
}

impl ClassAttention {
    /// A block of width `dim` with `heads` heads and an MLP of ratio 4 (qkv bias on).
    pub fn new(dim: usize, heads: usize, scope: ParamScope) -> Result<Self> {
        Ok(Self {
            norm1: layer_norm(dim, 1e-6, scope.pp("norm1"))?,
            q: linear(dim, dim, scope.pp("attn").pp("q"))?,
            k: linear(dim, dim, scope.pp("attn").pp("k"))?,
            v: linear(dim, dim, scope.pp("attn").pp("v"))?,
            proj: linear(dim, dim, scope.pp("attn").pp("proj"))?,
            norm2: layer_norm(dim, 1e-6, scope.pp("norm2"))?,
            mlp: mlp(dim, 4 * dim, scope.pp("mlp"))?,
            heads,
        })
    }

    /// `query (M, 1, D)` updated by attending over `[query; tokens (M, T, D)]`.
    pub fn forward(&self, query: &Tensor, tokens: &Tensor) -> Result<Tensor> {
        let all = Tensor::cat(&[query, tokens], 1)?; // (M, 1+T, D)
        let dims = all.dims()?;
        let (m, n, d) = (dims[0], dims[1], dims[2]);
        let hd = d / self.heads.max(1);
        let u = all.apply(&self.norm1)?;
        let heads = |t: Tensor, len: usize| -> Result<Tensor> {
            t.reshape(&[m, len, self.heads, hd])?.transpose(1, 2) // (M, H, len, hd)
        };
        let q = heads(u.narrow(1, 0, 1)?.apply(&self.q)?, 1)?;
        let k = heads(u.apply(&self.k)?, n)?;
        let v = heads(u.apply(&self.v)?, n)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let (out, _) = Tensor::attention(
            &q.contiguous()?,
            &k.contiguous()?,
            &v.contiguous()?,
            scale,
            false,
        )?;
        let out = out
            .transpose(1, 2)?
            .reshape(&[m, 1, d])?
            .apply(&self.proj)?;
        let query = query.add(&out)?;
        query.add(&query.apply(&self.norm2)?.apply(&self.mlp)?)
    }
}

/// The aggregation module: query token, `blocks` class-attention blocks, final norm.
pub struct Aggregation {
    query: Tensor,
    blocks: Vec<ClassAttention>,
    norm: LayerNorm,
}

impl Aggregation {
    /// SelfPatch's head: 2 blocks in the paper.
    pub fn new(dim: usize, heads: usize, blocks: usize, scope: ParamScope) -> Result<Self> {
        Ok(Self {
            query: scope.get(&[1, 1, dim], "cls_token", Init::trunc_normal(0.02))?,
            blocks: (0..blocks)
                .map(|i| ClassAttention::new(dim, heads, scope.pp("blocks").pp(i)))
                .collect::<Result<_>>()?,
            norm: layer_norm(dim, 1e-6, scope.pp("norm"))?,
        })
    }

    /// The query after attending over `tokens (M, T, D)`, normalised: `(M, D)`.
    pub fn aggregate(&self, tokens: &Tensor) -> Result<Tensor> {
        let m = tokens.dim(0)?;
        let d = tokens.dim(2)?;
        let mut q = self.query.broadcast_as(&[m, 1, d])?.contiguous()?;
        for block in &self.blocks {
            q = block.forward(&q, tokens)?;
        }
        q.apply(&self.norm)?.reshape(&[m, d])
    }

    /// The final norm alone, on `(…, D)` tokens (the student's patch representations).
    pub fn normalize(&self, tokens: &Tensor) -> Result<Tensor> {
        tokens.apply(&self.norm)
    }
}
