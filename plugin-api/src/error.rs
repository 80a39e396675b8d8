//! The Rust-side error of plugin code, and its conversion to and from [`AbiError`].

use abi_stable::std_types::{ROption, RResult};

use crate::abi::{AbiError, ErrorKind, Location};

/// Errors a plugin sees or raises.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum Error {
    /// A panic caught at the boundary.
    #[error("panicked: {message}")]
    Panicked {
        /// The panic payload, when it was a string.
        message: String,
    },
    /// The plugin config did not parse.
    #[error("config {line}:{column}: {message}")]
    Config {
        /// What is wrong.
        message: String,
        /// Line in the config text, from 1.
        line: u32,
        /// Column in the config text, from 1.
        column: u32,
    },
    /// The host does not implement an op the plugin called.
    #[error("host does not know op '{op}' (plugin needs op-table level {needed})")]
    UnknownOp {
        /// The op's name.
        op: String,
        /// The level the plugin declared.
        needed: u32,
    },
    /// A call reached a plugin of another kind.
    #[error("{0}")]
    WrongKind(String),
    /// A handle that does not exist.
    #[error("{0}")]
    InvalidHandle(String),
    /// A tensor op failed in the host.
    #[error("{0}")]
    Host(String),
    /// Anything else.
    #[error("{0}")]
    Msg(String),
}

/// `Result` with the plugin [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A plain message error.
    pub fn msg(message: impl Into<String>) -> Self {
        Self::Msg(message.into())
    }
}

impl From<AbiError> for Error {
    fn from(e: AbiError) -> Self {
        let message = e.message.into_string();
        match e.kind {
            ErrorKind::PANICKED => Self::Panicked { message },
            ErrorKind::CONFIG => {
                let (line, column) = e.location.map(|l| (l.line, l.column)).unwrap_or((0, 0));
                Self::Config {
                    message,
                    line,
                    column,
                }
            }
            ErrorKind::UNKNOWN_OP => Self::UnknownOp {
                op: message,
                needed: 0,
            },
            ErrorKind::WRONG_KIND => Self::WrongKind(message),
            ErrorKind::INVALID_HANDLE => Self::InvalidHandle(message),
            ErrorKind::HOST => Self::Host(message),
            _ => Self::Msg(message),
        }
    }
}

impl From<Error> for AbiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Panicked { message } => AbiError::new(ErrorKind::PANICKED, message),
            Error::Config {
                message,
                line,
                column,
            } => AbiError {
                kind: ErrorKind::CONFIG,
                message: message.into(),
                location: ROption::RSome(Location { line, column }),
            },
            Error::UnknownOp { op, .. } => AbiError::new(ErrorKind::UNKNOWN_OP, op),
            Error::WrongKind(m) => AbiError::new(ErrorKind::WRONG_KIND, m),
            Error::InvalidHandle(m) => AbiError::new(ErrorKind::INVALID_HANDLE, m),
            Error::Host(m) => AbiError::new(ErrorKind::HOST, m),
            Error::Msg(m) => AbiError::new(ErrorKind::OTHER, m),
        }
    }
}

/// Converts an ABI result into a Rust one.
pub(crate) fn lift<T>(r: RResult<T, AbiError>) -> Result<T> {
    r.into_result().map_err(Error::from)
}
