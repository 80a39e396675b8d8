//! Built-in evaluators.

pub mod knn;
