//! Loads one plugin library through abi_stable's low-level path.
//!
//! `RootModule::load_from_*` caches the first library per interface type and would
//! hand back the same plugin for every file, so this uses `RawLibrary::load_at` →
//! `lib_header_from_raw_library` → `init_root_module`. Each library is loaded from
//! a uniquely named copy (the dynamic loader returns the already-loaded object for
//! a path it has seen, which would defeat hot reload), and stays mapped for the
//! life of the process.
#![allow(unsafe_code, reason = "loading a dynamic library is unsafe by nature")]

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use abi_stable::library::{RawLibrary, lib_header_from_raw_library};
use patchwork_plugin_api::abi::{HOST_OP_LEVEL, Manifest, PluginKind, PluginRootRef};

/// Why a library could not be used as a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Copying or opening the file failed.
    #[error("cannot load '{path}': {reason}")]
    Open {
        /// The library.
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },
    /// The library has no patchwork root module.
    #[error("'{path}' is not a patchwork plugin (no root module): {reason}")]
    NotAPlugin {
        /// The library.
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },
    /// The plugin was built against an incompatible plugin-api (version or layout).
    #[error("'{path}' has an incompatible plugin ABI: {reason}")]
    Incompatible {
        /// The library.
        path: PathBuf,
        /// The last lines of abi_stable's report.
        reason: String,
    },
    /// The plugin needs host ops this host lacks.
    #[error(
        "plugin '{name}' needs host op level {needed}, host provides {provided}: update patchwork"
    )]
    HostTooOld {
        /// Plugin name.
        name: String,
        /// Level the plugin declared.
        needed: u32,
        /// This host's level.
        provided: u32,
    },
}

/// A loaded plugin library.
#[derive(Clone)]
pub struct LoadedPlugin {
    /// The file it was loaded from (not the private copy).
    pub path: PathBuf,
    /// What the plugin says about itself.
    pub manifest: Manifest,
    /// Its root module.
    pub root: PluginRootRef,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoadedPlugin({} {:?})", self.manifest.name, self.path)
    }
}

impl LoadedPlugin {
    /// The plugin's registry name.
    pub fn name(&self) -> &str {
        self.manifest.name.as_str()
    }

    /// The plugin's kind.
    pub fn kind(&self) -> PluginKind {
        self.manifest.kind
    }

    /// Wraps a root module linked into this process (tests, benchmarks).
    pub fn in_process(root: PluginRootRef) -> Self {
        let manifest = (root.manifest())();
        Self {
            path: PathBuf::from("<in-process>"),
            manifest,
            root,
        }
    }
}

/// Keeps the last lines of a long abi_stable report (a layout mismatch prints
/// hundreds of lines; the cause is at the end).
fn short(report: &str, lines: usize) -> String {
    let all: Vec<&str> = report
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let start = all.len().saturating_sub(lines);
    let mut out = all[start..].join("\n");
    if start > 0 {
        out = format!("(… {start} lines of layout report omitted)\n{out}");
    }
    out
}

fn private_copy(path: &Path) -> Result<PathBuf, LoadError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("patchwork-plugins-{}", std::process::id()));
    let open = |reason: String| LoadError::Open {
        path: path.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| open(format!("creating '{}': {e}", dir.display())))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin");
    let ext = path.extension().and_then(|s| s.to_str()).unwrap_or("so");
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let copy = dir.join(format!("{stem}-{n}.{ext}"));
    std::fs::copy(path, &copy).map_err(|e| open(e.to_string()))?;
    Ok(copy)
}

/// Removes a private copy once it is loaded (or failed to load). On Unix a mapped
/// library needs no file, so the temp folder keeps one empty folder per process
/// however many builds were loaded; on Windows a loaded DLL cannot be deleted,
/// so the copy stays.
fn discard_copy(copy: &Path) {
    if cfg!(unix) {
        let _ = std::fs::remove_file(copy);
    }
}

/// Loads the plugin library at `path` and checks its ABI and op level.
pub fn load(path: &Path) -> Result<LoadedPlugin, LoadError> {
    let copy = private_copy(path)?;
    let raw = RawLibrary::load_at(&copy);
    discard_copy(&copy);
    let raw = raw.map_err(|e| LoadError::Open {
        path: path.to_path_buf(),
        reason: short(&e.to_string(), 3),
    })?;
    // The library stays mapped for the life of the process: root modules and
    // function pointers from it may be held anywhere.
    let raw: &'static RawLibrary = Box::leak(Box::new(raw));
    // SAFETY: the header symbol, when present, was written by abi_stable's
    // export machinery (our export macros); abi_stable checks its magic string and
    // version before trusting the rest.
    let header =
        unsafe { lib_header_from_raw_library(raw) }.map_err(|e| LoadError::NotAPlugin {
            path: path.to_path_buf(),
            reason: short(&e.to_string(), 2),
        })?;
    let root = header
        .init_root_module::<PluginRootRef>()
        .map_err(|e| LoadError::Incompatible {
            path: path.to_path_buf(),
            reason: short(&e.to_string(), 6),
        })?;
    let manifest = (root.manifest())();
    if manifest.min_host_level > HOST_OP_LEVEL {
        return Err(LoadError::HostTooOld {
            name: manifest.name.to_string(),
            needed: manifest.min_host_level,
            provided: HOST_OP_LEVEL,
        });
    }
    Ok(LoadedPlugin {
        path: path.to_path_buf(),
        manifest,
        root,
    })
}
