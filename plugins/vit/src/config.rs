//! The ViT config, its presets and the resolved architecture.

use patchwork_plugin_api::{Error, Result};
use serde::{Deserialize, Serialize};

/// ViT config as written in a workspace.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Size preset: `tiny`, `small` or `base`.
    pub preset: String,
    /// Overrides the preset's width.
    pub embed_dim: Option<usize>,
    /// Overrides the preset's number of blocks.
    pub depth: Option<usize>,
    /// Overrides the preset's number of attention heads.
    pub num_heads: Option<usize>,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Nominal input side (sets the position-embedding grid).
    pub img_size: usize,
    /// Input channels.
    pub in_chans: usize,
    /// Stochastic depth of the last block (linear from 0 over the blocks).
    pub drop_path_rate: f64,
    /// MLP hidden width / embed width.
    pub mlp_ratio: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            preset: "small".into(), // main_dino.py: --arch default vit_small
            embed_dim: None,        // from the preset
            depth: None,            // from the preset
            num_heads: None,        // from the preset
            patch_size: 16,         // main_dino.py: --patch_size 16
            img_size: 224,          // vision_transformer.py: img_size=[224]
            in_chans: 3,            // vision_transformer.py: in_chans=3
            drop_path_rate: 0.1,    // main_dino.py: --drop_path_rate 0.1
            mlp_ratio: 4.0,         // vit_tiny/small/base: mlp_ratio=4
        }
    }
}

/// The presets of DINO's `vision_transformer.py`: name → (embed_dim, depth, num_heads).
pub const PRESETS: [(&str, usize, usize, usize); 3] = [
    ("tiny", 192, 12, 3),
    ("small", 384, 12, 6),
    ("base", 768, 12, 12),
];

/// `(embed_dim, depth, num_heads)` of a preset.
pub fn preset(name: &str) -> Option<(usize, usize, usize)> {
    PRESETS
        .iter()
        .find(|p| p.0 == name)
        .map(|&(_, d, l, h)| (d, l, h))
}

/// A validated architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct Arch {
    /// Token width.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Patch side.
    pub patch_size: usize,
    /// Nominal input side.
    pub img_size: usize,
    /// Input channels.
    pub in_chans: usize,
    /// Stochastic depth of the last block.
    pub drop_path_rate: f64,
    /// MLP ratio.
    pub mlp_ratio: f64,
}

impl Arch {
    /// Side of the native patch grid (`img_size / patch_size`).
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }
}

/// A config error without a position (the plugin sees the parsed value only).
fn invalid(message: String) -> Error {
    Error::Config {
        message,
        line: 0,
        column: 0,
    }
}

impl Config {
    /// Looks up the preset, applies the overrides and checks the result.
    pub fn resolve(&self) -> Result<Arch> {
        let (d, l, h) = preset(&self.preset).ok_or_else(|| {
            let names: Vec<String> = PRESETS.iter().map(|p| format!("'{}'", p.0)).collect();
            invalid(format!(
                "unknown vit preset '{}' (expected one of {})",
                self.preset,
                names.join(", ")
            ))
        })?;
        let arch = Arch {
            embed_dim: self.embed_dim.unwrap_or(d),
            depth: self.depth.unwrap_or(l),
            num_heads: self.num_heads.unwrap_or(h),
            patch_size: self.patch_size,
            img_size: self.img_size,
            in_chans: self.in_chans,
            drop_path_rate: self.drop_path_rate,
            mlp_ratio: self.mlp_ratio,
        };
        for (name, v) in [
            ("embed_dim", arch.embed_dim),
            ("depth", arch.depth),
            ("num_heads", arch.num_heads),
            ("patch_size", arch.patch_size),
            ("img_size", arch.img_size),
            ("in_chans", arch.in_chans),
        ] {
            if v == 0 || u32::try_from(v).is_err() {
                return Err(invalid(format!(
                    "vit {name} must be in 1..=u32::MAX, got '{v}'"
                )));
            }
        }
        if !arch.embed_dim.is_multiple_of(arch.num_heads) {
            return Err(invalid(format!(
                "vit embed_dim '{}' is not divisible by num_heads '{}'",
                arch.embed_dim, arch.num_heads
            )));
        }
        if !arch.img_size.is_multiple_of(arch.patch_size) {
            return Err(invalid(format!(
                "vit img_size '{}' is not a multiple of patch_size '{}'",
                arch.img_size, arch.patch_size
            )));
        }
        if !(0.0..1.0).contains(&arch.drop_path_rate) {
            return Err(invalid(format!(
                "vit drop_path_rate must be in [0, 1), got '{}'",
                arch.drop_path_rate
            )));
        }
        if arch.mlp_ratio.is_nan() || arch.mlp_ratio <= 0.0 {
            return Err(invalid(format!(
                "vit mlp_ratio must be positive, got '{}'",
                arch.mlp_ratio
            )));
        }
        Ok(arch)
    }
}

/// Per-block stochastic-depth rates: `torch.linspace(0, rate, depth)`.
pub fn drop_path_rates(rate: f64, depth: usize) -> Vec<f64> {
    match depth {
        0 => Vec::new(),
        1 => vec![0.0],
        n => (0..n).map(|i| rate * i as f64 / (n - 1) as f64).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchwork_plugin_api::config::{parse_config, to_ron_text};

    #[test]
    fn preset_table() {
        assert_eq!(preset("tiny"), Some((192, 12, 3)));
        assert_eq!(preset("small"), Some((384, 12, 6)));
        assert_eq!(preset("base"), Some((768, 12, 12)));
        assert_eq!(preset("large"), None);
    }

    #[test]
    fn default_resolves_to_vit_small_16() {
        let arch = Config::default().resolve().unwrap();
        assert_eq!((arch.embed_dim, arch.depth, arch.num_heads), (384, 12, 6));
        assert_eq!((arch.patch_size, arch.img_size, arch.grid()), (16, 224, 14));
    }

    #[test]
    fn overrides_apply() {
        let cfg = Config {
            preset: "tiny".into(),
            depth: Some(4),
            embed_dim: Some(96),
            ..Config::default()
        };
        let arch = cfg.resolve().unwrap();
        assert_eq!((arch.embed_dim, arch.depth, arch.num_heads), (96, 4, 3));
    }

    #[test]
    fn unknown_preset_is_a_config_error() {
        let err = Config {
            preset: "huge".into(),
            ..Config::default()
        }
        .resolve()
        .unwrap_err();
        match err {
            Error::Config { message, .. } => {
                assert!(message.contains("'huge'"), "{message}");
                assert!(message.contains("'tiny'"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_geometry_is_rejected() {
        let cfg = Config {
            num_heads: Some(5),
            ..Config::default()
        };
        assert!(matches!(cfg.resolve(), Err(Error::Config { .. })));
        let cfg = Config {
            img_size: 100,
            ..Config::default()
        };
        assert!(matches!(cfg.resolve(), Err(Error::Config { .. })));
    }

    #[test]
    fn defaults_round_trip_through_ron() {
        let text = to_ron_text(&Config::default());
        let back: Config = parse_config(&text).unwrap();
        assert_eq!(back, Config::default());
        let partial: Config = parse_config("(preset: \"base\", depth: Some(6))").unwrap();
        assert_eq!(partial.resolve().unwrap().depth, 6);
    }

    #[test]
    fn drop_path_is_linear_from_zero() {
        let r = drop_path_rates(0.1, 12);
        assert_eq!(r.len(), 12);
        assert!(r[0].abs() < 1e-12 && (r[11] - 0.1).abs() < 1e-12);
        assert!((r[1] - 0.1 / 11.0).abs() < 1e-12);
        assert_eq!(drop_path_rates(0.1, 1), vec![0.0]);
    }
}
