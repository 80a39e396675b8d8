//! DINOHead: a 3-layer MLP, L2 normalisation, and a weight-normalised last layer.

use patchwork_plugin_api::prelude::*;

/// Widths of the head.
#[derive(Clone, Copy, Debug)]
pub struct HeadDims {
    /// Backbone width (input).
    pub in_dim: usize,
    /// MLP hidden width.
    pub hidden_dim: usize,
    /// Bottleneck width (L2-normalised).
    pub bottleneck_dim: usize,
    /// Number of prototypes (output).
    pub out_dim: usize,
}

/// `mlp` (`mlp.0`, `mlp.2`, `mlp.4`: in → hidden → hidden → bottleneck with GELU
/// between), `F.normalize`, then `last_layer` = `weight_norm(Linear(bottleneck,
/// out_dim, bias=False))` with parameters `weight_v (out, bottleneck)` and
/// `weight_g (out, 1)`.
pub struct DinoHead {
    mlp: ProjectionHead,
    weight_v: Tensor,
    weight_g: Tensor,
}

/// DINOHead's default `nlayers`.
const MLP_LAYERS: usize = 3;

impl DinoHead {
    /// Creates (or finds) the head's parameters under `scope`.
    ///
    /// - MLP linears: trunc-normal 0.02, zero bias (DINOHead `_init_weights`).
    /// - `weight_v`: PyTorch's default Linear init U(±1/√bottleneck), because
    ///   `last_layer` is created after `self.apply(self._init_weights)`.
    /// - `weight_g`: 1, frozen when `norm_last_layer` (`requires_grad = False`).
    pub fn new(dims: HeadDims, norm_last_layer: bool, scope: ParamScope) -> Result<Self> {
        let mlp = projection_head(
            dims.in_dim,
            dims.hidden_dim,
            dims.bottleneck_dim,
            MLP_LAYERS,
            scope.pp("mlp"),
        )?;
        let last = scope.pp("last_layer");
        let weight_v = last.get(
            &[dims.out_dim, dims.bottleneck_dim],
            "weight_v",
            Init::kaiming_uniform(dims.bottleneck_dim),
        )?;
        let g_scope = if norm_last_layer { last.frozen() } else { last };
        let weight_g = g_scope.get(&[dims.out_dim, 1], "weight_g", Init::ONES)?;
        Ok(Self {
            mlp,
            weight_v,
            weight_g,
        })
    }

    /// The effective last-layer weight `g · v / ‖v‖_row`: `(out_dim, bottleneck)`
    /// (`torch._weight_norm(v, g, dim=0)`, no epsilon, as PyTorch).
    pub fn last_weight(&self) -> Result<Tensor> {
        let row_norm = self.weight_v.sqr()?.sum_keepdim(1)?.sqrt()?; // (out, 1)
        self.weight_v.broadcast_mul(&self.weight_g.div(&row_norm)?) // (out, bottleneck)
    }
}

impl Module for DinoHead {
    /// `(B, in_dim)` → `(B, out_dim)` logits.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let z = xs.apply(&self.mlp)?.l2_normalize(D::Minus1)?; // (B, bottleneck), unit rows
        z.matmul(&self.last_weight()?.t()?) // (B, bottleneck)·(bottleneck, out) → (B, out)
    }
}
