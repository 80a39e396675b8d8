//! `patchwork report RUN_DIR` and `patchwork diff RUN_A RUN_B`: a run folder's
//! manifest and final metrics as text, and two run folders compared.

use std::{
    collections::BTreeMap,
    fmt::Write,
    path::{Path, PathBuf},
};

use super::manifest::{Manifest, ManifestError, provenance_differences};

/// The final numbers of a run, read from `metrics.jsonl` and `report.md`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunMetrics {
    /// The last step logged.
    pub steps: Option<u64>,
    /// The last epoch logged (as numbered in `metrics.jsonl`).
    pub last_epoch: Option<u64>,
    /// The loss of the last step.
    pub final_loss: Option<f64>,
    /// Mean loss over the steps of the last epoch.
    pub last_epoch_loss: Option<f64>,
    /// The k-NN section of `report.md`, one line per fact.
    pub knn_lines: Vec<String>,
    /// k-NN top-1 accuracy of the trained backbone, in percent.
    pub knn_trained: Option<f64>,
    /// k-NN top-1 accuracy at random init, in percent.
    pub knn_random: Option<f64>,
}

/// A run folder: its manifest and its metrics.
#[derive(Debug, Clone)]
pub struct Run {
    /// The folder.
    pub dir: PathBuf,
    /// `manifest.json`.
    pub manifest: Manifest,
    /// What it measured.
    pub metrics: RunMetrics,
}

impl Run {
    /// Reads the run folder `dir`; fails when it has no `manifest.json`.
    pub fn open(dir: &Path) -> Result<Self, ManifestError> {
        let manifest = Manifest::load(dir)?;
        let mut metrics = std::fs::read_to_string(dir.join("metrics.jsonl"))
            .map(|text| parse_metrics(&text))
            .unwrap_or_default();
        if let Ok(report) = std::fs::read_to_string(dir.join("report.md")) {
            parse_knn(&report, &mut metrics);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            metrics,
        })
    }
}

/// Steps, epochs and losses from `metrics.jsonl` text; a step logged twice (a resume
/// from an earlier checkpoint) counts once, with its last value.
pub fn parse_metrics(text: &str) -> RunMetrics {
    let mut steps: BTreeMap<u64, (u64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if record.get("event").is_some() {
            // Evaluations and reloads: their `loss` is not a training step's.
            continue;
        }
        let field = |k: &str| record.get(k).and_then(serde_json::Value::as_f64);
        if let (Some(step), Some(loss)) =
            (record.get("step").and_then(|v| v.as_u64()), field("loss"))
        {
            let epoch = record.get("epoch").and_then(|v| v.as_u64()).unwrap_or(0);
            steps.insert(step, (epoch, loss));
        }
    }
    let last = steps.iter().next_back();
    let last_epoch = last.map(|(_, (epoch, _))| *epoch);
    let epoch_losses: Vec<f64> = steps
        .values()
        .filter(|(epoch, _)| Some(*epoch) == last_epoch)
        .map(|(_, loss)| *loss)
        .collect();
    RunMetrics {
        steps: last.map(|(step, _)| *step),
        last_epoch,
        final_loss: last.map(|(_, (_, loss))| *loss),
        last_epoch_loss: (!epoch_losses.is_empty())
            .then(|| epoch_losses.iter().sum::<f64>() / epoch_losses.len() as f64),
        ..RunMetrics::default()
    }
}

/// Fills the k-NN fields of `metrics` from `report.md` text.
fn parse_knn(report: &str, metrics: &mut RunMetrics) {
    let percent = |cell: &str| cell.trim().trim_end_matches('%').trim().parse::<f64>().ok();
    for line in report.lines() {
        if let Some(head) = line.strip_prefix("## k-NN") {
            metrics.knn_lines.push(format!("k-NN{head}"));
        } else if let Some(row) = line.strip_prefix("| random init |") {
            metrics.knn_random = percent(row.trim_end_matches('|'));
            metrics
                .knn_lines
                .push(format!("random init: {}", row.trim_end_matches('|').trim()));
        } else if let Some(row) = line.strip_prefix("| trained |") {
            metrics.knn_trained = percent(row.trim_end_matches('|'));
            metrics
                .knn_lines
                .push(format!("trained: {}", row.trim_end_matches('|').trim()));
        } else if line.starts_with("Margin:") {
            metrics.knn_lines.push(line.to_string());
        }
    }
}

/// `patchwork report`: the manifest of the run folder `dir`, readable, with its
/// final metrics.
pub fn report(dir: &Path) -> Result<String, ManifestError> {
    Ok(render_report(&Run::open(dir)?))
}

/// Renders a run as the text `patchwork report` prints.
pub fn render_report(run: &Run) -> String {
    let m = &run.manifest;
    let mut s = String::new();
    let _ = writeln!(s, "run {}", run.dir.display());
    let _ = writeln!(
        s,
        "  workspace '{}', session '{}' (from {})",
        m.workspace,
        m.session,
        m.workspace_file.display()
    );
    let _ = writeln!(
        s,
        "  outcome: {} at step {} (started {}, finished {})",
        outcome(m),
        opt(m.final_step),
        m.started_at,
        m.finished_at.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        s,
        "host: patchwork {} ({}, features: {}, {})",
        m.host.version,
        m.host.profile,
        if m.host.features.is_empty() {
            "none".to_string()
        } else {
            m.host.features.join(", ")
        },
        m.host.target
    );
    let _ = writeln!(
        s,
        "device: {}, threads: {} available, {} for candle",
        m.device, m.threads.available, m.threads.candle
    );
    let seeds: Vec<String> = m.seeds.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(s, "seeds: {}", seeds.join(", "));
    let _ = writeln!(s, "plugins:");
    for p in &m.plugins {
        let _ = writeln!(
            s,
            "  {:<10} {:<13} {:<8} api {:<8} sha256 {}  {}",
            p.name,
            p.kind,
            p.version,
            p.api_version,
            p.library_hash.as_deref().unwrap_or("-"),
            p.path.display()
        );
    }
    let d = &m.dataset;
    let _ = writeln!(
        s,
        "dataset '{}' ({}): {} train / {} val, {} classes, {} px, {} channels, fingerprint {}",
        d.name, d.kind, d.train, d.val, d.classes, d.size, d.channels, d.fingerprint
    );
    let _ = writeln!(s, "  config: {}", d.config);
    let _ = writeln!(s, "  normalisation: mean {:?}, std {:?}", d.mean, d.std);
    if m.resumes.is_empty() {
        let _ = writeln!(s, "resumes: none");
    } else {
        let _ = writeln!(s, "resumes:");
        for r in &m.resumes {
            let changes = if r.changes.is_empty() {
                "no provenance changes".to_string()
            } else {
                r.changes.join("; ")
            };
            let _ = writeln!(s, "  step {} at {} ({changes})", r.step, r.at);
        }
    }
    if m.hot_reloads.is_empty() {
        let _ = writeln!(s, "hot reloads: none");
    } else {
        let _ = writeln!(s, "hot reloads:");
        for h in &m.hot_reloads {
            let _ = writeln!(
                s,
                "  '{}' at step {} ({}), sha256 {}",
                h.plugin,
                h.step,
                h.at,
                h.library_hash.as_deref().unwrap_or("-")
            );
        }
    }
    let _ = writeln!(s, "config:");
    for line in m.config.lines() {
        let _ = writeln!(s, "  {line}");
    }
    let x = &run.metrics;
    let _ = writeln!(s, "metrics:");
    let _ = writeln!(s, "  steps: {}", opt(x.steps));
    let _ = writeln!(s, "  final loss: {}", loss(x.final_loss));
    let _ = writeln!(
        s,
        "  mean loss of the last epoch ({}): {}",
        opt(x.last_epoch),
        loss(x.last_epoch_loss)
    );
    for line in &x.knn_lines {
        let _ = writeln!(s, "  {line}");
    }
    s
}

/// `patchwork diff`: how the run folders `a` and `b` differ in config and provenance,
/// and their metrics side by side.
pub fn diff(a: &Path, b: &Path) -> Result<String, ManifestError> {
    Ok(render_diff(&Run::open(a)?, &Run::open(b)?))
}

/// Renders two runs as the text `patchwork diff` prints.
pub fn render_diff(a: &Run, b: &Run) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "A: {}\nB: {}", a.dir.display(), b.dir.display());
    let config = line_diff(&a.manifest.config, &b.manifest.config);
    let _ = writeln!(s, "config (- A, + B):");
    if config.is_empty() {
        let _ = writeln!(s, "  same");
    }
    for line in config {
        let _ = writeln!(s, "  {line}");
    }
    let provenance = provenance_differences(&a.manifest, &b.manifest);
    let _ = writeln!(s, "provenance (A → B):");
    if provenance.is_empty() {
        let _ = writeln!(s, "  same");
    }
    for (key, va, vb) in provenance {
        let _ = writeln!(s, "  {key}: {va} → {vb}");
    }
    let (ma, mb) = (&a.metrics, &b.metrics);
    let pct = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2} %"));
    let rows = [
        ("outcome", outcome(&a.manifest), outcome(&b.manifest)),
        ("steps", opt(ma.steps), opt(mb.steps)),
        ("last epoch", opt(ma.last_epoch), opt(mb.last_epoch)),
        ("final loss", loss(ma.final_loss), loss(mb.final_loss)),
        (
            "last-epoch loss",
            loss(ma.last_epoch_loss),
            loss(mb.last_epoch_loss),
        ),
        ("k-NN trained", pct(ma.knn_trained), pct(mb.knn_trained)),
        ("k-NN random init", pct(ma.knn_random), pct(mb.knn_random)),
        (
            "resumes",
            a.manifest.resumes.len().to_string(),
            b.manifest.resumes.len().to_string(),
        ),
        (
            "hot reloads",
            a.manifest.hot_reloads.len().to_string(),
            b.manifest.hot_reloads.len().to_string(),
        ),
    ];
    let _ = writeln!(s, "metrics:\n  {:<18} {:>12} {:>12}", "", "A", "B");
    for (name, va, vb) in rows {
        let mark = if va == vb { "" } else { "  *" };
        let _ = writeln!(s, "  {name:<18} {va:>12} {vb:>12}{mark}");
    }
    s
}

/// The lines of `a` missing from `b` (`- `) and of `b` missing from `a` (`+ `), in
/// order, by longest common subsequence.
pub fn line_diff(a: &str, b: &str) -> Vec<String> {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out
}

fn outcome(m: &Manifest) -> String {
    serde_json::to_value(m.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{:?}", m.outcome))
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn loss(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_take_the_last_value_of_a_repeated_step() {
        let text = r#"{"step":1,"epoch":0,"loss":4.0}
{"step":2,"epoch":0,"loss":3.0}
{"step":3,"epoch":1,"loss":2.0}
{"step":3,"epoch":1,"loss":1.0}
not json
{"step":4,"epoch":1,"loss":3.0}
"#;
        let m = parse_metrics(text);
        assert_eq!((m.steps, m.last_epoch), (Some(4), Some(1)));
        assert_eq!(m.final_loss, Some(3.0));
        assert_eq!(m.last_epoch_loss, Some(2.0));
        assert_eq!(parse_metrics(""), RunMetrics::default());
    }

    #[test]
    fn knn_comes_from_the_report() {
        let report = "# w / s\n\n## k-NN (k = 5, T = 0.07, cosine, weighted votes)\n\n| backbone | top-1 accuracy |\n|---|---|\n| random init | 34.60 % |\n| trained | 42.40 % |\n\nMargin: +7.80 percentage points over the random-init backbone.\n";
        let mut m = RunMetrics::default();
        parse_knn(report, &mut m);
        assert_eq!((m.knn_random, m.knn_trained), (Some(34.6), Some(42.4)));
        assert_eq!(
            m.knn_lines,
            [
                "k-NN (k = 5, T = 0.07, cosine, weighted votes)",
                "random init: 34.60 %",
                "trained: 42.40 %",
                "Margin: +7.80 percentage points over the random-init backbone."
            ]
        );
    }

    #[test]
    fn line_diff_shows_replaced_added_and_removed_lines() {
        let a = "Session(\n    seed: 0,\n    device: \"cpu\",\n    gone: 1,\n)";
        let b = "Session(\n    seed: 1,\n    device: \"cpu\",\n    new: 2,\n)";
        assert_eq!(
            line_diff(a, b),
            [
                "-     seed: 0,",
                "+     seed: 1,",
                "-     gone: 1,",
                "+     new: 2,"
            ]
        );
        assert!(line_diff(a, a).is_empty());
        assert_eq!(line_diff("", "x"), ["+ x"]);
    }
}
