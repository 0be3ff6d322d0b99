//! `lapse`: the server (`lapse serve`) and the CLI that talks to it.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc returns freed memory to the system far better than glibc's malloc under the
/// server's bursty, many-threaded allocation (a sweep over 100,000 environments allocates and
/// frees tens of MB at once): measured with `lapse bench`, see ARCHITECTURE.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod check;
mod cli;
mod client;
mod database;
mod instance_manager;
mod migrate;
mod output;
mod serve;
mod shell;

fn main() -> ExitCode {
    // The process provider re-executes this binary for its helpers (an environment's
    // supervisor and init, exec): they must run before any thread starts.
    lapse_providers::process::helper::run_if_helper();
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
