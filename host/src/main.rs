//! The `patchwork` binary: parse the command line, run it, report errors.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = patchwork::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("PATCHWORK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    if cli.opens_tui() {
        // The UI owns the screen: log lines go to its log panel.
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(patchwork::tui::log_sink::LogSink)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    match patchwork::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
