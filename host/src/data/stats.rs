//! Per-channel mean and standard deviation of a dataset, computed once and cached.
//!
//! The statistics accumulate in `f64` with Chan et al.'s pairwise merge (each image's
//! mean and sum of squared deviations, merged into the running totals), so large
//! datasets with large offsets keep their precision. The standard deviation is the
//! population one (divided by the pixel count).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::loader::{DataError, Dataset};

/// Per-channel statistics of a dataset's images, in `[0, 1]` pixel units.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelStats {
    /// Mean of each channel.
    pub mean: Vec<f32>,
    /// Population standard deviation of each channel.
    pub std: Vec<f32>,
}

/// ImageNet channel means (RGB), as used by DINO and MAE.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl ChannelStats {
    /// The ImageNet RGB statistics.
    pub fn imagenet() -> Self {
        Self {
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
        }
    }

    /// Checks that there is one finite mean and one finite positive std per channel.
    pub fn validate(&self, channels: usize) -> Result<(), DataError> {
        if self.mean.len() != channels || self.std.len() != channels {
            return Err(DataError::InvalidConfig {
                field: "normalize",
                value: format!("{} means and {} stds", self.mean.len(), self.std.len()),
                reason: "needs one mean and one std per image channel",
            });
        }
        if let Some(bad) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(DataError::InvalidConfig {
                field: "normalize.std",
                value: bad.to_string(),
                reason: "every std must be finite and positive (a constant channel has std 0)",
            });
        }
        if let Some(bad) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(DataError::InvalidConfig {
                field: "normalize.mean",
                value: bad.to_string(),
                reason: "every mean must be finite",
            });
        }
        Ok(())
    }
}

/// How a data source's images are normalised (`normalize:` in the workspace).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Normalize {
    /// ImageNet statistics for 3-channel images; computed statistics otherwise.
    #[default]
    Auto,
    /// ImageNet RGB statistics (3-channel images only).
    Imagenet,
    /// Per-channel statistics of the training split, computed once and cached.
    Computed,
    /// Statistics given in the workspace: `Given((mean: [..], std: [..]))`.
    Given(ChannelStats),
}

/// Images the statistics are computed from when [`Normalize::Computed`].
pub const STATS_SAMPLES: usize = 2048;

/// The statistics `normalize` asks for, for images of `channels` channels: computed
/// from `train` (cached at `cache` under `fingerprint`) when needed, then validated.
pub fn resolve(
    normalize: &Normalize,
    channels: usize,
    train: &dyn Dataset,
    cache: Option<(&Path, &str)>,
) -> Result<ChannelStats, DataError> {
    let stats = match normalize {
        Normalize::Imagenet if channels != 3 => {
            return Err(DataError::InvalidConfig {
                field: "normalize",
                value: format!("Imagenet for {channels}-channel images"),
                reason: "ImageNet statistics are for RGB images; use Computed or Given",
            });
        }
        Normalize::Auto if channels == 3 => ChannelStats::imagenet(),
        Normalize::Imagenet => ChannelStats::imagenet(),
        Normalize::Auto | Normalize::Computed => match cache {
            Some((path, fingerprint)) => cached_stats(train, path, fingerprint, STATS_SAMPLES)?,
            None => channel_stats(train, STATS_SAMPLES)?,
        },
        Normalize::Given(stats) => stats.clone(),
    };
    stats.validate(channels)?;
    Ok(stats)
}

/// The cache file: the statistics and the fingerprint of the data they describe.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    fingerprint: String,
    mean: Vec<f32>,
    std: Vec<f32>,
}

/// Running count, mean and sum of squared deviations of one channel.
#[derive(Clone, Copy, Default)]
struct Moments {
    n: f64,
    mean: f64,
    m2: f64,
}

impl Moments {
    fn of(values: &[f32]) -> Self {
        let n = values.len() as f64;
        if values.is_empty() {
            return Self::default();
        }
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let m2 = values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum();
        Self { n, mean, m2 }
    }

    fn merge(self, other: Self) -> Self {
        let n = self.n + other.n;
        if n == 0.0 {
            return self;
        }
        let delta = other.mean - self.mean;
        Self {
            n,
            mean: self.mean + delta * other.n / n,
            m2: self.m2 + other.m2 + delta * delta * self.n * other.n / n,
        }
    }
}

/// The indices visited: all of `0..len`, or `max_samples` evenly strided ones.
fn strided(len: usize, max_samples: usize) -> impl Iterator<Item = usize> {
    let k = len.min(max_samples);
    (0..k).map(move |i| (i as u128 * len as u128 / k as u128) as usize)
}

/// Mean and standard deviation of every channel over at most `max_samples` images,
/// evenly strided through the dataset. Every image must have the same channel count.
pub fn channel_stats(ds: &dyn Dataset, max_samples: usize) -> Result<ChannelStats, DataError> {
    if max_samples == 0 {
        return Err(DataError::InvalidConfig {
            field: "max_samples",
            value: "0".into(),
            reason: "must be at least 1",
        });
    }
    if ds.is_empty() {
        return Err(DataError::Empty);
    }
    let mut first: Option<(usize, [usize; 3])> = None;
    let mut moments: Vec<Moments> = Vec::new();
    for index in strided(ds.len(), max_samples) {
        let img = ds.get(index)?.image;
        let shape = [img.channels, img.height, img.width];
        match first {
            None => {
                first = Some((index, shape));
                moments = vec![Moments::default(); img.channels];
            }
            Some((_, expected)) if expected[0] != img.channels => {
                return Err(DataError::ViewShape {
                    view: 0,
                    index,
                    expected,
                    got: shape,
                });
            }
            Some(_) => {}
        }
        let plane = img.plane();
        for (c, m) in moments.iter_mut().enumerate() {
            *m = m.merge(Moments::of(&img.data[c * plane..(c + 1) * plane]));
        }
    }
    Ok(ChannelStats {
        mean: moments.iter().map(|m| m.mean as f32).collect(),
        std: moments
            .iter()
            .map(|m| {
                if m.n > 0.0 {
                    (m.m2 / m.n).sqrt() as f32
                } else {
                    0.0
                }
            })
            .collect(),
    })
}

/// The statistics stored at `cache_path` when its fingerprint is `fingerprint`;
/// otherwise computes them with [`channel_stats`] and writes the cache (write to a
/// temporary file, then rename). An unreadable or corrupt cache is recomputed; a cache
/// that cannot be written is logged and the statistics are returned anyway.
pub fn cached_stats(
    ds: &dyn Dataset,
    cache_path: &Path,
    fingerprint: &str,
    max_samples: usize,
) -> Result<ChannelStats, DataError> {
    if let Some(stats) = read_cache(cache_path, fingerprint) {
        return Ok(stats);
    }
    let stats = channel_stats(ds, max_samples)?;
    let file = CacheFile {
        fingerprint: fingerprint.to_owned(),
        mean: stats.mean.clone(),
        std: stats.std.clone(),
    };
    if let Err(e) = write_cache(cache_path, &file) {
        tracing::warn!("channel statistics not cached: {e}");
    }
    Ok(stats)
}

fn read_cache(path: &Path, fingerprint: &str) -> Option<ChannelStats> {
    let text = std::fs::read_to_string(path).ok()?;
    let file: CacheFile = serde_json::from_str(&text).ok()?;
    let valid = file.fingerprint == fingerprint
        && !file.mean.is_empty()
        && file.mean.len() == file.std.len()
        && file.mean.iter().chain(&file.std).all(|v| v.is_finite());
    valid.then_some(ChannelStats {
        mean: file.mean,
        std: file.std,
    })
}

fn write_cache(path: &Path, file: &CacheFile) -> Result<(), DataError> {
    let fail = |reason: String| DataError::Write {
        path: path.to_owned(),
        reason,
    };
    let json = serde_json::to_string_pretty(file).map_err(|e| fail(e.to_string()))?;
    crate::fsutil::write_atomic(path, json.as_bytes()).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::loader::Sample;
    use crate::data::views::Image;
    use std::path::PathBuf;

    /// Image `i` is constant per channel: channel `c` holds `values[i][c]`.
    struct Constant(Vec<Vec<f32>>);

    impl Dataset for Constant {
        fn len(&self) -> usize {
            self.0.len()
        }

        fn get(&self, index: usize) -> Result<Sample, DataError> {
            let v = &self.0[index];
            let data = v.iter().flat_map(|&x| [x; 4]).collect();
            Ok(Sample {
                image: Image::new(v.len(), 2, 2, data)?,
                label: 0,
                mask: Vec::new(),
                targets: Vec::new(),
            })
        }
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("patchwork-stats-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn two_images() -> Constant {
        // Channel 0: 0.25 and 0.75 -> mean 0.5, std 0.25. Channel 1: 1 and 1 -> 1, 0.
        Constant(vec![vec![0.25, 1.0], vec![0.75, 1.0]])
    }

    #[test]
    fn constant_channels_give_exact_mean_and_std() {
        let s = channel_stats(&two_images(), 100).unwrap();
        assert_eq!(s.mean, [0.5, 1.0]);
        assert_eq!(s.std, [0.25, 0.0]);
    }

    #[test]
    fn large_offsets_stay_precise() {
        let ds = Constant((0..1000).map(|i| vec![1000.0 + (i % 2) as f32]).collect());
        let s = channel_stats(&ds, usize::MAX).unwrap();
        assert_eq!(s.mean, [1000.5]);
        assert_eq!(s.std, [0.5]);
    }

    #[test]
    fn samples_are_evenly_strided() {
        assert_eq!(strided(10, 5).collect::<Vec<_>>(), [0, 2, 4, 6, 8]);
        assert_eq!(strided(3, 5).collect::<Vec<_>>(), [0, 1, 2]);
        // Images 0, 2, 4: channel 0 is 0, 2, 4 -> mean 2.
        let ds = Constant((0..6).map(|i| vec![i as f32]).collect());
        assert_eq!(channel_stats(&ds, 3).unwrap().mean, [2.0]);
    }

    #[test]
    fn empty_mismatched_and_zero_are_errors() {
        assert!(matches!(
            channel_stats(&Constant(vec![]), 10),
            Err(DataError::Empty)
        ));
        assert!(matches!(
            channel_stats(&two_images(), 0),
            Err(DataError::InvalidConfig { .. })
        ));
        let mixed = Constant(vec![vec![0.0, 0.0], vec![0.0]]);
        assert!(matches!(
            channel_stats(&mixed, 10),
            Err(DataError::ViewShape { index: 1, .. })
        ));
    }

    #[test]
    fn the_cache_is_reused_only_for_its_fingerprint() {
        let tmp = TempDir::new("cache");
        let path = tmp.0.join("sub").join("stats.json");
        let ds = two_images();
        let s = cached_stats(&ds, &path, "v1", 100).unwrap();
        assert_eq!(s.mean, [0.5, 1.0]);

        // Edit the cache by hand: the edited values come back for the same fingerprint.
        let edited = r#"{"fingerprint": "v1", "mean": [0.1, 0.2], "std": [0.3, 0.4]}"#;
        std::fs::write(&path, edited).unwrap();
        let s = cached_stats(&ds, &path, "v1", 100).unwrap();
        assert_eq!((s.mean, s.std), (vec![0.1, 0.2], vec![0.3, 0.4]));

        // Another fingerprint recomputes and rewrites.
        let s = cached_stats(&ds, &path, "v2", 100).unwrap();
        assert_eq!(s.mean, [0.5, 1.0]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"v2\""), "{text}");

        // A corrupt cache is recomputed, not an error.
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(
            cached_stats(&ds, &path, "v2", 100).unwrap().std,
            [0.25, 0.0]
        );
        let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "the temporary file is renamed away");
    }

    #[test]
    fn normalize_policies_resolve_and_validate() {
        let rgb = Constant(vec![vec![0.2, 0.4, 0.6], vec![0.4, 0.6, 0.8]]);
        let auto = resolve(&Normalize::Auto, 3, &rgb, None).unwrap();
        assert_eq!(auto, ChannelStats::imagenet());
        let computed = resolve(&Normalize::Computed, 3, &rgb, None).unwrap();
        assert!((computed.mean[0] - 0.3).abs() < 1e-6, "{computed:?}");
        assert!((computed.std[2] - 0.1).abs() < 1e-6, "{computed:?}");

        // Multi-band data: Auto computes, Imagenet is refused with the channel count.
        let bands = Constant(vec![vec![0.1, 0.5], vec![0.3, 0.9]]);
        let auto = resolve(&Normalize::Auto, 2, &bands, None).unwrap();
        assert_eq!(auto.mean.len(), 2);
        let err = resolve(&Normalize::Imagenet, 2, &bands, None).unwrap_err();
        assert!(err.to_string().contains("2-channel"), "{err}");

        // Given statistics must match the channels and have positive stds.
        let given: Normalize = ron::from_str("Given((mean: [0.5, 0.5], std: [0.2, 0.0]))").unwrap();
        let err = resolve(&given, 2, &bands, None).unwrap_err();
        assert!(err.to_string().contains("positive"), "{err}");
        let err = resolve(&given, 3, &rgb, None).unwrap_err();
        assert!(
            err.to_string().contains("one mean and one std per"),
            "{err}"
        );
        // A constant channel cannot be computed into a usable std either.
        let flat = Constant(vec![vec![0.5], vec![0.5]]);
        assert!(resolve(&Normalize::Computed, 1, &flat, None).is_err());
    }
}
