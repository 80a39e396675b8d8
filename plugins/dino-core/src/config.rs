//! The DINO config (main_dino.py defaults) and the views it asks for.

use patchwork_plugin_api::{Error, Result, ViewSpec};
use serde::{Deserialize, Serialize};

/// DINO config as written in a workspace.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Prototypes (width of the head output).
    pub out_dim: usize,
    /// Freeze the weight-norm gain `g` of the last layer at 1.
    pub norm_last_layer: bool,
    /// Hidden width of the head MLP.
    pub hidden_dim: usize,
    /// Bottleneck width (L2-normalised) before the last layer.
    pub bottleneck_dim: usize,
    /// Number of local crops.
    pub local_crops: usize,
    /// Global crop side in pixels.
    pub global_size: usize,
    /// Local crop side in pixels.
    pub local_size: usize,
    /// Area fraction range of the global crops.
    pub global_crops_scale: (f32, f32),
    /// Area fraction range of the local crops.
    pub local_crops_scale: (f32, f32),
    /// Base EMA momentum of the teacher (cosine to 1).
    pub momentum_teacher: f64,
    /// Teacher temperature after the warm-up.
    pub teacher_temp: f64,
    /// Teacher temperature at epoch 0.
    pub warmup_teacher_temp: f64,
    /// Epochs of linear teacher-temperature warm-up.
    pub warmup_teacher_temp_epochs: u64,
    /// Student temperature.
    pub student_temp: f64,
    /// EMA momentum of the centre.
    pub center_momentum: f64,
    /// Epochs during which the last layer gets no gradient.
    pub freeze_last_layer: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            out_dim: 65536,                 // main_dino.py --out_dim 65536
            norm_last_layer: true,          // main_dino.py --norm_last_layer True
            hidden_dim: 2048,               // DINOHead hidden_dim=2048
            bottleneck_dim: 256,            // DINOHead bottleneck_dim=256
            local_crops: 8,                 // main_dino.py --local_crops_number 8
            global_size: 224,               // DataAugmentationDINO RandomResizedCrop(224)
            local_size: 96,                 // DataAugmentationDINO RandomResizedCrop(96)
            global_crops_scale: (0.4, 1.0), // main_dino.py --global_crops_scale (0.4, 1.)
            local_crops_scale: (0.05, 0.4), // main_dino.py --local_crops_scale (0.05, 0.4)
            momentum_teacher: 0.996,        // main_dino.py --momentum_teacher 0.996
            teacher_temp: 0.04,             // main_dino.py --teacher_temp 0.04
            warmup_teacher_temp: 0.04,      // main_dino.py --warmup_teacher_temp 0.04
            warmup_teacher_temp_epochs: 0,  // main_dino.py --warmup_teacher_temp_epochs 0
            student_temp: 0.1,              // DINOLoss student_temp=0.1
            center_momentum: 0.9,           // DINOLoss center_momentum=0.9
            freeze_last_layer: 1,           // main_dino.py --freeze_last_layer 1
        }
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
    /// Checks ranges; the error names the field and the bad value.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("out_dim", self.out_dim),
            ("hidden_dim", self.hidden_dim),
            ("bottleneck_dim", self.bottleneck_dim),
            ("global_size", self.global_size),
            ("local_size", self.local_size),
        ] {
            if v == 0 || u32::try_from(v).is_err() {
                return Err(invalid(format!(
                    "dino {name} must be in 1..=u32::MAX, got '{v}'"
                )));
            }
        }
        if u32::try_from(self.local_crops).is_err() {
            return Err(invalid(format!(
                "dino local_crops is too large: '{}'",
                self.local_crops
            )));
        }
        for (name, t) in [
            ("teacher_temp", self.teacher_temp),
            ("warmup_teacher_temp", self.warmup_teacher_temp),
            ("student_temp", self.student_temp),
        ] {
            if t.is_nan() || t <= 0.0 {
                return Err(invalid(format!("dino {name} must be positive, got '{t}'")));
            }
        }
        for (name, m) in [
            ("momentum_teacher", self.momentum_teacher),
            ("center_momentum", self.center_momentum),
        ] {
            if !(0.0..=1.0).contains(&m) {
                return Err(invalid(format!("dino {name} must be in [0, 1], got '{m}'")));
            }
        }
        for (name, (lo, hi)) in [
            ("global_crops_scale", self.global_crops_scale),
            ("local_crops_scale", self.local_crops_scale),
        ] {
            if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
                return Err(invalid(format!(
                    "dino {name} must satisfy 0 < min <= max <= 1, got '({lo}, {hi})'"
                )));
            }
        }
        Ok(())
    }

    /// Teacher views (the global crops).
    pub const GLOBAL_CROPS: usize = 2;

    /// All crops per image: 2 global + `local_crops` local.
    pub fn n_crops(&self) -> usize {
        Self::GLOBAL_CROPS + self.local_crops
    }

    /// The views of `DataAugmentationDINO`, in batch order: global 1, global 2, locals.
    ///
    /// Sizes must fit in `u32` ([`Config::validate`] checks it).
    pub fn views(&self) -> Vec<ViewSpec> {
        let u = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        // PIL radius U(0.1, 2.0) at 224 px (globals) and 96 px (locals), scaled to
        // the configured sides so small crops are not blurred out of recognition.
        let blur = |size: usize, reference: f32| {
            let k = size as f32 / reference;
            (0.1 * k, 2.0 * k)
        };
        let (g_lo, g_hi) = blur(self.global_size, 224.0);
        let (l_lo, l_hi) = blur(self.local_size, 96.0);
        let global = ViewSpec {
            count: 1,
            size: u(self.global_size),
            scale_min: self.global_crops_scale.0,
            scale_max: self.global_crops_scale.1,
            flip_p: 0.5,   // RandomHorizontalFlip(p=0.5)
            jitter_p: 0.8, // RandomApply([ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)
            gray_p: 0.2,   // RandomGrayscale(p=0.2)
            blur_p: 1.0,   // global_transfo1: GaussianBlur(1.0)
            blur_sigma_min: g_lo,
            blur_sigma_max: g_hi,
            solarize_p: 0.0, // global_transfo1: no solarization
        };
        let mut views = vec![
            global,
            // global_transfo2: GaussianBlur(0.1), Solarization(0.2)
            ViewSpec {
                blur_p: 0.1,
                solarize_p: 0.2,
                ..global
            },
        ];
        if self.local_crops > 0 {
            views.push(ViewSpec {
                count: u(self.local_crops),
                size: u(self.local_size),
                scale_min: self.local_crops_scale.0,
                scale_max: self.local_crops_scale.1,
                blur_p: 0.5, // local_transfo: GaussianBlur(p=0.5)
                blur_sigma_min: l_lo,
                blur_sigma_max: l_hi,
                solarize_p: 0.0,
                ..global
            });
        }
        views
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchwork_plugin_api::config::{parse_config, to_ron_text};

    #[test]
    fn defaults_round_trip_through_ron() {
        let text = to_ron_text(&Config::default());
        let back: Config = parse_config(&text).unwrap();
        assert_eq!(back, Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn unknown_field_is_rejected() {
        assert!(matches!(
            parse_config::<Config>("(out_dimm: 4096)"),
            Err(Error::Config { .. })
        ));
        let small: Config = parse_config("(out_dim: 4096, local_crops: 0)").unwrap();
        assert_eq!((small.out_dim, small.n_crops()), (4096, 2));
    }

    #[test]
    fn bad_values_are_rejected() {
        let bad = Config {
            teacher_temp: 0.0,
            ..Config::default()
        };
        assert!(matches!(bad.validate(), Err(Error::Config { .. })));
        let bad = Config {
            local_crops_scale: (0.5, 0.4),
            ..Config::default()
        };
        assert!(matches!(bad.validate(), Err(Error::Config { .. })));
        let bad = Config {
            momentum_teacher: 1.5,
            ..Config::default()
        };
        assert!(matches!(bad.validate(), Err(Error::Config { .. })));
    }

    #[test]
    fn views_are_dinos_asymmetric_crops() {
        let views = Config::default().views();
        assert_eq!(views.len(), 3);
        let (g1, g2, local) = (views[0], views[1], views[2]);
        assert_eq!(
            (g1.count, g1.size, g1.blur_p, g1.solarize_p),
            (1, 224, 1.0, 0.0)
        );
        assert_eq!(
            (g2.count, g2.size, g2.blur_p, g2.solarize_p),
            (1, 224, 0.1, 0.2)
        );
        assert_eq!(
            (local.count, local.size, local.blur_p, local.solarize_p),
            (8, 96, 0.5, 0.0)
        );
        assert_eq!((local.scale_min, local.scale_max), (0.05, 0.4));
        assert_eq!((g1.scale_min, g1.scale_max), (0.4, 1.0));
        assert_eq!((g1.blur_sigma_min, g1.blur_sigma_max), (0.1, 2.0));
        assert_eq!((local.blur_sigma_min, local.blur_sigma_max), (0.1, 2.0));
        let small = Config {
            global_size: 32,
            local_size: 16,
            ..Config::default()
        }
        .views();
        assert!((small[0].blur_sigma_max - 2.0 * 32.0 / 224.0).abs() < 1e-6);
        assert!((small[2].blur_sigma_max - 2.0 * 16.0 / 96.0).abs() < 1e-6);
        for v in views {
            assert_eq!((v.flip_p, v.jitter_p, v.gray_p), (0.5, 0.8, 0.2));
        }
        let none = Config {
            local_crops: 0,
            ..Config::default()
        };
        assert_eq!(none.views().len(), 2);
    }
}
