//! Fault drills: a crash between writing and renaming a checkpoint, a full disk, damaged
//! and mismatched checkpoints, and failing plugins. Each drill asserts the message the
//! user sees and that the checkpoint before the fault still loads.

use std::path::{Path, PathBuf};

use candle_core::Device;
use patchwork::engine::checkpoint::{self, Checkpoint};
use patchwork_tests::{Output, plugin_lib, run_patchwork, temp_dir};

use crate::{
    TINY_VIT, assert_fails_with, faulty, pretrain, run_dir, tiny_workspace, write_workspace,
};

/// The `faulty` fixture must be built for these drills.
fn need_faulty() {
    plugin_lib("patchwork-fixture-faulty");
}

/// A workspace file for [`tiny_workspace`]'s session `s` training with `faulty(config)`
/// for one epoch (four steps, a checkpoint after each); runs go under `<dir>/runs`.
fn faulty_workspace(dir: &Path, config: &str) -> PathBuf {
    let text = tiny_workspace(&dir.join("runs"), &pretrain(&faulty(config), 1));
    write_workspace(dir, &text)
}

/// `patchwork run <file> <extra...>`.
fn run_file(file: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run".to_string(), file.display().to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    run_patchwork(args)
}

/// The checkpoint folder of session `s` under `<dir>/runs`.
fn ckpt_dir(dir: &Path) -> PathBuf {
    run_dir(&dir.join("runs")).join("checkpoints")
}

/// The steps of the checkpoints in `dir`'s session, oldest first.
fn steps(dir: &Path) -> Vec<u64> {
    checkpoint::list(&ckpt_dir(dir))
        .expect("the checkpoint folder should be readable")
        .into_iter()
        .map(|(step, _)| step)
        .collect()
}

/// The temporary file a save of `step` writes before renaming it.
fn tmp_file(dir: &Path, step: u64) -> PathBuf {
    ckpt_dir(dir).join(format!("{}.tmp", checkpoint::file_name(step)))
}

/// Loads the checkpoint of `step` and checks that it is whole: its metadata says
/// `step`, it holds parameters, and they are finite.
fn assert_loads(dir: &Path, step: u64) -> Checkpoint {
    let path = ckpt_dir(dir).join(checkpoint::file_name(step));
    let ckpt = checkpoint::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("checkpoint {step} should load: {e}"));
    assert_eq!(
        ckpt.metadata.get("step").map(String::as_str),
        Some(step.to_string().as_str()),
        "{path:?}"
    );
    let params: Vec<_> = ckpt
        .tensors
        .iter()
        .filter(|(name, _)| name.starts_with("param/"))
        .collect();
    assert!(!params.is_empty(), "no parameters in {path:?}");
    for (name, t) in params {
        let values = t
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap_or_else(|e| panic!("{name} in {path:?}: {e}"));
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{name} in {path:?} is not finite"
        );
    }
    ckpt
}

/// Resumes `file` and checks that training continues from checkpoint `from` to the end
/// of the epoch (step 4).
fn assert_resumes_from(file: &Path, dir: &Path, from: u64) {
    let out = run_file(file, &["--resume"]);
    assert!(out.success(), "resume should work:\n{}", out.describe());
    let all = format!("{}{}", out.stdout, out.stderr);
    let resumed = format!(
        "resumed from '{}'",
        ckpt_dir(dir).join(checkpoint::file_name(from)).display()
    );
    assert!(
        all.contains(&resumed),
        "expected {resumed:?}:\n{}",
        out.describe()
    );
    assert_eq!(steps(dir).last(), Some(&4), "{}", out.describe());
    assert_loads(dir, 4);
}

/// Drill 1: the process dies (here: aborts through the checkpoint module's test hook)
/// after the new checkpoint's temporary file is written but before it is renamed.
#[cfg(unix)]
#[test]
fn a_kill_between_write_and_rename_keeps_the_previous_checkpoint() {
    use std::os::unix::process::ExitStatusExt;

    need_faulty();
    let dir = temp_dir("drill-kill");
    let file = faulty_workspace(&dir, "()");
    // `sh` turns core dumps off, then becomes patchwork (the status is patchwork's).
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(r#"ulimit -c 0; exec "$0" "$@""#)
        .arg(patchwork_tests::patchwork_bin())
        .args(["run", &file.display().to_string()])
        .env_remove("PATCHWORK_PLUGIN_PATH")
        .env_remove("PATCHWORK_LOG")
        .env("NO_COLOR", "1")
        .env(
            checkpoint::FAULT_ENV,
            format!("abort-before-rename:{}", checkpoint::file_name(3)),
        );
    let killed = patchwork_tests::run(&mut cmd);
    assert_eq!(
        killed.status.signal(),
        Some(6),
        "expected SIGABRT:\n{}",
        killed.describe()
    );
    assert_eq!(steps(&dir), [1, 2], "{}", killed.describe());
    assert!(
        tmp_file(&dir, 3).exists(),
        "the interrupted save leaves its temporary file"
    );
    assert_eq!(
        checkpoint::latest(&ckpt_dir(&dir)),
        Some(ckpt_dir(&dir).join(checkpoint::file_name(2)))
    );
    assert_loads(&dir, 2);

    assert_resumes_from(&file, &dir, 2);
    assert!(
        !tmp_file(&dir, 3).exists(),
        "the resumed save of step 3 replaces the temporary file"
    );
}

/// Drill 2: the disk fills up while a checkpoint is written. The temporary file of the
/// third save is a link to `/dev/full`, where every write fails with ENOSPC, so exactly
/// that save hits a full disk. `keep_checkpoints: 1` checks that nothing is pruned
/// before a save has succeeded.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_while_checkpointing_is_reported_and_keeps_the_previous_checkpoint() {
    need_faulty();
    let dir = temp_dir("drill-disk-full");
    let text = tiny_workspace(&dir.join("runs"), &pretrain(&faulty("()"), 1)).replacen(
        "checkpoint_every: 1,",
        "checkpoint_every: 1,\n            keep_checkpoints: 1,",
        1,
    );
    let file = write_workspace(&dir, &text);
    std::fs::create_dir_all(ckpt_dir(&dir)).expect("mkdir");
    std::os::unix::fs::symlink("/dev/full", tmp_file(&dir, 3)).expect("symlink");

    // `--resume` keeps the prepared run folder; with no checkpoint it starts at step 0.
    let out = run_file(&file, &["--resume"]);
    let third = ckpt_dir(&dir).join(checkpoint::file_name(3));
    assert_fails_with(
        &out,
        &[&third.display().to_string(), "No space left on device"],
    );
    assert_eq!(steps(&dir), [2], "{}", out.describe());
    assert!(
        std::fs::symlink_metadata(tmp_file(&dir, 3)).is_err(),
        "the failed save should remove its temporary file"
    );
    assert_loads(&dir, 2);

    // Space is back: the run continues from the checkpoint the full disk left.
    assert_resumes_from(&file, &dir, 2);
    assert_eq!(steps(&dir), [4]);
}

/// Drill 3a: a flipped byte in the newest checkpoint fails its checksum; truncation is
/// reported too; the checkpoint before it loads, and moving the damaged one aside
/// resumes from there.
#[test]
fn a_damaged_checkpoint_is_refused_and_the_previous_one_loads() {
    need_faulty();
    let dir = temp_dir("drill-damaged");
    let file = faulty_workspace(&dir, "()");
    let first = run_file(&file, &[]);
    assert!(first.success(), "{}", first.describe());
    assert_eq!(steps(&dir), [2, 3, 4], "{}", first.describe());
    let newest = ckpt_dir(&dir).join(checkpoint::file_name(4));
    let bytes = std::fs::read(&newest).expect("read");

    // One byte in the middle of the tensor data: only the checksum can tell.
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut flipped = bytes.clone();
    flipped[header + (bytes.len() - header) / 2] ^= 0x01;
    std::fs::write(&newest, &flipped).expect("write");
    let out = run_file(&file, &["--resume"]);
    assert_fails_with(
        &out,
        &[
            &newest.display().to_string(),
            "is corrupt",
            "checksum mismatch",
        ],
    );

    std::fs::write(&newest, &bytes[..bytes.len() - 100]).expect("write");
    let out = run_file(&file, &["--resume"]);
    assert_fails_with(
        &out,
        &[&newest.display().to_string(), "is corrupt", "truncated"],
    );
    assert_loads(&dir, 3);

    std::fs::rename(&newest, newest.with_extension("damaged")).expect("move aside");
    assert_resumes_from(&file, &dir, 3);
}

/// Drill 3b: resuming with a different model (a wider backbone) names the tensor whose
/// shape differs and both shapes; the checkpoint itself is fine and still loads.
#[test]
fn resuming_a_different_model_names_the_tensor_and_both_shapes() {
    need_faulty();
    let dir = temp_dir("drill-wrong-model");
    let file = faulty_workspace(&dir, "()");
    let first = run_file(&file, &[]);
    assert!(first.success(), "{}", first.describe());
    let out = run_file(
        &file,
        &[
            "--resume",
            "--set",
            "sessions.s.backbone.config.embed_dim=Some(48)",
        ],
    );
    assert_fails_with(
        &out,
        &[
            "does not fit the model: tensor 'param/student.backbone.",
            "32] in the checkpoint but [",
            "48] in the model",
        ],
    );
    assert_loads(&dir, 4);
}

/// Drill 4a: a panic in the task's `after_step` fails the session with the panic's
/// message; the checkpoint before it loads.
#[test]
fn a_panic_in_after_step_fails_the_session() {
    need_faulty();
    let dir = temp_dir("drill-after-step-panic");
    let file = faulty_workspace(&dir, "(panic_after_step: Some(2))");
    let out = run_file(&file, &[]);
    assert_fails_with(
        &out,
        &[
            "session 's'",
            "faulty plugin panicked in after_step at step 2",
        ],
    );
    // After step 2's update the panic came before checkpoint 3.
    assert_eq!(steps(&dir), [1, 2], "{}", out.describe());
    assert_loads(&dir, 2);
    assert_resumes_from_without_fault(&dir, 2);
}

/// Drill 4b: an error returned by `after_step` fails the session with its message.
#[test]
fn an_error_from_after_step_fails_the_session() {
    need_faulty();
    let dir = temp_dir("drill-after-step-error");
    let file = faulty_workspace(&dir, "(error_after_step: Some(1))");
    let out = run_file(&file, &[]);
    assert_fails_with(
        &out,
        &[
            "session 's'",
            "faulty plugin failed in after_step at step 1",
        ],
    );
    assert_eq!(steps(&dir), [1], "{}", out.describe());
    assert_loads(&dir, 1);
}

/// Rewrites `dir`'s workspace without faults and resumes it from checkpoint `from`.
fn assert_resumes_from_without_fault(dir: &Path, from: u64) {
    let file = faulty_workspace(dir, "()");
    assert_resumes_from(&file, dir, from);
}

/// Drill 4c: in a workspace of two sessions, the first failing does not stop the
/// second; the run exits non-zero and names the failed session.
#[test]
fn a_failing_session_does_not_stop_the_next_one() {
    need_faulty();
    let dir = temp_dir("drill-two-sessions");
    let output = dir.join("runs");
    let session = |name: &str, config: &str| {
        format!(
            r#"Session(
            name: "{name}",
            data: "shapes",
            backbone: {TINY_VIT},
            stages: [
                {}
            ],
            seed: 0,
            device: "cpu",
        ),"#,
            pretrain(&faulty(config), 1)
        )
    };
    let text = format!(
        r#"Workspace(
    name: "e2e",
    output: {output:?},
    data: {{
        "shapes": Shapes((classes: 3, images: 64, val_images: 32, size: 16, seed: 1)),
    }},
    sessions: [
        {}
        {}
    ],
)
"#,
        session("bad", "(error_after_step: Some(1))"),
        session("good", "()"),
        output = output.display().to_string(),
    );
    let file = write_workspace(&dir, &text);
    let out = run_file(&file, &[]);
    assert_fails_with(
        &out,
        &["'bad'", "faulty plugin failed in after_step at step 1"],
    );
    let report = output.join("e2e").join("good").join("report.md");
    assert!(
        report.is_file(),
        "the second session should run to its report:\n{}",
        out.describe()
    );
}
