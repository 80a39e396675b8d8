//! The index cache: one JSON file per root folder, trusted while every directory the
//! listing read keeps its modification time, so reopening costs one `stat` per directory.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::index::{Index, fnv1a};
use crate::data::corrupt::OnCorrupt;
use crate::data::loader::DataError;

/// The cache file format; files of another version are ignored.
const VERSION: u32 = 1;

/// A directory modified less than this before the listing started may change again
/// within the same timestamp tick (FAT keeps 2 s, Linux a scheduler tick), unseen; such
/// a listing is not trusted, and the next open lists again.
const RACY_NS: i64 = 2_000_000_000;

/// The modification time of one directory the listing read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DirStamp {
    /// Path relative to the root; empty for the root itself.
    pub path: PathBuf,
    /// Modification time in nanoseconds since the Unix epoch.
    pub modified_ns: i64,
}

/// What a cached index depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Fingerprint {
    /// The canonical root path.
    pub root: PathBuf,
    /// The policy the corrupt files were (or were not) looked for with.
    pub on_corrupt: OnCorrupt,
    /// When the listing started, in nanoseconds since the Unix epoch.
    pub listed_at_ns: i64,
    /// Every directory the listing read, root first.
    pub dirs: Vec<DirStamp>,
}

/// The JSON file.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    fingerprint: Fingerprint,
    index: Index,
}

/// `cache_dir/image-index-<FNV-1a of the canonical root, 16 hex digits>.json`.
pub(super) fn cache_path(cache_dir: &Path, canonical_root: &Path) -> PathBuf {
    let hash = fnv1a(canonical_root.as_os_str().as_encoded_bytes());
    cache_dir.join(format!("image-index-{hash:016x}.json"))
}

/// The current time in nanoseconds since the Unix epoch.
pub(super) fn now_ns() -> i64 {
    epoch_ns(SystemTime::now())
}

fn epoch_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// The modification time of `root/rel`.
pub(super) fn stamp(root: &Path, rel: &Path) -> Result<DirStamp, DataError> {
    let dir = root.join(rel);
    let modified = std::fs::metadata(&dir)
        .and_then(|m| m.modified())
        .map_err(|source| DataError::Io {
            path: dir.clone(),
            source,
        })?;
    Ok(DirStamp {
        path: rel.to_owned(),
        modified_ns: epoch_ns(modified),
    })
}

/// The index cached at `path` when it was listed from `root` with `on_corrupt` and no
/// directory it read has changed since; `None` for a missing, unparsable or stale file.
pub(super) fn load(path: &Path, root: &Path, on_corrupt: OnCorrupt) -> Option<Index> {
    let text = std::fs::read_to_string(path).ok()?;
    let file: CacheFile = serde_json::from_str(&text).ok()?;
    let fp = &file.fingerprint;
    let fresh = file.version == VERSION
        && fp.root == root
        && fp.on_corrupt == on_corrupt
        && !fp.dirs.is_empty()
        && fp.dirs.iter().all(|d| {
            d.modified_ns < fp.listed_at_ns.saturating_sub(RACY_NS)
                && stamp(root, &d.path).is_ok_and(|now| now == *d)
        });
    fresh.then_some(file.index)
}

/// Writes `index` with its fingerprint to `path` (a temporary file in the same folder,
/// then a rename) and hands the index back; a failed write is logged, not an error.
pub(super) fn store(path: &Path, fingerprint: Fingerprint, index: Index) -> Index {
    let file = CacheFile {
        version: VERSION,
        fingerprint,
        index,
    };
    if let Err(e) = write_atomic(path, &file) {
        tracing::warn!("image index not cached: {e}");
    }
    file.index
}

fn write_atomic(path: &Path, file: &CacheFile) -> Result<(), DataError> {
    let fail = |reason: String| DataError::Write {
        path: path.to_owned(),
        reason,
    };
    let json = serde_json::to_string(file).map_err(|e| fail(e.to_string()))?;
    crate::fsutil::write_atomic(path, json.as_bytes()).map_err(|e| fail(e.to_string()))
}
