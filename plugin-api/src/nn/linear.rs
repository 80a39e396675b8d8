//! Fully connected layer.

use super::Module;
use crate::{Init, ParamScope, Result, Tensor, abi::Activation};

/// `y = x·Wᵀ + b`, weight `(out, in)` as PyTorch.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

/// A linear layer with bias, DINO's init (trunc-normal 0.02, zero bias).
pub fn linear(in_dim: usize, out_dim: usize, scope: ParamScope) -> Result<Linear> {
    let weight = scope.get(&[out_dim, in_dim], "weight", Init::trunc_normal(0.02))?;
    let bias = scope.get(&[out_dim], "bias", Init::ZEROS)?;
    Ok(Linear {
        weight,
        bias: Some(bias),
    })
}

/// A linear layer without bias.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, scope: ParamScope) -> Result<Linear> {
    let weight = scope.get(&[out_dim, in_dim], "weight", Init::trunc_normal(0.02))?;
    Ok(Linear { weight, bias: None })
}

impl Linear {
    /// From existing tensors (e.g. a weight-normalised weight).
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The `(out, in)` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Linear {
    /// `act(x·Wᵀ + b)`: `(…, in)` → `(…, out)`, as one host op.
    pub fn forward_act(&self, xs: &Tensor, act: Activation) -> Result<Tensor> {
        xs.linear(&self.weight, self.bias.as_ref(), act)
    }
}

impl Module for Linear {
    /// `(…, in)` → `(…, out)`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_act(xs, Activation::IDENTITY)
    }
}
