//! Runs one session of a workspace: resolves plugins and data, runs the stages in
//! order, writes `runs/<workspace>/<session>/` (config, metrics, checkpoints, report).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use candle_core::Device;
use patchwork_plugin_api::abi::{InstanceId, PluginKind};

use super::{
    SessionError, SessionEvent, adapt_eval,
    attention::{AttentionCapture, AttentionProbe},
    control::SessionControl,
    eval_stage::BackboneInstance,
    evaluate::{self, EvalPoint, Evaluation, append_line},
    plugin_call::{check, create},
    report::{self, AdaptResult, KnnResult, ReportData},
    train::{self, StageEnv, Stopped, TrainSpec},
};
use crate::{
    data::source::{self, Data},
    engine::{
        checkpoint,
        context::{self, BackboneSource, HostContext},
    },
    plugins::{LoadedPlugin, PluginRegistry},
    workspace::schema::{
        DeviceSpec, Evaluator, PluginRef, Precision, Session, Stage, Workspace, resolve,
    },
};

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the last checkpoint of the run directory.
    pub resume: bool,
    /// The workspace file (for relative paths and error positions).
    pub workspace_path: PathBuf,
    /// Its text (for mapping plugin config errors to file positions).
    pub workspace_source: String,
    /// Stop (checkpointing first) once a session has run this many optimizer steps.
    pub max_steps: Option<u64>,
    /// Stop and pause requests from another thread (signal handler, UI).
    pub control: Arc<SessionControl>,
    /// Validation images whose last-layer CLS attention is captured at random init,
    /// at each epoch end and after evaluation (0: none; the TUI asks for a few).
    pub attention_images: usize,
}

/// What a finished session leaves.
#[derive(Debug, Clone)]
pub struct SessionOutcome {
    /// `runs/<workspace>/<session>/`.
    pub run_dir: PathBuf,
    /// What the report says.
    pub report: ReportData,
    /// Set when training stopped early (`--max-steps`, a signal); the later stages
    /// did not run.
    pub stopped: Option<Stopped>,
}

/// Creates the device a session names.
pub fn device(spec: &str) -> Result<Device, SessionError> {
    match DeviceSpec::parse(spec) {
        Some(DeviceSpec::Cpu) => Ok(Device::Cpu),
        Some(DeviceSpec::Cuda(_)) if !cfg!(feature = "cuda") => {
            Err(SessionError::Unsupported(format!(
                "device '{spec}': this patchwork was built without CUDA; build it with \
             `. xtask/cuda-env.sh && cargo build --release --features cuda` (README: CUDA)"
            )))
        }
        Some(DeviceSpec::Cuda(n)) => Device::new_cuda(n).map_err(|e| {
            SessionError::Unsupported(format!(
                "device '{spec}' is not available: no NVIDIA GPU with ordinal {n} is visible \
                 to the CUDA driver ({e})"
            ))
        }),
        None => Err(SessionError::Unsupported(format!(
            "unknown device '{spec}' (use \"cpu\" or \"cuda:N\")"
        ))),
    }
}

/// The folder a workspace's caches (statistics, file indexes) live in:
/// `<output>/<workspace>/.cache`.
pub fn cache_dir(ws: &Workspace, ws_path: &Path) -> PathBuf {
    resolve(ws_path, &ws.output).join(&ws.name).join(".cache")
}

/// Opens the data source `name` of `ws` (the workspace file at `ws_path`).
pub fn open_source(ws: &Workspace, name: &str, ws_path: &Path) -> Result<Data, SessionError> {
    let Some(source) = ws.data.get(name) else {
        return Err(SessionError::Unsupported(format!(
            "unknown data source '{name}' (the workspace has: {})",
            ws.data.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    };
    let base_dir = ws_path.parent().unwrap_or(Path::new("."));
    let cache = cache_dir(ws, ws_path);
    source::open(name, source, base_dir, Some(&cache)).map_err(|e| SessionError::DataSource {
        name: name.to_owned(),
        source: e,
    })
}

/// Emits the attention maps of `probe`'s images at `scope`, or a warning when the
/// backbone cannot give them; the session goes on either way.
fn capture_attention(
    probe: Option<&AttentionProbe>,
    plugin: &LoadedPlugin,
    config: &str,
    scope: &str,
    label: &str,
    emit: &mut dyn FnMut(SessionEvent),
) {
    let Some(probe) = probe else { return };
    let capture = AttentionCapture {
        probe,
        plugin,
        config,
        scope: scope.to_string(),
    };
    match capture.capture(label) {
        Ok(maps) => emit(SessionEvent::Attention(Arc::new(maps))),
        Err(e) => emit(SessionEvent::Log(format!(
            "warning: no attention maps ({label}): {e}"
        ))),
    }
}

/// Runs the adaptation method's evaluation on the validation split after its stage:
/// emits each metric, appends them to `metrics.jsonl` (as of `step`) and returns them.
fn evaluate_adaptation(
    method: &LoadedPlugin,
    instance: InstanceId,
    data: &Data,
    step: u64,
    metrics_path: &Path,
    emit: &mut dyn FnMut(SessionEvent),
) -> Result<BTreeMap<String, f64>, SessionError> {
    let metrics = adapt_eval::evaluate(method, instance, data.val.clone(), data.size, &data.stats)?;
    let mut record = serde_json::json!({
        "event": "adapt_eval",
        "step": step,
        "method": method.name(),
        "images": data.val.len(),
    });
    for (name, value) in &metrics {
        record[name.as_str()] = serde_json::json!(value);
        emit(SessionEvent::Eval {
            name: format!("{} {name} (val)", method.name()),
            value: *value,
        });
    }
    append_line(metrics_path, &record)?;
    Ok(metrics)
}

/// Guard that uninstalls the session context however the session ends.
struct ContextGuard;

impl Drop for ContextGuard {
    fn drop(&mut self) {
        context::take();
    }
}

/// Creates a backbone instance with its parameters under `scope`.
pub(super) fn backbone_at<'a>(
    plugin: &'a LoadedPlugin,
    config: &str,
    scope: &str,
) -> Result<BackboneInstance<'a>, SessionError> {
    let r = (plugin.root.create())(
        config.into(),
        crate::engine::host_ops::table(),
        scope.into(),
    );
    let instance = check(plugin, "create", r)?;
    Ok(BackboneInstance { plugin, instance })
}

/// What runs at random init, before the first pre-training: the session's first
/// k-NN and first attention figure (a baseline for the trained backbone's).
fn random_init_evaluators(session: &Session) -> Vec<Evaluator> {
    let all: Vec<&Evaluator> = session
        .stages
        .iter()
        .filter_map(|s| match s {
            Stage::Evaluate(evs) => Some(evs),
            Stage::Pretrain(_) | Stage::Adapt(_) => None,
        })
        .flatten()
        .collect();
    let first = |pick: fn(&Evaluator) -> bool| all.iter().find(|e| pick(e)).map(|e| (*e).clone());
    [
        first(|e| matches!(e, Evaluator::Knn(_))),
        first(|e| matches!(e, Evaluator::Attention(_))),
    ]
    .into_iter()
    .flatten()
    .collect()
}

pub(super) fn destroy(plugin: &LoadedPlugin, instance: InstanceId) {
    (plugin.root.destroy())(instance);
}

fn prepare_run_dir(run_dir: &Path, resume: bool) -> Result<(), SessionError> {
    if !resume && run_dir.exists() {
        // Keep the earlier run rather than mixing its metrics and checkpoints in.
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut old = run_dir.as_os_str().to_owned();
        old.push(format!(".old-{stamp}"));
        std::fs::rename(run_dir, &old).map_err(SessionError::io(run_dir))?;
    }
    std::fs::create_dir_all(run_dir).map_err(SessionError::io(run_dir))
}

/// Runs `session` of `ws`, emitting events; the context is installed on this thread.
pub fn run_session(
    ws: &Workspace,
    session: &Session,
    registry: &PluginRegistry,
    opts: &RunOptions,
    emit: &mut dyn FnMut(SessionEvent),
) -> Result<SessionOutcome, SessionError> {
    let started = Instant::now();
    let run_dir = resolve(&opts.workspace_path, &ws.output)
        .join(&ws.name)
        .join(&session.name);
    let backbone_plugin = registry.require(&session.backbone.name, PluginKind::BACKBONE)?;
    // The plugin of each training stage, in stage order.
    let tasks: Vec<&LoadedPlugin> = session
        .stages
        .iter()
        .filter_map(Stage::plugin)
        .map(|(r, kind, _)| registry.require(&r.name, kind))
        .collect::<Result<_, _>>()?;
    let data = open_source(ws, &session.data, &opts.workspace_path)?;
    let device = device(&session.device)?;

    // Create every plugin once in a throwaway context before anything runs, so a
    // config error in a later stage does not wait for the earlier ones to train,
    // and errors point at the config in the workspace.
    let backbone_source = BackboneSource {
        name: backbone_plugin.name().to_string(),
        root: backbone_plugin.root,
        config: session.backbone.config.clone(),
    };
    let mut check_ctx = HostContext::new(Device::Cpu, 0);
    check_ctx.backbone = Some(backbone_source.clone());
    context::install(check_ctx);
    let checked = (|| -> Result<(), SessionError> {
        let check = |plugin: &LoadedPlugin, r: &PluginRef, scope: &str| {
            let id = create(
                plugin,
                r,
                scope,
                &opts.workspace_path,
                &opts.workspace_source,
            )?;
            destroy(plugin, id);
            Ok::<(), SessionError>(())
        };
        check(backbone_plugin, &session.backbone, "check")?;
        let refs = session.stages.iter().filter_map(Stage::plugin);
        for (plugin, (r, kind, _)) in tasks.iter().zip(refs) {
            let scope = if kind == PluginKind::ADAPTATION {
                "backbone"
            } else {
                ""
            };
            check(plugin, r, scope)?;
        }
        Ok(())
    })();
    context::take();
    checked?;

    let resuming = opts.resume && checkpoint::latest(&run_dir.join("checkpoints")).is_some();
    prepare_run_dir(&run_dir, opts.resume)?;
    let config_path = run_dir.join("config.ron");
    let config_text = ron::ser::to_string_pretty(session, ron::ser::PrettyConfig::default())
        .unwrap_or_else(|e| format!("// cannot print the resolved config: {e}"));
    std::fs::write(&config_path, config_text).map_err(SessionError::io(&config_path))?;
    let plugins: Vec<&LoadedPlugin> = std::iter::once(backbone_plugin)
        .chain(tasks.iter().copied())
        .collect();
    let mut manifest =
        super::manifest::Manifest::start(ws, session, &data, &plugins, &opts.workspace_path);
    if resuming {
        manifest.resume_in(&run_dir);
    }
    manifest.write(&run_dir)?;

    let mut ctx = HostContext::new(device, session.seed);
    ctx.backbone = Some(backbone_source);
    ctx.bf16_matmul = session.precision == Precision::Bf16;
    context::install(ctx);
    let _guard = ContextGuard;

    let random_init = random_init_evaluators(session);
    let mut report = ReportData {
        workspace: ws.name.clone(),
        session: session.name.clone(),
        backbone: format!(
            "{} {}",
            session.backbone.name,
            session.backbone.config.trim()
        ),
        data: format!(
            "'{}': {} train / {} val images, {} classes, {} px, {} channels, normalised with mean {:?} std {:?}",
            session.data,
            data.train.len(),
            data.val.len(),
            data.classes,
            data.size,
            data.channels,
            data.stats.mean,
            data.stats.std
        ),
        ..Default::default()
    };
    let probe = match AttentionProbe::new(&data, opts.attention_images) {
        Ok(p) => p,
        Err(e) => {
            emit(SessionEvent::Log(format!(
                "warning: no attention view for this session: {e}"
            )));
            None
        }
    };
    let mut result_scope = "backbone".to_string();
    // The backbone build in use (a hot reload can replace it).
    let mut backbone_live = backbone_plugin.clone();
    let mut random_knn: Option<f64> = None;
    let mut tasks = tasks.into_iter();
    let mut stopped = None;
    // Optimizer steps of the stages done so far.
    let mut steps_before = 0u64;
    let metrics_path = run_dir.join("metrics.jsonl");
    // The stages, in a closure so that a failure is recorded in the manifest first.
    let staged = (|| -> Result<(), SessionError> {
        for (j, stage) in session.stages.iter().enumerate() {
            match stage {
                training @ (Stage::Pretrain(_) | Stage::Adapt(_)) => {
                    let (Some(plugin), Some(spec)) = (
                        tasks.next(),
                        TrainSpec::of(training, data.size, &result_scope),
                    ) else {
                        continue;
                    };
                    let pretext = matches!(training, Stage::Pretrain(_));
                    let method_line =
                        format!("{} {}", spec.plugin_ref.name, spec.plugin_ref.config.trim());
                    let instance = create(
                        plugin,
                        spec.plugin_ref,
                        &spec.scope,
                        &opts.workspace_path,
                        &opts.workspace_source,
                    )?;
                    let mut metadata = BTreeMap::new();
                    if pretext {
                        let scope_r = (plugin.root.pretext_result_scope())(instance);
                        result_scope = match check(plugin, "result_scope", scope_r) {
                            Ok(s) => s.into_string(),
                            Err(e) => {
                                destroy(plugin, instance);
                                return Err(e);
                            }
                        };
                        let first_pretrain = !session.stages[..j]
                            .iter()
                            .any(|s| matches!(s, Stage::Pretrain(_)));
                        if first_pretrain && !resuming && !random_init.is_empty() {
                            let evaluation = Evaluation::of(
                                session,
                                &data,
                                &run_dir,
                                &backbone_live,
                                &result_scope,
                            );
                            let scores = match evaluation.run(
                                &random_init,
                                EvalPoint::RandomInit,
                                steps_before,
                                emit,
                            ) {
                                Ok(s) => s,
                                Err(e) => {
                                    destroy(plugin, instance);
                                    return Err(e);
                                }
                            };
                            random_knn = random_init
                                .iter()
                                .zip(&scores)
                                .find(|(e, _)| matches!(e, Evaluator::Knn(_)))
                                .and_then(|(_, s)| s.first().map(|(_, acc)| *acc));
                            if let Some(acc) = random_knn {
                                metadata.insert("knn_random_init".to_string(), acc.to_string());
                            }
                        }
                        let label = if resuming { "resumed" } else { "random init" };
                        capture_attention(
                            probe.as_ref(),
                            &backbone_live,
                            &session.backbone.config,
                            &result_scope,
                            label,
                            emit,
                        );
                        report.task = Some(method_line.clone());
                    }
                    metadata.insert("result_scope".to_string(), result_scope.clone());
                    // The first training stage keeps `checkpoints/`; later ones get a
                    // folder each, so resuming finds every stage's own last step.
                    let first_training = !session.stages[..j].iter().any(|s| s.plugin().is_some());
                    let ckpt_dir = if first_training {
                        run_dir.join("checkpoints")
                    } else {
                        run_dir.join("checkpoints").join(format!("stage-{j}"))
                    };
                    let every = match training {
                        Stage::Pretrain(p) => u64::from(p.eval_every),
                        Stage::Adapt(_) | Stage::Evaluate(_) => 0,
                    };
                    let stage_epochs = u64::from(spec.epochs);
                    let periodic = session.periodic_evaluators(j).filter(|_| every > 0);
                    let on_epoch_end = periodic.map(|evaluators| {
                        let evaluation =
                            Evaluation::of(session, &data, &run_dir, &backbone_live, &result_scope);
                        // The last epoch is left to the `Evaluate` stage that follows.
                        // A failure does not stop training (it may be a hot-reloaded
                        // backbone the old build cannot read): it is reported once and
                        // the stage's later evaluations are skipped; the `Evaluate`
                        // stage reports it again, as an error, if it persists.
                        let mut failed = false;
                        Box::new(
                            move |epoch: u64, step: u64, emit: &mut dyn FnMut(SessionEvent)| {
                                if failed || !epoch.is_multiple_of(every) || epoch >= stage_epochs {
                                    return;
                                }
                                emit(SessionEvent::Log(format!("evaluating after epoch {epoch}")));
                                let at = EvalPoint::Epoch(epoch);
                                if let Err(e) = evaluation.run(evaluators, at, step, emit) {
                                    failed = true;
                                    emit(SessionEvent::Log(format!(
                                        "warning: the evaluation after epoch {epoch} failed, \
                                         skipping the stage's later ones: {e}"
                                    )));
                                }
                            },
                        ) as train::EpochHook<'_>
                    });
                    let env = StageEnv {
                        on_epoch_end,
                        task: (plugin, instance),
                        stage: spec,
                        keep_instance: !pretext,
                        steps_before,
                        ckpt_dir,
                        train: data.train.clone(),
                        stats: data.stats.clone(),
                        seed: session.seed,
                        checkpoint_every: session.checkpoint_every,
                        keep_checkpoints: session.keep_checkpoints,
                        keep_best: session.keep_best.clone(),
                        run_dir: run_dir.clone(),
                        resume: opts.resume,
                        metadata,
                        max_steps: opts.max_steps,
                        control: Arc::clone(&opts.control),
                        attention: probe.as_ref().map(|probe| AttentionCapture {
                            probe,
                            plugin: &backbone_live,
                            config: &session.backbone.config,
                            scope: result_scope.clone(),
                        }),
                    };
                    let mut reloads = Vec::new();
                    let outcome = train::run(env, &mut |e| {
                        if let SessionEvent::Reloaded(s) = &e {
                            reloads.push((**s).clone());
                        }
                        emit(e)
                    });
                    for s in &reloads {
                        manifest.record_reload(&s.plugin, s.step, s.hashes.1.clone());
                        report.reloads.push(s.line());
                    }
                    if !reloads.is_empty()
                        && let Err(w) = manifest.write(&run_dir)
                    {
                        tracing::warn!("cannot record the hot reload in the manifest: {w}");
                    }
                    let outcome = outcome?;
                    if let Some(b) = outcome.swapped_backbone.clone() {
                        backbone_live = b;
                    }
                    if random_knn.is_none() {
                        random_knn = outcome
                            .restored_metadata
                            .get("knn_random_init")
                            .and_then(|v| v.parse().ok());
                    }
                    steps_before += outcome.steps;
                    report.steps = steps_before;
                    if pretext {
                        report.epoch_losses = outcome.epoch_losses.clone();
                        report.epoch_metrics = outcome.epoch_metrics;
                        report.images_per_sec = outcome.images_per_sec;
                    }
                    if outcome.stopped.is_some() {
                        if let Some((method, instance)) = outcome.instance {
                            destroy(&method, instance);
                        }
                        stopped = outcome.stopped;
                        break;
                    }
                    if let Some((method, instance)) = outcome.instance {
                        let result = evaluate_adaptation(
                            &method,
                            instance,
                            &data,
                            steps_before,
                            &metrics_path,
                            emit,
                        );
                        destroy(&method, instance);
                        report.adaptations.push(AdaptResult {
                            method: method_line,
                            epoch_losses: outcome.epoch_losses,
                            metrics: result?,
                            images: data.val.len(),
                        });
                    }
                }
                Stage::Evaluate(evs) => {
                    let evaluation =
                        Evaluation::of(session, &data, &run_dir, &backbone_live, &result_scope);
                    let scores = evaluation.run(evs, EvalPoint::End, steps_before, emit)?;
                    for (evaluator, scores) in evs.iter().zip(scores) {
                        match (evaluator, scores.first()) {
                            (Evaluator::Knn(k), Some((_, acc))) => {
                                report.knn = Some(KnnResult {
                                    k: k.k,
                                    temperature: k.temperature,
                                    random_init: random_knn,
                                    trained: *acc,
                                });
                            }
                            _ => report.evals.extend(scores),
                        }
                    }
                    capture_attention(
                        probe.as_ref(),
                        &backbone_live,
                        &session.backbone.config,
                        &result_scope,
                        "trained",
                        emit,
                    );
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = staged {
        manifest.finish(report.steps, super::manifest::Outcome::Failed);
        if let Err(w) = manifest.write(&run_dir) {
            tracing::warn!("cannot record the failure in the manifest: {w}");
        }
        return Err(e);
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.history = evaluate::read_history(&run_dir);
    report.skipped = (!data.corrupt.is_empty()).then(|| data.corrupt.to_string());
    manifest.finish(
        report.steps,
        if stopped.is_some() {
            super::manifest::Outcome::Interrupted
        } else {
            super::manifest::Outcome::Done
        },
    );
    manifest.write(&run_dir)?;
    let report_path = run_dir.join("report.md");
    std::fs::write(&report_path, report::render(&report))
        .map_err(SessionError::io(&report_path))?;
    Ok(SessionOutcome {
        run_dir,
        report,
        stopped,
    })
}
