//! Fully connected layer.

use super::Module;
use crate::{Init, ParamScope, Result, Tensor};

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

impl Module for Linear {
    /// `(…, in)` → `(…, out)`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims()?;
        let (lead, last) = dims.split_at(dims.len().saturating_sub(1));
        let rows: usize = lead.iter().product();
        let out_dim = self.weight.dim(0)?;
        let flat = if lead.len() == 1 {
            xs.clone()
        } else {
            xs.reshape(&[rows, last[0]])?
        };
        let mut ys = flat.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            ys = ys.broadcast_add(b)?;
        }
        if lead.len() == 1 {
            return Ok(ys);
        }
        let mut shape = lead.to_vec();
        shape.push(out_dim);
        ys.reshape(&shape)
    }
}
