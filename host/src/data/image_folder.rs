//! Image files on disk: decoding, directory listing, the train/validation datasets of an
//! image folder, and DINO's evaluation transform.
//!
//! # Layouts
//!
//! [`open`] detects how the images under the root are arranged:
//!
//! 1. [`Layout::SplitClasses`]: `train/<class>/*` and `val/<class>/*` (or `validation/`).
//!    The classes are the union of both sides' class folders, sorted, and a label is a
//!    position in that list on both sides (a class found only in `val/` is still a class).
//! 2. [`Layout::SplitFlat`]: `train/*` and `val/*` (or `validation/`), unlabelled.
//! 3. [`Layout::Classes`]: `<class>/*`. Per class, a permutation seeded by `seed` and the
//!    class name sends `round(n * val_fraction)` images to validation; paths are sorted
//!    first, so the split does not depend on the file system's order.
//! 4. [`Layout::Flat`]: `*`, unlabelled, split like one class.
//!
//! The split layouts need both `train/` and `val/` (or `validation/`); a lone `train/`
//! is an ordinary class folder, and `val_fraction` is unused when the split is given.
//! A class folder is a sub-folder holding at least one png/jpg/jpeg file (any case);
//! deeper folders are not searched, and images lying next to class folders are ignored
//! with a warning. `train/` and `val/` must both hold class folders or both hold images.
//! Unlabelled images all get label 0 and [`Dataset::num_classes`] is 0.
//!
//! # Corrupt files
//!
//! With [`OnCorrupt::Fail`] nothing is decoded while opening, and [`Dataset::get`] on a
//! file that does not decode returns [`DataError::Corrupt`] naming it. With
//! [`OnCorrupt::Skip`], [`open`] decodes every image once, leaves out those that fail and
//! counts them (by path relative to the root) in [`OpenedFolder::corrupt`]; a file that
//! fails later is counted once and `get` returns the next readable sample instead.
//!
//! # Index cache
//!
//! With `index_cache` and a cache folder, the listing is kept as JSON in
//! `<cache>/image-index-<hash of the canonical root>.json`: the layout, classes, files with
//! labels and given split side, and the corrupt files found, under a fingerprint of the
//! canonical root, the corrupt policy, and the modification time of every directory the
//! listing read (adding, removing or renaming a file changes its folder's time). Reopening
//! checks those times with one `stat` per directory and lists again on any difference,
//! on a file that does not parse, or when a directory changed less than 2 s before the
//! listing began (its timestamp tick may hide a later change). A file rewritten in place
//! keeps its folder's time, so a repaired corrupt file stays left out until its folder
//! changes.

mod cache;
mod index;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use self::index::Layout;
use super::augment::{center_crop, resize_shorter_side};
use super::corrupt::{CorruptCount, OnCorrupt};
use super::loader::{DataError, Dataset, Sample};
use super::stats::Normalize;
use super::views::Image;

/// Extensions [`list_images`] picks up (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Reads and decodes an image file, leaving its pixels as stored.
fn decode(path: &Path) -> Result<image::DynamicImage, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    image::load_from_memory(&bytes).map_err(|e| DataError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Decodes a png or jpeg file to an RGB image in `[0, 1]`. A file that does not decode
/// (truncated, wrong format) gives [`DataError::Corrupt`].
pub fn load_image(path: &Path) -> Result<Image, DataError> {
    let rgb = decode(path)?.to_rgb32f();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let plane = w * h;
    let mut data = vec![0.0f32; 3 * plane];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            data[c * plane + i] = px.0[c].clamp(0.0, 1.0);
        }
    }
    Image::new(3, h, w, data)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let io = |source| DataError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        entries.push(entry.map_err(io)?.path());
    }
    entries.sort();
    Ok(entries)
}

/// The png/jpg/jpeg files in `dir` and in its immediate subdirectories, sorted by path.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for path in read_dir_sorted(dir)? {
        if path.is_dir() {
            out.extend(
                read_dir_sorted(&path)?
                    .into_iter()
                    .filter(|p| p.is_file() && is_image(p)),
            );
        } else if is_image(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// DINO's evaluation transform: bicubic resize of the shorter side to
/// `size * 256 / 224`, then a centre crop of `size x size`.
pub fn eval_transform(img: &Image, size: usize) -> Image {
    let resized = resize_shorter_side(img, size * 256 / 224);
    center_crop(&resized, size, size)
}

/// An image folder data source (RON: `ImageFolder((root: "imgs", size: 32,
/// val_fraction: 0.2, seed: 0, on_corrupt: Skip, index_cache: true))`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFolderConfig {
    /// The root folder, relative to the workspace file's folder.
    pub root: PathBuf,
    /// Side of the square images fed to the model, in pixels.
    #[serde(default = "default_size")]
    pub size: usize,
    /// Fraction of each class held out for validation, in `[0, 1)`; unused when the
    /// root has `train/` and `val/` folders.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Seed of the train/validation split.
    #[serde(default)]
    pub seed: u64,
    /// What to do with images that do not decode.
    #[serde(default)]
    pub on_corrupt: OnCorrupt,
    /// Keep the listing in the cache folder and reuse it while the folders are unchanged.
    #[serde(default = "default_index_cache")]
    pub index_cache: bool,
    /// Channel normalisation (default `Auto`: ImageNet statistics for RGB images).
    #[serde(default)]
    pub normalize: Normalize,
}

fn default_size() -> usize {
    32
}
fn default_val_fraction() -> f64 {
    0.2
}
fn default_index_cache() -> bool {
    true
}

impl ImageFolderConfig {
    /// The config for `root` with every other field at its default.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            size: default_size(),
            val_fraction: default_val_fraction(),
            seed: 0,
            on_corrupt: OnCorrupt::default(),
            index_cache: default_index_cache(),
            normalize: Normalize::Auto,
        }
    }
}

/// The two splits of an opened image folder and what opening it found.
#[derive(Clone, Debug)]
pub struct OpenedFolder {
    /// The training split.
    pub train: ImageFolder,
    /// The validation split; empty when `val_fraction` is 0 or `val/` holds no images.
    pub val: ImageFolder,
    /// Class names in label order; empty when unlabelled.
    pub classes: Vec<String>,
    /// The detected layout.
    pub layout: Layout,
    /// Corrupt images left out; both splits add those that fail later.
    pub corrupt: CorruptCount,
    /// True when the listing came from the index cache instead of the folders.
    pub from_cache: bool,
}

/// Opens `cfg.root` (relative to `base_dir`): detects the layout, lists the images or
/// reads the listing cached in `cache_dir`, leaves corrupt ones out with
/// [`OnCorrupt::Skip`], and splits them into train and validation.
pub fn open(
    cfg: &ImageFolderConfig,
    base_dir: &Path,
    cache_dir: Option<&Path>,
) -> Result<OpenedFolder, DataError> {
    if !(0.0..1.0).contains(&cfg.val_fraction) {
        return Err(DataError::InvalidConfig {
            field: "val_fraction",
            value: cfg.val_fraction.to_string(),
            reason: "must be in [0, 1)",
        });
    }
    if cfg.size == 0 {
        return Err(DataError::InvalidConfig {
            field: "size",
            value: "0".into(),
            reason: "must be at least 1",
        });
    }
    let root = base_dir.join(&cfg.root);
    let io = |source| DataError::Io {
        path: root.clone(),
        source,
    };
    if !std::fs::metadata(&root).map_err(io)?.is_dir() {
        let kind = std::io::ErrorKind::NotADirectory;
        return Err(io(std::io::Error::new(kind, "not a folder")));
    }
    let canonical = root.canonicalize().map_err(io)?;
    let cache_file = cache_dir
        .filter(|_| cfg.index_cache)
        .map(|dir| cache::cache_path(dir, &canonical));
    let cached = cache_file
        .as_deref()
        .and_then(|path| cache::load(path, &canonical, cfg.on_corrupt));
    let from_cache = cached.is_some();
    let index = match cached {
        Some(index) => index,
        None => list(&canonical, cfg.on_corrupt, cache_file.as_deref())?,
    };
    let corrupt = CorruptCount::new();
    for name in &index.corrupt {
        corrupt.record(name.clone());
    }
    if !corrupt.is_empty() {
        tracing::warn!("{corrupt} in '{}'", root.display());
    }
    if index.files.is_empty() {
        return Err(DataError::NoImages { dir: root });
    }
    let (train, val) = index::split(&index, cfg.val_fraction, cfg.seed);
    let dataset = |items: index::Items| ImageFolder {
        root: root.clone(),
        classes: index.classes.clone(),
        items: items.into_iter().map(|(p, l)| (root.join(p), l)).collect(),
        on_corrupt: cfg.on_corrupt,
        corrupt: corrupt.clone(),
        failed: Arc::default(),
    };
    Ok(OpenedFolder {
        train: dataset(train),
        val: dataset(val),
        classes: index.classes,
        layout: index.layout,
        corrupt,
        from_cache,
    })
}

/// Lists `root`, drops the corrupt files with [`OnCorrupt::Skip`], and writes the cache.
fn list(
    root: &Path,
    on_corrupt: OnCorrupt,
    cache_file: Option<&Path>,
) -> Result<index::Index, DataError> {
    let listed_at_ns = cache::now_ns();
    let mut dirs = Vec::new();
    let mut index = index::scan(root, &mut dirs)?;
    if on_corrupt == OnCorrupt::Skip {
        index::drop_corrupt(root, &mut index);
    }
    Ok(match cache_file {
        Some(path) => {
            let fingerprint = cache::Fingerprint {
                root: root.to_owned(),
                on_corrupt,
                listed_at_ns,
                dirs,
            };
            cache::store(path, fingerprint, index)
        }
        None => index,
    })
}

/// One split of an image folder: image paths with labels, decoded by [`Dataset::get`].
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    items: Vec<(PathBuf, usize)>,
    on_corrupt: OnCorrupt,
    corrupt: CorruptCount,
    /// Indices `get` found unreadable, each counted once.
    failed: Arc<Mutex<HashSet<usize>>>,
}

impl ImageFolder {
    /// The root folder this split was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Class names in label order; empty when unlabelled.
    pub fn class_names(&self) -> &[String] {
        &self.classes
    }

    /// The image paths and labels, in dataset order (sorted by path).
    pub fn items(&self) -> &[(PathBuf, usize)] {
        &self.items
    }

    /// The count of corrupt images skipped, shared with the other split.
    pub fn corrupt(&self) -> &CorruptCount {
        &self.corrupt
    }

    fn has_failed(&self, index: usize) -> bool {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed.contains(&index)
    }

    /// Counts item `index` as corrupt the first time it fails.
    fn mark_failed(&self, index: usize, path: &Path, err: &DataError) {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.insert(index) {
            tracing::warn!("skipping unreadable image: {err}");
            let name = path.strip_prefix(&self.root).unwrap_or(path);
            self.corrupt.record(name.display().to_string());
        }
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.items.len()
    }

    /// The image at `index`; with [`OnCorrupt::Skip`], the next readable one (wrapping)
    /// when it does not load.
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let len = self.items.len();
        if index >= len {
            return Err(DataError::IndexOutOfRange { index, len });
        }
        let skip = self.on_corrupt == OnCorrupt::Skip;
        let mut last_err = None;
        for i in (index..len).chain(0..index) {
            if skip && self.has_failed(i) {
                continue;
            }
            let (path, label) = &self.items[i];
            match load_image(path) {
                Ok(image) => {
                    return Ok(Sample {
                        image,
                        label: *label,
                        mask: Vec::new(),
                        targets: Vec::new(),
                    });
                }
                Err(e) if skip => {
                    self.mark_failed(i, path, &e);
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| DataError::NoImages {
            dir: self.root.clone(),
        }))
    }

    fn num_classes(&self) -> usize {
        self.classes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, SystemTime};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "patchwork-image-folder-{tag}-{}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write_rgb(path: &Path, w: u32, h: u32) {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 20) as u8, (y * 30) as u8, 200])
        });
        img.save(path).unwrap();
    }

    /// Writes 8x8 images at `root/<file>` for each file, creating folders as needed.
    fn images(root: &Path, files: &[&str]) {
        for f in files {
            let path = root.join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            write_rgb(&path, 8, 8);
        }
    }

    fn truncate(path: &Path) {
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
    }

    /// Sets the modification time of `dir` and every folder below it an hour back, so
    /// that the index cache trusts them and any later change shows.
    fn backdate(dir: &Path) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                backdate(&path);
            }
        }
        let past = SystemTime::now() - Duration::from_secs(3600);
        open_dir(dir).set_modified(past).unwrap();
    }

    #[cfg(unix)]
    fn open_dir(dir: &Path) -> std::fs::File {
        std::fs::File::open(dir).unwrap()
    }

    #[cfg(windows)]
    fn open_dir(dir: &Path) -> std::fs::File {
        use std::os::windows::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .access_mode(0x100) // FILE_WRITE_ATTRIBUTES
            .custom_flags(0x0200_0000) // FILE_FLAG_BACKUP_SEMANTICS
            .open(dir)
            .unwrap()
    }

    /// The config for `base/root` with `val_fraction`.
    fn config(root: &str, val_fraction: f64) -> ImageFolderConfig {
        ImageFolderConfig {
            val_fraction,
            ..ImageFolderConfig::new(root)
        }
    }

    /// Item paths relative to the split's root, with `/` separators.
    fn names(ds: &ImageFolder) -> Vec<String> {
        ds.items()
            .iter()
            .map(|(p, _)| {
                p.strip_prefix(ds.root())
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/")
            })
            .collect()
    }

    /// Checks every label against the class folder holding the image.
    fn assert_labels_follow_folders(ds: &ImageFolder) {
        for (path, label) in ds.items() {
            let class = path
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap();
            assert_eq!(ds.class_names()[*label], class, "{}", path.display());
        }
    }

    #[test]
    fn loads_png_and_jpeg() {
        let dir = TempDir::new("load");
        let png = dir.0.join("a.png");
        let jpg = dir.0.join("b.JPG");
        write_rgb(&png, 6, 4);
        write_rgb(&jpg, 16, 8);
        let p = load_image(&png).unwrap();
        assert_eq!((p.channels, p.height, p.width), (3, 4, 6));
        assert!((p.at(0, 1, 2) - 40.0 / 255.0).abs() < 1e-6);
        assert!((p.at(1, 3, 0) - 90.0 / 255.0).abs() < 1e-6);
        assert!((p.at(2, 0, 0) - 200.0 / 255.0).abs() < 1e-6);
        let j = load_image(&jpg).unwrap();
        assert_eq!((j.channels, j.height, j.width), (3, 8, 16));
        assert!(
            (j.at(2, 4, 8) - 200.0 / 255.0).abs() < 0.05,
            "jpeg is lossy but close"
        );
    }

    #[test]
    fn truncated_png_is_corrupt_and_named() {
        let dir = TempDir::new("corrupt");
        let png = dir.0.join("broken.png");
        write_rgb(&png, 12, 12);
        truncate(&png);
        match load_image(&png) {
            Err(DataError::Corrupt { path, reason }) => {
                assert_eq!(path, png);
                assert!(!reason.is_empty());
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        let err = load_image(&png).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("corrupt image '{}'", png.display())),
            "{err}"
        );
        assert!(matches!(
            load_image(&dir.0.join("missing.png")),
            Err(DataError::Io { .. })
        ));
    }

    #[test]
    fn lists_and_labels_class_folders() {
        let dir = TempDir::new("list");
        images(
            &dir.0,
            &["dog/2.png", "dog/1.jpeg", "cat/x.jpg", "cat/y.png"],
        );
        std::fs::write(dir.0.join("cat").join("notes.txt"), "hi").unwrap();
        let listed = list_images(&dir.0).unwrap();
        let names: Vec<String> = listed
            .iter()
            .map(|p| {
                p.strip_prefix(&dir.0)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/")
            })
            .collect();
        assert_eq!(names, ["cat/x.jpg", "cat/y.png", "dog/1.jpeg", "dog/2.png"]);
        let folder = open(&config("", 0.0), &dir.0, None).unwrap().train;
        assert_eq!(folder.class_names(), ["cat", "dog"]);
        assert_eq!(folder.len(), 4);
        assert_eq!(folder.num_classes(), 2);
        assert_eq!(folder.get(2).unwrap().label, 1);
        assert!(folder.get(4).is_err());
    }

    #[test]
    fn eval_transform_resizes_then_crops() {
        let img = Image::filled(3, 40, 60, 0.25);
        let out = eval_transform(&img, 224);
        assert_eq!((out.channels, out.height, out.width), (3, 224, 224));
        assert!(out.data.iter().all(|v| (v - 0.25).abs() < 1e-5));
        let small = eval_transform(&Image::filled(3, 32, 32, 0.5), 32);
        assert_eq!((small.height, small.width), (32, 32));
    }

    #[test]
    fn config_reads_from_ron_with_defaults() {
        let cfg: ImageFolderConfig = ron::from_str("(root: \"imgs\")").unwrap();
        assert_eq!(cfg, ImageFolderConfig::new("imgs"));
        assert_eq!((cfg.size, cfg.val_fraction, cfg.seed), (32, 0.2, 0));
        assert_eq!((cfg.on_corrupt, cfg.index_cache), (OnCorrupt::Fail, true));
        let full = "(root: \"imgs\", size: 16, val_fraction: 0.1, seed: 3, on_corrupt: Skip, \
                    index_cache: false)";
        let cfg: ImageFolderConfig = ron::from_str(full).unwrap();
        assert_eq!(
            (cfg.size, cfg.seed, cfg.on_corrupt),
            (16, 3, OnCorrupt::Skip)
        );
        assert!(!cfg.index_cache);
        assert!(ron::from_str::<ImageFolderConfig>("(root: \"a\", colour: 1)").is_err());
    }

    #[test]
    fn class_folders_split_per_class() {
        let dir = TempDir::new("classes");
        let mut files: Vec<String> = (0..10)
            .map(|i| format!("cat/{i}.{}", if i % 2 == 0 { "png" } else { "jpg" }))
            .collect();
        files.extend((0..5).map(|i| format!("dog/{i}.png")));
        files.push("emu/only.jpeg".into());
        images(
            &dir.0,
            &files.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let opened = open(&config("", 0.2), &dir.0, None).unwrap();
        assert_eq!(opened.layout, Layout::Classes);
        assert_eq!(opened.classes, ["cat", "dog", "emu"]);
        let (train, val) = (&opened.train, &opened.val);
        // round(10 * 0.2) = 2 cats, round(5 * 0.2) = 1 dog, round(0.2) = 0 emus.
        let count = |ds: &ImageFolder, label| ds.items().iter().filter(|i| i.1 == label).count();
        assert_eq!([0, 1, 2].map(|l| count(val, l)), [2, 1, 0]);
        assert_eq!([0, 1, 2].map(|l| count(train, l)), [8, 4, 1]);
        assert_labels_follow_folders(train);
        assert_labels_follow_folders(val);
        assert_eq!((train.num_classes(), val.num_classes()), (3, 3));
        let mut all = names(train);
        all.extend(names(val));
        all.sort();
        all.dedup();
        assert_eq!(
            all.len(),
            16,
            "the splits are disjoint and cover every image"
        );
        let jpeg = train
            .items()
            .iter()
            .position(|(p, _)| p.ends_with("only.jpeg"));
        let sample = train.get(jpeg.unwrap()).unwrap();
        assert_eq!(
            (sample.label, sample.image.height, sample.image.width),
            (2, 8, 8)
        );
    }

    #[test]
    fn class_folder_split_is_deterministic_by_seed() {
        let ascending: Vec<String> = ["a", "b"]
            .iter()
            .flat_map(|c| (0..20).map(move |i| format!("{c}/{i:02}.png")))
            .collect();
        let descending: Vec<String> = ascending.iter().rev().cloned().collect();
        let (one, two) = (TempDir::new("seed-asc"), TempDir::new("seed-desc"));
        images(
            &one.0,
            &ascending.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        images(
            &two.0,
            &descending.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let val_names = |dir: &TempDir, seed| {
            let cfg = ImageFolderConfig {
                seed,
                ..config("", 0.25)
            };
            let opened = open(&cfg, &dir.0, None).unwrap();
            assert_eq!((opened.train.len(), opened.val.len()), (30, 10));
            names(&opened.val)
        };
        let first = val_names(&one, 0);
        assert_eq!(first, val_names(&one, 0));
        assert_eq!(first, val_names(&two, 0), "independent of creation order");
        assert_ne!(first, val_names(&one, 1));
        assert_eq!(first.iter().filter(|n| n.starts_with("a/")).count(), 5);
    }

    #[test]
    fn train_val_folders_share_one_class_mapping() {
        let dir = TempDir::new("split-classes");
        images(
            &dir.0,
            &[
                "train/cat/a.png",
                "train/cat/b.jpg",
                "train/dog/c.png",
                "validation/cat/d.png",
                "validation/emu/e.jpeg",
            ],
        );
        let opened = open(&config("", 0.5), &dir.0, None).unwrap();
        assert_eq!(opened.layout, Layout::SplitClasses);
        assert_eq!(opened.classes, ["cat", "dog", "emu"]);
        let (train, val) = (&opened.train, &opened.val);
        assert_eq!(
            names(train),
            ["train/cat/a.png", "train/cat/b.jpg", "train/dog/c.png"]
        );
        assert_eq!(
            names(val),
            ["validation/cat/d.png", "validation/emu/e.jpeg"]
        );
        let labels = |ds: &ImageFolder| ds.items().iter().map(|i| i.1).collect::<Vec<_>>();
        assert_eq!((labels(train), labels(val)), (vec![0, 0, 1], vec![0, 2]));
        assert_labels_follow_folders(train);
        assert_labels_follow_folders(val);
        assert_eq!((train.num_classes(), val.num_classes()), (3, 3));
        assert_eq!(val.get(1).unwrap().label, 2);
    }

    #[test]
    fn flat_folder_is_unlabelled_and_split_by_fraction() {
        let dir = TempDir::new("flat");
        let files: Vec<String> = (0..10)
            .map(|i| format!("{i}.{}", if i < 5 { "png" } else { "JPEG" }))
            .collect();
        images(
            &dir.0,
            &files.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let opened = open(&config("", 0.2), &dir.0, None).unwrap();
        assert_eq!(opened.layout, Layout::Flat);
        assert!(opened.classes.is_empty());
        assert_eq!((opened.train.len(), opened.val.len()), (8, 2));
        for ds in [&opened.train, &opened.val] {
            assert_eq!(ds.num_classes(), 0);
            assert!(ds.items().iter().all(|(_, label)| *label == 0));
        }
        for i in 0..opened.train.len() {
            let sample = opened.train.get(i).unwrap();
            assert_eq!((sample.label, sample.image.width), (0, 8));
        }
    }

    #[test]
    fn flat_train_val_folders_keep_their_split() {
        let dir = TempDir::new("split-flat");
        images(
            &dir.0,
            &[
                "imgs/train/a.png",
                "imgs/train/b.jpg",
                "imgs/train/c.png",
                "imgs/val/d.png",
            ],
        );
        let opened = open(&config("imgs", 0.5), &dir.0, None).unwrap();
        assert_eq!(opened.layout, Layout::SplitFlat);
        assert!(opened.classes.is_empty());
        assert_eq!(
            names(&opened.train),
            ["train/a.png", "train/b.jpg", "train/c.png"]
        );
        assert_eq!(names(&opened.val), ["val/d.png"]);
        assert_eq!(opened.val.num_classes(), 0);
        assert_eq!(opened.val.get(0).unwrap().label, 0);
        assert_eq!(opened.train.get(1).unwrap().label, 0);
    }

    #[test]
    fn open_rejects_bad_roots_and_fractions() {
        let dir = TempDir::new("reject");
        match open(&config("no/such", 0.2), &dir.0, None) {
            Err(e @ DataError::Io { .. }) => {
                assert!(e.to_string().contains("no/such"), "{e}");
            }
            other => panic!("expected Io, got {other:?}"),
        }
        images(&dir.0, &["file.png"]);
        match open(&config("file.png", 0.2), &dir.0, None) {
            Err(DataError::Io { path, .. }) => assert_eq!(path, dir.0.join("file.png")),
            other => panic!("expected Io, got {other:?}"),
        }
        std::fs::create_dir_all(dir.0.join("empty/sub")).unwrap();
        std::fs::write(dir.0.join("empty/notes.txt"), "hi").unwrap();
        assert!(matches!(
            open(&config("empty", 0.2), &dir.0, None),
            Err(DataError::NoImages { .. })
        ));
        for bad in [1.0, -0.1, f64::NAN] {
            assert!(matches!(
                open(&config("", bad), &dir.0, None),
                Err(DataError::InvalidConfig {
                    field: "val_fraction",
                    ..
                })
            ));
        }
        let zero = ImageFolderConfig {
            size: 0,
            ..config("", 0.2)
        };
        assert!(matches!(
            open(&zero, &dir.0, None),
            Err(DataError::InvalidConfig { field: "size", .. })
        ));
        images(
            &dir.0,
            &[
                "both/train/a.png",
                "both/val/b.png",
                "both/validation/c.png",
            ],
        );
        images(&dir.0, &["mixed/train/cat/a.png", "mixed/val/b.png"]);
        for root in ["both", "mixed"] {
            assert!(matches!(
                open(&config(root, 0.2), &dir.0, None),
                Err(DataError::InvalidConfig { field: "root", .. })
            ));
        }
    }

    #[test]
    fn corrupt_file_fails_get_by_default() {
        let dir = TempDir::new("fail");
        images(&dir.0, &["cat/a.png", "cat/bad.png", "dog/c.jpg"]);
        let bad = dir.0.join("cat/bad.png");
        truncate(&bad);
        let opened = open(&config("", 0.0), &dir.0, None).unwrap();
        assert_eq!(opened.train.len(), 3, "Fail does not decode while opening");
        match opened.train.get(1) {
            Err(DataError::Corrupt { path, .. }) => assert_eq!(path, bad),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(opened.corrupt.is_empty());
    }

    #[test]
    fn corrupt_file_is_skipped_and_counted() {
        let dir = TempDir::new("skip");
        images(
            &dir.0,
            &["imgs/cat/a.png", "imgs/cat/bad.png", "imgs/dog/c.jpg"],
        );
        truncate(&dir.0.join("imgs/cat/bad.png"));
        backdate(&dir.0.join("imgs"));
        let cfg = ImageFolderConfig {
            on_corrupt: OnCorrupt::Skip,
            ..config("imgs", 0.0)
        };
        let cache = dir.0.join("cache");
        for from_cache in [false, true] {
            let opened = open(&cfg, &dir.0, Some(&cache)).unwrap();
            assert_eq!(opened.from_cache, from_cache);
            assert_eq!(names(&opened.train), ["cat/a.png", "dog/c.jpg"]);
            assert_eq!(opened.classes, ["cat", "dog"]);
            assert_eq!(opened.corrupt.count(), 1);
            let skipped: Vec<String> = opened
                .corrupt
                .names()
                .iter()
                .map(|n| n.replace('\\', "/"))
                .collect();
            assert_eq!(skipped, ["cat/bad.png"]);
            assert_eq!(opened.train.corrupt().count(), 1);
        }
    }

    #[test]
    fn file_broken_after_open_is_skipped_once() {
        let dir = TempDir::new("late");
        images(&dir.0, &["cat/a.png", "cat/b.png", "dog/c.png"]);
        let skip = ImageFolderConfig {
            on_corrupt: OnCorrupt::Skip,
            ..config("", 0.0)
        };
        let opened = open(&skip, &dir.0, None).unwrap();
        let strict = open(&config("", 0.0), &dir.0, None).unwrap();
        let ds = &opened.train;
        truncate(&dir.0.join("cat/b.png"));
        assert!(matches!(
            strict.train.get(1),
            Err(DataError::Corrupt { .. })
        ));
        assert_eq!(ds.get(1).unwrap().label, 1, "the next sample, dog/c.png");
        assert_eq!(ds.get(1).unwrap().label, 1);
        assert_eq!(opened.corrupt.count(), 1, "counted once");
        truncate(&dir.0.join("dog/c.png"));
        assert_eq!(ds.get(2).unwrap().label, 0, "wraps around to cat/a.png");
        assert_eq!(ds.get(1).unwrap().label, 0);
        assert_eq!(ds.get(0).unwrap().label, 0);
        assert_eq!(opened.corrupt.count(), 2);
        let skipped: Vec<String> = opened
            .corrupt
            .names()
            .iter()
            .map(|n| n.replace('\\', "/"))
            .collect();
        assert_eq!(skipped, ["cat/b.png", "dog/c.png"]);
        truncate(&dir.0.join("cat/a.png"));
        assert!(matches!(ds.get(0), Err(DataError::Corrupt { .. })));
        assert_eq!(ds.len(), 3, "the length holds");
    }

    #[test]
    fn index_cache_is_reused_until_a_folder_changes() {
        let dir = TempDir::new("cache");
        images(
            &dir.0,
            &[
                "imgs/cat/a.png",
                "imgs/cat/b.jpg",
                "imgs/dog/c.png",
                "imgs/dog/d.png",
            ],
        );
        let root = dir.0.join("imgs");
        backdate(&root);
        let cache = dir.0.join("cache");
        let cfg = config("imgs", 0.25);
        let first = open(&cfg, &dir.0, Some(&cache)).unwrap();
        assert!(!first.from_cache);
        let path = cache::cache_path(&cache, &root.canonicalize().unwrap());
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("image-index-") && name.ends_with(".json"));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["index"]["classes"], serde_json::json!(["cat", "dog"]));
        assert_eq!(json["index"]["layout"], "Classes");
        assert_eq!(json["fingerprint"]["dirs"].as_array().unwrap().len(), 3);
        assert_eq!(
            std::fs::read_dir(&cache).unwrap().count(),
            1,
            "no temp file left"
        );

        let second = open(&cfg, &dir.0, Some(&cache)).unwrap();
        assert!(second.from_cache);
        assert_eq!(second.train.items(), first.train.items());
        assert_eq!(second.val.items(), first.val.items());
        assert_eq!(
            (&second.classes, second.layout),
            (&first.classes, first.layout)
        );
        let no_cache = ImageFolderConfig {
            index_cache: false,
            ..cfg.clone()
        };
        assert!(!open(&no_cache, &dir.0, Some(&cache)).unwrap().from_cache);
        assert!(!open(&cfg, &dir.0, None).unwrap().from_cache);

        images(&root, &["cat/e.png"]);
        let third = open(&cfg, &dir.0, Some(&cache)).unwrap();
        assert!(!third.from_cache, "cat/ changed");
        let total = |o: &OpenedFolder| o.train.len() + o.val.len();
        assert_eq!(total(&third), total(&first) + 1);

        backdate(&root);
        assert!(!open(&cfg, &dir.0, Some(&cache)).unwrap().from_cache);
        assert!(open(&cfg, &dir.0, Some(&cache)).unwrap().from_cache);
        let skip = ImageFolderConfig {
            on_corrupt: OnCorrupt::Skip,
            ..cfg
        };
        assert!(
            !open(&skip, &dir.0, Some(&cache)).unwrap().from_cache,
            "policy changed"
        );
    }

    #[test]
    fn garbage_cache_is_ignored_and_rewritten() {
        let dir = TempDir::new("garbage");
        images(&dir.0, &["imgs/a.png", "imgs/b.png"]);
        let root = dir.0.join("imgs");
        backdate(&root);
        let cache = dir.0.join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let path = cache::cache_path(&cache, &root.canonicalize().unwrap());
        std::fs::write(&path, "{\"version\": 1, \"fingerprint\": [").unwrap();
        let cfg = config("imgs", 0.5);
        let first = open(&cfg, &dir.0, Some(&cache)).unwrap();
        assert!(!first.from_cache);
        assert_eq!((first.train.len(), first.val.len()), (1, 1));
        assert!(
            open(&cfg, &dir.0, Some(&cache)).unwrap().from_cache,
            "rewritten"
        );
    }

    #[test]
    fn recently_changed_folders_are_listed_again() {
        let dir = TempDir::new("racy");
        images(&dir.0, &["imgs/a.png"]);
        let cache = dir.0.join("cache");
        let cfg = config("imgs", 0.0);
        for _ in 0..2 {
            let opened = open(&cfg, &dir.0, Some(&cache)).unwrap();
            assert!(
                !opened.from_cache,
                "a folder changed within the timestamp tick"
            );
        }
    }
}
