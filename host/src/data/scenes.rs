//! The procedural `scenes` dataset: several objects per image, multi-label targets and masks.
