//! `patchwork dev`: finds the source crates of a workspace's plugins, watches their
//! sources, and runs `cargo build` for a crate whose sources changed. The library
//! watcher ([`super::watch`]) then swaps the new build into the running sessions.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use notify_debouncer_mini::{
    DebounceEventResult, Debouncer, new_debouncer,
    notify::{RecommendedWatcher, RecursiveMode},
};

/// How serious a line of build output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildLine {
    /// Progress (`Compiling …`, `Finished …`).
    Info,
    /// A compiler warning.
    Warn,
    /// A compiler error or a failed build.
    Error,
}

/// Whether `dir` holds a plugin crate: a `cdylib` that depends on the plugin API.
pub fn is_plugin_crate(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .is_ok_and(|t| t.contains("cdylib") && t.contains("patchwork-plugin-api"))
}

/// The plugin crates a workspace file at `ws_file` may load: every crate under a
/// `plugins/` folder beside one of the file's ancestors (this repository's layout),
/// and the crate owning each `<crate>/target/<profile>` folder in `plugin_dirs`
/// (a crate made by `patchwork new plugin`).
pub fn plugin_crates(ws_file: &Path, plugin_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = BTreeSet::new();
    let start = ws_file
        .canonicalize()
        .unwrap_or_else(|_| ws_file.to_path_buf());
    for dir in start.ancestors().skip(1) {
        let Ok(entries) = std::fs::read_dir(dir.join("plugins")) else {
            continue;
        };
        found.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| is_plugin_crate(p)),
        );
        break;
    }
    for d in plugin_dirs {
        let d = d.canonicalize().unwrap_or_else(|_| d.clone());
        let owner = d
            .parent()
            .filter(|t| t.ends_with("target"))
            .and_then(Path::parent);
        if let Some(owner) = owner.filter(|o| is_plugin_crate(o)) {
            found.insert(owner.to_path_buf());
        }
    }
    found.into_iter().collect()
}

/// The crate among `crates` that holds `path`.
fn owner<'a>(crates: &'a [PathBuf], path: &Path) -> Option<&'a PathBuf> {
    crates.iter().find(|c| in_crate(c, path))
}

fn in_crate(dir: &Path, path: &Path) -> bool {
    path.starts_with(dir.join("src")) || path == dir.join("Cargo.toml")
}

/// The library crates beside `crates` that some of them depend on by path (e.g.
/// `plugins/dino-core` under `dino` and `dino-mm`), each with those dependents: a
/// change to the library rebuilds them.
fn shared_libraries(crates: &[PathBuf]) -> Vec<(PathBuf, Vec<PathBuf>)> {
    let parents: BTreeSet<&Path> = crates.iter().filter_map(|c| c.parent()).collect();
    let mut out = Vec::new();
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for lib in entries.flatten().map(|e| e.path()) {
            let is_library = std::fs::read_to_string(lib.join("Cargo.toml"))
                .is_ok_and(|t| !t.contains("cdylib") && t.contains("patchwork-plugin-api"));
            let Some(name) = lib.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            if !is_library {
                continue;
            }
            let needle = format!("path = \"../{name}\"");
            let dependents: Vec<PathBuf> = crates
                .iter()
                .filter(|c| {
                    std::fs::read_to_string(c.join("Cargo.toml")).is_ok_and(|t| t.contains(&needle))
                })
                .cloned()
                .collect();
            if !dependents.is_empty() {
                out.push((lib, dependents));
            }
        }
    }
    out
}

/// The severity of one line of cargo's output.
pub fn classify(line: &str) -> BuildLine {
    let line = line.trim_start();
    if line.starts_with("error") {
        BuildLine::Error
    } else if line.starts_with("warning") {
        BuildLine::Warn
    } else {
        BuildLine::Info
    }
}

/// Runs `cargo build --lib` for the crate at `dir`, sending each output line.
fn build(dir: &Path, report: &dyn Fn(BuildLine, String)) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    report(BuildLine::Info, format!("building '{}'", dir.display()));
    let child = Command::new(cargo)
        .args(["build", "--lib", "--color", "never", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return report(BuildLine::Error, format!("cannot run cargo: {e}")),
    };
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !line.trim().is_empty() {
                report(classify(&line), line);
            }
        }
    }
    match child.wait() {
        Ok(s) if s.success() => report(BuildLine::Info, format!("built '{}'", dir.display())),
        Ok(s) => report(
            BuildLine::Error,
            format!(
                "build of '{}' failed ({s}); the running build stays",
                dir.display()
            ),
        ),
        Err(e) => report(BuildLine::Error, format!("cargo did not finish: {e}")),
    }
}

/// A live source watch; dropping it stops watching (a build under way finishes).
pub struct SourceWatch {
    _debouncer: Debouncer<RecommendedWatcher>,
    /// The crates watched.
    pub crates: Vec<PathBuf>,
}

/// Watches the sources of `crates`; builds a crate (one build at a time, on a thread
/// of its own) whenever its sources change, sending cargo's output to `report`.
pub fn watch_sources(
    crates: Vec<PathBuf>,
    report: impl Fn(BuildLine, String) + Send + 'static,
) -> Result<SourceWatch, super::watch::WatchError> {
    let (tx, rx) = mpsc::channel::<PathBuf>();
    let builder_crates = crates.clone();
    thread::Builder::new()
        .name("dev-build".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                // Changes that arrived during a build are built once, after it.
                let pending: BTreeSet<PathBuf> =
                    std::iter::once(first).chain(rx.try_iter()).collect();
                for dir in pending {
                    build(&dir, &report);
                }
            }
        })
        .map_err(|e| super::watch::WatchError {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?;
    let owners = crates.clone();
    let libraries = shared_libraries(&crates);
    let library_dirs: Vec<PathBuf> = libraries.iter().map(|(l, _)| l.clone()).collect();
    let mut debouncer = new_debouncer(
        Duration::from_millis(300),
        move |result: DebounceEventResult| {
            let Ok(events) = result else { return };
            let sources = events
                .iter()
                .filter(|e| e.path.extension().is_some_and(|x| x == "rs" || x == "toml"));
            let mut dirs = BTreeSet::new();
            for e in sources {
                if let Some(c) = owner(&owners, &e.path) {
                    dirs.insert(c.clone());
                }
                for (lib, dependents) in &libraries {
                    if in_crate(lib, &e.path) {
                        dirs.extend(dependents.iter().cloned());
                    }
                }
            }
            for d in dirs {
                let _ = tx.send(d);
            }
        },
    )
    .map_err(|e| super::watch::WatchError {
        path: PathBuf::new(),
        reason: e.to_string(),
    })?;
    for c in builder_crates.iter().chain(&library_dirs) {
        debouncer
            .watcher()
            .watch(c, RecursiveMode::Recursive)
            .map_err(|e| super::watch::WatchError {
                path: c.clone(),
                reason: e.to_string(),
            })?;
    }
    Ok(SourceWatch {
        _debouncer: debouncer,
        crates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_library_crate_rebuilds_the_plugins_that_use_it() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let crates = plugin_crates(&root.join("workspaces").join("quickstart.ron"), &[]);
        let libraries = shared_libraries(&crates);
        let core = libraries
            .iter()
            .find(|(l, _)| l.ends_with("dino-core"))
            .expect("plugins/dino-core is a shared library");
        let mut names: Vec<String> = core
            .1
            .iter()
            .filter_map(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        assert_eq!(names, ["dino", "dino-mm", "selfpatch"]);
    }

    #[test]
    fn this_repository_s_plugin_crates_are_found_from_a_workspace_file() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let crates = plugin_crates(&root.join("workspaces").join("quickstart.ron"), &[]);
        let names: Vec<String> = crates
            .iter()
            .filter_map(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        for expected in ["dino", "vit", "minimal-backbone", "minimal-task"] {
            assert!(names.iter().any(|n| n == expected), "{names:?}");
        }
    }

    #[test]
    fn a_scaffolded_crate_is_found_through_its_target_folder() {
        let dir = std::env::temp_dir().join(format!("patchwork-dev-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let krate = dir.join("mine");
        std::fs::create_dir_all(krate.join("target/debug")).unwrap();
        std::fs::write(
            krate.join("Cargo.toml"),
            "[lib]\ncrate-type = [\"cdylib\"]\n[dependencies]\npatchwork-plugin-api = \"0\"\n",
        )
        .unwrap();
        let found = plugin_crates(&dir.join("ws.ron"), &[krate.join("target/debug")]);
        assert_eq!(found, vec![krate.canonicalize().unwrap()]);
        assert_eq!(owner(&found, &found[0].join("src/lib.rs")), Some(&found[0]));
        assert_eq!(owner(&found, &dir.join("elsewhere.rs")), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cargo_lines_are_classified() {
        assert_eq!(classify("error[E0308]: mismatched types"), BuildLine::Error);
        assert_eq!(classify("warning: unused variable"), BuildLine::Warn);
        assert_eq!(classify("   Compiling dino v0.1.0"), BuildLine::Info);
    }
}
