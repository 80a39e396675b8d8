//! [`WorkspaceError`]: everything that can go wrong reading, validating or overriding a
//! workspace file, with the location as `path:line:column` wherever it is known.

use std::fmt;
use std::path::PathBuf;

/// An error reading, validating or overriding a workspace file.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// The file is not valid RON for the schema: malformed syntax, an unknown or missing
    /// field, a value of the wrong type.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        /// The workspace file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The file parses but breaks a rule of the schema (no sessions, duplicate names, an
    /// undefined data source, a value out of range).
    #[error("{}{}: {message}", path.display(), Location(*location))]
    Invalid {
        /// The workspace file.
        path: PathBuf,
        /// 1-based `(line, column)` of the offending value, where it could be found.
        location: Option<(usize, usize)>,
        /// What is wrong.
        message: String,
    },
    /// The file could not be read.
    #[error("cannot read workspace '{}': {source}", path.display())]
    Io {
        /// The workspace file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A `--set key.path=value` override does not apply.
    #[error("--set '{key}': {message}")]
    Override {
        /// The dotted key path as given.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// `Result` with a [`WorkspaceError`].
pub type Result<T, E = WorkspaceError> = std::result::Result<T, E>;

/// Displays `:line:column`, or nothing when the location is unknown.
struct Location(Option<(usize, usize)>);

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, column)) => write!(f, ":{line}:{column}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_lead_with_the_location() {
        let parse = WorkspaceError::Parse {
            path: "ws.ron".into(),
            line: 3,
            column: 7,
            message: "expected comma".into(),
        };
        assert_eq!(parse.to_string(), "ws.ron:3:7: expected comma");
        let invalid = WorkspaceError::Invalid {
            path: "ws.ron".into(),
            location: None,
            message: "workspace has no sessions".into(),
        };
        assert_eq!(invalid.to_string(), "ws.ron: workspace has no sessions");
        let located = WorkspaceError::Invalid {
            path: "ws.ron".into(),
            location: Some((2, 1)),
            message: "x".into(),
        };
        assert_eq!(located.to_string(), "ws.ron:2:1: x");
    }
}
