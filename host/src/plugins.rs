//! Plugin discovery, loading, ABI checks and the registry sessions look plugins up in.

pub mod dev_build;
pub mod loader;
pub mod registry;
pub mod watch;

pub use loader::{LoadError, LoadedPlugin, load};
pub use registry::{PluginRegistry, RegistryError};
