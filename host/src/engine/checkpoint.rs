//! Safetensors checkpoints with metadata, written atomically.
//!
//! A checkpoint is a list of named tensors (weights, optimizer state, EMA teacher, ...) plus
//! a string-to-string metadata map stored in the safetensors header (`__metadata__`):
//! step, epoch, RNG state, JSON blobs. Files are named `step-<9 digits>.safetensors`
//! ([`file_name`]) in a checkpoint directory.
//!
//! [`save`] writes `<path>.tmp` in the same directory, fsyncs it, renames it over `<path>`
//! and fsyncs the directory, so a crash or a full disk leaves either the old file or the
//! new one, never a torn file. [`latest`] only considers complete `step-*.safetensors`
//! names, so a leftover `.tmp` is never picked up; [`prune`] deletes the leftovers that a
//! newer complete checkpoint has superseded.
//!
//! # Checksum
//!
//! Every file carries a CRC-32 of its contents in the metadata entry [`CHECKSUM_KEY`], as
//! `crc32:<8 hex digits>`, and [`load`] recomputes it: a flipped byte anywhere in the
//! tensor data, a tensor's name, dtype or shape, or a metadata entry is reported as
//! [`CheckpointError::Corrupt`] instead of being loaded. CRC-32 detects every error burst
//! of up to 32 bits, so a single flipped byte is always caught. The checksummed input is,
//! with integers as `u64` little-endian and every string or byte run prefixed by its
//! length: the tensor count, then per tensor in name order the name, the dtype (`F32`,
//! `F64`, `U8`, `U32`, `I64`), the rank, each dimension and the data bytes; then the count
//! of metadata entries other than the checksum, and each of them in key order as key and
//! value. Files without a checksum (written before it existed) load with a warning.
//!
//! # Test hook
//!
//! [`save`] reads the environment variable [`FAULT_ENV`] (`PATCHWORK_FAULT`). When it is
//! `abort-before-rename`, or `abort-before-rename:<file name>` and the checkpoint being
//! written has that file name (e.g. `step-000000003.safetensors`), the process aborts
//! after the temporary file is written and synced but before it is renamed: the
//! end-to-end fault drills use it to simulate a `kill -9` in the middle of a save. Any
//! other value is ignored.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensorError, SafeTensors, View};

/// The metadata key that holds the checksum (see the module docs); [`save`] sets it and
/// [`load`] checks and removes it, so callers never see it.
pub const CHECKSUM_KEY: &str = "checksum";

/// The environment variable of the crash test hook (see the module docs).
pub const FAULT_ENV: &str = "PATCHWORK_FAULT";

/// Errors from saving, loading and listing checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The checkpoint file does not exist.
    #[error("checkpoint '{}' not found", path.display())]
    NotFound {
        /// The missing file.
        path: PathBuf,
    },
    /// The file exists but is not a readable safetensors checkpoint.
    #[error("checkpoint '{}' is corrupt: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading, writing, syncing or renaming failed.
    #[error("i/o error on checkpoint '{}': {source}", path.display())]
    Io {
        /// The checkpoint (or checkpoint directory) concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A tensor's shape in the checkpoint differs from the model's: the checkpoint was
    /// written by a differently configured model.
    #[error(
        "checkpoint '{}' does not fit the model: tensor '{tensor}' has shape {checkpoint:?} \
         in the checkpoint but {model:?} in the model (was the model's config changed since \
         it was written? resume with that config, or start a new run)",
        path.display()
    )]
    ShapeMismatch {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor's name in the checkpoint.
        tensor: String,
        /// Its shape in the checkpoint.
        checkpoint: Vec<usize>,
        /// The shape the model has.
        model: Vec<usize>,
    },
    /// A tensor has a dtype this module does not store.
    #[error(
        "cannot save tensor '{name}' of dtype '{dtype:?}' to checkpoint '{}' \
         (supported: f32, f64, u8, u32, i64; convert it first)",
        path.display()
    )]
    UnsupportedDtype {
        /// The checkpoint being written.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// Its dtype.
        dtype: DType,
    },
    /// Two tensors share a name.
    #[error("duplicate tensor name '{name}' in checkpoint '{}'", path.display())]
    DuplicateName {
        /// The checkpoint being written.
        path: PathBuf,
        /// The repeated name.
        name: String,
    },
    /// The safetensors encoder refused the data (for example a header over 100 MB).
    #[error("cannot encode checkpoint '{}': {reason}", path.display())]
    Encode {
        /// The checkpoint being written.
        path: PathBuf,
        /// The encoder's message.
        reason: String,
    },
    /// A tensor could not be moved to or from the target device.
    #[error("tensor error on checkpoint '{}': {source}", path.display())]
    Tensor {
        /// The checkpoint concerned.
        path: PathBuf,
        /// The underlying error.
        source: candle_core::Error,
    },
}

/// Named tensors and metadata.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    /// Tensors in any order; names must be unique. [`load`] returns them sorted by name.
    pub tensors: Vec<(String, Tensor)>,
    /// Free-form metadata (step, epoch, RNG state, JSON strings, ...). The key
    /// [`CHECKSUM_KEY`] is reserved: [`save`] replaces it.
    pub metadata: BTreeMap<String, String>,
}

impl Checkpoint {
    /// The tensor called `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// The file name of the checkpoint for `step`: `step-000000123.safetensors`.
pub fn file_name(step: u64) -> String {
    format!("step-{step:09}.safetensors")
}

/// The step encoded in a checkpoint file name, or `None` if the name is not one
/// ([`file_name`]'s format; more than nine digits are accepted).
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?.strip_suffix(".safetensors")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One tensor prepared for writing: on the CPU, contiguous, of a supported dtype.
struct Entry {
    tensor: Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
}

fn st_dtype(dtype: DType) -> Option<Dtype> {
    match dtype {
        DType::F32 => Some(Dtype::F32),
        DType::F64 => Some(Dtype::F64),
        DType::U8 => Some(Dtype::U8),
        DType::U32 => Some(Dtype::U32),
        DType::I64 => Some(Dtype::I64),
        _ => None,
    }
}

/// Little-endian bytes of a CPU tensor.
fn tensor_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    fn pack<T, const N: usize>(values: Vec<T>, to_le: fn(T) -> [u8; N]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * N);
        for v in values {
            out.extend_from_slice(&to_le(v));
        }
        out
    }
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => pack(flat.to_vec1::<f32>()?, f32::to_le_bytes),
        DType::F64 => pack(flat.to_vec1::<f64>()?, f64::to_le_bytes),
        DType::U8 => flat.to_vec1::<u8>()?,
        DType::U32 => pack(flat.to_vec1::<u32>()?, u32::to_le_bytes),
        DType::I64 => pack(flat.to_vec1::<i64>()?, i64::to_le_bytes),
        other => candle_core::bail!("unsupported dtype {other:?}"),
    })
}

/// The dtype as the checksum spells it.
fn dtype_tag(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F32 => "F32",
        Dtype::F64 => "F64",
        Dtype::U8 => "U8",
        Dtype::U32 => "U32",
        Dtype::I64 => "I64",
        // Not stored by this module; `load` refuses them after the checksum.
        _ => "other",
    }
}

/// The CRC-32 over a checkpoint's contents, fed in the order the module docs give.
struct Digest(crc32fast::Hasher);

impl Digest {
    const PREFIX: &'static str = "crc32:";

    fn new(n_tensors: usize) -> Self {
        let mut d = Self(crc32fast::Hasher::new());
        d.int(n_tensors);
        d
    }

    fn int(&mut self, n: usize) {
        self.0.update(&(n as u64).to_le_bytes());
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.int(bytes.len());
        self.0.update(bytes);
    }

    fn tensor(&mut self, name: &str, dtype: Dtype, shape: &[usize], data: &[u8]) {
        self.bytes(name.as_bytes());
        self.bytes(dtype_tag(dtype).as_bytes());
        self.int(shape.len());
        for &d in shape {
            self.int(d);
        }
        self.bytes(data);
    }

    /// Adds the metadata (without [`CHECKSUM_KEY`]) and returns `crc32:<8 hex digits>`.
    fn finish(mut self, metadata: &BTreeMap<String, String>) -> String {
        let entries: Vec<_> = metadata
            .iter()
            .filter(|(k, _)| *k != CHECKSUM_KEY)
            .collect();
        self.int(entries.len());
        for (k, v) in entries {
            self.bytes(k.as_bytes());
            self.bytes(v.as_bytes());
        }
        format!("{}{:08x}", Self::PREFIX, self.0.finalize())
    }
}

impl View for Entry {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        // Bytes are produced one tensor at a time while the file is written.
        Cow::Owned(
            tensor_bytes(&self.tensor)
                .expect("a contiguous cpu tensor of a checked dtype should convert to bytes"),
        )
    }

    fn data_len(&self) -> usize {
        self.tensor.elem_count() * self.tensor.dtype().size_in_bytes()
    }
}

/// `<path>.tmp`, in the same directory as `path`.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `ckpt` to `path` atomically, with its checksum (see the module docs). Tensors
/// may live on any device; they are copied to the CPU with their dtype unchanged. On error
/// the previous file at `path`, if any, is untouched and the temporary file is removed.
pub fn save(path: &Path, ckpt: &Checkpoint) -> Result<(), CheckpointError> {
    let mut seen = HashSet::with_capacity(ckpt.tensors.len());
    let mut entries = Vec::with_capacity(ckpt.tensors.len());
    for (name, tensor) in &ckpt.tensors {
        if !seen.insert(name.as_str()) {
            return Err(CheckpointError::DuplicateName {
                path: path.to_path_buf(),
                name: name.clone(),
            });
        }
        let Some(dtype) = st_dtype(tensor.dtype()) else {
            return Err(CheckpointError::UnsupportedDtype {
                path: path.to_path_buf(),
                name: name.clone(),
                dtype: tensor.dtype(),
            });
        };
        let tensor = tensor
            .to_device(&Device::Cpu)
            .and_then(|t| t.contiguous())
            .map_err(|source| CheckpointError::Tensor {
                path: path.to_path_buf(),
                source,
            })?;
        let shape = tensor.dims().to_vec();
        entries.push((
            name.clone(),
            Entry {
                tensor,
                dtype,
                shape,
            },
        ));
    }
    let checksum = {
        let mut order: Vec<&(String, Entry)> = entries.iter().collect();
        order.sort_by(|a, b| a.0.cmp(&b.0));
        let mut digest = Digest::new(order.len());
        for (name, e) in order {
            // Converted once here and again while writing: one tensor in memory at a time.
            let bytes = tensor_bytes(&e.tensor).map_err(|source| CheckpointError::Tensor {
                path: path.to_path_buf(),
                source,
            })?;
            digest.tensor(name, e.dtype, &e.shape, &bytes);
        }
        digest.finish(&ckpt.metadata)
    };
    let mut metadata: HashMap<String, String> = ckpt.metadata.clone().into_iter().collect();
    metadata.insert(CHECKSUM_KEY.to_string(), checksum);

    let tmp = tmp_path(path);
    let result = write_synced(&tmp, entries, Some(metadata), path).and_then(|()| {
        if abort_requested(path) {
            std::process::abort();
        }
        fs::rename(&tmp, path).map_err(io_err(path))?;
        sync_dir(path)
    });
    if result.is_err() {
        // Best effort: the temporary file may not exist, and the original error matters more.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Whether the test hook asks [`save`] to abort before renaming the file for `path`.
fn abort_requested(path: &Path) -> bool {
    std::env::var_os(FAULT_ENV).is_some_and(|v| fault_matches(&v.to_string_lossy(), path))
}

/// Whether the hook value `value` names an abort before renaming the file for `path`.
fn fault_matches(value: &str, path: &Path) -> bool {
    const ABORT: &str = "abort-before-rename";
    match value.split_once(':') {
        None => value == ABORT,
        Some((what, file)) => what == ABORT && path.file_name().is_some_and(|n| n == file),
    }
}

/// Writes the safetensors file at `tmp` and fsyncs it. Errors name `path` (the
/// checkpoint the caller asked for).
fn write_synced(
    tmp: &Path,
    entries: Vec<(String, Entry)>,
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<(), CheckpointError> {
    safetensors::serialize_to_file(entries, metadata, tmp).map_err(|e| match e {
        SafeTensorError::IoError(source) => CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => CheckpointError::Encode {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })?;
    // fsync applies to the file, whichever descriptor asks for it.
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

/// Makes the rename durable by syncing the directory that holds `path` (Unix only; other
/// platforms cannot open directories for syncing).
fn sync_dir(path: &Path) -> Result<(), CheckpointError> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Little-endian bytes to a tensor of `dtype`.
fn decode(
    bytes: &[u8],
    dtype: Dtype,
    shape: &[usize],
    device: &Device,
) -> Option<candle_core::Result<Tensor>> {
    fn unpack<T, const N: usize>(bytes: &[u8], from_le: fn([u8; N]) -> T) -> Vec<T> {
        bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                from_le(a)
            })
            .collect()
    }
    Some(match dtype {
        Dtype::F32 => Tensor::from_vec(unpack(bytes, f32::from_le_bytes), shape, device),
        Dtype::F64 => Tensor::from_vec(unpack(bytes, f64::from_le_bytes), shape, device),
        Dtype::U8 => Tensor::from_vec(bytes.to_vec(), shape, device),
        Dtype::U32 => Tensor::from_vec(unpack(bytes, u32::from_le_bytes), shape, device),
        Dtype::I64 => Tensor::from_vec(unpack(bytes, i64::from_le_bytes), shape, device),
        _ => return None,
    })
}

/// Reads the checkpoint at `path`, placing its tensors on `device`, after verifying its
/// checksum (see the module docs). Tensors come back sorted by name.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint, CheckpointError> {
    let bytes = fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            CheckpointError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            CheckpointError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let describe = |e: SafeTensorError| match e {
        SafeTensorError::MetadataIncompleteBuffer => format!(
            "the file is {} bytes, which does not match its header (truncated or partly written?)",
            bytes.len()
        ),
        SafeTensorError::HeaderTooSmall => {
            format!(
                "the file is {} bytes, too short for a safetensors header",
                bytes.len()
            )
        }
        other => format!("not a valid safetensors file: {other}"),
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(describe(e)))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(describe(e)))?;
    let mut views = st.tensors();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    let mut metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();

    match metadata.remove(CHECKSUM_KEY) {
        Some(stored) if !stored.starts_with(Digest::PREFIX) => {
            return Err(corrupt(format!(
                "its checksum '{stored}' is not a CRC-32 ('{}<8 hex digits>'), \
                 the only kind this host checks",
                Digest::PREFIX
            )));
        }
        Some(stored) => {
            let mut digest = Digest::new(views.len());
            for (name, view) in &views {
                digest.tensor(name, view.dtype(), view.shape(), view.data());
            }
            let actual = digest.finish(&metadata);
            if actual != stored {
                return Err(corrupt(format!(
                    "checksum mismatch: the file records '{stored}' but its contents hash \
                     to '{actual}' (damaged on disk or in transfer; move it aside to resume \
                     from the previous checkpoint)"
                )));
            }
        }
        None => tracing::warn!(
            "checkpoint '{}' has no checksum (written before checksums existed?); \
             loading it unverified",
            path.display()
        ),
    }

    let mut tensors = Vec::with_capacity(views.len());
    for (name, view) in views {
        let tensor = decode(view.data(), view.dtype(), view.shape(), device)
            .ok_or_else(|| {
                corrupt(format!(
                    "tensor '{name}' has dtype '{:?}', which this host does not load",
                    view.dtype()
                ))
            })?
            .map_err(|source| CheckpointError::Tensor {
                path: path.to_path_buf(),
                source,
            })?;
        tensors.push((name, tensor));
    }
    Ok(Checkpoint { tensors, metadata })
}

/// The checkpoints in `dir` as `(step, path)`, oldest first. Only complete
/// `step-<digits>.safetensors` files count; `.tmp` files and anything else are ignored.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(step) = name.to_str().and_then(parse_file_name) else {
            continue;
        };
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest checkpoint in `dir` (highest step), or `None` if there is none or the
/// directory cannot be read.
pub fn latest(dir: &Path) -> Option<PathBuf> {
    list(dir).ok()?.pop().map(|(_, path)| path)
}

/// Deletes all but the newest `keep` checkpoints in `dir` (the newest one is always kept,
/// even with `keep == 0`); returns the deleted paths. Call it only after a successful
/// [`save`], from the only process writing to `dir`.
///
/// Leftover `step-<n>.safetensors.tmp` files of interrupted saves are also deleted (best
/// effort, not listed) when `n` is at most the newest complete checkpoint's step: that
/// one supersedes them. Newer leftovers are left alone; [`list`] ignores them and the
/// next save of that step replaces them.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, CheckpointError> {
    let all = list(dir)?;
    let Some(&(newest, _)) = all.last() else {
        return Ok(Vec::new());
    };
    let n_old = all.len().saturating_sub(keep.max(1));
    let mut removed = Vec::with_capacity(n_old);
    for (_, path) in all.into_iter().take(n_old) {
        fs::remove_file(&path).map_err(io_err(&path))?;
        removed.push(path);
    }
    remove_superseded_tmp(dir, newest);
    Ok(removed)
}

/// Deletes `step-<n>.safetensors.tmp` files in `dir` with `n <= newest`; failures are
/// logged, not returned: a stale temporary file must not stop training.
fn remove_superseded_tmp(dir: &Path, newest: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let stale = name
            .to_str()
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(parse_file_name)
            .is_some_and(|step| step <= newest);
        if stale {
            let path = entry.path();
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(
                    "cannot remove the leftover temporary checkpoint '{}': {e}",
                    path.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("patchwork-ckpt-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("temp dir should be creatable");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sample() -> Checkpoint {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1.5f32, -2.0, 3.25], [0.0, 1e-8, -7.0]], &dev).expect("w");
        let strided = w.t().expect("t"); // non-contiguous on purpose
        let counts = Tensor::new(&[7u32, 0, 4_000_000_000], &dev).expect("counts");
        let scalar = Tensor::new(&[42u32], &dev).expect("scalar");
        let mut metadata = BTreeMap::new();
        metadata.insert("step".into(), "123".into());
        metadata.insert("rng".into(), r#"{"seed":7,"word_pos":[1,2]}"#.into());
        Checkpoint {
            tensors: vec![
                ("student.w".into(), w),
                ("student.wt".into(), strided),
                ("adam/steps".into(), scalar),
                ("data/counts".into(), counts),
            ],
            metadata,
        }
    }

    #[test]
    fn round_trip_tensors_and_metadata() -> Result<(), CheckpointError> {
        let dir = TempDir::new("roundtrip");
        let path = dir.0.join(file_name(123));
        let ckpt = sample();
        save(&path, &ckpt)?;
        assert!(!tmp_path(&path).exists(), "temporary file should be gone");
        let back = load(&path, &Device::Cpu)?;
        assert_eq!(back.metadata, ckpt.metadata);
        let names: Vec<&str> = back.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["adam/steps", "data/counts", "student.w", "student.wt"]
        );
        for (name, t) in &ckpt.tensors {
            let got = back.tensor(name).expect("tensor should round-trip");
            assert_eq!(got.dims(), t.dims(), "{name}");
            assert_eq!(got.dtype(), t.dtype(), "{name}");
            let a = got.flatten_all().expect("flat");
            let b = t.flatten_all().expect("flat");
            match t.dtype() {
                DType::F32 => assert_eq!(
                    a.to_vec1::<f32>().expect("vec"),
                    b.to_vec1::<f32>().expect("vec")
                ),
                DType::U32 => assert_eq!(
                    a.to_vec1::<u32>().expect("vec"),
                    b.to_vec1::<u32>().expect("vec")
                ),
                other => panic!("unexpected dtype {other:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn save_overwrites_existing() -> Result<(), CheckpointError> {
        let dir = TempDir::new("overwrite");
        let path = dir.0.join(file_name(1));
        save(&path, &sample())?;
        let mut second = Checkpoint::default();
        second.metadata.insert("step".into(), "2".into());
        save(&path, &second)?;
        let back = load(&path, &Device::Cpu)?;
        assert!(back.tensors.is_empty());
        assert_eq!(back.metadata.get("step").map(String::as_str), Some("2"));
        Ok(())
    }

    #[test]
    fn truncated_file_is_corrupt() -> Result<(), CheckpointError> {
        let dir = TempDir::new("truncated");
        let path = dir.0.join(file_name(5));
        save(&path, &sample())?;
        let bytes = fs::read(&path).expect("read");
        for cut in [bytes.len() - 1, bytes.len() / 2, 12, 3, 0] {
            fs::write(&path, &bytes[..cut]).expect("write");
            match load(&path, &Device::Cpu) {
                Err(CheckpointError::Corrupt { path: p, reason }) => {
                    assert_eq!(p, path);
                    assert!(!reason.is_empty());
                }
                other => panic!("cut at {cut}: expected Corrupt, got {other:?}"),
            }
        }
        fs::write(&path, &bytes[..bytes.len() - 4]).expect("write");
        let err = load(&path, &Device::Cpu).expect_err("truncated should fail");
        let msg = err.to_string();
        assert!(
            msg.contains("is corrupt") && msg.contains("truncated"),
            "{msg}"
        );
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        Ok(())
    }

    #[test]
    fn garbage_is_corrupt() {
        let dir = TempDir::new("garbage");
        let path = dir.0.join(file_name(6));
        let cases: [&[u8]; 4] = [
            b"this is not a checkpoint at all, just some text",
            &[0xff; 64],
            b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}        ",
            b"\x04\x00\x00\x00\x00\x00\x00\x00\xff\xfe\xfd\xfc",
        ];
        for (i, bytes) in cases.iter().enumerate() {
            fs::write(&path, bytes).expect("write");
            let res = load(&path, &Device::Cpu);
            assert!(
                matches!(res, Err(CheckpointError::Corrupt { .. })),
                "case {i}: expected Corrupt, got {res:?}"
            );
        }
    }

    #[test]
    fn missing_file_is_not_found() {
        let dir = TempDir::new("missing");
        let path = dir.0.join(file_name(9));
        let err = load(&path, &Device::Cpu).expect_err("missing should fail");
        assert!(matches!(err, CheckpointError::NotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("not found"));
    }

    #[test]
    fn failed_write_keeps_previous_checkpoint() -> Result<(), CheckpointError> {
        let dir = TempDir::new("failed-write");
        let path = dir.0.join(file_name(3));
        save(&path, &sample())?;
        let before = fs::read(&path).expect("read");
        // A directory squatting on the temporary name makes the write fail.
        fs::create_dir(tmp_path(&path)).expect("mkdir");
        let err = save(&path, &Checkpoint::default()).expect_err("write should fail");
        assert!(matches!(err, CheckpointError::Io { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read(&path).expect("read"), before);
        load(&path, &Device::Cpu)?;
        Ok(())
    }

    #[test]
    fn save_into_missing_directory_names_the_path() {
        let dir = TempDir::new("no-dir");
        let path = dir.0.join("nope").join(file_name(1));
        let err = save(&path, &sample()).expect_err("should fail");
        assert!(matches!(err, CheckpointError::Io { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn rejects_duplicates_and_unsupported_dtypes() -> Result<(), candle_core::Error> {
        let dir = TempDir::new("reject");
        let path = dir.0.join(file_name(1));
        let t = Tensor::zeros(2, DType::F32, &Device::Cpu)?;
        let dup = Checkpoint {
            tensors: vec![("a".into(), t.clone()), ("a".into(), t.clone())],
            metadata: BTreeMap::new(),
        };
        let err = save(&path, &dup).expect_err("duplicate should fail");
        assert!(
            matches!(err, CheckpointError::DuplicateName { .. }),
            "{err:?}"
        );
        let half = Checkpoint {
            tensors: vec![("h".into(), t.to_dtype(DType::F16)?)],
            metadata: BTreeMap::new(),
        };
        let err = save(&path, &half).expect_err("f16 should fail");
        assert!(err.to_string().contains("'h'"), "{err}");
        assert!(!path.exists());
        Ok(())
    }

    #[test]
    fn names_parse_and_sort() {
        assert_eq!(file_name(123), "step-000000123.safetensors");
        assert_eq!(parse_file_name("step-000000123.safetensors"), Some(123));
        assert_eq!(
            parse_file_name(&file_name(12_345_678_901)),
            Some(12_345_678_901)
        );
        assert_eq!(parse_file_name("step-000000123.safetensors.tmp"), None);
        assert_eq!(parse_file_name("step-.safetensors"), None);
        assert_eq!(parse_file_name("step-+12.safetensors"), None);
        assert_eq!(parse_file_name("model.safetensors"), None);
    }

    #[test]
    fn latest_ignores_tmp_and_prune_keeps_newest() -> Result<(), CheckpointError> {
        let dir = TempDir::new("latest");
        assert_eq!(latest(&dir.0), None);
        assert_eq!(latest(&dir.0.join("does-not-exist")), None);
        for step in [5, 100, 20] {
            save(&dir.0.join(file_name(step)), &Checkpoint::default())?;
        }
        // Interrupted saves (one superseded by step 100, one later) and unrelated files.
        let stale = dir.0.join(format!("{}.tmp", file_name(7)));
        let newer = dir.0.join(format!("{}.tmp", file_name(200)));
        fs::write(&stale, b"partial").expect("write");
        fs::write(&newer, b"partial").expect("write");
        fs::write(dir.0.join("notes.txt"), b"x").expect("write");
        assert_eq!(latest(&dir.0), Some(dir.0.join(file_name(100))));

        let removed = prune(&dir.0, 2)?;
        assert_eq!(removed, vec![dir.0.join(file_name(5))]);
        let left: Vec<u64> = list(&dir.0)?.into_iter().map(|(s, _)| s).collect();
        assert_eq!(left, vec![20, 100]);
        assert!(
            !stale.exists(),
            "a superseded temporary file should be removed"
        );
        assert!(
            newer.exists(),
            "a newer temporary file should be left alone"
        );
        assert!(dir.0.join("notes.txt").exists());
        assert!(prune(&dir.0, 5)?.is_empty());

        // The newest checkpoint survives even `keep == 0`.
        assert_eq!(prune(&dir.0, 0)?, vec![dir.0.join(file_name(20))]);
        assert_eq!(latest(&dir.0), Some(dir.0.join(file_name(100))));
        let empty = TempDir::new("prune-empty");
        assert!(prune(&empty.0, 0)?.is_empty());
        Ok(())
    }

    #[test]
    fn every_flipped_byte_is_reported_as_corrupt() -> Result<(), CheckpointError> {
        let dir = TempDir::new("flipped");
        let path = dir.0.join(file_name(8));
        save(&path, &sample())?;
        let bytes = fs::read(&path).expect("read");
        let header_len = 8 + usize::try_from(u64::from_le_bytes(
            bytes[..8].try_into().expect("eight bytes"),
        ))
        .expect("header length");
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0xff;
            fs::write(&path, &damaged).expect("write");
            match load(&path, &Device::Cpu) {
                Err(CheckpointError::Corrupt { reason, .. }) => {
                    // Header damage may already break the JSON; data damage only the checksum.
                    if i >= header_len {
                        assert!(reason.contains("checksum mismatch"), "byte {i}: {reason}");
                    }
                }
                other => panic!(
                    "byte {i} of {}: expected Corrupt, got {other:?}",
                    bytes.len()
                ),
            }
        }
        fs::write(&path, &bytes).expect("write");
        load(&path, &Device::Cpu)?;
        Ok(())
    }

    /// `bytes` with the first `from` overwritten by `to` (same length).
    fn replace_once(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let at = bytes
            .windows(from.len())
            .position(|w| w == from)
            .expect("the file should contain the text");
        let mut out = bytes.to_vec();
        out[at..at + to.len()].copy_from_slice(to);
        out
    }

    #[test]
    fn edited_metadata_or_name_fails_the_checksum() -> Result<(), CheckpointError> {
        let dir = TempDir::new("edited");
        let path = dir.0.join(file_name(9));
        save(&path, &sample())?;
        let bytes = fs::read(&path).expect("read");
        // Same-length edits keep the header valid JSON with valid offsets.
        for (from, to) in [
            (&br#""step":"123""#[..], &br#""step":"124""#[..]),
            (&br#""student.w""#[..], &br#""student.v""#[..]),
        ] {
            fs::write(&path, replace_once(&bytes, from, to)).expect("write");
            let err = load(&path, &Device::Cpu).expect_err("an edited file should fail");
            let msg = err.to_string();
            assert!(msg.contains("is corrupt: checksum mismatch"), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        Ok(())
    }

    #[test]
    fn checksum_is_stored_reserved_and_checked_by_kind() -> Result<(), CheckpointError> {
        let dir = TempDir::new("checksum-key");
        let path = dir.0.join(file_name(10));
        let mut ckpt = sample();
        ckpt.metadata
            .insert(CHECKSUM_KEY.into(), "crc32:00000000".into());
        save(&path, &ckpt)?;
        let bytes = fs::read(&path).expect("read");
        let (_, header) = SafeTensors::read_metadata(&bytes).expect("header");
        let stored = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(CHECKSUM_KEY))
            .cloned()
            .expect("a checksum should be stored");
        assert!(
            stored.starts_with("crc32:") && stored.len() == 14,
            "{stored}"
        );
        assert_ne!(stored, "crc32:00000000");
        let back = load(&path, &Device::Cpu)?;
        assert!(!back.metadata.contains_key(CHECKSUM_KEY));
        assert_eq!(back.metadata, sample().metadata);

        // A checksum of another kind is not silently accepted.
        let other = replace_once(&bytes, stored.as_bytes(), b"sha:0123456789");
        fs::write(&path, other).expect("write");
        let err = load(&path, &Device::Cpu).expect_err("unknown checksum kind");
        assert!(err.to_string().contains("'sha:0123456789'"), "{err}");
        Ok(())
    }

    #[test]
    fn files_without_a_checksum_still_load() -> Result<(), CheckpointError> {
        let dir = TempDir::new("no-checksum");
        let path = dir.0.join(file_name(11));
        let w = Tensor::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).expect("w");
        let entry = Entry {
            shape: w.dims().to_vec(),
            tensor: w,
            dtype: Dtype::F32,
        };
        let metadata = HashMap::from([("step".to_string(), "11".to_string())]);
        safetensors::serialize_to_file([("w", entry)], Some(metadata), &path).expect("write");
        let back = load(&path, &Device::Cpu)?;
        assert_eq!(back.metadata.get("step").map(String::as_str), Some("11"));
        let w = back.tensor("w").expect("w").to_vec1::<f32>().expect("vec");
        assert_eq!(w, [1.0, 2.0, 3.0]);
        Ok(())
    }

    #[test]
    fn the_fault_hook_matches_all_saves_or_one_file() {
        let path = Path::new("/x/checkpoints").join(file_name(3));
        assert!(fault_matches("abort-before-rename", &path));
        assert!(fault_matches(
            "abort-before-rename:step-000000003.safetensors",
            &path
        ));
        assert!(!fault_matches(
            "abort-before-rename:step-000000004.safetensors",
            &path
        ));
        assert!(!fault_matches("", &path));
        assert!(!fault_matches("something-else", &path));
    }
}
