//! `ca-server`: the internal CA service and its admin client (see `ca-server --help`).

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
