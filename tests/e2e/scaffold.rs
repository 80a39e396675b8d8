//! The authoring kit: `patchwork new plugin` writes a crate outside the repository
//! that builds on its own, passes its unit tests, and trains in a session.

use std::{path::PathBuf, process::Command};

use patchwork_tests::{plugin_lib, run, run_patchwork, target_dir, temp_dir};

/// The target folder every test that builds plugin crates outside the repository
/// shares, so the plugin API compiles once (cargo's lock orders parallel builds).
pub fn shared_target() -> PathBuf {
    target_dir()
        .parent()
        .expect("the profile folder has a parent")
        .join("fixture-builds")
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

#[test]
fn scaffolded_plugins_build_test_and_train() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    let dir = temp_dir("scaffold");
    let target = shared_target();
    let output = dir.join("runs");
    for (name, kind) in [
        ("my-backbone", "backbone"),
        ("my-task", "pretext"),
        ("my-probe", "adaptation"),
    ] {
        let dir_arg = dir.display().to_string();
        let out = run_patchwork(["new", "plugin", name, "--kind", kind, "--dir", &dir_arg]);
        assert!(out.success(), "{}", out.describe());
        let root = dir.join(name);
        assert!(root.join("README.md").is_file());

        let tested = run(cargo()
            .args(["test", "--quiet"])
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target));
        assert!(
            tested.success(),
            "{name}: cargo test\n{}",
            tested.describe()
        );
        let built = run(cargo()
            .args(["build", "--quiet"])
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target));
        assert!(built.success(), "{name}: cargo build\n{}", built.describe());

        let plugins = target.join("debug").display().to_string();
        let ws = root.join("workspace.ron").display().to_string();
        let trained = run_patchwork([
            "run",
            &ws,
            "--plugins",
            &plugins,
            "--set",
            "sessions.try.stages.0.epochs=1",
            "--set",
            &format!("output={:?}", output.display().to_string()),
        ]);
        assert!(
            trained.success(),
            "{name}: patchwork run\n{}",
            trained.describe()
        );
        let report = output
            .join(format!("{name}-example"))
            .join("try")
            .join("report.md");
        let report = std::fs::read_to_string(&report).unwrap();
        assert!(report.contains("k-NN"), "{report}");
        if kind == "adaptation" {
            assert!(report.contains("## Adaptation: my-probe"), "{report}");
            assert!(report.contains("| accuracy |"), "{report}");
        }
    }
}
