//! `report.md`: what a run did and what it measured.

use std::fmt::Write;

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
    /// Mean loss of each epoch.
    pub epoch_losses: Vec<f64>,
    /// Steps run.
    pub steps: u64,
    /// Training throughput.
    pub images_per_sec: f64,
    /// k-NN accuracy at random init and after training, with (k, T).
    pub knn: Option<KnnResult>,
    /// Wall time in seconds.
    pub seconds: f64,
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
    let _ = writeln!(
        s,
        "- steps: {}, wall time {:.0} s, {:.1} images/s\n",
        d.steps, d.seconds, d.images_per_sec
    );
    if !d.epoch_losses.is_empty() {
        let _ = writeln!(s, "## Loss\n\n| epoch | mean loss |\n|---|---|");
        for (i, l) in d.epoch_losses.iter().enumerate() {
            let _ = writeln!(s, "| {i} | {l:.4} |");
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
}
