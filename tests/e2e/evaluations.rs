//! Evaluations during pre-training (`eval_every`), attention figures, and sessions
//! repeated over seeds with the workspace summary's mean ± std.

use std::path::Path;

use patchwork_tests::{plugin_lib, run_patchwork, temp_dir};

use crate::{TINY_VIT, pretrain, records, tiny_workspace, write_workspace};

const DINO: &str = r#"Plugin(name: "dino", config: (out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, local_crops: 0, global_size: 16, warmup_teacher_temp_epochs: 0))"#;

/// The training loss of every step record, in order.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    records(run)
        .iter()
        .filter(|r| r.get("event").is_none())
        .map(|r| {
            let step = r["step"].as_u64().expect("step");
            (step, r["loss"].as_f64().expect("loss"))
        })
        .collect()
}

/// A 3-epoch DINO pre-training (`extra` appended to the stage) and `evaluate`.
fn stages(extra: &str, evaluate: &str) -> String {
    let stage = pretrain(DINO, 3).replace(")))),", &format!(")), {extra})),"));
    format!("{stage}\n                Evaluate([{evaluate}]),")
}

#[test]
fn evaluations_run_every_n_epochs_with_figures_without_changing_training() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    let dir = temp_dir("eval-every");
    let evaluate = "Knn((k: 5)), Linear((blocks: 1, epochs: 5, batch_size: 32, lr: 0.01)), Attention((images: 3))";
    let run = |name: &str, extra: &str| {
        let output = dir.join(name);
        let text = tiny_workspace(&output, &stages(extra, evaluate));
        let file = write_workspace(&dir.join(name), &text);
        let out = run_patchwork(["run", &file.display().to_string()]);
        assert!(out.success(), "{}", out.describe());
        output.join("e2e").join("s")
    };
    std::fs::create_dir_all(dir.join("every")).expect("dir");
    std::fs::create_dir_all(dir.join("end")).expect("dir");
    let every = run("every", "eval_every: 1");
    let end = run("end", "");

    // Epochs 1 and 2 are evaluated during training (the last is the Evaluate stage's),
    // each evaluator once, after the epoch's last step; the random init and the end too.
    let all = records(&every);
    let evals: Vec<&serde_json::Value> = all.iter().filter(|r| r["event"] == "eval").collect();
    let at = |label: &str, evaluator: &str| {
        evals
            .iter()
            .filter(|r| r["at"] == label && r["evaluator"] == evaluator)
            .count()
    };
    for label in ["epoch 1", "epoch 2", "end"] {
        for evaluator in ["Knn", "Linear", "Attention"] {
            assert_eq!(at(label, evaluator), 1, "{label} {evaluator}: {evals:?}");
        }
    }
    assert_eq!(at("random init", "Knn"), 1, "{evals:?}");
    assert_eq!(at("random init", "Attention"), 1, "{evals:?}");
    assert_eq!(at("random init", "Linear"), 0, "{evals:?}");
    assert_eq!(at("epoch 3", "Knn"), 0, "{evals:?}");
    // 64 images, batches of 16: 4 steps an epoch.
    let epoch1 = evals
        .iter()
        .find(|r| r["at"] == "epoch 1")
        .expect("epoch 1");
    assert_eq!(
        (epoch1["step"].as_u64(), epoch1["epoch"].as_u64()),
        (Some(4), Some(1))
    );

    // Evaluating does not touch training: the loss curve is bit-identical.
    let (a, b) = (losses(&every), losses(&end));
    assert_eq!(a.len(), 12);
    assert_eq!(a, b, "evaluations during training changed the training");

    // The figures: one per evaluation, 3 image rows of (1 + 2 heads) cells of 96 px.
    for name in ["random-init", "epoch-0001", "epoch-0002", "end"] {
        let path = every.join("attention").join(format!("{name}.png"));
        let img = image::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .to_rgb8();
        assert_eq!(img.dimensions(), (3 * 98 + 2, 3 * 98 + 2), "{name}");
    }
    assert!(!end.join("attention").join("epoch-0001.png").exists());

    let report = std::fs::read_to_string(every.join("report.md")).expect("report");
    assert!(
        report.contains("## Evaluations during pre-training"),
        "{report}"
    );
    assert!(
        report.contains("| epoch | knn@5 | linear top-1 (1 blocks) |"),
        "{report}"
    );
    for row in ["| 0 (random init) |", "| 1 |", "| 2 |", "| end |"] {
        assert!(report.contains(row), "{row}: {report}");
    }
    assert!(
        report.contains("- epoch 1: ![epoch 1](attention/epoch-0001.png)"),
        "{report}"
    );
    let plain = std::fs::read_to_string(end.join("report.md")).expect("report");
    assert!(!plain.contains("during pre-training"), "{plain}");
}

#[test]
fn a_session_over_seeds_runs_each_and_the_summary_gives_mean_and_std() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    let dir = temp_dir("seeds");
    let output = dir.join("runs");
    let text = tiny_workspace(&output, &stages("", "Knn((k: 5))"))
        .replace("            seed: 0,\n", "            seeds: [0, 1, 2],\n")
        .replace("        ),\n    ],\n)", &format!(
            "        ),\n        Session(name: \"random\", data: \"shapes\", backbone: {TINY_VIT}, stages: [Evaluate([Knn((k: 5))])]),\n    ],\n)"
        ));
    let file = write_workspace(&dir, &text);
    let file = file.display().to_string();

    // One seed alone by its run name, with the epochs cut by an override of the
    // session as written.
    let out = run_patchwork([
        "run",
        &file,
        "--session",
        "s-seed1",
        "--set",
        "sessions.s.stages.0.epochs=1",
    ]);
    assert!(out.success(), "{}", out.describe());
    let ws = output.join("e2e");
    assert!(ws.join("s-seed1").join("report.md").is_file());
    assert!(!ws.join("s-seed0").exists());
    let summary = std::fs::read_to_string(ws.join("summary.md")).expect("summary");
    assert!(
        summary.contains("| score | s (1 run) | random (0 runs) |"),
        "{summary}"
    );
    assert!(
        summary.contains("- s: s-seed0 (not finished), s-seed1, s-seed2 (not finished)"),
        "{summary}"
    );

    // Every run: the seeds differ, so do their curves; the summary has mean ± std.
    let out = run_patchwork(["run", &file, "--set", "sessions.s.stages.0.epochs=1"]);
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("summary of the workspace"),
        "{}",
        out.describe()
    );
    let manifests: Vec<serde_json::Value> = (0..3)
        .map(|s| {
            let text = std::fs::read_to_string(ws.join(format!("s-seed{s}")).join("manifest.json"))
                .expect("manifest");
            serde_json::from_str(&text).expect("JSON")
        })
        .collect();
    for (s, m) in manifests.iter().enumerate() {
        assert_eq!(m["seeds"]["session"], s, "{m}");
    }
    let curve = |s: u32| losses(&ws.join(format!("s-seed{s}")));
    assert_ne!(curve(0), curve(1));
    let summary = std::fs::read_to_string(ws.join("summary.md")).expect("summary");
    assert!(
        summary.contains("| score | s (3 runs) | random (1 run) |"),
        "{summary}"
    );
    let row = summary
        .lines()
        .find(|l| l.starts_with("| knn@5 |"))
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(row.contains(" ± "), "{row}");
    assert!(summary.contains("| knn@5 (random init) |"), "{summary}");

    // An unknown name lists the runs.
    let out = run_patchwork(["run", &file, "--session", "s-seed7"]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("s-seed0, s-seed1, s-seed2, random"),
        "{}",
        out.describe()
    );
}
