//! `runs/<workspace>/summary.md`: the final scores of every session of a workspace
//! side by side, and for a session repeated over `seeds`, each score's mean ± sample
//! standard deviation over its seeds' runs.

use std::{fmt::Write, path::Path, path::PathBuf};

use super::{
    SessionError, evaluate,
    manifest::{Manifest, Outcome},
    report::score_text,
};
use crate::workspace::schema::{Session, Workspace, resolve};

/// Named scores, in the order first recorded.
pub type Scores = Vec<(String, f64)>;

/// One session of the workspace file and the runs it made.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The session's name in the file.
    pub name: String,
    /// Its runs, in seed order: the run name and its final scores (`None` when the
    /// run has not finished).
    pub runs: Vec<(String, Option<Scores>)>,
}

/// Mean and sample standard deviation (`n − 1`; `None` below two values).
pub fn mean_std(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n.max(1.0);
    let std = (values.len() >= 2).then(|| {
        let ss: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
        (ss / (n - 1.0)).sqrt()
    });
    (mean, std)
}

/// The final scores a run recorded: the `Evaluate` stages', the random-init ones as
/// `"<name> (random init)"`, and the `Adapt` stages'.
pub fn final_scores(h: &evaluate::History) -> Scores {
    let random = h
        .by_epoch
        .get(&0)
        .into_iter()
        .flatten()
        .map(|(n, v)| (format!("{n} (random init)"), *v));
    h.end
        .iter()
        .cloned()
        .chain(random)
        .chain(h.adaptations.iter().cloned())
        .collect()
}

/// [`final_scores`] of the run in `run_dir`; `None` unless its manifest says it
/// finished every stage.
pub fn run_scores(run_dir: &Path) -> Option<Scores> {
    let done = Manifest::load(run_dir).is_ok_and(|m| m.outcome == Outcome::Done);
    done.then(|| final_scores(&evaluate::read_history(run_dir)))
}

/// The groups of `ws` (as written, before its seeds are expanded) with the scores
/// of the runs under `out_dir` (`runs/<workspace>/`).
pub fn collect(ws: &Workspace, out_dir: &Path) -> Vec<Group> {
    let runs_of = |s: &Session| -> Vec<String> {
        if s.seeds.is_empty() {
            vec![s.name.clone()]
        } else {
            s.seeds
                .iter()
                .map(|&seed| Session::seed_name(&s.name, seed))
                .collect()
        }
    };
    ws.sessions
        .iter()
        .map(|s| Group {
            name: s.name.clone(),
            runs: runs_of(s)
                .into_iter()
                .map(|run| {
                    let scores = run_scores(&out_dir.join(&run));
                    (run, scores)
                })
                .collect(),
        })
        .collect()
}

/// The scores of `g`'s finished runs.
fn finished(g: &Group) -> Vec<&Scores> {
    g.runs.iter().filter_map(|(_, r)| r.as_ref()).collect()
}

/// Renders the summary of `groups` of workspace `workspace`.
pub fn render(workspace: &str, groups: &[Group]) -> String {
    let mut s = format!("# {workspace}: summary\n\n");
    s.push_str(
        "Final scores of each session (validation split). A session run over several \
         seeds shows mean ± sample standard deviation over its finished runs.\n\n",
    );
    let mut names: Vec<&str> = Vec::new();
    for g in groups {
        for scores in finished(g) {
            for (n, _) in scores {
                if !names.contains(&n.as_str()) {
                    names.push(n);
                }
            }
        }
    }
    let _ = write!(s, "| score |");
    for g in groups {
        let n = finished(g).len();
        let runs = if n == 1 { "run" } else { "runs" };
        let _ = write!(s, " {} ({n} {runs}) |", g.name);
    }
    let _ = writeln!(s, "\n|---|{}", "---|".repeat(groups.len()));
    for name in &names {
        let _ = write!(s, "| {name} |");
        for g in groups {
            let values: Vec<f64> = finished(g)
                .iter()
                .filter_map(|scores| scores.iter().find(|(n, _)| n == name).map(|x| x.1))
                .collect();
            if values.is_empty() {
                s.push_str(" |");
                continue;
            }
            let (mean, std) = mean_std(&values);
            let cell = match std {
                None => score_text(name, mean),
                Some(sd) => {
                    let m = score_text(name, mean);
                    match m.strip_suffix(" %") {
                        Some(m) => format!("{m} ± {:.2} %", 100.0 * sd),
                        None => format!("{m} ± {sd:.4}"),
                    }
                }
            };
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    s.push_str("\nRuns:\n\n");
    for g in groups {
        let listed: Vec<String> = g
            .runs
            .iter()
            .map(|(run, scores)| match scores {
                Some(_) => run.clone(),
                None => format!("{run} (not finished)"),
            })
            .collect();
        let _ = writeln!(s, "- {}: {}", g.name, listed.join(", "));
    }
    s
}

/// Writes `runs/<workspace>/summary.md` for `ws` (the workspace file at `ws_path`,
/// as written, before its seeds are expanded) from the run folders on disk.
pub fn write(ws: &Workspace, ws_path: &Path) -> Result<PathBuf, SessionError> {
    let out_dir = resolve(ws_path, &ws.output).join(&ws.name);
    let text = render(&ws.name, &collect(ws, &out_dir));
    std::fs::create_dir_all(&out_dir).map_err(SessionError::io(&out_dir))?;
    let path = out_dir.join("summary.md");
    crate::fsutil::write_atomic(&path, text.as_bytes()).map_err(SessionError::io(&path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(knn: f64, loss: f64) -> Option<Scores> {
        Some(vec![
            ("knn@20".to_string(), knn),
            ("probe loss".to_string(), loss),
        ])
    }

    #[test]
    fn mean_and_sample_std_by_hand() {
        let (m, s) = mean_std(&[0.4, 0.5, 0.6]);
        assert!((m - 0.5).abs() < 1e-12);
        assert!((s.unwrap() - 0.1).abs() < 1e-12, "{s:?}");
        assert_eq!(mean_std(&[0.25]), (0.25, None));
    }

    #[test]
    fn groups_show_mean_and_std_and_unfinished_runs() {
        let groups = vec![
            Group {
                name: "dino".into(),
                runs: vec![
                    ("dino-seed0".into(), scores(0.4, 1.0)),
                    ("dino-seed1".into(), scores(0.5, 2.0)),
                    ("dino-seed2".into(), scores(0.6, 3.0)),
                ],
            },
            Group {
                name: "random".into(),
                runs: vec![
                    ("random".into(), Some(vec![("knn@20".to_string(), 0.25)])),
                    ("random-seed9".into(), None),
                ],
            },
        ];
        let text = render("ws", &groups);
        assert!(
            text.contains("| score | dino (3 runs) | random (1 run) |"),
            "{text}"
        );
        assert!(
            text.contains("| knn@20 | 50.00 ± 10.00 % | 25.00 % |"),
            "{text}"
        );
        assert!(
            text.contains("| probe loss | 2.0000 ± 1.0000 | |"),
            "{text}"
        );
        assert!(
            text.contains("- random: random, random-seed9 (not finished)"),
            "{text}"
        );
    }

    #[test]
    fn final_scores_name_the_random_init_and_adaptations() {
        let text = [
            r#"{"event":"eval","step":0,"at":"random init","epoch":0,"evaluator":"Knn","knn@20":0.25}"#,
            r#"{"event":"eval","step":4,"at":"epoch 2","epoch":2,"evaluator":"Knn","knn@20":0.4}"#,
            r#"{"event":"eval","step":9,"at":"end","evaluator":"Knn","knn@20":0.5}"#,
            r#"{"event":"adapt_eval","step":12,"method":"probe","images":8,"accuracy":0.75}"#,
        ]
        .join("\n");
        assert_eq!(
            final_scores(&evaluate::history(&text)),
            vec![
                ("knn@20".to_string(), 0.5),
                ("knn@20 (random init)".to_string(), 0.25),
                ("probe accuracy".to_string(), 0.75),
            ]
        );
        assert_eq!(run_scores(Path::new("/nonexistent/run")), None);
    }
}
