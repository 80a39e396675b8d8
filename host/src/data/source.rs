//! A workspace data source opened for a session: its train and validation splits,
//! its image geometry, its channel normalisation and its count of skipped corrupt
//! files.
//!
//! What each kind of source gives:
//! - procedural `Shapes`, `Scenes`, `SarOptical`: their train and validation splits;
//! - `Domains`: the labelled source domain's train split, and the target domain's
//!   validation split (so k-NN measures how well features transfer across styles);
//! - `Cifar`: the train batches and the test batch;
//! - `Arrays`, `ImageFolder`: a seeded split, or the folder's own `train`/`val`.

use std::path::Path;
use std::sync::Arc;

use super::arrays;
use super::cifar;
use super::corrupt::CorruptCount;
use super::domains::{Domain, Domains};
use super::image_folder;
use super::loader::{DataError, Dataset};
use super::procedural::{Procedural, SplitDataset};
use super::sar_optical::SarOptical;
use super::scenes::Scenes;
use super::shapes::{Shapes, Split};
use super::stats::{self, ChannelStats, Normalize};
use crate::workspace::schema::DataSource;

/// A data source opened for training and evaluation.
pub struct Data {
    /// The training split.
    pub train: Arc<dyn Dataset>,
    /// The validation split.
    pub val: Arc<dyn Dataset>,
    /// Number of classes (0 for unlabelled data).
    pub classes: usize,
    /// Image side the backbone sees.
    pub size: usize,
    /// Channels per image.
    pub channels: usize,
    /// The normalisation every view gets.
    pub stats: ChannelStats,
    /// Corrupt files or records skipped (`on_corrupt: Skip`).
    pub corrupt: CorruptCount,
}

/// A source's splits before its normalisation is resolved (what `patchwork check`
/// looks at).
pub struct Splits {
    /// The training split.
    pub train: Arc<dyn Dataset>,
    /// The validation split.
    pub val: Arc<dyn Dataset>,
    /// Number of classes (0 for unlabelled data).
    pub classes: usize,
    /// Image side the backbone sees.
    pub size: usize,
    /// The normalisation asked for.
    pub normalize: Normalize,
    /// Corrupt files or records skipped so far.
    pub corrupt: CorruptCount,
    /// Extra fingerprint text for the statistics cache (e.g. file modification times).
    fingerprint: String,
}

impl Splits {
    /// `"1024 train / 384 val images, 6 classes, 32 px, 3 channels"`.
    pub fn summary(&self) -> Result<String, DataError> {
        let channels = self.train.get(0)?.image.channels;
        let classes = match self.classes {
            0 => "unlabelled".to_owned(),
            n => format!("{n} classes"),
        };
        let mut text = format!(
            "{} train / {} val images, {classes}, {} px, {channels} channel{}",
            self.train.len(),
            self.val.len(),
            self.size,
            if channels == 1 { "" } else { "s" }
        );
        if !self.corrupt.is_empty() {
            text.push_str(&format!(", {}", self.corrupt));
        }
        Ok(text)
    }
}

/// Splits of two datasets with no files behind them (procedural data).
fn in_memory(
    train: impl Dataset + 'static,
    val: impl Dataset + 'static,
    classes: usize,
    size: usize,
    normalize: &Normalize,
) -> Splits {
    Splits {
        train: Arc::new(train),
        val: Arc::new(val),
        classes,
        size,
        normalize: normalize.clone(),
        corrupt: CorruptCount::new(),
        fingerprint: String::new(),
    }
}

/// The train and validation splits of a procedural generator.
fn procedural<P: Procedural + 'static>(source: P, size: usize, normalize: &Normalize) -> Splits {
    let classes = source.class_count();
    in_memory(
        SplitDataset::new(source.clone(), Split::Train),
        SplitDataset::new(source, Split::Val),
        classes,
        size,
        normalize,
    )
}

/// Modification time of `path` in seconds, for cache fingerprints (0 when unknown).
fn mtime(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Opens `source` (named `name` in its workspace) and resolves its normalisation.
/// Relative paths are taken from `base_dir`; statistics and file indexes are cached
/// under `cache_dir` when given.
pub fn open(
    name: &str,
    source: &DataSource,
    base_dir: &Path,
    cache_dir: Option<&Path>,
) -> Result<Data, DataError> {
    let splits = open_splits(source, base_dir, cache_dir)?;
    finish(name, source, splits, cache_dir)
}

/// Opens the splits of `source` without computing statistics.
pub fn open_splits(
    source: &DataSource,
    base_dir: &Path,
    cache_dir: Option<&Path>,
) -> Result<Splits, DataError> {
    Ok(match source {
        DataSource::Shapes(cfg) => procedural(Shapes::new(cfg.clone())?, cfg.size, &cfg.normalize),
        DataSource::Scenes(cfg) => procedural(Scenes::new(cfg.clone())?, cfg.size, &cfg.normalize),
        DataSource::SarOptical(cfg) => {
            procedural(SarOptical::new(cfg.clone())?, cfg.size, &cfg.normalize)
        }
        DataSource::Domains(cfg) => {
            let d = Domains::new(cfg.clone())?;
            let classes = d.classes();
            in_memory(
                d.split(Domain::Source, Split::Train),
                d.split(Domain::Target, Split::Val),
                classes,
                cfg.size,
                &cfg.normalize,
            )
        }
        DataSource::Cifar(cfg) => {
            let (train, test) = cifar::open(cfg, Some(base_dir))?;
            let corrupt = train.corrupt().clone(); // shared by both splits
            Splits {
                classes: train.num_classes(),
                train: Arc::new(train),
                val: Arc::new(test),
                size: cifar::SIDE,
                normalize: cfg.normalize.clone(),
                corrupt,
                fingerprint: format!("mtime {}", mtime(&base_dir.join(&cfg.root))),
            }
        }
        DataSource::Arrays(cfg) => {
            let (train, val) = arrays::open(cfg, Some(base_dir))?;
            let [_, h, w] = train.shape();
            let corrupt = train.corrupt().clone(); // shared by both splits
            Splits {
                classes: train.num_classes(),
                train: Arc::new(train),
                val: Arc::new(val),
                size: h.min(w),
                normalize: cfg.normalize.clone(),
                corrupt,
                fingerprint: format!("mtime {}", mtime(&base_dir.join(&cfg.path))),
            }
        }
        DataSource::ImageFolder(cfg) => {
            let folder = image_folder::open(cfg, base_dir, cache_dir)?;
            let root = base_dir.join(&cfg.root); // an absolute root replaces base_dir
            let files = folder.train.len() + folder.val.len();
            Splits {
                classes: folder.classes.len(),
                train: Arc::new(folder.train),
                val: Arc::new(folder.val),
                size: cfg.size,
                normalize: cfg.normalize.clone(),
                corrupt: folder.corrupt,
                fingerprint: format!("{files} files, root mtime {}", mtime(&root)),
            }
        }
    })
}

/// Checks the splits, reads the channel count and resolves the normalisation.
fn finish(
    name: &str,
    source: &DataSource,
    o: Splits,
    cache_dir: Option<&Path>,
) -> Result<Data, DataError> {
    if o.train.is_empty() {
        return Err(DataError::Empty);
    }
    let channels = o.train.get(0)?.image.channels;
    let fingerprint = format!("{source:?} {}", o.fingerprint);
    let cache_path = cache_dir.map(|d| d.join(format!("stats-{name}.json")));
    let cache = cache_path.as_deref().map(|p| (p, fingerprint.as_str()));
    let stats = stats::resolve(&o.normalize, channels, o.train.as_ref(), cache)?;
    Ok(Data {
        train: o.train,
        val: o.val,
        classes: o.classes,
        size: o.size,
        channels,
        stats,
        corrupt: o.corrupt,
    })
}
