//! CIFAR-10 / CIFAR-100 binary files.
//!
//! CIFAR-10 (`data_batch_1.bin` … `data_batch_5.bin`, `test_batch.bin`): each record is
//! one label byte and 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each plane a
//! row-major 32x32). CIFAR-100 (`train.bin`, `test.bin`): a coarse label byte, a fine
//! label byte, then the same 3072 pixel bytes. Files are read whole; the dataset keeps
//! the raw records and decodes one per [`Dataset::get`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::corrupt::{CorruptCount, OnCorrupt};
use super::loader::{DataError, Dataset, Sample};
use super::stats::Normalize;
use super::views::Image;

/// Image side in pixels.
pub const SIDE: usize = 32;
/// Pixel bytes per record (3 planes of 32x32).
pub const PIXELS: usize = 3 * SIDE * SIDE;

const CIFAR10_TRAIN: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
const CIFAR10_TEST: &str = "test_batch.bin";
const CIFAR100_TRAIN: &str = "train.bin";
const CIFAR100_TEST: &str = "test.bin";

/// Which CIFAR dataset the files hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CifarVariant {
    /// 10 classes, five training batches and one test batch.
    #[default]
    Cifar10,
    /// 100 fine classes in 20 coarse superclasses, `train.bin` and `test.bin`.
    Cifar100,
}

/// Which CIFAR-100 label a sample carries (CIFAR-10 has one label only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CifarLabels {
    /// The 100 fine classes.
    #[default]
    Fine,
    /// The 20 coarse superclasses.
    Coarse,
}

/// `Cifar((root: "data/cifar-10-batches-bin", variant: Cifar10))`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CifarConfig {
    /// Folder holding the `.bin` files (or the folder the official archive extracts
    /// into: `cifar-10-batches-bin` / `cifar-100-binary`), relative to the base dir.
    pub root: PathBuf,
    /// CIFAR-10 or CIFAR-100.
    #[serde(default)]
    pub variant: CifarVariant,
    /// Fine or coarse labels (CIFAR-100 only).
    #[serde(default)]
    pub labels: CifarLabels,
    /// What to do with a partial record or an out-of-range label.
    #[serde(default)]
    pub on_corrupt: OnCorrupt,
    /// Channel normalisation (default `Auto`: ImageNet for RGB, computed otherwise).
    #[serde(default)]
    pub normalize: Normalize,
}

impl CifarConfig {
    /// A config for `root` with the defaults (CIFAR-10, fine labels, fail on corruption).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            variant: CifarVariant::default(),
            labels: CifarLabels::default(),
            on_corrupt: OnCorrupt::default(),
            normalize: Normalize::Auto,
        }
    }

    fn layout(&self) -> Layout {
        match (self.variant, self.labels) {
            (CifarVariant::Cifar10, _) => Layout {
                header: 1,
                label_at: 0,
                num_classes: 10,
            },
            (CifarVariant::Cifar100, CifarLabels::Coarse) => Layout {
                header: 2,
                label_at: 0,
                num_classes: 20,
            },
            (CifarVariant::Cifar100, CifarLabels::Fine) => Layout {
                header: 2,
                label_at: 1,
                num_classes: 100,
            },
        }
    }
}

/// Where the label sits in a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    /// Label bytes before the pixels.
    header: usize,
    /// Offset of the label used.
    label_at: usize,
    /// Classes of the label used.
    num_classes: usize,
}

impl Layout {
    fn record(self) -> usize {
        self.header + PIXELS
    }

    /// Upper bounds of each header byte: `[10]` or `[20, 100]`.
    fn label_limits(self) -> &'static [u8] {
        if self.header == 1 { &[10] } else { &[20, 100] }
    }
}

/// One CIFAR split held in memory as raw records.
#[derive(Clone, Debug)]
pub struct CifarDataset {
    records: Arc<Vec<u8>>,
    layout: Layout,
    corrupt: CorruptCount,
}

impl CifarDataset {
    /// The skipped corrupt records and partial tails (shared by train and test).
    pub fn corrupt(&self) -> &CorruptCount {
        &self.corrupt
    }
}

impl Dataset for CifarDataset {
    fn len(&self) -> usize {
        self.records.len() / self.layout.record()
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let len = self.len();
        if index >= len {
            return Err(DataError::IndexOutOfRange { index, len });
        }
        let size = self.layout.record();
        let record = &self.records[index * size..(index + 1) * size];
        let data = record[self.layout.header..]
            .iter()
            .map(|&b| f32::from(b) / 255.0)
            .collect();
        Ok(Sample {
            image: Image::new(3, SIDE, SIDE, data)?,
            label: usize::from(record[self.layout.label_at]),
            mask: Vec::new(),
            targets: Vec::new(),
        })
    }

    fn num_classes(&self) -> usize {
        self.layout.num_classes
    }
}

/// Opens the train and test splits under `cfg.root` (joined to `base_dir` when
/// relative). Every expected file must exist; corrupt records follow `cfg.on_corrupt`.
pub fn open(
    cfg: &CifarConfig,
    base_dir: Option<&Path>,
) -> Result<(CifarDataset, CifarDataset), DataError> {
    let root = base_dir.map_or_else(|| cfg.root.clone(), |b| b.join(&cfg.root));
    let (train, test, expected, sub): (Vec<&str>, &str, &str, &str) = match cfg.variant {
        CifarVariant::Cifar10 => (
            CIFAR10_TRAIN.to_vec(),
            CIFAR10_TEST,
            "CIFAR-10 (binary version) needs data_batch_1.bin … data_batch_5.bin and test_batch.bin",
            "cifar-10-batches-bin",
        ),
        CifarVariant::Cifar100 => (
            vec![CIFAR100_TRAIN],
            CIFAR100_TEST,
            "CIFAR-100 (binary version) needs train.bin and test.bin",
            "cifar-100-binary",
        ),
    };
    let dir = if !root.join(test).is_file() && root.join(sub).join(test).is_file() {
        root.join(sub)
    } else {
        root
    };
    for name in train.iter().chain([&test]) {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(DataError::Io {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("missing; {expected} in '{}'", dir.display()),
                ),
            });
        }
    }
    let layout = cfg.layout();
    let corrupt = CorruptCount::new();
    let read = |names: &[&str]| -> Result<CifarDataset, DataError> {
        let mut records = Vec::new();
        for name in names {
            read_records(
                &dir.join(name),
                layout,
                cfg.on_corrupt,
                &corrupt,
                &mut records,
            )?;
        }
        Ok(CifarDataset {
            records: Arc::new(records),
            layout,
            corrupt: corrupt.clone(),
        })
    };
    Ok((read(&train)?, read(&[test])?))
}

/// Appends the valid records of one file to `out`.
fn read_records(
    path: &Path,
    layout: Layout,
    policy: OnCorrupt,
    corrupt: &CorruptCount,
    out: &mut Vec<u8>,
) -> Result<(), DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let size = layout.record();
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let tail = bytes.len() % size;
    if tail != 0 {
        let err = DataError::Corrupt {
            path: path.to_owned(),
            reason: format!(
                "{} bytes is not a whole number of {size}-byte records \
                 ({} records and {tail} bytes over; truncated?)",
                bytes.len(),
                bytes.len() / size
            ),
        };
        corrupt.handle(
            policy,
            err,
            format!("{name}: partial record of {tail} bytes"),
        )?;
    }
    out.reserve(bytes.len() - tail);
    for (i, record) in bytes.chunks_exact(size).enumerate() {
        let bad = record
            .iter()
            .zip(layout.label_limits())
            .find(|(label, limit)| label >= limit);
        if let Some((label, limit)) = bad {
            let err = DataError::Corrupt {
                path: path.to_owned(),
                reason: format!("record {i} has label {label}, expected below {limit}"),
            };
            corrupt.handle(policy, err, format!("{name}: record {i}"))?;
            continue;
        }
        out.extend_from_slice(record);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("patchwork-cifar-{name}-{}", std::process::id()));
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

    /// Pixel byte of record `seed` at plane `c`, position `p`.
    fn pixel(seed: u8, c: usize, p: usize) -> u8 {
        (seed as usize * 7 + c * 50 + p % 200) as u8
    }

    fn record(labels: &[u8], seed: u8) -> Vec<u8> {
        let mut r = labels.to_vec();
        for c in 0..3 {
            r.extend((0..SIDE * SIDE).map(|p| pixel(seed, c, p)));
        }
        r
    }

    fn write(dir: &Path, name: &str, records: &[Vec<u8>]) {
        std::fs::write(dir.join(name), records.concat()).unwrap();
    }

    /// CIFAR-10 with batches 1 and 2 holding records, the others empty.
    fn cifar10(dir: &Path) {
        write(dir, "data_batch_1.bin", &[record(&[3], 0), record(&[9], 1)]);
        write(dir, "data_batch_2.bin", &[record(&[0], 2)]);
        for name in &CIFAR10_TRAIN[2..] {
            write(dir, name, &[]);
        }
        write(dir, "test_batch.bin", &[record(&[5], 3)]);
    }

    #[test]
    fn reads_cifar10_labels_and_planes() {
        let tmp = TempDir::new("c10");
        cifar10(&tmp.0);
        let (train, test) = open(&CifarConfig::new(&tmp.0), None).unwrap();
        assert_eq!((train.len(), test.len()), (3, 1));
        assert_eq!(train.num_classes(), 10);
        let labels: Vec<usize> = (0..3).map(|i| train.get(i).unwrap().label).collect();
        assert_eq!(labels, [3, 9, 0]);
        let s = train.get(1).unwrap();
        assert_eq!(
            (s.image.channels, s.image.height, s.image.width),
            (3, 32, 32)
        );
        // R plane, then G, then B, each row-major.
        for (c, y, x) in [(0, 0, 0), (0, 1, 2), (1, 5, 7), (2, 31, 31)] {
            let expected = f32::from(pixel(1, c, y * SIDE + x)) / 255.0;
            assert_eq!(s.image.at(c, y, x), expected, "c{c} y{y} x{x}");
        }
        assert_eq!(train.get(2).unwrap().image.at(0, 0, 0), 14.0 / 255.0);
        assert_eq!(test.get(0).unwrap().label, 5);
        assert!(matches!(
            train.get(3),
            Err(DataError::IndexOutOfRange { index: 3, len: 3 })
        ));
        assert!(train.corrupt().is_empty());
    }

    #[test]
    fn reads_cifar100_fine_and_coarse_from_the_archive_folder() {
        let tmp = TempDir::new("c100");
        let dir = tmp.0.join("cifar-100-binary");
        std::fs::create_dir_all(&dir).unwrap();
        write(
            &dir,
            "train.bin",
            &[record(&[19, 99], 0), record(&[4, 42], 1)],
        );
        write(&dir, "test.bin", &[record(&[0, 7], 2)]);
        let mut cfg = CifarConfig::new("cifar-100-binary");
        cfg.variant = CifarVariant::Cifar100;
        let (train, test) = open(&cfg, Some(&tmp.0)).unwrap();
        assert_eq!(train.num_classes(), 100);
        assert_eq!(train.get(0).unwrap().label, 99);
        assert_eq!(train.get(1).unwrap().label, 42);
        assert_eq!(test.get(0).unwrap().label, 7);
        let s = train.get(1).unwrap();
        assert_eq!(s.image.at(2, 0, 3), f32::from(pixel(1, 2, 3)) / 255.0);

        cfg.labels = CifarLabels::Coarse;
        cfg.root = tmp.0.clone();
        let (train, _) = open(&cfg, None).unwrap();
        assert_eq!(train.num_classes(), 20);
        assert_eq!(train.get(0).unwrap().label, 19);
        assert_eq!(train.get(1).unwrap().label, 4);
    }

    #[test]
    fn a_missing_file_names_the_expected_files() {
        let tmp = TempDir::new("missing");
        cifar10(&tmp.0);
        std::fs::remove_file(tmp.0.join("data_batch_4.bin")).unwrap();
        let err = open(&CifarConfig::new(&tmp.0), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("data_batch_4.bin"), "{err}");
        assert!(err.contains("data_batch_1.bin … data_batch_5.bin and test_batch.bin"));
    }

    #[test]
    fn a_truncated_file_fails_or_is_skipped() {
        let tmp = TempDir::new("trunc");
        cifar10(&tmp.0);
        let mut bytes = [record(&[1], 0), record(&[2], 1)].concat();
        bytes.truncate(PIXELS + 1 + 100);
        std::fs::write(tmp.0.join("data_batch_2.bin"), bytes).unwrap();
        let mut cfg = CifarConfig::new(&tmp.0);
        match open(&cfg, None) {
            Err(DataError::Corrupt { path, reason }) => {
                assert!(path.ends_with("data_batch_2.bin"));
                assert!(reason.contains("3173 bytes"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        cfg.on_corrupt = OnCorrupt::Skip;
        let (train, test) = open(&cfg, None).unwrap();
        assert_eq!(train.len(), 3);
        assert_eq!(train.get(2).unwrap().label, 1);
        assert_eq!(train.corrupt().count(), 1);
        assert_eq!(test.corrupt().count(), 1);
        assert!(train.corrupt().names()[0].starts_with("data_batch_2.bin"));
    }

    #[test]
    fn an_out_of_range_label_is_corrupt() {
        let tmp = TempDir::new("label");
        cifar10(&tmp.0);
        write(
            &tmp.0,
            "test_batch.bin",
            &[record(&[10], 0), record(&[4], 1)],
        );
        let mut cfg = CifarConfig::new(&tmp.0);
        let err = open(&cfg, None).unwrap_err().to_string();
        assert!(
            err.contains("test_batch.bin") && err.contains("label 10"),
            "{err}"
        );
        cfg.on_corrupt = OnCorrupt::Skip;
        let (_, test) = open(&cfg, None).unwrap();
        assert_eq!(test.len(), 1);
        assert_eq!(test.get(0).unwrap().label, 4);
        assert_eq!(test.corrupt().count(), 1);
    }

    #[test]
    fn config_reads_from_ron_with_defaults() {
        let cfg: CifarConfig = ron::from_str("(root: \"x\")").unwrap();
        assert_eq!(cfg, CifarConfig::new("x"));
        assert!(ron::from_str::<CifarConfig>("(root: \"x\", colour: 1)").is_err());
    }
}
