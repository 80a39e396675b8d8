//! `report.md`: what a run did and what it measured.

use std::fmt::Write;

use super::evaluate::History;

/// A score as the report prints it: fractions as percentages, losses and values
/// outside `[0, 1]` as numbers.
pub fn score_text(name: &str, value: f64) -> String {
    if name.contains("loss") || !(0.0..=1.0).contains(&value) {
        format!("{value:.4}")
    } else {
        format!("{:.2} %", 100.0 * value)
    }
}

/// The table of evaluations during pre-training: a row per evaluated epoch (0 is the
/// random init) and the end, a column per score; empty when no epoch after the
/// random init was evaluated.
fn during_table(h: &History) -> String {
    if !h.by_epoch.keys().any(|&e| e > 0) {
        return String::new();
    }
    let mut names: Vec<&str> = Vec::new();
    let rows = h.by_epoch.iter().map(|(e, v)| {
        let label = if *e == 0 {
            "0 (random init)".to_string()
        } else {
            e.to_string()
        };
        (label, v)
    });
    let rows: Vec<(String, &Vec<(String, f64)>)> = rows
        .chain((!h.end.is_empty()).then(|| ("end".to_string(), &h.end)))
        .collect();
    for (_, scores) in &rows {
        for (n, _) in scores.iter() {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
    }
    let mut s = String::from("\n## Evaluations during pre-training\n\n| epoch |");
    for n in &names {
        let _ = write!(s, " {n} |");
    }
    let _ = writeln!(s, "\n|---|{}", "---|".repeat(names.len()));
    for (label, scores) in rows {
        let _ = write!(s, "| {label} |");
        for n in &names {
            match scores.iter().find(|(m, _)| m == n) {
                Some((_, v)) => {
                    let _ = write!(s, " {} |", score_text(n, *v));
                }
                None => s.push_str(" |"),
            }
        }
        s.push('\n');
    }
    s
}

/// The facts a report shows.
#[derive(Debug, Default, Clone)]
pub struct ReportData {
    /// Workspace name.
    pub workspace: String,
    /// Session name.
    pub session: String,
    /// Backbone plugin and config.
    pub backbone: String,
    /// Pretext plugin, if any.
    pub task: Option<String>,
    /// The data source: name, kind and shape.
    pub data: String,
    /// Corrupt files or records skipped (`on_corrupt: Skip`), e.g.
    /// `"2 corrupt items skipped (a.png, b.png)"`; `None` when none were.
    pub skipped: Option<String>,
    /// Mean loss of each epoch.
    pub epoch_losses: Vec<f64>,
    /// Per-epoch means of the task's metrics (the last epochs, when resumed).
    pub epoch_metrics: Vec<std::collections::BTreeMap<String, f64>>,
    /// Steps run.
    pub steps: u64,
    /// Training throughput.
    pub images_per_sec: f64,
    /// k-NN accuracy at random init and after training, with (k, T).
    pub knn: Option<KnnResult>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Hot reloads, one line each (step, plugin, versions, parameters kept/new/dropped).
    pub reloads: Vec<String>,
    /// The `Adapt` stages run, in order.
    pub adaptations: Vec<AdaptResult>,
    /// Probe evaluations (`Linear`, `MultiLabel`, `Dense`): name and score in `[0, 1]`.
    pub evals: Vec<(String, f64)>,
    /// Every evaluation the run recorded (random init, every `eval_every` epochs, the
    /// end) and its attention figures, from `metrics.jsonl`.
    pub history: History,
}

/// One `Adapt` stage: its training loss and its evaluation on the validation split.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptResult {
    /// Adaptation plugin and config.
    pub method: String,
    /// Mean loss of each epoch run in this process.
    pub epoch_losses: Vec<f64>,
    /// The method's metrics, means over the validation images.
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// Validation images evaluated.
    pub images: usize,
}

/// k-NN accuracies of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnnResult {
    /// Neighbours.
    pub k: usize,
    /// Vote temperature.
    pub temperature: f64,
    /// The backbone at random initialisation.
    pub random_init: Option<f64>,
    /// The trained backbone.
    pub trained: f64,
}

/// Renders the report as Markdown.
pub fn render(d: &ReportData) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {} / {}\n", d.workspace, d.session);
    let _ = writeln!(s, "- backbone: {}", d.backbone);
    if let Some(t) = &d.task {
        let _ = writeln!(s, "- pretext task: {t}");
    }
    if !d.data.is_empty() {
        let _ = writeln!(s, "- data: {}", d.data);
    }
    if let Some(skipped) = &d.skipped {
        let _ = writeln!(s, "- skipped: {skipped}");
    }
    let _ = writeln!(
        s,
        "- steps: {}, wall time {:.0} s, {:.1} images/s\n",
        d.steps, d.seconds, d.images_per_sec
    );
    if !d.epoch_losses.is_empty() {
        // Metric columns: the task's metrics, aligned to the last epochs.
        let names: Vec<&String> = d
            .epoch_metrics
            .last()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        let offset = d.epoch_losses.len().saturating_sub(d.epoch_metrics.len());
        let _ = write!(s, "## Loss\n\n| epoch | mean loss |");
        for n in &names {
            let _ = write!(s, " {n} |");
        }
        let _ = writeln!(s, "\n|---|---|{}", "---|".repeat(names.len()));
        for (i, l) in d.epoch_losses.iter().enumerate() {
            let _ = write!(s, "| {i} | {l:.4} |");
            let row = i.checked_sub(offset).and_then(|j| d.epoch_metrics.get(j));
            for n in &names {
                match row.and_then(|m| m.get(*n)) {
                    Some(v) => {
                        let _ = write!(s, " {v:.4} |");
                    }
                    None => s.push_str(" |"),
                }
            }
            s.push('\n');
        }
        if let (Some(first), Some(last)) = (d.epoch_losses.first(), d.epoch_losses.last()) {
            let verdict = if last < first {
                "falling"
            } else {
                "NOT falling"
            };
            let _ = writeln!(
                s,
                "\nLoss {verdict}: {first:.4} (first epoch) → {last:.4} (last epoch).\n"
            );
        }
    }
    if let Some(k) = &d.knn {
        let _ = writeln!(
            s,
            "## k-NN (k = {}, T = {}, cosine, weighted votes)\n",
            k.k, k.temperature
        );
        let _ = writeln!(s, "| backbone | top-1 accuracy |\n|---|---|");
        if let Some(r) = k.random_init {
            let _ = writeln!(s, "| random init | {:.2} % |", 100.0 * r);
        }
        let _ = writeln!(s, "| trained | {:.2} % |", 100.0 * k.trained);
        if let Some(r) = k.random_init {
            let _ = writeln!(
                s,
                "\nMargin: {:+.2} percentage points over the random-init backbone.",
                100.0 * (k.trained - r)
            );
        }
    }
    if !d.evals.is_empty() {
        let _ = writeln!(
            s,
            "\n## Probes (frozen backbone, validation split)\n\n| evaluation | score |\n|---|---|"
        );
        for (name, value) in &d.evals {
            let _ = writeln!(s, "| {name} | {:.2} % |", 100.0 * value);
        }
    }
    for a in &d.adaptations {
        let _ = writeln!(s, "\n## Adaptation: {}\n", a.method);
        if let (Some(first), Some(last)) = (a.epoch_losses.first(), a.epoch_losses.last()) {
            let _ = writeln!(
                s,
                "Training loss {first:.4} (first epoch) → {last:.4} (last epoch), {} epochs.\n",
                a.epoch_losses.len()
            );
        }
        let _ = writeln!(
            s,
            "| metric ({} validation images) | value |\n|---|---|",
            a.images
        );
        for (name, value) in &a.metrics {
            let _ = writeln!(s, "| {name} | {value:.4} |");
        }
    }
    s.push_str(&during_table(&d.history));
    if !d.history.figures.is_empty() {
        let _ = writeln!(
            s,
            "\n## Attention maps\n\nLast block, CLS attention per head (one column each, after the image), validation images.\n"
        );
        for (at, path) in &d.history.figures {
            let _ = writeln!(s, "- {at}: ![{at}]({path})");
        }
    }
    if !d.reloads.is_empty() {
        let _ = writeln!(s, "\n## Hot reloads\n");
        for line in &d.reloads {
            let _ = writeln!(s, "- {line}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_states_margin_and_trend() {
        let d = ReportData {
            epoch_losses: vec![5.0, 4.0],
            knn: Some(KnnResult {
                k: 20,
                temperature: 0.07,
                random_init: Some(0.3),
                trained: 0.55,
            }),
            ..Default::default()
        };
        let text = render(&d);
        assert!(text.contains("Loss falling"), "{text}");
        assert!(text.contains("+25.00 percentage points"), "{text}");
    }

    #[test]
    fn report_names_the_data_and_the_skipped_files() {
        let d = ReportData {
            data: "'imgs': 10 train / 2 val images".into(),
            skipped: Some("1 corrupt item skipped (cat/bad.png)".into()),
            ..ReportData::default()
        };
        let text = render(&d);
        assert!(text.contains("- data: 'imgs': 10 train"), "{text}");
        assert!(
            text.contains("- skipped: 1 corrupt item skipped (cat/bad.png)"),
            "{text}"
        );
        assert!(!render(&ReportData::default()).contains("skipped"));
    }

    #[test]
    fn adaptations_show_their_loss_and_validation_metrics() {
        let d = ReportData {
            adaptations: vec![AdaptResult {
                method: "linear-probe ()".into(),
                epoch_losses: vec![1.5, 0.75],
                metrics: [("accuracy".to_string(), 0.8125)].into_iter().collect(),
                images: 64,
            }],
            ..Default::default()
        };
        let text = render(&d);
        assert!(text.contains("## Adaptation: linear-probe ()"), "{text}");
        assert!(text.contains("1.5000 (first epoch) → 0.7500"), "{text}");
        assert!(
            text.contains("| metric (64 validation images) | value |"),
            "{text}"
        );
        assert!(text.contains("| accuracy | 0.8125 |"), "{text}");
    }

    #[test]
    fn evaluations_during_training_get_a_table_and_figures_a_list() {
        let mut history = History::default();
        assert!(!render(&ReportData::default()).contains("during pre-training"));
        history
            .by_epoch
            .insert(0, vec![("knn@20".to_string(), 0.3)]);
        assert!(
            during_table(&history).is_empty(),
            "random init alone makes no table"
        );
        history.by_epoch.insert(
            4,
            vec![
                ("knn@20".to_string(), 0.4),
                ("dense mIoU".to_string(), 0.125),
            ],
        );
        history.end = vec![("knn@20".to_string(), 0.5), ("probe loss".into(), 1.5)];
        history.figures = vec![("end".into(), "attention/end.png".into())];
        let text = render(&ReportData {
            history,
            ..Default::default()
        });
        assert!(
            text.contains("| epoch | knn@20 | dense mIoU | probe loss |"),
            "{text}"
        );
        assert!(text.contains("| 0 (random init) | 30.00 % | | |"), "{text}");
        assert!(text.contains("| 4 | 40.00 % | 12.50 % | |"), "{text}");
        assert!(text.contains("| end | 50.00 % | | 1.5000 |"), "{text}");
        assert!(text.contains("- end: ![end](attention/end.png)"), "{text}");
    }

    #[test]
    fn metric_columns_align_with_the_last_epochs() {
        let m = |v: f64| [("kl".to_string(), v)].into_iter().collect();
        let d = ReportData {
            epoch_losses: vec![3.0, 3.5, 4.0],
            epoch_metrics: vec![m(0.5), m(0.2)],
            ..Default::default()
        };
        let text = render(&d);
        assert!(text.contains("| epoch | mean loss | kl |"), "{text}");
        assert!(text.contains("| 0 | 3.0000 | |"), "{text}");
        assert!(text.contains("| 2 | 4.0000 | 0.2000 |"), "{text}");
        assert!(text.contains("Loss NOT falling"), "{text}");
    }
}
