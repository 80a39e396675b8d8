//! The transformer MLP: fc1 → GELU → fc2.

use super::{Linear, Module, linear};
use crate::{ParamScope, Result, Tensor, abi::Activation};

/// `fc1`, `fc2` with GELU between (timm's `Mlp`).
#[derive(Clone, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

/// An MLP `dim → hidden → dim`.
pub fn mlp(dim: usize, hidden: usize, scope: ParamScope) -> Result<Mlp> {
    Ok(Mlp {
        fc1: linear(dim, hidden, scope.pp("fc1"))?,
        fc2: linear(hidden, dim, scope.pp("fc2"))?,
    })
}

impl Module for Mlp {
    /// `(…, dim)` → `(…, dim)`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc1.forward_act(xs, Activation::GELU)?.apply(&self.fc2)
    }
}
