//! Datasets, augmentations, multi-view batches and the background loader.

pub mod augment;
pub mod image_folder;
pub mod loader;
pub mod shapes;
pub mod views;
