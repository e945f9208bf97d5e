//! What every binary of the workspace (`ca-server`, `ca-agent`, `ceremony`, `hsm-sim`) shares on
//! its command line:
//!
//! - [`version!`]: `0.1.0 (commit 03b27ff1a2b3, 2026-12-05)`, for `#[command(version = ...)]`,
//!   from the variable [`build::emit_commit`] sets in the crate's build script;
//! - [`generate::CompletionsArgs`] and [`generate::ManpagesArgs`] (feature `generate`): the
//!   `completions SHELL` subcommand (a shell completion script on stdout) and the hidden
//!   `manpages --dir DIR` subcommand (one roff page per command and subcommand), both made from
//!   the binary's own clap definition, so they cannot drift from it.
//!
//! ```ignore
//! // build.rs (with `[build-dependencies] cli-support = { workspace = true, default-features = false }`)
//! fn main() {
//!     cli_support::build::emit_commit();
//! }
//!
//! // main.rs
//! #[derive(clap::Parser)]
//! #[command(name = "hsm-sim", version = cli_support::version!())]
//! struct Cli { /* ... */ }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod build;
#[cfg(feature = "check")]
pub mod check;
#[cfg(feature = "generate")]
pub mod generate;

/// The crate version and the git commit it was built from, e.g. `0.1.0 (commit
/// 03b27ff1a2b3, 2026-12-05)`, `0.1.0 (commit 03b27ff1a2b3-dirty, 2026-12-05)` (uncommitted
/// changes), `0.1.0 (commit 03b27ff1a2b3)` (from `CA_GIT_COMMIT`, a build outside git) or
/// `0.1.0 (commit unknown)`. The calling crate's build script must run
/// [`build::emit_commit`]; without it this does not compile.
#[macro_export]
macro_rules! version {
    () => {
        concat!(
            env!("CARGO_PKG_VERSION"),
            " (commit ",
            env!("CA_BUILD_COMMIT"),
            ")"
        )
    };
}
