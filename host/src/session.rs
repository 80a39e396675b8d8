//! A session = one backbone plus ordered stages. The step loop lives here; events
//! flow out to whoever drives the session (the CLI's printer, later the TUI).

pub mod adapt_eval;
pub mod attention;
pub mod attention_figure;
pub mod control;
pub mod error;
pub mod eval_stage;
pub mod evaluate;
pub mod events;
pub mod inspect;
pub mod manifest;
pub mod plugin_call;
pub mod probe_eval;
pub mod reload;
pub mod report;
pub mod runner;
mod stage_optim;
pub mod summary;
pub mod train;

pub use control::SessionControl;
pub use error::SessionError;
pub use events::SessionEvent;
pub use runner::{RunOptions, SessionOutcome, run_session};
