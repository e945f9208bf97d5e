//! The HTTP API contract of the internal CA (docs/API.md), in one place for the server, the
//! agent, the admin CLI and the tests:
//!
//! - [`routes`]: the paths of every route;
//! - [`types`]: the JSON request and answer bodies;
//! - [`Code`]: the stable error codes, their HTTP statuses and wire strings, and [`ErrorBody`];
//! - [`ApiClient`]: the one client (rustls over mTLS, the server checked against the root or a
//!   pinned root fingerprint and required to carry the caServerIdentity mark), with error
//!   answers decoded into [`ClientError::Api`].
//!
//! It depends only on the light part of `ca-core` (no HSM, store or issuance code), so the agent
//! links none of them.
//!
//! ```no_run
//! # async fn f() -> Result<(), ca_api::ClientError> {
//! use ca_api::types::{TokenCreateRequest, TokenCreateResponse};
//! let root = std::fs::read("root.pem").unwrap_or_default();
//! let (cert, key) = (std::fs::read("admin.crt").unwrap_or_default(), std::fs::read("admin.key").unwrap_or_default());
//! let admin = ca_api::ApiClient::new("https://127.0.0.1:8443", &root, Some((&cert, &key)))?;
//! let req = TokenCreateRequest { common_name: Some("web.svc".into()), ..Default::default() };
//! match admin.post_json::<_, TokenCreateResponse>(ca_api::routes::ADMIN_TOKENS, &req).await {
//!     Ok(t) => println!("token {} expires {}", t.id, t.expires_at),
//!     Err(e) if e.api_code() == Some(ca_api::Code::Forbidden) => eprintln!("role too weak"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
mod code;
pub mod routes;
pub mod types;

pub use client::{ApiClient, ClientError, ClientIdentity, RawResponse};
pub use code::{Code, ErrorBody, UnknownCode};
