//! The agent's side of the CA API: the contract crate's client ([`ca_api::ApiClient`]) trusting
//! only the pinned root, and the agent's own checks on top (the chain the CA sends must hold the
//! pinned root). Errors become the agent's [`Error`] with the pin in the message.

use crate::error::{Error, Result};
use ca_api::types::{EnrollRequest, IssuedResponse, RenewRequest};
use ca_api::{ApiClient, ClientError, ClientIdentity};
use std::time::Duration;

/// Largest answer accepted (certificates and OCSP responses are small).
pub const MAX_BODY: usize = 1 << 20;

/// The CA at `server`, reached over HTTPS and trusted through the pinned root only.
///
/// The TLS client is built for each exchange, not held: the daemon talks to the CA a few times
/// a day, and an idle daemon then keeps no TLS state (and touches no TLS code) between them.
#[derive(Clone, Debug)]
pub struct CaClient {
    server: String,
    pin: String,
    timeout: Duration,
}

impl CaClient {
    /// A client for `server` (`https://host:port`), trusting the root with fingerprint `pin`.
    pub fn new(server: &str, pin: &str, timeout: Duration) -> Result<CaClient> {
        let url: http::Uri = server.parse().map_err(|e| Error::Transport {
            url: server.to_string(),
            reason: format!("bad URL: {e}"),
        })?;
        if url.scheme_str() != Some("https") || url.host().is_none() {
            return Err(Error::Transport {
                url: server.to_string(),
                reason: "the CA must be reached over https://host[:port]".into(),
            });
        }
        Ok(CaClient {
            server: server.trim_end_matches('/').to_string(),
            pin: pin.to_string(),
            timeout,
        })
    }

    fn client(&self) -> Result<ApiClient> {
        Ok(ApiClient::pinned(&self.server, &self.pin)
            .map_err(|e| self.err(e))?
            .with_timeout(self.timeout)
            .with_user_agent(concat!("ca-agent/", env!("CARGO_PKG_VERSION")))
            .with_max_body(MAX_BODY))
    }

    /// The server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The pinned fingerprint.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    fn err(&self, e: ClientError) -> Error {
        Error::from_client(e, &self.server, &self.pin)
    }

    /// `GET /v1/chain`: the CA chain, checked against the pin (handshake and answer).
    pub async fn chain(&self) -> Result<Vec<Vec<u8>>> {
        let ans = self.client()?.chain().await.map_err(|e| self.err(e))?;
        let chain = crate::certs::pem_certs(ans.chain_pem.as_bytes(), "CA chain")?;
        let untrusted = |reason: String| Error::Untrusted {
            server: self.server().to_string(),
            pin: self.pin.clone(),
            reason,
        };
        if crate::certs::find_pinned(chain.iter().map(Vec::as_slice), &self.pin).is_none() {
            return Err(untrusted(
                "the CA chain the server returned has no root with the pinned fingerprint".into(),
            ));
        }
        if crate::config::normalize_fingerprint(&ans.root_fingerprint, "root_fingerprint")
            .ok()
            .as_deref()
            != Some(self.pin.as_str())
        {
            return Err(untrusted(format!(
                "the server names root {}",
                ans.root_fingerprint
            )));
        }
        Ok(chain)
    }

    /// `POST /v1/enroll` with a one-time token.
    pub async fn enroll(&self, token: &str, csr_pem: &str) -> Result<IssuedResponse> {
        let req = EnrollRequest {
            token: token.to_string(),
            csr: csr_pem.to_string(),
        };
        self.client()?.enroll(&req).await.map_err(|e| self.err(e))
    }

    /// `POST /v1/renew` over mTLS with the current certificate.
    pub async fn renew(&self, identity: ClientIdentity, csr_pem: &str) -> Result<IssuedResponse> {
        let req = RenewRequest {
            csr: csr_pem.to_string(),
        };
        self.client()?
            .with_identity(identity)
            .map_err(|e| Error::Key(format!("client certificate refused by rustls: {e}")))?
            .renew(&req)
            .await
            .map_err(|e| self.err(e))
    }
}
