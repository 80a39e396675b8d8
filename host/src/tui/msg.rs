//! What flows into the UI loop ([`Msg`]) and what `update` asks the runtime to do
//! ([`Command`]).

use crate::session::SessionEvent;

use super::app::{LogLine, PluginRow};

/// A key press, already translated from the terminal's event (so `update` and its
/// tests never see crossterm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A printable character.
    Char(char),
    /// Ctrl + a character.
    Ctrl(char),
    /// Arrow up.
    Up,
    /// Arrow down.
    Down,
    /// Arrow left.
    Left,
    /// Arrow right.
    Right,
    /// Tab.
    Tab,
    /// Shift + Tab.
    BackTab,
    /// Enter.
    Enter,
    /// Escape.
    Esc,
    /// Page up.
    PageUp,
    /// Page down.
    PageDown,
    /// Home.
    Home,
    /// End.
    End,
}

/// How a session thread ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// Every stage ran.
    Done {
        /// k-NN accuracy `(trained, random init)` when the session evaluates.
        knn: Option<(f64, Option<f64>)>,
    },
    /// Stopped on request after `step`, with a checkpoint to restart from.
    Stopped {
        /// Optimizer steps done.
        step: u64,
        /// The checkpoint written.
        checkpoint: String,
    },
    /// The session failed (plugin error or panic, NaN loss, bad data); the message says why.
    Failed(String),
}

/// One input to [`update`](super::update::update).
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// A key press.
    Key(Key),
    /// The ticker: seconds since the UI started.
    Tick(f64),
    /// The terminal was resized (redraw).
    Resize,
    /// An event from session `index`, `at` seconds since the UI started.
    Session {
        /// Index into the workspace's sessions.
        index: usize,
        /// Seconds since the UI started.
        at: f64,
        /// What happened.
        event: SessionEvent,
    },
    /// Session `index`'s thread finished.
    Ended {
        /// Index into the workspace's sessions.
        index: usize,
        /// How.
        how: Ended,
    },
    /// The plugin directories were scanned again.
    Plugins(Vec<PluginRow>),
    /// A warning or error from outside a session (tracing, the runtime).
    Log(LogLine),
}

/// What `update` asks the runtime to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start session `index` on a background thread (`resume`: from its last checkpoint).
    Start {
        /// Index into the workspace's sessions.
        index: usize,
        /// Continue from the last checkpoint.
        resume: bool,
    },
    /// Pause session `index` after its current step.
    Pause(usize),
    /// Let session `index` go on.
    Resume(usize),
    /// Stop session `index` after its current step, writing a checkpoint first.
    Stop(usize),
    /// Scan the plugin directories again (sessions started later use what is found).
    ReloadPlugins,
    /// Leave the UI.
    Exit,
}
