//! End-to-end test harness for patchwork: finds the `patchwork` binary and the
//! plugin libraries cargo built into the target directory, runs the binary, and
//! gives tests fresh temporary folders.
//!
//! The tests in `e2e/` drive the real binary. cargo builds a test's own
//! dependencies, not the workspace's other binaries and `cdylib`s, so
//! `cargo build --workspace` (or `cargo xtask ci`) must run before
//! `cargo test -p patchwork-tests`; the helpers here fail with that advice when
//! something is missing.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    sync::atomic::{AtomicU64, Ordering},
};

/// The advice printed when a built artifact is missing.
pub const BUILD_FIRST: &str =
    "run `cargo build --workspace` (or `cargo xtask ci`) before `cargo test -p patchwork-tests`";

/// The profile folder the tests were built into, e.g. `…/target/debug`.
///
/// Derived from the test executable (`…/target/debug/deps/e2e-<hash>`); when
/// `CARGO_TARGET_DIR` is set, `$CARGO_TARGET_DIR/<profile>` with the profile
/// name taken from the same path.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable path should be known");
    let deps = exe
        .parent()
        .expect("the test executable should be in a folder");
    let profile_dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent()
            .expect("deps/ should have a parent")
            .to_path_buf()
    } else {
        deps.to_path_buf()
    };
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let mut dir = PathBuf::from(dir);
            if dir.is_relative() {
                dir = repo_root().join(dir);
            }
            match profile_dir.file_name() {
                Some(profile) => dir.join(profile),
                None => dir.join("debug"),
            }
        }
        _ => profile_dir,
    }
}

/// The repository root (the workspace folder holding `Cargo.toml`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate should sit inside the repository")
        .to_path_buf()
}

/// The `patchwork` binary in [`target_dir`]; panics with build advice if it is missing.
pub fn patchwork_bin() -> PathBuf {
    let bin = target_dir().join(format!("patchwork{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "the patchwork binary '{}' is missing: {BUILD_FIRST}",
        bin.display()
    );
    bin
}

/// A [`Command`] for the `patchwork` binary, with logging quiet and colours off.
pub fn patchwork() -> Command {
    let mut cmd = Command::new(patchwork_bin());
    cmd.env_remove("PATCHWORK_PLUGIN_PATH")
        .env("NO_COLOR", "1")
        .env_remove("PATCHWORK_LOG");
    cmd
}

/// The file name of a plugin library built from the crate `package`
/// (`patchwork-vit` → `libpatchwork_vit.so` on Linux).
pub fn dylib_name(package: &str) -> String {
    format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    )
}

/// The path of the plugin library built from `package`; panics with build advice
/// if it is missing.
pub fn plugin_lib(package: &str) -> PathBuf {
    let lib = target_dir().join(dylib_name(package));
    assert!(
        lib.is_file(),
        "the plugin library '{}' is missing: {BUILD_FIRST}",
        lib.display()
    );
    lib
}

/// A fresh, empty folder `<temp>/patchwork-e2e-<name>-<pid>-<n>`.
pub fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("patchwork-e2e-{name}-{}-{n}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("a stale temp folder should be removable");
    }
    std::fs::create_dir_all(&dir).expect("the temp folder should be creatable");
    dir
}

/// What a finished command left.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl Output {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Both streams, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion and captures its output.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `patchwork` with `args`.
pub fn run_patchwork<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run(patchwork().args(args))
}
