//! The probe evaluators (`Linear`, `MultiLabel`, `Dense`) score a frozen backbone on
//! the validation split, and the DINO-MM workspace runs end to end at a reduced size.

use std::path::Path;

use patchwork_tests::{plugin_lib, run_patchwork, temp_dir};

use crate::{run_dir, tiny_workspace, write_workspace};

/// The probe evaluators' records of a run's `Evaluate` stage, in order.
fn evals(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .filter(|r| r["event"] == "eval" && r["at"] == "end")
        .filter(|r| !["Knn", "Attention"].contains(&r["evaluator"].as_str().unwrap_or("")))
        .collect()
}

/// The value of the first field of `record` whose name starts with `prefix`.
fn score(record: &serde_json::Value, prefix: &str) -> f64 {
    record
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.starts_with(prefix)))
        .and_then(|(_, v)| v.as_f64())
        .unwrap_or_else(|| panic!("no '{prefix}' in {record}"))
}

#[test]
fn probes_score_a_random_backbone_above_chance() {
    plugin_lib("patchwork-vit");
    let dir = temp_dir("probes");
    let output = dir.join("runs");
    // Linear and dense probes on single-label shapes with object masks.
    let text = tiny_workspace(
        &output,
        "Evaluate([Linear((blocks: 2, epochs: 30, batch_size: 32, lr: 0.01)), Dense((epochs: 10, batch_size: 256, lr: 0.01)), MultiLabel((blocks: 2, epochs: 30, batch_size: 32, lr: 0.01))]),",
    )
    .replace(
        "Shapes((classes: 3, images: 64, val_images: 32, size: 16, seed: 1))",
        "Shapes((classes: 3, images: 192, val_images: 96, size: 16, seed: 1, palette: 2, plain: true))",
    );
    let file = write_workspace(&dir, &text);
    let out = run_patchwork(["run", &file.display().to_string()]);
    assert!(out.success(), "{}", out.describe());
    let run = run_dir(&output);
    let records = evals(&run);
    assert_eq!(records.len(), 3, "{records:?}");
    let top1 = score(&records[0], "linear top-1");
    // Measured 47.9 % on 96 images; chance is 1/3.
    assert!(top1 > 0.42, "linear top-1 {top1} (chance 1/3)");
    // Random-init patch tokens hardly tell object from background here (the two
    // palette colours swap between images); measured 20.3 % mIoU over the 4 classes
    // present, about the background's IoU alone.
    let miou = score(&records[1], "dense mIoU");
    assert!((0.15..=1.0).contains(&miou), "dense mIoU {miou}");
    // Single-label data as one-hot targets: a random scorer's AP is about 1/3.
    let map = score(&records[2], "multi-label mAP micro");
    assert!(map > 0.45, "micro mAP {map} (chance about 1/3)");
    let report = std::fs::read_to_string(run.join("report.md")).expect("report");
    assert!(report.contains("## Probes"), "{report}");
    assert!(report.contains("| linear top-1 (2 blocks) |"), "{report}");

    // Multi-label on scenes (1 to 3 objects), with all labels and with a fifth.
    let dir = temp_dir("probes-multi");
    let output = dir.join("runs");
    let text = tiny_workspace(
        &output,
        "Evaluate([MultiLabel((blocks: 1, epochs: 30, batch_size: 32, lr: 0.01)), MultiLabel((blocks: 1, epochs: 30, batch_size: 32, lr: 0.01, train_fraction: 0.2))]),",
    )
    .replace(
        "Shapes((classes: 3, images: 64, val_images: 32, size: 16, seed: 1))",
        "Scenes((classes: 4, images: 192, val_images: 96, size: 16, min_objects: 1, max_objects: 3, seed: 1))",
    );
    let file = write_workspace(&dir, &text);
    let out = run_patchwork(["run", &file.display().to_string()]);
    assert!(out.success(), "{}", out.describe());
    let records = evals(&run_dir(&output));
    assert_eq!(records.len(), 2, "{records:?}");
    for r in &records {
        let micro = score(r, "multi-label mAP micro");
        let macro_ = score(r, "multi-label mAP macro");
        assert!(
            (0.0..=1.0).contains(&micro) && (0.0..=1.0).contains(&macro_),
            "{r}"
        );
    }
    // Several objects per image: the targets come from each scene's classes (a
    // random-init backbone scores about the label frequency here, ~0.48).
    assert!(
        records[1]
            .as_object()
            .is_some_and(|o| o.keys().any(|k| k.contains("20 % of labels"))),
        "{}",
        records[1]
    );
}

/// Runs the shipped `workspaces/<name>.ron` with its output under `output` and the
/// overrides `sets` (`key.path=value`); asserts it succeeds.
fn run_shipped(name: &str, output: &Path, sets: &[String]) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../workspaces/{name}.ron"))
        .display()
        .to_string();
    let mut args: Vec<String> = vec!["run".into(), file];
    let output_set = format!("output={:?}", output.display().to_string());
    for set in std::iter::once(&output_set).chain(sets) {
        args.push("--set".into());
        args.push(set.clone());
    }
    let out = run_patchwork(args);
    assert!(out.success(), "{}", out.describe());
}

#[test]
fn the_dino_mm_workspace_runs_at_a_reduced_size() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    plugin_lib("patchwork-dino-mm");
    let dir = temp_dir("dino-mm");
    let output = dir.join("runs");
    let mut sets = vec![
        "data.sar-optical.images=64".to_string(),
        "data.sar-optical.val_images=32".to_string(),
    ];
    for session in ["dino-mm", "dino"] {
        sets.push(format!("sessions.{session}.stages.0.epochs=1"));
        for e in 0..2 {
            sets.push(format!("sessions.{session}.stages.1.{e}.epochs=5"));
        }
    }
    run_shipped("dino-mm", &output, &sets);
    for session in ["dino-mm", "dino"] {
        let run = output.join("dino-mm").join(session);
        let records = evals(&run);
        assert_eq!(records.len(), 2, "{session}: {records:?}");
        let report = std::fs::read_to_string(run.join("report.md")).expect("report");
        assert!(report.contains("multi-label mAP micro"), "{report}");
    }
}

#[test]
fn the_selfpatch_vs_dino_workspace_runs_at_a_reduced_size() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    plugin_lib("patchwork-selfpatch");
    let dir = temp_dir("selfpatch-vs-dino");
    let output = dir.join("runs");
    let mut sets = vec![
        "data.shapes.images=128".to_string(),
        "data.shapes.val_images=32".to_string(),
    ];
    for method in ["dino", "selfpatch"] {
        let s = format!("sessions.{method}");
        sets.push(format!("{s}.stages.0.epochs=3"));
        sets.push(format!("{s}.stages.0.eval_every=2"));
        sets.push(format!("{s}.stages.2.0.epochs=5"));
        sets.push(format!("{s}.stages.2.1.epochs=2"));
    }
    sets.push("sessions.random-init.stages.0.1.epochs=5".into());
    sets.push("sessions.random-init.stages.0.2.epochs=2".into());
    run_shipped("selfpatch-vs-dino", &output, &sets);
    let ws = output.join("selfpatch-vs-dino");
    for seed in 0..3 {
        for method in ["dino", "selfpatch", "random-init"] {
            let run = ws.join(format!("{method}-seed{seed}"));
            let records = evals(&run);
            assert_eq!(records.len(), 2, "{method}-seed{seed}: {records:?}");
            let report = std::fs::read_to_string(run.join("report.md")).expect("report");
            assert!(report.contains("dense mIoU"), "{report}");
            if method != "random-init" {
                assert!(report.contains("| 2 |"), "k-NN after epoch 2: {report}");
                assert!(run.join("attention").join("epoch-0002.png").is_file());
                assert!(run.join("attention").join("end.png").is_file());
            }
        }
    }
    let summary = std::fs::read_to_string(ws.join("summary.md")).expect("summary");
    assert!(
        summary.contains("| score | dino (3 runs) | selfpatch (3 runs) | random-init (3 runs) |"),
        "{summary}"
    );
    for score in [
        "| knn@20 |",
        "| linear top-1 (4 blocks) |",
        "| dense mIoU |",
    ] {
        let row = summary
            .lines()
            .find(|l| l.starts_with(score))
            .unwrap_or_else(|| panic!("{score}: {summary}"));
        assert_eq!(row.matches(" ± ").count(), 3, "{row}");
    }
    // SelfPatch's own term learns over the 12 steps: the patch loss falls. (The
    // image-level DINO loss may rise this early, while the centre spreads the
    // teacher; see quickstart.ron.)
    let text = std::fs::read_to_string(
        output
            .join("selfpatch-vs-dino")
            .join("selfpatch-seed0")
            .join("metrics.jsonl"),
    )
    .expect("metrics");
    let steps: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .filter(|r: &serde_json::Value| r.get("event").is_none())
        .collect();
    let mean = |key: &str, epoch: u64| {
        let v: Vec<f64> = steps
            .iter()
            .filter(|r| r["epoch"] == epoch)
            .map(|r| r[key].as_f64().expect(key))
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (first, last) = (mean("patch_loss", 0), mean("patch_loss", 2));
    assert!(last < first, "patch loss {first} -> {last}");
}
