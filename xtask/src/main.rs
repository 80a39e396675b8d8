//! `cargo xtask ci`: the CI sequence, cheapest checks first. `cargo xtask cuda`: the
//! release build with CUDA (toolkit from `xtask/cuda-env.sh`) and the plugins beside
//! it. Std-only so it compiles in seconds.

use std::process::{Command, ExitCode};

fn cargo(args: &[&str], env: &[(&str, &str)]) -> bool {
    eprintln!("\n==> cargo {}", args.join(" "));
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    match cmd.status() {
        Ok(s) => s.success(),
        Err(e) => {
            eprintln!("cannot run cargo: {e}");
            false
        }
    }
}

/// One CI step: cargo arguments and extra environment.
type Step<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

fn ci() -> bool {
    let steps: [Step<'_>; 5] = [
        (&["fmt", "--all", "--", "--check"], &[]),
        (
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            &[],
        ),
        // Plugins and fixture plugins are cdylibs the end-to-end tests load from
        // target/debug; cargo gives tests no path to them, so build them first.
        (&["build", "--workspace"], &[]),
        (&["test", "--workspace"], &[]),
        (
            &["doc", "-p", "patchwork-plugin-api", "--no-deps"],
            &[("RUSTDOCFLAGS", "-D warnings")],
        ),
    ];
    for (args, env) in steps {
        if !cargo(args, env) {
            eprintln!("\nxtask ci: FAILED at `cargo {}`", args.join(" "));
            return false;
        }
    }
    eprintln!("\nxtask ci: all checks passed");
    true
}

/// The package names of the plugin crates under `plugins/`.
fn plugin_packages() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("plugins") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("Cargo.toml")).ok())
        .filter_map(|toml| {
            toml.lines()
                .find_map(|l| l.strip_prefix("name = "))
                .map(|n| n.trim().trim_matches('"').to_string())
        })
        .collect();
    names.sort();
    names
}

/// `. xtask/cuda-env.sh`, then the host with `--features cuda` and the plugins, in
/// release: everything `target/release/patchwork --device cuda:0` needs.
fn cuda() -> bool {
    let mut script = String::from(
        ". xtask/cuda-env.sh && cargo build --release -p patchwork --features cuda && cargo build --release",
    );
    for name in plugin_packages() {
        script.push_str(" -p ");
        script.push_str(&name);
    }
    eprintln!("\n==> sh -c '{script}'");
    match Command::new("sh").args(["-c", &script]).status() {
        Ok(s) => s.success(),
        Err(e) => {
            eprintln!("cannot run sh: {e}");
            false
        }
    }
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let ok = match task.as_str() {
        "ci" => ci(),
        "plugins" => cargo(&["build", "--workspace", "--lib"], &[]),
        "cuda" => cuda(),
        _ => {
            eprintln!("usage: cargo xtask <ci|plugins|cuda>");
            false
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
