//! The `patchwork` binary: parse the command line, run it, report errors.

use clap::Parser;

/// mimalloc instead of glibc's allocator: glibc returns every large tensor buffer to
/// the kernel and faults it in again (zeroed) on the next step. See
/// [`keep_freed_memory`] and `patchwork bench train`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (v3's option enum).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the kernel. A training step frees
/// and allocates the same large buffers every step; with the default 10 ms purge
/// delay each step faulted them in again (page faults over a ViT-Tiny/4 bench:
/// ~104 000 → ~1 300). The process keeps its peak, as PyTorch's caching does.
fn keep_freed_memory() {
    // SAFETY: sets one integer option; called first thing in `main`, before any
    // other thread exists (mimalloc's option setters are not thread safe).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Fixes the process's worker-thread count before any pool starts: `--threads`, else
/// `RAYON_NUM_THREADS`, else candle's count of the cores. candle's kernels, its worker
/// pool and gemm all read it from these variables; unset, candle re-derived it from
/// `/proc/cpuinfo` on every matrix product.
fn fix_threads(threads: Option<u16>) {
    let n = threads.map_or_else(candle_core::utils::get_num_threads, usize::from);
    let n = n.to_string();
    // SAFETY: called in `main` right after parsing the command line, before any other
    // thread exists, so nothing reads the environment concurrently.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", &n);
        std::env::set_var("CANDLE_NUM_THREADS", &n);
    }
}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    let cli = patchwork::cli::Cli::parse();
    fix_threads(cli.threads);
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
