//! Evaluations of the backbone at one point of a session (at random init, every N
//! epochs of pre-training, at an `Evaluate` stage): runs the evaluators, records
//! each in `metrics.jsonl`, writes the attention figures, and reads that history
//! back for the report and the workspace summary.

use std::{collections::BTreeMap, io::Write, path::Path};

use super::{
    SessionError, SessionEvent,
    attention::{AttentionCapture, AttentionProbe},
    attention_figure,
    eval_stage::knn,
    probe_eval,
    runner::{backbone_at, destroy},
};
use crate::{
    data::source::Data,
    plugins::LoadedPlugin,
    workspace::schema::{Evaluator, KnnConfig, Session},
};

/// When an evaluation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalPoint {
    /// Before any training (the pretext's result scope at initialisation).
    RandomInit,
    /// After this many epochs of a pre-training stage with `eval_every`.
    Epoch(u64),
    /// At an `Evaluate` stage.
    End,
}

impl EvalPoint {
    /// `"random init"`, `"epoch 4"` or `"end"`: the `at` field of its records.
    pub fn label(self) -> String {
        match self {
            Self::RandomInit => "random init".into(),
            Self::Epoch(n) => format!("epoch {n}"),
            Self::End => "end".into(),
        }
    }

    /// The epoch count its records carry (`0` at random init); `None` at the end.
    fn epoch(self) -> Option<u64> {
        match self {
            Self::RandomInit => Some(0),
            Self::Epoch(n) => Some(n),
            Self::End => None,
        }
    }

    /// The file name of its attention figure.
    fn figure_name(self) -> String {
        match self {
            Self::RandomInit => "random-init.png".into(),
            Self::Epoch(n) => format!("epoch-{n:04}.png"),
            Self::End => "end.png".into(),
        }
    }

    /// The name a score is shown under in the log and the TUI's charts: a series per
    /// score over steps, with the random-init k-NN apart.
    fn shown(self, evaluator: &Evaluator, name: &str) -> String {
        match (self, evaluator) {
            (Self::RandomInit, _) => format!("{name} (random init)"),
            (_, Evaluator::Knn(_)) => format!("{name} (trained)"),
            _ => name.to_string(),
        }
    }
}

/// The record key of a k-NN score.
pub fn knn_name(k: &KnnConfig) -> String {
    format!("knn@{}", k.k)
}

/// The backbone to evaluate and where the results go.
pub struct Evaluation<'a> {
    /// The backbone plugin build in use.
    pub backbone: &'a LoadedPlugin,
    /// Its config (RON).
    pub config: &'a str,
    /// The parameter scope whose features are evaluated (e.g. the teacher's backbone).
    pub scope: &'a str,
    /// The session's data.
    pub data: &'a Data,
    /// `runs/<ws>/<session>/`: `metrics.jsonl` and the `attention/` figures.
    pub run_dir: &'a Path,
}

impl<'a> Evaluation<'a> {
    /// The backbone `backbone` of `session`, its parameters under `scope`, on `data`,
    /// recording in `run_dir`.
    pub fn of(
        session: &'a Session,
        data: &'a Data,
        run_dir: &'a Path,
        backbone: &'a LoadedPlugin,
        scope: &'a str,
    ) -> Self {
        Self {
            backbone,
            config: &session.backbone.config,
            scope,
            data,
            run_dir,
        }
    }

    /// Runs `evaluators` at `at` (session step `step`): emits each score, appends one
    /// `"event": "eval"` record per evaluator to `metrics.jsonl`, and returns each
    /// evaluator's scores by record key (`knn@20`, `linear top-1 (4 blocks)`, ...),
    /// in the evaluators' order.
    pub fn run(
        &self,
        evaluators: &[Evaluator],
        at: EvalPoint,
        step: u64,
        emit: &mut dyn FnMut(SessionEvent),
    ) -> Result<Vec<Vec<(String, f64)>>, SessionError> {
        let metrics_path = self.run_dir.join("metrics.jsonl");
        let mut all = Vec::with_capacity(evaluators.len());
        for evaluator in evaluators {
            let mut record = serde_json::json!({
                "event": "eval",
                "step": step,
                "at": at.label(),
                "evaluator": evaluator.name(),
            });
            if let Some(epoch) = at.epoch() {
                record["epoch"] = serde_json::json!(epoch);
            }
            let scores = match evaluator {
                Evaluator::Attention(a) => {
                    let relative = format!("attention/{}", at.figure_name());
                    if self.figure(a.images, at, &self.run_dir.join(&relative))? {
                        emit(SessionEvent::Log(format!(
                            "attention maps ({}): {}",
                            at.label(),
                            self.run_dir.join(&relative).display()
                        )));
                        record["figure"] = serde_json::json!(relative);
                    }
                    Vec::new()
                }
                Evaluator::Knn(_)
                | Evaluator::Linear(_)
                | Evaluator::MultiLabel(_)
                | Evaluator::Dense(_) => {
                    let bb = backbone_at(self.backbone, self.config, self.scope)?;
                    let scores = match evaluator {
                        Evaluator::Knn(k) => knn(&bb, self.data, k.k, k.temperature)
                            .map(|acc| vec![(knn_name(k), acc)]),
                        _ => probe_eval::evaluate(self.backbone, &bb, self.data, evaluator),
                    };
                    destroy(self.backbone, bb.instance);
                    scores?
                }
            };
            for (name, value) in &scores {
                record[name.as_str()] = serde_json::json!(value);
                emit(SessionEvent::Eval {
                    name: at.shown(evaluator, name),
                    value: *value,
                });
            }
            append_line(&metrics_path, &record)?;
            all.push(scores);
        }
        Ok(all)
    }

    /// Writes the attention figure of the first `images` validation images to
    /// `path`; `false` when the data has no images.
    fn figure(&self, images: usize, at: EvalPoint, path: &Path) -> Result<bool, SessionError> {
        let Some(probe) = AttentionProbe::new(self.data, images)? else {
            return Ok(false);
        };
        let capture = AttentionCapture {
            probe: &probe,
            plugin: self.backbone,
            config: self.config,
            scope: self.scope.to_string(),
        };
        let maps = capture.capture(&at.label())?;
        attention_figure::write(&maps, path).map_err(SessionError::io(path))?;
        Ok(true)
    }
}

/// Appends one JSON record to `metrics.jsonl`.
pub fn append_line(metrics_path: &Path, record: &serde_json::Value) -> Result<(), SessionError> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(metrics_path)
        .map_err(SessionError::io(metrics_path))?;
    writeln!(file, "{record}").map_err(SessionError::io(metrics_path))
}

/// The evaluations a run recorded, read back from its `metrics.jsonl`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Scores by epoch count (0: random init), in the order first recorded; a score
    /// recorded twice (a resumed run) keeps its last value.
    pub by_epoch: BTreeMap<u64, Vec<(String, f64)>>,
    /// Scores of the `Evaluate` stages.
    pub end: Vec<(String, f64)>,
    /// Attention figures: `(at, path relative to the run folder)`.
    pub figures: Vec<(String, String)>,
    /// Metrics of the `Adapt` stages' evaluations, as `"<method> <metric>"`.
    pub adaptations: Vec<(String, f64)>,
}

/// Fields of an evaluation record that are not scores.
const NOT_SCORES: [&str; 2] = ["step", "epoch"];

/// Sets `name` to `value` in `list`, keeping the first position of `name`.
fn set(list: &mut Vec<(String, f64)>, name: &str, value: f64) {
    match list.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value,
        None => list.push((name.to_string(), value)),
    }
}

/// Reads the evaluation records of `metrics.jsonl` text.
pub fn history(text: &str) -> History {
    let mut h = History::default();
    for line in text.lines() {
        let Ok(serde_json::Value::Object(record)) = serde_json::from_str(line) else {
            continue;
        };
        let event = record.get("event").and_then(|v| v.as_str());
        let scores = record
            .iter()
            .filter(|(k, _)| !NOT_SCORES.contains(&k.as_str()))
            .filter_map(|(k, v)| Some((k.as_str(), v.as_f64()?)));
        match event {
            Some("eval") => {
                let epoch = record.get("epoch").and_then(|v| v.as_u64());
                let list = match epoch {
                    Some(e) => h.by_epoch.entry(e).or_default(),
                    None => &mut h.end,
                };
                for (name, value) in scores {
                    set(list, name, value);
                }
                if let (Some(at), Some(path)) = (
                    record.get("at").and_then(|v| v.as_str()),
                    record.get("figure").and_then(|v| v.as_str()),
                ) {
                    h.figures.retain(|(a, _)| a != at);
                    h.figures.push((at.to_string(), path.to_string()));
                }
            }
            Some("adapt_eval") => {
                let method = record.get("method").and_then(|v| v.as_str()).unwrap_or("");
                for (name, value) in scores.filter(|(k, _)| *k != "images") {
                    set(&mut h.adaptations, &format!("{method} {name}"), value);
                }
            }
            _ => {}
        }
    }
    h
}

/// [`history`] of the run folder `run_dir` (empty when it has no metrics).
pub fn read_history(run_dir: &Path) -> History {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .map(|t| history(&t))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_label_their_records_and_figures() {
        assert_eq!(EvalPoint::RandomInit.label(), "random init");
        assert_eq!(EvalPoint::Epoch(4).label(), "epoch 4");
        assert_eq!(EvalPoint::Epoch(4).figure_name(), "epoch-0004.png");
        assert_eq!(EvalPoint::End.epoch(), None);
        assert_eq!(EvalPoint::RandomInit.epoch(), Some(0));
        let knn = Evaluator::Knn(KnnConfig::default());
        let dense = Evaluator::Dense(Default::default());
        assert_eq!(EvalPoint::End.shown(&knn, "knn@20"), "knn@20 (trained)");
        assert_eq!(
            EvalPoint::Epoch(2).shown(&dense, "dense mIoU"),
            "dense mIoU"
        );
        assert_eq!(
            EvalPoint::RandomInit.shown(&knn, "knn@20"),
            "knn@20 (random init)"
        );
    }

    #[test]
    fn history_groups_scores_by_epoch_and_keeps_the_last_value() {
        let text = [
            r#"{"step":1,"epoch":0,"loss":2.0}"#,
            r#"{"event":"eval","step":0,"at":"random init","epoch":0,"evaluator":"Knn","knn@20":0.3}"#,
            r#"{"event":"eval","step":0,"at":"random init","epoch":0,"evaluator":"Attention","figure":"attention/random-init.png"}"#,
            r#"{"event":"eval","step":8,"at":"epoch 2","epoch":2,"evaluator":"Knn","knn@20":0.4}"#,
            r#"{"event":"eval","step":8,"at":"epoch 2","epoch":2,"evaluator":"Dense","dense mIoU":0.1}"#,
            r#"{"event":"eval","step":16,"at":"end","evaluator":"Knn","knn@20":0.5}"#,
            "not json",
            r#"{"event":"adapt_eval","step":20,"method":"probe","images":64,"accuracy":0.75}"#,
            r#"{"event":"eval","step":16,"at":"end","evaluator":"Knn","knn@20":0.55}"#,
        ]
        .join("\n");
        let h = history(&text);
        assert_eq!(h.by_epoch[&0], vec![("knn@20".to_string(), 0.3)]);
        assert_eq!(
            h.by_epoch[&2],
            vec![("knn@20".to_string(), 0.4), ("dense mIoU".to_string(), 0.1)]
        );
        assert_eq!(h.end, vec![("knn@20".to_string(), 0.55)]);
        assert_eq!(
            h.figures,
            vec![(
                "random init".to_string(),
                "attention/random-init.png".to_string()
            )]
        );
        assert_eq!(h.adaptations, vec![("probe accuracy".to_string(), 0.75)]);
    }
}
