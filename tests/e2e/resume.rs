//! Exact resume: a run stopped with `--max-steps` (or SIGINT) and resumed is the same
//! run as one that never stopped — parameters, optimizer moments, plugin state and
//! loss values bit for bit, on the same thread count.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use patchwork_tests::{patchwork, plugin_lib, run_patchwork, temp_dir};
use safetensors::SafeTensors;

use crate::{pretrain, run_dir, tiny_workspace, write_workspace};

/// DINO with drop-path in the ViT, two local crops and a teacher temperature warm-up,
/// so that RNG streams, the loader position, the centre and the EMA all matter.
const DINO: &str = r#"Plugin(name: "dino", config: (out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, local_crops: 2, global_size: 16, local_size: 8, momentum_teacher: 0.99, warmup_teacher_temp_epochs: 2, warmup_teacher_temp: 0.02))"#;

/// A workspace in `dir` training `epochs` epochs of 4 steps, checkpointing every
/// `every` steps; returns the file and its run folder.
fn workspace(dir: &Path, epochs: u32, every: u64) -> (PathBuf, PathBuf) {
    let output = dir.join("runs");
    let text = tiny_workspace(&output, &pretrain(DINO, epochs))
        .replace("drop_path_rate: 0.0", "drop_path_rate: 0.2")
        .replace(
            "checkpoint_every: 1,",
            &format!("checkpoint_every: {every},"),
        );
    (write_workspace(dir, &text), run_dir(&output))
}

fn run(file: &Path, extra: &[&str]) {
    let mut args = vec!["run".to_string(), file.display().to_string()];
    args.extend(extra.iter().map(ToString::to_string));
    let out = run_patchwork(args);
    assert!(out.success(), "{}", out.describe());
}

/// `(step, loss)` of every step record of `metrics.jsonl`, loss as its exact bit pattern.
#[allow(
    clippy::unwrap_used,
    reason = "test helper: a bad file should fail the test"
)]
fn losses(run: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("event").is_none())
        .map(|v| {
            let step = v["step"].as_u64().unwrap();
            (step, v["loss"].as_f64().unwrap().to_bits())
        })
        .collect()
}

/// Every tensor of a checkpoint file: name and raw bytes, sorted by name.
#[allow(
    clippy::unwrap_used,
    reason = "test helper: a bad file should fail the test"
)]
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect();
    out.sort();
    out
}

fn checkpoint_at(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints")
        .join(patchwork::engine::checkpoint::file_name(step))
}

#[test]
fn stopping_and_resuming_is_bit_identical_to_running_straight() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    // 3 epochs of 4 steps; stop at 6 (mid-epoch) and at 10.
    let straight_dir = temp_dir("resume-straight");
    let (straight, straight_run) = workspace(&straight_dir, 3, 4);
    run(&straight, &["--max-steps", "10"]);

    let split_dir = temp_dir("resume-split");
    let (split, split_run) = workspace(&split_dir, 3, 4);
    run(&split, &["--max-steps", "6"]);
    assert!(
        checkpoint_at(&split_run, 6).is_file(),
        "stopping checkpoints first"
    );
    run(&split, &["--resume", "--max-steps", "10"]);

    let a = tensors(&checkpoint_at(&straight_run, 10));
    let b = tensors(&checkpoint_at(&split_run, 10));
    assert_eq!(
        a.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        b.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    assert!(a.iter().any(|(n, _)| n.starts_with("optim/")));
    assert!(a.iter().any(|(n, _)| n.contains("dino.center")));
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "tensor '{name}' differs after stop + resume");
    }
    let (la, lb) = (losses(&straight_run), losses(&split_run));
    assert_eq!(la.len(), 10);
    assert_eq!(la, lb, "metrics.jsonl loss values differ");

    // Resuming past the end finishes the run: evaluation and report.
    run(&split, &["--resume"]);
    assert!(split_run.join("report.md").is_file());
}

#[test]
fn a_crash_after_a_checkpoint_replays_the_lost_steps_once() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    let dir = temp_dir("resume-crash");
    let (file, run_path) = workspace(&dir, 2, 4);
    run(&file, &["--max-steps", "6"]);
    // Simulate a crash after step 6's checkpoint at 4: drop the newer checkpoint so
    // the metrics hold two steps more than the last checkpoint.
    std::fs::remove_file(checkpoint_at(&run_path, 6)).unwrap();
    run(&file, &["--resume", "--max-steps", "8"]);
    let steps: Vec<u64> = losses(&run_path).into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        steps,
        (1..=8).collect::<Vec<_>>(),
        "each step once, in order"
    );
}

#[test]
fn sigint_checkpoints_the_current_step_and_says_how_to_resume() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    let dir = temp_dir("resume-sigint");
    let (file, run_path) = workspace(&dir, 200, 1000);
    let child = patchwork()
        .args(["run", &file.display().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = run_path.join("metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 3 {
        assert!(Instant::now() < deadline, "training did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an interrupted run exits non-zero");
    assert!(
        stderr.contains("interrupted at step") && stderr.contains("--resume"),
        "{stderr}"
    );
    // The checkpoint is at the last step the metrics recorded, and it resumes.
    let last = losses(&run_path).last().map(|(s, _)| *s).unwrap();
    assert!(last < 800, "stopped early");
    assert!(
        checkpoint_at(&run_path, last).is_file(),
        "checkpoint at step {last}"
    );
    let next = (last + 2).to_string();
    run(&file, &["--resume", "--max-steps", &next]);
    assert_eq!(losses(&run_path).last().map(|(s, _)| *s), Some(last + 2));
}

#[test]
fn retention_keeps_the_last_k_and_the_best_epoch() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    let dir = temp_dir("retention");
    let (file, run_path) = workspace(&dir, 4, 1);
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "checkpoint_every: 1,",
        "checkpoint_every: 1, keep_last: 2, keep_best: Some((metric: \"loss\", mode: Min)),",
    );
    std::fs::write(&file, text).unwrap();
    run(&file, &[]);
    let mut names: Vec<String> = std::fs::read_dir(run_path.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "best.safetensors",
            "step-000000015.safetensors",
            "step-000000016.safetensors"
        ]
    );
    // The best is the epoch-end checkpoint of the epoch with the lowest mean loss.
    let metrics = losses(&run_path);
    let means: Vec<f64> = metrics
        .chunks(4)
        .map(|c| c.iter().map(|(_, l)| f64::from_bits(*l)).sum::<f64>() / 4.0)
        .collect();
    let best_epoch = (0..means.len())
        .min_by(|&a, &b| means[a].total_cmp(&means[b]))
        .unwrap();
    let bytes = std::fs::read(run_path.join("checkpoints/best.safetensors")).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["step"], ((best_epoch as u64 + 1) * 4).to_string());
    let stored: f64 = meta["best_value"].parse().unwrap();
    assert!(
        (stored - means[best_epoch]).abs() < 1e-9,
        "{stored} vs {means:?}"
    );

    // A metric the task does not report is named with the ones it does.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("metric: \"loss\"", "metric: \"accuracy\"");
    std::fs::write(&file, text).unwrap();
    let out = run_patchwork(["run".to_string(), file.display().to_string()]);
    assert!(!out.success());
    assert!(
        out.stderr
            .contains("keep_best: metric 'accuracy' is not reported")
            && out.stderr.contains("teacher_entropy"),
        "{}",
        out.describe()
    );
}

/// The same equivalence on the shipped quickstart model and data (ViT 96×4, DINO
/// K 512, shapes at 32 px), stopped mid-epoch at step 3 and resumed to step 6.
#[test]
fn the_quickstart_model_resumes_bit_identically() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    let ws = patchwork_tests::repo_root()
        .join("workspaces")
        .join("quickstart.ron");
    let start = |dir: &Path, extra: &[&str]| {
        let mut args = vec![
            "--set".to_string(),
            format!("output={:?}", dir.display().to_string()),
            "--set".to_string(),
            "sessions.vit-dino.checkpoint_every=3".to_string(),
        ];
        args.extend(extra.iter().map(ToString::to_string));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&ws, &args);
        dir.join("quickstart").join("vit-dino")
    };
    let straight = start(&temp_dir("resume-qs-straight"), &["--max-steps", "6"]);
    let split_dir = temp_dir("resume-qs-split");
    start(&split_dir, &["--max-steps", "3"]);
    let split = start(&split_dir, &["--resume", "--max-steps", "6"]);
    let (a, b) = (
        tensors(&checkpoint_at(&straight, 6)),
        tensors(&checkpoint_at(&split, 6)),
    );
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "tensor '{name}' differs after stop + resume");
    }
    assert_eq!(losses(&straight), losses(&split));
}
