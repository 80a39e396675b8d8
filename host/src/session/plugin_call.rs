//! Calls into plugin root modules with errors turned into [`SessionError`]s.

use std::path::Path;

use abi_stable::std_types::RResult;
use patchwork_plugin_api::abi::{AbiError, ErrorKind, InstanceId};

use super::SessionError;
use crate::{
    engine::host_ops,
    plugins::LoadedPlugin,
    workspace::schema::{PluginRef, map_config_position},
};

/// Unwraps a plugin call's result.
pub fn check<T>(
    plugin: &LoadedPlugin,
    call: &'static str,
    r: RResult<T, AbiError>,
) -> Result<T, SessionError> {
    r.into_result().map_err(|e| plugin_error(plugin, call, e))
}

/// A plugin error; a caught panic says so.
pub fn plugin_error(plugin: &LoadedPlugin, call: &'static str, e: AbiError) -> SessionError {
    let message = e.message.into_string();
    let message = if e.kind == ErrorKind::PANICKED {
        format!("panicked: {message}")
    } else {
        message
    };
    SessionError::Plugin {
        plugin: plugin.name().to_string(),
        call,
        message,
    }
}

/// Creates an instance of `plugin` with `pref`'s config under `scope`; a config
/// error names the workspace file position.
pub fn create(
    plugin: &LoadedPlugin,
    pref: &PluginRef,
    scope: &str,
    ws_path: &Path,
    ws_source: &str,
) -> Result<InstanceId, SessionError> {
    let r = (plugin.root.create())(pref.config.as_str().into(), host_ops::table(), scope.into());
    r.into_result()
        .map_err(|e| config_or_plugin(plugin, pref, e, ws_path, ws_source))
}

/// Maps an error from `create` to a config error with a file position, or a plugin error.
pub fn config_or_plugin(
    plugin: &LoadedPlugin,
    pref: &PluginRef,
    e: AbiError,
    ws_path: &Path,
    ws_source: &str,
) -> SessionError {
    if e.kind == ErrorKind::CONFIG {
        let (line, col) = e
            .location
            .map(|l| (l.line as usize, l.column as usize))
            .unwrap_or((1, 1));
        let (line, col) = match pref.config_offset {
            Some(off) => map_config_position(ws_source, off, line, col),
            None => (line, col),
        };
        return SessionError::Config {
            plugin: plugin.name().to_string(),
            location: format!("{}:{line}:{col}", ws_path.display()),
            message: e.message.into_string(),
        };
    }
    // Errors from a nested backbone build carry their own plugin prefix.
    SessionError::Plugin {
        plugin: plugin.name().to_string(),
        call: "create",
        message: e.message.into_string(),
    }
}
