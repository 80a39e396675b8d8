//! The candle side of the host: fused ops with backward, the tensor registry and op
//! table plugins call (with evaluation that records no graph), the named parameter
//! store, optimizers, schedules, checkpoints.

pub mod autocast;
pub mod checkpoint;
pub mod clip;
pub mod context;
pub mod grad;
pub mod host_ops;
pub mod nn_ops;
pub mod ops;
pub mod optim;
pub mod profile;
pub mod registry;
pub mod schedule;
pub mod store;
