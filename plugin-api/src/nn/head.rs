//! Projection heads: an MLP of `n` linear layers with GELU between.

use super::{Linear, Module, linear};
use crate::{ParamScope, Result, Tensor};

/// `in → hidden → … → out`, GELU between layers; parameters `mlp.0`, `mlp.2`, …
/// as a PyTorch `nn.Sequential` of Linear/GELU.
#[derive(Clone, Debug)]
pub struct ProjectionHead {
    layers: Vec<Linear>,
}

/// A head with `n_layers` (≥ 1) linear layers.
pub fn projection_head(
    in_dim: usize,
    hidden: usize,
    out_dim: usize,
    n_layers: usize,
    scope: ParamScope,
) -> Result<ProjectionHead> {
    let n = n_layers.max(1);
    let mut layers = Vec::with_capacity(n);
    for i in 0..n {
        let a = if i == 0 { in_dim } else { hidden };
        let b = if i + 1 == n { out_dim } else { hidden };
        layers.push(linear(a, b, scope.pp(2 * i))?);
    }
    Ok(ProjectionHead { layers })
}

impl Module for ProjectionHead {
    /// `(…, in)` → `(…, out)`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut ys = xs.clone();
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            ys = ys.apply(layer)?;
            if i < last {
                ys = ys.gelu()?;
            }
        }
        Ok(ys)
    }
}
