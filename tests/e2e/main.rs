//! End-to-end tests: drive the built `patchwork` binary on workspaces written to
//! temporary folders. Run `cargo build --workspace` first (see the harness).

mod adapt;
mod bad_input;
mod bench;
mod boundary;
mod data;
mod drills;
mod evaluations;
mod gradients;
mod plugins;
mod precision;
mod probes;
mod provenance;
mod quickstart;
mod reload;
mod resume;
mod scaffold;
mod tui;

use std::path::{Path, PathBuf};

/// The tiny ViT every test trains: 16×16 images, 4×4 patches, width 32, 2 blocks.
pub const TINY_VIT: &str = r#"Plugin(name: "vit", config: (preset: "tiny", embed_dim: Some(32), depth: Some(2), num_heads: Some(2), patch_size: 4, img_size: 16, drop_path_rate: 0.0))"#;

/// A workspace with one session `s` on a tiny shapes set, writing its runs under
/// `output`; `stages` is the RON list body of the session's stages.
pub fn tiny_workspace(output: &Path, stages: &str) -> String {
    // Debug formatting quotes and escapes the path the way RON strings expect.
    let output = format!("{:?}", output.display().to_string());
    format!(
        r#"Workspace(
    name: "e2e",
    output: {output},
    data: {{
        "shapes": Shapes((classes: 3, images: 64, val_images: 32, size: 16, seed: 1)),
    }},
    sessions: [
        Session(
            name: "s",
            data: "shapes",
            backbone: {TINY_VIT},
            stages: [
                {stages}
            ],
            seed: 0,
            device: "cpu",
            checkpoint_every: 1,
        ),
    ],
)
"#
    )
}

/// A one-epoch `Pretrain` stage with `task` (a `Plugin(...)`), batches of 16.
pub fn pretrain(task: &str, epochs: u32) -> String {
    format!(
        "Pretrain((task: {task}, epochs: {epochs}, batch_size: 16, optimizer: AdamW((lr: 1e-3, min_lr: 1e-5, warmup_epochs: 0, weight_decay: 0.04, weight_decay_end: 0.04, clip_grad: 3.0)))),"
    )
}

/// The `faulty` fixture task with `config` (RON struct text).
pub fn faulty(config: &str) -> String {
    format!(r#"Plugin(name: "faulty", config: {config})"#)
}

/// Asserts that `out` failed and that its stderr holds every one of `needles`.
pub fn assert_fails_with(out: &patchwork_tests::Output, needles: &[&str]) {
    assert!(!out.success(), "expected a failure:\n{}", out.describe());
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "stderr should contain {needle:?}:\n{}",
            out.describe()
        );
    }
}

/// Writes `text` to `<dir>/workspace.ron` and returns the path.
pub fn write_workspace(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("workspace.ron");
    std::fs::write(&path, text).expect("the workspace file should be writable");
    path
}

/// Every record of the run folder `run`'s `metrics.jsonl`, parsed.
pub fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// `<output>/e2e/s/`: the run folder of [`tiny_workspace`]'s session.
pub fn run_dir(output: &Path) -> PathBuf {
    output.join("e2e").join("s")
}
