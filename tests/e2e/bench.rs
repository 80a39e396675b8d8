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
    let out = run_patchwork(["bench", "train", "--models", "tiny99"]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("unknown model 'tiny99'"),
        "{}",
        out.describe()
    );
}
