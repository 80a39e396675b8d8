//! Hot reload in a headless run: the `counter` fixture is replaced mid-run by broken
//! builds (each refused, the running build kept) and then by its second version,
//! which takes over at a step boundary with the kept parameters unchanged.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use patchwork_tests::{dylib_name, patchwork, plugin_lib, repo_root, run, temp_dir};

use crate::{TINY_VIT, write_workspace};

/// Builds the counter fixture with `features` into a target folder of its own and
/// returns a copy of the library (cargo overwrites it with the next feature set).
fn counter_build(features: &str, copy_to: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let dir = crate::scaffold::shared_target();
    let out = run(Command::new(cargo)
        .current_dir(repo_root())
        .args([
            "build",
            "--quiet",
            "-p",
            "patchwork-fixture-counter",
            "--features",
            features,
        ])
        .arg("--target-dir")
        .arg(&dir));
    assert!(
        out.success(),
        "building counter --features {features}\n{}",
        out.describe()
    );
    let lib = dir
        .join("debug")
        .join(dylib_name("patchwork-fixture-counter"));
    std::fs::copy(&lib, copy_to).expect("the built library should copy");
    copy_to.to_path_buf()
}

/// Replaces `target` with `source` the way a build does it: written under another
/// name in the same folder, then renamed over the old file.
fn replace(source: &Path, target: &Path) {
    let part = target.with_extension("part");
    std::fs::copy(source, &part).expect("the new library should copy");
    std::fs::rename(&part, target).expect("the new library should rename into place");
}

/// The `metrics.jsonl` records so far.
fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits (polling the file) until `done` holds for the records, failing after a minute.
fn wait_records(
    path: &Path,
    child: &mut Child,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let recs = records(path);
        if done(&recs) {
            return recs;
        }
        let exited = child.try_wait().expect("the run should be waitable");
        assert!(
            exited.is_none() && start.elapsed() < Duration::from_secs(60),
            "gave up waiting for {what} (exited: {exited:?}); {} records",
            recs.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn events<'a>(recs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    recs.iter().filter(|r| r["event"] == kind).collect()
}

#[test]
fn a_new_build_takes_over_mid_run_and_broken_builds_are_refused() {
    plugin_lib("patchwork-vit");
    let v1 = plugin_lib("patchwork-fixture-counter");
    let dir = temp_dir("reload");
    let builds = dir.join("builds");
    std::fs::create_dir_all(&builds).unwrap();
    let v2 = counter_build("v2", &builds.join("v2.lib"));
    let panics = counter_build("panic_in_create", &builds.join("panics.lib"));
    let not_a_plugin = plugin_lib("patchwork-fixture-not-a-plugin");
    let abi_mismatch = plugin_lib("patchwork-fixture-abi-mismatch");

    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let live = plugins.join(dylib_name("counter"));
    std::fs::copy(&v1, &live).unwrap();
    let output = dir.join("runs");
    let text = format!(
        r#"Workspace(
    name: "e2e",
    output: {output:?},
    plugin_dirs: [{plugins:?}],
    data: {{ "shapes": Shapes((classes: 3, images: 64, val_images: 32, size: 16, seed: 1)) }},
    sessions: [
        Session(name: "s", data: "shapes", backbone: {TINY_VIT}, seed: 0, device: "cpu",
            stages: [Pretrain((task: Plugin(name: "counter"), epochs: 1000, batch_size: 16))]),
    ],
)
"#,
        output = output.display().to_string(),
        plugins = plugins.display().to_string(),
    );
    let ws = write_workspace(&dir, &text);
    let max_steps = 600;
    let mut child = patchwork()
        .args([
            "run",
            &ws.display().to_string(),
            "--max-steps",
            &max_steps.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("patchwork should start");
    let metrics = output.join("e2e").join("s").join("metrics.jsonl");
    wait_records(&metrics, &mut child, "ten steps", |r| r.len() >= 10);

    // Three broken builds, one after the other: each is refused, v1 keeps running.
    for (n, broken) in [&not_a_plugin, &panics, &abi_mismatch]
        .into_iter()
        .enumerate()
    {
        replace(broken, &live);
        wait_records(&metrics, &mut child, "a refused build", |r| {
            events(r, "reload_failed").len() > n
        });
    }
    replace(&v2, &live);
    let recs = wait_records(&metrics, &mut child, "the swap", |r| {
        !events(r, "reload").is_empty()
    });
    let swap = events(&recs, "reload")[0].clone();
    let out = child.wait_with_output().expect("the run should finish");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");

    let recs = records(&metrics);
    let failed = events(&recs, "reload_failed");
    assert_eq!(failed.len(), 3, "{failed:?}");
    let errors: Vec<String> = failed.iter().map(|f| f["error"].to_string()).collect();
    assert!(errors[1].contains("panics in create"), "{errors:?}");
    // The step count is continuous across the refusals and the swap.
    let steps: Vec<u64> = recs
        .iter()
        .filter(|r| r.get("event").is_none())
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=max_steps).collect::<Vec<_>>());
    // The kept parameters are bit-identical across the swap; v2's new one is added.
    assert_eq!(
        swap["kept_checksum_before"], swap["kept_checksum_after"],
        "{swap}"
    );
    assert!(swap["kept"].as_u64().unwrap() > 10, "{swap}");
    assert_eq!(
        swap["added"],
        serde_json::json!(["extra.bias", "extra.weight"]),
        "{swap}"
    );
    assert_eq!(swap["dropped"], serde_json::json!([]), "{swap}");
    eprintln!("swap latency: {} ms", swap["latency_ms"]);
    // v1 until the swap, v2 after it.
    let at = swap["step"].as_u64().unwrap();
    for r in recs.iter().filter(|r| r.get("event").is_none()) {
        let step = r["step"].as_u64().unwrap();
        let expected = if step <= at { 1.0 } else { 2.0 };
        assert_eq!(
            r["build"].as_f64(),
            Some(expected),
            "step {step} (swap at {at})"
        );
    }
    assert!(at < max_steps, "the swap happened before the end");
    let report = std::fs::read_to_string(output.join("e2e/s/report.md")).unwrap();
    assert!(report.contains("## Hot reloads"), "{report}");
    let manifest = std::fs::read_to_string(output.join("e2e/s/manifest.json")).unwrap();
    assert!(manifest.contains("\"hot_reloads\": [\n    {"), "{manifest}");
    assert!(stdout.contains("hot reload: step"), "{stdout}");
}
