//! Per-channel mean and standard deviation of a dataset, computed once and cached.
