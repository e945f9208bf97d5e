//! `ca-server`: the internal CA service and its admin client (see `ca-server --help`).

/// mimalloc: glibc malloc cost 15% of the CPU per issued certificate (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = ca_server::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(ca_server::cli::run(cli));
    // Shutdown order (README "Shutdown"): `run` stopped the listeners, the status tasks and the
    // OCSP issuance signer thread, and flushed the store. Dropping the runtime waits for every
    // blocking task still running (one that outlived the grace period); only then is the
    // PKCS#11 module finalized, with no thread left inside it. main returns normally: no
    // process::exit racing other threads.
    drop(runtime);
    ca_core::signer::pkcs11::finalize_modules();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The store needs a restart to write again (README "Store faults"): the status the
        // supervisor restarts on.
        Err(e) if e.is::<ca_server::service::RestartRequired>() => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(ca_server::service::EXIT_STORE_RESTART)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
