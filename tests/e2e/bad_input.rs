//! Bad workspaces, bad plugins and bad checkpoints: every one ends the run with a
//! non-zero exit and a message that says what and where.

use std::path::{Path, PathBuf};

use patchwork::engine::checkpoint;
use patchwork_tests::{Output, plugin_lib, run_patchwork, temp_dir};

use crate::{assert_fails_with, faulty, pretrain, run_dir, tiny_workspace, write_workspace};

/// Writes `text` as a workspace in a fresh temp folder and runs it with `extra` args.
fn run_text(name: &str, text: &str, extra: &[&str]) -> (PathBuf, Output) {
    let dir = temp_dir(name);
    let file = write_workspace(&dir, text);
    let mut args = vec!["run".to_string(), file.display().to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    (dir, run_patchwork(args))
}

/// A tiny session whose single stage is `stages`, with runs under `<dir>/runs`.
fn run_stages(name: &str, stages: &str) -> (PathBuf, Output) {
    let dir = temp_dir(name);
    let text = tiny_workspace(&dir.join("runs"), stages);
    let file = write_workspace(&dir, &text);
    (
        dir,
        run_patchwork(["run".to_string(), file.display().to_string()]),
    )
}

/// The `faulty` fixture must be built for the tests that use it.
fn need_faulty() {
    plugin_lib("patchwork-fixture-faulty");
}

/// Checkpoints in the session's checkpoint folder, oldest first.
fn checkpoints(dir: &Path) -> Vec<(u64, PathBuf)> {
    checkpoint::list(&run_dir(&dir.join("runs")).join("checkpoints"))
        .expect("the checkpoint folder should be readable")
}

#[test]
fn malformed_ron_names_file_line_and_column() {
    let dir = temp_dir("malformed");
    let output = dir.join("runs");
    // Line 3 of the file: a missing comma between two fields.
    let text = tiny_workspace(&output, "").replacen("output:", "output: \"x\" data_oops", 1);
    let file = write_workspace(&dir, &text);
    let out = run_patchwork(["run".to_string(), file.display().to_string()]);
    assert!(!out.success(), "{}", out.describe());
    let prefix = format!("{}:", file.display());
    let at = out
        .stderr
        .find(&prefix)
        .unwrap_or_else(|| panic!("no '{prefix}' in:\n{}", out.describe()));
    let rest = &out.stderr[at + prefix.len()..];
    let mut parts = rest.splitn(3, ':');
    let line: usize = parts
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no line number:\n{}", out.describe()));
    let column: usize = parts
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no column:\n{}", out.describe()));
    assert_eq!(line, 3, "{}", out.describe());
    assert!(column > 1, "{}", out.describe());
    assert!(
        !output.exists(),
        "nothing should be written for a malformed workspace"
    );
}

#[test]
fn unknown_field_is_named() {
    let dir = temp_dir("unknown-field");
    let text = tiny_workspace(&dir.join("runs"), "").replacen(
        "seed: 0,",
        "seed: 0,\n            bogus_field: 1,",
        1,
    );
    let (_, out) = run_text("unknown-field-run", &text, &[]);
    assert_fails_with(&out, &["unknown field", "bogus_field"]);
}

#[test]
fn an_unavailable_device_is_named_and_a_bad_one_refused() {
    let dir = temp_dir("no-gpu");
    let text = tiny_workspace(
        &dir.join("runs"),
        "Evaluate([Knn((k: 5, temperature: 0.07))]),",
    );
    // This machine has no NVIDIA GPU: a CPU build says how to build with CUDA, a CUDA
    // build that no GPU is visible to.
    let (_, out) = run_text("no-gpu-run", &text, &["--device", "cuda:0"]);
    assert_fails_with(&out, &["device 'cuda:0'"]);
    assert!(
        out.stderr.contains("built without CUDA") || out.stderr.contains("is not available"),
        "{}",
        out.describe()
    );
    let (_, out) = run_text("bad-device-run", &text, &["--device", "gpu"]);
    assert_fails_with(
        &out,
        &[
            "sessions.*.device",
            "device 'gpu' is neither 'cpu' nor 'cuda:N'",
        ],
    );
}

#[test]
fn unknown_plugin_lists_the_known_ones() {
    let (_, out) = run_stages("unknown-plugin", &pretrain(r#"Plugin(name: "nope")"#, 1));
    assert_fails_with(&out, &["unknown plugin 'nope'", "known:", "dino"]);
}

#[test]
fn a_backbone_as_pretext_task_is_refused() {
    let (_, out) = run_stages("wrong-kind", &pretrain(crate::TINY_VIT, 1));
    assert_fails_with(
        &out,
        &[
            "plugin 'vit' is of kind 'backbone'",
            "'pretext-task' is needed",
        ],
    );
}

#[test]
fn a_panic_in_create_is_reported() {
    need_faulty();
    let (_, out) = run_stages(
        "panic-create",
        &pretrain(&faulty("(panic_in_create: true)"), 1),
    );
    assert_fails_with(&out, &["faulty", "panicked in create"]);
}

#[test]
fn a_panic_in_step_keeps_the_earlier_checkpoints() {
    need_faulty();
    let (dir, out) = run_stages(
        "panic-step",
        &pretrain(&faulty("(panic_at_step: Some(3))"), 1),
    );
    assert_fails_with(&out, &["faulty plugin panicked at step 3"]);
    let found = checkpoints(&dir);
    // Checkpoint N holds the state after N steps; step 3 (the 4th) never finished.
    let (step, path) = found
        .last()
        .cloned()
        .unwrap_or_else(|| panic!("no checkpoint left:\n{}", out.describe()));
    assert!(
        (1..=3).contains(&step),
        "latest checkpoint is step {step}: {found:?}"
    );
    let ckpt = checkpoint::load(&path, &candle_core::Device::Cpu).unwrap();
    assert_eq!(
        ckpt.metadata.get("step").map(String::as_str),
        Some(step.to_string().as_str())
    );
    assert!(
        ckpt.tensors
            .iter()
            .any(|(name, _)| name.starts_with("param/")),
        "no parameters in {path:?}"
    );
}

#[test]
fn a_nan_loss_stops_training_and_names_the_last_checkpoint() {
    need_faulty();
    let (dir, out) = run_stages("nan", &pretrain(&faulty("(nan_at_step: Some(2))"), 1));
    assert_fails_with(&out, &["loss is NaN at step 2", "last good checkpoint"]);
    let found = checkpoints(&dir);
    let (step, latest) = found
        .last()
        .unwrap_or_else(|| panic!("no checkpoint left:\n{}", out.describe()));
    let name = latest.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        out.stderr.contains(&name),
        "the error should name '{name}':\n{}",
        out.describe()
    );
    // Checkpoint N holds the state after N steps: steps 0 and 1 finished, step 2 was the
    // NaN, so the newest is checkpoint 2, written before the NaN.
    assert_eq!(*step, 2, "latest checkpoint: {found:?}");
    let ckpt = checkpoint::load(latest, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("the last good checkpoint should load: {e}"));
    assert_eq!(ckpt.metadata.get("step").map(String::as_str), Some("2"));
    let mut params = 0;
    for (name, t) in ckpt.tensors.iter().filter(|(n, _)| n.starts_with("param/")) {
        let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{name} is not finite");
        params += 1;
    }
    assert!(params > 0, "no parameters in {latest:?}");
}

#[test]
fn a_loss_without_a_graph_is_warned_about_once() {
    need_faulty();
    let (_, out) = run_stages(
        "no-graph",
        &pretrain(&faulty("(no_grad_at_step: Some(1))"), 1),
    );
    assert!(out.success(), "{}", out.describe());
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("the loss of step 1 records no graph, so the step trains nothing"),
        "{}",
        out.describe()
    );
    assert_eq!(
        text.matches("records no graph").count(),
        1,
        "{}",
        out.describe()
    );
}

#[test]
fn a_truncated_checkpoint_is_reported_as_corrupt_on_resume() {
    need_faulty();
    let dir = temp_dir("corrupt");
    let text = tiny_workspace(&dir.join("runs"), &pretrain(&faulty("()"), 1));
    let file = write_workspace(&dir, &text);
    let first = run_patchwork(["run".to_string(), file.display().to_string()]);
    assert!(first.success(), "{}", first.describe());
    let (_, latest) = checkpoints(&dir)
        .pop()
        .expect("the run should leave a checkpoint");
    let bytes = std::fs::read(&latest).unwrap();
    std::fs::write(&latest, &bytes[..bytes.len() / 2]).unwrap();
    let second = run_patchwork([
        "run".to_string(),
        file.display().to_string(),
        "--resume".to_string(),
    ]);
    assert_fails_with(&second, &["is corrupt"]);
}
