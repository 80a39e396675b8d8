//! The procedural `domains` dataset: the same classes rendered in several styles.
