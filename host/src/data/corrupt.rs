//! What a dataset does with corrupt files and records, and the count of those it skipped.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::loader::DataError;

/// How many skipped names a [`CorruptCount`] keeps for the report.
pub const MAX_NAMES: usize = 8;

/// The policy for a corrupt file or record found while opening a dataset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnCorrupt {
    /// Stop with [`DataError::Corrupt`] naming the file.
    #[default]
    Fail,
    /// Leave the item out of the dataset and count it.
    Skip,
}

/// A shared counter of skipped corrupt items; clones count into the same total.
#[derive(Clone, Debug, Default)]
pub struct CorruptCount {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    count: AtomicUsize,
    names: Mutex<Vec<String>>,
}

impl CorruptCount {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one skipped item; the first [`MAX_NAMES`] names are kept.
    pub fn record(&self, name: impl Into<String>) {
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        let mut names = self.inner.names.lock().unwrap_or_else(|e| e.into_inner());
        if names.len() < MAX_NAMES {
            names.push(name.into());
        }
    }

    /// With [`OnCorrupt::Fail`] returns `err`; with [`OnCorrupt::Skip`] counts `name`
    /// and returns `Ok(())`.
    pub fn handle(
        &self,
        policy: OnCorrupt,
        err: DataError,
        name: impl Into<String>,
    ) -> Result<(), DataError> {
        match policy {
            OnCorrupt::Fail => Err(err),
            OnCorrupt::Skip => {
                self.record(name);
                Ok(())
            }
        }
    }

    /// How many items were skipped.
    pub fn count(&self) -> usize {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// True when nothing was skipped.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// The names of the first [`MAX_NAMES`] skipped items, in the order they were found.
    pub fn names(&self) -> Vec<String> {
        self.inner
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl fmt::Display for CorruptCount {
    /// `"2 corrupt items skipped (a.npy, b.npy)"`, with `…` when names were dropped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.count();
        let names = self.names();
        let noun = if count == 1 { "item" } else { "items" };
        write!(f, "{count} corrupt {noun} skipped")?;
        if !names.is_empty() {
            let more = if count > names.len() { ", …" } else { "" };
            write!(f, " ({}{more})", names.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn corrupt() -> DataError {
        DataError::Corrupt {
            path: PathBuf::from("x.npy"),
            reason: "truncated".into(),
        }
    }

    #[test]
    fn clones_share_the_count_and_keep_the_first_names() {
        let a = CorruptCount::new();
        let b = a.clone();
        assert!(a.is_empty());
        for i in 0..(MAX_NAMES + 2) {
            b.record(format!("f{i}"));
        }
        assert_eq!(a.count(), MAX_NAMES + 2);
        assert_eq!(a.names().len(), MAX_NAMES);
        assert_eq!(a.names()[0], "f0");
        assert!(
            a.to_string()
                .starts_with("10 corrupt items skipped (f0, f1")
        );
        assert!(a.to_string().ends_with(", …)"));
    }

    #[test]
    fn handle_follows_the_policy() {
        let c = CorruptCount::new();
        assert!(matches!(
            c.handle(OnCorrupt::Fail, corrupt(), "x.npy"),
            Err(DataError::Corrupt { .. })
        ));
        assert!(c.is_empty());
        assert!(c.handle(OnCorrupt::Skip, corrupt(), "x.npy").is_ok());
        assert_eq!(c.count(), 1);
        assert_eq!(c.to_string(), "1 corrupt item skipped (x.npy)");
    }

    #[test]
    fn policy_defaults_to_fail_and_reads_from_ron() {
        assert_eq!(OnCorrupt::default(), OnCorrupt::Fail);
        let p: OnCorrupt = ron::from_str("Skip").unwrap();
        assert_eq!(p, OnCorrupt::Skip);
    }
}
