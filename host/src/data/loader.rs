//! Background batch loader: worker threads render, augment and batch samples, and the
//! consumer receives the batches in order through bounded channels.
//!
//! Determinism: an epoch visits a permutation of the dataset fixed by `(seed, epoch)`,
//! and every sample is augmented with a RNG seeded from `(seed, epoch, sample index)`
//! only. Batch `b` is built by worker `b % workers`, so the batches are bit-identical
//! whatever the number of workers, and resuming at `start_batch` reproduces the rest of
//! the epoch exactly.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::augment::normalize;
use super::image_folder::eval_transform;
use super::stats::ChannelStats;
use super::views::{Image, ViewSpec, make_views};

/// Errors from datasets, image files and the loader.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    // ---- files ----
    /// A file or directory could not be read.
    #[error("cannot read '{path}': {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// An image file exists but does not decode.
    #[error("corrupt image '{path}': {reason}")]
    Corrupt {
        /// The image file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// A directory holds no png/jpg/jpeg images.
    #[error("no png/jpg/jpeg images in '{dir}'")]
    NoImages {
        /// The directory searched.
        dir: PathBuf,
    },

    /// A file could not be written.
    #[error("cannot write '{path}': {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A dataset without samples where some are needed.
    #[error("the dataset is empty")]
    Empty,

    // ---- values ----
    /// A configuration value is out of range.
    #[error("invalid {field} '{value}': {reason}")]
    InvalidConfig {
        /// The field name.
        field: &'static str,
        /// The bad value, as text.
        value: String,
        /// What the value must be.
        reason: &'static str,
    },
    /// A sample index past the end of the dataset.
    #[error("sample index '{index}' out of range for a dataset of {len} samples")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The dataset length.
        len: usize,
    },
    /// A buffer whose length does not match its shape.
    #[error("image buffer has {got} values, shape {channels}x{height}x{width} needs {expected}")]
    BufferSize {
        /// Channels.
        channels: usize,
        /// Height.
        height: usize,
        /// Width.
        width: usize,
        /// `channels * height * width`.
        expected: usize,
        /// The actual length.
        got: usize,
    },
    /// Samples of one batch produced views of different shapes.
    #[error(
        "view {view} of sample '{index}' has shape {got:?}, the batch started with {expected:?}"
    )]
    ViewShape {
        /// The view position.
        view: usize,
        /// The dataset index of the offending sample.
        index: usize,
        /// `[C, H, W]` of the first sample's view.
        expected: [usize; 3],
        /// `[C, H, W]` of this sample's view.
        got: [usize; 3],
    },

    // ---- loader ----
    /// A worker thread could not be started.
    #[error("cannot start loader worker: {source}")]
    Spawn {
        /// The OS error.
        source: std::io::Error,
    },
    /// A worker ended before delivering a batch (it panicked).
    #[error("loader worker stopped before batch '{batch}' (it panicked; see the log above)")]
    WorkerStopped {
        /// The batch that never came.
        batch: usize,
    },
}

/// One dataset item: an image in `[0, 1]`, its class, and an optional object mask.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The image (CHW, values in `[0, 1]`).
    pub image: Image,
    /// The class index.
    pub label: usize,
    /// `height * width` bytes, 1 = object pixel; empty when the dataset has no masks.
    pub mask: Vec<u8>,
    /// Multi-label targets: the classes present, ascending; empty for single-label data.
    pub targets: Vec<u32>,
}

/// A random-access dataset that any worker thread can read.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// The sample at `index` (`index < len()`).
    fn get(&self, index: usize) -> Result<Sample, DataError>;
    /// True when the dataset has no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of classes, or 0 when unknown.
    fn num_classes(&self) -> usize {
        0
    }
}

/// Loader settings (RON: `(batch_size: 64, workers: 2, ...)`, all fields optional).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Worker threads (at least 1).
    pub workers: usize,
    /// Batches buffered ahead of the consumer, over all workers (at least 1).
    pub prefetch: usize,
    /// Seed for the epoch permutation and the augmentations.
    pub seed: u64,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Visit a seeded permutation (true) or the dataset order (false, for evaluation).
    pub shuffle: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            workers: 2,
            prefetch: 4,
            seed: 0,
            drop_last: true,
            shuffle: true,
        }
    }
}

/// What the loader does to each sample.
#[derive(Clone, Debug, PartialEq)]
pub enum Transform {
    /// Random multi-crop views ([`make_views`]), normalised.
    Views {
        /// The view specs, in output order.
        specs: Vec<ViewSpec>,
        /// Per-channel normalisation.
        stats: ChannelStats,
    },
    /// One deterministic view ([`eval_transform`]), normalised.
    Eval {
        /// Output side in pixels.
        size: usize,
        /// Per-channel normalisation.
        stats: ChannelStats,
    },
}

impl Transform {
    fn apply(&self, image: &Image, rng: &mut ChaCha8Rng) -> Vec<Image> {
        match self {
            Self::Views { specs, stats } => make_views(image, specs, stats, rng),
            Self::Eval { size, stats } => {
                vec![normalize(
                    &eval_transform(image, *size),
                    &stats.mean,
                    &stats.std,
                )]
            }
        }
    }
}

/// One view position of a batch: a `(B, C, H, W)` row-major buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewBatch {
    /// `[B, C, H, W]`.
    pub shape: [usize; 4],
    /// `B * C * H * W` values.
    pub data: Vec<f32>,
}

impl ViewBatch {
    /// Copies the view into a candle tensor of shape `(B, C, H, W)`.
    pub fn to_tensor(
        &self,
        device: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        candle_core::Tensor::from_slice(&self.data, self.shape.as_slice(), device)
    }
}

/// A batch: one [`ViewBatch`] per view position, plus labels and dataset indices.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Position of this batch in the epoch.
    pub batch: usize,
    /// One entry per view, in view-spec order.
    pub views: Vec<ViewBatch>,
    /// Class of each sample.
    pub labels: Vec<u32>,
    /// Dataset index of each sample.
    pub indices: Vec<usize>,
}

/// Number of batches an epoch of `len` samples gives.
pub fn batches_per_epoch(len: usize, batch_size: usize, drop_last: bool) -> usize {
    if batch_size == 0 {
        0
    } else if drop_last {
        len / batch_size
    } else {
        len.div_ceil(batch_size)
    }
}

/// Mixes a list of integers into one well-spread 64-bit seed (splitmix64 chain).
pub fn mix_seed(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x243F_6A88_85A3_08D3, |h, &p| splitmix64(h ^ splitmix64(p)))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const TAG_PERMUTATION: u64 = 0x7065_726d;
const TAG_AUGMENT: u64 = 0x6175_676d;

/// The order in which an epoch visits the dataset: a Fisher-Yates permutation seeded by
/// `(seed, epoch)` when `shuffle`, else `0..len`.
pub fn epoch_order(len: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[seed, epoch, TAG_PERMUTATION]));
        for i in (1..len).rev() {
            // Multiply-shift: an index in 0..=i from 64 random bits (bias < 2^-40 here).
            let j = ((u128::from(rng.next_u64()) * (i as u128 + 1)) >> 64) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// The augmentation RNG of one sample in one epoch.
pub fn sample_rng(seed: u64, epoch: u64, index: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix_seed(&[seed, epoch, index as u64, TAG_AUGMENT]))
}

struct Shared {
    dataset: Arc<dyn Dataset>,
    transform: Transform,
    order: Vec<usize>,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    stop: AtomicBool,
}

impl Shared {
    /// Builds batch `b`; `None` when asked to stop midway.
    fn build(&self, b: usize) -> Option<Result<Batch, DataError>> {
        let start = b * self.batch_size;
        let end = (start + self.batch_size).min(self.order.len());
        let indices = self.order[start..end].to_vec();
        let mut views: Vec<ViewBatch> = Vec::new();
        let mut labels = Vec::with_capacity(indices.len());
        for &index in &indices {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            let sample = match self.dataset.get(index) {
                Ok(s) => s,
                Err(e) => return Some(Err(e)),
            };
            let mut rng = sample_rng(self.seed, self.epoch, index);
            let out = self.transform.apply(&sample.image, &mut rng);
            if views.is_empty() {
                views = out
                    .iter()
                    .map(|v| ViewBatch {
                        shape: [0, v.channels, v.height, v.width],
                        data: Vec::with_capacity(indices.len() * v.data.len()),
                    })
                    .collect();
            }
            for (view, (vb, img)) in views.iter_mut().zip(&out).enumerate() {
                let got = [img.channels, img.height, img.width];
                let expected = [vb.shape[1], vb.shape[2], vb.shape[3]];
                if got != expected {
                    return Some(Err(DataError::ViewShape {
                        view,
                        index,
                        expected,
                        got,
                    }));
                }
                vb.shape[0] += 1;
                vb.data.extend_from_slice(&img.data);
            }
            labels.push(sample.label as u32);
        }
        Some(Ok(Batch {
            batch: b,
            views,
            labels,
            indices,
        }))
    }
}

/// A running background loader for one epoch; iterate it for the batches in order.
///
/// Dropping it stops the workers and joins them, also mid-epoch.
pub struct Loader {
    receivers: Vec<Receiver<Result<Batch, DataError>>>,
    handles: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    start_batch: usize,
    next_batch: usize,
    batches: usize,
    broken: bool,
}

impl Loader {
    /// Starts the workers for `epoch`, beginning at batch `start_batch` (0 for a fresh
    /// epoch; a later value resumes mid-epoch).
    pub fn start(
        dataset: Arc<dyn Dataset>,
        config: &LoaderConfig,
        transform: Transform,
        epoch: u64,
        start_batch: usize,
    ) -> Result<Self, DataError> {
        check_at_least_one("batch_size", config.batch_size)?;
        check_at_least_one("workers", config.workers)?;
        check_at_least_one("prefetch", config.prefetch)?;
        if let Transform::Views { specs, .. } = &transform {
            for spec in specs {
                spec.validate()?;
            }
        }
        let batches = batches_per_epoch(dataset.len(), config.batch_size, config.drop_last);
        let order = epoch_order(dataset.len(), config.seed, epoch, config.shuffle);
        let shared = Arc::new(Shared {
            dataset,
            transform,
            order,
            batch_size: config.batch_size,
            seed: config.seed,
            epoch,
            stop: AtomicBool::new(false),
        });
        let remaining = batches.saturating_sub(start_batch);
        let workers = config.workers.min(remaining).max(1);
        let depth = (config.prefetch / workers).max(1);
        let mut loader = Self {
            receivers: Vec::with_capacity(workers),
            handles: Vec::with_capacity(workers),
            shared: Arc::clone(&shared),
            start_batch,
            next_batch: start_batch,
            batches,
            broken: false,
        };
        if remaining == 0 {
            return Ok(loader);
        }
        for w in 0..workers {
            let (tx, rx) = sync_channel(depth);
            let shared = Arc::clone(&shared);
            let first = start_batch + w;
            let handle = std::thread::Builder::new()
                .name(format!("patchwork-loader-{w}"))
                .spawn(move || worker(&shared, first, workers, batches, &tx))
                .map_err(|source| DataError::Spawn { source })?;
            loader.receivers.push(rx);
            loader.handles.push(handle);
        }
        Ok(loader)
    }

    /// Total batches in this epoch (including any skipped by `start_batch`).
    pub fn batches(&self) -> usize {
        self.batches
    }

    /// The batch position the next call to `next` delivers.
    pub fn position(&self) -> usize {
        self.next_batch
    }
}

fn check_at_least_one(field: &'static str, value: usize) -> Result<(), DataError> {
    if value == 0 {
        return Err(DataError::InvalidConfig {
            field,
            value: value.to_string(),
            reason: "must be at least 1",
        });
    }
    Ok(())
}

fn worker(
    shared: &Shared,
    first: usize,
    stride: usize,
    batches: usize,
    tx: &SyncSender<Result<Batch, DataError>>,
) {
    let mut b = first;
    while b < batches {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let Some(result) = shared.build(b) else {
            return;
        };
        if tx.send(result).is_err() {
            return;
        }
        b += stride;
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.broken || self.next_batch >= self.batches {
            return None;
        }
        let w = (self.next_batch - self.start_batch) % self.receivers.len().max(1);
        let batch = self.next_batch;
        match self.receivers.get(w).map(Receiver::recv) {
            Some(Ok(result)) => {
                self.next_batch += 1;
                Some(result)
            }
            _ => {
                self.broken = true;
                Some(Err(DataError::WorkerStopped { batch }))
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Disconnect first: a worker blocked in `send` then returns at once.
        self.receivers.clear();
        for handle in self.handles.drain(..) {
            // A panicked worker was already reported as `WorkerStopped`.
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shapes::{Shapes, ShapesConfig, Split};
    use crate::data::stats::ChannelStats;
    use crate::data::views::dino_default;

    fn shapes(images: usize) -> Arc<dyn Dataset> {
        let cfg = ShapesConfig {
            images,
            val_images: 8,
            size: 24,
            ..ShapesConfig::default()
        };
        Arc::new(
            Shapes::new(cfg)
                .expect("config should be valid")
                .split(Split::Train),
        )
    }

    fn views() -> Transform {
        Transform::Views {
            specs: dino_default(16, 2, 8),
            stats: ChannelStats::imagenet(),
        }
    }

    fn config(workers: usize, batch_size: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            workers,
            prefetch: 2,
            seed: 7,
            ..LoaderConfig::default()
        }
    }

    fn collect(loader: Loader) -> Vec<Batch> {
        loader.map(|b| b.expect("batch should build")).collect()
    }

    #[test]
    fn batches_identical_for_any_worker_count() {
        let ds = shapes(40);
        let one = collect(Loader::start(ds.clone(), &config(1, 6), views(), 3, 0).unwrap());
        let two = collect(Loader::start(ds.clone(), &config(2, 6), views(), 3, 0).unwrap());
        let three = collect(Loader::start(ds, &config(3, 6), views(), 3, 0).unwrap());
        assert_eq!(one.len(), 6, "40 / 6 with drop_last");
        assert_eq!(one, two);
        assert_eq!(one, three);
        let first = &one[0];
        assert_eq!(first.views.len(), 4);
        assert_eq!(first.views[0].shape, [6, 3, 16, 16]);
        assert_eq!(first.views[3].shape, [6, 3, 8, 8]);
        assert_eq!(first.views[3].data.len(), 6 * 3 * 8 * 8);
        assert_eq!(first.labels.len(), 6);
        for (&i, &l) in first.indices.iter().zip(&first.labels) {
            assert_eq!(l as usize, ds_label(i));
        }
    }

    #[test]
    fn every_procedural_dataset_batches_identically_across_worker_counts() {
        use crate::data::domains::{Domain, Domains, DomainsConfig};
        use crate::data::sar_optical::{SarOptical, SarOpticalConfig};
        use crate::data::scenes::{Scenes, ScenesConfig};
        let (images, val_images, size) = (20, 4, 24);
        let sets: Vec<(Arc<dyn Dataset>, usize)> = vec![
            (
                Arc::new(
                    Scenes::new(ScenesConfig {
                        images,
                        val_images,
                        size,
                        ..ScenesConfig::default()
                    })
                    .unwrap()
                    .split(Split::Train),
                ),
                3,
            ),
            (
                Arc::new(
                    Domains::new(DomainsConfig {
                        images,
                        val_images,
                        size,
                        ..DomainsConfig::default()
                    })
                    .unwrap()
                    .split(Domain::Target, Split::Train),
                ),
                3,
            ),
            (
                Arc::new(
                    SarOptical::new(SarOpticalConfig {
                        images,
                        val_images,
                        size,
                        ..SarOpticalConfig::default()
                    })
                    .unwrap()
                    .split(Split::Train),
                ),
                5,
            ),
        ];
        for (ds, channels) in sets {
            let stats = crate::data::stats::channel_stats(ds.as_ref(), 64).unwrap();
            let t = || Transform::Views {
                specs: dino_default(16, 2, 8),
                stats: stats.clone(),
            };
            let one = collect(Loader::start(ds.clone(), &config(1, 4), t(), 2, 0).unwrap());
            let two = collect(Loader::start(ds.clone(), &config(2, 4), t(), 2, 0).unwrap());
            assert_eq!(one.len(), 5);
            assert_eq!(one, two, "{channels}-channel data");
            assert_eq!(one[0].views[0].shape, [4, channels, 16, 16]);
            let again = collect(Loader::start(ds, &config(2, 4), t(), 2, 0).unwrap());
            assert_eq!(one, again, "same seed, same batches across runs");
        }
    }

    fn ds_label(index: usize) -> usize {
        shapes(40).get(index).unwrap().label
    }

    #[test]
    fn epochs_visit_different_permutations() {
        let ds = shapes(30);
        let order = |epoch| -> Vec<usize> {
            collect(Loader::start(ds.clone(), &config(2, 5), views(), epoch, 0).unwrap())
                .into_iter()
                .flat_map(|b| b.indices)
                .collect()
        };
        let (a, b) = (order(0), order(1));
        assert_ne!(a, b);
        for o in [&a, &b] {
            let mut sorted = o.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..30).collect::<Vec<_>>(), "each index once");
        }
        assert_eq!(a, order(0), "same epoch, same order");
    }

    #[test]
    fn start_batch_resumes_the_same_epoch() {
        let ds = shapes(24);
        let full = collect(Loader::start(ds.clone(), &config(2, 4), views(), 1, 0).unwrap());
        let resumed = collect(Loader::start(ds, &config(3, 4), views(), 1, 2).unwrap());
        assert_eq!(resumed.len(), 4);
        assert_eq!(&full[2..], &resumed[..]);
        assert_eq!(resumed[0].batch, 2);
    }

    #[test]
    fn drop_last_false_keeps_the_tail_and_eval_is_ordered() {
        let ds = shapes(10);
        let cfg = LoaderConfig {
            drop_last: false,
            shuffle: false,
            ..config(2, 4)
        };
        let eval = Transform::Eval {
            size: 16,
            stats: ChannelStats::imagenet(),
        };
        let batches = collect(Loader::start(ds, &cfg, eval, 0, 0).unwrap());
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[2].indices, vec![8, 9]);
        assert_eq!(batches[2].views[0].shape, [2, 3, 16, 16]);
        let all: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn dropping_mid_epoch_stops_workers() {
        let ds = shapes(400);
        let mut loader = Loader::start(ds, &config(2, 4), views(), 0, 0).unwrap();
        let first = loader.next().expect("a batch").expect("batch should build");
        assert_eq!(first.batch, 0);
        drop(loader); // must join the workers without hanging
    }

    struct Failing;
    impl Dataset for Failing {
        fn len(&self) -> usize {
            8
        }
        fn get(&self, index: usize) -> Result<Sample, DataError> {
            if index == 5 {
                return Err(DataError::IndexOutOfRange { index, len: 5 });
            }
            Ok(Sample {
                image: Image::zeros(3, 8, 8),
                label: 0,
                mask: Vec::new(),
                targets: Vec::new(),
            })
        }
    }

    #[test]
    fn dataset_errors_reach_the_consumer() {
        let cfg = LoaderConfig {
            shuffle: false,
            ..config(2, 2)
        };
        let eval = Transform::Eval {
            size: 8,
            stats: ChannelStats {
                mean: vec![0.5; 3],
                std: vec![0.5; 3],
            },
        };
        let results: Vec<_> = Loader::start(Arc::new(Failing), &cfg, eval, 0, 0)
            .unwrap()
            .collect();
        assert_eq!(results.len(), 4);
        assert!(matches!(
            results[2],
            Err(DataError::IndexOutOfRange { index: 5, .. })
        ));
        assert!(results[3].is_ok());
    }

    #[test]
    fn invalid_config_is_rejected() {
        let err = Loader::start(shapes(8), &config(0, 2), views(), 0, 0)
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "invalid workers '0': must be at least 1");
    }

    #[test]
    fn mix_seed_is_order_sensitive() {
        assert_ne!(mix_seed(&[1, 2]), mix_seed(&[2, 1]));
        assert_eq!(mix_seed(&[1, 2]), mix_seed(&[1, 2]));
        assert_eq!(batches_per_epoch(10, 4, true), 2);
        assert_eq!(batches_per_epoch(10, 4, false), 3);
    }

    #[test]
    fn config_parses_from_ron_with_defaults() {
        let cfg: LoaderConfig = ron::from_str("(batch_size: 32, seed: 3)").unwrap();
        assert_eq!(
            cfg,
            LoaderConfig {
                batch_size: 32,
                seed: 3,
                ..LoaderConfig::default()
            }
        );
        assert!(ron::from_str::<LoaderConfig>("(batch: 3)").is_err());
    }
}
