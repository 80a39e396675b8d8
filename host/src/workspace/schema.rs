//! The workspace file: typed schema, loading, and validation with `file:line:column`
//! errors.
//!
//! A workspace names data sources and a list of sessions; a session has one backbone
//! and ordered stages (see DESIGN.md, "Sessions, stages, outputs"):
//!
//! ```ron
//! Workspace(
//!     name: "quickstart",
//!     data: { "shapes": Shapes((classes: 6, images: 2000, val_images: 400, size: 32, seed: 7)) },
//!     sessions: [
//!         Session(
//!             name: "vit-dino",
//!             data: "shapes",
//!             backbone: Plugin(name: "vit", config: (preset: "tiny", patch_size: 4)),
//!             stages: [
//!                 Pretrain((task: Plugin(name: "dino"), epochs: 10, batch_size: 64)),
//!                 Evaluate([Knn((k: 20, temperature: 0.07))]),
//!             ],
//!         ),
//!     ],
//! )
//! ```
//!
//! Every struct rejects unknown fields; enums are externally tagged (`Pretrain((...))`).
//! Plugin configs stay RON text ([`PluginRef::config`]): the plugin parses them with its
//! own typed config, and [`map_config_position`] turns a position in that text back
//! into a position in the workspace file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use patchwork_plugin_api::abi::PluginKind;
use ron::value::RawValue;
use serde::{Deserialize, Serialize};

use super::error::{Result, WorkspaceError};
use crate::data::{
    arrays::ArraysConfig, cifar::CifarConfig, domains::DomainsConfig,
    image_folder::ImageFolderConfig, sar_optical::SarOpticalConfig, scenes::ScenesConfig,
    shapes::ShapesConfig,
};

// ---------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------

/// A workspace file: data sources and the sessions that use them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "Workspace", deny_unknown_fields)]
pub struct Workspace {
    /// Names the folder under `output` that holds this workspace's runs.
    pub name: String,
    /// Root of all runs; a session writes to `<output>/<workspace name>/<session name>/`.
    #[serde(default = "default_output")]
    pub output: PathBuf,
    /// Extra folders searched for plugin libraries, relative to the workspace file.
    #[serde(default)]
    pub plugin_dirs: Vec<PathBuf>,
    /// Data sources by name.
    #[serde(default)]
    pub data: BTreeMap<String, DataSource>,
    /// The sessions, in the order they run.
    pub sessions: Vec<Session>,
    /// Sessions the TUI trains at once (`patchwork run` runs them one after another).
    #[serde(default = "default_parallel")]
    pub parallel: usize,
}

/// A named source of images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DataSource {
    /// The procedural shapes dataset: one object per image, a class and a mask.
    Shapes(ShapesConfig),
    /// Procedural scenes of several objects with multi-label targets and masks.
    Scenes(ScenesConfig),
    /// The same procedural classes rendered in a source and a target style.
    Domains(DomainsConfig),
    /// Procedural scenes as 3 optical plus 2 speckled SAR channels, multi-label.
    SarOptical(SarOpticalConfig),
    /// A folder of images: class sub-folders, a flat folder, or `train`/`val`.
    ImageFolder(ImageFolderConfig),
    /// CIFAR-10 or CIFAR-100 in the binary format.
    Cifar(CifarConfig),
    /// Multi-band arrays: a folder of `.npy` files or one safetensors file.
    Arrays(ArraysConfig),
}

impl DataSource {
    /// The variant's name as written in the workspace (`"Shapes"`, `"Cifar"`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Shapes(_) => "Shapes",
            Self::Scenes(_) => "Scenes",
            Self::Domains(_) => "Domains",
            Self::SarOptical(_) => "SarOptical",
            Self::ImageFolder(_) => "ImageFolder",
            Self::Cifar(_) => "Cifar",
            Self::Arrays(_) => "Arrays",
        }
    }
}

/// One backbone trained and evaluated through ordered stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "Session", deny_unknown_fields)]
pub struct Session {
    /// Unique within the workspace; names the run folder and the `--set` path.
    pub name: String,
    /// Name of a data source in [`Workspace::data`].
    pub data: String,
    /// The backbone plugin.
    pub backbone: PluginRef,
    /// What to do with the backbone, in order.
    pub stages: Vec<Stage>,
    /// Seed of everything random in the session.
    #[serde(default)]
    pub seed: u64,
    /// Repeat the session once per seed: `seeds: [0, 1, 2]` runs `NAME-seed0`,
    /// `NAME-seed1` and `NAME-seed2` (each with that `seed`), and the workspace's
    /// `summary.md` gives each metric's mean ± std over them. Empty: run once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    /// `"cpu"` or `"cuda:N"`; the variants `Cpu` and `Cuda(N)` are read as those.
    #[serde(default = "default_device", deserialize_with = "device_text")]
    pub device: String,
    /// Arithmetic of the session's matrix products: `F32`, or `Bf16` (autocast: the
    /// matmuls' operands in bf16, master weights, norms, softmaxes and reductions in f32).
    #[serde(default)]
    pub precision: Precision,
    /// Steps between checkpoints; 0 means once per epoch. One is always written at the end.
    #[serde(default)]
    pub checkpoint_every: u64,
    /// How many of the latest checkpoints to keep on disk (`keep_last` is accepted too).
    #[serde(default = "default_keep_checkpoints", alias = "keep_last")]
    pub keep_checkpoints: usize,
    /// Also keep the epoch-end checkpoint with the best epoch mean of a metric, as
    /// `checkpoints/best.safetensors`: `keep_best: Some((metric: "loss", mode: Min))`.
    #[serde(default)]
    pub keep_best: Option<KeepBest>,
}

/// Which checkpoint `keep_best` keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepBest {
    /// `"loss"` or the name of a metric the pretext task reports.
    pub metric: String,
    /// Whether lower or higher is better.
    #[serde(default)]
    pub mode: BestMode,
}

/// Lower or higher is better.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BestMode {
    /// Lower is better (losses).
    #[default]
    Min,
    /// Higher is better (accuracies).
    Max,
}

impl BestMode {
    /// Whether `value` beats `best` (any finite value beats none).
    pub fn better(self, value: f64, best: Option<f64>) -> bool {
        value.is_finite()
            && best.is_none_or(|b| match self {
                Self::Min => value < b,
                Self::Max => value > b,
            })
    }
}

/// A plugin by name, with its config as RON text: `Plugin(name: "vit", config: (depth: 4))`.
///
/// The config text is exactly what the file holds (default `()`); the plugin parses it
/// with its own typed config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "PluginRefRepr")]
pub struct PluginRef {
    /// The plugin's name (checked later, by the plugin registry).
    pub name: String,
    /// The config, as RON text.
    pub config: String,
    /// Byte offset of `config` in the workspace source, when it came from a file; see
    /// [`map_config_position`].
    pub config_offset: Option<usize>,
}

#[derive(Deserialize)]
#[serde(rename = "Plugin", deny_unknown_fields)]
struct PluginRefRepr {
    name: String,
    #[serde(default = "unit_config")]
    config: Box<RawValue>,
}

impl From<PluginRefRepr> for PluginRef {
    fn from(repr: PluginRefRepr) -> Self {
        Self {
            name: repr.name,
            config: repr.config.get_ron().to_owned(),
            config_offset: None,
        }
    }
}

impl Serialize for PluginRef {
    /// Writes `Plugin(name: ..., config: ...)`: the config as raw RON in RON output and
    /// as a string in other formats. The offset is not serialised.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Plugin", 2)?;
        s.serialize_field("name", &self.name)?;
        match RawValue::from_ron(&self.config) {
            Ok(raw) => s.serialize_field("config", raw)?,
            Err(_) => s.serialize_field("config", &self.config)?,
        }
        s.end()
    }
}

impl PluginRef {
    /// A plugin with the default config `()`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            config: "()".to_owned(),
            config_offset: None,
        }
    }
}

/// One step of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Stage {
    /// Self-supervised pre-training with a pretext-task plugin.
    Pretrain(PretrainStage),
    /// Supervised adaptation of the current backbone with an adaptation plugin.
    Adapt(AdaptStage),
    /// Evaluators run on the current backbone.
    Evaluate(Vec<Evaluator>),
}

impl Stage {
    /// The plugin a training stage runs, the kind it must be, and the field naming it.
    pub fn plugin(&self) -> Option<(&PluginRef, PluginKind, &'static str)> {
        match self {
            Self::Pretrain(p) => Some((&p.task, PluginKind::PRETEXT, "task")),
            Self::Adapt(a) => Some((&a.method, PluginKind::ADAPTATION, "method")),
            Self::Evaluate(_) => None,
        }
    }

    /// [`Stage::plugin`]'s reference, mutably.
    pub fn plugin_mut(&mut self) -> Option<&mut PluginRef> {
        match self {
            Self::Pretrain(p) => Some(&mut p.task),
            Self::Adapt(a) => Some(&mut a.method),
            Self::Evaluate(_) => None,
        }
    }
}

/// `Pretrain((task: Plugin(...), epochs: 10, batch_size: 64, optimizer: AdamW((...))))`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainStage {
    /// The pretext-task plugin.
    pub task: PluginRef,
    /// Passes over the training set; at least 1.
    pub epochs: u32,
    /// Images per step; at least 2.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Optimizer and its schedules.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Run the evaluators of the next `Evaluate` stage every this many epochs while
    /// training (their results go to `metrics.jsonl` with the epoch, and to the
    /// report); 0: only at the end.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub eval_every: u32,
}

/// `Adapt((method: Plugin(...), epochs: 10, batch_size: 64, optimizer: ..., min_scale: 0.35))`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptStage {
    /// The adaptation plugin.
    pub method: PluginRef,
    /// Passes over the training set; at least 1.
    pub epochs: u32,
    /// Images per step; at least 2.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Optimizer and its schedules.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Smallest random crop of a training image, as a fraction of its area; 1 keeps
    /// whole images (each is also flipped with probability 0.5).
    #[serde(default = "default_adapt_min_scale")]
    pub min_scale: f32,
}

/// The optimizer of a training stage, with its learning-rate and weight-decay schedules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Optimizer {
    /// AdamW with cosine learning-rate and weight-decay schedules (DINO's recipe).
    AdamW(AdamWConfig),
    /// SGD with momentum and a cosine learning-rate schedule.
    Sgd(SgdConfig),
}

impl Default for Optimizer {
    fn default() -> Self {
        Self::AdamW(AdamWConfig::default())
    }
}

/// AdamW settings; the defaults are DINO's ViT-S/16 recipe (methods.md, DINO).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// Peak learning rate, reached at the end of the warm-up (DINO: 5e-4 at batch 256).
    pub lr: f64,
    /// Final learning rate of the cosine schedule (DINO: 1e-6).
    pub min_lr: f64,
    /// Epochs of linear warm-up (DINO: 10).
    pub warmup_epochs: u32,
    /// Initial weight decay (DINO: 0.04).
    pub weight_decay: f64,
    /// Final weight decay of the cosine schedule (DINO: 0.4).
    pub weight_decay_end: f64,
    /// Maximum gradient norm per parameter; 0 turns clipping off (DINO: 3.0).
    pub clip_grad: f64,
    /// First-moment decay (PyTorch default 0.9).
    pub beta1: f64,
    /// Second-moment decay (PyTorch default 0.999).
    pub beta2: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 5e-4,
            min_lr: 1e-6,
            warmup_epochs: 10,
            weight_decay: 0.04,
            weight_decay_end: 0.4,
            clip_grad: 3.0,
            beta1: 0.9,
            beta2: 0.999,
        }
    }
}

/// SGD settings; `lr` is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Momentum (default 0.9).
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Weight decay (default 0).
    #[serde(default)]
    pub weight_decay: f64,
    /// Epochs of linear warm-up (default 0).
    #[serde(default)]
    pub warmup_epochs: u32,
    /// Final learning rate of the cosine schedule (default 0).
    #[serde(default)]
    pub min_lr: f64,
}

/// A built-in evaluator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Evaluator {
    /// Weighted k-NN on frozen features ([`crate::eval::knn`]).
    Knn(KnnConfig),
    /// Linear probe on frozen CLS features, top-1 ([`crate::eval::probe`]).
    Linear(ProbeSettings),
    /// Multi-label linear probe (a sigmoid per label), micro and macro mAP.
    MultiLabel(ProbeSettings),
    /// Linear probe on frozen patch tokens, its logits upsampled bilinearly to pixels
    /// and trained per pixel; pixel mIoU on the validation masks.
    Dense(ProbeSettings),
    /// A PNG of the last block's CLS attention per head for fixed validation images
    /// (DINO's visualisation), written to `attention/` in the run folder.
    Attention(AttentionSettings),
}

impl Evaluator {
    /// The evaluator's name in reports and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Knn(_) => "Knn",
            Self::Linear(_) => "Linear",
            Self::MultiLabel(_) => "MultiLabel",
            Self::Dense(_) => "Dense",
            Self::Attention(_) => "Attention",
        }
    }
}

/// `Attention((images: 4))`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionSettings {
    /// Validation images in the figure (the first ones of the split); 1 to 32.
    pub images: usize,
}

impl Default for AttentionSettings {
    fn default() -> Self {
        Self { images: 4 }
    }
}

/// `Linear((blocks: 4, epochs: 100, batch_size: 128, lr: 5e-4))`; the defaults are
/// DINO's `eval_linear.py` for ViT-S (lr 0.001 × B/256).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeSettings {
    /// CLS tokens of this many last blocks, concatenated (1: the final CLS alone;
    /// unused by `Dense`, which reads the final patch tokens).
    pub blocks: usize,
    /// Passes over the training features; at least 1.
    pub epochs: u32,
    /// Rows per step; at least 1.
    pub batch_size: usize,
    /// Peak learning rate of the cosine schedule; positive.
    pub lr: f64,
    /// Weight decay of the probe's weights; at least 0.
    pub weight_decay: f64,
    /// Fraction of the training split whose labels the probe sees (a seeded subset;
    /// DINO-MM's 1 % setting is 0.01); in (0, 1].
    pub train_fraction: f64,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            blocks: 4,
            epochs: 100,
            batch_size: 128,
            lr: 5e-4,
            weight_decay: 0.0,
            train_fraction: 1.0,
        }
    }
}

/// `Knn((k: 20, temperature: 0.07))`; the defaults are DINO's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnnConfig {
    /// Neighbours per vote; at least 1 (DINO: 20).
    pub k: usize,
    /// Temperature of the `exp(sim / T)` vote weights; positive (DINO: 0.07).
    pub temperature: f64,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self {
            k: 20,
            temperature: 0.07,
        }
    }
}

/// The device named by [`Session::device`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DeviceSpec {
    /// `"cpu"`.
    Cpu,
    /// `"cuda:N"`: the GPU with ordinal N.
    Cuda(usize),
}

impl DeviceSpec {
    /// Parses `"cpu"` or `"cuda:N"`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        if text == "cpu" {
            return Some(Self::Cpu);
        }
        let ordinal = text.strip_prefix("cuda:")?;
        if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        ordinal.parse().ok().map(Self::Cuda)
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Reads [`Session::device`] as text (`"cuda:0"`) or as a variant (`Cuda(0)`, `Cpu`);
/// text that names no device is kept, for validation to report with its position.
fn device_text<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Variant(DeviceSpec),
        Text(String),
    }
    Ok(match Written::deserialize(d)? {
        Written::Variant(spec) => spec.to_string(),
        Written::Text(text) => text,
    })
}

/// The arithmetic of a session's matrix products ([`Session::precision`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    #[serde(alias = "f32")]
    F32,
    /// bf16 autocast for matmuls (and the patch-embedding convolution); f32 elsewhere.
    #[serde(alias = "bf16")]
    Bf16,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn default_parallel() -> usize {
    1
}

fn default_output() -> PathBuf {
    PathBuf::from("runs")
}
fn default_device() -> String {
    "cpu".to_owned()
}
fn default_keep_checkpoints() -> usize {
    3
}
fn default_batch_size() -> usize {
    64
}
fn default_adapt_min_scale() -> f32 {
    0.35
}
fn default_momentum() -> f64 {
    0.9
}
fn unit_config() -> Box<RawValue> {
    RawValue::from_boxed_ron("()".into()).expect("'()' should be valid RON")
}

impl Workspace {
    /// Every plugin reference in file order: per session, the backbone then each task.
    pub fn plugin_refs(&self) -> Vec<&PluginRef> {
        let mut refs = Vec::new();
        for session in &self.sessions {
            refs.push(&session.backbone);
            refs.extend(
                session
                    .stages
                    .iter()
                    .filter_map(|s| s.plugin().map(|p| p.0)),
            );
        }
        refs
    }

    /// [`Workspace::plugin_refs`], mutably.
    pub fn plugin_refs_mut(&mut self) -> Vec<&mut PluginRef> {
        let mut refs = Vec::new();
        for session in &mut self.sessions {
            refs.push(&mut session.backbone);
            refs.extend(session.stages.iter_mut().filter_map(Stage::plugin_mut));
        }
        refs
    }

    /// The session named `name`.
    pub fn session(&self, name: &str) -> Option<&Session> {
        self.sessions.iter().find(|s| s.name == name)
    }

    /// The workspace with each session that lists `seeds` replaced by one session per
    /// seed (`NAME-seedS`, with that seed and no `seeds`), in place: what runs.
    pub fn expand_seeds(mut self) -> Self {
        self.sessions = self
            .sessions
            .into_iter()
            .flat_map(|s| {
                if s.seeds.is_empty() {
                    return vec![s];
                }
                s.seeds
                    .iter()
                    .map(|&seed| Session {
                        name: Session::seed_name(&s.name, seed),
                        seed,
                        seeds: Vec::new(),
                        ..s.clone()
                    })
                    .collect()
            })
            .collect();
        self
    }

    /// The sessions that run for `name`: the session itself, or the runs of its seeds
    /// when it lists `seeds`, or the one seed's run `NAME-seedS`. `None` when nothing
    /// matches.
    pub fn runs_of(&self, name: &str) -> Option<Vec<Session>> {
        let expanded = self.clone().expand_seeds();
        if let Some(s) = self.session(name).filter(|s| !s.seeds.is_empty()) {
            let names: Vec<String> = s
                .seeds
                .iter()
                .map(|&seed| Session::seed_name(name, seed))
                .collect();
            return Some(
                expanded
                    .sessions
                    .into_iter()
                    .filter(|r| names.contains(&r.name))
                    .collect(),
            );
        }
        expanded
            .sessions
            .into_iter()
            .find(|r| r.name == name)
            .map(|r| vec![r])
    }
}

impl Session {
    /// The run name of seed `seed` of a session named `name` that lists `seeds`.
    pub fn seed_name(name: &str, seed: u64) -> String {
        format!("{name}-seed{seed}")
    }

    /// The evaluators that a `Pretrain` stage at index `stage` with `eval_every` runs:
    /// those of the next `Evaluate` stage.
    pub fn periodic_evaluators(&self, stage: usize) -> Option<&[Evaluator]> {
        self.stages.get(stage + 1..)?.iter().find_map(|s| match s {
            Stage::Evaluate(evs) => Some(evs.as_slice()),
            Stage::Pretrain(_) | Stage::Adapt(_) => None,
        })
    }
}

// ---------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------

/// Reads, parses and validates the workspace file at `path`.
///
/// Keep the source text (or read it again) to map plugin config errors with
/// [`map_config_position`].
pub fn load(path: &Path) -> Result<Workspace> {
    let source = std::fs::read_to_string(path).map_err(|source| WorkspaceError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(&source, path)
}

/// Parses and validates workspace `source`; `path` names it in errors and anchors
/// relative paths (image folder roots).
pub fn parse(source: &str, path: &Path) -> Result<Workspace> {
    let mut ws: Workspace = ron::Options::default()
        .from_str(source)
        .map_err(|e| parse_error(path, source, &e))?;
    let tree = ron_text::document(source);
    if let Some(tree) = &tree {
        fill_config_offsets(&mut ws, tree, source);
    }
    check(&ws, Some(path.parent().unwrap_or(Path::new("")))).map_err(|problem| {
        WorkspaceError::Invalid {
            path: path.to_owned(),
            location: tree
                .as_ref()
                .and_then(|t| problem.at.locate(t))
                .map(|offset| line_col(source, offset)),
            message: problem.message,
        }
    })?;
    Ok(ws)
}

/// `path` resolved against the folder of the workspace file `ws_path` when relative.
pub fn resolve(ws_path: &Path, path: &Path) -> PathBuf {
    match ws_path.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_owned(),
    }
}

/// 1-based `(line, column)` of `byte_offset` in `source`, counting columns in
/// characters as ron does. Offsets past the end map to the end.
pub fn line_col(source: &str, byte_offset: usize) -> (usize, usize) {
    let mut offset = byte_offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = 1 + before.bytes().filter(|&b| b == b'\n').count();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, 1 + before[line_start..].chars().count())
}

/// Maps 1-based `(line, col)` inside a plugin's config text, which starts at byte
/// `config_offset` of `ws_source`, to 1-based `(line, column)` in the workspace file.
pub fn map_config_position(
    ws_source: &str,
    config_offset: usize,
    line: usize,
    col: usize,
) -> (usize, usize) {
    let (base_line, base_col) = line_col(ws_source, config_offset);
    if line <= 1 {
        (base_line, base_col + col.max(1) - 1)
    } else {
        (base_line + line - 1, col)
    }
}

fn parse_error(path: &Path, source: &str, err: &ron::error::SpannedError) -> WorkspaceError {
    // ron reports value errors before the whitespace that precedes the value; point at
    // the value itself.
    let start = byte_offset(source, err.span.start.line, err.span.start.col);
    let (line, column) = match ron_text::skip_ws(source, start) {
        Some(value) if value < source.len() => line_col(source, value),
        _ => (err.span.start.line, err.span.start.col),
    };
    WorkspaceError::Parse {
        path: path.to_owned(),
        line,
        column,
        message: describe(&err.code),
    }
}

/// Byte offset of 1-based `(line, col)` (columns in characters); the inverse of
/// [`line_col`], clamped to the end of the line or text.
fn byte_offset(source: &str, line: usize, col: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        source
            .match_indices('\n')
            .nth(line - 2)
            .map_or(source.len(), |(i, _)| i + 1)
    };
    let rest = &source[line_start..];
    let line_len = rest.find('\n').unwrap_or(rest.len());
    line_start
        + rest[..line_len]
            .char_indices()
            .nth(col.saturating_sub(1))
            .map_or(line_len, |(i, _)| i)
}

/// ron's message in house style: lowercase, names in single quotes.
fn describe(code: &ron::Error) -> String {
    use ron::Error as E;
    let quoted = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let within = |outer: &Option<String>| match outer {
        Some(o) => format!(" in '{o}'"),
        None => String::new(),
    };
    match code {
        E::NoSuchStructField {
            expected,
            found,
            outer,
        } => format!(
            "unknown field '{found}'{}, expected one of {}",
            within(outer),
            quoted(expected)
        ),
        E::NoSuchEnumVariant {
            expected,
            found,
            outer,
        } => format!(
            "unknown variant '{found}'{}, expected one of {}",
            within(outer),
            quoted(expected)
        ),
        E::MissingStructField { field, outer } => {
            format!("missing field '{field}'{}", within(outer))
        }
        E::DuplicateStructField { field, outer } => {
            format!("duplicate field '{field}'{}", within(outer))
        }
        E::ExpectedDifferentStructName { expected, found } => {
            format!("expected '{expected}(...)' but found '{found}(...)'")
        }
        other => {
            let text = other.to_string();
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => text,
            }
        }
    }
}

fn fill_config_offsets(ws: &mut Workspace, tree: &ron_text::Node, source: &str) {
    let Some(sessions) = tree.field("sessions") else {
        return;
    };
    let mut nodes = Vec::new();
    for (i, session) in ws.sessions.iter().enumerate() {
        let node = sessions.item(i);
        nodes.push(node.and_then(|n| n.field("backbone")));
        for (j, stage) in session.stages.iter().enumerate() {
            if let Some((_, _, field)) = stage.plugin() {
                let stage_node = node.and_then(|n| n.field("stages")?.item(j));
                nodes.push(stage_node.and_then(|s| s.inner().field(field)));
            }
        }
    }
    for (plugin, node) in ws.plugin_refs_mut().into_iter().zip(nodes) {
        plugin.config_offset = node
            .and_then(|n| n.field("config"))
            .map(|c| c.start)
            .filter(|&start| source[start..].starts_with(plugin.config.as_str()));
    }
}

// ---------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------

/// A broken rule and where in the file it is.
#[derive(Debug)]
pub(crate) struct Problem {
    pub at: At,
    pub message: String,
}

/// Where a [`Problem`] is, as a path through the file's structure.
#[derive(Debug)]
pub(crate) enum At {
    Root,
    Field(&'static str),
    Sessions,
    Session(usize, &'static str),
    Stage(usize, usize, &'static str),
    Optimizer(usize, usize, &'static str),
    Evaluator(usize, usize, usize, &'static str),
    Data(String, &'static str),
}

impl At {
    /// Byte offset of the value this points at (or of the closest enclosing value).
    fn locate(&self, root: &ron_text::Node) -> Option<usize> {
        let session = |i: usize| root.field("sessions")?.item(i);
        let stage = |i: usize, j: usize| Some(session(i)?.field("stages")?.item(j)?.inner());
        let node = match self {
            At::Root => Some(root),
            At::Field(f) => root.field(f).or(Some(root)),
            At::Sessions => root.field("sessions").or(Some(root)),
            At::Session(i, f) => session(*i).map(|s| s.field(f).unwrap_or(s)),
            At::Stage(i, j, f) => stage(*i, *j).map(|s| s.field(f).unwrap_or(s)),
            At::Optimizer(i, j, f) => stage(*i, *j).map(|s| match s.field("optimizer") {
                Some(o) => o.inner().field(f).unwrap_or(o),
                None => s,
            }),
            At::Evaluator(i, j, e, f) => stage(*i, *j)
                .and_then(|s| s.item(*e))
                .map(|ev| ev.inner().field(f).unwrap_or(ev)),
            At::Data(name, f) => root
                .field("data")
                .and_then(|d| d.field(name))
                .map(|src| src.inner().field(f).unwrap_or(src)),
        };
        node.map(|n| n.start)
    }
}

fn problem(at: At, message: String) -> std::result::Result<(), Problem> {
    Err(Problem { at, message })
}

/// Checks the rules the types cannot express; the first broken one is returned.
/// Filesystem checks (image folder roots) run only when `base_dir` is given.
pub(crate) fn check(ws: &Workspace, base_dir: Option<&Path>) -> std::result::Result<(), Problem> {
    let bad_name = |n: &str| n.is_empty() || n == "." || n == ".." || n.contains(['/', '\\']);
    if bad_name(&ws.name) {
        return problem(
            At::Root,
            format!("workspace name '{}' cannot name a folder", ws.name),
        );
    }
    if ws.parallel == 0 {
        return problem(
            At::Field("parallel"),
            "parallel must be at least 1 (sessions the TUI trains at once), got '0'".into(),
        );
    }
    for (name, source) in &ws.data {
        check_data(name, source, base_dir)?;
    }
    if ws.sessions.is_empty() {
        return problem(
            At::Sessions,
            "workspace has no sessions; add at least one 'Session(...)' to 'sessions'".into(),
        );
    }
    for (i, session) in ws.sessions.iter().enumerate() {
        let name = &session.name;
        if bad_name(name) || name.contains(['.', ' ']) || name.bytes().all(|b| b.is_ascii_digit()) {
            return problem(
                At::Session(i, "name"),
                format!(
                    "session name '{name}' must be non-empty, not a number, and free of \
                     '/', '\\', '.' and spaces (it names a folder and a --set path)"
                ),
            );
        }
        if ws.sessions[..i].iter().any(|s| &s.name == name) {
            return problem(
                At::Session(i, "name"),
                format!("duplicate session name '{name}'; session names must be unique"),
            );
        }
        check_session(i, session, ws)?;
    }
    Ok(())
}

fn check_data(
    name: &str,
    source: &DataSource,
    base_dir: Option<&Path>,
) -> std::result::Result<(), Problem> {
    let DataSource::ImageFolder(cfg) = source else {
        return Ok(());
    };
    let at = |f| At::Data(name.to_owned(), f);
    if !(0.0..1.0).contains(&cfg.val_fraction) {
        return problem(
            at("val_fraction"),
            format!(
                "data source '{name}': val_fraction must be in [0, 1), got '{}'",
                cfg.val_fraction
            ),
        );
    }
    if cfg.size == 0 {
        return problem(
            at("size"),
            format!("data source '{name}': size must be at least 1"),
        );
    }
    if let Some(dir) = base_dir {
        let root = if cfg.root.is_relative() {
            dir.join(&cfg.root)
        } else {
            cfg.root.clone()
        };
        if !root.is_dir() {
            return problem(
                at("root"),
                format!(
                    "data source '{name}': root '{}' is not a folder",
                    root.display()
                ),
            );
        }
    }
    Ok(())
}

fn check_session(i: usize, s: &Session, ws: &Workspace) -> std::result::Result<(), Problem> {
    let name = &s.name;
    if !ws.data.contains_key(&s.data) {
        let defined = if ws.data.is_empty() {
            "none (add one under 'data')".to_owned()
        } else {
            ws.data
                .keys()
                .map(|k| format!("'{k}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return problem(
            At::Session(i, "data"),
            format!(
                "session '{name}' uses data source '{}', which is not defined; defined: {defined}",
                s.data
            ),
        );
    }
    if DeviceSpec::parse(&s.device).is_none() {
        return problem(
            At::Session(i, "device"),
            format!(
                "session '{name}': device '{}' is neither 'cpu' nor 'cuda:N'",
                s.device
            ),
        );
    }
    for (k, seed) in s.seeds.iter().enumerate() {
        if s.seeds[..k].contains(seed) {
            return problem(
                At::Session(i, "seeds"),
                format!("session '{name}': seed {seed} is listed twice in 'seeds'"),
            );
        }
        let run = Session::seed_name(name, *seed);
        if ws.sessions.iter().any(|other| other.name == run) {
            return problem(
                At::Session(i, "seeds"),
                format!(
                    "session '{name}': its seed {seed} runs as '{run}', which is also the name of another session"
                ),
            );
        }
    }
    if s.stages.is_empty() {
        return problem(
            At::Session(i, "stages"),
            format!("session '{name}' has no stages"),
        );
    }
    for (j, stage) in s.stages.iter().enumerate() {
        let ctx = format!("session '{name}', stage {j}");
        match stage {
            Stage::Pretrain(p) => {
                check_training(i, j, &ctx, p.epochs, p.batch_size, &p.optimizer)?;
                if p.eval_every > 0 && s.periodic_evaluators(j).is_none() {
                    return problem(
                        At::Stage(i, j, "eval_every"),
                        format!(
                            "{ctx}: eval_every runs the evaluators of the next 'Evaluate' stage, \
                             but none follows this stage"
                        ),
                    );
                }
            }
            Stage::Adapt(a) => {
                check_training(i, j, &ctx, a.epochs, a.batch_size, &a.optimizer)?;
                if !(a.min_scale > 0.0 && a.min_scale <= 1.0) {
                    return problem(
                        At::Stage(i, j, "min_scale"),
                        format!("{ctx}: min_scale must be in (0, 1], got '{}'", a.min_scale),
                    );
                }
            }
            Stage::Evaluate(evaluators) => {
                for (e, evaluator) in evaluators.iter().enumerate() {
                    if let Evaluator::Attention(a) = evaluator {
                        if !(1..=32).contains(&a.images) {
                            return problem(
                                At::Evaluator(i, j, e, "images"),
                                format!(
                                    "{ctx}: Attention images must be 1 to 32, got '{}'",
                                    a.images
                                ),
                            );
                        }
                        continue;
                    }
                    let probe = match evaluator {
                        Evaluator::Knn(_) | Evaluator::Attention(_) => None,
                        Evaluator::Linear(p) | Evaluator::MultiLabel(p) | Evaluator::Dense(p) => {
                            Some(p)
                        }
                    };
                    if let Some(p) = probe {
                        let name = evaluator.name();
                        let bad = [
                            ("blocks", p.blocks == 0, p.blocks.to_string(), "at least 1"),
                            ("epochs", p.epochs == 0, p.epochs.to_string(), "at least 1"),
                            (
                                "batch_size",
                                p.batch_size == 0,
                                p.batch_size.to_string(),
                                "at least 1",
                            ),
                            (
                                "lr",
                                !(p.lr > 0.0 && p.lr.is_finite()),
                                p.lr.to_string(),
                                "positive",
                            ),
                            (
                                "weight_decay",
                                !(p.weight_decay >= 0.0 && p.weight_decay.is_finite()),
                                p.weight_decay.to_string(),
                                "at least 0",
                            ),
                            (
                                "train_fraction",
                                !(p.train_fraction > 0.0 && p.train_fraction <= 1.0),
                                p.train_fraction.to_string(),
                                "in (0, 1]",
                            ),
                        ];
                        if let Some((field, _, value, rule)) = bad.into_iter().find(|b| b.1) {
                            return problem(
                                At::Evaluator(i, j, e, field),
                                format!("{ctx}: {name} {field} must be {rule}, got '{value}'"),
                            );
                        }
                        continue;
                    }
                    let Evaluator::Knn(knn) = evaluator else {
                        continue;
                    };
                    if knn.k == 0 {
                        return problem(
                            At::Evaluator(i, j, e, "k"),
                            format!("{ctx}: k must be at least 1, got '0'"),
                        );
                    }
                    if !(knn.temperature > 0.0 && knn.temperature.is_finite()) {
                        return problem(
                            At::Evaluator(i, j, e, "temperature"),
                            format!(
                                "{ctx}: temperature must be positive, got '{}'",
                                knn.temperature
                            ),
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

fn check_training(
    i: usize,
    j: usize,
    ctx: &str,
    epochs: u32,
    batch_size: usize,
    optimizer: &Optimizer,
) -> std::result::Result<(), Problem> {
    if epochs == 0 {
        return problem(
            At::Stage(i, j, "epochs"),
            format!("{ctx}: epochs must be at least 1, got '0'"),
        );
    }
    if batch_size < 2 {
        return problem(
            At::Stage(i, j, "batch_size"),
            format!("{ctx}: batch_size must be at least 2, got '{batch_size}'"),
        );
    }
    let (lr, min_lr) = match optimizer {
        Optimizer::AdamW(a) => {
            for (field, beta) in [("beta1", a.beta1), ("beta2", a.beta2)] {
                if !(0.0..1.0).contains(&beta) {
                    return problem(
                        At::Optimizer(i, j, field),
                        format!("{ctx}: {field} must be in [0, 1), got '{beta}'"),
                    );
                }
            }
            let non_negative = [
                ("clip_grad", a.clip_grad),
                ("weight_decay", a.weight_decay),
                ("weight_decay_end", a.weight_decay_end),
            ];
            for (field, value) in non_negative {
                if value < 0.0 {
                    return problem(
                        At::Optimizer(i, j, field),
                        format!("{ctx}: {field} must be >= 0, got '{value}'"),
                    );
                }
            }
            (a.lr, a.min_lr)
        }
        Optimizer::Sgd(s) => (s.lr, s.min_lr),
    };
    if !(lr > 0.0 && lr.is_finite()) {
        return problem(
            At::Optimizer(i, j, "lr"),
            format!("{ctx}: lr must be positive, got '{lr}'"),
        );
    }
    if min_lr < 0.0 {
        return problem(
            At::Optimizer(i, j, "min_lr"),
            format!("{ctx}: min_lr must be >= 0, got '{min_lr}'"),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// RON text structure
// ---------------------------------------------------------------------------------

/// A forgiving structural scanner for RON text: byte spans of values, struct fields,
/// list items and map entries. It locates values for error messages and edits plugin
/// config text; ron itself remains the parser of record.
pub(crate) mod ron_text {
    /// A value and its byte span `start..end`.
    #[derive(Debug, Clone)]
    pub(crate) struct Node {
        pub start: usize,
        pub end: usize,
        /// The identifier before a group (`Pretrain(...)`), or a bare identifier leaf.
        pub name: Option<String>,
        /// `(`, `[` or `{` for groups; `None` for leaves.
        pub open: Option<u8>,
        pub entries: Vec<Entry>,
    }

    /// A group member: struct field (`key: value`), map entry or list/tuple item.
    #[derive(Debug, Clone)]
    pub(crate) struct Entry {
        /// Field name, or map key without quotes; `None` for list and tuple items.
        pub key: Option<String>,
        pub value: Node,
    }

    impl Node {
        /// The value of field (or map key) `key`.
        pub fn field(&self, key: &str) -> Option<&Node> {
            self.entries
                .iter()
                .find(|e| e.key.as_deref() == Some(key))
                .map(|e| &e.value)
        }

        /// The `i`-th member.
        pub fn item(&self, i: usize) -> Option<&Node> {
            self.entries.get(i).map(|e| &e.value)
        }

        /// The content of a newtype variant `Name(x)`: `x`; otherwise the node itself.
        pub fn inner(&self) -> &Node {
            match self.entries.as_slice() {
                [only] if self.name.is_some() && self.open == Some(b'(') && only.key.is_none() => {
                    &only.value
                }
                _ => self,
            }
        }
    }

    /// The top-level value of a RON document (after any `#![enable(...)]` attributes).
    pub(crate) fn document(src: &str) -> Option<Node> {
        let mut s = Scanner {
            src: src.as_bytes(),
            pos: 0,
        };
        s.ws()?;
        while s.src[s.pos..].starts_with(b"#!") {
            s.pos += 2;
            s.value()?;
            s.ws()?;
        }
        let node = s.value()?;
        s.ws()?;
        (s.pos == s.src.len()).then_some(node)
    }

    /// `src` as exactly one value (surrounding whitespace and comments allowed).
    pub(crate) fn value(src: &str) -> Option<Node> {
        let mut s = Scanner {
            src: src.as_bytes(),
            pos: 0,
        };
        s.ws()?;
        let node = s.value()?;
        s.ws()?;
        (s.pos == s.src.len()).then_some(node)
    }

    /// Skips whitespace and comments from `pos`; `None` on an unclosed block comment.
    pub(crate) fn skip_ws(src: &str, pos: usize) -> Option<usize> {
        let mut s = Scanner {
            src: src.as_bytes(),
            pos,
        };
        s.ws()?;
        Some(s.pos)
    }

    struct Scanner<'a> {
        src: &'a [u8],
        pos: usize,
    }

    /// RON identifiers are Unicode XID; any non-ASCII byte is taken as part of one.
    fn is_ident_start(b: u8) -> bool {
        b.is_ascii_alphabetic() || b == b'_' || !b.is_ascii()
    }

    fn is_ident(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b == b'_' || !b.is_ascii()
    }

    impl Scanner<'_> {
        fn peek(&self) -> Option<u8> {
            self.src.get(self.pos).copied()
        }

        fn at(&self, offset: usize) -> Option<u8> {
            self.src.get(self.pos + offset).copied()
        }

        fn ws(&mut self) -> Option<()> {
            loop {
                match (self.peek(), self.at(1)) {
                    (Some(b), _) if b.is_ascii_whitespace() => self.pos += 1,
                    (Some(b'/'), Some(b'/')) => {
                        while self.peek().is_some_and(|b| b != b'\n') {
                            self.pos += 1;
                        }
                    }
                    (Some(b'/'), Some(b'*')) => {
                        self.pos += 2;
                        let mut depth = 1;
                        while depth > 0 {
                            match (self.peek()?, self.at(1)) {
                                (b'*', Some(b'/')) => (depth, self.pos) = (depth - 1, self.pos + 2),
                                (b'/', Some(b'*')) => (depth, self.pos) = (depth + 1, self.pos + 2),
                                _ => self.pos += 1,
                            }
                        }
                    }
                    _ => return Some(()),
                }
            }
        }

        fn ident(&mut self) -> Option<String> {
            let start = self.pos;
            if self.src[self.pos..].starts_with(b"r#") && self.at(2).is_some_and(is_ident_start) {
                self.pos += 2;
            }
            if !self.peek().is_some_and(is_ident_start) {
                self.pos = start;
                return None;
            }
            while self.peek().is_some_and(is_ident) {
                self.pos += 1;
            }
            let text = std::str::from_utf8(&self.src[start..self.pos]).ok()?;
            Some(text.trim_start_matches("r#").to_owned())
        }

        fn leaf(&self, start: usize) -> Option<Node> {
            Some(Node {
                start,
                end: self.pos,
                name: None,
                open: None,
                entries: Vec::new(),
            })
        }

        fn value(&mut self) -> Option<Node> {
            let start = self.pos;
            match self.peek()? {
                b'(' | b'[' | b'{' => self.group(start, None),
                b'"' => {
                    self.string()?;
                    self.leaf(start)
                }
                b'\'' => {
                    self.char_literal()?;
                    self.leaf(start)
                }
                b'b' if matches!(self.at(1), Some(b'"' | b'\'')) => {
                    self.pos += 1;
                    match self.peek()? {
                        b'"' => self.string()?,
                        _ => self.char_literal()?,
                    }
                    self.leaf(start)
                }
                b'r' if matches!(self.at(1), Some(b'"' | b'#'))
                    && !(self.at(1) == Some(b'#') && self.at(2).is_some_and(is_ident_start)) =>
                {
                    self.raw_string()?;
                    self.leaf(start)
                }
                b if is_ident_start(b) => {
                    let name = self.ident()?;
                    let end = self.pos;
                    self.ws()?;
                    if self.peek() == Some(b'(') {
                        return self.group(start, Some(name));
                    }
                    self.pos = end;
                    let mut node = self.leaf(start)?;
                    node.name = Some(name);
                    Some(node)
                }
                b if b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.') => {
                    while self.peek().is_some_and(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-')
                    }) {
                        self.pos += 1;
                    }
                    self.leaf(start)
                }
                _ => None,
            }
        }

        fn string(&mut self) -> Option<()> {
            self.pos += 1; // opening quote
            loop {
                match self.peek()? {
                    b'\\' => self.pos += 2,
                    b'"' => {
                        self.pos += 1;
                        return Some(());
                    }
                    _ => self.pos += 1,
                }
            }
        }

        fn char_literal(&mut self) -> Option<()> {
            self.pos += 1; // opening quote
            loop {
                match self.peek()? {
                    b'\\' => self.pos += 2,
                    b'\'' => {
                        self.pos += 1;
                        return Some(());
                    }
                    _ => self.pos += 1,
                }
            }
        }

        fn raw_string(&mut self) -> Option<()> {
            self.pos += 1; // r
            let hashes = self.src[self.pos..]
                .iter()
                .take_while(|&&b| b == b'#')
                .count();
            self.pos += hashes;
            if self.peek()? != b'"' {
                return None;
            }
            self.pos += 1;
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let len = self.src[self.pos..]
                .windows(close.len())
                .position(|w| w == close.as_slice())?;
            self.pos += len + close.len();
            Some(())
        }

        fn group(&mut self, start: usize, name: Option<String>) -> Option<Node> {
            let open = self.peek()?;
            let close = match open {
                b'(' => b')',
                b'[' => b']',
                _ => b'}',
            };
            self.pos += 1;
            let mut entries = Vec::new();
            loop {
                self.ws()?;
                if self.peek()? == close {
                    self.pos += 1;
                    break;
                }
                let key = match open {
                    b'{' => {
                        let key = self.value()?;
                        self.ws()?;
                        (self.peek()? == b':').then_some(())?;
                        self.pos += 1;
                        let text = std::str::from_utf8(&self.src[key.start..key.end]).ok()?;
                        Some(text.trim_matches('"').to_owned())
                    }
                    b'(' => self.field_key()?,
                    _ => None,
                };
                self.ws()?;
                let value = self.value()?;
                entries.push(Entry { key, value });
                self.ws()?;
                match self.peek()? {
                    b',' => self.pos += 1,
                    b if b == close => {}
                    _ => return None,
                }
            }
            Some(Node {
                start,
                end: self.pos,
                name,
                open: Some(open),
                entries,
            })
        }

        /// `ident :` at the cursor (consumed, returns the name), or nothing (cursor kept).
        fn field_key(&mut self) -> Option<Option<String>> {
            let start = self.pos;
            if let Some(name) = self.ident() {
                self.ws()?;
                if self.peek() == Some(b':') {
                    self.pos += 1;
                    return Some(Some(name));
                }
            }
            self.pos = start;
            Some(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/workspaces")
    }

    const QUICKSTART: &str = r#"Workspace(
    name: "quickstart",
    output: "runs",
    plugin_dirs: [],
    data: {
        "shapes": Shapes((classes: 6, images: 2000, val_images: 400, size: 32, seed: 7)),
    },
    sessions: [
        Session(
            name: "vit-dino",
            data: "shapes",
            backbone: Plugin(name: "vit", config: (preset: "tiny", patch_size: 4, img_size: 32)),
            stages: [
                Pretrain((
                    task: Plugin(name: "dino", config: (out_dim: 1024)),
                    epochs: 10,
                    batch_size: 64,
                    optimizer: AdamW((lr: 5e-4, min_lr: 1e-6, warmup_epochs: 2, weight_decay: 0.04, weight_decay_end: 0.4, clip_grad: 3.0)),
                )),
                Evaluate([Knn((k: 20, temperature: 0.07))]),
            ],
            seed: 0,
            device: "cpu",          // "cpu" or "cuda:N"
            checkpoint_every: 100,  // steps; default 0 = once per epoch
            keep_checkpoints: 3,
            keep_best: None,
        ),
    ],
)
"#;

    fn parse_str(source: &str) -> Result<Workspace> {
        parse(source, Path::new("ws.ron"))
    }

    fn parse_err(source: &str) -> String {
        parse_str(source).unwrap_err().to_string()
    }

    #[test]
    fn quickstart_parses_with_exact_plugin_config_text() {
        let ws = parse_str(QUICKSTART).unwrap();
        assert_eq!(ws.name, "quickstart");
        assert_eq!(ws.output, PathBuf::from("runs"));
        let DataSource::Shapes(shapes) = &ws.data["shapes"] else {
            panic!("shapes should be a Shapes source");
        };
        assert_eq!((shapes.classes, shapes.images, shapes.seed), (6, 2000, 7));
        let s = &ws.sessions[0];
        assert_eq!((s.name.as_str(), s.data.as_str()), ("vit-dino", "shapes"));
        assert_eq!(s.backbone.name, "vit");
        assert_eq!(
            s.backbone.config,
            r#"(preset: "tiny", patch_size: 4, img_size: 32)"#
        );
        let offset = s.backbone.config_offset.unwrap();
        assert!(QUICKSTART[offset..].starts_with(&s.backbone.config));
        let Stage::Pretrain(p) = &s.stages[0] else {
            panic!("stage 0 should be Pretrain");
        };
        assert_eq!(p.task.config, "(out_dim: 1024)");
        assert!(QUICKSTART[p.task.config_offset.unwrap()..].starts_with("(out_dim: 1024)"));
        assert_eq!((p.epochs, p.batch_size), (10, 64));
        let Optimizer::AdamW(adamw) = &p.optimizer else {
            panic!("optimizer should be AdamW");
        };
        assert_eq!(adamw.warmup_epochs, 2);
        assert_eq!((adamw.beta1, adamw.beta2), (0.9, 0.999));
        assert_eq!(
            s.stages[1],
            Stage::Evaluate(vec![Evaluator::Knn(KnnConfig {
                k: 20,
                temperature: 0.07
            })])
        );
        assert_eq!((s.checkpoint_every, s.keep_checkpoints), (100, 3));
        assert_eq!(DeviceSpec::parse(&s.device), Some(DeviceSpec::Cpu));
    }

    #[test]
    fn defaults_fill_omitted_fields() {
        let ws = load(&fixtures().join("valid/minimal.ron")).unwrap();
        assert_eq!(ws.output, PathBuf::from("runs"));
        assert!(ws.plugin_dirs.is_empty());
        let s = &ws.sessions[0];
        assert_eq!(
            (s.seed, s.device.as_str(), s.checkpoint_every),
            (0, "cpu", 0)
        );
        assert_eq!(s.keep_checkpoints, 3);
        let Stage::Pretrain(p) = &s.stages[0] else {
            panic!("stage 0 should be Pretrain");
        };
        assert_eq!(p.optimizer, Optimizer::AdamW(AdamWConfig::default()));
        let src = "Workspace(name: \"w\", data: {\"d\": Shapes(())}, sessions: [Session(name: \
                   \"s\", data: \"d\", backbone: Plugin(name: \"vit\"), stages: \
                   [Evaluate([Knn(())])])])";
        let ws = parse_str(src).unwrap();
        assert_eq!(ws.sessions[0].backbone, PluginRef::new("vit"));
        assert_eq!(
            ws.sessions[0].stages[0],
            Stage::Evaluate(vec![Evaluator::Knn(KnnConfig::default())])
        );
    }

    #[test]
    fn ron_round_trip_keeps_the_workspace() {
        let ws = parse_str(QUICKSTART).unwrap();
        let text = ron::ser::to_string_pretty(&ws, ron::ser::PrettyConfig::default()).unwrap();
        let mut back = parse_str(&text).unwrap();
        for (a, b) in back.plugin_refs_mut().into_iter().zip(ws.plugin_refs()) {
            assert!(a.config_offset.is_some());
            a.config_offset = b.config_offset;
        }
        assert_eq!(back, ws);
    }

    #[test]
    fn config_positions_map_back_to_the_file() {
        let src = "Workspace(name: \"w\", data: {\"d\": Shapes(())}, sessions: [Session(\n    \
                   name: \"s\", data: \"d\",\n    backbone: Plugin(name: \"vit\", config: (\n        \
                   depth: 4,\n        héads: x,\n    )),\n    stages: [Evaluate([])],\n)])\n";
        let ws = parse_str(src).unwrap();
        let backbone = &ws.sessions[0].backbone;
        let offset = backbone.config_offset.unwrap();
        assert_eq!(line_col(src, offset), (3, 43));
        // A plugin error at line 1, column 2 of its config text, and at line 3, column 9.
        assert_eq!(map_config_position(src, offset, 1, 2), (3, 44));
        assert_eq!(map_config_position(src, offset, 3, 9), (5, 9));
        assert_eq!(line_col(src, src.find("x,").unwrap()), (5, 16));
        assert_eq!(line_col(src, usize::MAX), (9, 1));
    }

    #[test]
    fn rules_the_types_cannot_express() {
        let ws = |sessions: &str| {
            format!("Workspace(name: \"w\", data: {{\"d\": Shapes(())}}, sessions: [{sessions}])")
        };
        let session = |fields: &str, stages: &str| {
            format!(
                "Session(name: \"s\", data: \"d\", backbone: Plugin(name: \"vit\"), {fields} \
                 stages: [{stages}])"
            )
        };
        let pretrain = "Pretrain((task: Plugin(name: \"dino\"), epochs: 1))";
        let cases = [
            (ws(""), "ws.ron:1:57: workspace has no sessions"),
            (
                format!(
                    "Workspace(name: \"w\", parallel: 0, sessions: [{}])",
                    session("", pretrain)
                ),
                "ws.ron:1:32: parallel must be at least 1",
            ),
            (
                ws(&session("device: \"gpu\",", pretrain)),
                "ws.ron:1:127: session 's': device 'gpu' is neither 'cpu' nor 'cuda:N'",
            ),
            (ws(&session("", "")), "session 's' has no stages"),
            (
                ws(&session("", "Evaluate([Knn((k: 0))])")),
                "session 's', stage 0: k must be at least 1, got '0'",
            ),
            (
                ws(&session(
                    "",
                    "Adapt((method: Plugin(name: \"probe\"), epochs: 1, min_scale: 0.0))",
                )),
                "session 's', stage 0: min_scale must be in (0, 1], got '0'",
            ),
            (
                ws(&session(
                    "",
                    "Adapt((method: Plugin(name: \"probe\"), epochs: 0))",
                )),
                "session 's', stage 0: epochs must be at least 1, got '0'",
            ),
            (
                ws(&session(
                    "",
                    "Evaluate([Knn(()), Linear((train_fraction: 0.0))])",
                )),
                "stage 0: Linear train_fraction must be in (0, 1], got '0'",
            ),
            (
                ws(&session("", "Evaluate([Dense((epochs: 0))])")),
                "stage 0: Dense epochs must be at least 1, got '0'",
            ),
            (
                ws(&session("", "Evaluate([Knn(()), Knn((temperature: 0.0))])")),
                "stage 0: temperature must be positive, got '0'",
            ),
            (
                ws(&session(
                    "",
                    "Pretrain((task: Plugin(name: \"dino\"), epochs: 1, batch_size: 1))",
                )),
                "batch_size must be at least 2, got '1'",
            ),
            (
                ws(&session(
                    "",
                    "Pretrain((task: Plugin(name: \"dino\"), epochs: 1, optimizer: \
                     Sgd((lr: 0.0))))",
                )),
                "lr must be positive, got '0'",
            ),
            (
                ws(&format!(
                    "{}, {}",
                    session("", pretrain),
                    session("", pretrain).replace("\"s\"", "\"3\"")
                )),
                "session name '3' must be non-empty, not a number",
            ),
            (
                ws(&session(
                    "",
                    "Pretrain((task: Plugin(name: \"dino\"), epochs: 4, eval_every: 2))",
                )),
                "stage 0: eval_every runs the evaluators of the next 'Evaluate' stage, but none follows",
            ),
            (
                ws(&session("", "Evaluate([Attention((images: 0))])")),
                "stage 0: Attention images must be 1 to 32, got '0'",
            ),
            (
                ws(&session("seeds: [0, 1, 0],", pretrain)),
                "session 's': seed 0 is listed twice in 'seeds'",
            ),
            (
                ws(&format!(
                    "{}, {}",
                    session("seeds: [0, 1],", pretrain),
                    session("", pretrain).replace("\"s\"", "\"s-seed1\"")
                )),
                "its seed 1 runs as 's-seed1', which is also the name of another session",
            ),
        ];
        for (src, expected) in cases {
            let err = parse_err(&src);
            assert!(
                err.contains(expected),
                "'{err}' should contain '{expected}'\n{src}"
            );
        }
        // The located value is the offending one.
        let src = ws(&session("device: \"gpu\",", pretrain));
        assert_eq!(&src[126..131], "\"gpu\"");
    }

    #[test]
    fn seeds_expand_into_one_run_per_seed() {
        let src = "Workspace(name: \"w\", data: {\"d\": Shapes(())}, sessions: [\
                   Session(name: \"a\", data: \"d\", backbone: Plugin(name: \"vit\"), seeds: [3, 1], \
                   stages: [Pretrain((task: Plugin(name: \"dino\"), epochs: 4, eval_every: 2)), \
                   Evaluate([Knn(()), Attention(())])]), \
                   Session(name: \"b\", data: \"d\", backbone: Plugin(name: \"vit\"), seed: 5, \
                   stages: [Evaluate([])])])";
        let ws = parse_str(src).unwrap();
        assert_eq!(ws.sessions[0].seeds, vec![3, 1]);
        assert_eq!(
            ws.sessions[0].periodic_evaluators(0),
            Some(
                &[
                    Evaluator::Knn(KnnConfig::default()),
                    Evaluator::Attention(AttentionSettings { images: 4 })
                ][..]
            )
        );
        assert_eq!(ws.sessions[0].periodic_evaluators(1), None);
        let runs = ws.clone().expand_seeds().sessions;
        let names: Vec<(&str, u64)> = runs.iter().map(|s| (s.name.as_str(), s.seed)).collect();
        assert_eq!(names, [("a-seed3", 3), ("a-seed1", 1), ("b", 5)]);
        assert!(runs.iter().all(|s| s.seeds.is_empty()));
        assert_eq!(runs[0].stages, ws.sessions[0].stages);
        let names_of = |name: &str| {
            ws.runs_of(name)
                .map(|r| r.into_iter().map(|s| s.name).collect::<Vec<_>>())
        };
        assert_eq!(names_of("a").unwrap(), ["a-seed3", "a-seed1"]);
        assert_eq!(names_of("a-seed1").unwrap(), ["a-seed1"]);
        assert_eq!(names_of("b").unwrap(), ["b"]);
        assert_eq!(names_of("a-seed2"), None);
        // Round trip through RON keeps the seeds and eval_every.
        let text = ron::ser::to_string(&ws).unwrap();
        assert!(text.contains("eval_every:2"), "{text}");
        assert_eq!(
            ron::ser::to_string(&parse_str(&text).unwrap()).unwrap(),
            text
        );
    }

    #[test]
    fn undefined_data_lists_what_is_defined() {
        let src = "Workspace(name: \"w\", sessions: [Session(name: \"s\", data: \"d\", \
                   backbone: Plugin(name: \"vit\"), stages: [Evaluate([])])])";
        let err = parse_err(src);
        assert!(
            err.ends_with("defined: none (add one under 'data')"),
            "{err}"
        );
    }

    #[test]
    fn image_folder_root_must_exist() {
        let src = "Workspace(name: \"w\", data: {\"imgs\": ImageFolder((root: \"no/such/dir\"))}, \
                   sessions: [Session(name: \"s\", data: \"imgs\", backbone: Plugin(name: \
                   \"vit\"), stages: [Evaluate([])])])";
        let err = parse(src, &fixtures().join("ws.ron"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ws.ron:1:56: data source 'imgs': root '"),
            "{err}"
        );
        assert!(err.ends_with("no/such/dir' is not a folder"), "{err}");
        let here = src.replace("no/such/dir", "valid");
        let ws = parse(&here, &fixtures().join("ws.ron")).unwrap();
        let DataSource::ImageFolder(cfg) = &ws.data["imgs"] else {
            panic!("imgs should be an ImageFolder");
        };
        assert_eq!((cfg.size, cfg.val_fraction, cfg.seed), (32, 0.2, 0));
    }

    #[test]
    fn struct_names_and_variants_are_checked() {
        let err = parse_err("Workspace(name: \"w\", sessions: [Sesion(name: \"s\")])");
        assert!(
            err.contains("expected 'Session(...)' but found 'Sesion(...)'"),
            "{err}"
        );
        let src = QUICKSTART.replace("Knn((", "Knm((");
        let err = parse_err(&src);
        assert!(
            err.contains("unknown variant 'Knm'") && err.contains("expected one of 'Knn'"),
            "{err}"
        );
    }

    #[test]
    fn device_specs() {
        assert_eq!(DeviceSpec::parse("cpu"), Some(DeviceSpec::Cpu));
        assert_eq!(DeviceSpec::parse("cuda:1"), Some(DeviceSpec::Cuda(1)));
        for bad in ["cuda", "cuda:", "cuda:-1", "cuda:+1", "gpu", "CPU"] {
            assert_eq!(DeviceSpec::parse(bad), None, "{bad}");
        }
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
    }

    #[test]
    fn device_reads_as_text_or_variant_and_precision_defaults_to_f32() {
        let with = |device: &str, extra: &str| {
            QUICKSTART.replace("device: \"cpu\",", &format!("device: {device}, {extra}"))
        };
        for (written, read) in [
            ("Cuda(0)", "cuda:0"),
            ("Cuda(2)", "cuda:2"),
            ("Cpu", "cpu"),
            ("\"cuda:1\"", "cuda:1"),
        ] {
            let ws = parse_str(&with(written, "")).unwrap();
            assert_eq!(ws.sessions[0].device, read, "{written}");
            assert_eq!(ws.sessions[0].precision, Precision::F32);
        }
        let bad = parse_err(&with("Gpu(0)", ""));
        assert!(bad.starts_with("ws.ron:"), "{bad}");
        let bad = parse_err(&with("\"gpu\"", ""));
        assert!(
            bad.contains("device 'gpu' is neither 'cpu' nor 'cuda:N'"),
            "{bad}"
        );
        let ws = parse_str(&with("Cuda(0)", "precision: Bf16,")).unwrap();
        assert_eq!(ws.sessions[0].precision, Precision::Bf16);
        // Written back in the text form.
        let text = ron::to_string(&ws.sessions[0]).unwrap();
        assert!(
            text.contains("device:\"cuda:0\"") && text.contains("precision:Bf16"),
            "{text}"
        );
        let text = ron::to_string(&parse_str(QUICKSTART).unwrap().sessions[0]).unwrap();
        assert!(text.contains("precision:F32"), "{text}");
    }

    #[test]
    fn scanner_skips_strings_comments_and_raw_strings() {
        let src = "#![enable(implicit_some)]\n/* a (/* nested */ comment */ A(\n  a: \"x)\\\"(\", \
                   // ) comment\n  b: r#\"raw \"(\"#,\n  c: [1, 2e-3, -4],\n  d: {\"k\": B((e: 'c'))},\n)";
        let root = ron_text::document(src).unwrap();
        assert_eq!(root.name.as_deref(), Some("A"));
        let text = |n: &ron_text::Node| &src[n.start..n.end];
        assert_eq!(text(root.field("a").unwrap()), "\"x)\\\"(\"");
        assert_eq!(text(root.field("b").unwrap()), "r#\"raw \"(\"#");
        assert_eq!(text(root.field("c").unwrap().item(1).unwrap()), "2e-3");
        let d = root.field("d").unwrap().field("k").unwrap();
        assert_eq!(text(d.inner().field("e").unwrap()), "'c'");
        assert!(ron_text::value("(a: 1").is_none());
        assert!(ron_text::value("cuda:0").is_none());
    }

    /// Each invalid fixture: (file, expected message text, line, column).
    const INVALID: &[(&str, &str, usize, usize)] = &[
        ("malformed.ron", "expected comma", 8, 13),
        (
            "unknown_field.ron",
            "unknown field 'epoch' in 'PretrainStage', expected one of 'task', 'epochs'",
            10,
            60,
        ),
        (
            "missing_field.ron",
            "missing field 'backbone' in 'Session'",
            10,
            9,
        ),
        ("wrong_type.ron", "expected integer", 10, 68),
        (
            "unknown_data_source.ron",
            "data source 'imagenet', which is not defined; defined: 'shapes'",
            8,
            19,
        ),
        (
            "duplicate_session.ron",
            "duplicate session name 'tiny'",
            13,
            19,
        ),
        (
            "zero_epochs.ron",
            "epochs must be at least 1, got '0'",
            13,
            29,
        ),
    ];

    #[test]
    fn invalid_fixtures_fail_with_message_and_location() {
        let dir = fixtures().join("invalid");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_str().unwrap().to_owned();
            let Some(&(_, expected, line, column)) = INVALID.iter().find(|c| c.0 == file) else {
                panic!("fixture '{file}' has no row in INVALID");
            };
            let err = load(&path).expect_err(&file).to_string();
            let prefix = format!("{}:{line}:{column}: ", path.display());
            assert!(
                err.starts_with(&prefix),
                "{file}: '{err}' should start with '{prefix}'"
            );
            assert!(
                err.contains(expected),
                "{file}: '{err}' should contain '{expected}'"
            );
            seen += 1;
        }
        assert_eq!(seen, INVALID.len(), "every row of INVALID has a fixture");
    }
}
