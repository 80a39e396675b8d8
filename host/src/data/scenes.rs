//! The procedural `scenes` dataset: several objects per image, multi-label targets and masks.
//!
//! Each image holds `min_objects..=max_objects` shapes (kinds from [`ShapeKind`], repeats
//! allowed) on a gradient background. Objects may overlap, but a layout is kept only when
//! every object keeps at least half of its own area visible; after a few failed layouts the
//! last one is used with the largest object moved to the top.
//!
//! - `label`: the kind of the largest object (drawn largest by construction). It cycles
//!   through the classes (`index % classes`), so every split is balanced.
//! - `targets`: the kinds visible in the mask, ascending (the multi-label target).
//! - `mask`: per pixel, 0 for background or `k + 1` for class `k` of the topmost object.
//!
//! Every image is a pure function of `(seed, split, index)`.

use std::ops::Range;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::augment::uniform;
use super::loader::{DataError, Sample, mix_seed};
use super::procedural::{Procedural, SplitDataset};
use super::shapes::{ShapeKind, Split};
use super::stats::Normalize;
use super::views::Image;

/// Scenes dataset settings, as in a workspace: `Scenes((classes: 6, max_objects: 3, ...))`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScenesConfig {
    /// Number of classes (shape kinds), 1 to 8.
    pub classes: usize,
    /// Training images.
    pub images: usize,
    /// Validation images.
    pub val_images: usize,
    /// Image side in pixels (at least 16).
    pub size: usize,
    /// Fewest objects per image (at least 1).
    pub min_objects: usize,
    /// Most objects per image (`min_objects` to 6).
    pub max_objects: usize,
    /// Seed of the whole dataset.
    pub seed: u64,
    /// Channel normalisation (default `Auto`: ImageNet for RGB, computed otherwise).
    #[serde(default)]
    pub normalize: Normalize,
}

impl Default for ScenesConfig {
    fn default() -> Self {
        Self {
            classes: 6,
            images: 2000,
            val_images: 400,
            size: 32,
            min_objects: 2,
            max_objects: 3,
            seed: 0,
            normalize: Normalize::Auto,
        }
    }
}

/// Most objects one image may hold.
pub const MAX_OBJECTS: usize = 6;

/// Seed tag of each split, shared by the procedural datasets.
pub(crate) fn split_tag(split: Split) -> u64 {
    match split {
        Split::Train => 0x0074_7261_696e,
        Split::Val => 0x0076_616c,
    }
}

/// Sub-pixel sample offsets for anti-aliased coverage.
pub(crate) const SUBSAMPLES: [(f32, f32); 4] =
    [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)];

/// One shape placed in pixel space: kind, centre, radius (half-size) and rotation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Placed {
    /// The shape.
    pub kind: ShapeKind,
    /// Centre `(x, y)` in pixels.
    pub centre: (f32, f32),
    /// Half-size in pixels.
    pub radius: f32,
    sin: f32,
    cos: f32,
}

impl Placed {
    /// A shape at `centre` with half-size `radius`, rotated by `angle` radians.
    pub(crate) fn new(kind: ShapeKind, centre: (f32, f32), radius: f32, angle: f32) -> Self {
        let (sin, cos) = angle.sin_cos();
        Self {
            kind,
            centre,
            radius,
            sin,
            cos,
        }
    }

    /// The point `(px, py)` (pixels) in the shape's unit frame, scaled by `1 / (radius * scale)`.
    pub(crate) fn local(&self, px: f32, py: f32, scale: f32) -> (f32, f32) {
        let r = self.radius * scale;
        let (dx, dy) = ((px - self.centre.0) / r, (py - self.centre.1) / r);
        (
            dx * self.cos + dy * self.sin,
            -dx * self.sin + dy * self.cos,
        )
    }

    /// Fraction of the sub-samples of pixel `(x, y)` inside the shape.
    pub(crate) fn coverage(&self, x: usize, y: usize) -> f32 {
        let hits = SUBSAMPLES
            .iter()
            .filter(|(ox, oy)| {
                let (u, v) = self.local(x as f32 + ox, y as f32 + oy, 1.0);
                self.kind.contains(u, v)
            })
            .count();
        hits as f32 / SUBSAMPLES.len() as f32
    }

    /// Pixel columns and rows the shape (grown by `scale`) can touch in a `size` image.
    pub(crate) fn bbox(&self, size: usize, scale: f32) -> (Range<usize>, Range<usize>) {
        // Every kind fits in a disc of radius 1.25 in its unit frame.
        let reach = 1.25 * self.radius * scale + 1.0;
        let span = |c: f32| {
            let lo = (c - reach).floor().max(0.0) as usize;
            let hi = ((c + reach).ceil().max(0.0) as usize).min(size);
            lo..hi.max(lo)
        };
        (span(self.centre.0), span(self.centre.1))
    }
}

/// A random colour in the RGB cube.
pub(crate) fn colour(rng: &mut ChaCha8Rng) -> [f32; 3] {
    [rng.random(), rng.random(), rng.random()]
}

/// Euclidean distance between two colours.
pub(crate) fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// A colour at least `min` away from each of `avoid` (the complement of `avoid[0]` if none is
/// found in 32 draws).
pub(crate) fn contrasting(rng: &mut ChaCha8Rng, avoid: &[[f32; 3]], min: f32) -> [f32; 3] {
    for _ in 0..32 {
        let c = colour(rng);
        if avoid.iter().all(|&a| distance(c, a) >= min) {
            return c;
        }
    }
    avoid.first().map_or([0.5; 3], |a| a.map(|c| 1.0 - c))
}

/// One object of a scene: its shape and flat colour.
#[derive(Clone, Copy, Debug)]
struct Object {
    class: usize,
    shape: Placed,
    colour: [f32; 3],
}

/// Layout attempts before falling back to "largest object on top".
const LAYOUT_TRIES: usize = 12;
/// Smallest visible share of each object's own area in an accepted layout.
const MIN_VISIBLE: f32 = 0.5;

/// The procedural scenes dataset (stateless: it only holds its config).
#[derive(Clone, Debug, PartialEq)]
pub struct Scenes {
    config: ScenesConfig,
}

impl Scenes {
    /// Checks the config (1..=8 classes, size at least 16, `1 <= min_objects <= max_objects <= 6`).
    pub fn new(config: ScenesConfig) -> Result<Self, DataError> {
        let invalid = |field, value: usize, reason| {
            Err(DataError::InvalidConfig {
                field,
                value: value.to_string(),
                reason,
            })
        };
        if !(1..=ShapeKind::ALL.len()).contains(&config.classes) {
            return invalid("classes", config.classes, "must be between 1 and 8");
        }
        if config.size < 16 {
            return invalid("size", config.size, "must be at least 16 pixels");
        }
        if config.min_objects == 0 {
            return invalid("min_objects", 0, "must be at least 1");
        }
        if !(config.min_objects..=MAX_OBJECTS).contains(&config.max_objects) {
            return invalid(
                "max_objects",
                config.max_objects,
                "must be between min_objects and 6",
            );
        }
        Ok(Self { config })
    }

    /// The config.
    pub fn config(&self) -> &ScenesConfig {
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
    /// [`ScenesDataset`] checks bounds).
    pub fn get(&self, split: Split, index: usize) -> Sample {
        self.compose(split, index).0
    }

    /// One split as a [`Dataset`].
    pub fn split(&self, split: Split) -> ScenesDataset {
        SplitDataset::new(self.clone(), split)
    }

    /// The sample and whether a layout passed the visibility check (false: fallback).
    fn compose(&self, split: Split, index: usize) -> (Sample, bool) {
        const TAG: u64 = 0x7363_656e_6573;
        let cfg = &self.config;
        let seed = mix_seed(&[cfg.seed, TAG, split_tag(split), index as u64]);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let label = index % cfg.classes;
        let s = cfg.size as f32;
        let bg0 = colour(&mut rng);
        let bg1 = bg0.map(|c| (c + uniform(&mut rng, -0.2, 0.2)).clamp(0.0, 1.0));
        let (gs, gc) = uniform(&mut rng, 0.0, std::f32::consts::TAU).sin_cos();
        let mut canvas = Canvas::new(cfg.size);
        let mut objects = Vec::with_capacity(cfg.max_objects);
        let mut accepted = false;
        for _ in 0..LAYOUT_TRIES {
            self.layout(label, [bg0, bg1], &mut rng, &mut objects);
            canvas.paint(&objects);
            if canvas.all_visible(objects.len()) {
                accepted = true;
                break;
            }
        }
        if !accepted {
            // The largest object goes on top, so the label is always visible.
            let largest = (0..objects.len())
                .max_by(|&a, &b| objects[a].shape.radius.total_cmp(&objects[b].shape.radius));
            if let Some(k) = largest {
                objects[k..].rotate_left(1);
            }
            canvas.paint(&objects);
        }
        let plane = cfg.size * cfg.size;
        let mut image = Image::zeros(3, cfg.size, cfg.size);
        let mut mask = vec![0u8; plane];
        let mut present = [false; 8];
        for (i, &id) in canvas.ids.iter().enumerate() {
            let (x, y) = (i % cfg.size, i / cfg.size);
            let (fx, fy) = ((x as f32 + 0.5) / s - 0.5, (y as f32 + 0.5) / s - 0.5);
            let t = (fx * gc + fy * gs + 0.5).clamp(0.0, 1.0);
            if let Some(obj) = id.checked_sub(1).and_then(|k| objects.get(usize::from(k))) {
                mask[i] = obj.class as u8 + 1;
                present[obj.class] = true;
            }
            for c in 0..3 {
                let bg = bg0[c] * (1.0 - t) + bg1[c] * t;
                let mut v = bg;
                for (k, obj) in objects.iter().enumerate() {
                    let cov = canvas.cover[k * plane + i];
                    v = v * (1.0 - cov) + obj.colour[c] * cov;
                }
                let n = uniform(&mut rng, -0.03, 0.03);
                image.data[c * plane + i] = (v + n).clamp(0.0, 1.0);
            }
        }
        let targets = (0..cfg.classes as u32)
            .filter(|&k| present[k as usize])
            .collect();
        let sample = Sample {
            image,
            label,
            mask,
            targets,
        };
        (sample, accepted)
    }

    /// Draws one layout into `objects` (draw order, bottom first). The first object drawn is
    /// the largest, has kind `label` and ends up at a random depth.
    fn layout(
        &self,
        label: usize,
        bg: [[f32; 3]; 2],
        rng: &mut ChaCha8Rng,
        objects: &mut Vec<Object>,
    ) {
        let cfg = &self.config;
        let s = cfg.size as f32;
        objects.clear();
        let n = rng.random_range(cfg.min_objects..=cfg.max_objects);
        let mut colours: Vec<[f32; 3]> = bg.to_vec();
        for j in 0..n {
            let (kind, radius) = if j == 0 {
                (label, uniform(rng, 0.22, 0.30) * s)
            } else {
                (
                    rng.random_range(0..cfg.classes),
                    uniform(rng, 0.13, 0.19) * s,
                )
            };
            let mut centre = (s / 2.0, s / 2.0);
            for _ in 0..16 {
                centre = (
                    uniform(rng, radius, s - radius),
                    uniform(rng, radius, s - radius),
                );
                let apart = objects.iter().all(|o| {
                    let (dx, dy) = (o.shape.centre.0 - centre.0, o.shape.centre.1 - centre.1);
                    (dx * dx + dy * dy).sqrt() >= 0.75 * (o.shape.radius + radius)
                });
                if apart {
                    break;
                }
            }
            let angle = uniform(rng, -0.3, 0.3);
            let colour = contrasting(rng, &colours, 0.4);
            colours.push(colour);
            let shape = Placed::new(ShapeKind::ALL[kind], centre, radius, angle);
            objects.push(Object {
                class: kind,
                shape,
                colour,
            });
        }
        // A random position in the stacking order for the largest object.
        let depth = rng.random_range(0..n);
        objects[..=depth].rotate_left(1);
    }
}

/// Per-object coverage planes and the topmost-object map, reused across layout attempts.
struct Canvas {
    size: usize,
    /// `objects * size * size` coverage values.
    cover: Vec<f32>,
    /// Per pixel, 0 or 1 + the index of the topmost object covering at least half of it.
    ids: Vec<u8>,
    /// Pixels each object would cover on its own.
    full: [usize; MAX_OBJECTS],
}

impl Canvas {
    fn new(size: usize) -> Self {
        Self {
            size,
            cover: Vec::new(),
            ids: vec![0; size * size],
            full: [0; MAX_OBJECTS],
        }
    }

    fn paint(&mut self, objects: &[Object]) {
        let plane = self.size * self.size;
        self.cover.clear();
        self.cover.resize(objects.len() * plane, 0.0);
        self.ids.fill(0);
        self.full = [0; MAX_OBJECTS];
        for (k, obj) in objects.iter().enumerate().take(MAX_OBJECTS) {
            let (xs, ys) = obj.shape.bbox(self.size, 1.0);
            for y in ys {
                for x in xs.clone() {
                    let cov = obj.shape.coverage(x, y);
                    let i = y * self.size + x;
                    self.cover[k * plane + i] = cov;
                    if cov >= 0.5 {
                        self.ids[i] = k as u8 + 1;
                        self.full[k] += 1;
                    }
                }
            }
        }
    }

    fn all_visible(&self, n: usize) -> bool {
        let mut visible = [0usize; MAX_OBJECTS];
        for &id in &self.ids {
            if let Some(k) = usize::from(id).checked_sub(1) {
                visible[k] += 1;
            }
        }
        (0..n.min(MAX_OBJECTS))
            .all(|k| self.full[k] > 0 && visible[k] as f32 >= MIN_VISIBLE * self.full[k] as f32)
    }
}

/// One split of [`Scenes`], usable by the loader.
pub type ScenesDataset = SplitDataset<Scenes>;

impl Procedural for Scenes {
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

    fn small(seed: u64) -> Scenes {
        Scenes::new(ScenesConfig {
            images: 48,
            val_images: 12,
            seed,
            ..ScenesConfig::default()
        })
        .unwrap()
    }

    fn classes_in(mask: &[u8]) -> Vec<u32> {
        let mut seen: Vec<u32> = mask
            .iter()
            .filter(|&&m| m > 0)
            .map(|&m| u32::from(m) - 1)
            .collect();
        seen.sort_unstable();
        seen.dedup();
        seen
    }

    #[test]
    fn rendering_is_deterministic_and_order_independent() {
        let s = small(7);
        let forward: Vec<Sample> = (0..8).map(|i| s.get(Split::Train, i)).collect();
        let backward: Vec<Sample> = (0..8).rev().map(|i| s.get(Split::Train, i)).collect();
        for (i, a) in forward.iter().enumerate() {
            assert_eq!(a, &backward[7 - i], "index {i}");
        }
        assert_eq!(small(7).get(Split::Val, 3), s.get(Split::Val, 3));
        assert_ne!(s.get(Split::Train, 3).image, s.get(Split::Val, 3).image);
        assert_ne!(
            s.get(Split::Train, 3).image,
            small(8).get(Split::Train, 3).image
        );
    }

    #[test]
    fn images_have_the_right_shape_and_range() {
        let s = small(1);
        for i in 0..16 {
            let x = s.get(Split::Train, i);
            assert_eq!(
                (x.image.channels, x.image.height, x.image.width),
                (3, 32, 32)
            );
            assert_eq!(x.mask.len(), 32 * 32);
            assert!(x.image.data.iter().all(|v| (0.0..=1.0).contains(v)));
            assert!(x.mask.iter().all(|&m| usize::from(m) <= s.classes()));
        }
    }

    #[test]
    fn targets_match_the_mask_and_contain_the_label() {
        let s = small(2);
        let mut total = 0;
        for i in 0..120 {
            let x = s.get(Split::Train, i);
            assert_eq!(x.label, i % 6);
            assert_eq!(x.targets, classes_in(&x.mask), "index {i}");
            assert!(x.targets.contains(&(x.label as u32)), "index {i}");
            assert!(x.targets.len() <= 3);
            total += x.targets.len();
        }
        assert!(
            total as f32 / 120.0 > 1.5,
            "mean labels {}",
            total as f32 / 120.0
        );
    }

    #[test]
    fn objects_stay_mostly_visible() {
        let s = Scenes::new(ScenesConfig {
            min_objects: 3,
            max_objects: 4,
            ..ScenesConfig::default()
        })
        .unwrap();
        let fallbacks = (0..200).filter(|&i| !s.compose(Split::Train, i).1).count();
        assert!(fallbacks <= 10, "{fallbacks} of 200 layouts fell back");
        let one = Scenes::new(ScenesConfig {
            min_objects: 1,
            max_objects: 1,
            ..ScenesConfig::default()
        })
        .unwrap();
        assert!((0..20).all(|i| one.get(Split::Val, i).targets.len() == 1));
    }

    #[test]
    fn dataset_is_balanced_and_bounds_checked() {
        let ds = small(3).split(Split::Train);
        let mut counts = [0usize; 6];
        for i in 0..ds.len() {
            counts[ds.get(i).unwrap().label] += 1;
        }
        assert_eq!(counts, [8; 6]);
        assert!(matches!(
            ds.get(48),
            Err(DataError::IndexOutOfRange { index: 48, len: 48 })
        ));
        assert_eq!(ds.num_classes(), 6);
        assert_eq!(ds.source().class_names()[..2], ["circle", "square"]);
        assert_eq!(small(3).split(Split::Val).len(), 12);
    }

    #[test]
    fn config_is_validated_and_parses_from_ron() {
        let cfg: ScenesConfig = ron::from_str("(classes: 4, max_objects: 5)").unwrap();
        assert_eq!((cfg.classes, cfg.min_objects, cfg.max_objects), (4, 2, 5));
        assert!(ron::from_str::<ScenesConfig>("(objects: 4)").is_err());
        let bad: [fn(&mut ScenesConfig); 6] = [
            |c| c.classes = 0,
            |c| c.classes = 9,
            |c| c.size = 8,
            |c| c.min_objects = 0,
            |c| (c.min_objects, c.max_objects) = (3, 2),
            |c| c.max_objects = 7,
        ];
        for edit in bad {
            let mut cfg = ScenesConfig::default();
            edit(&mut cfg);
            let err = Scenes::new(cfg.clone());
            assert!(
                matches!(err, Err(DataError::InvalidConfig { .. })),
                "{cfg:?}"
            );
        }
        let err = Scenes::new(ScenesConfig {
            max_objects: 7,
            ..ScenesConfig::default()
        });
        assert_eq!(
            err.unwrap_err().to_string(),
            "invalid max_objects '7': must be between min_objects and 6"
        );
    }
}
