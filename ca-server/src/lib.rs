//! The CA service: HTTPS API (enrollment, renewal, admin, EST) and the plain-HTTP status
//! listener (OCSP, CRL, issuer certificate).
//!
//! - [`config`]: the TOML configuration, strict.
//! - [`service`]: shared state and the CA operations (issue, revoke, audit).
//! - [`api`]: the axum routes; [`error`]: the one error type with stable codes.
//! - [`auth`]: client-certificate identity and admin roles; [`tls`]: rustls (ring) with
//!   optional client certificates.
//! - [`ratelimit`], [`metrics`]: protection and observability; [`duration`]: durations from
//!   requests and flags, range-checked; [`listener`]: connection caps and timeouts of both
//!   listeners; [`unauth`]: unauthenticated failures counted and summarised in the audit log.
//! - [`server`]: listeners, the server's own certificate, graceful shutdown; [`retention`]:
//!   the periodic pruning of expired certificates and finished tokens.
//! - [`audit_log`]: signed audit checkpoints, the audit export and its offline check.
//! - [`dev`]: `ca-server dev`; [`client`] and [`cli`]: the admin CLI; [`breakglass`]: the
//!   offline administrator certificate for recovery.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let cfg = ca_server::config::ServerConfig::load(std::path::Path::new("ca.toml"))?;
//! let running = ca_server::server::start_from_config(&cfg).await?;
//! running.wait_for_signal().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod api;
pub(crate) mod audit_log;
pub mod auth;
pub(crate) mod breakglass;
pub mod cli;
pub mod client;
pub mod config;
pub mod dev;
pub(crate) mod duration;
pub mod error;
pub(crate) mod listener;
pub mod metrics;
pub(crate) mod ratelimit;
pub mod retention;
pub mod server;
pub mod service;
pub mod status;
pub mod tls;
pub(crate) mod unauth;
