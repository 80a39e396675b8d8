//! `manifest.json`: the provenance of a run folder.
//!
//! Written at the start of a run, rewritten (temp file + rename) when something is
//! recorded, and finished just before `report.md`. A resumed run loads the manifest it
//! finds and appends to its history (`resumes`, `hot_reloads`) instead of starting a
//! new one. `patchwork report` and `patchwork diff` read it back ([`super::inspect`]).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::SessionError;
use crate::{
    data::source::Data,
    engine::checkpoint,
    plugins::LoadedPlugin,
    workspace::schema::{DataSource, Session, Workspace},
};

/// The file name inside a run folder.
pub const FILE_NAME: &str = "manifest.json";

/// The manifest layout written by this host.
pub const FORMAT: u32 = 1;

/// Reading a manifest failed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The folder does not exist.
    #[error("run folder '{}' does not exist", path.display())]
    Missing {
        /// The folder.
        path: PathBuf,
    },
    /// The folder has no `manifest.json`.
    #[error(
        "'{}' is not a run folder: it has no manifest.json (give a `runs/<workspace>/<session>/` folder written by `patchwork run`)",
        path.display()
    )]
    NotARunFolder {
        /// The folder.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("i/o error on '{}': {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a manifest.
    #[error("'{}' is not a valid manifest: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        source: serde_json::Error,
    },
}

/// Everything needed to say where a run's numbers came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version ([`FORMAT`]).
    pub format: u32,
    /// Workspace name.
    pub workspace: String,
    /// Session name.
    pub session: String,
    /// The workspace file the run was started from.
    pub workspace_file: PathBuf,
    /// The resolved session (after `--set`), as RON: the text of `config.ron`.
    pub config: String,
    /// The host binary.
    pub host: HostInfo,
    /// The plugins the session uses: the backbone first, then each stage's task.
    pub plugins: Vec<PluginInfo>,
    /// `"cpu"` or `"cuda:N"`.
    pub device: String,
    /// Thread counts.
    pub threads: Threads,
    /// Seeds by role: `session` and, when the data source has one, `data`.
    pub seeds: BTreeMap<String, u64>,
    /// What was trained on.
    pub dataset: DatasetInfo,
    /// When the run first started (RFC 3339, UTC).
    pub started_at: String,
    /// When it last finished, if it did.
    pub finished_at: Option<String>,
    /// The global step it finished at.
    pub final_step: Option<u64>,
    /// How the last process left it.
    pub outcome: Outcome,
    /// Each time the run was resumed.
    #[serde(default)]
    pub resumes: Vec<Resume>,
    /// Each plugin library swapped in while the run trained.
    #[serde(default)]
    pub hot_reloads: Vec<HotReload>,
}

/// The host binary that ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// `patchwork`'s crate version.
    pub version: String,
    /// Cargo features it was built with (`cuda`).
    pub features: Vec<String>,
    /// `debug` or `release` (whether debug assertions are on).
    pub profile: String,
    /// Target OS and architecture, e.g. `linux-x86_64`.
    pub target: String,
}

/// One plugin library.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Registry name.
    pub name: String,
    /// `backbone`, `pretext-task`, …
    pub kind: String,
    /// The plugin crate's version.
    pub version: String,
    /// The plugin-api version it was built against.
    pub api_version: String,
    /// The library file.
    pub path: PathBuf,
    /// SHA-256 (hex) of the library file; `None` when it cannot be read (in-process).
    pub library_hash: Option<String>,
}

/// Thread counts of the process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threads {
    /// `std::thread::available_parallelism`.
    pub available: usize,
    /// The threads candle's CPU kernels use.
    pub candle: usize,
}

/// The identity of a data source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// The source's name in the workspace.
    pub name: String,
    /// Its variant (`Shapes`, `ImageFolder`, …).
    pub kind: String,
    /// Its config, Debug-printed.
    pub config: String,
    /// Training images.
    pub train: usize,
    /// Validation images.
    pub val: usize,
    /// Classes (0 when unlabelled).
    pub classes: usize,
    /// Image side in pixels.
    pub size: usize,
    /// Channels per image.
    pub channels: usize,
    /// Normalisation mean per channel.
    pub mean: Vec<f32>,
    /// Normalisation standard deviation per channel.
    pub std: Vec<f32>,
    /// First 16 hex digits of the SHA-256 of the config text and the sizes above.
    pub fingerprint: String,
}

/// How the last process left the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Started and not finished (or the process died).
    Running,
    /// All stages ran.
    Done,
    /// Stopped early on request; it can be resumed.
    Interrupted,
    /// Stopped by an error.
    Failed,
}

/// One resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    /// The checkpoint step it continued from.
    pub step: u64,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Provenance that differs from the process before: `key: old → new`.
    #[serde(default)]
    pub changes: Vec<String>,
}

/// One plugin library swapped in during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HotReload {
    /// Plugin name.
    pub plugin: String,
    /// The step it took effect at.
    pub step: u64,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// SHA-256 (hex) of the new library.
    pub library_hash: Option<String>,
}

impl Manifest {
    /// The manifest of a run of `session` of `ws` (from the file `workspace_file`)
    /// starting now, on `data` with `plugins`.
    pub fn start(
        ws: &Workspace,
        session: &Session,
        data: &Data,
        plugins: &[&LoadedPlugin],
        workspace_file: &Path,
    ) -> Self {
        let source = ws.data.get(&session.data);
        let mut seeds = BTreeMap::from([("session".to_string(), session.seed)]);
        if let Some(seed) = source.and_then(data_seed) {
            seeds.insert("data".to_string(), seed);
        }
        Self {
            format: FORMAT,
            workspace: ws.name.clone(),
            session: session.name.clone(),
            workspace_file: workspace_file.to_path_buf(),
            config: ron::ser::to_string_pretty(session, ron::ser::PrettyConfig::default())
                .unwrap_or_else(|e| format!("// cannot print the resolved config: {e}")),
            host: HostInfo::current(),
            plugins: plugins.iter().map(|p| PluginInfo::of(p)).collect(),
            device: session.device.clone(),
            threads: Threads::current(),
            seeds,
            dataset: DatasetInfo::new(&session.data, source, data),
            started_at: now(),
            finished_at: None,
            final_step: None,
            outcome: Outcome::Running,
            resumes: Vec::new(),
            hot_reloads: Vec::new(),
        }
    }

    /// Reads `<run_dir>/manifest.json`.
    pub fn load(run_dir: &Path) -> Result<Self, ManifestError> {
        if !run_dir.is_dir() {
            return Err(ManifestError::Missing {
                path: run_dir.to_path_buf(),
            });
        }
        let path = run_dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ManifestError::NotARunFolder {
                    path: run_dir.to_path_buf(),
                }
            } else {
                ManifestError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        serde_json::from_str(&text).map_err(|source| ManifestError::Parse { path, source })
    }

    /// Writes `<run_dir>/manifest.json` atomically (temp file, then rename).
    pub fn write(&self, run_dir: &Path) -> Result<(), SessionError> {
        let path = run_dir.join(FILE_NAME);
        let text = serde_json::to_string_pretty(self)
            .expect("a manifest should serialise: it holds only strings, numbers and lists");
        crate::fsutil::write_atomic(&path, (text + "\n").as_bytes())
            .map_err(SessionError::io(&path))
    }

    /// Records that this process resumes the run in `run_dir`: continues the history
    /// of the manifest there and notes the step of its last checkpoint.
    pub fn resume_in(&mut self, run_dir: &Path) {
        let step = checkpoint::list(&run_dir.join("checkpoints"))
            .ok()
            .and_then(|list| list.last().map(|(step, _)| *step))
            .unwrap_or(0);
        let previous = Self::load(run_dir).map_err(|e| e.to_string());
        self.record_resume(step, previous);
    }

    /// Records a resume from the checkpoint at `step`. `previous` is the manifest the
    /// run had (its history is kept and its provenance compared with this one's), or
    /// why it could not be read.
    pub fn record_resume(&mut self, step: u64, previous: Result<Self, String>) {
        let (changes, resumes, hot_reloads) = match previous {
            Ok(prev) => {
                let mut changes: Vec<String> = provenance_differences(&prev, self)
                    .into_iter()
                    .map(|(key, old, new)| format!("{key}: {old} → {new}"))
                    .collect();
                if prev.config != self.config {
                    changes.insert(0, "config changed".to_string());
                }
                self.started_at = prev.started_at;
                (changes, prev.resumes, prev.hot_reloads)
            }
            Err(why) => (
                vec![format!("no earlier manifest: {why}")],
                Vec::new(),
                Vec::new(),
            ),
        };
        self.resumes = resumes;
        self.hot_reloads = hot_reloads;
        self.resumes.push(Resume {
            step,
            at: now(),
            changes,
        });
        self.outcome = Outcome::Running;
        self.finished_at = None;
    }

    /// Records that `plugin`'s library (now hashing to `library_hash`) was swapped in
    /// at `step`.
    pub fn record_reload(&mut self, plugin: &str, step: u64, library_hash: Option<String>) {
        self.hot_reloads.push(HotReload {
            plugin: plugin.to_string(),
            step,
            at: now(),
            library_hash,
        });
    }

    /// Records the end of this process's part of the run.
    pub fn finish(&mut self, final_step: u64, outcome: Outcome) {
        self.finished_at = Some(now());
        self.final_step = Some(final_step);
        self.outcome = outcome;
    }

    /// The provenance as flat `key → value` text (`plugins.vit.library_hash`,
    /// `seeds.session`, …), without the config text, times and history.
    pub fn provenance(&self) -> BTreeMap<String, String> {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        let mut flat = BTreeMap::new();
        if let Value::Object(map) = &mut value {
            for key in [
                "config",
                "started_at",
                "finished_at",
                "final_step",
                "outcome",
                "resumes",
                "hot_reloads",
            ] {
                map.remove(key);
            }
            // Plugins by name rather than by position.
            if let Some(Value::Array(list)) = map.remove("plugins") {
                let by_name = list
                    .into_iter()
                    .map(|p| {
                        let name = p.get("name").and_then(Value::as_str).unwrap_or("?");
                        (name.to_string(), p)
                    })
                    .collect();
                map.insert("plugins".to_string(), Value::Object(by_name));
            }
        }
        flatten("", &value, &mut flat);
        flat
    }
}

/// Provenance that differs between `a` and `b`: `(key, value in a, value in b)`, with
/// `-` where one side lacks the key.
pub fn provenance_differences(a: &Manifest, b: &Manifest) -> Vec<(String, String, String)> {
    let (pa, pb) = (a.provenance(), b.provenance());
    let mut keys: Vec<&String> = pa.keys().chain(pb.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (va, vb) = (pa.get(k), pb.get(k));
            (va != vb).then(|| {
                let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "-".to_string());
                (k.clone(), show(va), show(vb))
            })
        })
        .collect()
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        Value::Null => {
            out.insert(prefix.to_string(), "-".to_string());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

impl HostInfo {
    /// This binary.
    pub fn current() -> Self {
        let mut features = Vec::new();
        if cfg!(feature = "cuda") {
            features.push("cuda".to_string());
        }
        Self {
            version: env!("CARGO_PKG_VERSION").to_string(),
            features,
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_string(),
            target: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

impl PluginInfo {
    /// What `plugin` says about itself, and the hash of its library file.
    pub fn of(plugin: &LoadedPlugin) -> Self {
        Self {
            name: plugin.name().to_string(),
            kind: plugin.kind().name().to_string(),
            version: plugin.manifest.version.to_string(),
            api_version: plugin.manifest.api_version.to_string(),
            path: plugin.path.clone(),
            library_hash: file_hash(&plugin.path),
        }
    }
}

impl Threads {
    /// This process.
    pub fn current() -> Self {
        Self {
            available: std::thread::available_parallelism().map_or(1, usize::from),
            candle: candle_core::utils::get_num_threads(),
        }
    }
}

impl DatasetInfo {
    /// The identity of `data`, opened from `source` (named `name`).
    pub fn new(name: &str, source: Option<&DataSource>, data: &Data) -> Self {
        let config = source.map(|s| format!("{s:?}")).unwrap_or_default();
        let (train, val) = (data.train.len(), data.val.len());
        let identity = format!(
            "{config}\ntrain={train}\nval={val}\nclasses={}\nsize={}\nchannels={}",
            data.classes, data.size, data.channels
        );
        let mut fingerprint = hex(&Sha256::digest(identity.as_bytes()));
        fingerprint.truncate(16);
        Self {
            name: name.to_string(),
            kind: source.map(DataSource::kind).unwrap_or("?").to_string(),
            config,
            train,
            val,
            classes: data.classes,
            size: data.size,
            channels: data.channels,
            mean: data.stats.mean.clone(),
            std: data.stats.std.clone(),
            fingerprint,
        }
    }
}

/// The `seed` field of a data source's config, if it has one.
fn data_seed(source: &DataSource) -> Option<u64> {
    match serde_json::to_value(source).ok()? {
        Value::Object(variant) => variant.values().find_map(|cfg| cfg.get("seed")?.as_u64()),
        _ => None,
    }
}

/// SHA-256 (hex) of the file at `path`, or `None` if it cannot be read.
pub fn file_hash(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    Some(hex(&Sha256::digest(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The current time as RFC 3339 UTC.
fn now() -> String {
    rfc3339(SystemTime::now())
}

/// `t` as RFC 3339 UTC, to the second: `2023-11-14T22:13:20Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day); Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{data::source, workspace::schema};

    const WS: &str = r#"Workspace(
    name: "w",
    data: { "shapes": Shapes((classes: 3, images: 8, val_images: 4, size: 8, seed: 5)) },
    sessions: [
        Session(
            name: "s",
            data: "shapes",
            backbone: Plugin(name: "vit"),
            stages: [Evaluate([Knn((k: 2, temperature: 0.07))])],
            seed: 3,
        ),
    ],
)"#;

    fn manifest() -> Manifest {
        let path = Path::new("w.ron");
        let ws = schema::parse(WS, path).unwrap();
        let session = &ws.sessions[0];
        let data = source::open("shapes", &ws.data["shapes"], Path::new("."), None).unwrap();
        Manifest::start(&ws, session, &data, &[], path)
    }

    #[test]
    fn start_records_seeds_dataset_and_host() {
        let m = manifest();
        assert_eq!((m.workspace.as_str(), m.session.as_str()), ("w", "s"));
        assert_eq!(m.seeds["session"], 3);
        assert_eq!(m.seeds["data"], 5);
        assert_eq!((m.dataset.train, m.dataset.val), (8, 4));
        assert_eq!((m.dataset.kind.as_str(), m.dataset.classes), ("Shapes", 3));
        assert_eq!(m.dataset.fingerprint.len(), 16);
        assert!(m.dataset.config.contains("seed: 5"), "{}", m.dataset.config);
        assert!(m.config.contains("seed: 3"), "{}", m.config);
        assert_eq!(m.host.version, env!("CARGO_PKG_VERSION"));
        assert!(m.threads.available >= 1 && m.threads.candle >= 1);
        assert_eq!(m.outcome, Outcome::Running);
        assert!(m.resumes.is_empty() && m.hot_reloads.is_empty());
    }

    #[test]
    fn fingerprint_follows_the_source() {
        let a = manifest();
        let text = WS.replace("seed: 5", "seed: 6");
        let ws = schema::parse(&text, Path::new("w.ron")).unwrap();
        let data = source::open("shapes", &ws.data["shapes"], Path::new("."), None).unwrap();
        let b = Manifest::start(&ws, &ws.sessions[0], &data, &[], Path::new("w.ron"));
        assert_ne!(a.dataset.fingerprint, b.dataset.fingerprint);
        assert_eq!(a.dataset.fingerprint, manifest().dataset.fingerprint);
    }

    #[test]
    fn write_then_load_round_trips_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("patchwork-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = manifest();
        m.finish(12, Outcome::Done);
        m.write(&dir).unwrap();
        assert!(!dir.join("manifest.json.tmp").exists());
        assert_eq!(Manifest::load(&dir).unwrap(), m);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_names_the_folder_that_is_not_a_run() {
        let dir = std::env::temp_dir().join(format!("patchwork-not-a-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = Manifest::load(&dir).unwrap_err().to_string();
        assert!(
            e.contains("is not a run folder") && e.contains(&*dir.to_string_lossy()),
            "{e}"
        );
        let gone = dir.join("gone");
        let e = Manifest::load(&gone).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resume_keeps_history_and_names_changes() {
        let mut first = manifest();
        first.started_at = "2020-01-01T00:00:00Z".into();
        first.record_reload("dino", 7, Some("ab".into()));
        first.finish(10, Outcome::Interrupted);
        let mut second = manifest();
        second.seeds.insert("session".into(), 9);
        second.record_resume(10, Ok(first.clone()));
        assert_eq!(second.started_at, "2020-01-01T00:00:00Z");
        assert_eq!(second.hot_reloads, first.hot_reloads);
        assert_eq!(second.resumes.len(), 1);
        assert_eq!(second.resumes[0].step, 10);
        assert_eq!(second.resumes[0].changes, ["seeds.session: 3 → 9"]);
        assert_eq!(
            (second.outcome, second.finished_at.as_ref()),
            (Outcome::Running, None)
        );

        let mut third = manifest();
        third.record_resume(20, Ok(second));
        assert_eq!(
            third.resumes.iter().map(|r| r.step).collect::<Vec<_>>(),
            [10, 20]
        );
        assert_eq!(third.resumes[1].changes, ["seeds.session: 9 → 3"]);

        let mut orphan = manifest();
        orphan.record_resume(4, Err("no manifest.json".into()));
        assert_eq!(orphan.resumes.len(), 1);
        assert!(orphan.resumes[0].changes[0].contains("no manifest.json"));
    }

    #[test]
    fn provenance_keys_plugins_by_name_and_skips_history() {
        let mut a = manifest();
        a.plugins.push(PluginInfo {
            name: "vit".into(),
            kind: "backbone".into(),
            version: "0.1.0".into(),
            api_version: "0.1.0".into(),
            path: "libvit.so".into(),
            library_hash: Some("aa".into()),
        });
        let mut b = a.clone();
        b.plugins[0].library_hash = Some("bb".into());
        b.finish(3, Outcome::Done);
        b.config.push_str("// changed");
        let diffs = provenance_differences(&a, &b);
        assert_eq!(
            diffs,
            [(
                "plugins.vit.library_hash".to_string(),
                "aa".to_string(),
                "bb".to_string()
            )]
        );
        assert_eq!(a.provenance()["dataset.train"], "8");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let at = |s: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn file_hash_is_sha256() {
        let path = std::env::temp_dir().join(format!("patchwork-hash-{}", std::process::id()));
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            file_hash(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(file_hash(&path), None);
    }
}
