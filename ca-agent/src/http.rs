//! A small HTTP/1.1 client for the CA API (HTTPS, pinned root, optional mTLS) and for plain-HTTP
//! OCSP. One connection per exchange: the agent talks to the CA a few times a day.

use crate::error::{Error, Result};
use crate::tls::{pinned_client_config, ClientIdentity, PinnedRootVerifier};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Largest response body accepted (certificates and OCSP responses are small).
const MAX_BODY: usize = 1 << 20;

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Vec<u8>,
}

/// The CA's `Issued` answer (docs/API.md).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Issued {
    /// Leaf PEM.
    pub certificate: String,
    /// Issuing CA PEM then root PEM.
    pub chain: String,
    /// Serial, hex.
    pub serial: String,
    /// RFC 3339.
    #[serde(default)]
    pub not_before: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub not_after: Option<String>,
}

#[derive(Deserialize)]
struct ChainAnswer {
    chain_pem: String,
    #[serde(default)]
    root_fingerprint: Option<String>,
}

#[derive(Deserialize)]
struct ApiErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

/// Client of the CA's HTTPS API, trusting only the pinned root.
#[derive(Clone, Debug)]
pub struct CaClient {
    base: String,
    host: String,
    port: u16,
    pin: String,
    timeout: Duration,
}

fn split_url(url: &str, default_port: u16) -> Result<(String, String, u16, String)> {
    let uri: http::Uri = url.parse().map_err(|e| Error::Transport {
        url: url.to_string(),
        reason: format!("bad URL: {e}"),
    })?;
    let host = uri.host().ok_or_else(|| Error::Transport {
        url: url.to_string(),
        reason: "URL has no host".into(),
    })?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(default_port);
    let scheme = uri.scheme_str().unwrap_or("http").to_string();
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    Ok((scheme, host, port, path))
}

impl CaClient {
    /// A client for `server` (`https://host:port`), trusting the root with fingerprint `pin`.
    pub fn new(server: &str, pin: &str, timeout: Duration) -> Result<CaClient> {
        let (scheme, host, port, _) = split_url(server, 443)?;
        if scheme != "https" {
            return Err(Error::Transport {
                url: server.into(),
                reason: "the CA must be reached over https://".into(),
            });
        }
        Ok(CaClient {
            base: server.trim_end_matches('/').to_string(),
            host,
            port,
            pin: pin.to_string(),
            timeout,
        })
    }

    /// The server URL.
    pub fn server(&self) -> &str {
        &self.base
    }

    /// The pinned fingerprint.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    async fn exchange(
        &self,
        method: http::Method,
        path: &str,
        json: Option<Vec<u8>>,
        identity: Option<ClientIdentity>,
    ) -> Result<Response> {
        let url = format!("{}{path}", self.base);
        let verifier = PinnedRootVerifier::new(&self.pin);
        let cfg = pinned_client_config(verifier.clone(), identity)?;
        let transport = |reason: String| Error::Transport {
            url: url.clone(),
            reason,
        };
        let fut = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| transport(format!("connect: {e}")))?;
            let name = ServerName::try_from(self.host.clone())
                .map_err(|e| transport(format!("bad server name: {e}")))?;
            let tls = match tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
            {
                Ok(t) => t,
                Err(e) => {
                    // The pin check is the first thing that can fail: report it as such.
                    if let Some(reason) = verifier.last_failure() {
                        return Err(Error::Untrusted {
                            server: self.base.clone(),
                            pin: self.pin.clone(),
                            reason,
                        });
                    }
                    return Err(transport(format!("TLS handshake: {e}")));
                }
            };
            let mut req = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, format!("{}:{}", self.host, self.port))
                .header(
                    http::header::USER_AGENT,
                    concat!("ca-agent/", env!("CARGO_PKG_VERSION")),
                );
            if json.is_some() {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(json.unwrap_or_default())))
                .map_err(|e| transport(format!("request: {e}")))?;
            send(tls, req).await.map_err(transport)
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| Error::Transport {
                url: url.clone(),
                reason: format!("no answer within {:?}", self.timeout),
            })?
    }

    /// `GET /v1/chain`: the CA chain, checked against the pin (handshake and answer).
    pub async fn chain(&self) -> Result<Vec<Vec<u8>>> {
        let resp = self
            .exchange(http::Method::GET, "/v1/chain", None, None)
            .await?;
        let url = format!("{}/v1/chain", self.base);
        let ans: ChainAnswer = parse_json(&url, resp)?;
        let chain = crate::certs::pem_certs(ans.chain_pem.as_bytes(), "CA chain")?;
        let untrusted = |reason: String| Error::Untrusted {
            server: self.base.clone(),
            pin: self.pin.clone(),
            reason,
        };
        if crate::certs::find_pinned(chain.iter().map(Vec::as_slice), &self.pin).is_none() {
            return Err(untrusted(
                "the CA chain the server returned has no root with the pinned fingerprint".into(),
            ));
        }
        if let Some(fp) = ans.root_fingerprint {
            if crate::config::normalize_fingerprint(&fp, "root_fingerprint")
                .ok()
                .as_deref()
                != Some(self.pin.as_str())
            {
                return Err(untrusted(format!("the server names root {fp}")));
            }
        }
        Ok(chain)
    }

    /// `POST /v1/enroll` with a one-time token.
    pub async fn enroll(&self, token: &str, csr_pem: &str) -> Result<Issued> {
        let body = serde_json::json!({ "token": token, "csr": csr_pem });
        let resp = self
            .exchange(
                http::Method::POST,
                "/v1/enroll",
                Some(body.to_string().into_bytes()),
                None,
            )
            .await?;
        parse_json(&format!("{}/v1/enroll", self.base), resp)
    }

    /// `POST /v1/renew` over mTLS with the current certificate.
    pub async fn renew(&self, identity: ClientIdentity, csr_pem: &str) -> Result<Issued> {
        let body = serde_json::json!({ "csr": csr_pem });
        let resp = self
            .exchange(
                http::Method::POST,
                "/v1/renew",
                Some(body.to_string().into_bytes()),
                Some(identity),
            )
            .await?;
        parse_json(&format!("{}/v1/renew", self.base), resp)
    }
}

/// Parse a JSON success body, or turn an error answer into [`Error::Api`].
fn parse_json<T: serde::de::DeserializeOwned>(url: &str, resp: Response) -> Result<T> {
    if !(200..300).contains(&resp.status) {
        return Err(api_error(url, &resp));
    }
    serde_json::from_slice(&resp.body).map_err(|e| Error::Api {
        url: url.to_string(),
        status: resp.status,
        code: "bad_response".into(),
        message: format!("answer is not the expected JSON: {e}"),
        retry_after: None,
    })
}

/// An error answer as [`Error::Api`], with the stable code and `Retry-After`.
pub fn api_error(url: &str, resp: &Response) -> Error {
    let retry_after = resp
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let (code, message) = match serde_json::from_slice::<ApiErrorBody>(&resp.body) {
        Ok(b) => (b.code, b.message),
        Err(_) => (
            format!("http_{}", resp.status),
            String::from_utf8_lossy(&resp.body)
                .chars()
                .take(200)
                .collect(),
        ),
    };
    Error::Api {
        url: url.to_string(),
        status: resp.status,
        code,
        message,
        retry_after,
    }
}

async fn send<S>(io: S, req: http::Request<Full<Bytes>>) -> std::result::Result<Response, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"));
    let out = match resp {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let body = http_body_util::Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes()
                .to_vec();
            Ok(Response {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        }
        Err(e) => Err(e),
    };
    driver.abort();
    out
}

/// One plain-HTTP exchange (OCSP, RFC 6960 A.1 is over http://).
pub async fn plain_http(
    url: &str,
    method: http::Method,
    content_type: Option<&str>,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Response> {
    let (scheme, host, port, path) = split_url(url, 80)?;
    let transport = |reason: String| Error::Transport {
        url: url.to_string(),
        reason,
    };
    if scheme != "http" {
        return Err(transport("only http:// is supported here".into()));
    }
    let fut = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| transport(format!("connect: {e}")))?;
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, format!("{host}:{port}"));
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| transport(format!("request: {e}")))?;
        send(tcp, req).await.map_err(transport)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| transport(format!("no answer within {timeout:?}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_keep_code_and_retry_after() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        let resp = Response {
            status: 429,
            headers,
            body: br#"{"code":"rate_limited","message":"slow down"}"#.to_vec(),
        };
        let e = api_error("https://x/v1/renew", &resp);
        assert_eq!(e.api_code(), Some("rate_limited"));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(e.is_transient());
        let resp = Response {
            status: 403,
            headers: http::HeaderMap::new(),
            body: br#"{"code":"cert_revoked","message":"revoked"}"#.to_vec(),
        };
        let e = api_error("https://x/v1/renew", &resp);
        assert_eq!(e.api_code(), Some("cert_revoked"));
        assert!(!e.is_transient());
        let resp = Response {
            status: 502,
            headers: http::HeaderMap::new(),
            body: b"<html>bad gateway</html>".to_vec(),
        };
        let e = api_error("https://x/v1/renew", &resp);
        assert_eq!(e.api_code(), Some("http_502"));
        assert!(e.is_transient());
    }

    #[test]
    fn urls_split() {
        let (s, h, p, path) = split_url("http://127.0.0.1:8080/ocsp", 80).unwrap();
        assert_eq!(
            (s.as_str(), h.as_str(), p, path.as_str()),
            ("http", "127.0.0.1", 8080, "/ocsp")
        );
        let (_, h, p, _) = split_url("https://[::1]/", 443).unwrap();
        assert_eq!((h.as_str(), p), ("::1", 443));
    }
}
