//! Built-in evaluators.

pub mod knn;
pub mod metrics;
pub mod probe;
