//! The procedural `domains` dataset: the same classes rendered in several styles.
//!
//! A stand-in for domain-adaptation benchmarks (PACMAC-style UDA): class `k` is always
//! shape kind `k` ([`ShapeKind::ALL`]), while the source and target domains draw it in
//! different [`Style`]s. Each domain has a train and a val split; the target train split
//! still carries labels, but adaptation methods are meant to ignore them.
//!
//! The geometry of an image (position, size, rotation) depends on `(seed, domain, split,
//! index)`; the style's random choices (colours, textures, stroke) come from a second
//! stream, so [`Domains::render_as`] can draw the same geometry in any style. Labels
//! cycle through the classes (`index % classes`) and the mask is the filled shape (1 =
//! object) whatever the style.

use std::f32::consts::{PI, TAU};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use super::augment::uniform;
use super::loader::{DataError, Dataset, Sample, mix_seed};
use super::scenes::{Placed, SUBSAMPLES, colour, contrasting, split_tag};
use super::shapes::{ShapeKind, Split};
use super::stats::Normalize;
use super::views::Image;

/// How an image is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Style {
    /// Flat object and background colours, faint pixel noise.
    Clean,
    /// Object and background filled with stripes, checkers or blocky noise.
    Texture,
    /// A dark, wobbly outline on light paper.
    Sketch,
    /// The clean rendering (same colours) plus strong Gaussian noise (σ = 0.25).
    Noisy,
}

impl Style {
    /// Every style.
    pub const ALL: [Style; 4] = [Self::Clean, Self::Texture, Self::Sketch, Self::Noisy];

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Texture => "texture",
            Self::Sketch => "sketch",
            Self::Noisy => "noisy",
        }
    }

    fn tag(self) -> u64 {
        match self {
            // Noisy shares Clean's colours, so a noisy image is its clean pair plus noise.
            Self::Clean | Self::Noisy => 0x636c,
            Self::Texture => 0x7478,
            Self::Sketch => 0x736b,
        }
    }
}

/// The labelled source domain or the (meant to be unlabelled) target domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Domain {
    /// The labelled domain.
    Source,
    /// The domain to adapt to.
    Target,
}

/// Domains dataset settings: `Domains((classes: 6, source: Clean, target: Sketch, ...))`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DomainsConfig {
    /// Number of classes (shape kinds), 1 to 8.
    pub classes: usize,
    /// Training images per domain.
    pub images: usize,
    /// Validation images per domain.
    pub val_images: usize,
    /// Image side in pixels (at least 8).
    pub size: usize,
    /// Style of the source domain.
    pub source: Style,
    /// Style of the target domain (must differ from `source`).
    pub target: Style,
    /// Seed of the whole dataset.
    pub seed: u64,
    /// Channel normalisation (default `Auto`: ImageNet for RGB, computed otherwise).
    #[serde(default)]
    pub normalize: Normalize,
}

impl Default for DomainsConfig {
    fn default() -> Self {
        Self {
            classes: 6,
            images: 2000,
            val_images: 400,
            size: 32,
            source: Style::Clean,
            target: Style::Sketch,
            seed: 0,
            normalize: Normalize::Auto,
        }
    }
}

/// The procedural domains dataset (stateless: it only holds its config).
#[derive(Clone, Debug, PartialEq)]
pub struct Domains {
    config: DomainsConfig,
}

impl Domains {
    /// Checks the config (1..=8 classes, size at least 8, two different styles).
    pub fn new(config: DomainsConfig) -> Result<Self, DataError> {
        if !(1..=ShapeKind::ALL.len()).contains(&config.classes) {
            return Err(DataError::InvalidConfig {
                field: "classes",
                value: config.classes.to_string(),
                reason: "must be between 1 and 8",
            });
        }
        if config.size < 8 {
            return Err(DataError::InvalidConfig {
                field: "size",
                value: config.size.to_string(),
                reason: "must be at least 8 pixels",
            });
        }
        if config.source == config.target {
            return Err(DataError::InvalidConfig {
                field: "target",
                value: config.target.name().to_string(),
                reason: "must differ from the source style",
            });
        }
        Ok(Self { config })
    }

    /// The config.
    pub fn config(&self) -> &DomainsConfig {
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

    /// The style of `domain`.
    pub fn style(&self, domain: Domain) -> Style {
        match domain {
            Domain::Source => self.config.source,
            Domain::Target => self.config.target,
        }
    }

    /// Number of images in `split` of either domain.
    pub fn len(&self, split: Split) -> usize {
        match split {
            Split::Train => self.config.images,
            Split::Val => self.config.val_images,
        }
    }

    /// Renders image `index` of `split` in `domain` (any index renders; [`Dataset::get`] on
    /// a [`DomainsDataset`] checks bounds).
    pub fn get(&self, domain: Domain, split: Split, index: usize) -> Sample {
        self.render_as(self.style(domain), domain, split, index)
    }

    /// The geometry of image `index` of `domain`/`split`, drawn in `style` (paired views of
    /// one scene across styles).
    pub fn render_as(&self, style: Style, domain: Domain, split: Split, index: usize) -> Sample {
        const TAG: u64 = 0x646f_6d61_696e;
        let cfg = &self.config;
        let domain_tag = match domain {
            Domain::Source => 0x0073_7263,
            Domain::Target => 0x0074_6774,
        };
        let base = [cfg.seed, TAG, domain_tag, split_tag(split), index as u64];
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&base));
        let label = index % cfg.classes;
        let s = cfg.size as f32;
        let radius = uniform(&mut rng, 0.35, 0.70) * s / 2.0;
        let centre = (
            uniform(&mut rng, radius, s - radius),
            uniform(&mut rng, radius, s - radius),
        );
        let angle = uniform(&mut rng, -PI / 12.0, PI / 12.0);
        let shape = Placed::new(ShapeKind::ALL[label], centre, radius, angle);
        let mut style_seed = base.to_vec();
        style_seed.push(style.tag());
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&style_seed));
        let (image, mask) = paint(style, &shape, cfg.size, &mut rng);
        Sample {
            image,
            label,
            mask,
            targets: Vec::new(),
        }
    }

    /// One split of one domain as a [`Dataset`].
    pub fn split(&self, domain: Domain, split: Split) -> DomainsDataset {
        DomainsDataset {
            domains: self.clone(),
            domain,
            split,
        }
    }
}

/// A two-colour fill: stripes, a checkerboard or blocky value noise.
#[derive(Clone, Copy, Debug)]
struct Pattern {
    kind: u8,
    colours: [[f32; 3]; 2],
    /// Cycles per pixel.
    freq: f32,
    sin: f32,
    cos: f32,
    phase: f32,
    salt: u64,
}

impl Pattern {
    fn draw(rng: &mut ChaCha8Rng, colours: [[f32; 3]; 2]) -> Self {
        let (sin, cos) = uniform(rng, 0.0, PI).sin_cos();
        Self {
            kind: rng.random_range(0..3),
            colours,
            freq: uniform(rng, 0.1, 0.3),
            sin,
            cos,
            phase: uniform(rng, 0.0, TAU),
            salt: rng.random(),
        }
    }

    /// The fill colour at pixel centre `(x, y)`.
    fn at(&self, x: f32, y: f32) -> [f32; 3] {
        let (a, b) = (x * self.cos + y * self.sin, -x * self.sin + y * self.cos);
        let t = match self.kind {
            0 => 0.5 + 0.5 * (TAU * self.freq * a + self.phase).sin(),
            1 => {
                let (i, j) = ((a * self.freq * 2.0).floor(), (b * self.freq * 2.0).floor());
                ((i + j) as i64).rem_euclid(2) as f32
            }
            _ => {
                let (i, j) = ((a * self.freq * 2.0).floor(), (b * self.freq * 2.0).floor());
                let h = mix_seed(&[self.salt, i as i64 as u64, j as i64 as u64]);
                (h >> 40) as f32 / (1u64 << 24) as f32
            }
        };
        let [c0, c1] = self.colours;
        std::array::from_fn(|c| c0[c] * (1.0 - t) + c1[c] * t)
    }
}

/// Renders `shape` in `style`: the image and the filled-shape mask.
fn paint(style: Style, shape: &Placed, size: usize, rng: &mut ChaCha8Rng) -> (Image, Vec<u8>) {
    let plane = size * size;
    let mut image = Image::zeros(3, size, size);
    let mut mask = vec![0u8; plane];
    let put = |data: &mut Vec<f32>, i: usize, rgb: [f32; 3]| {
        for (c, v) in rgb.into_iter().enumerate() {
            data[c * plane + i] = v.clamp(0.0, 1.0);
        }
    };
    match style {
        Style::Clean | Style::Noisy => {
            let bg = colour(rng);
            let obj = contrasting(rng, &[bg], 0.5);
            let sigma = if style == Style::Noisy { 0.25 } else { 0.0 };
            for (i, m) in mask.iter_mut().enumerate() {
                let cov = shape.coverage(i % size, i / size);
                *m = u8::from(cov >= 0.5);
                let rgb = std::array::from_fn(|c| {
                    let flat = bg[c] * (1.0 - cov) + obj[c] * cov + uniform(rng, -0.02, 0.02);
                    if sigma > 0.0 {
                        flat + sigma * rng.sample::<f32, _>(StandardNormal)
                    } else {
                        flat
                    }
                });
                put(&mut image.data, i, rgb);
            }
        }
        Style::Texture => {
            let b0 = colour(rng);
            let b1 = contrasting(rng, &[b0], 0.4);
            let o0 = contrasting(rng, &[b0, b1], 0.45);
            let o1 = contrasting(rng, &[o0, b0, b1], 0.35);
            let bg = Pattern::draw(rng, [b0, b1]);
            let obj = Pattern::draw(rng, [o0, o1]);
            for (i, m) in mask.iter_mut().enumerate() {
                let (x, y) = (i % size, i / size);
                let cov = shape.coverage(x, y);
                *m = u8::from(cov >= 0.5);
                let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
                let (b, o) = (bg.at(fx, fy), obj.at(fx, fy));
                let rgb = std::array::from_fn(|c| {
                    b[c] * (1.0 - cov) + o[c] * cov + uniform(rng, -0.02, 0.02)
                });
                put(&mut image.data, i, rgb);
            }
        }
        Style::Sketch => {
            let paper = uniform(rng, 0.85, 0.97);
            let paper = [0; 3].map(|_| paper + uniform(rng, -0.02, 0.02));
            let ink_level = uniform(rng, 0.05, 0.3);
            let ink = [0; 3].map(|_| ink_level + uniform(rng, -0.03, 0.03));
            let half = uniform(rng, 0.5, 0.9) / shape.radius;
            let (amp, freq) = (uniform(rng, 0.3, 0.8), uniform(rng, 0.4, 0.9));
            let phases = [0; 3].map(|_| uniform(rng, 0.0, TAU));
            for (i, m) in mask.iter_mut().enumerate() {
                let (x, y) = (i % size, i / size);
                *m = u8::from(shape.coverage(x, y) >= 0.5);
                let hits = SUBSAMPLES
                    .iter()
                    .filter(|(ox, oy)| {
                        let (px, py) = (x as f32 + ox, y as f32 + oy);
                        let jx = px + amp * (freq * py + phases[0]).sin();
                        let jy = py + amp * (freq * px + phases[1]).sin();
                        let (u, v) = shape.local(jx, jy, 1.0 + half);
                        let (ui, vi) = shape.local(jx, jy, 1.0 - half);
                        shape.kind.contains(u, v) && !shape.kind.contains(ui, vi)
                    })
                    .count();
                let pressure = 0.75 + 0.25 * (0.45 * (x + y) as f32 + phases[2]).sin();
                let a = pressure * hits as f32 / SUBSAMPLES.len() as f32;
                let rgb = std::array::from_fn(|c| {
                    paper[c] * (1.0 - a) + ink[c] * a + uniform(rng, -0.02, 0.02)
                });
                put(&mut image.data, i, rgb);
            }
        }
    }
    (image, mask)
}

/// One split of one domain of [`Domains`], usable by the loader.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainsDataset {
    domains: Domains,
    domain: Domain,
    split: Split,
}

impl DomainsDataset {
    /// The underlying dataset.
    pub fn domains(&self) -> &Domains {
        &self.domains
    }

    /// Which domain this is.
    pub fn domain(&self) -> Domain {
        self.domain
    }

    /// Which split this is.
    pub fn which(&self) -> Split {
        self.split
    }
}

impl Dataset for DomainsDataset {
    fn len(&self) -> usize {
        self.domains.len(self.split)
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let len = self.len();
        if index >= len {
            return Err(DataError::IndexOutOfRange { index, len });
        }
        Ok(self.domains.get(self.domain, self.split, index))
    }

    fn num_classes(&self) -> usize {
        self.domains.classes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains(source: Style, target: Style) -> Domains {
        Domains::new(DomainsConfig {
            images: 48,
            val_images: 12,
            source,
            target,
            seed: 5,
            ..DomainsConfig::default()
        })
        .unwrap()
    }

    /// Mean brightness, mean saturation (channel max - min) and mean horizontal roughness.
    fn stats(img: &Image) -> [f32; 3] {
        let (plane, w) = (img.plane(), img.width);
        let mut acc = [0.0f32; 3];
        for i in 0..plane {
            let px: [f32; 3] = std::array::from_fn(|c| img.data[c * plane + i]);
            acc[0] += px.iter().sum::<f32>() / 3.0;
            acc[1] +=
                px.iter().fold(0.0f32, |m, &v| m.max(v)) - px.iter().fold(1.0f32, |m, &v| m.min(v));
            if i % w + 1 < w {
                acc[2] += (0..3)
                    .map(|c| (img.data[c * plane + i + 1] - px[c]).abs())
                    .sum::<f32>()
                    / 3.0;
            }
        }
        acc.map(|a| a / plane as f32)
    }

    fn mean_stats(d: &Domains, style: Style) -> [f32; 3] {
        let mut acc = [0.0f32; 3];
        for i in 0..40 {
            let s = stats(&d.render_as(style, Domain::Source, Split::Train, i).image);
            for k in 0..3 {
                acc[k] += s[k] / 40.0;
            }
        }
        acc
    }

    fn mad(a: &Image, b: &Image) -> f32 {
        a.data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .sum::<f32>()
            / a.data.len() as f32
    }

    #[test]
    fn rendering_is_deterministic_and_order_independent() {
        let d = domains(Style::Clean, Style::Sketch);
        for domain in [Domain::Source, Domain::Target] {
            let forward: Vec<Sample> = (0..6).map(|i| d.get(domain, Split::Train, i)).collect();
            let backward: Vec<Sample> = (0..6)
                .rev()
                .map(|i| d.get(domain, Split::Train, i))
                .collect();
            for (i, a) in forward.iter().enumerate() {
                assert_eq!(a, &backward[5 - i], "{domain:?} index {i}");
            }
        }
        let again = domains(Style::Clean, Style::Sketch);
        assert_eq!(
            d.get(Domain::Target, Split::Val, 2),
            again.get(Domain::Target, Split::Val, 2)
        );
        assert_ne!(
            d.get(Domain::Source, Split::Train, 2).mask,
            d.get(Domain::Source, Split::Val, 2).mask
        );
        assert_eq!(
            d.get(Domain::Source, Split::Train, 4),
            d.render_as(Style::Clean, Domain::Source, Split::Train, 4)
        );
    }

    #[test]
    fn images_have_the_right_shape_and_range() {
        let d = domains(Style::Texture, Style::Noisy);
        for style in Style::ALL {
            for i in 0..6 {
                let x = d.render_as(style, Domain::Target, Split::Train, i);
                assert_eq!(
                    (x.image.channels, x.image.height, x.image.width),
                    (3, 32, 32)
                );
                assert_eq!(x.mask.len(), 32 * 32);
                assert!(
                    x.image.data.iter().all(|v| (0.0..=1.0).contains(v)),
                    "{style:?}"
                );
                let area = x.mask.iter().filter(|&&m| m == 1).count();
                assert!(area > 10 && area < 1000, "{style:?} {i}: area {area}");
                assert!(x.targets.is_empty());
            }
        }
    }

    #[test]
    fn styles_differ_visibly_on_the_same_scene() {
        let d = domains(Style::Clean, Style::Sketch);
        let n = 24;
        for (a, sa) in Style::ALL.iter().enumerate() {
            for sb in &Style::ALL[a + 1..] {
                let mut total = 0.0;
                for i in 0..n {
                    let x = d.render_as(*sa, Domain::Source, Split::Train, i);
                    let y = d.render_as(*sb, Domain::Source, Split::Train, i);
                    assert_eq!((x.label, &x.mask), (y.label, &y.mask), "same geometry");
                    total += mad(&x.image, &y.image) / n as f32;
                }
                let floor = if (*sa, *sb) == (Style::Clean, Style::Sketch) {
                    0.2
                } else {
                    0.1
                };
                assert!(
                    total > floor,
                    "{sa:?} vs {sb:?}: mean abs difference {total}"
                );
            }
        }
    }

    #[test]
    fn styles_have_distinct_image_statistics() {
        let d = domains(Style::Clean, Style::Sketch);
        let [clean, texture, sketch, noisy] = Style::ALL.map(|s| mean_stats(&d, s));
        eprintln!("clean {clean:?}\ntexture {texture:?}\nsketch {sketch:?}\nnoisy {noisy:?}");
        // Sketches are bright and grey; clean images are flat; the others are rough.
        assert!(sketch[0] > 0.75 && clean[0] < 0.65, "brightness");
        assert!(sketch[1] < 0.08 && clean[1] > 0.2, "saturation");
        assert!(clean[2] < 0.05, "clean roughness {}", clean[2]);
        assert!(texture[2] > 0.08 && noisy[2] > 0.15, "roughness");
        assert!(
            (noisy[2] - texture[2]).abs() > 0.03,
            "noise vs texture roughness"
        );
    }

    #[test]
    fn four_splits_are_balanced_and_bounds_checked() {
        let d = domains(Style::Clean, Style::Sketch);
        for domain in [Domain::Source, Domain::Target] {
            for (split, len) in [(Split::Train, 48), (Split::Val, 12)] {
                let ds = d.split(domain, split);
                assert_eq!((ds.len(), ds.domain(), ds.which()), (len, domain, split));
                assert_eq!(ds.num_classes(), 6);
                let mut counts = [0usize; 6];
                for i in 0..len {
                    counts[ds.get(i).unwrap().label] += 1;
                }
                assert_eq!(counts, [len / 6; 6]);
                assert!(matches!(
                    ds.get(len),
                    Err(DataError::IndexOutOfRange { .. })
                ));
            }
        }
        assert_eq!(d.style(Domain::Target), Style::Sketch);
        assert_eq!(d.class_names().len(), 6);
    }

    #[test]
    fn config_is_validated_and_parses_from_ron() {
        let cfg: DomainsConfig = ron::from_str("(source: Texture, target: Noisy)").unwrap();
        assert_eq!(
            (cfg.source, cfg.target, cfg.classes),
            (Style::Texture, Style::Noisy, 6)
        );
        assert!(ron::from_str::<DomainsConfig>("(target: Cartoon)").is_err());
        let base = DomainsConfig::default();
        let bad: [fn(&mut DomainsConfig); 3] =
            [|c| c.classes = 0, |c| c.classes = 9, |c| c.size = 4];
        for edit in bad {
            let mut cfg = base.clone();
            edit(&mut cfg);
            assert!(matches!(
                Domains::new(cfg),
                Err(DataError::InvalidConfig { .. })
            ));
        }
        let err = Domains::new(DomainsConfig {
            target: Style::Clean,
            ..base
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid target 'clean': must differ from the source style"
        );
    }
}
