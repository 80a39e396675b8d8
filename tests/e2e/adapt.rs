//! The `Adapt` stage: an adaptation plugin trains on the labelled training split after
//! (or without) pre-training, is evaluated on the validation split, and resumes
//! exactly like pre-training does.

use std::path::Path;

use patchwork_tests::{plugin_lib, run_patchwork, temp_dir};

use crate::{pretrain, records, run_dir, tiny_workspace, write_workspace};

/// An `Adapt` stage with the minimal adaptation plugin in `mode`, `epochs` epochs.
fn adapt(classes: usize, mode: &str, epochs: u32, lr: f64) -> String {
    format!(
        r#"Adapt((method: Plugin(name: "minimal-adaptation", config: (classes: {classes}, mode: {mode})), epochs: {epochs}, batch_size: 16, optimizer: AdamW((lr: {lr}, min_lr: 1e-5, warmup_epochs: 0, weight_decay: 0.0, weight_decay_end: 0.0, clip_grad: 0.0)))),"#
    )
}

fn run(file: &Path, extra: &[&str]) {
    let mut args = vec!["run".to_string(), file.display().to_string()];
    args.extend(extra.iter().map(ToString::to_string));
    let out = run_patchwork(args);
    assert!(out.success(), "{}", out.describe());
}

#[test]
fn fine_tuning_learns_to_classify_and_reports_validation_accuracy() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-minimal-adaptation");
    let dir = temp_dir("adapt-learns");
    let output = dir.join("runs");
    // A small ViT trained from scratch on 32 px shapes: slow to learn, but clearly.
    let text = tiny_workspace(&output, &adapt(4, "Finetune", 40, 3e-3))
        .replace(
            "Shapes((classes: 3, images: 64, val_images: 32, size: 16, seed: 1))",
            "Shapes((classes: 4, images: 256, val_images: 256, size: 32, seed: 1, palette: 2, plain: true))",
        )
        .replace("patch_size: 4, img_size: 16", "patch_size: 8, img_size: 32")
        .replace("batch_size: 16, optimizer", "batch_size: 16, min_scale: 1.0, optimizer");
    let file = write_workspace(&dir, &text);
    run(&file, &[]);
    let run = run_dir(&output);
    let all = records(&run);
    let steps: Vec<&serde_json::Value> = all.iter().filter(|r| r.get("event").is_none()).collect();
    assert_eq!(steps.len(), 40 * 16, "40 epochs of 16 steps");
    let mean = |epoch: u64| {
        let l: Vec<f64> = steps
            .iter()
            .filter(|r| r["epoch"] == epoch)
            .map(|r| r["loss"].as_f64().expect("loss"))
            .collect();
        l.iter().sum::<f64>() / l.len() as f64
    };
    // Measured: 1.40 -> 1.04.
    assert!(
        mean(39) < mean(0) - 0.2,
        "loss falls: {} -> {}",
        mean(0),
        mean(39)
    );
    let eval = all
        .iter()
        .find(|r| r["event"] == "adapt_eval")
        .expect("an adapt_eval record");
    let accuracy = eval["accuracy"].as_f64().expect("accuracy");
    assert_eq!(eval["images"], 256);
    // Chance is 25 %; measured 40.6 %.
    assert!(accuracy > 0.33, "validation accuracy {accuracy}");
    let report = std::fs::read_to_string(run.join("report.md")).expect("report");
    assert!(
        report.contains("## Adaptation: minimal-adaptation"),
        "{report}"
    );
    assert!(report.contains("| accuracy |"), "{report}");
}

#[test]
fn a_session_stopped_in_its_adapt_stage_resumes_it_exactly() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    plugin_lib("patchwork-minimal-adaptation");
    const DINO: &str = r#"Plugin(name: "dino", config: (out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, local_crops: 0, global_size: 16))"#;
    let stages = format!("{}\n{}", pretrain(DINO, 1), adapt(3, "Finetune", 2, 1e-3));
    let workspace = |name: &str| {
        let dir = temp_dir(name);
        let output = dir.join("runs");
        let text = tiny_workspace(&output, &stages);
        (write_workspace(&dir, &text), run_dir(&output))
    };
    let (straight, straight_run) = workspace("adapt-straight");
    run(&straight, &[]);
    let (split, split_run) = workspace("adapt-split");
    // 4 pre-training steps, then 2 of the 8 adaptation steps.
    run(&split, &["--max-steps", "6"]);
    assert!(
        split_run.join("checkpoints").join("stage-1").is_dir(),
        "the adapt stage checkpoints in its own folder"
    );
    run(&split, &["--resume"]);

    let key = |r: &serde_json::Value| {
        (
            r["step"].as_u64(),
            r["event"].as_str().map(str::to_string),
            r["loss"].as_f64().map(f64::to_bits),
            r["accuracy"].as_f64().map(f64::to_bits),
        )
    };
    let a: Vec<_> = records(&straight_run).iter().map(key).collect();
    let b: Vec<_> = records(&split_run).iter().map(key).collect();
    assert_eq!(a.len(), 4 + 8 + 1, "steps and the evaluation: {a:?}");
    assert_eq!(a, b, "the resumed session is the uninterrupted one");
    assert_eq!(
        a[11].0,
        Some(12),
        "adaptation steps count on from pre-training"
    );
}

#[test]
fn a_wrong_kind_or_too_few_classes_fail_with_a_clear_message() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    plugin_lib("patchwork-minimal-adaptation");
    let dir = temp_dir("adapt-bad");
    let output = dir.join("runs");
    let text = tiny_workspace(&output, &adapt(3, "Probe", 1, 1e-3))
        .replace("\"minimal-adaptation\"", "\"dino\"");
    let file = write_workspace(&dir, &text);
    let out = run_patchwork(["check", &file.display().to_string()]);
    crate::assert_fails_with(&out, &["dino", "adaptation"]);

    // The shapes set has 3 classes; a 2-class classifier is told so.
    let text = tiny_workspace(&output, &adapt(2, "Probe", 1, 1e-3));
    let file = write_workspace(&dir, &text);
    let out = run_patchwork(["run", &file.display().to_string()]);
    crate::assert_fails_with(&out, &["out of range for classes: 2"]);
}

#[test]
fn a_config_error_in_a_later_stage_fails_before_the_first_stage_trains() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    plugin_lib("patchwork-minimal-adaptation");
    let dir = temp_dir("adapt-early");
    let output = dir.join("runs");
    let dino = r#"Plugin(name: "dino", config: (out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, local_crops: 0, global_size: 16))"#;
    let stages = format!("{}\n{}", pretrain(dino, 1), adapt(3, "Probe", 1, 1e-3))
        .replace("mode: Probe", "mod: Probe");
    let file = write_workspace(&dir, &tiny_workspace(&output, &stages));
    let out = run_patchwork(["run", &file.display().to_string()]);
    crate::assert_fails_with(&out, &["workspace.ron:", "Unexpected field named `mod`"]);
    assert!(
        !run_dir(&output).join("metrics.jsonl").exists(),
        "nothing trained"
    );
}
