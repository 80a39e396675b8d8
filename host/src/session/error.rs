//! Why a session stopped.

use std::path::PathBuf;

/// A session failed; the message says where and what, and names the last good
/// checkpoint when one exists.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A plugin call returned an error or panicked.
    #[error("plugin '{plugin}' failed in {call}: {message}")]
    Plugin {
        /// Plugin name.
        plugin: String,
        /// Which call (create, step, ...).
        call: &'static str,
        /// What it said.
        message: String,
    },
    /// A plugin's config did not parse.
    #[error("{location}: config of plugin '{plugin}': {message}")]
    Config {
        /// Plugin name.
        plugin: String,
        /// `file:line:column` in the workspace.
        location: String,
        /// The parser's message.
        message: String,
    },
    /// Plugin lookup failed.
    #[error(transparent)]
    Registry(#[from] crate::plugins::RegistryError),
    /// Data loading failed.
    #[error(transparent)]
    Data(#[from] crate::data::loader::DataError),
    /// A data source of the workspace could not be opened.
    #[error("data source '{name}': {source}")]
    DataSource {
        /// The source's name in the workspace.
        name: String,
        /// Why.
        source: crate::data::loader::DataError,
    },
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] crate::engine::checkpoint::CheckpointError),
    /// The optimizer failed.
    #[error(transparent)]
    Optim(#[from] crate::engine::optim::OptimError),
    /// The loss stopped being a finite number.
    #[error("loss is {value} at step {step} (epoch {epoch}); training stopped. {last_good}")]
    NonFinite {
        /// The bad value.
        value: f64,
        /// Global step.
        step: u64,
        /// Epoch.
        epoch: u64,
        /// Where the last good checkpoint is.
        last_good: String,
    },
    /// The workspace asks for something this host cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// A tensor operation failed in the host.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing run files failed.
    #[error("i/o error on '{}': {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl SessionError {
    /// An i/o error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
