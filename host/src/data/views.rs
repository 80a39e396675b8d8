//! The host-side image type and DINO-style multi-crop views.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::augment::{
    color_jitter, contrast_bands, gaussian_blur, grayscale, hflip, mean_gray, normalize,
    random_resized_crop, scale_bands, solarize, uniform,
};
use super::loader::DataError;
use super::stats::ChannelStats;

/// A CPU image: `channels x height x width`, row-major (CHW), values in `[0, 1]`
/// before normalisation.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// Number of channels (3 for RGB).
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// `channels * height * width` values, CHW order.
    pub data: Vec<f32>,
}

impl Image {
    /// An image from a CHW buffer; the length must match the shape.
    pub fn new(
        channels: usize,
        height: usize,
        width: usize,
        data: Vec<f32>,
    ) -> Result<Self, DataError> {
        let expected = channels * height * width;
        if data.len() != expected {
            return Err(DataError::BufferSize {
                channels,
                height,
                width,
                expected,
                got: data.len(),
            });
        }
        Ok(Self {
            channels,
            height,
            width,
            data,
        })
    }

    /// An all-zero image.
    pub fn zeros(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
            data: vec![0.0; channels * height * width],
        }
    }

    /// An image filled with `value`.
    pub fn filled(channels: usize, height: usize, width: usize, value: f32) -> Self {
        Self {
            channels,
            height,
            width,
            data: vec![value; channels * height * width],
        }
    }

    /// Values per channel plane (`height * width`).
    pub fn plane(&self) -> usize {
        self.height * self.width
    }

    /// The value at channel `c`, row `y`, column `x`.
    pub fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.height + y) * self.width + x]
    }
}

/// One group of random views (RandomResizedCrop plus DINO's photometric ops).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewSpec {
    /// How many views of this kind.
    pub count: usize,
    /// Output side in pixels.
    pub size: usize,
    /// RandomResizedCrop area fraction range.
    pub scale: (f32, f32),
    /// Probability of a horizontal flip.
    pub flip_p: f32,
    /// Probability of colour jitter (0.4, 0.4, 0.2, 0.1).
    pub jitter_p: f32,
    /// Probability of grayscale.
    pub gray_p: f32,
    /// Probability of a Gaussian blur.
    pub blur_p: f32,
    /// Blur sigma range in output pixels (sigma is drawn uniformly from it).
    pub blur_sigma: (f32, f32),
    /// Probability of solarization at 0.5.
    pub solarize_p: f32,
}

/// Gaussian-blur sigma range in pixels at DINO's resolutions (PIL radius uniform in
/// [0.1, 2] on 224 px global and 96 px local crops); see [`scaled_blur`].
pub const BLUR_SIGMA: (f32, f32) = (0.1, 2.0);

/// [`BLUR_SIGMA`] scaled from a reference side (224 for DINO's globals, 96 for its
/// locals) to `size`, so a 32 px crop is blurred as much, relative to its side, as a
/// 224 px one.
pub fn scaled_blur(size: usize, reference: usize) -> (f32, f32) {
    let k = size as f32 / reference.max(1) as f32;
    (BLUR_SIGMA.0 * k, BLUR_SIGMA.1 * k)
}
/// RandomResizedCrop aspect-ratio range.
pub const CROP_RATIO: (f32, f32) = (3.0 / 4.0, 4.0 / 3.0);

impl ViewSpec {
    /// Checks sizes, the scale range and that probabilities lie in `[0, 1]`.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |field, value: String, reason| {
            Err(DataError::InvalidConfig {
                field,
                value,
                reason,
            })
        };
        if self.size == 0 {
            return bad("view size", self.size.to_string(), "must be at least 1");
        }
        let (lo, hi) = self.scale;
        if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
            return bad(
                "view scale",
                format!("{:?}", self.scale),
                "must satisfy 0 < lo <= hi <= 1",
            );
        }
        let probs = [
            ("flip_p", self.flip_p),
            ("jitter_p", self.jitter_p),
            ("gray_p", self.gray_p),
            ("blur_p", self.blur_p),
            ("solarize_p", self.solarize_p),
        ];
        for (field, p) in probs {
            if !(0.0..=1.0).contains(&p) {
                return bad(field, p.to_string(), "must be a probability in [0, 1]");
            }
        }
        let (lo, hi) = self.blur_sigma;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return bad(
                "blur sigma",
                format!("{:?}", self.blur_sigma),
                "must satisfy 0 < lo <= hi",
            );
        }
        Ok(())
    }
}

/// DINO's asymmetric views: global 1 (blur p 1.0), global 2 (blur p 0.1, solarize p 0.2),
/// then `local_count` local crops (blur p 0.5). Globals use scale (0.4, 1), locals
/// (0.05, 0.4); all use flip p 0.5, jitter p 0.8 and grayscale p 0.2. Blur sigmas
/// are [`scaled_blur`] from 224 px (globals) and 96 px (locals).
/// The locals are omitted when `local_count` is 0.
pub fn dino_default(global_size: usize, local_count: usize, local_size: usize) -> Vec<ViewSpec> {
    let base = ViewSpec {
        count: 1,
        size: global_size,
        scale: (0.4, 1.0),
        flip_p: 0.5,
        jitter_p: 0.8,
        gray_p: 0.2,
        blur_p: 1.0,
        blur_sigma: scaled_blur(global_size, 224),
        solarize_p: 0.0,
    };
    let mut specs = vec![
        base.clone(),
        ViewSpec {
            blur_p: 0.1,
            solarize_p: 0.2,
            ..base.clone()
        },
    ];
    if local_count > 0 {
        specs.push(ViewSpec {
            count: local_count,
            size: local_size,
            scale: (0.05, 0.4),
            blur_p: 0.5,
            blur_sigma: scaled_blur(local_size, 96),
            ..base
        });
    }
    specs
}

/// Renders the views of `specs` in order (spec 0's `count` views first), each
/// RandomResizedCrop (bicubic) → flip → jitter → grayscale → blur → solarize →
/// normalise with `stats`. Channel-aware: 3-channel RGB images get torchvision's
/// colour ops; other images (multi-band SAR/optical stacks) get DINO-MM's band-wise
/// ones ([`photometric_bands`]) and per-band normalisation.
pub fn make_views<R: Rng + ?Sized>(
    img: &Image,
    specs: &[ViewSpec],
    stats: &ChannelStats,
    rng: &mut R,
) -> Vec<Image> {
    let rgb = img.channels == 3;
    let total = specs.iter().map(|s| s.count).sum();
    let mut out = Vec::with_capacity(total);
    for spec in specs {
        for _ in 0..spec.count {
            let mut v = random_resized_crop(img, spec.size, spec.scale, CROP_RATIO, rng);
            if rng.random::<f32>() < spec.flip_p {
                v = hflip(&v);
            }
            v = if rgb {
                photometric(v, spec, rng)
            } else {
                photometric_bands(v, spec, rng)
            };
            out.push(normalize(&v, &stats.mean, &stats.std));
        }
    }
    out
}

/// DINO's colour pipeline on an RGB view: jitter, grayscale, blur, solarize.
fn photometric<R: Rng + ?Sized>(mut v: Image, spec: &ViewSpec, rng: &mut R) -> Image {
    if rng.random::<f32>() < spec.jitter_p {
        v = color_jitter(&v, 0.4, 0.4, 0.2, 0.1, rng);
    }
    if rng.random::<f32>() < spec.gray_p {
        v = grayscale(&v);
    }
    blur_and_solarize(v, spec, rng)
}

/// DINO-MM's pipeline on a multi-band view (`rs_transforms.py`): band-wise
/// brightness then contrast (factors in `[0.6, 1.4]`, together with the jitter
/// probability), the band mean as grey, then blur and solarize as for RGB. The
/// official ops cast to uint8 without clipping, so values past 255 wrap; these clamp.
fn photometric_bands<R: Rng + ?Sized>(mut v: Image, spec: &ViewSpec, rng: &mut R) -> Image {
    if rng.random::<f32>() < spec.jitter_p {
        v = scale_bands(&v, uniform(rng, 0.6, 1.4));
        v = contrast_bands(&v, uniform(rng, 0.6, 1.4));
    }
    if rng.random::<f32>() < spec.gray_p {
        v = mean_gray(&v);
    }
    blur_and_solarize(v, spec, rng)
}

/// Gaussian blur and solarization at 0.5, each with its probability in `spec`.
fn blur_and_solarize<R: Rng + ?Sized>(mut v: Image, spec: &ViewSpec, rng: &mut R) -> Image {
    if rng.random::<f32>() < spec.blur_p {
        let sigma = uniform(rng, spec.blur_sigma.0, spec.blur_sigma.1);
        v = gaussian_blur(&v, sigma);
    }
    if rng.random::<f32>() < spec.solarize_p {
        v = solarize(&v, 0.5);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn ramp(size: usize) -> Image {
        let plane = size * size;
        let data = (0..3 * plane)
            .map(|i| (i % plane) as f32 / plane as f32)
            .collect();
        Image::new(3, size, size, data).unwrap()
    }

    #[test]
    fn dino_default_matches_the_paper() {
        let specs = dino_default(224, 8, 96);
        assert_eq!(specs.len(), 3);
        assert_eq!((specs[0].blur_p, specs[0].solarize_p), (1.0, 0.0));
        assert_eq!((specs[1].blur_p, specs[1].solarize_p), (0.1, 0.2));
        assert_eq!(
            (specs[2].count, specs[2].size, specs[2].blur_p),
            (8, 96, 0.5)
        );
        assert_eq!(specs[2].scale, (0.05, 0.4));
        assert!(specs.iter().all(|s| s.validate().is_ok()));
        assert_eq!(dino_default(32, 0, 16).len(), 2);
    }

    #[test]
    fn views_come_in_spec_order_and_normalised() {
        let img = ramp(40);
        let specs = dino_default(24, 3, 12);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let views = make_views(&img, &specs, &ChannelStats::imagenet(), &mut rng);
        let sizes: Vec<usize> = views.iter().map(|v| v.height).collect();
        assert_eq!(sizes, vec![24, 24, 12, 12, 12]);
        let lo = (0.0 - 0.485) / 0.229 - 1e-4;
        let hi = (1.0 - 0.406) / 0.225 + 1e-4;
        for v in &views {
            assert_eq!((v.channels, v.width), (3, v.height));
            assert!(v.data.iter().all(|x| (lo..=hi).contains(x)));
        }
        let mut again = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(
            views,
            make_views(&img, &specs, &ChannelStats::imagenet(), &mut again)
        );
    }

    #[test]
    fn multi_band_views_get_geometric_ops_and_per_band_normalisation() {
        // Five bands, each a constant: crops and flips keep every band constant, so
        // after normalisation band c is exactly (value - mean) / std.
        let values = [0.1f32, 0.3, 0.5, 0.7, 0.9];
        let plane = 16 * 16;
        let data = values.iter().flat_map(|&v| vec![v; plane]).collect();
        let img = Image::new(5, 16, 16, data).unwrap();
        let stats = ChannelStats {
            mean: vec![0.1, 0.2, 0.3, 0.4, 0.5],
            std: vec![0.5; 5],
        };
        let specs: Vec<ViewSpec> = dino_default(8, 2, 4)
            .into_iter()
            .map(|s| ViewSpec {
                jitter_p: 0.0,
                gray_p: 0.0,
                blur_p: 0.0,
                solarize_p: 0.0,
                ..s
            })
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let views = make_views(&img, &specs, &stats, &mut rng);
        assert_eq!(views.len(), 4);
        for v in &views {
            assert_eq!(v.channels, 5);
            for (c, band) in v.data.chunks_exact(v.plane()).enumerate() {
                let want = (values[c] - stats.mean[c]) / stats.std[c];
                assert!(band.iter().all(|x| (x - want).abs() < 1e-5), "band {c}");
            }
        }
    }

    #[test]
    fn multi_band_views_get_dino_mms_band_wise_photometric_ops() {
        // Constant bands: grey makes every band the band mean (0.5); with jitter, a
        // brightness factor in [0.6, 1.4] scales it (contrast keeps a constant band)
        // and blur keeps it; solarization at 0.5 maps v >= 0.5 to 1 - v.
        let values = [0.1f32, 0.3, 0.5, 0.7, 0.9];
        let plane = 8 * 8;
        let data = values.iter().flat_map(|&v| vec![v; plane]).collect();
        let img = Image::new(5, 8, 8, data).unwrap();
        let identity = ChannelStats {
            mean: vec![0.0],
            std: vec![1.0],
        };
        let spec = |jitter_p: f32, solarize_p: f32| ViewSpec {
            count: 1,
            size: 8,
            scale: (1.0, 1.0),
            flip_p: 0.0,
            jitter_p,
            gray_p: 1.0,
            blur_p: 1.0,
            blur_sigma: (0.5, 1.0),
            solarize_p,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let grey = &make_views(&img, &[spec(0.0, 0.0)], &identity, &mut rng)[0];
        assert!(
            grey.data.iter().all(|x| (x - 0.5).abs() < 1e-5),
            "{:?}",
            &grey.data[..4]
        );
        let mut seen = Vec::new();
        for _ in 0..20 {
            let v = &make_views(&img, &[spec(1.0, 0.0)], &identity, &mut rng)[0];
            let first = v.data[0];
            assert!(
                v.data.iter().all(|x| (x - first).abs() < 1e-5),
                "one value everywhere"
            );
            assert!(
                (0.3 - 1e-5..=0.7 + 1e-5).contains(&first),
                "0.5 x [0.6, 1.4]: {first}"
            );
            seen.push(first);
        }
        assert!(
            seen.iter().any(|x| (x - seen[0]).abs() > 1e-3),
            "factors vary"
        );
        let solar = &make_views(&img, &[spec(0.0, 1.0)], &identity, &mut rng)[0];
        assert!(solar.data.iter().all(|x| (x - 0.5).abs() < 1e-5), "1 - 0.5");
    }

    #[test]
    fn validate_rejects_bad_probabilities() {
        let spec = ViewSpec {
            gray_p: 1.5,
            ..dino_default(8, 0, 8)[0].clone()
        };
        let err = spec.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid gray_p '1.5': must be a probability in [0, 1]"
        );
        assert!(Image::new(3, 2, 2, vec![0.0; 11]).is_err());
    }
}
