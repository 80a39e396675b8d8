//! Image files on disk: decoding, directory listing, a class-per-folder dataset and
//! DINO's evaluation transform.

use std::path::{Path, PathBuf};

use super::augment::{center_crop, resize_shorter_side};
use super::loader::{DataError, Dataset, Sample};
use super::views::Image;

/// Extensions [`list_images`] picks up (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Decodes a png or jpeg file to an RGB image in `[0, 1]`. A file that does not decode
/// (truncated, wrong format) gives [`DataError::Corrupt`].
pub fn load_image(path: &Path) -> Result<Image, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let decoded = image::load_from_memory(&bytes).map_err(|e| DataError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let rgb = decoded.to_rgb32f();
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

/// A folder dataset: each immediate subdirectory is a class (sorted by name, label =
/// position); images directly in the root all get label 0 when there are no classes.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    items: Vec<(PathBuf, usize)>,
}

impl ImageFolder {
    /// Lists `root`; errors when it holds no images.
    pub fn open(root: &Path) -> Result<Self, DataError> {
        let mut classes = Vec::new();
        let mut items = Vec::new();
        let mut loose = Vec::new();
        for path in read_dir_sorted(root)? {
            if path.is_dir() {
                let files: Vec<PathBuf> = read_dir_sorted(&path)?
                    .into_iter()
                    .filter(|p| p.is_file() && is_image(p))
                    .collect();
                if files.is_empty() {
                    continue;
                }
                let label = classes.len();
                classes.push(
                    path.file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                );
                items.extend(files.into_iter().map(|p| (p, label)));
            } else if is_image(&path) {
                loose.push(path);
            }
        }
        if classes.is_empty() {
            items = loose.into_iter().map(|p| (p, 0)).collect();
        }
        if items.is_empty() {
            return Err(DataError::NoImages {
                dir: root.to_owned(),
            });
        }
        Ok(Self {
            root: root.to_owned(),
            classes,
            items,
        })
    }

    /// The directory this was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Class names (subdirectory names) in label order; empty for a flat folder.
    pub fn class_names(&self) -> &[String] {
        &self.classes
    }

    /// The image paths and labels, in dataset order.
    pub fn items(&self) -> &[(PathBuf, usize)] {
        &self.items
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let (path, label) = self.items.get(index).ok_or(DataError::IndexOutOfRange {
            index,
            len: self.items.len(),
        })?;
        Ok(Sample {
            image: load_image(path)?,
            label: *label,
            mask: Vec::new(),
            targets: Vec::new(),
        })
    }

    fn num_classes(&self) -> usize {
        self.classes.len().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
        let bytes = std::fs::read(&png).unwrap();
        std::fs::write(&png, &bytes[..bytes.len() / 2]).unwrap();
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
        for (class, files) in [("dog", ["2.png", "1.jpeg"]), ("cat", ["x.jpg", "y.png"])] {
            std::fs::create_dir_all(dir.0.join(class)).unwrap();
            for f in files {
                write_rgb(&dir.0.join(class).join(f), 3, 3);
            }
        }
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
        let folder = ImageFolder::open(&dir.0).unwrap();
        assert_eq!(folder.class_names(), ["cat", "dog"]);
        assert_eq!(folder.len(), 4);
        assert_eq!(folder.num_classes(), 2);
        assert_eq!(folder.get(2).unwrap().label, 1);
        assert!(folder.get(4).is_err());
        let empty = TempDir::new("empty");
        assert!(matches!(
            ImageFolder::open(&empty.0),
            Err(DataError::NoImages { .. })
        ));
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
}
