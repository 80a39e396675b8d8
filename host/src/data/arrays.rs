//! Multi-band arrays: a folder of `.npy` files or one safetensors file, with labels.
//!
//! For inputs that are not RGB pictures (say 14 SAR + optical bands), two sources:
//! - a folder of `.npy` files, one `(C, H, W)` sample per file (`(H, W)` counts as one
//!   channel), float32 `<f4` or uint8 `|u1` (divided by 255), little-endian C order;
//! - one `.safetensors` file with an `(N, C, H, W)` F32 or U8 tensor under `key`.
//!
//! Labels come from a text file of `name,label` lines (`name` = the `.npy` file stem) or
//! `index,label` lines (safetensors), where a multi-label `label` is a `;`-separated list
//! of class indices (`3;7;12`); or, for safetensors, from an in-file `labels` tensor:
//! `(N,)` integers, or `(N, K)` multi-hot U8/F32. Without labels every sample gets label 0.
//! Every sample must have the same shape. Headers and file lengths are checked when the
//! source opens, so a corrupt `.npy` is reported (or skipped) then, not mid-training.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use safetensors::Dtype;
use safetensors::tensor::TensorInfo;
use serde::{Deserialize, Serialize};

use super::corrupt::{CorruptCount, OnCorrupt};
use super::loader::{DataError, Dataset, Sample};
use super::stats::Normalize;
use super::views::Image;

/// `Arrays((path: "bands/", labels: Some("bands/labels.csv"), val_fraction: 0.2))`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArraysConfig {
    /// A folder of `.npy` files or a `.safetensors` file, relative to the base dir.
    pub path: PathBuf,
    /// The images tensor's name in a safetensors file.
    #[serde(default = "default_key")]
    pub key: String,
    /// The labels text file, relative to the base dir. Default: `labels.csv` in the
    /// folder, or the in-file `labels` tensor of a safetensors file; unlabelled if absent.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// Labels are `;`-separated lists of classes (the samples carry `targets`).
    #[serde(default)]
    pub multi_label: bool,
    /// Number of classes; default: the largest label plus one.
    #[serde(default)]
    pub num_classes: Option<usize>,
    /// Fraction of the samples held out for validation, in `[0, 1)`.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Seed of the train/validation split.
    #[serde(default)]
    pub seed: u64,
    /// What to do with a corrupt `.npy` file (a safetensors file is all or nothing).
    #[serde(default)]
    pub on_corrupt: OnCorrupt,
    /// Channel normalisation (default `Auto`: ImageNet for RGB, computed otherwise).
    #[serde(default)]
    pub normalize: Normalize,
}

fn default_key() -> String {
    "images".to_owned()
}

fn default_val_fraction() -> f64 {
    0.2
}

impl ArraysConfig {
    /// A config for `path` with the defaults.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            key: default_key(),
            labels: None,
            multi_label: false,
            num_classes: None,
            val_fraction: default_val_fraction(),
            seed: 0,
            on_corrupt: OnCorrupt::default(),
            normalize: Normalize::Auto,
        }
    }
}

/// Element type of the stored arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    F32,
    U8,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::U8 => 1,
        }
    }

    fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Self::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Self::U8 => bytes.iter().map(|&b| f32::from(b) / 255.0).collect(),
        }
    }
}

/// Where one sample's values are: a file, a byte offset and the element type.
#[derive(Clone, Debug)]
struct Slot {
    path: PathBuf,
    offset: u64,
    elem: Elem,
}

/// A sample's class and multi-label targets.
#[derive(Clone, Debug, Default, PartialEq)]
struct Label {
    label: usize,
    targets: Vec<u32>,
}

#[derive(Debug)]
struct Store {
    shape: [usize; 3],
    slots: Vec<Slot>,
    labels: Vec<Label>,
    num_classes: usize,
}

/// One split of an arrays source; clones share the data.
#[derive(Clone, Debug)]
pub struct ArraysDataset {
    store: Arc<Store>,
    indices: Vec<usize>,
    corrupt: CorruptCount,
}

impl ArraysDataset {
    /// `[C, H, W]` of every sample.
    pub fn shape(&self) -> [usize; 3] {
        self.store.shape
    }

    /// The corrupt `.npy` files left out (shared by both splits).
    pub fn corrupt(&self) -> &CorruptCount {
        &self.corrupt
    }
}

impl Dataset for ArraysDataset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let &i = self.indices.get(index).ok_or(DataError::IndexOutOfRange {
            index,
            len: self.indices.len(),
        })?;
        let slot = &self.store.slots[i];
        let [c, h, w] = self.store.shape;
        let mut bytes = vec![0; c * h * w * slot.elem.size()];
        let io = |source| DataError::Io {
            path: slot.path.clone(),
            source,
        };
        let mut file = File::open(&slot.path).map_err(io)?;
        file.seek(SeekFrom::Start(slot.offset)).map_err(io)?;
        file.read_exact(&mut bytes).map_err(io)?;
        let Label { label, targets } = self.store.labels[i].clone();
        Ok(Sample {
            image: Image::new(c, h, w, slot.elem.decode(&bytes))?,
            label,
            mask: Vec::new(),
            targets,
        })
    }

    fn num_classes(&self) -> usize {
        self.store.num_classes
    }
}

/// Opens the source at `cfg.path` (joined to `base_dir` when relative) and splits it
/// into `(train, validation)` by `cfg.val_fraction`, reproducibly for `cfg.seed`.
pub fn open(
    cfg: &ArraysConfig,
    base_dir: Option<&Path>,
) -> Result<(ArraysDataset, ArraysDataset), DataError> {
    if !(0.0..1.0).contains(&cfg.val_fraction) {
        return Err(DataError::InvalidConfig {
            field: "val_fraction",
            value: cfg.val_fraction.to_string(),
            reason: "must be in [0, 1)",
        });
    }
    let resolve = |p: &Path| base_dir.map_or_else(|| p.to_owned(), |b| b.join(p));
    let path = resolve(&cfg.path);
    let labels_file = cfg.labels.as_deref().map(resolve);
    let corrupt = CorruptCount::new();
    let meta = std::fs::metadata(&path).map_err(|source| DataError::Io {
        path: path.clone(),
        source,
    })?;
    let store = if meta.is_dir() {
        open_folder(cfg, &path, labels_file, &corrupt)?
    } else {
        open_safetensors(cfg, &path, labels_file)?
    };
    let mut order: Vec<usize> = (0..store.slots.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed));
    let n_val = (order.len() as f64 * cfg.val_fraction).round() as usize;
    let mut val = order.split_off(order.len() - n_val.min(order.len()));
    order.sort_unstable();
    val.sort_unstable();
    let store = Arc::new(store);
    let split = |indices| ArraysDataset {
        store: Arc::clone(&store),
        indices,
        corrupt: corrupt.clone(),
    };
    Ok((split(order), split(val)))
}

fn corrupt_err(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Corrupt {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

// ---- npy folder ----

fn open_folder(
    cfg: &ArraysConfig,
    dir: &Path,
    labels_file: Option<PathBuf>,
    corrupt: &CorruptCount,
) -> Result<Store, DataError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DataError::Io { path, source }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()).map_err(io(dir)))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.is_file() && p.extension().is_some_and(|e| e == "npy"));
    files.sort();
    if files.is_empty() {
        return Err(DataError::InvalidConfig {
            field: "path",
            value: dir.display().to_string(),
            reason: "the folder holds no .npy files",
        });
    }
    let mut shape: Option<([usize; 3], PathBuf)> = None;
    let mut slots = Vec::new();
    for path in files {
        let (got, offset, elem) = match npy_header(&path) {
            Ok(h) => h,
            Err(err) => {
                corrupt.handle(cfg.on_corrupt, err, file_name(&path))?;
                continue;
            }
        };
        match &shape {
            None => shape = Some((got, path.clone())),
            Some((expected, first)) if *expected != got => {
                return Err(corrupt_err(
                    &path,
                    format!(
                        "shape {got:?} differs from {expected:?} of '{}'",
                        first.display()
                    ),
                ));
            }
            Some(_) => {}
        }
        slots.push(Slot { path, offset, elem });
    }
    let Some((shape, _)) = shape else {
        return Err(DataError::Empty);
    };
    let default_labels = dir.join("labels.csv");
    let labels_file = labels_file.or_else(|| default_labels.is_file().then_some(default_labels));
    let (labels, max) = match labels_file {
        None => (vec![Label::default(); slots.len()], None),
        Some(file) => {
            let table = read_label_file(&file, cfg.multi_label)?;
            let labels = slots
                .iter()
                .map(|s| {
                    let stem = s.path.file_stem().unwrap_or_default().to_string_lossy();
                    table.get(stem.as_ref()).cloned().ok_or_else(|| {
                        corrupt_err(&file, format!("no label for '{}'", file_name(&s.path)))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let max = max_class(&labels);
            (labels, Some((file, max)))
        }
    };
    let num_classes = check_classes(cfg.num_classes, max)?;
    Ok(Store {
        shape,
        slots,
        labels,
        num_classes,
    })
}

/// Reads and checks a `.npy` header: the shape as `[C, H, W]`, the data offset and the
/// element type. The file length must match the shape exactly.
fn npy_header(path: &Path) -> Result<([usize; 3], u64, Elem), DataError> {
    let io = |source| DataError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut head = Vec::new();
    file.take(1 << 16).read_to_end(&mut head).map_err(io)?;
    let bad = |reason: String| corrupt_err(path, reason);
    if !head.starts_with(b"\x93NUMPY") || head.len() < 10 {
        return Err(bad("not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let (len, start) = match (head[6], head.get(8..12)) {
        (1, _) => (
            usize::from(u16::from_le_bytes([head[8], head[9]])),
            10_usize,
        ),
        (2 | 3, Some(&[a, b, c, d])) => {
            let len = u32::from_le_bytes([a, b, c, d]);
            (usize::try_from(len).unwrap_or(usize::MAX), 12)
        }
        (v @ (2 | 3), _) => return Err(bad(format!("truncated version {v} header"))),
        (v, _) => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    let dict = head
        .get(start..start.saturating_add(len))
        .ok_or_else(|| bad("truncated header".into()))?;
    let dict = String::from_utf8_lossy(dict);
    let descr = dict_value(&dict, "descr")
        .and_then(|v| v.strip_prefix('\'').or_else(|| v.strip_prefix('"')))
        .and_then(|v| v.split(['\'', '"']).next())
        .ok_or_else(|| bad(format!("header has no 'descr': {}", dict.trim())))?;
    let elem = match descr {
        "<f4" => Elem::F32,
        "|u1" | "<u1" | "u1" => Elem::U8,
        other => {
            return Err(bad(format!(
                "dtype '{other}' is not supported (need little-endian float32 '<f4' or uint8 '|u1')"
            )));
        }
    };
    if dict_value(&dict, "fortran_order").is_none_or(|v| !v.starts_with("False")) {
        return Err(bad(
            "Fortran-order arrays are not supported (save C order)".into()
        ));
    }
    let dims: Option<Vec<usize>> = dict_value(&dict, "shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(|d| d.parse().ok())
                .collect()
        })
        .and_then(|d: Option<Vec<usize>>| d);
    let shape = match dims.as_deref() {
        Some(&[c, h, w]) => [c, h, w],
        Some(&[h, w]) => [1, h, w],
        _ => return Err(bad(format!("shape must be (C, H, W): {}", dict.trim()))),
    };
    let offset = (start + len) as u64;
    let expected = shape
        .iter()
        .try_fold(elem.size() as u64, |acc, &d| acc.checked_mul(d as u64))
        .and_then(|n| n.checked_add(offset));
    if expected != Some(file_len) {
        let need = expected.map_or_else(|| "overflowing".into(), |n| n.to_string());
        return Err(bad(format!(
            "{file_len} bytes, shape {shape:?} needs {need} (truncated?)"
        )));
    }
    Ok((shape, offset, elem))
}

/// The text after `'key':` in a Python dict literal.
fn dict_value<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let at = dict
        .find(&format!("'{key}'"))
        .or_else(|| dict.find(&format!("\"{key}\"")))?;
    let rest = dict[at + key.len() + 2..].trim_start().strip_prefix(':')?;
    Some(rest.trim_start())
}

// ---- labels ----

/// Parses `key,label` lines into a map; a first line whose label is not a number is a
/// header. Blank lines and `#` comments are ignored.
fn read_label_file(path: &Path, multi: bool) -> Result<HashMap<String, Label>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut table = HashMap::new();
    let mut first = true;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| corrupt_err(path, format!("line {}: {reason}", n + 1));
        let (key, value) = line
            .split_once(',')
            .ok_or_else(|| bad(format!("expected 'name,label', got '{line}'")))?;
        let label = parse_label(value.trim(), multi);
        if std::mem::take(&mut first) && label.is_none() {
            continue;
        }
        let label = label.ok_or_else(|| {
            let want = if multi {
                "class indices separated by ';'"
            } else {
                "a class index"
            };
            bad(format!("label '{}' is not {want}", value.trim()))
        })?;
        if table.insert(key.trim().to_owned(), label).is_some() {
            return Err(bad(format!("'{}' is listed twice", key.trim())));
        }
    }
    Ok(table)
}

fn parse_label(value: &str, multi: bool) -> Option<Label> {
    if !multi {
        return value.parse().ok().map(|label| Label {
            label,
            targets: Vec::new(),
        });
    }
    let mut targets: Vec<u32> = value
        .split(';')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    targets.sort_unstable();
    targets.dedup();
    Some(Label {
        label: targets.first().map_or(0, |&t| t as usize),
        targets,
    })
}

/// The largest class index any label mentions.
fn max_class(labels: &[Label]) -> Option<usize> {
    labels
        .iter()
        .flat_map(|l| std::iter::once(l.label).chain(l.targets.iter().map(|&t| t as usize)))
        .max()
}

/// The class count: `configured` (checked against `max` from `file`) or `max + 1`.
fn check_classes(
    configured: Option<usize>,
    max: Option<(PathBuf, Option<usize>)>,
) -> Result<usize, DataError> {
    let Some((file, max)) = max else {
        return Ok(configured.unwrap_or(0));
    };
    let inferred = max.map_or(0, |m| m + 1);
    match configured {
        Some(n) if n < inferred => Err(corrupt_err(
            &file,
            format!("class {} is out of range for num_classes {n}", inferred - 1),
        )),
        Some(n) => Ok(n),
        None => Ok(inferred),
    }
}

// ---- safetensors ----

fn open_safetensors(
    cfg: &ArraysConfig,
    path: &Path,
    labels_file: Option<PathBuf>,
) -> Result<Store, DataError> {
    let bad = |reason: String| corrupt_err(path, reason);
    let (infos, data_start, file_len) = safetensors_header(path)?;
    let info = infos.get(&cfg.key).ok_or_else(|| {
        let mut names: Vec<&str> = infos.keys().map(String::as_str).collect();
        names.sort_unstable();
        bad(format!("no tensor '{}' (it holds {names:?})", cfg.key))
    })?;
    let elem = match info.dtype {
        Dtype::F32 => Elem::F32,
        Dtype::U8 => Elem::U8,
        other => {
            return Err(bad(format!(
                "tensor '{}' is {other:?}, need F32 or U8",
                cfg.key
            )));
        }
    };
    let &[n, c, h, w] = info.shape.as_slice() else {
        return Err(bad(format!(
            "tensor '{}' has shape {:?}, need (N, C, H, W)",
            cfg.key, info.shape
        )));
    };
    let (start, end) = info.data_offsets;
    let sample = [c, h, w]
        .iter()
        .try_fold(elem.size(), |a, &d| a.checked_mul(d));
    let total = sample.and_then(|s| s.checked_mul(n));
    let sample = sample.unwrap_or(0);
    if total.is_none()
        || end.checked_sub(start) != total
        || data_start.saturating_add(end as u64) > file_len
    {
        return Err(bad(format!(
            "tensor '{}' has bad data offsets (truncated?)",
            cfg.key
        )));
    }
    let slots = (0..n)
        .map(|i| Slot {
            path: path.to_owned(),
            offset: data_start + (start + i * sample) as u64,
            elem,
        })
        .collect();
    let (labels, max) = match (labels_file, infos.get("labels")) {
        (Some(file), _) => {
            let table = read_label_file(&file, cfg.multi_label)?;
            let mut labels = vec![None; n];
            for (key, label) in table {
                let i = key
                    .parse::<usize>()
                    .ok()
                    .filter(|&i| i < n)
                    .ok_or_else(|| {
                        corrupt_err(&file, format!("'{key}' is not a sample index below {n}"))
                    })?;
                labels[i] = Some(label);
            }
            let labels = labels
                .into_iter()
                .enumerate()
                .map(|(i, l)| l.ok_or_else(|| corrupt_err(&file, format!("no label for {i}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let max = max_class(&labels);
            (labels, Some((file, max)))
        }
        (None, Some(info)) => {
            let labels = tensor_labels(path, data_start, info, n, cfg.multi_label)?;
            let max = match *info.shape.as_slice() {
                [_, k] => k.checked_sub(1),
                _ => max_class(&labels),
            };
            (labels, Some((path.to_owned(), max)))
        }
        (None, None) => (vec![Label::default(); n], None),
    };
    Ok(Store {
        shape: [c, h, w],
        slots,
        labels,
        num_classes: check_classes(cfg.num_classes, max)?,
    })
}

/// The tensor table, the byte offset of the data section and the file length.
fn safetensors_header(path: &Path) -> Result<(HashMap<String, TensorInfo>, u64, u64), DataError> {
    let io = |source| DataError::Io {
        path: path.to_owned(),
        source,
    };
    let bad = |reason: String| corrupt_err(path, reason);
    let mut file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut n = [0; 8];
    file.read_exact(&mut n)
        .map_err(|_| bad("shorter than a safetensors header".into()))?;
    let n = u64::from_le_bytes(n);
    if n > 100 << 20 || 8 + n > file_len {
        return Err(bad(format!(
            "header length {n} does not fit a {file_len}-byte file"
        )));
    }
    let mut header = vec![0; n as usize];
    file.read_exact(&mut header).map_err(io)?;
    let mut table: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    table.remove("__metadata__");
    let infos = table
        .into_iter()
        .map(|(k, v)| {
            let info = serde_json::from_value(v).map_err(|e| bad(format!("tensor '{k}': {e}")))?;
            Ok((k, info))
        })
        .collect::<Result<_, DataError>>()?;
    Ok((infos, 8 + n, file_len))
}

/// Labels from an in-file tensor: `(N,)` integers or `(N, K)` multi-hot U8/F32.
fn tensor_labels(
    path: &Path,
    data_start: u64,
    info: &TensorInfo,
    n: usize,
    multi: bool,
) -> Result<Vec<Label>, DataError> {
    let bad = |reason: String| corrupt_err(path, format!("tensor 'labels': {reason}"));
    let (start, end) = info.data_offsets;
    let mut bytes = vec![0; end.saturating_sub(start)];
    let mut file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    file.seek(SeekFrom::Start(data_start + start as u64))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| bad(e.to_string()))?;
    let width = match info.dtype {
        Dtype::U8 => 1,
        Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
        Dtype::I64 => 8,
        other => {
            return Err(bad(format!(
                "dtype {other:?} is not U8, U32, I32, I64 or F32"
            )));
        }
    };
    let values: Vec<f64> = bytes
        .chunks_exact(width)
        .map(|b| match info.dtype {
            Dtype::U8 => f64::from(b[0]),
            Dtype::U32 => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Dtype::I32 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Dtype::F32 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            _ => i64::from_le_bytes(b.try_into().unwrap_or_default()) as f64,
        })
        .collect();
    let per_row = match *info.shape.as_slice() {
        [_, k] => k,
        _ => 1,
    };
    if values.len() != n.saturating_mul(per_row) {
        return Err(bad(format!(
            "{} values for shape {:?}",
            values.len(),
            info.shape
        )));
    }
    match *info.shape.as_slice() {
        [m] if m == n && info.dtype != Dtype::F32 => values
            .iter()
            .map(|&v| {
                if v < 0.0 {
                    return Err(bad(format!("negative label {v}")));
                }
                let label = v as usize;
                let targets = if multi {
                    vec![label as u32]
                } else {
                    Vec::new()
                };
                Ok(Label { label, targets })
            })
            .collect(),
        [m, k] if m == n && k > 0 => {
            if !multi {
                return Err(bad(
                    "an (N, K) multi-hot tensor needs multi_label: true".into()
                ));
            }
            Ok(values
                .chunks_exact(k)
                .map(|row| {
                    let targets: Vec<u32> =
                        (0..k as u32).filter(|&j| row[j as usize] > 0.5).collect();
                    Label {
                        label: targets.first().map_or(0, |&t| t as usize),
                        targets,
                    }
                })
                .collect())
        }
        _ => Err(bad(format!(
            "shape {:?} ({:?}) is neither ({n},) integers nor ({n}, K) multi-hot",
            info.shape, info.dtype
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("patchwork-arrays-{name}-{}", std::process::id()));
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

    /// A version-1 `.npy` file, header padded to 64 bytes as numpy does.
    fn npy(descr: &str, fortran: bool, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
        let fortran = if fortran { "True" } else { "False" };
        let mut dict = format!(
            "{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': ({},), }}",
            dims.join(", ")
        );
        while (10 + dict.len() + 1) % 64 != 0 {
            dict.push(' ');
        }
        dict.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((dict.len() as u16).to_le_bytes());
        out.extend(dict.as_bytes());
        out.extend(data);
        out
    }

    fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
        values.into_iter().flat_map(f32::to_le_bytes).collect()
    }

    /// Value of sample `s` at channel `c`, pixel `p` in the float files.
    fn value(s: usize, c: usize, p: usize) -> f32 {
        s as f32 + c as f32 * 0.01 + p as f32 * 0.0001
    }

    const SHAPE: [usize; 3] = [14, 4, 3];
    const PLANE: usize = 12;

    /// `a.npy` (float32), `b.npy` (uint8), `c.npy` (float32) and a labels file.
    fn folder(dir: &Path, labels: &str) {
        let floats = |s| f32_bytes((0..14 * PLANE).map(|i| value(s, i / PLANE, i % PLANE)));
        std::fs::write(dir.join("a.npy"), npy("<f4", false, &SHAPE, &floats(0))).unwrap();
        let bytes: Vec<u8> = (0..14 * PLANE).map(|i| (i % 256) as u8).collect();
        std::fs::write(dir.join("b.npy"), npy("|u1", false, &SHAPE, &bytes)).unwrap();
        std::fs::write(dir.join("c.npy"), npy("<f4", false, &SHAPE, &floats(2))).unwrap();
        std::fs::write(dir.join("labels.csv"), labels).unwrap();
    }

    fn no_split(path: &Path) -> ArraysConfig {
        ArraysConfig {
            val_fraction: 0.0,
            ..ArraysConfig::new(path)
        }
    }

    #[test]
    fn reads_a_folder_of_float_and_byte_npy_files() {
        let tmp = TempDir::new("folder");
        folder(&tmp.0, "name,label\na,2\nb,0\n\nc,5\n");
        let (train, val) = open(&no_split(&tmp.0), None).unwrap();
        assert_eq!((train.len(), val.len()), (3, 0));
        assert_eq!(train.shape(), SHAPE);
        assert_eq!(train.num_classes(), 6);
        let a = train.get(0).unwrap();
        assert_eq!(
            (a.image.channels, a.image.height, a.image.width),
            (14, 4, 3)
        );
        assert_eq!(a.image.at(13, 3, 2), value(0, 13, 11));
        assert_eq!(a.image.at(5, 1, 0), value(0, 5, 3));
        assert_eq!((a.label, a.targets.clone()), (2, vec![]));
        let b = train.get(1).unwrap();
        assert_eq!(b.image.at(1, 0, 1), 13.0 / 255.0);
        assert_eq!(b.label, 0);
        let c = train.get(2).unwrap();
        assert_eq!((c.label, c.image.at(0, 0, 0)), (5, 2.0));
        assert!(train.corrupt().is_empty());
    }

    #[test]
    fn multi_label_csv_gives_sorted_targets() {
        let tmp = TempDir::new("multi");
        folder(&tmp.0, "a,12;3;7\nb,\nc,4\n");
        let cfg = ArraysConfig {
            multi_label: true,
            num_classes: Some(20),
            ..no_split(&tmp.0)
        };
        let (train, _) = open(&cfg, None).unwrap();
        assert_eq!(train.num_classes(), 20);
        let a = train.get(0).unwrap();
        assert_eq!((a.label, a.targets), (3, vec![3, 7, 12]));
        let b = train.get(1).unwrap();
        assert_eq!((b.label, b.targets), (0, vec![]));
        assert_eq!(train.get(2).unwrap().targets, [4]);

        let too_few = ArraysConfig {
            num_classes: Some(10),
            ..cfg
        };
        let err = open(&too_few, None).unwrap_err().to_string();
        assert!(
            err.contains("labels.csv") && err.contains("class 12"),
            "{err}"
        );
    }

    #[test]
    fn label_file_errors_name_the_file_and_line() {
        let tmp = TempDir::new("badlabels");
        folder(&tmp.0, "a,1\nb,x\nc,2\n");
        let err = open(&no_split(&tmp.0), None).unwrap_err().to_string();
        assert!(
            err.contains("labels.csv") && err.contains("line 2"),
            "{err}"
        );
        std::fs::write(tmp.0.join("labels.csv"), "a,1\nc,2\n").unwrap();
        let err = open(&no_split(&tmp.0), None).unwrap_err().to_string();
        assert!(err.contains("no label for 'b.npy'"), "{err}");
    }

    #[test]
    fn corrupt_npy_files_fail_or_are_skipped() {
        let tmp = TempDir::new("corrupt");
        folder(&tmp.0, "a,1\nb,2\nc,3\n");
        let mut truncated = std::fs::read(tmp.0.join("b.npy")).unwrap();
        truncated.truncate(truncated.len() - 5);
        std::fs::write(tmp.0.join("b.npy"), truncated).unwrap();
        let mut cfg = no_split(&tmp.0);
        match open(&cfg, None) {
            Err(DataError::Corrupt { path, reason }) => {
                assert!(path.ends_with("b.npy"), "{path:?}");
                assert!(reason.contains("truncated"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        cfg.on_corrupt = OnCorrupt::Skip;
        let (train, _) = open(&cfg, None).unwrap();
        assert_eq!(train.len(), 2);
        assert_eq!(train.corrupt().count(), 1);
        assert_eq!(train.corrupt().names(), ["b.npy"]);
        assert_eq!(train.get(1).unwrap().label, 3);
    }

    #[test]
    fn unsupported_layouts_are_named_errors() {
        let tmp = TempDir::new("layouts");
        folder(&tmp.0, "a,1\nb,2\nc,3\n");
        let data = f32_bytes(vec![0.0; 14 * PLANE]);
        let cases = [
            (npy("<f4", true, &SHAPE, &data), "Fortran"),
            (npy("<f8", false, &SHAPE, &data), "'<f8'"),
            (npy(">f4", false, &SHAPE, &data), "'>f4'"),
            (b"hello".to_vec(), "not a .npy"),
        ];
        for (bytes, needle) in cases {
            std::fs::write(tmp.0.join("c.npy"), bytes).unwrap();
            let err = open(&no_split(&tmp.0), None).unwrap_err().to_string();
            assert!(
                err.contains("c.npy") && err.contains(needle),
                "{needle}: {err}"
            );
        }
        let small = f32_bytes(vec![0.0; 3 * PLANE]);
        std::fs::write(tmp.0.join("c.npy"), npy("<f4", false, &[3, 4, 3], &small)).unwrap();
        let err = open(&no_split(&tmp.0), None).unwrap_err().to_string();
        assert!(err.contains("c.npy") && err.contains("a.npy"), "{err}");
    }

    fn write_safetensors(path: &Path, tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>) {
        let views: Vec<(&str, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, dtype, shape, data)| {
                (*name, TensorView::new(*dtype, shape.clone(), data).unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    #[test]
    fn reads_safetensors_with_in_file_labels() {
        let tmp = TempDir::new("st");
        let path = tmp.0.join("bands.safetensors");
        let n = 5;
        let images = f32_bytes((0..n * 14 * PLANE).map(|i| i as f32));
        let labels: Vec<u8> = (0..n as i64).flat_map(|i| (i * 2).to_le_bytes()).collect();
        write_safetensors(
            &path,
            vec![
                ("images", Dtype::F32, vec![n, 14, 4, 3], images.clone()),
                ("labels", Dtype::I64, vec![n], labels),
            ],
        );
        let cfg = no_split(Path::new("bands.safetensors"));
        let (train, _) = open(&cfg, Some(&tmp.0)).unwrap();
        assert_eq!(
            (train.len(), train.shape(), train.num_classes()),
            (5, SHAPE, 9)
        );
        let s = train.get(3).unwrap();
        assert_eq!(s.label, 6);
        assert_eq!(s.image.at(0, 0, 0), (3 * 14 * PLANE) as f32);
        assert_eq!(s.image.at(2, 1, 1), (3 * 14 * PLANE + 2 * PLANE + 4) as f32);

        // Multi-hot (N, K) labels under a custom key, U8 images.
        let bytes: Vec<u8> = (0..n * 14 * PLANE).map(|i| (i % 251) as u8).collect();
        let mut hot = vec![0u8; n * 4];
        hot[4 + 3] = 1;
        hot[4 + 1] = 1;
        write_safetensors(
            &path,
            vec![
                ("x", Dtype::U8, vec![n, 14, 4, 3], bytes),
                ("labels", Dtype::U8, vec![n, 4], hot),
            ],
        );
        let cfg = ArraysConfig {
            key: "x".into(),
            multi_label: true,
            ..no_split(&path)
        };
        let (train, _) = open(&cfg, None).unwrap();
        assert_eq!(train.num_classes(), 4);
        let s = train.get(1).unwrap();
        assert_eq!((s.label, s.targets), (1, vec![1, 3]));
        assert_eq!(s.image.at(0, 0, 1), ((14 * PLANE + 1) % 251) as f32 / 255.0);
        assert!(train.get(0).unwrap().targets.is_empty());

        let err = open(&no_split(&path), None).unwrap_err().to_string();
        assert!(
            err.contains("no tensor 'images'") && err.contains("\"x\""),
            "{err}"
        );
    }

    #[test]
    fn safetensors_with_a_csv_and_a_seeded_split() {
        let tmp = TempDir::new("split");
        let path = tmp.0.join("d.safetensors");
        let n = 10;
        let images = f32_bytes((0..n).map(|i| i as f32));
        write_safetensors(
            &path,
            vec![("images", Dtype::F32, vec![n, 1, 1, 1], images)],
        );
        let csv: String = (0..n).map(|i| format!("{i},{}\n", i % 3)).collect();
        std::fs::write(tmp.0.join("labels.csv"), csv).unwrap();
        let cfg = ArraysConfig {
            labels: Some(PathBuf::from("labels.csv")),
            val_fraction: 0.3,
            seed: 4,
            ..ArraysConfig::new("d.safetensors")
        };
        let (train, val) = open(&cfg, Some(&tmp.0)).unwrap();
        assert_eq!((train.len(), val.len(), train.num_classes()), (7, 3, 3));
        let ids = |ds: &ArraysDataset| -> Vec<usize> {
            (0..ds.len())
                .map(|i| ds.get(i).unwrap().image.data[0] as usize)
                .collect()
        };
        let (t, v) = (ids(&train), ids(&val));
        let mut all = [t.clone(), v.clone()].concat();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
        for i in 0..val.len() {
            let s = val.get(i).unwrap();
            assert_eq!(s.label, s.image.data[0] as usize % 3);
        }
        let (train2, val2) = open(&cfg, Some(&tmp.0)).unwrap();
        assert_eq!((ids(&train2), ids(&val2)), (t, v));
    }

    #[test]
    fn config_reads_from_ron_with_defaults() {
        let cfg: ArraysConfig = ron::from_str("(path: \"x\")").unwrap();
        assert_eq!(cfg, ArraysConfig::new("x"));
        assert_eq!(cfg.key, "images");
        assert!(ron::from_str::<ArraysConfig>("(path: \"x\", bands: 3)").is_err());
        let bad = ArraysConfig {
            val_fraction: 1.0,
            ..ArraysConfig::new("x")
        };
        assert!(matches!(
            open(&bad, None),
            Err(DataError::InvalidConfig {
                field: "val_fraction",
                ..
            })
        ));
    }
}
