//! One listing of an image folder: its layout, classes, files and labels, the files
//! that do not decode (with [`OnCorrupt::Skip`](crate::data::corrupt::OnCorrupt)), and
//! the seeded train/validation split drawn from it.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::cache::{DirStamp, stamp};
use super::{decode, is_image, read_dir_sorted};
use crate::data::loader::{DataError, mix_seed};

/// How the images under an image folder's root are arranged (see [`open`](super::open)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// `train/<class>/*` and `val/<class>/*` (or `validation/`): labelled, split given.
    SplitClasses,
    /// `train/*` and `val/*` (or `validation/`): unlabelled, split given.
    SplitFlat,
    /// `<class>/*`: labelled, split drawn per class.
    Classes,
    /// `*`: unlabelled, split drawn.
    Flat,
}

impl Layout {
    /// True when the images carry class labels.
    pub fn is_labelled(self) -> bool {
        matches!(self, Self::SplitClasses | Self::Classes)
    }

    /// True when the train/validation split comes from the folders, not `val_fraction`.
    pub fn has_given_split(self) -> bool {
        matches!(self, Self::SplitClasses | Self::SplitFlat)
    }
}

/// One image of the index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Entry {
    /// Path relative to the root.
    pub path: PathBuf,
    /// Position of its class in [`Index::classes`]; 0 when unlabelled.
    pub label: usize,
    /// True when it lies in the given validation folder.
    pub val: bool,
}

/// What a listing found: everything needed to build the datasets without the file system.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Index {
    /// The detected layout.
    pub layout: Layout,
    /// Class names, sorted; empty when unlabelled.
    pub classes: Vec<String>,
    /// The usable images, sorted by path.
    pub files: Vec<Entry>,
    /// Paths (relative to the root) of the images left out because they do not decode.
    pub corrupt: Vec<String>,
}

/// The images of one folder: class sub-folders with their files, and loose files.
#[derive(Default)]
struct Listing {
    classes: Vec<(String, Vec<PathBuf>)>,
    loose: Vec<PathBuf>,
}

impl Listing {
    fn is_empty(&self) -> bool {
        self.classes.is_empty() && self.loose.is_empty()
    }
}

/// Walks `root` (two levels, three for the split layouts), stamping every directory it
/// reads into `stamps` before reading it.
pub(super) fn scan(root: &Path, stamps: &mut Vec<DirStamp>) -> Result<Index, DataError> {
    let top = read_stamped(root, Path::new(""), stamps)?;
    let named = |names: &[&str]| -> Vec<PathBuf> {
        top.iter()
            .filter(|p| p.file_name().is_some_and(|n| names.iter().any(|m| n == *m)))
            .filter(|p| p.is_dir())
            .cloned()
            .collect()
    };
    let train = named(&["train"]);
    let val = named(&["val", "validation"]);
    if val.len() > 1 {
        return Err(DataError::InvalidConfig {
            field: "root",
            value: root.display().to_string(),
            reason: "holds both a val/ and a validation/ folder",
        });
    }
    match (train.first(), val.first()) {
        (Some(train), Some(val)) => scan_split(root, train, val, stamps),
        _ => scan_single(root, top, stamps),
    }
}

fn scan_single(
    root: &Path,
    top: Vec<PathBuf>,
    stamps: &mut Vec<DirStamp>,
) -> Result<Index, DataError> {
    let listing = list_entries(root, Path::new(""), top, stamps)?;
    if listing.is_empty() {
        return Err(DataError::NoImages {
            dir: root.to_owned(),
        });
    }
    let labelled = !listing.classes.is_empty();
    let classes: Vec<String> = listing.classes.iter().map(|(c, _)| c.clone()).collect();
    let mut files = Vec::new();
    push_entries(&mut files, listing, &classes, false);
    Ok(Index {
        layout: if labelled {
            Layout::Classes
        } else {
            Layout::Flat
        },
        classes,
        files,
        corrupt: Vec::new(),
    })
}

fn scan_split(
    root: &Path,
    train_dir: &Path,
    val_dir: &Path,
    stamps: &mut Vec<DirStamp>,
) -> Result<Index, DataError> {
    let relative = |p: &Path| p.strip_prefix(root).map(Path::to_owned).unwrap_or_default();
    let train = list_dir(root, &relative(train_dir), stamps)?;
    let val = list_dir(root, &relative(val_dir), stamps)?;
    if train.is_empty() {
        return Err(DataError::NoImages {
            dir: train_dir.to_owned(),
        });
    }
    let flat = |l: &Listing| l.classes.is_empty() && !l.loose.is_empty();
    let labelled = !train.classes.is_empty() || !val.classes.is_empty();
    if labelled && (flat(&train) || flat(&val)) {
        return Err(DataError::InvalidConfig {
            field: "root",
            value: root.display().to_string(),
            reason: "train/ and val/ must both hold class folders or both hold images directly",
        });
    }
    let mut classes: Vec<String> = train
        .classes
        .iter()
        .chain(&val.classes)
        .map(|(c, _)| c.clone())
        .collect();
    classes.sort();
    classes.dedup();
    let mut files = Vec::new();
    push_entries(&mut files, train, &classes, false);
    push_entries(&mut files, val, &classes, true);
    Ok(Index {
        layout: if labelled {
            Layout::SplitClasses
        } else {
            Layout::SplitFlat
        },
        classes,
        files,
        corrupt: Vec::new(),
    })
}

/// Adds a listing's images: the class folders' when it has any, else the loose ones.
fn push_entries(files: &mut Vec<Entry>, listing: Listing, classes: &[String], val: bool) {
    if listing.classes.is_empty() {
        files.extend(listing.loose.into_iter().map(|path| Entry {
            path,
            label: 0,
            val,
        }));
        return;
    }
    for (class, paths) in listing.classes {
        let label = classes.iter().position(|c| *c == class).unwrap_or(0);
        files.extend(paths.into_iter().map(|path| Entry { path, label, val }));
    }
}

fn read_stamped(
    root: &Path,
    rel: &Path,
    stamps: &mut Vec<DirStamp>,
) -> Result<Vec<PathBuf>, DataError> {
    stamps.push(stamp(root, rel)?);
    read_dir_sorted(&root.join(rel))
}

fn list_dir(root: &Path, rel: &Path, stamps: &mut Vec<DirStamp>) -> Result<Listing, DataError> {
    let entries = read_stamped(root, rel, stamps)?;
    list_entries(root, rel, entries, stamps)
}

/// Sorts the `entries` of `root/rel` into class folders (sub-folders holding at least one
/// image) and loose images; paths come back relative to `root`.
fn list_entries(
    root: &Path,
    rel: &Path,
    entries: Vec<PathBuf>,
    stamps: &mut Vec<DirStamp>,
) -> Result<Listing, DataError> {
    let mut listing = Listing::default();
    for path in entries {
        let Some(file_name) = path.file_name() else {
            continue;
        };
        if path.is_dir() {
            let sub = rel.join(file_name);
            let files: Vec<PathBuf> = read_stamped(root, &sub, stamps)?
                .into_iter()
                .filter(|p| p.is_file() && is_image(p))
                .filter_map(|p| p.file_name().map(|f| sub.join(f)))
                .collect();
            if !files.is_empty() {
                listing
                    .classes
                    .push((file_name.to_string_lossy().into_owned(), files));
            }
        } else if path.is_file() && is_image(&path) {
            listing.loose.push(rel.join(file_name));
        }
    }
    if !listing.classes.is_empty() && !listing.loose.is_empty() {
        tracing::warn!(
            "{} images directly in '{}' ignored: it holds class folders",
            listing.loose.len(),
            root.join(rel).display()
        );
        listing.loose.clear();
    }
    Ok(listing)
}

/// Decodes every file of `index` once (on up to four threads) and moves those that do
/// not decode, or cannot be read, from `files` to `corrupt`.
pub(super) fn drop_corrupt(root: &Path, index: &mut Index) {
    let files = std::mem::take(&mut index.files);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let chunk = files.len().div_ceil(workers).max(1);
    let good: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|e| decode(&root.join(&e.path)).is_ok())
                        .collect::<Vec<bool>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    for (entry, ok) in files.into_iter().zip(good) {
        if ok {
            index.files.push(entry);
        } else {
            index.corrupt.push(entry.path.display().to_string());
        }
    }
}

/// Image paths with their labels.
pub(super) type Items = Vec<(PathBuf, usize)>;

/// Train and validation `(relative path, label)` lists, each sorted by path. A given split
/// is kept; otherwise each class (one group when unlabelled) sends `round(n * val_fraction)`
/// images of a permutation seeded by `seed` and the class name to validation.
pub(super) fn split(index: &Index, val_fraction: f64, seed: u64) -> (Items, Items) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    if index.layout.has_given_split() {
        for e in &index.files {
            let side = if e.val { &mut val } else { &mut train };
            side.push((e.path.clone(), e.label));
        }
    } else {
        let groups = index.classes.len().max(1);
        for label in 0..groups {
            let mut paths: Vec<&PathBuf> = index
                .files
                .iter()
                .filter(|e| e.label == label)
                .map(|e| &e.path)
                .collect();
            paths.sort();
            let name = index.classes.get(label).map_or("", String::as_str);
            paths.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(&[
                seed,
                fnv1a(name.as_bytes()),
            ])));
            let n_val = ((paths.len() as f64 * val_fraction).round() as usize).min(paths.len());
            val.extend(paths[..n_val].iter().map(|p| ((*p).clone(), label)));
            train.extend(paths[n_val..].iter().map(|p| ((*p).clone(), label)));
        }
    }
    train.sort();
    val.sort();
    (train, val)
}

/// 64-bit FNV-1a: a hash that stays the same across runs, platforms and Rust versions.
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
