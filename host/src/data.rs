//! Datasets, augmentations, multi-view batches and the background loader.

pub mod arrays;
pub mod augment;
pub mod cifar;
pub mod corrupt;
pub mod domains;
pub mod image_folder;
pub mod loader;
pub mod preview;
pub mod procedural;
pub mod sar_optical;
pub mod scenes;
pub mod shapes;
pub mod source;
pub mod stats;
pub mod views;
