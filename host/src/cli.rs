//! The `patchwork` command line (clap). Every command returns `anyhow::Result`;
//! `main` prints the error chain and exits non-zero.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::{
    plugins::PluginRegistry,
    session::{RunOptions, SessionControl, SessionEvent, run_session, train::StopReason},
    workspace::{overrides, schema},
};

/// Self-supervised ViT workbench.
#[derive(Debug, Parser)]
#[command(name = "patchwork", version, about, arg_required_else_help = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// A workspace to open in the terminal UI (`patchwork FILE` = `patchwork tui FILE`).
    pub file: Option<PathBuf>,
    /// Worker threads for the tensor kernels and matrix products, one pool for the
    /// process [default: the machine's cores, or `RAYON_NUM_THREADS`].
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

impl Cli {
    /// Whether this command line opens the terminal UI (which owns the screen, so
    /// logs go to its log panel instead of stderr).
    pub fn opens_tui(&self) -> bool {
        match self.command {
            Some(Command::Tui { .. } | Command::Dev { .. }) => true,
            Some(_) => false,
            None => self.file.is_some(),
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and validate a workspace (and the plugins it names).
    Check {
        /// Workspace file.
        file: PathBuf,
        /// Extra plugin directory.
        #[arg(long = "plugins")]
        plugin_dirs: Vec<PathBuf>,
    },
    /// Open a workspace in the terminal UI: start, pause, stop and compare its sessions.
    Tui {
        /// Workspace file.
        file: PathBuf,
        /// Override a field: `--set sessions.NAME.stages.0.epochs=3`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Run every session on this device (`cpu`, `cuda:0`); the same as
        /// `--set 'sessions.*.device=DEV'`.
        #[arg(long, value_name = "DEV")]
        device: Option<String>,
        /// Extra plugin directory.
        #[arg(long = "plugins")]
        plugin_dirs: Vec<PathBuf>,
    },
    /// The terminal UI, plus a watcher on the workspace's plugin sources: a change
    /// runs `cargo build` for that plugin and hot-reloads the new build.
    Dev {
        /// Workspace file.
        file: PathBuf,
        /// Override a field: `--set sessions.NAME.stages.0.epochs=3`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Run every session on this device (`cpu`, `cuda:0`); the same as
        /// `--set 'sessions.*.device=DEV'`.
        #[arg(long, value_name = "DEV")]
        device: Option<String>,
        /// Extra plugin directory.
        #[arg(long = "plugins")]
        plugin_dirs: Vec<PathBuf>,
    },
    /// Run a workspace's sessions headless.
    Run {
        /// Workspace file.
        file: PathBuf,
        /// Only this session (one with `seeds`: all its runs; `NAME-seedS`: one).
        #[arg(long)]
        session: Option<String>,
        /// Override a field: `--set sessions.NAME.stages.0.epochs=3`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Run every session on this device (`cpu`, `cuda:0`); the same as
        /// `--set 'sessions.*.device=DEV'`.
        #[arg(long, value_name = "DEV")]
        device: Option<String>,
        /// Continue from the last checkpoint.
        #[arg(long)]
        resume: bool,
        /// Stop each session after this many optimizer steps in all (checkpointing
        /// first); `--resume` continues.
        #[arg(long, value_name = "N")]
        max_steps: Option<u64>,
        /// Do not watch the plugin folders (by default a rebuilt plugin library is
        /// swapped into the running session at its next step).
        #[arg(long)]
        no_reload: bool,
        /// Extra plugin directory.
        #[arg(long = "plugins")]
        plugin_dirs: Vec<PathBuf>,
    },
    /// List the plugins found (name, kind, version, path, load error).
    Plugins {
        /// Directory to search (default: next to the executable).
        #[arg(long)]
        dir: Vec<PathBuf>,
    },
    /// Dataset tools.
    #[command(subcommand)]
    Data(DataCommand),
    /// Write a new plugin crate to build outside this repository.
    #[command(subcommand)]
    New(NewCommand),
    /// Write CLS features of images to a safetensors file.
    Embed(crate::bench::EmbedArgs),
    /// Measure training throughput: plugin path vs native model.
    Bench(crate::bench::BenchArgs),
    /// Print a run folder's provenance (manifest.json) and final metrics.
    Report {
        /// Run folder (`runs/<workspace>/<session>/`).
        run_dir: PathBuf,
    },
    /// Compare two run folders: config, provenance, metrics side by side.
    Diff {
        /// First run folder.
        a: PathBuf,
        /// Second run folder.
        b: PathBuf,
    },
}

/// `patchwork new ...`.
#[derive(Debug, Subcommand)]
pub enum NewCommand {
    /// A standalone plugin crate: Cargo.toml, a working implementation of its kind,
    /// unit tests, a README and an example workspace.
    Plugin {
        /// Plugin and crate name.
        name: String,
        /// What kind of plugin.
        #[arg(long, value_enum)]
        kind: crate::scaffold::Kind,
        /// The folder to create `NAME/` in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The patchwork-plugin-api crate folder (default: the checkout this binary
        /// was built from).
        #[arg(long)]
        api: Option<PathBuf>,
    },
}

/// `patchwork data ...`.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Write a PNG grid of raw images and their augmented (DINO multi-crop) views.
    Preview {
        /// Workspace file.
        file: PathBuf,
        /// Data source name in the workspace.
        #[arg(long)]
        source: String,
        /// Output PNG.
        #[arg(long, default_value = "preview.png")]
        out: PathBuf,
        /// Number of sample rows.
        #[arg(long, default_value_t = 8)]
        rows: usize,
        /// Augmentation seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

/// Directories searched for plugins: next to the executable, `PATCHWORK_PLUGIN_PATH`,
/// the workspace's `plugin_dirs` and `--plugins`.
pub fn plugin_dirs(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
    }
    if let Some(paths) = std::env::var_os("PATCHWORK_PLUGIN_PATH") {
        dirs.extend(std::env::split_paths(&paths));
    }
    dirs.extend(extra.iter().cloned());
    dirs
}

/// Reads and validates the workspace `file`; returns it and its text.
pub(crate) fn load_workspace(file: &Path) -> Result<(schema::Workspace, String)> {
    let source = std::fs::read_to_string(file)
        .with_context(|| format!("reading workspace '{}'", file.display()))?;
    let ws = schema::parse(&source, file)?;
    Ok((ws, source))
}

/// Every folder searched for the plugins of `ws` (the file at `file`), with `extra`.
pub(crate) fn search_dirs(ws: &schema::Workspace, file: &Path, extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ws
        .plugin_dirs
        .iter()
        .map(|d| schema::resolve(file, d))
        .collect();
    dirs.extend(extra.iter().cloned());
    plugin_dirs(&dirs)
}

fn registry_for(ws: &schema::Workspace, file: &Path, extra: &[PathBuf]) -> PluginRegistry {
    PluginRegistry::discover(&search_dirs(ws, file, extra))
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    if let (Some(file), Some(_)) = (&cli.file, &cli.command) {
        bail!(
            "give a workspace file or a command, not both ('{}' came before the command)",
            file.display()
        );
    }
    let Some(command) = cli.command else {
        return match cli.file {
            Some(file) => crate::tui::run(&file, &[], &[], false),
            None => bail!("give a workspace file or a command (see 'patchwork --help')"),
        };
    };
    match command {
        Command::Tui {
            file,
            sets,
            device,
            plugin_dirs,
        } => crate::tui::run(&file, &with_device(sets, device), &plugin_dirs, false),
        Command::Dev {
            file,
            sets,
            device,
            plugin_dirs,
        } => crate::tui::run(&file, &with_device(sets, device), &plugin_dirs, true),
        Command::Check { file, plugin_dirs } => check(&file, &plugin_dirs),
        Command::Run {
            file,
            session,
            sets,
            device,
            resume,
            max_steps,
            no_reload,
            plugin_dirs,
        } => run_workspace(
            &file,
            session.as_deref(),
            &with_device(sets, device),
            RunFlags {
                resume,
                max_steps,
                reload: !no_reload,
            },
            &plugin_dirs,
        ),
        Command::Plugins { dir } => {
            let dirs = if dir.is_empty() {
                plugin_dirs(&[])
            } else {
                dir
            };
            print_plugins(&PluginRegistry::discover(&dirs));
            Ok(())
        }
        Command::Data(DataCommand::Preview {
            file,
            source,
            out,
            rows,
            seed,
        }) => preview(&file, &source, &out, rows, seed),
        Command::New(NewCommand::Plugin {
            name,
            kind,
            dir,
            api,
        }) => {
            let req = crate::scaffold::NewPlugin {
                name,
                kind,
                dir,
                api,
            };
            let root = crate::scaffold::new_plugin(&req)?;
            println!(
                "wrote '{}': build it with `cargo build` there, then `patchwork run {}`",
                root.display(),
                root.join("workspace.ron").display()
            );
            Ok(())
        }
        Command::Embed(args) => crate::bench::embed(&args),
        Command::Bench(args) => crate::bench::bench(&args),
        Command::Report { run_dir } => {
            print!("{}", crate::session::inspect::report(&run_dir)?);
            Ok(())
        }
        Command::Diff { a, b } => {
            print!("{}", crate::session::inspect::diff(&a, &b)?);
            Ok(())
        }
    }
}

fn check(file: &Path, extra: &[PathBuf]) -> Result<()> {
    let (ws, _) = load_workspace(file)?;
    let registry = registry_for(&ws, file, extra);
    let mut problems = Vec::new();
    for s in &ws.sessions {
        if let Err(e) = registry.require(
            &s.backbone.name,
            patchwork_plugin_api::abi::PluginKind::BACKBONE,
        ) {
            problems.push(format!("session '{}': {e}", s.name));
        }
        for (plugin, kind, _) in s.stages.iter().filter_map(schema::Stage::plugin) {
            if let Err(e) = registry.require(&plugin.name, kind) {
                problems.push(format!("session '{}': {e}", s.name));
            }
        }
    }
    if !problems.is_empty() {
        bail!("{}: {}", file.display(), problems.join("; "));
    }
    println!(
        "{}: ok ({} session(s), {} data source(s))",
        file.display(),
        ws.sessions.len(),
        ws.data.len()
    );
    let base_dir = file.parent().unwrap_or(Path::new("."));
    let cache = crate::session::runner::cache_dir(&ws, file);
    for (name, src) in &ws.data {
        let summary = crate::data::source::open_splits(src, base_dir, Some(&cache))
            .and_then(|s| s.summary())
            .with_context(|| format!("{}: data source '{name}'", file.display()))?;
        println!("  data '{name}': {} — {summary}", src.kind());
    }
    Ok(())
}

fn print_plugins(reg: &PluginRegistry) {
    println!("{:<12} {:<13} {:<8} PATH", "NAME", "KIND", "VERSION");
    for p in &reg.plugins {
        println!(
            "{:<12} {:<13} {:<8} {}",
            p.name(),
            p.kind().name(),
            p.manifest.version,
            p.path.display()
        );
    }
    for (path, err) in &reg.errors {
        println!(
            "{:<12} {:<13} {:<8} {}\n  error: {}",
            "-",
            "-",
            "-",
            path.display(),
            err.replace('\n', "\n  ")
        );
    }
}

/// `patchwork run` switches.
struct RunFlags {
    resume: bool,
    max_steps: Option<u64>,
    reload: bool,
}

/// The flag SIGINT/SIGTERM set: the first signal asks the running session to stop after
/// its current step (checkpointing first); a second one exits at once (checkpoints are
/// written atomically, so the last one stays whole).
fn stop_on_signal() -> Arc<SessionControl> {
    let stop = Arc::new(SessionControl::new());
    let flag = Arc::clone(&stop);
    let installed = ctrlc::set_handler(move || {
        if flag.swap_stop() {
            eprintln!("second interrupt: exiting now (the last checkpoint is intact)");
            std::process::exit(130);
        }
        eprintln!(
            "interrupt: stopping after this step and writing a checkpoint (interrupt again to exit at once)"
        );
    });
    if let Err(e) = installed {
        tracing::warn!("cannot install the interrupt handler: {e}");
    }
    stop
}

/// `sets` followed by the override `--device` stands for.
fn with_device(mut sets: Vec<String>, device: Option<String>) -> Vec<String> {
    if let Some(device) = device {
        sets.push(format!("sessions.*.device={device}"));
    }
    sets
}

fn run_workspace(
    file: &Path,
    only: Option<&str>,
    sets: &[String],
    flags: RunFlags,
    extra: &[PathBuf],
) -> Result<()> {
    let (ws, source) = load_workspace(file)?;
    let ws = overrides::apply(ws, sets)?;
    let dirs = search_dirs(&ws, file, extra);
    let registry = PluginRegistry::discover(&dirs);
    // What runs: the workspace with its seeds expanded (`NAME-seedS`); the summary
    // groups the runs by the sessions as written.
    let written = ws;
    let ws = written.clone().expand_seeds();
    let sessions: Vec<schema::Session> = match only {
        Some(name) => written.runs_of(name).with_context(|| {
            let known: Vec<&str> = ws.sessions.iter().map(|s| s.name.as_str()).collect();
            format!(
                "no session '{name}' in '{}' (sessions: {})",
                file.display(),
                known.join(", ")
            )
        })?,
        None => ws.sessions.clone(),
    };
    let opts = RunOptions {
        resume: flags.resume,
        workspace_path: file.to_path_buf(),
        workspace_source: source,
        max_steps: flags.max_steps,
        control: stop_on_signal(),
        attention_images: 0,
    };
    let control = Arc::clone(&opts.control);
    let _watch = flags
        .reload
        .then(|| crate::session::reload::watch_and_offer(&dirs, move |offer| control.offer(offer)))
        .flatten();
    let resume_hint = format!("patchwork run {} --resume", file.display());
    let mut failed = Vec::new();
    for session in &sessions {
        let mut printer = Printer::new(&session.name);
        let outcome = run_session(&ws, session, &registry, &opts, &mut |e| printer.event(e));
        printer.finish();
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                // One failed session does not stop the others.
                eprintln!("session '{}' failed: {e}", session.name);
                failed.push(session.name.clone());
                continue;
            }
        };
        if let Some(stopped) = &outcome.stopped {
            let why = match stopped.reason {
                StopReason::MaxSteps => "reached --max-steps",
                StopReason::Interrupted => "interrupted",
            };
            println!(
                "session '{}' stopped at step {} ({why}); checkpoint '{}'; continue with: {resume_hint}",
                session.name,
                stopped.step,
                stopped.checkpoint.display()
            );
            if stopped.reason == StopReason::Interrupted {
                bail!(
                    "interrupted at step {} of session '{}'; continue with: {resume_hint}",
                    stopped.step,
                    session.name
                );
            }
            continue;
        }
        println!(
            "session '{}' done: {}",
            session.name,
            outcome.run_dir.join("report.md").display()
        );
        if let Some(k) = outcome.report.knn {
            let random = k
                .random_init
                .map(|r| format!("{:.1} %", 100.0 * r))
                .unwrap_or_else(|| "-".into());
            println!(
                "  k-NN@{}: trained {:.1} %, random init {random}",
                k.k,
                100.0 * k.trained
            );
        }
    }
    match crate::session::summary::write(&written, file) {
        Ok(path) => println!("summary of the workspace: {}", path.display()),
        Err(e) => eprintln!("warning: no workspace summary: {e}"),
    }
    if !failed.is_empty() {
        bail!(
            "{} of the workspace's sessions failed: {} (see the messages above)",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Shows session events: a progress bar on a terminal, plain lines otherwise.
struct Printer {
    name: String,
    bar: Option<indicatif::ProgressBar>,
    tty: bool,
    last_line: std::time::Instant,
}

impl Printer {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            bar: None,
            tty: std::io::stdout().is_terminal(),
            last_line: std::time::Instant::now(),
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => println!("[{}] {text}", self.name),
        }
    }

    fn event(&mut self, e: SessionEvent) {
        match e {
            SessionEvent::StageStarted {
                stage,
                total_steps,
                start_step,
            } => {
                self.line(&format!("{stage}: {total_steps} steps (from {start_step})"));
                if self.tty && total_steps > 0 {
                    let bar = indicatif::ProgressBar::new(total_steps);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta}]",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    bar.set_position(start_step);
                    self.bar = Some(bar);
                }
            }
            SessionEvent::Step {
                step,
                epoch,
                loss,
                lr,
                images_per_sec,
            } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(step);
                    bar.set_message(format!(
                        "epoch {epoch} loss {loss:.4} lr {lr:.2e} {images_per_sec:.1} img/s"
                    ));
                } else if self.last_line.elapsed().as_secs_f64() >= 5.0 {
                    self.last_line = std::time::Instant::now();
                    self.line(&format!("step {step} epoch {epoch} loss {loss:.4} lr {lr:.2e} {images_per_sec:.1} img/s"));
                }
            }
            SessionEvent::Epoch { epoch, mean_loss } => {
                self.line(&format!("epoch {epoch} mean loss {mean_loss:.4}"))
            }
            SessionEvent::Checkpoint { path } => tracing::debug!("checkpoint {}", path.display()),
            SessionEvent::Eval { name, value } => {
                self.line(&crate::session::events::eval_text(&name, value))
            }
            SessionEvent::Log(l) => self.line(&l),
            SessionEvent::Paused { step } => self.line(&format!("paused after step {step}")),
            SessionEvent::Resumed { step } => self.line(&format!("resumed at step {step}")),
            SessionEvent::Attention(_) => {}
            SessionEvent::Reloaded(s) => self.line(&format!("hot reload: {}", s.line())),
            SessionEvent::ReloadFailed { path, error } => self.line(&format!(
                "warning: '{}' was not swapped in (the old build keeps running): {error}",
                path.display()
            )),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn preview(file: &Path, source: &str, out: &Path, rows: usize, seed: u64) -> Result<()> {
    use crate::data::{preview, views};
    let (ws, _) = load_workspace(file)?;
    let data = crate::session::runner::open_source(&ws, source, file)?;
    let specs = views::dino_default(data.size, 4, (data.size / 2).max(1));
    let grid = preview::preview_grid(data.train.as_ref(), &specs, &data.stats, rows, seed)?;
    preview::write_preview(&grid, out)?;
    println!(
        "wrote '{}': {rows} rows of raw image + 2 global + 4 local DINO views",
        out.display()
    );
    Ok(())
}
