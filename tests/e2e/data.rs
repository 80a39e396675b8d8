//! Data sources through the binary: every procedural dataset has a shipped workspace
//! that `patchwork check` accepts and a preview grid; file formats (CIFAR binary,
//! multi-band safetensors) generated here open, train and report skipped records.

use std::collections::BTreeSet;
use std::path::Path;

use patchwork_tests::{plugin_lib, repo_root, run_patchwork, temp_dir};
use safetensors::{Dtype, tensor::TensorView};

use crate::{TINY_VIT, write_workspace};

/// The procedural datasets issue 3 asks a shipped workspace for.
const PROCEDURAL: [&str; 4] = ["Shapes", "Scenes", "Domains", "SarOptical"];

/// `(source name, kind)` of every `data 'name': Kind — …` line `check` prints.
fn checked_sources(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("data '")?;
            let (name, rest) = rest.split_once("': ")?;
            let kind = rest.split_whitespace().next()?;
            Some((name.to_owned(), kind.to_owned()))
        })
        .collect()
}

#[test]
fn every_procedural_dataset_has_a_checked_workspace_and_a_preview() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    let out_dir = temp_dir("previews");
    let mut kinds = BTreeSet::new();
    let mut workspaces: Vec<_> = std::fs::read_dir(repo_root().join("workspaces"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ron"))
        .collect();
    workspaces.sort();
    for ws in &workspaces {
        let out = run_patchwork(["check".to_string(), ws.display().to_string()]);
        assert!(out.success(), "{}:\n{}", ws.display(), out.describe());
        for (name, kind) in checked_sources(&out.stdout) {
            let png = out_dir.join(format!("{name}.png"));
            let args = [
                "data",
                "preview",
                &ws.display().to_string(),
                "--source",
                &name,
                "--out",
                &png.display().to_string(),
                "--rows",
                "3",
            ]
            .map(String::from);
            let out = run_patchwork(args);
            assert!(out.success(), "preview of '{name}':\n{}", out.describe());
            let bytes = std::fs::read(&png).unwrap();
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
                "{} is not a PNG",
                png.display()
            );
            // Width and height from the IHDR chunk: 1 raw + 2 global + 4 local columns.
            let width = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
            let height = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
            assert!(width > 2 * height, "{name}: {width}x{height}");
            kinds.insert(kind);
        }
    }
    for kind in PROCEDURAL {
        assert!(
            kinds.contains(kind),
            "no shipped workspace uses {kind}; found {kinds:?}"
        );
    }
}

#[allow(
    clippy::unwrap_used,
    reason = "test helper: a failed write should fail the test"
)]
/// CIFAR-10 binary files with `per_file` records each; record `i` of a file has label
/// `i % 10` and pixels derived from it. The test batch loses its last `cut` bytes.
fn write_cifar10(dir: &Path, per_file: usize, cut: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let names = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    for (f, name) in names.iter().enumerate() {
        let mut bytes = Vec::new();
        for i in 0..per_file {
            let label = (i % 10) as u8;
            bytes.push(label);
            bytes.extend((0..3072).map(|p| ((p * 7 + i * 13 + f * 31) % 256) as u8));
        }
        if *name == "test_batch.bin" {
            bytes.truncate(bytes.len() - cut);
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn cifar_workspace(output: &Path, on_corrupt: &str) -> String {
    let output = format!("{:?}", output.display().to_string());
    let vit = TINY_VIT
        .replace("img_size: 16", "img_size: 32")
        .replace("patch_size: 4", "patch_size: 8");
    format!(
        r#"Workspace(
    name: "files",
    output: {output},
    data: {{
        "cifar": Cifar((root: "cifar", on_corrupt: {on_corrupt})),
    }},
    sessions: [
        Session(
            name: "s",
            data: "cifar",
            backbone: {vit},
            stages: [
                Pretrain((task: Plugin(name: "dino", config: (out_dim: 32, hidden_dim: 32, bottleneck_dim: 16, local_crops: 0, global_size: 32)), epochs: 1, batch_size: 16,
                    optimizer: AdamW((lr: 1e-3, min_lr: 1e-5, warmup_epochs: 0, weight_decay: 0.04, weight_decay_end: 0.04, clip_grad: 3.0)))),
                Evaluate([Knn((k: 5, temperature: 0.07))]),
            ],
        ),
    ],
)
"#
    )
}

#[test]
fn cifar_files_train_and_a_truncated_record_fails_or_is_skipped_and_reported() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    let dir = temp_dir("cifar");
    write_cifar10(&dir.join("cifar"), 8, 100);

    // Fail (the default): the run stops and names the file.
    let file = write_workspace(&dir, &cifar_workspace(&dir.join("runs"), "Fail"));
    let out = run_patchwork(["run".to_string(), file.display().to_string()]);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("data source 'cifar'") && out.stderr.contains("test_batch.bin"),
        "{}",
        out.describe()
    );

    // Skip: the partial record is left out, counted, and named in the report.
    let file = write_workspace(&dir, &cifar_workspace(&dir.join("runs"), "Skip"));
    let check = run_patchwork(["check".to_string(), file.display().to_string()]);
    assert!(check.success(), "{}", check.describe());
    assert!(
        check
            .stdout
            .contains("40 train / 7 val images, 10 classes, 32 px, 3 channels"),
        "{}",
        check.describe()
    );
    let out = run_patchwork(["run".to_string(), file.display().to_string()]);
    assert!(out.success(), "{}", out.describe());
    let report =
        std::fs::read_to_string(dir.join("runs").join("files").join("s").join("report.md"))
            .unwrap();
    assert!(
        report.contains("- skipped: 1 corrupt item skipped (test_batch.bin"),
        "{report}"
    );
    assert!(report.contains("40 train / 7 val images"), "{report}");
}

#[test]
fn multi_band_safetensors_opens_with_computed_per_band_statistics() {
    plugin_lib("patchwork-vit");
    let dir = temp_dir("bands");
    let (n, c, side) = (10usize, 14usize, 8usize);
    // Band b of every image is centred on b / 20 with a small per-image offset.
    let values: Vec<u8> = (0..n)
        .flat_map(|i| {
            (0..c).flat_map(move |b| {
                (0..side * side).map(move |p| b as f32 / 20.0 + ((i + p) % 3) as f32 * 0.01)
            })
        })
        .flat_map(f32::to_le_bytes)
        .collect();
    let labels: Vec<u8> = (0..n as i64).flat_map(|i| (i % 2).to_le_bytes()).collect();
    let tensors = [
        (
            "images",
            TensorView::new(Dtype::F32, vec![n, c, side, side], &values).unwrap(),
        ),
        (
            "labels",
            TensorView::new(Dtype::I64, vec![n], &labels).unwrap(),
        ),
    ];
    safetensors::serialize_to_file(tensors, None, &dir.join("bands.safetensors")).unwrap();
    let text = r#"Workspace(
    name: "bands",
    output: "runs",
    data: { "bands": Arrays((path: "bands.safetensors", val_fraction: 0.2, seed: 1)) },
    sessions: [Session(name: "s", data: "bands", stages: [Evaluate([Knn((k: 3, temperature: 0.07))])],
        backbone: Plugin(name: "vit", config: (preset: "tiny", embed_dim: Some(32), depth: Some(1), num_heads: Some(2), patch_size: 4, img_size: 8, in_chans: 14)))],
)"#;
    let file = write_workspace(&dir, text);
    let out = run_patchwork(["check".to_string(), file.display().to_string()]);
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout.contains(
            "data 'bands': Arrays — 8 train / 2 val images, 2 classes, 8 px, 14 channels"
        ),
        "{}",
        out.describe()
    );

    // Normalisation: the statistics are computed per band and cached in the run folder.
    let ws = patchwork::workspace::schema::load(&file).unwrap();
    let data = patchwork::session::runner::open_source(&ws, "bands", &file).unwrap();
    assert_eq!((data.channels, data.stats.mean.len()), (14, 14));
    for (b, m) in data.stats.mean.iter().enumerate() {
        assert!((m - (b as f32 / 20.0 + 0.01)).abs() < 2e-3, "band {b}: {m}");
    }
    assert!(dir.join("runs/bands/.cache/stats-bands.json").is_file());

    // ImageNet statistics are refused for 14 bands, naming the source.
    let imagenet = text.replace("seed: 1)", "seed: 1, normalize: Imagenet)");
    let file = write_workspace(&dir, &imagenet);
    let ws = patchwork::workspace::schema::load(&file).unwrap();
    let err = patchwork::session::runner::open_source(&ws, "bands", &file)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("data source 'bands'") && err.contains("14-channel"),
        "{err}"
    );
}

#[allow(
    clippy::unwrap_used,
    reason = "test helper: a failed write should fail the test"
)]
/// `root/<class>/<n>.png|jpg`: class `k` is a solid colour with a stripe, per class
/// `per_class` images alternating PNG and JPEG.
fn write_image_folder(root: &Path, classes: &[&str], per_class: usize) {
    for (k, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let img = image::RgbImage::from_fn(20, 20, |x, y| {
                let stripe = (x + y + i as u32).is_multiple_of(5);
                let base = [(k * 120 % 256) as u8, (k * 70 % 256) as u8, 90];
                image::Rgb(if stripe { [255, 255, 255] } else { base })
            });
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            img.save(dir.join(format!("{i}.{ext}"))).unwrap();
        }
    }
}

#[test]
fn image_folder_trains_skips_a_corrupt_file_and_caches_its_index() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    let dir = temp_dir("folder");
    let root = dir.join("imgs");
    write_image_folder(&root, &["circle", "square"], 10);
    // A truncated PNG in one class.
    let good = std::fs::read(root.join("circle").join("0.png")).unwrap();
    std::fs::write(
        root.join("circle").join("broken.png"),
        &good[..good.len() / 2],
    )
    .unwrap();

    let output = format!("{:?}", dir.join("runs").display().to_string());
    let text = format!(
        r#"Workspace(
    name: "folder",
    output: {output},
    data: {{ "imgs": ImageFolder((root: "imgs", size: 16, val_fraction: 0.2, seed: 3, on_corrupt: ON_CORRUPT)) }},
    sessions: [Session(name: "s", data: "imgs", backbone: {TINY_VIT}, stages: [
        Pretrain((task: Plugin(name: "dino", config: (out_dim: 32, hidden_dim: 32, bottleneck_dim: 16, local_crops: 0, global_size: 16)), epochs: 1, batch_size: 8,
            optimizer: AdamW((lr: 1e-3, min_lr: 1e-5, warmup_epochs: 0, weight_decay: 0.04, weight_decay_end: 0.04, clip_grad: 3.0)))),
        Evaluate([Knn((k: 3, temperature: 0.07))]),
    ])],
)"#
    );

    // Fail (the default policy): the run stops naming the broken file.
    let file = write_workspace(&dir, &text.replace("ON_CORRUPT", "Fail"));
    let out = run_patchwork(["run".to_string(), file.display().to_string()]);
    assert!(!out.success(), "{}", out.describe());
    assert!(out.stderr.contains("broken.png"), "{}", out.describe());

    // Skip: left out, counted, and named in the check summary and the report.
    let file = write_workspace(&dir, &text.replace("ON_CORRUPT", "Skip"));
    let check = run_patchwork(["check".to_string(), file.display().to_string()]);
    assert!(check.success(), "{}", check.describe());
    assert!(
        check.stdout.contains(
            "ImageFolder — 16 train / 4 val images, 2 classes, 16 px, 3 channels, 1 corrupt item skipped (circle/broken.png)"
        ),
        "{}",
        check.describe()
    );
    let out = run_patchwork(["run".to_string(), file.display().to_string()]);
    assert!(out.success(), "{}", out.describe());
    let report = std::fs::read_to_string(dir.join("runs/folder/s/report.md")).unwrap();
    assert!(
        report.contains("- skipped: 1 corrupt item skipped (circle/broken.png)"),
        "{report}"
    );
    let cache: Vec<_> = std::fs::read_dir(dir.join("runs/folder/.cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        cache.iter().any(|n| n.starts_with("image-index-")),
        "{cache:?}"
    );
}
