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
//! names, so a leftover `.tmp` is never picked up.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensorError, SafeTensors, View};

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
    /// Free-form metadata (step, epoch, RNG state, JSON strings, ...).
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

/// Writes `ckpt` to `path` atomically (see the module docs). Tensors may live on any
/// device; they are copied to the CPU with their dtype unchanged. On error the previous
/// file at `path`, if any, is untouched and the temporary file is removed.
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
    let metadata: Option<HashMap<String, String>> = if ckpt.metadata.is_empty() {
        None
    } else {
        Some(ckpt.metadata.clone().into_iter().collect())
    };

    let tmp = tmp_path(path);
    let result = write_synced(&tmp, entries, metadata, path).and_then(|()| {
        fs::rename(&tmp, path).map_err(io_err(path))?;
        sync_dir(path)
    });
    if result.is_err() {
        // Best effort: the temporary file may not exist, and the original error matters more.
        let _ = fs::remove_file(&tmp);
    }
    result
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

/// Reads the checkpoint at `path`, placing its tensors on `device`. Tensors come back
/// sorted by name.
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

    let mut tensors = Vec::with_capacity(st.len());
    for (name, view) in st.iter() {
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
        tensors.push((name.to_string(), tensor));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata = header
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
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

/// Deletes all but the newest `keep` checkpoints in `dir`; returns the deleted paths.
/// Leftover `.tmp` files are not touched.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, CheckpointError> {
    let all = list(dir)?;
    let n_old = all.len().saturating_sub(keep);
    let mut removed = Vec::with_capacity(n_old);
    for (_, path) in all.into_iter().take(n_old) {
        fs::remove_file(&path).map_err(io_err(&path))?;
        removed.push(path);
    }
    Ok(removed)
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
        // An interrupted later save and unrelated files.
        fs::write(dir.0.join(format!("{}.tmp", file_name(200))), b"partial").expect("write");
        fs::write(dir.0.join("notes.txt"), b"x").expect("write");
        assert_eq!(latest(&dir.0), Some(dir.0.join(file_name(100))));

        let removed = prune(&dir.0, 2)?;
        assert_eq!(removed, vec![dir.0.join(file_name(5))]);
        let left: Vec<u64> = list(&dir.0)?.into_iter().map(|(s, _)| s).collect();
        assert_eq!(left, vec![20, 100]);
        assert!(dir.0.join(format!("{}.tmp", file_name(200))).exists());
        assert!(prune(&dir.0, 5)?.is_empty());
        Ok(())
    }
}
