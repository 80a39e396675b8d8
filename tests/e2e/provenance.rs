//! Provenance: every run folder gets `manifest.json`; `patchwork report` prints it
//! with the final metrics, `patchwork diff` compares two real run folders, and a
//! resume appends to the manifest's history.

use std::path::Path;

use patchwork::session::manifest::file_hash;
use patchwork_tests::{Output, plugin_lib, run_patchwork, temp_dir};
use serde_json::Value;

use crate::{pretrain, run_dir, tiny_workspace, write_workspace};

const DINO: &str = r#"Plugin(name: "dino", config: (out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, local_crops: 2, global_size: 16, local_size: 8, momentum_teacher: 0.99))"#;

fn manifest(run: &Path) -> Value {
    let path = run.join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("'{}' should exist: {e}", path.display()));
    serde_json::from_str(&text).expect("manifest.json should be JSON")
}

fn patchwork<const N: usize>(args: [&str; N]) -> Output {
    let out = run_patchwork(args);
    assert!(out.success(), "patchwork {args:?}\n{}", out.describe());
    out
}

/// The line of `text` that starts (after indentation) with `start`.
fn line<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with '{start}' in\n{text}"))
}

#[test]
fn manifest_report_diff_and_resume_on_two_runs() {
    let vit = plugin_lib("patchwork-vit");
    let dino = plugin_lib("patchwork-dino");
    let dir = temp_dir("provenance");
    let (out_a, out_b) = (dir.join("runs-a"), dir.join("runs-b"));
    let stages = format!(
        "{}\n                Evaluate([Knn((k: 5, temperature: 0.07))]),",
        pretrain(DINO, 1)
    );
    let file = write_workspace(&dir, &tiny_workspace(&out_a, &stages));
    let file = file.to_str().expect("temp paths should be UTF-8");
    let (run_a, run_b) = (run_dir(&out_a), run_dir(&out_b));
    let (a, b) = (
        run_a.to_str().expect("UTF-8 path"),
        run_b.to_str().expect("UTF-8 path"),
    );

    patchwork(["run", file]);
    let set_output = format!("output={:?}", out_b.display().to_string());
    patchwork([
        "run",
        file,
        "--set",
        &set_output,
        "--set",
        "sessions.s.seed=1",
    ]);

    // The manifest of run A: plugins with their library hashes, seeds, dataset.
    let m = manifest(&run_a);
    assert_eq!(m["format"], 1);
    assert_eq!(
        (m["workspace"].as_str(), m["session"].as_str()),
        (Some("e2e"), Some("s"))
    );
    let plugins = m["plugins"].as_array().expect("plugins should be a list");
    let names: Vec<&str> = plugins.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["vit", "dino"]);
    assert_eq!(plugins[0]["kind"], "backbone");
    assert_eq!(plugins[1]["kind"], "pretext-task");
    let vit_hash = file_hash(&vit).expect("the vit library should be readable");
    assert_eq!(plugins[0]["library_hash"].as_str(), Some(vit_hash.as_str()));
    assert_eq!(
        plugins[1]["library_hash"].as_str(),
        file_hash(&dino).as_deref()
    );
    assert!(plugins.iter().all(|p| p["version"].is_string()), "{m:#}");
    assert_eq!(m["seeds"], serde_json::json!({"session": 0, "data": 1}));
    let d = &m["dataset"];
    assert_eq!(
        (d["name"].as_str(), d["kind"].as_str()),
        (Some("shapes"), Some("Shapes"))
    );
    assert_eq!(
        (d["train"].as_u64(), d["val"].as_u64()),
        (Some(64), Some(32))
    );
    assert_eq!(d["classes"], 3);
    assert_eq!(d["fingerprint"].as_str().map(str::len), Some(16));
    assert_eq!(m["device"], "cpu");
    assert!(m["threads"]["available"].as_u64() >= Some(1), "{m:#}");
    assert!(m["host"]["version"].is_string(), "{m:#}");
    assert!(
        m["config"].as_str().is_some_and(|c| c.contains("seed: 0")),
        "{m:#}"
    );
    assert_eq!(m["outcome"], "done");
    let final_step = m["final_step"].as_u64().expect("final_step should be set");
    assert!(final_step > 0, "{m:#}");
    let started = m["started_at"].as_str().expect("started_at").to_string();
    assert!(
        started.ends_with('Z') && m["finished_at"].is_string(),
        "{m:#}"
    );
    assert_eq!(m["resumes"].as_array().map(Vec::len), Some(0));
    assert_eq!(m["hot_reloads"].as_array().map(Vec::len), Some(0));

    // Run B differs only in the session seed.
    let mb = manifest(&run_b);
    assert_eq!(mb["seeds"]["session"], 1);
    assert_eq!(mb["dataset"]["fingerprint"], d["fingerprint"]);
    assert_eq!(mb["plugins"], m["plugins"]);

    let report = patchwork(["report", a]).stdout;
    for expected in [
        "workspace 'e2e', session 's'",
        "outcome: done",
        "seeds: data 1, session 0",
        "dataset 'shapes' (Shapes): 64 train / 32 val, 3 classes",
        vit_hash.as_str(),
        "resumes: none",
        "final loss: ",
        "mean loss of the last epoch",
        "k-NN (k = 5",
        "trained: ",
    ] {
        assert!(report.contains(expected), "no '{expected}' in\n{report}");
    }
    assert!(
        line(&report, "steps:").ends_with(&final_step.to_string()),
        "{report}"
    );

    let diff = patchwork(["diff", a, b]).stdout;
    let removed = line(&diff, "- ");
    assert!(removed.contains("seed: 0"), "{diff}");
    assert!(line(&diff, "+ ").contains("seed: 1"), "{diff}");
    assert!(diff.contains("seeds.session: 0 → 1"), "{diff}");
    assert!(!diff.contains("library_hash"), "same plugins, yet:\n{diff}");
    assert!(!diff.contains("dataset."), "same data, yet:\n{diff}");
    let steps = line(&diff, "steps");
    assert_eq!(
        steps.split_whitespace().collect::<Vec<_>>(),
        ["steps", &final_step.to_string(), &final_step.to_string()]
    );
    let losses = line(&diff, "final loss")
        .split_whitespace()
        .filter(|w| w.parse::<f64>().is_ok())
        .count();
    assert_eq!(losses, 2, "{diff}");
    assert!(line(&diff, "k-NN trained").contains('%'), "{diff}");

    // A folder without manifest.json is named in the error.
    let not_run = run_patchwork(["report", dir.to_str().expect("UTF-8 path")]);
    assert!(!not_run.success(), "{}", not_run.describe());
    assert!(
        not_run.stderr.contains("is not a run folder")
            && not_run.stderr.contains(&dir.display().to_string()),
        "{}",
        not_run.describe()
    );

    // A resume keeps the history and appends to it.
    patchwork(["run", file, "--resume"]);
    let resumed = manifest(&run_a);
    assert_eq!(resumed["started_at"].as_str(), Some(started.as_str()));
    let resumes = resumed["resumes"]
        .as_array()
        .expect("resumes should be a list");
    assert_eq!(resumes.len(), 1, "{resumed:#}");
    assert_eq!(resumes[0]["step"].as_u64(), Some(final_step));
    assert!(resumes[0]["at"].is_string(), "{resumed:#}");
    assert_eq!(resumed["outcome"], "done");
    let report = patchwork(["report", a]).stdout;
    assert!(
        report.contains(&format!("step {final_step} at ")),
        "{report}"
    );
    let diff = patchwork(["diff", a, b]).stdout;
    assert_eq!(
        line(&diff, "resumes")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["resumes", "1", "0", "*"]
    );
}
