//! The terminal UI: drives a whole workspace's sessions on background threads.
//!
//! State ([`app`]), messages ([`msg`]), a pure [`update`], the keymap ([`keys`]) and
//! the views ([`view`]) are apart, so the UI is tested without a terminal;
//! [`terminal`] is the only file that touches crossterm. Every producer (input
//! thread, session threads, ticker, tracing) feeds one queue that one loop consumes.

pub mod app;
pub mod keys;
pub mod log_sink;
pub mod msg;
pub mod terminal;
pub mod update;
pub mod view;
pub mod workers;

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    sync::mpsc::{self, RecvTimeoutError, Sender},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use self::{
    app::{App, Level, SessionState, plugin_rows},
    msg::{Command, Msg},
    workers::Workers,
};
use crate::{plugins::PluginRegistry, workspace::overrides};

/// The UI redraws at most this often (and only when something changed).
const FRAME: Duration = Duration::from_millis(100);
/// The ticker's period.
const TICK: Duration = Duration::from_millis(250);

/// Opens the workspace `file` (with `--set` overrides `sets` and extra plugin
/// directories `extra`) in the terminal UI. With `dev`, the sources of the
/// workspace's plugin crates are watched too: a change runs `cargo build` for that
/// crate, and the rebuilt library is hot-reloaded.
pub fn run(file: &Path, sets: &[String], extra: &[PathBuf], dev: bool) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!(
            "'patchwork tui' needs a terminal, and stdout is not one; to run '{0}' without \
             one, use: patchwork run {0}",
            file.display()
        );
    }
    let (ws, source) = crate::cli::load_workspace(file)?;
    let ws = overrides::apply(ws, sets)?;
    let dirs = crate::cli::search_dirs(&ws, file, extra);
    let registry = PluginRegistry::discover(&dirs);
    let (tx, rx) = mpsc::channel();
    log_sink::connect(tx.clone());
    let mut app = App::new(&ws.clone().expand_seeds(), plugin_rows(&registry));
    for (path, err) in &registry.errors {
        let first = err.lines().next().unwrap_or_default();
        app.push_log(
            Level::Warn,
            "plugins",
            format!("'{}' did not load: {first}", path.display()),
        );
    }
    let _sources = dev
        .then(|| watch_sources(file, &ws, &tx, &mut app))
        .flatten();
    let started = Instant::now();
    let mut workers = Workers::new(
        ws,
        registry,
        dirs,
        file.to_path_buf(),
        source,
        tx.clone(),
        started,
    );
    let (mut terminal, guard) = terminal::init(tx.clone()).context("setting up the terminal")?;
    terminal::spawn_input(tx.clone()).context("starting the input thread")?;
    spawn_ticker(tx, started).context("starting the ticker")?;

    let mut dirty = true;
    let mut last_draw: Option<Instant> = None;
    'ui: loop {
        if dirty && last_draw.is_none_or(|t| t.elapsed() >= FRAME) {
            terminal
                .draw(|frame| view::render(&app, frame))
                .context("drawing the UI")?;
            last_draw = Some(Instant::now());
            dirty = false;
        }
        let wait = match last_draw {
            Some(t) if dirty => FRAME.saturating_sub(t.elapsed()),
            _ => Duration::from_secs(1),
        };
        let first = match rx.recv_timeout(wait) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // Apply everything already queued before the next frame.
        for msg in std::iter::once(first).chain(rx.try_iter()) {
            dirty |= !matches!(msg, Msg::Tick(_));
            for cmd in update::update(&mut app, msg) {
                if cmd == Command::Exit {
                    break 'ui;
                }
                workers.execute(&cmd);
            }
        }
    }
    workers.stop_all();
    drop(terminal);
    drop(guard);
    print_summary(&app);
    Ok(())
}

/// `patchwork dev`: builds a plugin crate whenever its sources change, its output in
/// the log panel (the library watcher then swaps the new build in).
fn watch_sources(
    file: &Path,
    ws: &crate::workspace::schema::Workspace,
    tx: &Sender<Msg>,
    app: &mut App,
) -> Option<crate::plugins::dev_build::SourceWatch> {
    use crate::plugins::dev_build::{BuildLine, plugin_crates, watch_sources};
    let dirs: Vec<PathBuf> = ws
        .plugin_dirs
        .iter()
        .map(|d| crate::workspace::schema::resolve(file, d))
        .collect();
    let crates = plugin_crates(file, &dirs);
    let names: Vec<String> = crates
        .iter()
        .filter_map(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let tx = tx.clone();
    let watch = watch_sources(crates, move |kind, text| {
        let level = match kind {
            BuildLine::Info => Level::Info,
            BuildLine::Warn => Level::Warn,
            BuildLine::Error => Level::Error,
        };
        let _ = tx.send(Msg::Log(app::LogLine {
            level,
            source: "build".into(),
            text,
        }));
    });
    match watch {
        Ok(w) => {
            app.push_log(
                Level::Info,
                "build",
                format!(
                    "dev: watching the sources of {} plugin crate(s): {}",
                    names.len(),
                    names.join(", ")
                ),
            );
            Some(w)
        }
        Err(e) => {
            app.push_log(
                Level::Warn,
                "build",
                format!("dev: {e}; sources are not watched"),
            );
            None
        }
    }
}

/// Sends the clock to the UI loop every [`TICK`] (ETA and elapsed time).
fn spawn_ticker(tx: Sender<Msg>, started: Instant) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("tui-ticker".into())
        .spawn(move || {
            loop {
                thread::sleep(TICK);
                if tx.send(Msg::Tick(started.elapsed().as_secs_f64())).is_err() {
                    return;
                }
            }
        })
}

/// One line per session after the terminal is restored, so the outcome stays on screen.
fn print_summary(app: &App) {
    for s in &app.sessions {
        let state = match &s.state {
            SessionState::Failed(m) => format!("failed: {m}"),
            other => other.label().to_string(),
        };
        let note = s
            .note
            .as_ref()
            .filter(|_| !matches!(s.state, SessionState::Failed(_)))
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        println!("session '{}': {state} at step {}{note}", s.name, s.step);
    }
}
