//! `minimal-backbone`: the smallest complete backbone plugin for patchwork, readable
//! in one sitting. `patchwork new plugin NAME --kind backbone` starts a new crate
//! from a copy of this file.
//!
//! A one-block Vision Transformer: patch embedding, a CLS token, learned position
//! embeddings, one pre-norm transformer block and a final layer norm. It returns the
//! last block's attention when asked, so the TUI's attention view works. Grow it into
//! your architecture; parameters are created by name under `scope`, which is what
//! checkpoints, EMA teachers and hot reload match on.

use patchwork_plugin_api::prelude::*;

/// Settings, read from the workspace (`config: (...)`); unknown fields are errors.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Input side in pixels.
    pub img_size: usize,
    /// Patch side in pixels (divides `img_size`).
    pub patch_size: usize,
    /// Input channels.
    pub in_chans: usize,
    /// Token width.
    pub embed_dim: usize,
    /// Attention heads (divides `embed_dim`).
    pub num_heads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            img_size: 32,
            patch_size: 8,
            in_chans: 3,
            embed_dim: 64,
            num_heads: 4,
        }
    }
}

impl Config {
    /// Checks the shapes fit together.
    pub fn validate(&self) -> Result<()> {
        if self.patch_size == 0 || !self.img_size.is_multiple_of(self.patch_size) {
            return Err(Error::msg(format!(
                "patch_size {} must divide img_size {}",
                self.patch_size, self.img_size
            )));
        }
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(Error::msg(format!(
                "num_heads {} must divide embed_dim {}",
                self.num_heads, self.embed_dim
            )));
        }
        Ok(())
    }

    /// Patches per image.
    pub fn num_patches(&self) -> usize {
        (self.img_size / self.patch_size).pow(2)
    }
}

/// The backbone.
pub struct Model {
    cfg: Config,
    patch_embed: PatchEmbed,
    cls_token: Tensor,
    pos_embed: Tensor,
    block: Block,
    norm: LayerNorm,
}

impl Backbone for Model {
    type Config = Config;

    fn new(cfg: Config, scope: ParamScope) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.embed_dim;
        let patch_embed = patch_embed(cfg.in_chans, d, cfg.patch_size, scope.pp("patch_embed"))?;
        let cls_token = scope.get(&[1, 1, d], "cls_token", Init::trunc_normal(0.02))?;
        let tokens = 1 + cfg.num_patches();
        let pos_embed = scope.get(&[1, tokens, d], "pos_embed", Init::trunc_normal(0.02))?;
        let block = Block::new(d, cfg.num_heads, 4.0, 0.0, 1e-6, scope.pp("block"))?;
        let norm = layer_norm(d, 1e-6, scope.pp("norm"))?;
        Ok(Self {
            cfg,
            patch_embed,
            cls_token,
            pos_embed,
            block,
            norm,
        })
    }

    fn geometry(&self) -> Geometry {
        let c = &self.cfg;
        Geometry {
            in_chans: c.in_chans as u32,
            img_size: c.img_size as u32,
            patch_size: c.patch_size as u32,
            embed_dim: c.embed_dim as u32,
            depth: 1,
            num_heads: c.num_heads as u32,
        }
    }

    fn forward(&self, images: &Tensor, opts: &ForwardOptions) -> Result<BackboneOutput> {
        let b = images.dim(0)?;
        let d = self.cfg.embed_dim;
        let n = self.cfg.num_patches();
        let patches = images.apply(&self.patch_embed)?; // (B, N, D)
        let cls = self.cls_token.broadcast_as(&[b, 1, d])?; // (B, 1, D)
        let x = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.pos_embed)?;
        let (x, attention) = self.block.forward_opts(&x, opts.train, opts.attention)?;
        let x = x.apply(&self.norm)?; // (B, 1+N, D)
        Ok(BackboneOutput {
            cls: x.narrow(1, 0, 1)?.squeeze(1)?, // (B, D)
            patches: x.narrow(1, 1, n)?,         // (B, N, D)
            layers: vec![],
            attention,
        })
    }
}

export_backbone!(
    Model,
    name = "minimal-backbone",
    description = "one-block ViT (the minimal backbone)"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_reads_from_an_empty_workspace_entry() {
        let cfg: Config = parse_config("()").expect("parses");
        assert_eq!(cfg, Config::default());
        cfg.validate().expect("valid");
        assert_eq!(cfg.num_patches(), 16);
    }

    #[test]
    fn mismatched_patch_size_is_a_config_error() {
        let cfg = Config {
            patch_size: 5,
            ..Config::default()
        };
        assert!(cfg.validate().is_err());
    }
}
