//! `ca-server`: the internal CA service and its admin client (see `ca-server --help`).

/// mimalloc: glibc malloc cost 15% of the CPU per issued certificate (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = ca_server::cli::Cli::parse();
    match ca_server::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
