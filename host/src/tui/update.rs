//! `update`: one message in, the new state and the commands for the runtime out.
//! Pure: no I/O, no clock, no threads; every key and session event is unit-tested.

use super::{
    app::{App, Level, Modal, Panel, SessionState},
    keys::{Action, action},
    msg::{Command, Ended, Msg},
};
use crate::session::{SessionEvent, events::eval_text};

/// Applies `msg` to `app` and returns what the runtime should do.
pub fn update(app: &mut App, msg: Msg) -> Vec<Command> {
    let mut out = Vec::new();
    match msg {
        Msg::Key(key) => {
            if let Some(a) = action(key) {
                on_action(app, a, &mut out);
            }
        }
        Msg::Tick(now) => app.clock = now,
        Msg::Resize => {}
        Msg::Session { index, at, event } => on_event(app, index, at, event),
        Msg::Ended { index, how } => on_ended(app, index, how),
        Msg::Plugins(mut rows) => {
            for row in &mut rows {
                if let Some(old) = app.plugins.iter().find(|o| o.name == row.name) {
                    row.reloads = old.reloads + u32::from(row.loaded);
                }
            }
            let failed = rows.iter().filter(|r| !r.loaded).count();
            app.push_log(
                if failed > 0 { Level::Warn } else { Level::Info },
                "plugins",
                format!(
                    "rescanned: {} loaded, {failed} failed; sessions started from now on use them",
                    rows.len() - failed
                ),
            );
            app.plugins = rows;
        }
        Msg::Log(line) => app.push_log(line.level, &line.source, line.text),
    }
    schedule(app, &mut out);
    if app.quitting && app.active() == 0 && !out.contains(&Command::Exit) {
        out.push(Command::Exit);
    }
    out
}

fn on_action(app: &mut App, a: Action, out: &mut Vec<Command>) {
    match app.modal {
        Some(Modal::ConfirmQuit) => {
            match a {
                Action::Yes | Action::Quit => quit_now(app, out),
                Action::No => app.modal = None,
                _ => {}
            }
            return;
        }
        Some(Modal::Help) => {
            if matches!(a, Action::Help | Action::No | Action::Quit) {
                app.modal = None;
            }
            return;
        }
        None => {}
    }
    let n = app.sessions.len();
    let i = app.selected;
    match a {
        Action::Up => app.selected = i.saturating_sub(1),
        Action::Down => app.selected = (i + 1).min(n.saturating_sub(1)),
        Action::Start => enqueue(app, i, false),
        Action::StartAll => {
            for j in 0..n {
                if app.sessions[j].state == SessionState::Idle {
                    enqueue(app, j, false);
                }
            }
        }
        Action::Restart => enqueue(app, i, true),
        Action::PauseResume => pause_resume(app, i, out),
        Action::Stop => stop(app, i, out),
        Action::Reload => out.push(Command::ReloadPlugins),
        Action::NextPanel | Action::PrevPanel => {
            let at = Panel::ALL.iter().position(|p| *p == app.panel).unwrap_or(0);
            let len = Panel::ALL.len();
            let next = if a == Action::NextPanel {
                (at + 1) % len
            } else {
                (at + len - 1) % len
            };
            app.panel = Panel::ALL[next];
        }
        Action::Panel(k) => app.panel = Panel::ALL.get(k).copied().unwrap_or(app.panel),
        Action::Compare => {
            app.compare = if app.compare == Some(i) {
                None
            } else {
                Some(i)
            };
        }
        Action::ScrollUp => {
            app.log_scroll = (app.log_scroll + 10).min(app.log.len().saturating_sub(1));
        }
        Action::ScrollDown => app.log_scroll = app.log_scroll.saturating_sub(10),
        Action::ScrollEnd => app.log_scroll = 0,
        Action::Help => app.modal = Some(Modal::Help),
        Action::Quit => {
            if app.quitting || app.active() == 0 {
                // Nothing to stop, or asked twice: leave now (checkpoints are atomic).
                out.push(Command::Exit);
            } else {
                app.modal = Some(Modal::ConfirmQuit);
            }
        }
        Action::Yes | Action::No => {}
    }
}

/// Queues session `i` unless it is already queued or running.
fn enqueue(app: &mut App, i: usize, resume: bool) {
    let Some(row) = app.sessions.get_mut(i) else {
        return;
    };
    if row.state.is_active() || row.state == SessionState::Queued {
        let what = row.state.label();
        let name = row.name.clone();
        app.push_log(Level::Info, &name, format!("already {what}"));
        return;
    }
    row.state = SessionState::Queued;
    row.resume = resume;
    row.note = None;
    app.queue.push_back(i);
}

fn pause_resume(app: &mut App, i: usize, out: &mut Vec<Command>) {
    let Some(row) = app.sessions.get_mut(i) else {
        return;
    };
    match row.state {
        SessionState::Running => {
            row.state = SessionState::Pausing;
            out.push(Command::Pause(i));
        }
        SessionState::Pausing | SessionState::Paused => {
            row.state = SessionState::Running;
            row.rate_base = None;
            out.push(Command::Resume(i));
        }
        _ => {}
    }
}

fn stop(app: &mut App, i: usize, out: &mut Vec<Command>) {
    let Some(row) = app.sessions.get_mut(i) else {
        return;
    };
    match row.state {
        SessionState::Running | SessionState::Pausing | SessionState::Paused => {
            row.state = SessionState::Stopping;
            out.push(Command::Stop(i));
        }
        SessionState::Queued => {
            row.state = SessionState::Idle;
            app.queue.retain(|&q| q != i);
        }
        _ => {}
    }
}

/// Confirmed quit: unqueue everything, stop the live sessions (each checkpoints),
/// and exit once they have ended.
fn quit_now(app: &mut App, out: &mut Vec<Command>) {
    app.modal = None;
    app.quitting = true;
    for i in std::mem::take(&mut app.queue) {
        app.sessions[i].state = SessionState::Idle;
    }
    for (i, row) in app.sessions.iter_mut().enumerate() {
        if matches!(
            row.state,
            SessionState::Running | SessionState::Pausing | SessionState::Paused
        ) {
            row.state = SessionState::Stopping;
            out.push(Command::Stop(i));
        }
    }
}

/// Starts queued sessions while fewer than `parallel` are live.
fn schedule(app: &mut App, out: &mut Vec<Command>) {
    if app.quitting {
        return;
    }
    while app.active() < app.parallel {
        let Some(i) = app.queue.pop_front() else {
            break;
        };
        let row = &mut app.sessions[i];
        row.state = SessionState::Running;
        row.rate_base = None;
        row.eta_secs = None;
        out.push(Command::Start {
            index: i,
            resume: row.resume,
        });
    }
}

fn on_event(app: &mut App, index: usize, at: f64, event: SessionEvent) {
    let Some(row) = app.sessions.get_mut(index) else {
        return;
    };
    let name = row.name.clone();
    match event {
        SessionEvent::StageStarted {
            stage,
            total_steps,
            start_step,
        } => {
            row.stage = stage;
            row.total_steps = total_steps;
            row.step = start_step;
            row.rate_base = Some((at, start_step));
            row.eta_secs = None;
        }
        SessionEvent::Step {
            step,
            epoch,
            loss,
            lr,
            images_per_sec,
        } => {
            row.step = step;
            row.epoch = epoch;
            row.last_loss = Some(loss);
            row.images_per_sec = images_per_sec;
            row.loss.push(step as f64, loss);
            row.lr.push(step as f64, lr);
            match row.rate_base {
                Some((t0, s0)) if at > t0 && step > s0 => {
                    let rate = (step - s0) as f64 / (at - t0);
                    row.eta_secs = Some(row.total_steps.saturating_sub(step) as f64 / rate);
                }
                Some(_) => {}
                None => row.rate_base = Some((at, step)),
            }
        }
        SessionEvent::Epoch { epoch, mean_loss } => {
            row.epoch = epoch + 1;
            app.push_log(
                Level::Info,
                &name,
                format!("epoch {} done: mean loss {mean_loss:.4}", epoch + 1),
            );
        }
        SessionEvent::Checkpoint { path } => row.checkpoint = Some(path.display().to_string()),
        SessionEvent::Eval { name: what, value } => {
            let step = row.step as f64;
            row.eval_series(&what).push(step, value);
            app.push_log(Level::Info, &name, eval_text(&what, value));
        }
        SessionEvent::Log(text) => {
            let level = if text.starts_with("warning") {
                Level::Warn
            } else {
                Level::Info
            };
            app.push_log(level, &name, text);
        }
        SessionEvent::Paused { step } => {
            if row.state == SessionState::Pausing {
                row.state = SessionState::Paused;
            }
            app.push_log(Level::Info, &name, format!("paused after step {step}"));
        }
        SessionEvent::Resumed { step } => {
            if row.state == SessionState::Paused {
                row.state = SessionState::Running;
            }
            row.rate_base = None;
            app.push_log(Level::Info, &name, format!("resumed at step {step}"));
        }
        SessionEvent::Attention(maps) => row.attention = Some(maps),
        SessionEvent::Reloaded(swapped) => {
            if let Some(p) = app.plugins.iter_mut().find(|p| p.name == swapped.plugin) {
                p.reloads += 1;
                p.version.clone_from(&swapped.versions.1);
                p.error = None;
            }
            app.push_log(
                Level::Info,
                &name,
                format!("hot reload: {}", swapped.line()),
            );
        }
        SessionEvent::ReloadFailed { path, error } => {
            let file = path.display().to_string();
            if let Some(p) = app.plugins.iter_mut().find(|p| p.file == file) {
                p.error = Some(error.clone());
            }
            app.push_log(
                Level::Warn,
                &name,
                format!("'{file}' was not swapped in (the old build keeps running): {error}"),
            );
        }
    }
}

fn on_ended(app: &mut App, index: usize, how: Ended) {
    let Some(row) = app.sessions.get_mut(index) else {
        return;
    };
    let name = row.name.clone();
    row.eta_secs = None;
    let (level, line) = match how {
        Ended::Done { knn } => {
            row.state = SessionState::Done;
            row.note = knn.map(|(trained, random)| match random {
                Some(r) => format!(
                    "k-NN {:.1} % (random init {:.1} %)",
                    100.0 * trained,
                    100.0 * r
                ),
                None => format!("k-NN {:.1} %", 100.0 * trained),
            });
            (
                Level::Info,
                format!(
                    "done{}",
                    row.note
                        .as_ref()
                        .map(|n| format!(": {n}"))
                        .unwrap_or_default()
                ),
            )
        }
        Ended::Stopped { step, checkpoint } => {
            row.state = SessionState::Stopped;
            row.checkpoint = Some(checkpoint.clone());
            row.note = Some(format!(
                "stopped at step {step}; r continues from '{checkpoint}'"
            ));
            (
                Level::Info,
                format!("stopped at step {step} with checkpoint '{checkpoint}'"),
            )
        }
        Ended::Failed(message) => {
            row.state = SessionState::Failed(message.clone());
            row.note = Some(message.clone());
            (Level::Error, format!("failed: {message}"))
        }
    };
    app.push_log(level, &name, line);
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, sync::Arc};

    use super::*;
    use crate::{
        session::attention::AttentionMaps,
        tui::{
            app::{LogLine, PluginRow},
            msg::Key,
        },
        workspace::schema::parse,
    };

    fn app(sessions: usize, parallel: usize) -> App {
        let session = |i: usize| {
            format!(
                "Session(name: \"s{i}\", data: \"d\", backbone: Plugin(name: \"vit\"), \
                 stages: [Evaluate([Knn(())])])"
            )
        };
        let list: Vec<String> = (0..sessions).map(session).collect();
        let text = format!(
            "Workspace(name: \"w\", parallel: {parallel}, data: {{\"d\": Shapes(())}}, sessions: [{}])",
            list.join(", ")
        );
        let ws = parse(&text, std::path::Path::new("w.ron")).unwrap();
        App::new(&ws, Vec::new())
    }

    /// Presses keys written as text: plain characters, or `<up>`, `<down>`, `<tab>`,
    /// `<btab>`, `<enter>`, `<esc>`, `<pgup>`, `<pgdn>`, `<end>`, `<c-c>`; returns every
    /// command.
    fn press(app: &mut App, keys: &str) -> Vec<Command> {
        let mut out = Vec::new();
        let mut rest = keys;
        while let Some(c) = rest.chars().next() {
            let (key, len) = if c == '<' {
                let end = rest.find('>').expect("closing '>'");
                let key = match &rest[1..end] {
                    "up" => Key::Up,
                    "down" => Key::Down,
                    "tab" => Key::Tab,
                    "btab" => Key::BackTab,
                    "enter" => Key::Enter,
                    "esc" => Key::Esc,
                    "pgup" => Key::PageUp,
                    "pgdn" => Key::PageDown,
                    "end" => Key::End,
                    "c-c" => Key::Ctrl('c'),
                    other => panic!("unknown key <{other}>"),
                };
                (key, end + 1)
            } else {
                (Key::Char(c), c.len_utf8())
            };
            out.extend(update(app, Msg::Key(key)));
            rest = &rest[len..];
        }
        out
    }

    fn event(app: &mut App, index: usize, at: f64, event: SessionEvent) -> Vec<Command> {
        update(app, Msg::Session { index, at, event })
    }

    fn ended(app: &mut App, index: usize, how: Ended) -> Vec<Command> {
        update(app, Msg::Ended { index, how })
    }

    fn step(step: u64, loss: f64) -> SessionEvent {
        SessionEvent::Step {
            step,
            epoch: 0,
            loss,
            lr: 1e-3,
            images_per_sec: 100.0,
        }
    }

    fn start(index: usize) -> Command {
        Command::Start {
            index,
            resume: false,
        }
    }

    fn states(app: &App) -> Vec<&'static str> {
        app.sessions.iter().map(|s| s.state.label()).collect()
    }

    #[test]
    fn up_and_down_select_within_bounds() {
        let mut a = app(3, 1);
        press(&mut a, "jjj");
        assert_eq!(a.selected, 2);
        press(&mut a, "<up>k<up><up>");
        assert_eq!(a.selected, 0);
        press(&mut a, "<down>");
        assert_eq!(a.selected, 1);
    }

    #[test]
    fn start_runs_one_at_a_time_and_queues_the_rest() {
        let mut a = app(3, 1);
        assert_eq!(press(&mut a, "s"), vec![start(0)]);
        assert_eq!(press(&mut a, "js"), vec![]);
        assert_eq!(states(&a), ["running", "queued", "idle"]);
        // Starting a running session again only logs.
        assert_eq!(press(&mut a, "ks"), vec![]);
        assert!(a.log.back().unwrap().text.contains("already running"));
        let next = ended(&mut a, 0, Ended::Done { knn: None });
        assert_eq!(next, vec![start(1)]);
        assert_eq!(states(&a), ["done", "running", "idle"]);
    }

    #[test]
    fn parallel_sessions_start_together() {
        let mut a = app(3, 2);
        assert_eq!(press(&mut a, "S"), vec![start(0), start(1)]);
        assert_eq!(states(&a), ["running", "running", "queued"]);
        assert_eq!(ended(&mut a, 1, Ended::Done { knn: None }), vec![start(2)]);
    }

    #[test]
    fn pause_and_resume_follow_the_session() {
        let mut a = app(1, 1);
        press(&mut a, "s");
        assert_eq!(press(&mut a, "p"), vec![Command::Pause(0)]);
        assert_eq!(a.sessions[0].state, SessionState::Pausing);
        event(&mut a, 0, 1.0, SessionEvent::Paused { step: 5 });
        assert_eq!(a.sessions[0].state, SessionState::Paused);
        assert_eq!(press(&mut a, " "), vec![Command::Resume(0)]);
        assert_eq!(a.sessions[0].state, SessionState::Running);
        event(&mut a, 0, 2.0, SessionEvent::Resumed { step: 5 });
        assert_eq!(a.sessions[0].state, SessionState::Running);
        assert!(a.log.iter().any(|l| l.text == "paused after step 5"));
        // Pause has no meaning for a session that is not running.
        let mut idle = app(1, 1);
        assert_eq!(press(&mut idle, "p"), vec![]);
    }

    #[test]
    fn stop_checkpoints_and_restart_resumes() {
        let mut a = app(1, 1);
        press(&mut a, "s");
        assert_eq!(press(&mut a, "x"), vec![Command::Stop(0)]);
        assert_eq!(a.sessions[0].state, SessionState::Stopping);
        ended(
            &mut a,
            0,
            Ended::Stopped {
                step: 7,
                checkpoint: "ckpt/step-7".into(),
            },
        );
        assert_eq!(a.sessions[0].state, SessionState::Stopped);
        assert!(a.sessions[0].note.as_ref().unwrap().contains("step 7"));
        assert_eq!(
            press(&mut a, "r"),
            vec![Command::Start {
                index: 0,
                resume: true
            }]
        );
    }

    #[test]
    fn stop_on_a_queued_session_unqueues_it() {
        let mut a = app(2, 1);
        press(&mut a, "sjs");
        assert_eq!(press(&mut a, "x"), vec![]);
        assert_eq!(states(&a), ["running", "idle"]);
        assert!(a.queue.is_empty());
        assert_eq!(ended(&mut a, 0, Ended::Done { knn: None }), vec![]);
    }

    #[test]
    fn a_failed_session_shows_its_message_and_the_next_one_starts() {
        let mut a = app(2, 1);
        press(&mut a, "S");
        let next = ended(
            &mut a,
            0,
            Ended::Failed("plugin 'dino' panicked in step: boom".into()),
        );
        assert_eq!(next, vec![start(1)]);
        assert_eq!(
            a.sessions[0].state,
            SessionState::Failed("plugin 'dino' panicked in step: boom".into())
        );
        let last = a.log.back().unwrap();
        assert_eq!(last.level, Level::Error);
        assert!(last.text.contains("boom"));
    }

    #[test]
    fn done_notes_the_knn_result() {
        let mut a = app(1, 1);
        press(&mut a, "s");
        ended(
            &mut a,
            0,
            Ended::Done {
                knn: Some((0.42, Some(0.35))),
            },
        );
        assert_eq!(
            a.sessions[0].note.as_deref(),
            Some("k-NN 42.0 % (random init 35.0 %)")
        );
        assert_eq!(a.sessions[0].progress(), 1.0);
    }

    #[test]
    fn quit_without_running_sessions_exits_at_once() {
        let mut a = app(1, 1);
        assert_eq!(press(&mut a, "q"), vec![Command::Exit]);
    }

    #[test]
    fn quit_with_running_sessions_asks_then_stops_them_first() {
        let mut a = app(3, 2);
        press(&mut a, "S");
        assert_eq!(press(&mut a, "q"), vec![]);
        assert_eq!(a.modal, Some(Modal::ConfirmQuit));
        assert_eq!(press(&mut a, "n"), vec![]);
        assert_eq!(a.modal, None);
        assert_eq!(
            press(&mut a, "<c-c>y"),
            vec![Command::Stop(0), Command::Stop(1)]
        );
        assert!(a.quitting);
        assert_eq!(states(&a), ["stopping", "stopping", "idle"]);
        let stopped = Ended::Stopped {
            step: 1,
            checkpoint: "c".into(),
        };
        // The queued session does not start while quitting; exit after the last stop.
        assert_eq!(ended(&mut a, 0, stopped.clone()), vec![]);
        assert_eq!(ended(&mut a, 1, stopped), vec![Command::Exit]);
    }

    #[test]
    fn quit_asked_twice_while_stopping_exits_now() {
        let mut a = app(1, 1);
        press(&mut a, "sqy");
        assert!(a.quitting);
        assert_eq!(press(&mut a, "q"), vec![Command::Exit]);
    }

    #[test]
    fn help_opens_and_closes_and_swallows_other_keys() {
        let mut a = app(1, 1);
        press(&mut a, "?");
        assert_eq!(a.modal, Some(Modal::Help));
        assert_eq!(press(&mut a, "s"), vec![], "keys under the help do nothing");
        press(&mut a, "<esc>");
        assert_eq!(a.modal, None);
        press(&mut a, "??");
        assert_eq!(a.modal, None);
    }

    #[test]
    fn panels_cycle_and_jump() {
        let mut a = app(1, 1);
        press(&mut a, "<tab>");
        assert_eq!(a.panel, Panel::Attention);
        press(&mut a, "<btab><btab>");
        assert_eq!(a.panel, Panel::Log);
        press(&mut a, "3");
        assert_eq!(a.panel, Panel::Plugins);
        press(&mut a, "1");
        assert_eq!(a.panel, Panel::Charts);
    }

    #[test]
    fn compare_toggles_on_the_selected_session() {
        let mut a = app(2, 1);
        press(&mut a, "c");
        assert_eq!(a.compare, Some(0));
        press(&mut a, "jc");
        assert_eq!(a.compare, Some(1));
        press(&mut a, "c");
        assert_eq!(a.compare, None);
    }

    #[test]
    fn log_scrolls_and_follows_again() {
        let mut a = app(1, 1);
        for i in 0..30 {
            update(
                &mut a,
                Msg::Log(LogLine {
                    level: Level::Warn,
                    source: "patchwork".into(),
                    text: format!("w{i}"),
                }),
            );
        }
        press(&mut a, "<pgup>");
        assert_eq!(a.log_scroll, 10);
        press(&mut a, "<pgup><pgup><pgup>");
        assert_eq!(a.log_scroll, 29, "cannot scroll past the first line");
        press(&mut a, "<pgdn>");
        assert_eq!(a.log_scroll, 19);
        press(&mut a, "<end>");
        assert_eq!(a.log_scroll, 0);
    }

    #[test]
    fn reload_rescans_and_counts_reloads() {
        let mut a = app(1, 1);
        let row = |name: &str, loaded: bool| PluginRow {
            name: name.into(),
            kind: "backbone".into(),
            version: "0.1.0".into(),
            file: format!("/p/lib{name}.so"),
            loaded,
            reloads: 0,
            error: (!loaded).then(|| "bad".to_string()),
        };
        a.plugins = vec![row("vit", true), row("broken", false)];
        assert_eq!(press(&mut a, "R"), vec![Command::ReloadPlugins]);
        update(
            &mut a,
            Msg::Plugins(vec![
                row("vit", true),
                row("broken", false),
                row("dino", true),
            ]),
        );
        let reloads: Vec<u32> = a.plugins.iter().map(|p| p.reloads).collect();
        assert_eq!(reloads, [1, 0, 0]);
        assert_eq!(a.log.back().unwrap().level, Level::Warn);
    }

    #[test]
    fn steps_fill_the_charts_and_the_eta() {
        let mut a = app(1, 1);
        press(&mut a, "s");
        event(
            &mut a,
            0,
            10.0,
            SessionEvent::StageStarted {
                stage: "pretrain (dino)".into(),
                total_steps: 100,
                start_step: 0,
            },
        );
        event(&mut a, 0, 11.0, step(1, 3.0));
        event(&mut a, 0, 20.0, step(10, 2.5));
        let row = &a.sessions[0];
        assert_eq!(row.stage, "pretrain (dino)");
        assert_eq!((row.step, row.total_steps), (10, 100));
        assert_eq!(row.last_loss, Some(2.5));
        assert_eq!(row.loss.points, vec![(1.0, 3.0), (10.0, 2.5)]);
        assert_eq!(row.lr.points.len(), 2);
        // 10 steps in 10 s: 90 steps left take 90 s.
        assert!((row.eta_secs.unwrap() - 90.0).abs() < 1e-9);
        assert!((row.progress() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn epochs_evals_checkpoints_logs_and_attention_are_kept() {
        let mut a = app(1, 1);
        press(&mut a, "s");
        event(&mut a, 0, 1.0, step(4, 2.0));
        event(
            &mut a,
            0,
            1.0,
            SessionEvent::Epoch {
                epoch: 0,
                mean_loss: 2.2,
            },
        );
        event(
            &mut a,
            0,
            1.0,
            SessionEvent::Eval {
                name: "knn@20 (trained)".into(),
                value: 0.5,
            },
        );
        event(
            &mut a,
            0,
            1.0,
            SessionEvent::Checkpoint {
                path: PathBuf::from("runs/w/s0/checkpoints/step-4.safetensors"),
            },
        );
        event(
            &mut a,
            0,
            1.0,
            SessionEvent::Log("warning: slow disk".into()),
        );
        let maps = Arc::new(AttentionMaps {
            label: "epoch 1".into(),
            heads: 1,
            grid: (1, 1),
            images: Vec::new(),
        });
        event(&mut a, 0, 1.0, SessionEvent::Attention(Arc::clone(&maps)));
        let row = &a.sessions[0];
        assert_eq!(row.epoch, 1);
        let names: Vec<&str> = row.evals.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["knn@20 (trained)"]);
        assert_eq!(row.evals[0].1.points, vec![(4.0, 0.5)]);
        assert!(
            row.checkpoint
                .as_ref()
                .unwrap()
                .ends_with("step-4.safetensors")
        );
        assert_eq!(row.attention.as_ref(), Some(&maps));
        assert!(
            a.log
                .iter()
                .any(|l| l.level == Level::Warn && l.text == "warning: slow disk")
        );
        assert!(a.log.iter().any(|l| l.text == "knn@20 (trained): 50.00 %"));
        assert!(
            a.log
                .iter()
                .any(|l| l.text == "epoch 1 done: mean loss 2.2000")
        );
    }

    #[test]
    fn hot_reloads_count_on_the_plugin_and_failures_show_its_error() {
        let mut a = app(1, 1);
        a.plugins = vec![PluginRow {
            name: "dino".into(),
            kind: "pretext".into(),
            version: "0.1.0".into(),
            file: "/p/libdino.so".into(),
            loaded: true,
            reloads: 0,
            error: None,
        }];
        press(&mut a, "s");
        let failed = SessionEvent::ReloadFailed {
            path: PathBuf::from("/p/libdino.so"),
            error: "plugin 'dino' panicked in create".into(),
        };
        event(&mut a, 0, 1.0, failed);
        assert_eq!(
            a.plugins[0].error.as_deref(),
            Some("plugin 'dino' panicked in create")
        );
        assert_eq!(a.log.back().unwrap().level, Level::Warn);
        let swapped = crate::session::reload::Swapped {
            plugin: "dino".into(),
            role: crate::session::reload::Role::Task,
            step: 12,
            versions: ("0.1.0".into(), "0.2.0".into()),
            hashes: (None, None),
            kept: 40,
            added: vec!["head.extra".into()],
            dropped: Vec::new(),
            reshaped: Vec::new(),
            kept_checksum: (7, 7),
            latency_secs: 0.05,
            swap_secs: 0.01,
        };
        event(&mut a, 0, 2.0, SessionEvent::Reloaded(Box::new(swapped)));
        let row = &a.plugins[0];
        assert_eq!(
            (row.reloads, row.version.as_str(), row.error.clone()),
            (1, "0.2.0", None)
        );
        let line = &a.log.back().unwrap().text;
        assert!(
            line.starts_with("hot reload: step 12: task 'dino' 0.1.0 → 0.2.0 (40 kept, 1 new"),
            "{line}"
        );
        assert_eq!(
            a.sessions[0].state,
            SessionState::Running,
            "the session goes on"
        );
    }

    #[test]
    fn tick_and_resize_change_nothing_but_the_clock() {
        let mut a = app(1, 1);
        let before = a.clone();
        assert_eq!(update(&mut a, Msg::Resize), vec![]);
        assert_eq!(a, before);
        assert_eq!(update(&mut a, Msg::Tick(2.5)), vec![]);
        assert_eq!(a.clock, 2.5);
    }

    #[test]
    fn events_for_an_unknown_session_are_ignored() {
        let mut a = app(1, 1);
        let before = a.clone();
        event(&mut a, 9, 0.0, step(1, 1.0));
        ended(&mut a, 9, Ended::Done { knn: None });
        assert_eq!(a, before);
    }
}
