//! `cargo xtask ci`: the CI sequence, cheapest checks first. Std-only so it
//! compiles in seconds.

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

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let ok = match task.as_str() {
        "ci" => ci(),
        "plugins" => cargo(&["build", "--workspace", "--lib"], &[]),
        _ => {
            eprintln!("usage: cargo xtask <ci|plugins>");
            false
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
