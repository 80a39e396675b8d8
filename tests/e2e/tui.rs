//! The terminal UI driven for real: the binary inside tmux, keys sent with
//! `send-keys`, the screen read with `capture-pane`. `.ci/run` installs tmux when the
//! machine lacks it.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use patchwork_tests::{patchwork_bin, plugin_lib, repo_root, run, run_patchwork, temp_dir};

use crate::{TINY_VIT, faulty, pretrain, write_workspace};

/// A tmux server of its own (`-L`), with one window running a command.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `command` (a shell line) in a `width`×`height` window.
    fn start(name: &str, width: u16, height: u16, command: &str) -> Self {
        let tmux = Self {
            socket: format!("patchwork-e2e-{name}-{}", std::process::id()),
        };
        let out = run(tmux.cmd().args([
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            command,
        ]));
        assert!(
            out.success(),
            "cannot start tmux (is it installed? .ci/run installs it): {}",
            out.describe()
        );
        tmux
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    /// Sends keys (tmux key names: `s`, `p`, `Space`, `4`, `q`, `y`).
    fn keys(&self, keys: &[&str]) {
        let out = run(self.cmd().args(["send-keys", "-t", "main"]).args(keys));
        assert!(out.success(), "{}", out.describe());
    }

    /// The visible text of the pane.
    fn screen(&self) -> String {
        run(self.cmd().args(["capture-pane", "-p", "-t", "main"])).stdout
    }

    /// Polls the screen until `done` holds, or fails after `timeout` showing the screen.
    fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the UI has exited with status 0 and returns what the pane shows
    /// then (the shell line of [`tui_command`] prints the status).
    fn wait_exit(&self, timeout: Duration) -> String {
        let last = self.wait_for("the UI to exit", timeout, |s| s.contains("[exit "));
        assert!(last.contains("[exit 0]"), "{last}");
        last
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// A shell word for `text`.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The shell line that runs `patchwork SUB WORKSPACE ARGS...` (with `env`, a
/// `NAME=value ` prefix or empty), then prints `[exit STATUS]` and keeps the pane
/// open (the server is killed on drop).
fn ui_command(env: &str, sub: &str, workspace: &Path, args: &[String]) -> String {
    let mut line = format!(
        "{env}{} {sub} {}",
        quoted(&patchwork_bin().display().to_string()),
        quoted(&workspace.display().to_string())
    );
    for arg in args {
        line.push(' ');
        line.push_str(&quoted(arg));
    }
    line.push_str("; echo \"[exit $?]\"; exec sleep 600");
    line
}

/// [`ui_command`] for `patchwork tui` with `--set` overrides `sets`.
fn tui_command(workspace: &Path, sets: &[String]) -> String {
    let args: Vec<String> = sets
        .iter()
        .flat_map(|s| ["--set".to_string(), s.clone()])
        .collect();
    ui_command("", "tui", workspace, &args)
}

const MINUTES: Duration = Duration::from_secs(60);

#[test]
fn quickstart_starts_pauses_resumes_finishes_and_quits() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    let dir = temp_dir("tui-quickstart");
    let ws = repo_root().join("workspaces").join("quickstart.ron");
    let sets = [
        format!("output={:?}", dir.display().to_string()),
        "sessions.vit-dino.stages.0.epochs=3".to_string(),
    ];
    let tmux = Tmux::start("quickstart", 100, 30, &tui_command(&ws, &sets));
    tmux.wait_for("the sessions panel", MINUTES, |s| {
        s.contains("vit-dino") && s.contains("idle")
    });

    tmux.keys(&["s"]);
    tmux.wait_for("a training step", MINUTES, |s| {
        s.contains("running") && s.contains("pretrain")
    });
    tmux.keys(&["p"]);
    tmux.wait_for("the paused state", MINUTES, |s| s.contains("paused"));
    // The log panel shows where it paused.
    tmux.keys(&["4"]);
    let paused = tmux.wait_for("the pause in the log", MINUTES, |s| {
        s.contains("paused after step")
    });
    assert!(!paused.contains("done"), "{paused}");
    tmux.keys(&["Space"]);
    tmux.wait_for("the resume", MINUTES, |s| s.contains("resumed at step"));
    let done = tmux.wait_for("the end of the session", 5 * MINUTES, |s| {
        s.contains("done") && s.contains("k-NN")
    });
    assert!(!done.contains("failed"), "{done}");
    // Charts and attention have something to show after a run.
    tmux.keys(&["1"]);
    tmux.wait_for("the loss chart", MINUTES, |s| s.contains("loss"));
    tmux.keys(&["2"]);
    tmux.wait_for("attention maps", MINUTES, |s| s.contains("trained"));

    tmux.keys(&["q"]);
    let last = tmux.wait_exit(MINUTES);
    assert!(
        last.contains("session 'vit-dino': done at step 96"),
        "the summary after the UI:\n{last}"
    );

    let run_dir = dir.join("quickstart").join("vit-dino");
    let report = std::fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(report.contains("k-NN"), "{report}");
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    // The evaluations' records (k-NN and attention, at random init and the end)
    // carry an "event"; the steps' do not.
    assert_eq!(
        metrics.lines().filter(|l| !l.contains("\"event\"")).count(),
        96,
        "one line per step, none lost to the pause"
    );
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("\"event\":\"eval\""))
            .count(),
        4
    );
    let manifest = std::fs::read_to_string(run_dir.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"done\""), "{manifest}");
}

const DINO: &str = r#"Plugin(name: "dino", config: (out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, local_crops: 0, global_size: 16, momentum_teacher: 0.99))"#;

/// Two sessions side by side (`parallel: 2`): `bad` panics in its plugin at step 2,
/// `good` trains long enough to still be running when asked to quit.
fn two_sessions(output: &Path) -> String {
    let output = format!("{:?}", output.display().to_string());
    let session = |name: &str, task: &str, epochs: u32| {
        format!(
            r#"Session(name: "{name}", data: "shapes", backbone: {TINY_VIT}, stages: [{}], seed: 0, device: "cpu", checkpoint_every: 4)"#,
            pretrain(task, epochs)
        )
    };
    format!(
        r#"Workspace(
    name: "e2e",
    output: {output},
    parallel: 2,
    data: {{ "shapes": Shapes((classes: 3, images: 64, val_images: 32, size: 16, seed: 1)) }},
    sessions: [
        {},
        {},
    ],
)
"#,
        session("bad", &faulty("(panic_at_step: Some(2))"), 1),
        session("good", DINO, 400)
    )
}

#[test]
fn a_failed_session_shows_its_message_while_the_other_runs_and_quit_checkpoints() {
    plugin_lib("patchwork-vit");
    plugin_lib("patchwork-dino");
    plugin_lib("patchwork-fixture-faulty");
    let dir = temp_dir("tui-failure");
    let output = dir.join("runs");
    let ws = write_workspace(&dir, &two_sessions(&output));
    let tmux = Tmux::start("failure", 120, 40, &tui_command(&ws, &[]));
    tmux.wait_for("the sessions panel", MINUTES, |s| s.contains("good"));

    tmux.keys(&["S"]);
    let screen = tmux.wait_for("the failure", MINUTES, |s| {
        s.contains("failed") && s.contains("panicked")
    });
    assert!(
        screen.contains("running"),
        "the other session goes on:\n{screen}"
    );

    tmux.keys(&["q"]);
    tmux.wait_for("the quit question", MINUTES, |s| s.contains("quit?"));
    tmux.keys(&["y"]);
    let last = tmux.wait_exit(MINUTES);
    assert!(
        last.contains("session 'good': stopped at step"),
        "the summary after the UI:\n{last}"
    );
    assert!(last.contains("session 'bad': failed"), "{last}");
    assert!(last.contains("panicked"), "{last}");

    // The stopped session left a checkpoint to restart from.
    let checkpoints = output.join("e2e").join("good").join("checkpoints");
    let saved = patchwork::engine::checkpoint::list(&checkpoints).unwrap();
    assert!(
        !saved.is_empty(),
        "no checkpoint in {}",
        checkpoints.display()
    );
}

#[test]
fn without_a_terminal_it_points_to_patchwork_run() {
    plugin_lib("patchwork-vit");
    let ws = repo_root().join("workspaces").join("quickstart.ron");
    for args in [vec!["tui".to_string()], Vec::new()] {
        let mut args = args;
        args.push(ws.display().to_string());
        let out = run_patchwork(&args);
        crate::assert_fails_with(&out, &["needs a terminal", "patchwork run"]);
    }
}

#[test]
fn dev_rebuilds_a_changed_plugin_and_swaps_it_into_the_running_session() {
    plugin_lib("patchwork-vit");
    let dir = temp_dir("tui-dev");
    let out = run_patchwork([
        "new",
        "plugin",
        "live-task",
        "--kind",
        "pretext",
        "--dir",
        &dir.display().to_string(),
    ]);
    assert!(out.success(), "{}", out.describe());
    let krate = dir.join("live-task");
    // Shared with the other tests that build plugins outside the repository, so the
    // plugin API compiles once; `patchwork dev`'s cargo inherits it.
    let target = crate::scaffold::shared_target();
    let built = run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--quiet", "--lib"])
            .current_dir(&krate)
            .env("CARGO_TARGET_DIR", &target),
    );
    assert!(built.success(), "{}", built.describe());
    let libs = target.join("debug");
    let output = dir.join("runs");
    let sets = [
        format!("output={:?}", output.display().to_string()),
        "sessions.try.stages.0.epochs=400".to_string(),
    ];
    let mut args: Vec<String> = sets
        .iter()
        .flat_map(|s| ["--set".to_string(), s.clone()])
        .collect();
    args.extend(["--plugins".to_string(), libs.display().to_string()]);
    let env = format!(
        "CARGO_TARGET_DIR={} ",
        quoted(&target.display().to_string())
    );
    let line = ui_command(&env, "dev", &krate.join("workspace.ron"), &args);
    let tmux = Tmux::start("dev", 120, 40, &line);
    tmux.keys(&["4"]);
    tmux.wait_for("the source watch", MINUTES, |s| s.contains("dev: watching"));
    tmux.keys(&["s"]);
    tmux.wait_for("training", MINUTES, |s| s.contains("running"));

    // Change the loss's behaviour: the rebuilt task reports a metric the old one did not.
    let lib = krate.join("src").join("lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    let changed = source.replace(
        "Ok(StepOutput::loss(loss))",
        "Ok(StepOutput { loss, metrics: vec![(\"edited\".to_string(), 1.0)] })",
    );
    assert_ne!(
        changed, source,
        "the template's step should end with StepOutput::loss"
    );
    std::fs::write(&lib, changed).unwrap();
    tmux.wait_for("the rebuild and swap", 5 * MINUTES, |s| {
        s.contains("hot reload: step")
    });
    tmux.keys(&["x"]);
    tmux.wait_for("the stop", MINUTES, |s| s.contains("stopped"));
    tmux.keys(&["q"]);
    tmux.wait_exit(MINUTES);
    let metrics =
        std::fs::read_to_string(output.join("live-task-example/try/metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"event\":\"reload\""), "{metrics}");
    assert!(metrics.contains("\"edited\":1.0"), "the new build ran");
}
