//! A procedural shapes dataset: the class is the kind of shape, never its colour.
//!
//! Every image is a pure function of `(seed, split, index)`, so any worker can render
//! any index without shared state. Object colour, background (solid colour, gradient,
//! faint stripes, noise), position, size (35–70% of the side) and a small rotation
//! (±15°, so squares never become diamonds) are random per image. Labels cycle
//! through the classes (`index % classes`), so every split is balanced.
//!
//! With `plain: true` the background is one colour plus pixel noise. With
//! `palette: n` (2 to 8) the object and background colours are drawn from `n`
//! fixed colours instead of the whole RGB cube. Colour is then shared by many images
//! of every class, so a self-supervised method cannot tell images apart by colour
//! alone and has to look at the shape.

use std::f32::consts::PI;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::augment::uniform;
use super::loader::{DataError, Sample, mix_seed};
use super::procedural::{Procedural, SplitDataset};
use super::stats::Normalize;
use super::views::Image;

/// Shapes dataset settings, as in a workspace: `Shapes((classes: 6, images: 2000, ...))`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShapesConfig {
    /// Number of classes (shape kinds), 1 to 8.
    pub classes: usize,
    /// Training images.
    pub images: usize,
    /// Validation images.
    pub val_images: usize,
    /// Image side in pixels (at least 8).
    pub size: usize,
    /// Seed of the whole dataset.
    pub seed: u64,
    /// Number of fixed colours for object and background (2 to 8); 0 draws any colour.
    pub palette: usize,
    /// Plain backgrounds: one colour plus pixel noise, without gradient or stripes.
    pub plain: bool,
    /// Channel normalisation (default `Auto`: ImageNet for RGB, computed otherwise).
    #[serde(default)]
    pub normalize: Normalize,
}

impl Default for ShapesConfig {
    fn default() -> Self {
        Self {
            classes: 6,
            images: 2000,
            val_images: 400,
            size: 32,
            seed: 0,
            palette: 0,
            plain: false,
            normalize: Normalize::Auto,
        }
    }
}

/// A dataset split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Split {
    /// The training images.
    Train,
    /// The validation images.
    Val,
}

/// The shape drawn for each class, in class order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeKind {
    /// A filled disc.
    Circle,
    /// A filled square.
    Square,
    /// An upward triangle.
    Triangle,
    /// A plus sign.
    Cross,
    /// An annulus.
    Ring,
    /// A square standing on a corner.
    Diamond,
    /// A five-pointed star.
    Star,
    /// A horizontal bar.
    HBar,
}

impl ShapeKind {
    /// All kinds; class `i` is `ALL[i]`.
    pub const ALL: [ShapeKind; 8] = [
        Self::Circle,
        Self::Square,
        Self::Triangle,
        Self::Cross,
        Self::Ring,
        Self::Diamond,
        Self::Star,
        Self::HBar,
    ];

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Circle => "circle",
            Self::Square => "square",
            Self::Triangle => "triangle",
            Self::Cross => "cross",
            Self::Ring => "ring",
            Self::Diamond => "diamond",
            Self::Star => "star",
            Self::HBar => "hbar",
        }
    }

    /// Whether the point `(u, v)` (unit half-size, `v` pointing down) is inside.
    pub fn contains(self, u: f32, v: f32) -> bool {
        let (au, av) = (u.abs(), v.abs());
        match self {
            Self::Circle => u * u + v * v <= 1.0,
            Self::Square => au.max(av) <= 0.8,
            Self::Triangle => v <= 0.75 && au <= 0.95 * (v + 0.95) / 1.7,
            Self::Cross => (au <= 0.28 && av <= 0.95) || (av <= 0.28 && au <= 0.95),
            Self::Ring => (0.3025..=1.0).contains(&(u * u + v * v)),
            Self::Diamond => au + av <= 1.0,
            Self::Star => star_contains(u, v),
            Self::HBar => au <= 0.95 && av <= 0.3,
        }
    }
}

/// Five-pointed star, outer radius 1, inner 0.45, a point at the top.
fn star_contains(u: f32, v: f32) -> bool {
    let r2 = u * u + v * v;
    if r2 > 1.0 {
        return false;
    }
    if r2 <= 0.45 * 0.45 * 0.8 {
        return true;
    }
    let sector = PI / 5.0;
    let phi = u.atan2(-v).rem_euclid(2.0 * PI);
    let k = (phi / sector).floor();
    let vertex = |i: f32| {
        let rho = if (i as i32) % 2 == 0 { 1.0 } else { 0.45 };
        let a = i * sector;
        (rho * a.sin(), -rho * a.cos())
    };
    let (p0, p1) = (vertex(k), vertex(k + 1.0));
    let side = |q: (f32, f32)| (p1.0 - p0.0) * (q.1 - p0.1) - (p1.1 - p0.1) * (q.0 - p0.0);
    side((u, v)) * side((0.0, 0.0)) >= 0.0
}

/// Everything random about one image.
#[derive(Clone, Debug)]
struct Scene {
    kind: ShapeKind,
    centre: (f32, f32),
    radius: f32,
    angle: f32,
    object: [f32; 3],
    bg: [[f32; 3]; 2],
    gradient: f32,
    stripes: (f32, f32, f32, f32),
    noise: f32,
}

fn colour(rng: &mut ChaCha8Rng) -> [f32; 3] {
    [rng.random(), rng.random(), rng.random()]
}

/// The fixed colours of `palette: n` (the first `n` are used).
const PALETTE: [[f32; 3]; 8] = [
    [0.05, 0.05, 0.05],
    [0.95, 0.95, 0.95],
    [0.85, 0.15, 0.15],
    [0.15, 0.7, 0.2],
    [0.15, 0.3, 0.85],
    [0.9, 0.85, 0.15],
    [0.15, 0.8, 0.85],
    [0.8, 0.2, 0.8],
];

/// Two different palette colours `(background, object)` from the first `n`.
fn palette_pair(n: usize, rng: &mut ChaCha8Rng) -> ([f32; 3], [f32; 3]) {
    let n = n.clamp(2, PALETTE.len());
    let bg = rng.random_range(0..n);
    let obj = (bg + rng.random_range(1..n)) % n;
    (PALETTE[bg], PALETTE[obj])
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

impl Scene {
    fn draw(kind: ShapeKind, cfg: &ShapesConfig, rng: &mut ChaCha8Rng) -> Self {
        let (size, palette) = (cfg.size, cfg.palette);
        let s = size as f32;
        let radius = uniform(rng, 0.35, 0.70) * s / 2.0;
        let centre = (
            uniform(rng, radius, s - radius),
            uniform(rng, radius, s - radius),
        );
        let angle = uniform(rng, -PI / 12.0, PI / 12.0);
        let (bg0, bg1, object) = if palette > 0 {
            let (bg0, object) = palette_pair(palette, rng);
            let bg1 = bg0.map(|c| (c + uniform(rng, -0.1, 0.1)).clamp(0.0, 1.0));
            (bg0, bg1, object)
        } else {
            let bg0 = colour(rng);
            let bg1 = bg0.map(|c| (c + uniform(rng, -0.25, 0.25)).clamp(0.0, 1.0));
            let mut object = bg0.map(|c| 1.0 - c);
            for _ in 0..32 {
                let c = colour(rng);
                if distance(c, bg0) >= 0.5 && distance(c, bg1) >= 0.5 {
                    object = c;
                    break;
                }
            }
            (bg0, bg1, object)
        };
        let bg1 = if cfg.plain { bg0 } else { bg1 };
        let gradient = uniform(rng, 0.0, 2.0 * PI);
        let amplitude = uniform(rng, 0.0, 0.06);
        let stripes = (
            if cfg.plain { 0.0 } else { amplitude },
            uniform(rng, 2.0, 6.0),
            uniform(rng, 0.0, PI),
            uniform(rng, 0.0, 2.0 * PI),
        );
        Self {
            kind,
            centre,
            radius,
            angle,
            object,
            bg: [bg0, bg1],
            gradient,
            stripes,
            noise: 0.03,
        }
    }

    /// Fraction of the 2x2 sub-samples of pixel `(x, y)` inside the object.
    fn coverage(&self, x: usize, y: usize) -> f32 {
        let (sin, cos) = self.angle.sin_cos();
        let mut hits = 0u8;
        for (oy, ox) in [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)] {
            let dx = (x as f32 + ox - self.centre.0) / self.radius;
            let dy = (y as f32 + oy - self.centre.1) / self.radius;
            let (u, v) = (dx * cos + dy * sin, -dx * sin + dy * cos);
            hits += u8::from(self.kind.contains(u, v));
        }
        f32::from(hits) / 4.0
    }

    fn render(&self, size: usize, rng: &mut ChaCha8Rng) -> (Image, Vec<u8>) {
        let s = size as f32;
        let plane = size * size;
        let mut img = Image::zeros(3, size, size);
        let mut mask = vec![0u8; plane];
        let (gs, gc) = self.gradient.sin_cos();
        let (amp, freq, orient, phase) = self.stripes;
        let (os, oc) = orient.sin_cos();
        for y in 0..size {
            for x in 0..size {
                let (fx, fy) = ((x as f32 + 0.5) / s - 0.5, (y as f32 + 0.5) / s - 0.5);
                let t = ((fx * gc + fy * gs) + 0.5).clamp(0.0, 1.0);
                let stripe = amp * (2.0 * PI * freq * (fx * oc + fy * os) + phase).sin();
                let cov = self.coverage(x, y);
                let i = y * size + x;
                mask[i] = u8::from(cov >= 0.5);
                for c in 0..3 {
                    let bg = self.bg[0][c] * (1.0 - t) + self.bg[1][c] * t + stripe;
                    let v = bg * (1.0 - cov) + self.object[c] * cov;
                    let n = uniform(rng, -self.noise, self.noise);
                    img.data[c * plane + i] = (v + n).clamp(0.0, 1.0);
                }
            }
        }
        (img, mask)
    }
}

/// The procedural shapes dataset (stateless: it only holds its config).
#[derive(Clone, Debug, PartialEq)]
pub struct Shapes {
    config: ShapesConfig,
}

impl Shapes {
    /// Checks the config (1..=8 classes, size at least 8).
    pub fn new(config: ShapesConfig) -> Result<Self, DataError> {
        if !(1..=ShapeKind::ALL.len()).contains(&config.classes) {
            return Err(DataError::InvalidConfig {
                field: "classes",
                value: config.classes.to_string(),
                reason: "must be between 1 and 8",
            });
        }
        if config.palette == 1 || config.palette > PALETTE.len() {
            return Err(DataError::InvalidConfig {
                field: "palette",
                value: config.palette.to_string(),
                reason: "must be 0 (any colour) or between 2 and 8",
            });
        }
        if config.size < 8 {
            return Err(DataError::InvalidConfig {
                field: "size",
                value: config.size.to_string(),
                reason: "must be at least 8 pixels",
            });
        }
        Ok(Self { config })
    }

    /// The config.
    pub fn config(&self) -> &ShapesConfig {
        &self.config
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.config.classes
    }

    /// Class names in label order.
    pub fn class_names(&self) -> Vec<&'static str> {
        ShapeKind::ALL[..self.config.classes]
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
    /// [`ShapesDataset`] checks bounds).
    pub fn get(&self, split: Split, index: usize) -> Sample {
        let tag = match split {
            Split::Train => 0x0074_7261_696e,
            Split::Val => 0x0076_616c,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[self.config.seed, tag, index as u64]));
        let label = index % self.config.classes;
        let scene = Scene::draw(ShapeKind::ALL[label], &self.config, &mut rng);
        let (image, mask) = scene.render(self.config.size, &mut rng);
        Sample {
            image,
            label,
            mask,
            targets: Vec::new(),
        }
    }

    /// One split as a [`Dataset`].
    pub fn split(&self, split: Split) -> ShapesDataset {
        SplitDataset::new(self.clone(), split)
    }
}

/// One split of [`Shapes`], usable by the loader.
pub type ShapesDataset = SplitDataset<Shapes>;

impl Procedural for Shapes {
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

    fn shapes(classes: usize, seed: u64) -> Shapes {
        Shapes::new(ShapesConfig {
            classes,
            images: 64,
            val_images: 16,
            size: 32,
            seed,
            ..ShapesConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn rendering_is_deterministic_and_seed_dependent() {
        let a = shapes(6, 0);
        assert_eq!(a.get(Split::Train, 17), a.get(Split::Train, 17));
        assert_eq!(a.get(Split::Train, 17), shapes(6, 0).get(Split::Train, 17));
        assert_ne!(
            a.get(Split::Train, 17).image,
            shapes(6, 1).get(Split::Train, 17).image
        );
        assert_ne!(a.get(Split::Train, 3).image, a.get(Split::Val, 3).image);
        let s = a.get(Split::Val, 5);
        assert_eq!(
            (s.image.channels, s.image.height, s.image.width),
            (3, 32, 32)
        );
        assert_eq!(s.mask.len(), 32 * 32);
        assert!(s.image.data.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn labels_are_balanced() {
        let ds = shapes(8, 3).split(Split::Train);
        let mut counts = [0usize; 8];
        for i in 0..ds.len() {
            counts[ds.get(i).unwrap().label] += 1;
        }
        assert_eq!(counts, [8; 8]);
        assert!(ds.get(64).is_err());
        assert_eq!(ds.num_classes(), 8);
    }

    #[test]
    fn masks_are_non_empty_and_partial() {
        let s = shapes(8, 2);
        for i in 0..40 {
            let m = s.get(Split::Train, i).mask;
            let area = m.iter().filter(|&&b| b == 1).count();
            assert!(
                area > 10 && area < m.len() / 2 + m.len() / 4,
                "index {i}: area {area}"
            );
        }
    }

    #[test]
    fn object_contrasts_with_background() {
        let s = shapes(6, 4);
        for i in 0..12 {
            let sample = s.get(Split::Train, i);
            let plane = sample.mask.len();
            let mean = |want: u8| -> [f32; 3] {
                let n = sample.mask.iter().filter(|&&m| m == want).count() as f32;
                std::array::from_fn(|c| {
                    (0..plane)
                        .filter(|&p| sample.mask[p] == want)
                        .map(|p| sample.image.data[c * plane + p])
                        .sum::<f32>()
                        / n
                })
            };
            assert!(distance(mean(1), mean(0)) > 0.2, "index {i}");
        }
    }

    fn area_of(kind: ShapeKind) -> usize {
        let scene = Scene {
            kind,
            centre: (32.0, 32.0),
            radius: 24.0,
            angle: 0.0,
            object: [1.0; 3],
            bg: [[0.0; 3]; 2],
            gradient: 0.0,
            stripes: (0.0, 1.0, 0.0, 0.0),
            noise: 0.0,
        };
        let (_, mask) = scene.render(64, &mut ChaCha8Rng::seed_from_u64(0));
        mask.iter().map(|&m| usize::from(m)).sum()
    }

    #[test]
    fn kinds_are_geometrically_distinct() {
        let r2 = 24.0f32 * 24.0;
        let expect = [
            (ShapeKind::Circle, PI * r2),
            (ShapeKind::Square, 1.6 * 1.6 * r2),
            (ShapeKind::Diamond, 2.0 * r2),
            (ShapeKind::Ring, PI * (1.0 - 0.3025) * r2),
        ];
        for (kind, analytic) in expect {
            let area = area_of(kind) as f32;
            assert!(
                (area - analytic).abs() < 0.05 * analytic,
                "{kind:?}: {area} vs {analytic}"
            );
        }
        let areas: Vec<usize> = ShapeKind::ALL.iter().map(|&k| area_of(k)).collect();
        for i in 0..areas.len() {
            for j in i + 1..areas.len() {
                assert_ne!(
                    areas[i],
                    areas[j],
                    "{:?} vs {:?}",
                    ShapeKind::ALL[i],
                    ShapeKind::ALL[j]
                );
            }
        }
        assert!(ShapeKind::Star.contains(0.0, -0.95), "top point");
        assert!(!ShapeKind::Star.contains(0.0, 0.9), "notch at the bottom");
        assert!(!ShapeKind::Ring.contains(0.0, 0.0));
    }

    #[test]
    fn config_round_trips_through_ron() {
        let text = "(classes: 6, images: 2000, val_images: 400, size: 32, seed: 0)";
        let cfg: ShapesConfig = ron::from_str(text).unwrap();
        assert_eq!(cfg, ShapesConfig::default());
        let partial: ShapesConfig = ron::from_str("(classes: 4)").unwrap();
        assert_eq!(partial.classes, 4);
        assert!(ron::from_str::<ShapesConfig>("(colours: 4)").is_err());
        let err = Shapes::new(ShapesConfig { classes: 9, ..cfg }).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid classes '9': must be between 1 and 8"
        );
    }

    #[test]
    fn palette_and_plain_limit_colours() {
        let cfg = ShapesConfig {
            images: 24,
            palette: 2,
            plain: true,
            ..ShapesConfig::default()
        };
        let s = Shapes::new(cfg.clone()).unwrap();
        for i in 0..24 {
            let sample = s.get(Split::Train, i);
            let plane = sample.image.plane();
            // Every object pixel (full coverage) has a palette colour, up to the noise.
            let near_palette = |p: usize| {
                PALETTE[..2].iter().any(|c| {
                    (0..3).all(|ch| (sample.image.data[ch * plane + p] - c[ch]).abs() <= 0.031)
                })
            };
            let inside: Vec<usize> = (0..plane).filter(|&p| sample.mask[p] == 1).collect();
            let hits = inside.iter().filter(|&&p| near_palette(p)).count();
            // Edge pixels mix object and background; the interior is pure palette.
            assert!(
                hits * 2 > inside.len(),
                "image {i}: {hits}/{}",
                inside.len()
            );
            // A plain background: pixel 0 and the far corner differ by noise only.
            let corners = [0, plane - 1];
            if corners.iter().all(|&p| sample.mask[p] == 0) {
                for ch in 0..3 {
                    let d =
                        sample.image.data[ch * plane] - sample.image.data[ch * plane + plane - 1];
                    assert!(d.abs() <= 0.061, "image {i} channel {ch}: {d}");
                }
            }
        }
        for bad in [1, 9] {
            let err = Shapes::new(ShapesConfig {
                palette: bad,
                ..cfg.clone()
            })
            .unwrap_err();
            assert!(err.to_string().contains("palette"), "{err}");
        }
    }
}
