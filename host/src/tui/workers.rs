//! The runtime side of [`Command`]s: each session trains on a thread of its own, its
//! events forwarded to the UI queue; pause, resume and stop go through its
//! [`SessionControl`].

use std::{
    any::Any,
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
    sync::{Arc, Mutex, mpsc::Sender},
    thread,
    time::Instant,
};

use super::{
    app::{Level, LogLine, plugin_rows},
    msg::{Command, Ended, Msg},
    terminal::SESSION_THREAD_PREFIX,
};
use crate::{
    plugins::PluginRegistry,
    session::{
        RunOptions, SessionControl, SessionError, SessionOutcome, reload::ReloadOffer, run_session,
    },
    workspace::schema::Workspace,
};

/// Validation images whose attention the attention view shows.
pub const ATTENTION_IMAGES: usize = 4;

/// The sessions' threads and what they share.
pub struct Workers {
    /// The workspace as written (a session with `seeds` once), for the summary.
    written: Arc<Workspace>,
    /// What runs: the sessions with their seeds expanded, in the UI's order.
    ws: Arc<Workspace>,
    registry: Arc<PluginRegistry>,
    plugin_dirs: Vec<PathBuf>,
    workspace_path: PathBuf,
    workspace_source: String,
    controls: Arc<Mutex<Vec<Option<Arc<SessionControl>>>>>,
    tx: Sender<Msg>,
    started: Instant,
    _watch: Option<crate::plugins::watch::PluginWatch>,
}

/// Offers a changed library to every session started so far (each swaps it in at
/// its next step if it uses that plugin) and says so in the log.
fn offer_to_all(
    controls: &Mutex<Vec<Option<Arc<SessionControl>>>>,
    tx: &Sender<Msg>,
    offer: ReloadOffer,
) {
    let (level, text) = match &offer.result {
        Ok(p) => (
            Level::Info,
            format!(
                "'{}' changed: {} {} loaded; running sessions that use it swap it in at their next step",
                offer.path.display(),
                p.name(),
                p.manifest.version
            ),
        ),
        Err(e) => (
            Level::Warn,
            format!(
                "'{}' changed but did not load (nothing swapped): {e}",
                offer.path.display()
            ),
        ),
    };
    let _ = tx.send(Msg::Log(LogLine {
        level,
        source: "plugins".into(),
        text,
    }));
    let controls = controls.lock().unwrap_or_else(|e| e.into_inner());
    for c in controls.iter().flatten() {
        c.offer(ReloadOffer {
            path: offer.path.clone(),
            detected: offer.detected,
            result: offer.result.clone(),
        });
    }
}

/// The message of an error and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// How a session thread's result reads in the UI.
fn ended(result: thread::Result<Result<SessionOutcome, SessionError>>) -> Ended {
    match result {
        Ok(Ok(outcome)) => match outcome.stopped {
            Some(s) => Ended::Stopped {
                step: s.step,
                checkpoint: s.checkpoint.display().to_string(),
            },
            None => Ended::Done {
                knn: outcome.report.knn.map(|k| (k.trained, k.random_init)),
            },
        },
        Ok(Err(e)) => Ended::Failed(error_chain(&e)),
        Err(payload) => Ended::Failed(format!(
            "the session thread panicked: {}",
            panic_message(payload.as_ref())
        )),
    }
}

impl Workers {
    /// Workers for the sessions of `ws` (as written, its seeds expanded here; the file
    /// at `workspace_path`, text
    /// `workspace_source`), with plugins from `registry` (found in `plugin_dirs`);
    /// events go to `tx`, stamped with seconds since `started`.
    pub fn new(
        ws: Workspace,
        registry: PluginRegistry,
        plugin_dirs: Vec<PathBuf>,
        workspace_path: PathBuf,
        workspace_source: String,
        tx: Sender<Msg>,
        started: Instant,
    ) -> Self {
        let written = Arc::new(ws.clone());
        let ws = ws.expand_seeds();
        let controls = Arc::new(Mutex::new(vec![None; ws.sessions.len()]));
        let watch = {
            let (controls, tx) = (Arc::clone(&controls), tx.clone());
            crate::session::reload::watch_and_offer(&plugin_dirs, move |offer| {
                offer_to_all(&controls, &tx, offer);
            })
        };
        Self {
            written,
            ws: Arc::new(ws),
            registry: Arc::new(registry),
            plugin_dirs,
            workspace_path,
            workspace_source,
            controls,
            tx,
            started,
            _watch: watch,
        }
    }

    /// Carries out `cmd` (`Exit` is the UI loop's business).
    pub fn execute(&mut self, cmd: &Command) {
        match *cmd {
            Command::Start { index, resume } => self.start(index, resume),
            Command::Pause(i) => self.control(i).map_or((), |c| c.pause()),
            Command::Resume(i) => self.control(i).map_or((), |c| c.resume()),
            Command::Stop(i) => self.control(i).map_or((), |c| c.request_stop()),
            Command::ReloadPlugins => {
                let registry = PluginRegistry::discover(&self.plugin_dirs);
                let rows = plugin_rows(&registry);
                self.registry = Arc::new(registry);
                let _ = self.tx.send(Msg::Plugins(rows));
            }
            Command::Exit => {}
        }
    }

    /// Asks every live session to stop after its step (used when leaving at once).
    pub fn stop_all(&self) {
        let controls = self.controls.lock().unwrap_or_else(|e| e.into_inner());
        for c in controls.iter().flatten() {
            c.request_stop();
        }
    }

    fn control(&self, i: usize) -> Option<Arc<SessionControl>> {
        let controls = self.controls.lock().unwrap_or_else(|e| e.into_inner());
        controls.get(i).and_then(Option::as_ref).cloned()
    }

    fn start(&mut self, index: usize, resume: bool) {
        let Some(session) = self.ws.sessions.get(index) else {
            return;
        };
        let control = Arc::new(SessionControl::new());
        if let Some(slot) = self
            .controls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(index)
        {
            *slot = Some(Arc::clone(&control));
        }
        let opts = RunOptions {
            resume,
            workspace_path: self.workspace_path.clone(),
            workspace_source: self.workspace_source.clone(),
            max_steps: None,
            control,
            attention_images: ATTENTION_IMAGES,
        };
        let (written, path) = (Arc::clone(&self.written), self.workspace_path.clone());
        let (ws, registry, tx) = (
            Arc::clone(&self.ws),
            Arc::clone(&self.registry),
            self.tx.clone(),
        );
        let started = self.started;
        let spawned = thread::Builder::new()
            .name(format!("{SESSION_THREAD_PREFIX}{}", session.name))
            .spawn(move || {
                let session = &ws.sessions[index];
                let events = tx.clone();
                let mut emit = |event| {
                    let at = started.elapsed().as_secs_f64();
                    let _ = events.send(Msg::Session { index, at, event });
                };
                let result = catch_unwind(AssertUnwindSafe(|| {
                    run_session(&ws, session, &registry, &opts, &mut emit)
                }));
                if let Err(e) = crate::session::summary::write(&written, &path) {
                    emit(crate::session::SessionEvent::Log(format!(
                        "warning: no workspace summary: {e}"
                    )));
                }
                let _ = tx.send(Msg::Ended {
                    index,
                    how: ended(result),
                });
            });
        if let Err(e) = spawned {
            let _ = self.tx.send(Msg::Ended {
                index,
                how: Ended::Failed(format!("cannot start a thread: {e}")),
            });
        }
    }
}
