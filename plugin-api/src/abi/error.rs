//! The error value that crosses the ABI in both directions.

use abi_stable::{
    StableAbi,
    std_types::{ROption, RString},
};

/// What went wrong, as an open set of integer codes: new kinds can be added
/// without breaking the ABI (unknown codes read as [`ErrorKind::OTHER`]).
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Debug, Hash)]
pub struct ErrorKind(pub u32);

impl ErrorKind {
    /// Anything not covered below.
    pub const OTHER: Self = Self(0);
    /// A panic inside the plugin, caught by the export macro.
    pub const PANICKED: Self = Self(1);
    /// The plugin's config text did not parse or validate.
    pub const CONFIG: Self = Self(2);
    /// The host does not know an op code (the plugin needs a newer host).
    pub const UNKNOWN_OP: Self = Self(3);
    /// A call reached a plugin of the wrong kind.
    pub const WRONG_KIND: Self = Self(4);
    /// A tensor or instance handle that does not exist (or was dropped).
    pub const INVALID_HANDLE: Self = Self(5);
    /// A tensor operation failed in the host (shape or dtype mismatch...).
    pub const HOST: Self = Self(6);
}

/// A position in a config text, 1-based.
#[repr(C)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Debug)]
pub struct Location {
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
}

/// The one error type of the ABI; converts to [`crate::Error`] at the boundary.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct AbiError {
    /// Which kind of failure.
    pub kind: ErrorKind,
    /// Human-readable message (lowercase, no trailing period).
    pub message: RString,
    /// Where in a config text, for config errors.
    pub location: ROption<Location>,
}

impl AbiError {
    /// An error of `kind` with `message` and no location.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: RString::from(message.into()),
            location: ROption::RNone,
        }
    }
}
