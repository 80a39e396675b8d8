//! `patchwork bench train` measures the ViT-Tiny step and prints the figures the
//! PyTorch reference prints.

use patchwork_tests::{plugin_lib, run_patchwork};

#[test]
fn bench_train_prints_rates_flops_and_peak_memory() {
    plugin_lib("patchwork-vit");
    let out = run_patchwork([
        "bench",
        "train",
        "--models",
        "tiny4",
        "--batch",
        "4",
        "--vit-steps",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
    ]);
    assert!(out.success(), "{}", out.describe());
    let text = &out.stdout;
    assert!(text.contains("ViT-Tiny/4 @ 32 px, batch 4"), "{text}");
    for line in ["train step:", "forward:"] {
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with(line))
            .unwrap_or_else(|| panic!("no '{line}' in {text}"));
        assert!(row.contains("img/s") && row.contains("GFLOP/s"), "{row}");
    }
    assert!(text.contains("0.731 GFLOP/img"), "{text}");
    assert!(text.contains("peak memory:"), "{text}");
    assert!(
        text.contains("cpu, 1 thread, fp32 (patchwork, candle)"),
        "{text}"
    );
    let out = run_patchwork(["bench", "train", "--models", "tiny99"]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("unknown model 'tiny99'"),
        "{}",
        out.describe()
    );
    let out = run_patchwork(["bench", "train", "--threads", "0"]);
    assert!(!out.success());
    assert!(out.stderr.contains("--threads"), "{}", out.describe());
}

#[test]
fn bench_train_runs_the_dino_s16_step_and_bf16_and_refuses_bad_targets() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    // One image (2 × 224 px + 8 × 96 px crops), one step: the full-size model on the CPU.
    let out = run_patchwork([
        "bench",
        "train",
        "--models",
        "dino-s16",
        "--batch",
        "1",
        "--vit-steps",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(out.success(), "{}", out.describe());
    let text = &out.stdout;
    assert!(
        text.contains("DINO ViT-S/16 step (2x224 px + 8x96 px crops, head out 65536), batch 1"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("train step:"))
        .unwrap_or_else(|| panic!("no train step line in {text}"));
    assert!(
        row.contains("img/s") && row.contains("TFLOP/s") && row.contains("loss"),
        "{row}"
    );

    let out = run_patchwork([
        "bench",
        "train",
        "--models",
        "tiny4",
        "--batch",
        "2",
        "--vit-steps",
        "1",
        "--warmup",
        "0",
        "--precision",
        "bf16",
    ]);
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("bf16 autocast (patchwork, candle)"),
        "{}",
        out.stdout
    );

    let out = run_patchwork(["bench", "train", "--models", "tiny4", "--precision", "fp8"]);
    assert!(
        out.stderr.contains("unknown precision 'fp8'"),
        "{}",
        out.describe()
    );
    let out = run_patchwork(["bench", "train", "--models", "tiny4", "--device", "cuda:0"]);
    assert!(!out.success());
    assert!(out.stderr.contains("device 'cuda:0'"), "{}", out.describe());
}
