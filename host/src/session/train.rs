//! The training loop of the `Pretrain` and `Adapt` stages: data → plugin step →
//! backward → clip → optimizer → plugin after-step, with checkpoints, metrics,
//! events and hot reload. A pretext task declares its views and updates its own
//! state after each step; an adaptation method trains on one augmented view per
//! image, chosen by the stage.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use abi_stable::std_types::{ROption, RVec};
use candle_core::{Tensor, Var};
use patchwork_plugin_api::abi::{BatchAbi, InstanceId, PluginKind, StepInfo, TensorId};
use rand_chacha::ChaCha8Rng;

use super::{
    SessionError, SessionEvent,
    attention::AttentionCapture,
    control::SessionControl,
    plugin_call::check,
    reload::{Live, take_offer},
    stage_optim::{Optim, Schedules},
};
use crate::{
    data::{
        loader::{Dataset, Loader, LoaderConfig, Transform, batches_per_epoch},
        stats::ChannelStats,
        views::ViewSpec,
    },
    engine::{
        checkpoint::{self, Checkpoint},
        clip::clip_per_param,
        context, registry,
    },
    plugins::LoadedPlugin,
    workspace::schema::{AdaptStage, KeepBest, Optimizer, PluginRef, PretrainStage, Stage},
};

/// What a training stage trains: its plugin, length and optimizer.
pub struct TrainSpec<'a> {
    /// The plugin's entry in the workspace (its config, for a new build).
    pub plugin_ref: &'a PluginRef,
    /// Passes over the training set.
    pub epochs: u32,
    /// Images per step.
    pub batch_size: usize,
    /// Optimizer and schedules.
    pub optimizer: &'a Optimizer,
    /// The training views when the stage chooses them (adaptation); `None` asks the
    /// pretext plugin.
    pub views: Option<Vec<ViewSpec>>,
    /// The parameter scope the plugin is created with (again for a new build).
    pub scope: String,
}

impl<'a> TrainSpec<'a> {
    /// A `Pretrain` stage: the task chooses its views.
    pub fn pretrain(p: &'a PretrainStage) -> Self {
        Self {
            plugin_ref: &p.task,
            epochs: p.epochs,
            batch_size: p.batch_size,
            optimizer: &p.optimizer,
            views: None,
            scope: String::new(),
        }
    }

    /// The training part of `stage`; `None` for an `Evaluate` stage. `size` and
    /// `scope` are as [`TrainSpec::adapt`] takes them.
    pub fn of(stage: &'a Stage, size: usize, scope: &str) -> Option<Self> {
        match stage {
            Stage::Pretrain(p) => Some(Self::pretrain(p)),
            Stage::Adapt(a) => Some(Self::adapt(a, size, scope)),
            Stage::Evaluate(_) => None,
        }
    }

    /// An `Adapt` stage on `size`-pixel images, its method created in `scope` (the
    /// trained backbone's): one random-resized crop per image, flipped half the time.
    pub fn adapt(a: &'a AdaptStage, size: usize, scope: &str) -> Self {
        Self {
            plugin_ref: &a.method,
            epochs: a.epochs,
            batch_size: a.batch_size,
            optimizer: &a.optimizer,
            views: Some(vec![ViewSpec {
                count: 1,
                size,
                scale: (a.min_scale, 1.0),
                flip_p: 0.5,
                jitter_p: 0.0,
                gray_p: 0.0,
                blur_p: 0.0,
                blur_sigma: crate::data::views::BLUR_SIGMA,
                solarize_p: 0.0,
            }]),
            scope: scope.to_string(),
        }
    }
}

/// Everything the stage needs from the session.
pub struct StageEnv<'a> {
    /// The pretext or adaptation plugin and its instance (the stage destroys it when
    /// done).
    pub task: (&'a LoadedPlugin, InstanceId),
    /// The stage settings.
    pub stage: TrainSpec<'a>,
    /// Hand the plugin instance back in [`TrainOutcome::instance`] instead of
    /// destroying it (the adaptation's evaluation still needs it).
    pub keep_instance: bool,
    /// Optimizer steps the session ran in earlier stages: `metrics.jsonl`, events and
    /// `--max-steps` count on from them.
    pub steps_before: u64,
    /// This stage's checkpoint folder.
    pub ckpt_dir: PathBuf,
    /// Training split.
    pub train: Arc<dyn Dataset>,
    /// The normalisation of every view.
    pub stats: ChannelStats,
    /// Session seed.
    pub seed: u64,
    /// Steps between checkpoints (0 = once per epoch).
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Keep the best epoch-end checkpoint by this metric as `best.safetensors`.
    pub keep_best: Option<KeepBest>,
    /// `runs/<ws>/<session>/`.
    pub run_dir: PathBuf,
    /// Resume from the last checkpoint.
    pub resume: bool,
    /// Extra metadata stored in every checkpoint (e.g. random-init k-NN).
    pub metadata: BTreeMap<String, String>,
    /// Stop (checkpointing first) once the session has run this many optimizer steps.
    pub max_steps: Option<u64>,
    /// Stop and pause requests from another thread (a signal handler, the UI).
    pub control: Arc<SessionControl>,
    /// Captures last-layer attention maps at each epoch end (the TUI's attention view).
    pub attention: Option<AttentionCapture<'a>>,
    /// Called at each epoch end, after its checkpoint, with the epochs done and the
    /// session step (`eval_every`'s evaluations).
    pub on_epoch_end: Option<EpochHook<'a>>,
}

/// See [`StageEnv::on_epoch_end`].
pub type EpochHook<'a> = Box<dyn FnMut(u64, u64, &mut dyn FnMut(SessionEvent)) + 'a>;

/// Why a stage ended before its last epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `--max-steps` was reached.
    MaxSteps,
    /// The stop flag was set (SIGINT/SIGTERM, or the UI).
    Interrupted,
}

/// A stage that stopped early, and where to continue from.
#[derive(Debug, Clone, PartialEq)]
pub struct Stopped {
    /// Why.
    pub reason: StopReason,
    /// Optimizer steps done.
    pub step: u64,
    /// The checkpoint written at `step` (`--resume` continues from it).
    pub checkpoint: PathBuf,
}

/// What the stage produced.
pub struct TrainOutcome {
    /// Mean loss of each epoch (those run in this process and earlier ones from metrics).
    pub epoch_losses: Vec<f64>,
    /// Per-epoch means of the task's metrics, for the epochs run in this process.
    pub epoch_metrics: Vec<BTreeMap<String, f64>>,
    /// Steps done in this stage.
    pub steps: u64,
    /// Average training images per second in this process.
    pub images_per_sec: f64,
    /// Metadata restored from the checkpoint (when resumed).
    pub restored_metadata: BTreeMap<String, String>,
    /// Set when the stage stopped before its last epoch.
    pub stopped: Option<Stopped>,
    /// The new build of the backbone plugin, when one was swapped in.
    pub swapped_backbone: Option<LoadedPlugin>,
    /// The stage's plugin build and instance, when [`StageEnv::keep_instance`] asked
    /// for them (the caller destroys it).
    pub instance: Option<(LoadedPlugin, InstanceId)>,
}

fn rng_state(rng: &ChaCha8Rng) -> String {
    let seed: Vec<String> = rng.get_seed().iter().map(|b| format!("{b:02x}")).collect();
    format!("{}:{}", seed.concat(), rng.get_word_pos())
}

fn restore_rng(text: &str) -> Option<ChaCha8Rng> {
    use rand::SeedableRng;
    let (seed_hex, pos) = text.split_once(':')?;
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(seed_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    let mut rng = ChaCha8Rng::from_seed(seed);
    rng.set_word_pos(pos.parse().ok()?);
    Some(rng)
}

fn save_checkpoint(
    dir: &Path,
    step: u64,
    epoch: u64,
    batch: usize,
    opt: &Optim,
    meta: &BTreeMap<String, String>,
) -> Result<PathBuf, SessionError> {
    let mut tensors = Vec::new();
    let mut metadata = meta.clone();
    context::with(|c| {
        for (name, p) in c.store.params() {
            tensors.push((format!("param/{name}"), p.var.as_tensor().clone()));
        }
        for (name, t) in c.store.states() {
            tensors.push((format!("state/{name}"), t.clone()));
        }
        metadata.insert("rng".into(), rng_state(&c.rng));
    });
    tensors.extend(
        opt.state()?
            .into_iter()
            .map(|(n, t)| (format!("optim/{n}"), t)),
    );
    metadata.insert("step".into(), step.to_string());
    metadata.insert("epoch".into(), epoch.to_string());
    metadata.insert("batch".into(), batch.to_string());
    let path = dir.join(checkpoint::file_name(step));
    checkpoint::save(&path, &Checkpoint { tensors, metadata })?;
    Ok(path)
}

/// Restores a checkpoint; returns (step, epoch, batch, metadata).
fn restore(
    path: &Path,
    opt: &mut Optim,
) -> Result<(u64, u64, usize, BTreeMap<String, String>), SessionError> {
    let device = context::device();
    let ckpt = checkpoint::load(path, &device)?;
    let corrupt = |reason: String| checkpoint::CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let num = |key: &str| -> Result<u64, SessionError> {
        Ok(ckpt
            .metadata
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| corrupt(format!("metadata '{key}' missing")))?)
    };
    let (step, epoch, batch) = (num("step")?, num("epoch")?, num("batch")? as usize);
    let rng = ckpt
        .metadata
        .get("rng")
        .and_then(|s| restore_rng(s))
        .ok_or_else(|| corrupt("rng state missing".into()))?;
    let mut optim_entries = Vec::new();
    let mut failure = None;
    context::with(|c| {
        for (name, t) in &ckpt.tensors {
            if let Some(p) = name.strip_prefix("param/") {
                if let Err(e) = c.store.set(p, t) {
                    // The first mismatch names the tensor and both shapes.
                    failure.get_or_insert(match e {
                        crate::engine::store::StoreError::ShapeMismatch {
                            existing,
                            requested,
                            ..
                        } => checkpoint::CheckpointError::ShapeMismatch {
                            path: path.to_path_buf(),
                            tensor: name.clone(),
                            checkpoint: requested,
                            model: existing,
                        },
                        other => corrupt(other.to_string()),
                    });
                }
            } else if let Some(s) = name.strip_prefix("state/") {
                c.store.set_state(s, t);
            } else if let Some(o) = name.strip_prefix("optim/") {
                optim_entries.push((o.to_string(), t.clone()));
            }
        }
        c.rng = rng;
    });
    if let Some(e) = failure {
        return Err(e.into());
    }
    opt.load_state(&optim_entries)
        .map_err(|e| corrupt(format!("optimizer state: {e}")))?;
    Ok((step, epoch, batch, ckpt.metadata))
}

/// The views of a training batch: the stage's, or those the pretext task asks for.
fn view_specs(
    plugin: &LoadedPlugin,
    instance: InstanceId,
    fixed: Option<&Vec<ViewSpec>>,
) -> Result<Vec<ViewSpec>, SessionError> {
    if let Some(views) = fixed {
        return Ok(views.clone());
    }
    let raw = check(plugin, "views", (plugin.root.pretext_views())(instance))?;
    Ok(raw
        .iter()
        .map(|v| ViewSpec {
            count: v.count as usize,
            size: v.size as usize,
            scale: (v.scale_min, v.scale_max),
            flip_p: v.flip_p,
            jitter_p: v.jitter_p,
            gray_p: v.gray_p,
            blur_p: v.blur_p,
            blur_sigma: (v.blur_sigma_min, v.blur_sigma_max),
            solarize_p: v.solarize_p,
        })
        .collect())
}

/// Releases handles when dropped (also on early return).
struct Handles(Vec<TensorId>);

impl Drop for Handles {
    fn drop(&mut self) {
        for id in &self.0 {
            registry::remove(*id);
        }
    }
}

/// Runs the stage.
pub fn run(
    mut env: StageEnv<'_>,
    emit: &mut dyn FnMut(SessionEvent),
) -> Result<TrainOutcome, SessionError> {
    let stage = &env.stage;
    let mut live = Live {
        task: env.task.0.clone(),
        instance: env.task.1,
        task_ref: stage.plugin_ref,
        scope: stage.scope.clone(),
        kept: false,
    };
    let pretext = live.task.kind() == PluginKind::PRETEXT;
    let before = env.steps_before;
    let mut specs = view_specs(&live.task, live.instance, stage.views.as_ref())?;
    let mut swapped_backbone = None;
    let loader_cfg = LoaderConfig {
        batch_size: stage.batch_size,
        seed: env.seed,
        ..Default::default()
    };
    let spe = batches_per_epoch(env.train.len(), stage.batch_size, true) as u64;
    if spe == 0 {
        return Err(SessionError::Unsupported(format!(
            "the training split has {} images, fewer than one batch of {}",
            env.train.len(),
            stage.batch_size
        )));
    }
    let epochs = u64::from(stage.epochs);
    let total = spe * epochs;
    let sched = Schedules::new(stage.optimizer, spe, total);
    let params = context::trainable_params();
    let mut vars: Vec<(String, Var)> = params
        .iter()
        .map(|(n, v, _)| (n.clone(), v.clone()))
        .collect();
    let mut opt = Optim::new(stage.optimizer, params)?;

    let ckpt_dir = env.ckpt_dir.clone();
    std::fs::create_dir_all(&ckpt_dir).map_err(SessionError::io(&ckpt_dir))?;
    let (mut step, mut epoch, mut start_batch, mut restored) =
        (0u64, 0u64, 0usize, BTreeMap::new());
    let mut last_good: Option<PathBuf> = None;
    // Said once per stage: a loss without a graph trains nothing.
    let mut warned_no_graph = false;
    if env.resume
        && let Some(path) = checkpoint::latest(&ckpt_dir)
    {
        (step, epoch, start_batch, restored) = restore(&path, &mut opt)?;
        emit(SessionEvent::Log(format!(
            "resumed from '{}' at step {step}",
            path.display()
        )));
        last_good = Some(path);
    }
    let metrics_path = env.run_dir.join("metrics.jsonl");
    if env.resume && epoch < epochs {
        // Steps after the checkpoint were lost with the process: drop their lines so
        // the resumed run writes them again, numbered as before. (A finished stage
        // keeps the lines of the stages after it.)
        truncate_metrics(&metrics_path, before + step)?;
    }
    let mut meta = env.metadata.clone();
    for (k, v) in &restored {
        if k.starts_with("knn_") || k == BEST_KEY {
            meta.insert(k.clone(), v.clone());
        }
    }
    emit(SessionEvent::StageStarted {
        stage: format!(
            "{} ({})",
            if pretext { "pretrain" } else { "adapt" },
            live.task.name()
        ),
        total_steps: before + total,
        start_step: before + step,
    });

    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(SessionError::io(&metrics_path))?;
    let mut epoch_losses = Vec::new();
    let mut epoch_metrics: Vec<BTreeMap<String, f64>> = Vec::new();
    let started = Instant::now();
    let mut images = 0usize;
    let every = if env.checkpoint_every == 0 {
        spe
    } else {
        env.checkpoint_every
    };
    let mut var_list: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();

    let mut stopped: Option<Stopped> = None;
    if let (Some(reason), Some(checkpoint)) = (stop_reason(&env, step), &last_good) {
        // Resumed at or past --max-steps (or interrupted before the first step).
        stopped = Some(Stopped {
            reason,
            step,
            checkpoint: checkpoint.clone(),
        });
        epoch = epochs;
    }
    while epoch < epochs {
        let loader = Loader::start(
            Arc::clone(&env.train),
            &loader_cfg,
            Transform::Views {
                specs: specs.clone(),
                stats: env.stats.clone(),
            },
            epoch,
            start_batch,
        )?;
        let (mut loss_sum, mut loss_n) = (0.0, 0usize);
        let mut metric_sums: BTreeMap<String, f64> = BTreeMap::new();
        for batch in loader {
            let batch = batch?;
            let bsz = batch.labels.len();
            let device = context::device();
            let mut handles = Handles(Vec::new());
            for v in &batch.views {
                handles.0.push(registry::insert(v.to_tensor(&device)?));
            }
            let labels = registry::insert(Tensor::from_slice(&batch.labels, bsz, &device)?);
            handles.0.push(labels);
            let abi = BatchAbi {
                views: RVec::from(handles.0[..batch.views.len()].to_vec()),
                labels: ROption::RSome(labels),
            };
            let info = StepInfo {
                step,
                epoch,
                steps_per_epoch: spe,
                total_steps: total,
                epochs,
            };
            let (plugin, instance) = (&live.task, live.instance);
            let out = if pretext {
                check(
                    plugin,
                    "step",
                    (plugin.root.pretext_step())(instance, &abi, info),
                )?
            } else {
                check(
                    plugin,
                    "step",
                    (plugin.root.adapt_step())(instance, &abi, info),
                )?
            };
            let loss_t = registry::remove(out.loss).ok_or_else(|| {
                SessionError::Unsupported("plugin returned an invalid loss handle".into())
            })?;
            let loss = f64::from(
                loss_t
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .first()
                    .copied()
                    .unwrap_or(f32::NAN),
            );
            if !loss.is_finite() {
                let last_good = match &last_good {
                    Some(p) => format!("last good checkpoint: '{}'", p.display()),
                    None => "no checkpoint was written yet".to_string(),
                };
                return Err(SessionError::NonFinite {
                    value: loss,
                    step,
                    epoch,
                    last_good,
                });
            }
            if !loss_t.track_op() && !warned_no_graph {
                // Not an error: a step may legitimately have nothing to learn from
                // (a constant loss), but a whole stage of them is a plugin bug.
                warned_no_graph = true;
                emit(SessionEvent::Log(format!(
                    "warning: the loss of step {step} records no graph, so the step trains nothing (was it computed inside `Host::no_grad`, or from detached tensors only?); said once per stage"
                )));
            }
            let mut grads = loss_t.backward()?;
            drop(loss_t);
            let frozen = if pretext {
                check(
                    plugin,
                    "frozen",
                    (plugin.root.pretext_frozen())(instance, info),
                )?
            } else {
                RVec::new()
            };
            for prefix in frozen.iter() {
                let dot = format!("{}.", prefix.as_str());
                for (name, var) in &vars {
                    if name == prefix.as_str() || name.starts_with(&dot) {
                        grads.remove(var.as_tensor());
                    }
                }
            }
            if sched.clip > 0.0 {
                clip_per_param(&mut grads, &var_list, sched.clip)?;
            }
            let (lr, wd) = sched.at(step);
            opt.step(&grads, lr, wd)?;
            drop(grads);
            if pretext {
                check(
                    plugin,
                    "after_step",
                    (plugin.root.pretext_after_step())(instance, info),
                )?;
            }
            drop(handles);
            step += 1;
            images += bsz;
            loss_sum += loss;
            loss_n += 1;
            for m in out.metrics.iter() {
                *metric_sums.entry(m.name.to_string()).or_insert(0.0) += m.value;
            }
            let ips = images as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let mut record = serde_json::json!({"step": before + step, "epoch": epoch, "loss": loss, "lr": lr, "wd": wd, "images_per_sec": ips});
            for m in out.metrics.iter() {
                record[m.name.as_str()] = serde_json::json!(m.value);
            }
            writeln!(metrics, "{record}").map_err(SessionError::io(&metrics_path))?;
            emit(SessionEvent::Step {
                step: before + step,
                epoch,
                loss,
                lr,
                images_per_sec: ips,
            });
            for line in context::with(|c| std::mem::take(&mut c.logs)).unwrap_or_default() {
                emit(SessionEvent::Log(line));
            }
            env.control.hold(|paused| {
                emit(if paused {
                    SessionEvent::Paused {
                        step: before + step,
                    }
                } else {
                    SessionEvent::Resumed {
                        step: before + step,
                    }
                })
            });
            for offer in env.control.take_offers() {
                let Some((record, backbone)) = take_offer(
                    offer,
                    &mut live,
                    before + step,
                    &mut opt,
                    stage.optimizer,
                    emit,
                ) else {
                    continue;
                };
                writeln!(metrics, "{record}").map_err(SessionError::io(&metrics_path))?;
                if backbone.is_some() {
                    swapped_backbone = backbone;
                }
                if record["event"] == "reload" {
                    let params = context::trainable_params();
                    vars = params
                        .iter()
                        .map(|(n, v, _)| (n.clone(), v.clone()))
                        .collect();
                    var_list = vars.iter().map(|(_, v)| v.clone()).collect();
                    let new_specs = view_specs(&live.task, live.instance, stage.views.as_ref())?;
                    if new_specs != specs {
                        emit(SessionEvent::Log(
                            "warning: the new build asks for other views; they apply from the next epoch".into(),
                        ));
                        specs = new_specs;
                    }
                }
            }
            let end_of_epoch = batch.batch + 1 == spe as usize;
            let stop = stop_reason(&env, step);
            // The epoch mean of the `keep_best` metric, when this epoch beats the best.
            let new_best = match (&env.keep_best, end_of_epoch) {
                (Some(kb), true) => {
                    let sum = if kb.metric == "loss" {
                        Some(loss_sum)
                    } else {
                        metric_sums.get(&kb.metric).copied()
                    };
                    let Some(sum) = sum else {
                        return Err(SessionError::Unsupported(format!(
                            "keep_best: metric '{}' is not reported by task '{}' (it reports: loss, {})",
                            kb.metric,
                            live.task.name(),
                            metric_sums.keys().cloned().collect::<Vec<_>>().join(", ")
                        )));
                    };
                    let value = sum / loss_n.max(1) as f64;
                    let best = meta.get(BEST_KEY).and_then(|v| v.parse().ok());
                    kb.mode.better(value, best).then_some(value)
                }
                _ => None,
            };
            if let Some(value) = new_best {
                meta.insert(BEST_KEY.into(), value.to_string());
            }
            if step % every == 0 || end_of_epoch || stop.is_some() {
                let (e, b) = if end_of_epoch {
                    (epoch + 1, 0)
                } else {
                    (epoch, batch.batch + 1)
                };
                let path = save_checkpoint(&ckpt_dir, step, e, b, &opt, &meta)?;
                if new_best.is_some() {
                    keep_as_best(&path, &ckpt_dir)?;
                }
                checkpoint::prune(&ckpt_dir, env.keep_checkpoints.max(1))?;
                emit(SessionEvent::Checkpoint { path: path.clone() });
                last_good = Some(path);
            }
            if end_of_epoch && let Some(hook) = env.on_epoch_end.as_mut() {
                hook(epoch + 1, before + step, &mut *emit);
            }
            if let (Some(reason), Some(checkpoint)) = (stop, &last_good) {
                stopped = Some(Stopped {
                    reason,
                    step,
                    checkpoint: checkpoint.clone(),
                });
                break;
            }
        }
        if stopped.is_some() {
            break;
        }
        let mean = if loss_n > 0 {
            loss_sum / loss_n as f64
        } else {
            f64::NAN
        };
        if loss_n > 0 {
            epoch_losses.push(mean);
            epoch_metrics.push(
                metric_sums
                    .iter()
                    .map(|(k, v)| (k.clone(), v / loss_n as f64))
                    .collect(),
            );
            emit(SessionEvent::Epoch {
                epoch,
                mean_loss: mean,
            });
            if let Some(capture) = &env.attention {
                match capture.capture(&format!("epoch {}", epoch + 1)) {
                    Ok(maps) => emit(SessionEvent::Attention(Arc::new(maps))),
                    Err(e) => emit(SessionEvent::Log(format!(
                        "warning: no attention maps after epoch {}: {e}",
                        epoch + 1
                    ))),
                }
            }
        }
        epoch += 1;
        start_batch = 0;
    }
    let images_per_sec = images as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let instance = env.keep_instance.then(|| live.keep());
    Ok(TrainOutcome {
        instance,
        epoch_losses,
        epoch_metrics,
        steps: step,
        images_per_sec,
        restored_metadata: restored,
        stopped,
        swapped_backbone,
    })
}

/// Checkpoint metadata holding the best epoch mean of the `keep_best` metric so far.
const BEST_KEY: &str = "best_value";
/// The file `keep_best` keeps, beside the `step-*` checkpoints (which `prune` never
/// removes it with).
pub const BEST_FILE: &str = "best.safetensors";

/// Makes `ckpt` also `dir/best.safetensors`: a hard link (no copy) made under a
/// temporary name and renamed over the old best, so a crash leaves one or the other.
fn keep_as_best(ckpt: &Path, dir: &Path) -> Result<(), SessionError> {
    let tmp = dir.join(format!("{BEST_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(ckpt, &tmp)
        .or_else(|_| std::fs::copy(ckpt, &tmp).map(|_| ()))
        .map_err(SessionError::io(&tmp))?;
    let best = dir.join(BEST_FILE);
    std::fs::rename(&tmp, &best).map_err(SessionError::io(&best))
}

/// Whether the stage should stop after `step` steps, and why.
fn stop_reason(env: &StageEnv<'_>, step: u64) -> Option<StopReason> {
    if env
        .max_steps
        .is_some_and(|max| env.steps_before + step >= max)
    {
        Some(StopReason::MaxSteps)
    } else if env.control.stop_requested() {
        Some(StopReason::Interrupted)
    } else {
        None
    }
}

/// Keeps the lines of `metrics.jsonl` up to step `step` (rewritten atomically); lines
/// past it belong to steps a crash lost, which the resumed run writes again.
fn truncate_metrics(path: &Path, step: u64) -> Result<(), SessionError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SessionError::io(path)(e)),
    };
    let keep: Vec<&str> = text
        .lines()
        .take_while(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
                .is_some_and(|s| s <= step)
        })
        .collect();
    if keep.len() == text.lines().count() {
        return Ok(());
    }
    let mut body = keep.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    crate::fsutil::write_atomic(path, body.as_bytes()).map_err(SessionError::io(path))
}

#[cfg(test)]
mod tests {
    use rand::{RngCore, SeedableRng};

    use super::*;

    #[test]
    fn rng_state_round_trips() {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        rng.next_u64();
        let text = rng_state(&rng);
        let mut back = restore_rng(&text).unwrap();
        assert_eq!(rng.next_u64(), back.next_u64());
    }
}
