//! Hot reload inside a training stage: a new build of the session's task or backbone
//! plugin is swapped in at a step boundary. The old build's objects are dropped
//! first; the new build is created with the session's config; parameters are re-bound
//! by name (same name and shape: kept with their optimizer moments; new: initialised;
//! gone or reshaped: dropped with a warning). A build that fails leaves the old one
//! running.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Instant,
};

use patchwork_plugin_api::abi::{InstanceId, PluginKind};

use super::{SessionError, SessionEvent, plugin_call::check, stage_optim::Optim};
use crate::{
    engine::{context, host_ops},
    plugins::LoadedPlugin,
    session::manifest::file_hash,
    workspace::schema::{Optimizer, PluginRef},
};

/// A changed library, loaded (or not) by the watcher, waiting for a step boundary.
#[derive(Debug)]
pub struct ReloadOffer {
    /// The library file that changed.
    pub path: PathBuf,
    /// When the change was noticed (after the debounce).
    pub detected: Instant,
    /// The loaded plugin, or why it did not load.
    pub result: Result<LoadedPlugin, String>,
}

/// Which of a stage's plugins a new build replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The stage's pretext task or adaptation method.
    Task,
    /// The session's backbone (the task is created again on top of it).
    Backbone,
}

impl Role {
    /// `task` or `backbone`, as records and logs name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Task => "task",
            Self::Backbone => "backbone",
        }
    }
}

/// What a swap did, as recorded in `metrics.jsonl`, the manifest and the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Swapped {
    /// Plugin name.
    pub plugin: String,
    /// Which plugin of the stage it replaced.
    pub role: Role,
    /// Steps done when it took effect.
    pub step: u64,
    /// Versions, old and new.
    pub versions: (String, String),
    /// SHA-256 of the old and new library files.
    pub hashes: (Option<String>, Option<String>),
    /// Parameters kept (same name and shape).
    pub kept: usize,
    /// Parameters the new build added (initialised).
    pub added: Vec<String>,
    /// Parameters the new build no longer has (dropped).
    pub dropped: Vec<String>,
    /// Parameters the new build asked for in another shape (re-initialised).
    pub reshaped: Vec<String>,
    /// CRC-32 of the kept parameters just before and just after the swap.
    pub kept_checksum: (u32, u32),
    /// Seconds from noticing the change to running the new build (includes the wait
    /// for the step boundary).
    pub latency_secs: f64,
    /// Seconds the swap itself took (drop, create, re-bind, optimizer rebuild).
    pub swap_secs: f64,
}

impl Swapped {
    /// The `metrics.jsonl` record of the swap.
    pub fn record(&self) -> serde_json::Value {
        serde_json::json!({
            "event": "reload",
            "step": self.step,
            "plugin": self.plugin,
            "role": self.role.name(),
            "old_version": self.versions.0,
            "new_version": self.versions.1,
            "old_hash": self.hashes.0,
            "new_hash": self.hashes.1,
            "kept": self.kept,
            "added": self.added,
            "dropped": self.dropped,
            "reshaped": self.reshaped,
            "kept_checksum_before": self.kept_checksum.0,
            "kept_checksum_after": self.kept_checksum.1,
            "latency_ms": 1e3 * self.latency_secs,
            "swap_ms": 1e3 * self.swap_secs,
        })
    }

    /// One line for logs and the report.
    pub fn line(&self) -> String {
        let mut text = format!(
            "step {}: {} '{}' {} → {} ({} kept, {} new, {} dropped, {} reshaped; {:.0} ms)",
            self.step,
            self.role.name(),
            self.plugin,
            self.versions.0,
            self.versions.1,
            self.kept,
            self.added.len(),
            self.dropped.len(),
            self.reshaped.len(),
            1e3 * self.latency_secs
        );
        for (what, names) in [("dropped", &self.dropped), ("reshaped", &self.reshaped)] {
            if !names.is_empty() {
                text.push_str(&format!("; {what}: {}", names.join(", ")));
            }
        }
        text
    }
}

/// The plugins a stage is running: the task (owned, so a new build can replace it)
/// and its instance.
pub(super) struct Live<'a> {
    /// The task plugin.
    pub task: LoadedPlugin,
    /// Its instance.
    pub instance: InstanceId,
    /// The task's entry in the workspace (its config).
    pub task_ref: &'a PluginRef,
    /// The parameter scope it was created in.
    pub scope: String,
    /// Set once the instance is handed on ([`Live::keep`]); then dropping does not
    /// destroy it.
    pub kept: bool,
}

impl Live<'_> {
    /// Hands the plugin build and its instance to the caller, who destroys it.
    pub fn keep(&mut self) -> (LoadedPlugin, InstanceId) {
        self.kept = true;
        (self.task.clone(), self.instance)
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        if !self.kept {
            (self.task.root.destroy())(self.instance);
        }
    }
}

/// CRC-32 of each parameter's values, by name.
fn param_crcs() -> Result<BTreeMap<String, u32>, SessionError> {
    let tensors: Vec<(String, candle_core::Tensor)> = context::with(|c| {
        c.store
            .params()
            .iter()
            .map(|(n, p)| (n.clone(), p.var.as_tensor().clone()))
            .collect()
    })
    .unwrap_or_default();
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        let mut crc = crc32fast::Hasher::new();
        for v in t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
        {
            crc.update(&v.to_le_bytes());
        }
        out.insert(name, crc.finalize());
    }
    Ok(out)
}

/// One CRC-32 over the per-parameter CRCs of `names`, in name order.
fn combined(crcs: &BTreeMap<String, u32>, names: &BTreeSet<String>) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    for n in names {
        crc.update(n.as_bytes());
        crc.update(&crcs.get(n).copied().unwrap_or(0).to_le_bytes());
    }
    crc.finalize()
}

/// Rebuilds the optimizer over the trainable parameters now in the store, carrying
/// the moments of `kept` parameters and the step counter over.
fn rebuild_optimizer(
    opt: &mut Optim,
    cfg: &Optimizer,
    kept: &BTreeSet<String>,
) -> Result<(), SessionError> {
    let params = context::trainable_params();
    let old = opt.state()?;
    let carried: Vec<(String, candle_core::Tensor)> = old
        .into_iter()
        .filter(|(key, _)| {
            key.split_once('/').is_some_and(|(kind, rest)| {
                kept.contains(rest) || (rest == "steps" && !kind.contains('_'))
            })
        })
        .collect();
    let mut fresh = Optim::new(cfg, params)?;
    fresh.load_state(&carried)?;
    *opt = fresh;
    Ok(())
}

fn shapes() -> BTreeMap<String, Vec<usize>> {
    context::with(|c| {
        c.store
            .params()
            .iter()
            .map(|(n, p)| (n.clone(), p.var.dims().to_vec()))
            .collect()
    })
    .unwrap_or_default()
}

fn create(plugin: &LoadedPlugin, config: &str, scope: &str) -> Result<InstanceId, SessionError> {
    let r = (plugin.root.create())(config.into(), host_ops::table(), scope.into());
    check(plugin, "create", r)
}

/// Which of the stage's plugins `new` is a build of, if any.
pub(super) fn role_of(live: &Live<'_>, new: &LoadedPlugin) -> Option<Role> {
    let backbone = context::with(|c| c.backbone.as_ref().map(|b| b.name.clone())).flatten();
    if new.name() == live.task.name() && new.kind() == live.task.kind() {
        Some(Role::Task)
    } else if backbone.as_deref() == Some(new.name()) && new.kind() == PluginKind::BACKBONE {
        Some(Role::Backbone)
    } else {
        None
    }
}

/// Swaps `new` (a build of the task or of the backbone, as `role`) into the stage at
/// `step`. On failure the old build is running again and the error says why.
pub(super) fn swap(
    live: &mut Live<'_>,
    new: &LoadedPlugin,
    role: Role,
    step: u64,
    opt: &mut Optim,
    optimizer: &Optimizer,
) -> Result<Swapped, SessionError> {
    let before = shapes();
    let crcs_before = param_crcs()?;
    let snapshot = context::with(|c| c.store.snapshot()).unwrap_or_default();
    let old_backbone = context::with(|c| c.backbone.clone()).flatten();
    let old = match role {
        Role::Task => (
            live.task.manifest.version.to_string(),
            file_hash(&live.task.path),
        ),
        Role::Backbone => (
            old_backbone.as_ref().map_or_else(
                || "-".to_string(),
                |b| (b.root.manifest())().version.to_string(),
            ),
            None,
        ),
    };
    // Drop every object of the old build first (the task drops its backbones).
    (live.task.root.destroy())(live.instance);
    if role == Role::Backbone {
        context::with(|c| {
            if let Some(b) = c.backbone.as_mut() {
                b.root = new.root;
            }
        });
    }
    context::with(|c| c.reload = Some(context::ReloadTrack::default()));
    let builder = if role == Role::Task { new } else { &live.task };
    let created = create(builder, &live.task_ref.config, &live.scope);
    let track = context::with(|c| c.reload.take())
        .flatten()
        .unwrap_or_default();
    let instance = match created {
        Ok(id) => id,
        Err(e) => {
            // Put the old build back exactly as it was.
            context::with(|c| {
                c.store.restore(snapshot);
                c.backbone = old_backbone;
            });
            live.instance = create(&live.task, &live.task_ref.config, &live.scope).map_err(|again| {
                SessionError::Unsupported(format!(
                    "the new build failed ({e}) and the old one could not be created again: {again}"
                ))
            })?;
            return Err(e);
        }
    };
    live.instance = instance;
    if role == Role::Task {
        live.task = new.clone();
    }
    let reshaped: BTreeSet<String> = track.reshaped.iter().cloned().collect();
    let dropped: Vec<String> = before
        .keys()
        .filter(|n| !track.touched.contains(*n))
        .cloned()
        .collect();
    context::with(|c| {
        for n in &dropped {
            c.store.remove(n);
        }
    });
    let added: Vec<String> = track
        .touched
        .iter()
        .filter(|n| !before.contains_key(*n))
        .cloned()
        .collect();
    let kept: BTreeSet<String> = track
        .touched
        .iter()
        .filter(|n| before.contains_key(*n) && !reshaped.contains(*n))
        .cloned()
        .collect();
    let crcs_after = param_crcs()?;
    rebuild_optimizer(opt, optimizer, &kept)?;
    Ok(Swapped {
        plugin: new.name().to_string(),
        role,
        step,
        versions: (old.0, new.manifest.version.to_string()),
        hashes: (old.1, file_hash(&new.path)),
        kept: kept.len(),
        added,
        dropped,
        reshaped: reshaped.into_iter().collect(),
        kept_checksum: (combined(&crcs_before, &kept), combined(&crcs_after, &kept)),
        latency_secs: 0.0,
        swap_secs: 0.0,
    })
}

/// Watches the plugin folders `dirs`; each changed library is loaded (from a private
/// copy) and handed to `offer`, for the sessions to swap in at their next step if it
/// is a new build of a plugin they use. `None` (with a warning) when the folders
/// cannot be watched.
pub fn watch_and_offer(
    dirs: &[PathBuf],
    offer: impl Fn(ReloadOffer) + Send + 'static,
) -> Option<crate::plugins::watch::PluginWatch> {
    let watch = crate::plugins::watch::watch(dirs, move |path, detected| {
        let result = crate::plugins::loader::load(&path).map_err(|e| e.to_string());
        offer(ReloadOffer {
            path,
            detected,
            result,
        });
    });
    match watch {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("{e}; plugins will not be hot-reloaded");
            None
        }
    }
}

/// Looks at a changed library at a step boundary: swaps it in when it is a new build
/// of the stage's task or backbone. Returns the `metrics.jsonl` record of what
/// happened (`None` for a library the stage does not use) and, for a backbone swap,
/// the new backbone build. Failures are reported and leave the old build running.
pub(super) fn take_offer(
    offer: ReloadOffer,
    live: &mut Live<'_>,
    step: u64,
    opt: &mut Optim,
    optimizer: &Optimizer,
    emit: &mut dyn FnMut(SessionEvent),
) -> Option<(serde_json::Value, Option<LoadedPlugin>)> {
    let failed = |error: String, emit: &mut dyn FnMut(SessionEvent)| {
        emit(SessionEvent::ReloadFailed {
            path: offer.path.clone(),
            error: error.clone(),
        });
        serde_json::json!({"event": "reload_failed", "step": step, "path": offer.path.display().to_string(), "error": error})
    };
    let new = match &offer.result {
        Ok(p) => p,
        Err(e) => return Some((failed(e.clone(), emit), None)),
    };
    let role = role_of(live, new)?;
    let started = Instant::now();
    match swap(live, new, role, step, opt, optimizer) {
        Ok(mut swapped) => {
            swapped.swap_secs = started.elapsed().as_secs_f64();
            swapped.latency_secs = offer.detected.elapsed().as_secs_f64();
            let record = swapped.record();
            emit(SessionEvent::Reloaded(Box::new(swapped)));
            Some((record, (role == Role::Backbone).then(|| new.clone())))
        }
        Err(e) => Some((failed(e.to_string(), emit), None)),
    }
}
