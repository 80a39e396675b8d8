//! The plugin registry: every library found in the plugin directories, loaded or
//! with the reason it could not be.

use std::path::{Path, PathBuf};

use patchwork_plugin_api::abi::PluginKind;

use super::loader::{LoadedPlugin, load};

/// Looking a plugin up failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No plugin of that name.
    #[error("unknown plugin '{name}' (known: {known}){hint}")]
    Unknown {
        /// Requested name.
        name: String,
        /// Names that are known, comma-separated.
        known: String,
        /// Load failures that might explain it.
        hint: String,
    },
    /// A plugin of another kind.
    #[error("plugin '{name}' is of kind '{actual}', but kind '{expected}' is needed here")]
    WrongKind {
        /// Plugin name.
        name: String,
        /// Its kind.
        actual: &'static str,
        /// The kind needed.
        expected: &'static str,
    },
}

/// Loaded plugins and failed libraries.
#[derive(Debug, Default, Clone)]
pub struct PluginRegistry {
    /// Plugins that loaded.
    pub plugins: Vec<LoadedPlugin>,
    /// Libraries that failed, with the reason.
    pub errors: Vec<(PathBuf, String)>,
}

/// The platform's dynamic-library file extension.
pub fn dylib_extension() -> &'static str {
    std::env::consts::DLL_EXTENSION
}

/// Whether `path` looks like a dynamic library.
pub fn is_dylib(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some(dylib_extension())
}

impl PluginRegistry {
    /// Loads every library in `dirs` (not recursive). Missing dirs are skipped.
    pub fn discover(dirs: &[PathBuf]) -> Self {
        let mut reg = Self::default();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_dylib(p))
                .collect();
            files.sort();
            for file in files {
                reg.add_file(&file);
            }
        }
        reg
    }

    /// Loads one library; a failure is recorded, not returned.
    pub fn add_file(&mut self, file: &Path) {
        match load(file) {
            Ok(p) if self.get(p.name()).is_some() => {
                self.errors.push((
                    file.to_path_buf(),
                    format!("duplicate plugin name '{}' (first one kept)", p.name()),
                ));
            }
            Ok(p) => self.plugins.push(p),
            Err(e) => self.errors.push((file.to_path_buf(), e.to_string())),
        }
    }

    /// Adds an already-loaded plugin (in-process roots in tests).
    pub fn add(&mut self, plugin: LoadedPlugin) {
        self.plugins.push(plugin);
    }

    /// The plugin named `name`, if loaded.
    pub fn get(&self, name: &str) -> Option<&LoadedPlugin> {
        self.plugins.iter().find(|p| p.name() == name)
    }

    /// The plugin `name`, which must be of `kind`.
    pub fn require(&self, name: &str, kind: PluginKind) -> Result<&LoadedPlugin, RegistryError> {
        let Some(p) = self.get(name) else {
            let mut known: Vec<&str> = self.plugins.iter().map(LoadedPlugin::name).collect();
            known.sort_unstable();
            let hint = if self.errors.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} librar{} failed to load (see `patchwork plugins`)",
                    self.errors.len(),
                    if self.errors.len() == 1 { "y" } else { "ies" }
                )
            };
            return Err(RegistryError::Unknown {
                name: name.to_string(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
                hint,
            });
        };
        if p.kind() != kind {
            return Err(RegistryError::WrongKind {
                name: name.to_string(),
                actual: p.kind().name(),
                expected: kind.name(),
            });
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_plugin_lists_known_ones() {
        let reg = PluginRegistry::default();
        let err = reg
            .require("dino", PluginKind::PRETEXT)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown plugin 'dino'") && err.contains("known: none"),
            "{err}"
        );
    }

    #[test]
    fn a_text_file_is_not_a_plugin() {
        let dir = std::env::temp_dir().join(format!("pw-reg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(format!("libjunk.{}", dylib_extension()));
        std::fs::write(&f, b"not an elf").unwrap();
        let reg = PluginRegistry::discover(std::slice::from_ref(&dir));
        assert!(reg.plugins.is_empty());
        assert_eq!(reg.errors.len(), 1);
        assert!(
            reg.errors[0].1.contains("cannot load"),
            "{}",
            reg.errors[0].1
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
