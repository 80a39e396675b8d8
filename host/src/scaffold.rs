//! `patchwork new plugin`: writes a standalone plugin crate (Cargo.toml, a working
//! implementation of its kind with a config and unit tests, a README and an example
//! workspace) outside this repository.

use std::path::{Path, PathBuf};

/// The kinds `patchwork new plugin` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A backbone: images in, CLS and patch features out.
    Backbone,
    /// A pretext task: the loss of a self-supervised method.
    Pretext,
    /// An adaptation method: trains and evaluates a trained backbone for a task.
    Adaptation,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Backbone => "backbone",
            Self::Pretext => "pretext",
            Self::Adaptation => "adaptation",
        }
    }
}

/// What to write.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    /// Plugin and crate name (`[a-z][a-z0-9_-]*`).
    pub name: String,
    /// The kind.
    pub kind: Kind,
    /// The folder the crate folder `<dir>/<name>/` is made in.
    pub dir: PathBuf,
    /// The `plugin-api` crate folder to depend on (default: this build's checkout).
    pub api: Option<PathBuf>,
}

/// Why a crate could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name cannot name a crate and a plugin.
    #[error(
        "plugin name '{0}' must start with a lowercase letter and hold only lowercase letters, digits, '-' and '_'"
    )]
    BadName(String),
    /// The target folder exists and is not empty.
    #[error("'{}' already exists and is not empty; pick another name or --dir", .0.display())]
    Exists(PathBuf),
    /// No `plugin-api` crate where it should be.
    #[error(
        "no patchwork-plugin-api crate at '{}' (this binary was built elsewhere); pass --api PATH/TO/patchwork/plugin-api",
        .0.display()
    )]
    NoApi(PathBuf),
    /// A file could not be written.
    #[error("cannot write '{}': {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

const CARGO_TOML: &str = include_str!("scaffold/Cargo.toml.tmpl");
const README: &str = include_str!("scaffold/README.md.tmpl");
const WORKSPACE: &str = include_str!("scaffold/workspace.ron.tmpl");
/// The minimal plugins, which build and run in this repository, are the templates.
const BACKBONE: &str = include_str!("../../plugins/minimal-backbone/src/lib.rs");
const PRETEXT: &str = include_str!("../../plugins/minimal-task/src/lib.rs");
const ADAPTATION: &str = include_str!("../../plugins/minimal-adaptation/src/lib.rs");
const GITIGNORE: &str = "/target\n/runs\n";

/// The small ViT the pretext template's example workspace trains.
const EXAMPLE_VIT: &str = r#"Plugin(name: "vit", config: (preset: "tiny", embed_dim: Some(64), depth: Some(2), num_heads: Some(4), patch_size: 8, img_size: 32))"#;
/// The DINO settings the backbone template's example workspace trains with.
const EXAMPLE_DINO: &str = r#"Plugin(name: "dino", config: (out_dim: 256, hidden_dim: 128, bottleneck_dim: 64, local_crops: 0, global_size: 32, global_crops_scale: (0.8, 1.0), freeze_last_layer: 4))"#;

/// The `Pretrain` stage of the example workspaces.
fn pretrain_stage(task: &str) -> String {
    format!(
        "                Pretrain((\n                    task: {task},\n                    epochs: 2,\n                    batch_size: 32,\n                )),"
    )
}

/// The `Adapt` stage of the adaptation template's example workspace (4 classes, as
/// its data has): the linear classifier trains fast with a high rate and no decay.
fn adapt_stage(method: &str) -> String {
    format!(
        "                Adapt((\n                    method: Plugin(name: \"{method}\", config: (classes: 4)),\n                    epochs: 3,\n                    batch_size: 32,\n                    optimizer: AdamW((lr: 1e-2, min_lr: 1e-4, warmup_epochs: 0, weight_decay: 0.0, weight_decay_end: 0.0, clip_grad: 0.0)),\n                )),"
    )
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// The `patchwork-plugin-api = ...` line for `api` (default: the checkout this binary
/// was built from).
fn api_dependency(api: Option<&Path>) -> Result<String, ScaffoldError> {
    let dir = api.map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api"),
        Path::to_path_buf,
    );
    let dir = dir
        .canonicalize()
        .ok()
        .filter(|d| d.join("Cargo.toml").is_file())
        .ok_or_else(|| ScaffoldError::NoApi(dir.clone()))?;
    // `{:?}` escapes backslashes and quotes as TOML basic strings expect.
    Ok(format!(
        "patchwork-plugin-api = {{ path = {:?} }}",
        dir.display().to_string()
    ))
}

/// The dynamic-library file cargo writes for crate `name` on this platform.
fn lib_file(name: &str) -> String {
    let stem = name.replace('-', "_");
    let ext = crate::plugins::registry::dylib_extension();
    if cfg!(windows) {
        format!("{stem}.{ext}")
    } else {
        format!("lib{stem}.{ext}")
    }
}

/// A minimal plugin's source renamed to `name`, its opening lines saying where it
/// came from.
fn from_minimal(source: &str, minimal: &str, name: &str) -> String {
    let body = source.replace(
        &format!("name = \"{minimal}\""),
        &format!("name = \"{name}\""),
    );
    // Replace the first doc paragraph (what the minimal plugin is) with where it came from.
    let rest = body
        .find("\n//!\n")
        .map_or(body.as_str(), |i| &body[i + 1..]);
    format!(
        "//! `{name}`: generated by `patchwork new plugin` from patchwork's `{minimal}`.\n{rest}"
    )
}

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter()
        .fold(template.to_string(), |text, (key, value)| {
            text.replace(&format!("{{{{{key}}}}}"), value)
        })
}

/// Writes the crate and returns its folder.
pub fn new_plugin(req: &NewPlugin) -> Result<PathBuf, ScaffoldError> {
    if !valid_name(&req.name) {
        return Err(ScaffoldError::BadName(req.name.clone()));
    }
    let root = req.dir.join(&req.name);
    if std::fs::read_dir(&root).is_ok_and(|mut d| d.next().is_some()) {
        return Err(ScaffoldError::Exists(root));
    }
    let api = api_dependency(req.api.as_deref())?;
    let this = format!(r#"Plugin(name: "{}")"#, req.name);
    let (source, backbone, stages, what) = match req.kind {
        Kind::Backbone => (
            from_minimal(BACKBONE, "minimal-backbone", &req.name),
            this.as_str(),
            pretrain_stage(EXAMPLE_DINO),
            "DINO pre-training of this backbone",
        ),
        Kind::Pretext => (
            from_minimal(PRETEXT, "minimal-task", &req.name),
            EXAMPLE_VIT,
            pretrain_stage(&this),
            "a small ViT pre-trained with this task",
        ),
        Kind::Adaptation => (
            from_minimal(ADAPTATION, "minimal-adaptation", &req.name),
            EXAMPLE_VIT,
            format!(
                "{}\n{}",
                pretrain_stage(EXAMPLE_DINO),
                adapt_stage(&req.name)
            ),
            "a small ViT pre-trained with DINO, adapted with this method (validation metrics in the report)",
        ),
    };
    let lib = lib_file(&req.name);
    let vars = [
        ("name", req.name.as_str()),
        ("kind", req.kind.name()),
        ("api_dependency", api.as_str()),
        ("lib_file", lib.as_str()),
        ("backbone", backbone),
        ("stages", stages.as_str()),
        ("what", what),
    ];
    let files = [
        ("Cargo.toml", fill(CARGO_TOML, &vars)),
        ("README.md", fill(README, &vars)),
        ("workspace.ron", fill(WORKSPACE, &vars)),
        ("src/lib.rs", source),
        (".gitignore", GITIGNORE.to_string()),
    ];
    for (rel, text) in files {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| ScaffoldError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&path, text).map_err(|source| ScaffoldError::Io { path, source })?;
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("patchwork-scaffold-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn names_must_fit_a_crate() {
        assert!(valid_name("my-task_2"));
        for bad in ["", "2task", "My", "a b", "a/b", "ä"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn writes_a_complete_crate_and_refuses_to_overwrite_it() {
        let dir = temp("complete");
        let req = NewPlugin {
            name: "my-task".into(),
            kind: Kind::Pretext,
            dir: dir.clone(),
            api: None,
        };
        let root = new_plugin(&req).unwrap();
        let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
        assert!(lib.contains(r#"name = "my-task""#), "{lib}");
        assert!(!lib.contains("minimal-task\""), "renamed everywhere: {lib}");
        let toml = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(toml.contains("patchwork-plugin-api = { path = "), "{toml}");
        let ws = std::fs::read_to_string(root.join("workspace.ron")).unwrap();
        crate::workspace::schema::parse(&ws, &root.join("workspace.ron")).unwrap();
        assert!(ws.contains(r#"task: Plugin(name: "my-task")"#), "{ws}");
        let again = new_plugin(&req).unwrap_err();
        assert!(matches!(again, ScaffoldError::Exists(_)), "{again}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_adaptation_crate_trains_after_dino_in_its_example() {
        let dir = temp("adaptation");
        let req = NewPlugin {
            name: "my-probe".into(),
            kind: Kind::Adaptation,
            dir: dir.clone(),
            api: None,
        };
        let root = new_plugin(&req).unwrap();
        let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
        assert!(lib.contains("export_adaptation!"), "{lib}");
        assert!(lib.contains(r#"name = "my-probe""#), "{lib}");
        let ws = std::fs::read_to_string(root.join("workspace.ron")).unwrap();
        let parsed = crate::workspace::schema::parse(&ws, &root.join("workspace.ron")).unwrap();
        let stages = &parsed.sessions[0].stages;
        assert!(
            matches!(stages[0], crate::workspace::schema::Stage::Pretrain(_)),
            "{ws}"
        );
        assert!(
            matches!(&stages[1], crate::workspace::schema::Stage::Adapt(a) if a.method.name == "my-probe"),
            "{ws}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_api_crate_says_how_to_point_at_one() {
        let err = api_dependency(Some(Path::new("/nonexistent/plugin-api"))).unwrap_err();
        assert!(err.to_string().contains("--api"), "{err}");
    }
}
