//! Watches plugin folders and reports changed libraries, debounced per path (cargo
//! replaces a library by removing and creating it, so folders are watched, not files).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use notify_debouncer_mini::{
    DebounceEventResult, Debouncer, new_debouncer,
    notify::{RecommendedWatcher, RecursiveMode},
};

use super::registry::is_dylib;

/// Quiet time after the last write to a library before it counts as changed.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// A live watch; dropping it stops watching.
pub struct PluginWatch {
    _debouncer: Debouncer<RecommendedWatcher>,
    /// Folders that could be watched.
    pub watched: Vec<PathBuf>,
}

/// Why a folder could not be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch plugin folder '{}': {reason}", path.display())]
pub struct WatchError {
    /// The folder.
    pub path: PathBuf,
    /// The cause.
    pub reason: String,
}

/// The library files among `paths` that exist (a removal alone is not a new build).
pub fn changed_libraries(paths: impl IntoIterator<Item = PathBuf>) -> Vec<PathBuf> {
    let set: BTreeSet<PathBuf> = paths
        .into_iter()
        .filter(|p| is_dylib(p) && p.is_file())
        .collect();
    set.into_iter().collect()
}

/// What identifies one build of a file: its modification time and length.
type Stamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok(), meta.len()))
}

/// The stamps of the libraries now in `dirs`.
fn stamps(dirs: &[PathBuf]) -> BTreeMap<PathBuf, Stamp> {
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_dylib(p))
        .filter_map(|p| Some((p.clone(), stamp(&p)?)))
        .collect()
}

/// Watches the existing folders among `dirs`; calls `on_change(path, when)` from the
/// watcher's thread for each library written, once its writes have settled. Events
/// that leave a file's modification time and length as they were (opening or
/// reading it, as loading does) do not count.
pub fn watch(
    dirs: &[PathBuf],
    mut on_change: impl FnMut(PathBuf, Instant) + Send + 'static,
) -> Result<PluginWatch, WatchError> {
    let mut seen = stamps(dirs);
    let mut debouncer = new_debouncer(DEBOUNCE, move |result: DebounceEventResult| {
        let Ok(events) = result else { return };
        let now = Instant::now();
        for path in changed_libraries(events.into_iter().map(|e| e.path)) {
            let Some(current) = stamp(&path) else {
                continue;
            };
            if seen.insert(path.clone(), current) != Some(current) {
                on_change(path, now);
            }
        }
    })
    .map_err(|e| WatchError {
        path: PathBuf::new(),
        reason: e.to_string(),
    })?;
    let mut watched = Vec::new();
    let mut seen = BTreeSet::new();
    for dir in dirs {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
        if !dir.is_dir() || !seen.insert(dir.clone()) {
            continue;
        }
        debouncer
            .watcher()
            .watch(Path::new(&dir), RecursiveMode::NonRecursive)
            .map_err(|e| WatchError {
                path: dir.clone(),
                reason: e.to_string(),
            })?;
        watched.push(dir);
    }
    Ok(PluginWatch {
        _debouncer: debouncer,
        watched,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn only_existing_libraries_count() {
        let dir = std::env::temp_dir().join(format!("patchwork-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lib = dir.join(format!(
            "libx.{}",
            super::super::registry::dylib_extension()
        ));
        std::fs::write(&lib, b"x").unwrap();
        let gone = dir.join(format!(
            "liby.{}",
            super::super::registry::dylib_extension()
        ));
        let text = dir.join("notes.txt");
        std::fs::write(&text, b"x").unwrap();
        let changed = changed_libraries([lib.clone(), gone, text, lib.clone()]);
        assert_eq!(changed, vec![lib]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reading_a_library_is_not_a_change() {
        let dir = std::env::temp_dir().join(format!("patchwork-watch3-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lib = dir.join(format!(
            "liba.{}",
            super::super::registry::dylib_extension()
        ));
        std::fs::write(&lib, b"one").unwrap();
        let (tx, rx) = mpsc::channel();
        let _watch = watch(std::slice::from_ref(&dir), move |path, _| {
            let _ = tx.send(path);
        })
        .unwrap();
        std::fs::read(&lib).unwrap();
        std::fs::copy(&lib, dir.join("copy.bin")).unwrap();
        // A real change afterwards is the first (and only) report.
        std::fs::write(&lib, b"three").unwrap();
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got.file_name(), lib.file_name());
        assert!(rx.recv_timeout(DEBOUNCE * 4).is_err(), "reported twice");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_written_library_is_reported_once_settled() {
        let dir = std::env::temp_dir().join(format!("patchwork-watch2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (tx, rx) = mpsc::channel();
        let watch = watch(std::slice::from_ref(&dir), move |path, _| {
            let _ = tx.send(path);
        })
        .unwrap();
        assert_eq!(watch.watched.len(), 1);
        let lib = dir.join(format!(
            "libz.{}",
            super::super::registry::dylib_extension()
        ));
        std::fs::write(&lib, b"one").unwrap();
        std::fs::write(&lib, b"two").unwrap();
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got.file_name(), lib.file_name());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
