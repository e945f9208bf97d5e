//! `ca-agent`: keeps a host's certificates short-lived without anyone touching them.
//!
//! - [`agent`]: enrollment with a one-time token, and the renewal cycle (renew over mTLS with a
//!   fresh key, verify, install, reload, prove).
//! - [`install`]: atomic installation through versioned directories and one `current` symlink,
//!   so key and certificate never mismatch on disk, even if the agent is killed.
//! - [`ca`]: the CA API through the contract crate's client ([`ca_api`]), trusting only the
//!   pinned root (no trust on first use); [`tls`]: the renewal identity and the probe's recorder.
//! - [`reload`], [`probe`]: reload actions and the proof that the service serves the new serial.
//! - [`ocsp`]: OCSP staple files; [`state`] and [`status`]: what `ca-agent status` shows.
//! - [`config`]: `agent.toml`; [`daemon`]: `ca-agent run`.
//!
//! ```no_run
//! # async fn f() -> ca_agent::Result<()> {
//! let cfg = ca_agent::config::Config::load(std::path::Path::new("/etc/ca-agent/agent.toml"))?;
//! let agent = ca_agent::agent::Agent::new(cfg.clone())?;
//! for c in &cfg.certificates {
//!     let report = agent.cycle(c, false).await;
//!     println!("{}: {:?}, next check {}", c.name, report.outcome, report.next_wake);
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod agent;
pub mod backoff;
pub mod ca;
pub mod certs;
pub mod config;
pub mod daemon;
pub mod error;
pub mod install;
pub mod keys;
pub mod ocsp;
pub mod probe;
pub mod reload;
pub mod state;
pub mod status;
pub mod tls;

pub use error::{Error, Result};
