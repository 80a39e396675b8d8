//! The procedural `sar_optical` dataset: 3 optical plus 2 SAR-like channels, multi-label.
//!
//! A small stand-in for BigEarthNet-MM (DINO-MM): each image is a land-cover map of 3 to 6
//! warped, weighted Voronoi regions, rendered as two co-registered modalities.
//!
//! Channel order ([`CHANNELS`] = 5):
//! - 0..3 ([`OPTICAL`]): optical R, G, B. A colour and texture per class, a tint per region,
//!   a soft haze layer per image and Gaussian sensor noise.
//! - 3 ([`VV`]) and 4 ([`VH`]): SAR backscatter. A mean dB level per class and polarisation
//!   (a small offset per region), multiplicative gamma speckle with mean 1 and `looks`
//!   looks, bright point scatterers in urban areas, then converted to dB and mapped from
//!   BigEarthNet-S1's `[μ − 2σ, μ + 2σ]` (VV −22.7..−2.5 dB, VH −30.1..−8.4 dB) to `[0, 1]`.
//!   SAR values depend on the class map and speckle only, never on the optical colours.
//!
//! - `label`: the majority class (ties go to the lower class). The largest regions are
//!   seeded with class `index % classes`, so labels are close to balanced.
//! - `targets`: the classes covering at least [`MIN_AREA`] of the image, ascending.
//! - `mask`: the class map, `class + 1` per pixel (there is no background).
//!
//! Every image is a pure function of `(seed, split, index)`.

use std::f32::consts::TAU;
use std::ops::Range;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma, StandardNormal};
use serde::{Deserialize, Serialize};

use super::augment::uniform;
use super::loader::{DataError, Sample, mix_seed};
use super::procedural::{Procedural, SplitDataset};
use super::scenes::split_tag;
use super::shapes::Split;
use super::stats::Normalize;
use super::views::Image;

/// Channels per image: optical R, G, B, then SAR VV, VH.
pub const CHANNELS: usize = 5;
/// The optical channels (R, G, B).
pub const OPTICAL: Range<usize> = 0..3;
/// The SAR channels (VV, VH).
pub const SAR: Range<usize> = 3..5;
/// The SAR VV channel.
pub const VV: usize = 3;
/// The SAR VH channel.
pub const VH: usize = 4;
/// Smallest share of the image a class must cover to be a multi-label target.
pub const MIN_AREA: f32 = 0.02;

/// The land-cover classes, in label order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LandCover {
    /// Open water: dark and smooth in both modalities.
    Water,
    /// Forest: dark green, mottled; strong VH volume scattering.
    Forest,
    /// Cropland: yellow-green rows.
    Cropland,
    /// Grassland: light green, smooth.
    Grassland,
    /// Urban: grey blocks and streets; the brightest SAR returns.
    Urban,
    /// Bare soil: brown, fine grain; low backscatter.
    BareSoil,
    /// Wetland: dark olive; double-bounce VV.
    Wetland,
}

/// Per-class appearance: optical colour and texture amplitude, SAR means in dB.
struct Signature {
    rgb: [f32; 3],
    texture: f32,
    vv_db: f32,
    vh_db: f32,
}

impl LandCover {
    /// All classes; class `i` is `ALL[i]`.
    pub const ALL: [LandCover; 7] = [
        Self::Water,
        Self::Forest,
        Self::Cropland,
        Self::Grassland,
        Self::Urban,
        Self::BareSoil,
        Self::Wetland,
    ];

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Water => "water",
            Self::Forest => "forest",
            Self::Cropland => "cropland",
            Self::Grassland => "grassland",
            Self::Urban => "urban",
            Self::BareSoil => "bare_soil",
            Self::Wetland => "wetland",
        }
    }

    fn signature(self) -> Signature {
        let (rgb, texture, vv_db, vh_db) = match self {
            Self::Water => ([0.10, 0.20, 0.35], 0.02, -21.0, -28.0),
            Self::Forest => ([0.12, 0.30, 0.12], 0.08, -8.0, -13.5),
            Self::Cropland => ([0.58, 0.62, 0.25], 0.10, -11.0, -18.0),
            Self::Grassland => ([0.42, 0.66, 0.32], 0.03, -13.0, -20.5),
            Self::Urban => ([0.60, 0.58, 0.57], 0.15, -4.5, -11.0),
            Self::BareSoil => ([0.64, 0.48, 0.34], 0.05, -15.5, -24.0),
            Self::Wetland => ([0.30, 0.36, 0.26], 0.06, -9.5, -19.0),
        };
        Signature {
            rgb,
            texture,
            vv_db,
            vh_db,
        }
    }

    /// Texture value in about `[-1, 1]` at pixel `(a, b)` of the region's rotated frame.
    fn texture(self, salt: u64, a: f32, b: f32) -> f32 {
        let cell = |size: f32| {
            let h = mix_seed(&[
                salt,
                (a / size).floor() as i64 as u64,
                (b / size).floor() as i64 as u64,
            ]);
            (h >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        match self {
            Self::Water => (0.9 * a).sin(),
            Self::Forest => cell(2.0),
            Self::Cropland => (TAU * a / 4.0).sin(),
            Self::Grassland => cell(4.0),
            Self::Urban if a.rem_euclid(6.0) < 1.0 || b.rem_euclid(6.0) < 1.0 => -1.5,
            Self::Urban => cell(3.0),
            Self::BareSoil => cell(1.0),
            Self::Wetland => cell(3.0),
        }
    }
}

/// Sar-optical dataset settings: `SarOptical((classes: 7, looks: 4.0, ...))`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SarOpticalConfig {
    /// Number of land-cover classes, 1 to 7 (the first `classes` of [`LandCover::ALL`]).
    pub classes: usize,
    /// Training images.
    pub images: usize,
    /// Validation images.
    pub val_images: usize,
    /// Image side in pixels (at least 8).
    pub size: usize,
    /// Equivalent number of looks of the SAR speckle (at least 1; more is smoother).
    pub looks: f32,
    /// Seed of the whole dataset.
    pub seed: u64,
    /// Channel normalisation (default `Auto`: ImageNet for RGB, computed otherwise).
    #[serde(default)]
    pub normalize: Normalize,
}

impl Default for SarOpticalConfig {
    fn default() -> Self {
        Self {
            classes: 7,
            images: 2000,
            val_images: 400,
            size: 32,
            looks: 4.0,
            seed: 0,
            normalize: Normalize::Auto,
        }
    }
}

/// One Voronoi region: its seed point, class and per-region variation.
#[derive(Clone, Copy, Debug)]
struct Region {
    class: usize,
    at: (f32, f32),
    /// Distance multiplier (below 1 grows the region).
    weight: f32,
    tint: [f32; 3],
    vv_db: f32,
    vh_db: f32,
    sin: f32,
    cos: f32,
    salt: u64,
}

/// Mapping of SAR dB values to `[0, 1]`: `(low, high)` per polarisation.
const VV_RANGE: (f32, f32) = (-12.59 - 2.0 * 5.04, -12.59 + 2.0 * 5.04);
const VH_RANGE: (f32, f32) = (-19.22 - 2.0 * 5.42, -19.22 + 2.0 * 5.42);

/// The procedural SAR + optical dataset (stateless apart from its speckle distribution).
#[derive(Clone, Debug, PartialEq)]
pub struct SarOptical {
    config: SarOpticalConfig,
    speckle: Gamma<f32>,
}

impl SarOptical {
    /// Checks the config (1..=7 classes, size at least 8, finite `looks` of at least 1).
    pub fn new(config: SarOpticalConfig) -> Result<Self, DataError> {
        if !(1..=LandCover::ALL.len()).contains(&config.classes) {
            return Err(DataError::InvalidConfig {
                field: "classes",
                value: config.classes.to_string(),
                reason: "must be between 1 and 7",
            });
        }
        if config.size < 8 {
            return Err(DataError::InvalidConfig {
                field: "size",
                value: config.size.to_string(),
                reason: "must be at least 8 pixels",
            });
        }
        let bad_looks = || DataError::InvalidConfig {
            field: "looks",
            value: config.looks.to_string(),
            reason: "must be a finite number of at least 1",
        };
        if !(config.looks.is_finite() && config.looks >= 1.0) {
            return Err(bad_looks());
        }
        let speckle = Gamma::new(config.looks, 1.0 / config.looks).map_err(|_| bad_looks())?;
        Ok(Self { config, speckle })
    }

    /// The config.
    pub fn config(&self) -> &SarOpticalConfig {
        &self.config
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.config.classes
    }

    /// Class names in label order.
    pub fn class_names(&self) -> Vec<&'static str> {
        LandCover::ALL[..self.config.classes]
            .iter()
            .map(|k| k.name())
            .collect()
    }

    /// Number of images in `split`.
    pub fn len(&self, split: Split) -> usize {
        match split {
            Split::Train => self.config.images,
            Split::Val => self.config.val_images,
        }
    }

    /// Renders image `index` of `split` (any index renders; [`Dataset::get`] on a
    /// [`SarOpticalDataset`] checks bounds).
    pub fn get(&self, split: Split, index: usize) -> Sample {
        const TAG: u64 = 0x7361_725f_6f70;
        let cfg = &self.config;
        let seed = mix_seed(&[cfg.seed, TAG, split_tag(split), index as u64]);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (size, s) = (cfg.size, cfg.size as f32);
        let regions = self.regions(index % cfg.classes, &mut rng);
        let warp = [0; 4].map(|_| uniform(&mut rng, 0.0, TAU));
        let (warp_amp, warp_freq) = (0.08 * s, TAU / (0.5 * s));
        let haze = uniform(&mut rng, 0.0, 0.35);
        let (hs, hc) = uniform(&mut rng, 0.0, TAU).sin_cos();
        let haze_phase = uniform(&mut rng, 0.0, TAU);
        let plane = size * size;
        let mut image = Image::zeros(CHANNELS, size, size);
        let mut mask = vec![0u8; plane];
        let mut counts = [0usize; 7];
        for (i, m) in mask.iter_mut().enumerate() {
            let (x, y) = ((i % size) as f32 + 0.5, (i / size) as f32 + 0.5);
            let wx = x + warp_amp
                * (warp_freq * y + warp[0]).sin()
                * (0.5 * warp_freq * x + warp[1]).cos();
            let wy = y + warp_amp
                * (warp_freq * x + warp[2]).sin()
                * (0.5 * warp_freq * y + warp[3]).cos();
            let region = regions
                .iter()
                .map(|r| {
                    let (dx, dy) = (wx - r.at.0, wy - r.at.1);
                    (r, r.weight * (dx * dx + dy * dy).sqrt())
                })
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(r, _)| *r);
            let Some(r) = region else { continue };
            let cover = LandCover::ALL[r.class];
            let sig = cover.signature();
            *m = r.class as u8 + 1;
            counts[r.class] += 1;
            // Optical: class colour, region tint, texture, haze and sensor noise.
            let tex =
                sig.texture * cover.texture(r.salt, x * r.cos + y * r.sin, -x * r.sin + y * r.cos);
            let h = haze * (0.6 + 0.4 * ((x * hc + y * hs) * TAU / s + haze_phase).sin());
            for c in OPTICAL {
                let surface = sig.rgb[c] + r.tint[c] + tex;
                let hazy = surface * (1.0 - h) + 0.82 * h;
                let noise = 0.015 * rng.sample::<f32, _>(StandardNormal);
                image.data[c * plane + i] = (hazy + noise).clamp(0.0, 1.0);
            }
            // SAR: class level, region offset, speckle, urban point scatterers.
            let bright = if cover == LandCover::Urban && rng.random::<f32>() < 0.08 {
                10.0
            } else {
                0.0
            };
            for (channel, db, (lo, hi)) in [(VV, r.vv_db, VV_RANGE), (VH, r.vh_db, VH_RANGE)] {
                // Multiplicative speckle on the intensity is additive in dB.
                let speckle: f32 = self.speckle.sample(&mut rng);
                let db = db + bright + 10.0 * speckle.max(1e-6).log10();
                image.data[channel * plane + i] = ((db - lo) / (hi - lo)).clamp(0.0, 1.0);
            }
        }
        let label = (0..cfg.classes)
            .max_by_key(|&k| (counts[k], std::cmp::Reverse(k)))
            .unwrap_or(0);
        let min_pixels = MIN_AREA * plane as f32;
        let targets = (0..cfg.classes)
            .filter(|&k| counts[k] > 0 && counts[k] as f32 >= min_pixels)
            .map(|k| k as u32)
            .collect();
        Sample {
            image,
            label,
            mask,
            targets,
        }
    }

    /// Draws 3 to 6 regions; the first two (grown) have class `dominant`.
    fn regions(&self, dominant: usize, rng: &mut ChaCha8Rng) -> Vec<Region> {
        let s = self.config.size as f32;
        let n = rng.random_range(3..=6);
        (0..n)
            .map(|j| {
                let class = if j < 2 {
                    dominant
                } else {
                    rng.random_range(0..self.config.classes)
                };
                let sig = LandCover::ALL[class].signature();
                let (sin, cos) = uniform(rng, 0.0, TAU).sin_cos();
                Region {
                    class,
                    at: (uniform(rng, 0.0, s), uniform(rng, 0.0, s)),
                    weight: if j < 2 { 0.7 } else { 1.0 },
                    tint: [0; 3].map(|_| uniform(rng, -0.04, 0.04)),
                    vv_db: sig.vv_db + uniform(rng, -1.5, 1.5),
                    vh_db: sig.vh_db + uniform(rng, -1.5, 1.5),
                    sin,
                    cos,
                    salt: rng.random(),
                }
            })
            .collect()
    }

    /// One split as a [`Dataset`].
    pub fn split(&self, split: Split) -> SarOpticalDataset {
        SplitDataset::new(self.clone(), split)
    }
}

/// One split of [`SarOptical`], usable by the loader.
pub type SarOpticalDataset = SplitDataset<SarOptical>;

impl Procedural for SarOptical {
    fn split_len(&self, split: Split) -> usize {
        self.len(split)
    }

    fn render(&self, split: Split, index: usize) -> Sample {
        self.get(split, index)
    }

    fn class_count(&self) -> usize {
        self.classes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::loader::Dataset;

    fn data(looks: f32, seed: u64) -> SarOptical {
        SarOptical::new(SarOpticalConfig {
            images: 70,
            val_images: 14,
            looks,
            seed,
            ..SarOpticalConfig::default()
        })
        .unwrap()
    }

    fn counts(mask: &[u8]) -> [usize; 7] {
        let mut counts = [0usize; 7];
        for &m in mask {
            counts[usize::from(m) - 1] += 1;
        }
        counts
    }

    /// Mean and standard deviation of `channel` over the pixels of `class`, over `n` images.
    fn class_stats(d: &SarOptical, channel: usize, class: usize, n: usize) -> (f32, f32) {
        let mut values = Vec::new();
        for i in 0..n {
            let x = d.get(Split::Train, i);
            let plane = x.image.plane();
            values.extend(
                (0..plane)
                    .filter(|&p| usize::from(x.mask[p]) == class + 1)
                    .map(|p| x.image.data[channel * plane + p]),
            );
        }
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / values.len() as f32;
        (mean, var.sqrt())
    }

    #[test]
    fn rendering_is_deterministic_and_order_independent() {
        let d = data(4.0, 3);
        let forward: Vec<Sample> = (0..6).map(|i| d.get(Split::Train, i)).collect();
        let backward: Vec<Sample> = (0..6).rev().map(|i| d.get(Split::Train, i)).collect();
        for (i, a) in forward.iter().enumerate() {
            assert_eq!(a, &backward[5 - i], "index {i}");
        }
        assert_eq!(data(4.0, 3).get(Split::Val, 1), d.get(Split::Val, 1));
        assert_ne!(d.get(Split::Train, 1).image, d.get(Split::Val, 1).image);
        assert_ne!(
            d.get(Split::Train, 1).image,
            data(4.0, 4).get(Split::Train, 1).image
        );
    }

    #[test]
    fn images_have_five_channels_in_range() {
        let d = data(4.0, 0);
        for i in 0..10 {
            let x = d.get(Split::Train, i);
            assert_eq!(
                (x.image.channels, x.image.height, x.image.width),
                (CHANNELS, 32, 32)
            );
            assert_eq!(x.mask.len(), 32 * 32);
            assert!(x.image.data.iter().all(|v| (0.0..=1.0).contains(v)));
            assert!(x.mask.iter().all(|&m| (1..=7).contains(&m)));
        }
    }

    #[test]
    fn targets_and_label_match_the_mask() {
        let d = data(4.0, 1);
        let mut labels = [0usize; 7];
        let mut seeded = 0;
        let mut total = 0;
        for i in 0..140 {
            let x = d.get(Split::Train, i);
            let c = counts(&x.mask);
            let want: Vec<u32> = (0..7u32)
                .filter(|&k| c[k as usize] as f32 >= MIN_AREA * 1024.0)
                .collect();
            assert_eq!(x.targets, want, "index {i}");
            assert!(c.iter().all(|&n| n <= c[x.label]), "label is the majority");
            assert!(x.targets.contains(&(x.label as u32)));
            labels[x.label] += 1;
            seeded += usize::from(x.label == i % 7);
            total += x.targets.len();
        }
        assert!(seeded >= 105, "{seeded} of 140 labels are the seeded class");
        assert!(labels.iter().all(|&n| (10..=30).contains(&n)), "{labels:?}");
        assert!(
            total as f32 / 140.0 > 1.8,
            "mean labels {}",
            total as f32 / 140.0
        );
    }

    #[test]
    fn modalities_follow_the_class_signatures() {
        let d = data(4.0, 2);
        let water = LandCover::Water as usize;
        let urban = LandCover::Urban as usize;
        let forest = LandCover::Forest as usize;
        let bare = LandCover::BareSoil as usize;
        assert!(class_stats(&d, VV, water, 40).0 + 0.3 < class_stats(&d, VV, urban, 40).0);
        assert!(class_stats(&d, VH, bare, 40).0 + 0.2 < class_stats(&d, VH, forest, 40).0);
        assert!(
            class_stats(&d, 2, water, 40).0 > class_stats(&d, 0, water, 40).0,
            "water is blue"
        );
        assert!(
            class_stats(&d, 1, forest, 40).0 > class_stats(&d, 0, forest, 40).0,
            "forest is green"
        );
    }

    #[test]
    fn speckle_shrinks_with_more_looks() {
        let field = LandCover::Cropland as usize;
        let rough = class_stats(&data(1.0, 5), VV, field, 40).1;
        let smooth = class_stats(&data(16.0, 5), VV, field, 40).1;
        assert!(
            rough > 1.5 * smooth,
            "std with 1 look {rough}, with 16 looks {smooth}"
        );
    }

    #[test]
    fn sar_is_independent_of_optical_colour() {
        // Within one class, VV does not follow the red channel pixel by pixel.
        let d = data(4.0, 6);
        let class = LandCover::Grassland as usize;
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for i in 0..40 {
            let x = d.get(Split::Train, i);
            let plane = x.image.plane();
            for p in (0..plane).filter(|&p| usize::from(x.mask[p]) == class + 1) {
                xs.push(x.image.data[p]);
                ys.push(x.image.data[VV * plane + p]);
            }
        }
        let n = xs.len() as f32;
        let (mx, my) = (xs.iter().sum::<f32>() / n, ys.iter().sum::<f32>() / n);
        let cov: f32 = xs
            .iter()
            .zip(&ys)
            .map(|(a, b)| (a - mx) * (b - my))
            .sum::<f32>()
            / n;
        let sx = (xs.iter().map(|a| (a - mx) * (a - mx)).sum::<f32>() / n).sqrt();
        let sy = (ys.iter().map(|b| (b - my) * (b - my)).sum::<f32>() / n).sqrt();
        let r = cov / (sx * sy);
        assert!(r.abs() < 0.2, "correlation {r} over {n} pixels");
    }

    #[test]
    fn dataset_is_bounds_checked() {
        let ds = data(4.0, 0).split(Split::Val);
        assert_eq!(
            (ds.len(), ds.num_classes(), ds.which()),
            (14, 7, Split::Val)
        );
        assert!(ds.get(13).is_ok());
        assert!(matches!(
            ds.get(14),
            Err(DataError::IndexOutOfRange { index: 14, len: 14 })
        ));
        assert_eq!(ds.source().class_names()[5], "bare_soil");
    }

    #[test]
    fn config_is_validated_and_parses_from_ron() {
        let cfg: SarOpticalConfig = ron::from_str("(classes: 4, looks: 2.0)").unwrap();
        assert_eq!((cfg.classes, cfg.looks, cfg.size), (4, 2.0, 32));
        assert!(ron::from_str::<SarOpticalConfig>("(bands: 4)").is_err());
        let base = SarOpticalConfig::default();
        let bad: [fn(&mut SarOpticalConfig); 6] = [
            |c| c.classes = 0,
            |c| c.classes = 8,
            |c| c.size = 4,
            |c| c.looks = 0.5,
            |c| c.looks = f32::NAN,
            |c| c.looks = f32::INFINITY,
        ];
        for edit in bad {
            let mut cfg = base.clone();
            edit(&mut cfg);
            assert!(matches!(
                SarOptical::new(cfg),
                Err(DataError::InvalidConfig { .. })
            ));
        }
        let few = SarOptical::new(SarOpticalConfig { classes: 2, ..base }).unwrap();
        assert!((0..10).all(|i| few.get(Split::Train, i).mask.iter().all(|&m| m <= 2)));
    }
}
