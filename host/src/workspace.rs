//! The RON workspace schema, defaults, `--set` overrides and validation with
//! `file:line:column` errors.

pub mod error;
pub mod overrides;
pub mod schema;
