//! The plugin boundary: plugin crates depend on `patchwork-plugin-api` and
//! `serde` only (STYLE.md B3), never on candle or the host; they may also share
//! library crates under `plugins/` (such as `dino-core`), which obey the same rule.

use patchwork_tests::repo_root;

const ALLOWED: [&str; 2] = ["patchwork-plugin-api", "serde"];

/// The dependency names declared in the `[dependencies]` table of a Cargo.toml
/// (and in `[dependencies.NAME]` tables).
fn dependencies(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            let header = line.trim_matches(|c| c == '[' || c == ']').trim();
            in_deps = header == "dependencies";
            if let Some(name) = header.strip_prefix("dependencies.") {
                names.push(name.trim().trim_matches('"').to_string());
            }
            continue;
        }
        if !in_deps || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line
            .split(['=', '.'])
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"');
        if !key.is_empty() {
            names.push(key.to_string());
        }
    }
    names
}

#[test]
fn dependency_parser_reads_tables() {
    let toml = "[package]\nname = \"x\"\n\n[dependencies]\nserde.workspace = true\ncandle-core = \"0.11\"\n# comment\n\n[dev-dependencies]\npatchwork.workspace = true\n[dependencies.image]\nversion = \"1\"\n";
    assert_eq!(dependencies(toml), ["serde", "candle-core", "image"]);
}

/// The `name` of a Cargo.toml's `[package]`.
fn package_name(manifest: &str) -> Option<String> {
    manifest
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("name"))
        .and_then(|rest| rest.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
}

#[test]
fn plugins_depend_on_plugin_api_and_serde_only() {
    let plugins = repo_root().join("plugins");
    let manifests: Vec<(std::path::PathBuf, String)> = std::fs::read_dir(&plugins)
        .unwrap()
        .map(|e| e.unwrap().path().join("Cargo.toml"))
        .filter(|m| m.is_file())
        .map(|m| {
            let text = std::fs::read_to_string(&m).unwrap();
            (m, text)
        })
        .collect();
    // Crates under plugins/ are checked here too, so depending on one is allowed.
    let siblings: Vec<String> = manifests
        .iter()
        .filter_map(|(_, t)| package_name(t))
        .collect();
    let mut checked = 0;
    let mut offenders = Vec::new();
    for (manifest, text) in &manifests {
        checked += 1;
        for dep in dependencies(text) {
            if !ALLOWED.contains(&dep.as_str()) && !siblings.contains(&dep) {
                offenders.push(format!("{}: '{dep}'", manifest.display()));
            }
        }
    }
    assert!(
        checked >= 2,
        "expected the vit and dino plugin crates under '{}'",
        plugins.display()
    );
    assert!(
        offenders.is_empty(),
        "plugin crates may depend on {ALLOWED:?} only (STYLE.md B3); offenders:\n{}",
        offenders.join("\n")
    );
}
