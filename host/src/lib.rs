//! patchwork host: the library behind the `patchwork` binary.
//!
//! Module groups and the direction of their dependencies:
//!
//! - [`cli`] and [`tui`] drive [`session`]: the CLI one session after another, the
//!   TUI on background threads, steering them through a `SessionControl`;
//! - [`session`] runs a backbone plus ordered stages and uses [`engine`], [`plugins`],
//!   [`data`] and [`eval`]; events flow out on a channel;
//! - [`plugins`] loads plugin libraries and binds them to the op table in [`engine`];
//! - [`engine`] is the candle side: the host op table, fused ops, parameter store,
//!   optimizers, schedules and checkpoints. It knows nothing about sessions or the UI;
//! - [`workspace`] is the RON schema, validated with `file:line:column` errors;
//! - [`bench`] measures the plugin path against the same model compiled natively.

pub mod bench;
pub mod cli;
pub mod data;
pub mod engine;
pub mod eval;
pub mod fsutil;
pub mod plugins;
pub mod scaffold;
pub mod session;
pub mod tui;
pub mod workspace;
