//! The UI's plain state: sessions, selection, focus, charts' history, plugin rows and
//! the log. No I/O; [`update`](super::update::update) changes it, the views read it.

use std::{collections::VecDeque, sync::Arc};

use crate::{
    plugins::PluginRegistry, session::attention::AttentionMaps, workspace::schema::Workspace,
};

/// Lines the log keeps (older ones are dropped).
pub const LOG_CAPACITY: usize = 1000;
/// Points a chart series keeps before it halves its resolution.
pub const SERIES_CAPACITY: usize = 2048;

/// Where a session is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionState {
    /// Not started in this UI.
    Idle,
    /// Waiting for a free slot (`parallel` sessions train at once).
    Queued,
    /// Training or evaluating on its thread.
    Running,
    /// A pause was asked for; it pauses after the current step.
    Pausing,
    /// Waiting, between two steps.
    Paused,
    /// A stop was asked for; it checkpoints after the current step.
    Stopping,
    /// Stopped on request with a checkpoint; `r` continues from it.
    Stopped,
    /// Every stage ran.
    Done,
    /// Failed; the message says why.
    Failed(String),
}

impl SessionState {
    /// The word the sessions panel shows.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Pausing => "pausing",
            Self::Paused => "paused",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Done => "done",
            Self::Failed(_) => "failed",
        }
    }

    /// Whether the session has a live thread.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            Self::Running | Self::Pausing | Self::Paused | Self::Stopping
        )
    }
}

/// `(x, y)` points that keep at most [`SERIES_CAPACITY`] entries by dropping every
/// other point when full, so an hour-long run still charts its whole history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// The points, in order of `x`.
    pub points: Vec<(f64, f64)>,
    /// Every `stride`-th incoming point is kept.
    stride: usize,
    seen: usize,
}

impl Series {
    /// Adds a point (kept or skipped according to the current resolution).
    pub fn push(&mut self, x: f64, y: f64) {
        let stride = self.stride.max(1);
        if self.seen.is_multiple_of(stride) {
            self.points.push((x, y));
            if self.points.len() >= SERIES_CAPACITY {
                self.points = self.points.iter().copied().step_by(2).collect();
                self.stride = stride * 2;
            }
        }
        self.seen += 1;
    }

    /// The last point.
    pub fn last(&self) -> Option<(f64, f64)> {
        self.points.last().copied()
    }
}

/// One row of the sessions panel, with the history its charts draw.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    /// Session name.
    pub name: String,
    /// Lifecycle state.
    pub state: SessionState,
    /// Current stage (`pretrain (dino)`, `evaluate`).
    pub stage: String,
    /// Epoch of the last step.
    pub epoch: u64,
    /// Optimizer steps done.
    pub step: u64,
    /// Steps in the current stage.
    pub total_steps: u64,
    /// Training images per second reported by the last step.
    pub images_per_sec: f64,
    /// Seconds left in the stage, from the step rate since it started or resumed.
    pub eta_secs: Option<f64>,
    /// Loss of the last step.
    pub last_loss: Option<f64>,
    /// Loss over steps.
    pub loss: Series,
    /// Learning rate over steps.
    pub lr: Series,
    /// Evaluation results over steps, by name (`knn@20 (trained)`).
    pub evals: Vec<(String, Series)>,
    /// The latest attention maps.
    pub attention: Option<Arc<AttentionMaps>>,
    /// The last checkpoint written.
    pub checkpoint: Option<String>,
    /// A line about how it ended (k-NN result, stop step, failure).
    pub note: Option<String>,
    /// Whether `Start` continues from the last checkpoint (queued by restart).
    pub resume: bool,
    /// `(seconds, step)` the rate is measured from.
    pub rate_base: Option<(f64, u64)>,
}

impl SessionRow {
    /// A row for a session that has not run in this UI.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            state: SessionState::Idle,
            stage: String::new(),
            epoch: 0,
            step: 0,
            total_steps: 0,
            images_per_sec: 0.0,
            eta_secs: None,
            last_loss: None,
            loss: Series::default(),
            lr: Series::default(),
            evals: Vec::new(),
            attention: None,
            checkpoint: None,
            note: None,
            resume: false,
            rate_base: None,
        }
    }

    /// Fraction of the current stage done, in `[0, 1]`.
    pub fn progress(&self) -> f64 {
        match self.state {
            SessionState::Done => 1.0,
            _ if self.total_steps == 0 => 0.0,
            _ => (self.step as f64 / self.total_steps as f64).clamp(0.0, 1.0),
        }
    }

    /// The series of evaluation `name`, created when first seen.
    pub fn eval_series(&mut self, name: &str) -> &mut Series {
        let i = match self.evals.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.evals.push((name.to_string(), Series::default()));
                self.evals.len() - 1
            }
        };
        &mut self.evals[i].1
    }
}

/// The panel below the sessions table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Panel {
    /// Loss, learning rate and evaluations over steps.
    Charts,
    /// Last-layer CLS attention maps.
    Attention,
    /// Loaded plugins.
    Plugins,
    /// Warnings and errors.
    Log,
}

impl Panel {
    /// Every panel, in tab order.
    pub const ALL: [Panel; 4] = [Panel::Charts, Panel::Attention, Panel::Plugins, Panel::Log];

    /// The tab title.
    pub fn title(self) -> &'static str {
        match self {
            Self::Charts => "Charts",
            Self::Attention => "Attention",
            Self::Plugins => "Plugins",
            Self::Log => "Log",
        }
    }
}

/// One row of the plugins panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRow {
    /// Registry name (the file name when it failed to load).
    pub name: String,
    /// `backbone`, `pretext`, `adaptation` (`-` when it failed).
    pub kind: String,
    /// Plugin version.
    pub version: String,
    /// Library file.
    pub file: String,
    /// Whether it loaded.
    pub loaded: bool,
    /// Times it was loaded again since the UI started.
    pub reloads: u32,
    /// The last load error.
    pub error: Option<String>,
}

/// The rows for the plugins (and failed libraries) of `registry`.
pub fn plugin_rows(registry: &PluginRegistry) -> Vec<PluginRow> {
    let loaded = registry.plugins.iter().map(|p| PluginRow {
        name: p.name().to_string(),
        kind: p.kind().name().to_string(),
        version: p.manifest.version.to_string(),
        file: p.path.display().to_string(),
        loaded: true,
        reloads: 0,
        error: None,
    });
    let failed = registry.errors.iter().map(|(path, err)| PluginRow {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kind: "-".into(),
        version: "-".into(),
        file: path.display().to_string(),
        loaded: false,
        reloads: 0,
        error: Some(err.clone()),
    });
    loaded.chain(failed).collect()
}

/// How serious a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Progress worth keeping (resumed, evaluated, checkpoint on stop).
    Info,
    /// Something to look at.
    Warn,
    /// Something failed.
    Error,
}

/// One line of the log panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Severity.
    pub level: Level,
    /// Session name, `plugins` or `patchwork`.
    pub source: String,
    /// The message.
    pub text: String,
}

/// A modal on top of the panels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modal {
    /// The full key help.
    Help,
    /// "Stop the running sessions and quit?"
    ConfirmQuit,
}

/// Everything the UI shows.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// Workspace name.
    pub workspace: String,
    /// One row per session, in workspace order.
    pub sessions: Vec<SessionRow>,
    /// The selected session.
    pub selected: usize,
    /// Session whose charts are overlaid on the selected one's.
    pub compare: Option<usize>,
    /// Sessions waiting for a slot, in the order they were started.
    pub queue: VecDeque<usize>,
    /// Sessions trained at once.
    pub parallel: usize,
    /// The panel shown below the sessions.
    pub panel: Panel,
    /// Plugin rows.
    pub plugins: Vec<PluginRow>,
    /// Log lines, oldest first.
    pub log: VecDeque<LogLine>,
    /// Lines scrolled up from the bottom of the log (0 follows new lines).
    pub log_scroll: usize,
    /// An open modal.
    pub modal: Option<Modal>,
    /// Quit was confirmed: the UI exits once every session has stopped.
    pub quitting: bool,
    /// Seconds since the UI started (from the ticker).
    pub clock: f64,
}

impl App {
    /// The state for `ws`, nothing started, with the plugins found.
    pub fn new(ws: &Workspace, plugins: Vec<PluginRow>) -> Self {
        Self {
            workspace: ws.name.clone(),
            sessions: ws
                .sessions
                .iter()
                .map(|s| SessionRow::new(&s.name))
                .collect(),
            selected: 0,
            compare: None,
            queue: VecDeque::new(),
            parallel: ws.parallel.max(1),
            panel: Panel::Charts,
            plugins,
            log: VecDeque::new(),
            log_scroll: 0,
            modal: None,
            quitting: false,
            clock: 0.0,
        }
    }

    /// Adds a log line, dropping the oldest past [`LOG_CAPACITY`].
    pub fn push_log(&mut self, level: Level, source: &str, text: impl Into<String>) {
        if self.log.len() == LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(LogLine {
            level,
            source: source.to_string(),
            text: text.into(),
        });
        if self.log_scroll > 0 {
            // Keep the lines the user scrolled to in view.
            self.log_scroll = (self.log_scroll + 1).min(self.log.len());
        }
    }

    /// Sessions with a live thread.
    pub fn active(&self) -> usize {
        self.sessions.iter().filter(|s| s.state.is_active()).count()
    }

    /// The selected session's row.
    pub fn current(&self) -> Option<&SessionRow> {
        self.sessions.get(self.selected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_halves_its_resolution_when_full() {
        let mut s = Series::default();
        for i in 0..(3 * SERIES_CAPACITY) {
            s.push(i as f64, 0.0);
        }
        assert!(s.points.len() < SERIES_CAPACITY);
        assert!(s.points.len() > SERIES_CAPACITY / 4);
        assert_eq!(s.points[0].0, 0.0);
        assert!(s.points.windows(2).all(|w| w[0].0 < w[1].0));
        let last = s.last().unwrap().0;
        assert!(
            last > (3 * SERIES_CAPACITY) as f64 * 0.9,
            "covers the whole run: {last}"
        );
    }

    #[test]
    fn log_drops_the_oldest_line_when_full() {
        let ws = crate::workspace::schema::parse(
            "Workspace(name: \"w\", data: {\"d\": Shapes(())}, sessions: [Session(name: \"s\", data: \"d\", backbone: Plugin(name: \"vit\"), stages: [Evaluate([Knn(())])])])",
            std::path::Path::new("w.ron"),
        )
        .unwrap();
        let mut app = App::new(&ws, Vec::new());
        for i in 0..=LOG_CAPACITY {
            app.push_log(Level::Info, "s", format!("line {i}"));
        }
        assert_eq!(app.log.len(), LOG_CAPACITY);
        assert_eq!(app.log[0].text, "line 1");
    }
}
