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
#[derive(Clone, Debug)]
pub struct CaClient {
    client: ApiClient,
    pin: String,
}

impl CaClient {
    /// A client for `server` (`https://host:port`), trusting the root with fingerprint `pin`.
    pub fn new(server: &str, pin: &str, timeout: Duration) -> Result<CaClient> {
        let client = ApiClient::pinned(server, pin)
            .map_err(|e| Error::from_client(e, server, pin))?
            .with_timeout(timeout)
            .with_user_agent(concat!("ca-agent/", env!("CARGO_PKG_VERSION")))
            .with_max_body(MAX_BODY);
        Ok(CaClient {
            client,
            pin: pin.to_string(),
        })
    }

    /// The server URL.
    pub fn server(&self) -> &str {
        self.client.url()
    }

    /// The pinned fingerprint.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    fn err(&self, e: ClientError) -> Error {
        Error::from_client(e, self.client.url(), &self.pin)
    }

    /// `GET /v1/chain`: the CA chain, checked against the pin (handshake and answer).
    pub async fn chain(&self) -> Result<Vec<Vec<u8>>> {
        let ans = self.client.chain().await.map_err(|e| self.err(e))?;
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
        self.client.enroll(&req).await.map_err(|e| self.err(e))
    }

    /// `POST /v1/renew` over mTLS with the current certificate.
    pub async fn renew(&self, identity: ClientIdentity, csr_pem: &str) -> Result<IssuedResponse> {
        let req = RenewRequest {
            csr: csr_pem.to_string(),
        };
        self.client
            .with_identity(identity)
            .map_err(|e| Error::Key(format!("client certificate refused by rustls: {e}")))?
            .renew(&req)
            .await
            .map_err(|e| self.err(e))
    }
}
