//! The procedural `sar_optical` dataset: 3 optical plus 2 SAR-like channels, multi-label.
