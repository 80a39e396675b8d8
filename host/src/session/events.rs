//! What a running session reports.

use std::{path::PathBuf, sync::Arc};

use super::{attention::AttentionMaps, reload::Swapped};

/// One event out of a session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A stage started.
    StageStarted {
        /// Human name of the stage.
        stage: String,
        /// Optimizer steps in the stage (0 for evaluation).
        total_steps: u64,
        /// The step it starts from (non-zero when resumed).
        start_step: u64,
    },
    /// One optimizer step finished.
    Step {
        /// Global step, from 1 after the first step.
        step: u64,
        /// Epoch.
        epoch: u64,
        /// The loss.
        loss: f64,
        /// The learning rate used.
        lr: f64,
        /// Training images per second (recent average).
        images_per_sec: f64,
    },
    /// An epoch finished.
    Epoch {
        /// Epoch index.
        epoch: u64,
        /// Mean loss over the epoch.
        mean_loss: f64,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Where.
        path: PathBuf,
    },
    /// An evaluation result.
    Eval {
        /// What was measured, e.g. `knn@20 (trained)`.
        name: String,
        /// The value.
        value: f64,
    },
    /// A log line.
    Log(String),
    /// The session paused after `step` (it waits until resumed or stopped).
    Paused {
        /// Optimizer steps done.
        step: u64,
    },
    /// The session went on after a pause.
    Resumed {
        /// Optimizer steps done.
        step: u64,
    },
    /// A new build of a plugin was swapped in.
    Reloaded(Box<Swapped>),
    /// A changed plugin library could not be swapped in; the old build keeps running.
    ReloadFailed {
        /// The library file.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// Last-layer CLS attention of a few validation images (random init, each epoch
    /// end, after evaluation).
    Attention(Arc<AttentionMaps>),
}

/// `name: value` as the CLI and the log panel print an evaluation: fractions (k-NN
/// and accuracies) as percentages, losses and values outside `[0, 1]` as numbers.
pub fn eval_text(name: &str, value: f64) -> String {
    format!("{name}: {}", super::report::score_text(name, value))
}

#[cfg(test)]
mod tests {
    use super::eval_text;

    #[test]
    fn fractions_print_as_percentages_and_losses_as_numbers() {
        assert_eq!(
            eval_text("knn@20 (trained)", 0.5),
            "knn@20 (trained): 50.00 %"
        );
        assert_eq!(eval_text("m loss (val)", 0.5), "m loss (val): 0.5000");
        assert_eq!(eval_text("m psnr", 21.5), "m psnr: 21.5000");
    }
}
