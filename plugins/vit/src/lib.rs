//! Vision Transformer backbone (Dosovitskiy et al., "An Image is Worth 16x16 Words",
//! ICLR 2021) in the variant of DINO's `vision_transformer.py` (Caron et al. 2021),
//! following `methods.md` §1 "Backbone".
//!
//! What is followed:
//! - conv patch embedding `patch_embed.proj` (kernel = stride = patch size, PyTorch's
//!   default conv init), learnable `cls_token (1, 1, D)` and `pos_embed (1, N+1, D)`
//!   (trunc-normal std 0.02);
//! - pre-norm blocks `blocks.{i}` (`norm1`, `attn.qkv` with bias, `attn.proj`,
//!   `norm2`, `mlp.fc1`, `mlp.fc2`, exact GELU), LayerNorm eps 1e-6, mlp_ratio 4,
//!   Linear init trunc-normal 0.02 with zero bias, final `norm`;
//! - stochastic depth `torch.linspace(0, drop_path_rate, depth)` over the blocks,
//!   only when `opts.train` (DINO builds its teacher with drop-path 0; here the
//!   teacher is simply run with `train = false`);
//! - presets tiny 192/12/3, small 384/12/6, base 768/12/12;
//! - any input whose sides are multiples of the patch size: when the patch grid
//!   differs from `img_size / patch_size`, the patch part of `pos_embed` is resized
//!   bicubically exactly as `interpolate_pos_encoding` (`F.interpolate(mode='bicubic',
//!   scale_factor=(h0 + 0.1)/√N, …)`, align_corners False, A = −0.75). The resize is
//!   a constant matrix built in Rust ([`interp`]) and applied with a matmul, so the
//!   gradient reaches `pos_embed`;
//! - outputs: `cls = norm(x)[:, 0]`, `patches = norm(x)[:, 1:]`.
//!
//! Extras for other methods:
//! - `opts.keep (B, K)` U32: only those patch tokens (after adding their position
//!   embedding) enter the blocks, as MAE's encoder (`random_masking` then CLS);
//! - `opts.layers`: every block's output passed through the final norm, as DINO's
//!   `get_intermediate_layers` (what the linear probe concatenates);
//! - `opts.attention`: the last block's attention probabilities `(B, heads, T, T)`,
//!   as `get_last_selfattention`.
//!
//! Deviations:
//! - dropout (`drop_rate`, `attn_drop_rate`) is not implemented; DINO's defaults are 0.
//! - a non-square input whose grid has one side equal to the native grid is still
//!   resized on both axes with DINO's +0.1 factor (as DINO does); a square input at
//!   the native size is passed through untouched (as DINO does).
//! - `layers` are normalised outputs (DINO's `get_intermediate_layers`), not raw
//!   residual streams.

mod config;
pub mod interp;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use patchwork_plugin_api::prelude::*;

pub use config::{Arch, Config, PRESETS, drop_path_rates, preset};

/// DINO's ViT.
pub struct Vit {
    arch: Arch,
    patch_embed: PatchEmbed,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    /// Position-embedding resize matrices by target grid `(h, w)`.
    resize_cache: Mutex<ResizeCache>,
}

/// Row-major `(h·w) × N0` resize matrices by target grid `(h, w)`.
type ResizeCache = HashMap<(usize, usize), Arc<Vec<f32>>>;

/// LayerNorm epsilon of DINO's ViT (`partial(nn.LayerNorm, eps=1e-6)`).
const LN_EPS: f64 = 1e-6;

/// A geometry field; [`Config::resolve`] has checked that it fits.
fn to_u32(v: usize) -> u32 {
    u32::try_from(v).expect("vit sizes should fit in u32 after Config::resolve")
}

impl Vit {
    /// The patch part of the position embedding for a `gh × gw` grid: `(1, gh·gw, D)`.
    fn patch_pos_embed(&self, gh: usize, gw: usize) -> Result<Tensor> {
        let g0 = self.arch.grid();
        let n0 = g0 * g0;
        let patch_pos = self.pos_embed.narrow(1, 1, n0)?; // (1, N0, D)
        if (gh, gw) == (g0, g0) {
            return Ok(patch_pos);
        }
        let matrix = {
            let mut cache = self
                .resize_cache
                .lock()
                .map_err(|_| Error::msg("vit resize cache poisoned"))?;
            cache
                .entry((gh, gw))
                .or_insert_with(|| Arc::new(interp::pos_embed_matrix(g0, gh, gw)))
                .clone()
        };
        let host = self.pos_embed.host();
        let m = host.from_f32(&matrix, &[gh * gw, n0])?; // (N, N0)
        m.matmul(&patch_pos.squeeze(0)?)?.unsqueeze(0) // (N, N0)·(N0, D) → (1, N, D)
    }

    fn check_input(&self, images: &Tensor) -> Result<(usize, usize, usize)> {
        let dims = images.dims()?;
        let p = self.arch.patch_size;
        match dims.as_slice() {
            &[b, c, h, w]
                if c == self.arch.in_chans
                    && h.is_multiple_of(p)
                    && w.is_multiple_of(p)
                    && h > 0
                    && w > 0 =>
            {
                Ok((b, h / p, w / p))
            }
            _ => Err(Error::msg(format!(
                "vit expects (B, {}, H, W) images with H and W multiples of {p}, got {dims:?}",
                self.arch.in_chans
            ))),
        }
    }
}

/// Keeps the patch tokens at `keep (B, K)` U32: `(B, N, D)` → `(B, K, D)`.
fn keep_tokens(tokens: &Tensor, keep: &Tensor) -> Result<Tensor> {
    let (b, d) = (tokens.dim(0)?, tokens.dim(2)?);
    let kdims = keep.dims()?;
    let k = match kdims.as_slice() {
        &[kb, k] if kb == b => k,
        _ => {
            return Err(Error::msg(format!(
                "vit keep must be (B, K) = ({b}, K), got {kdims:?}"
            )));
        }
    };
    if keep.dtype()? != DType::U32 {
        return Err(Error::msg("vit keep indices must be U32"));
    }
    let index = keep.unsqueeze(2)?.broadcast_as(&[b, k, d])?.contiguous()?; // (B, K, D)
    tokens.contiguous()?.gather(&index, 1) // candle's gather wants a contiguous source
}

impl Backbone for Vit {
    type Config = Config;

    fn new(config: Config, scope: ParamScope) -> Result<Self> {
        let arch = config.resolve()?;
        let (d, g) = (arch.embed_dim, arch.grid());
        let patch_embed = patch_embed(arch.in_chans, d, arch.patch_size, scope.pp("patch_embed"))?;
        let cls_token = scope.get(&[1, 1, d], "cls_token", Init::trunc_normal(0.02))?;
        let pos_embed = scope.get(&[1, g * g + 1, d], "pos_embed", Init::trunc_normal(0.02))?;
        let blocks = drop_path_rates(arch.drop_path_rate, arch.depth)
            .into_iter()
            .enumerate()
            .map(|(i, dpr)| {
                Block::new(
                    d,
                    arch.num_heads,
                    arch.mlp_ratio,
                    dpr,
                    LN_EPS,
                    scope.pp("blocks").pp(i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = layer_norm(d, LN_EPS, scope.pp("norm"))?;
        Ok(Self {
            arch,
            patch_embed,
            cls_token,
            pos_embed,
            blocks,
            norm,
            resize_cache: Mutex::new(HashMap::new()),
        })
    }

    fn geometry(&self) -> Geometry {
        let a = &self.arch;
        Geometry {
            in_chans: to_u32(a.in_chans),
            img_size: to_u32(a.img_size),
            patch_size: to_u32(a.patch_size),
            embed_dim: to_u32(a.embed_dim),
            depth: to_u32(a.depth),
            num_heads: to_u32(a.num_heads),
        }
    }

    fn forward(&self, images: &Tensor, opts: &ForwardOptions) -> Result<BackboneOutput> {
        let (b, gh, gw) = self.check_input(images)?;
        let d = self.arch.embed_dim;
        // (B, C, H, W) → (B, N, D), N = gh·gw, plus the (resized) position embedding.
        let mut tokens = images
            .apply(&self.patch_embed)?
            .broadcast_add(&self.patch_pos_embed(gh, gw)?)?;
        if let Some(keep) = &opts.keep {
            tokens = keep_tokens(&tokens, keep)?; // (B, K, D)
        }
        let n = tokens.dim(1)?;
        // CLS token with its own position embedding: (1, 1, D) → (B, 1, D).
        let cls = self
            .cls_token
            .add(&self.pos_embed.narrow(1, 0, 1)?)?
            .broadcast_as(&[b, 1, d])?;
        let mut x = Tensor::cat(&[&cls, &tokens], 1)?; // (B, 1+N, D)
        let mut layers = Vec::new();
        let mut attention = None;
        let last = self.blocks.len().saturating_sub(1);
        for (i, block) in self.blocks.iter().enumerate() {
            let (y, probs) = block.forward_opts(&x, opts.train, opts.attention && i == last)?;
            x = y;
            if opts.layers {
                layers.push(x.apply(&self.norm)?); // (B, 1+N, D)
            }
            if probs.is_some() {
                attention = probs; // (B, heads, 1+N, 1+N)
            }
        }
        let x = x.apply(&self.norm)?;
        Ok(BackboneOutput {
            cls: x.narrow(1, 0, 1)?.squeeze(1)?, // (B, D)
            patches: x.narrow(1, 1, n)?,         // (B, N, D)
            layers,
            attention,
        })
    }
}

export_backbone!(
    Vit,
    name = "vit",
    description = "ViT (tiny/small/base) as in DINO: bicubic pos-embed resizing, stochastic depth, masked forward"
);
