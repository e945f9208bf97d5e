//! The one client of the API: used by the admin CLI, the agent and the tests.
//!
//! rustls with the ring provider, HTTP/1.1, one request per connection (admins and agents talk
//! to the CA a few times a day). The server is trusted in one of two ways:
//!
//! - [`ApiClient::new`]: a root certificate file (the admin CLI, the tests): the server's chain
//!   must verify under it;
//! - [`ApiClient::pinned`]: the SHA-256 fingerprint of the root (the agent, which has no root
//!   file before it enrolls): one certificate the server presents must have that fingerprint,
//!   and the server's certificate must verify with it as the only trust anchor.
//!
//! In both, the server's certificate must also carry the caServerIdentity mark
//! ([`ca_core::ca_identity`]): every certificate of this CA chains to the same root, so without
//! it any certificate holder could answer for the CA. Both checks run inside the TLS handshake,
//! so nothing (no token, CSR or request) reaches an impostor; a refusal is
//! [`ClientError::Untrusted`].
//!
//! An error answer becomes [`ClientError::Api`] with the stable code ([`ClientError::api_code`]
//! decodes it into [`Code`]) and the `Retry-After` the server sent.
//!
//! ```no_run
//! # async fn f() -> Result<(), ca_api::ClientError> {
//! let client = ca_api::ApiClient::pinned("https://ca.example.com:8443", &"ab".repeat(32))?;
//! let chain = client.chain().await?;
//! println!("{}", chain.root_fingerprint);
//! # Ok(()) }
//! ```

use crate::code::{Code, ErrorBody};
use crate::types::{
    CertCountsResponse, CertsQuery, CertsResponse, ChainResponse, EnrollRequest, IssuedResponse,
    RenewRequest,
};
use http::{header, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How long a request may take unless [`ApiClient::with_timeout`] says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What can go wrong talking to the CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Bad URL, root or client credentials.
    #[error("client setup: {0}")]
    Setup(String),
    /// Network or TLS failure (including a client certificate the server refused).
    #[error("cannot reach {url}: {message}")]
    Connect {
        /// Base URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The server is not the CA: its certificate does not verify under the root (or the
    /// pinned root), or lacks the caServerIdentity mark. Nothing was sent to it.
    #[error("server {url} is not trusted: {reason}; nothing was sent to it")]
    Untrusted {
        /// Base URL.
        url: String,
        /// What did not match.
        reason: String,
    },
    /// The server answered with an API error.
    #[error("{status} {code}: {message}")]
    Api {
        /// The URL of the request.
        url: String,
        /// HTTP status.
        status: StatusCode,
        /// Stable error code as sent ([`Code`]'s wire form), or `http_<status>` when the answer
        /// was not an API error body (e.g. a proxy's error page).
        code: String,
        /// Human message.
        message: String,
        /// Retry-After seconds, if given.
        retry_after: Option<u64>,
    },
    /// A success answer that is not what the API promises (not the expected JSON).
    #[error("unexpected answer from {url} (HTTP {status}): {reason}")]
    BadAnswer {
        /// The URL of the request.
        url: String,
        /// HTTP status.
        status: StatusCode,
        /// What was wrong.
        reason: String,
    },
    /// The request could not be built or the output not written.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The API error code as sent, if the server answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The API error code decoded, if the server answered with one this version defines.
    pub fn api_code(&self) -> Option<Code> {
        self.code().and_then(Code::from_wire)
    }

    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Api { retry_after, .. } => retry_after.map(Duration::from_secs),
            _ => None,
        }
    }
}

/// A raw answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The URL of the request.
    pub url: String,
    /// The HTTP status, error statuses included (nothing is decoded).
    pub status: StatusCode,
    /// The answer's headers as received.
    pub headers: http::HeaderMap,
    /// The whole body (refused beyond [`ApiClient::with_max_body`] when set).
    pub body: Bytes,
}

impl RawResponse {
    /// Turn an error answer into [`ClientError::Api`]: the code and message of an API error
    /// body, else `http_<status>` and the start of the body.
    pub fn error(&self) -> ClientError {
        let retry_after = self
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(b) => (b.code, b.message),
            Err(_) => (
                format!("http_{}", self.status.as_u16()),
                String::from_utf8_lossy(&self.body)
                    .chars()
                    .take(200)
                    .collect(),
            ),
        };
        ClientError::Api {
            url: self.url.clone(),
            status: self.status,
            code,
            message,
            retry_after,
        }
    }

    /// The body as JSON if the status is a success, else [`RawResponse::error`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        if !self.status.is_success() {
            return Err(self.error());
        }
        serde_json::from_slice(&self.body).map_err(|e| ClientError::BadAnswer {
            url: self.url.clone(),
            status: self.status,
            reason: format!(
                "not the expected JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ),
        })
    }
}

/// A client certificate chain and its key, for mTLS.
pub struct ClientIdentity {
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("ClientIdentity")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// From a PEM certificate file (leaf first, intermediates may follow) and a PEM key
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<ClientIdentity, ClientError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| setup(format!("client certificate PEM: {e}")))?;
        if chain.is_empty() {
            return Err(setup("the client certificate file holds no certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                setup("the client key file holds no private key")
            }
            e => setup(format!("client key PEM: {e}")),
        })?;
        Ok(ClientIdentity { chain, key })
    }
}

/// The one crypto provider of the clients: ring (a second provider in the tree makes rustls
/// refuse to pick one).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why the verifier refused the server, carried through rustls to [`ClientError::Untrusted`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refusal(String);

/// What the server's chain must verify under.
#[derive(Debug)]
enum Anchor {
    /// A root certificate file.
    Roots(Arc<WebPkiServerVerifier>),
    /// The root's SHA-256 fingerprint (lowercase hex); the root comes from the server's chain.
    Pinned(String),
}

/// The server is the CA only if its certificate verifies under the root (webpki, host name
/// included) **and** carries the caServerIdentity mark ([`ca_core::ca_identity`]).
#[derive(Debug)]
struct CaServerVerifier {
    anchor: Anchor,
    provider: Arc<CryptoProvider>,
}

fn refuse(reason: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(Refusal(reason)),
    )))
}

impl CaServerVerifier {
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.anchor {
            Anchor::Roots(webpki) => webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|e| {
                    refuse(format!(
                        "its certificate does not verify under the CA root: {e}"
                    ))
                }),
            Anchor::Pinned(pin) => {
                let presented = std::iter::once(end_entity).chain(intermediates.iter());
                let Some(root) = presented
                    .into_iter()
                    .find(|c| ca_core::signer::sha256_hex(c.as_ref()) == *pin)
                else {
                    let got: Vec<String> = std::iter::once(end_entity)
                        .chain(intermediates.iter())
                        .map(|c| ca_core::signer::sha256_hex(c.as_ref()))
                        .collect();
                    return Err(refuse(format!(
                        "no certificate the server presented has the pinned fingerprint \
                         (presented: {})",
                        got.join(", ")
                    )));
                };
                let mut roots = RootCertStore::empty();
                roots.add(root.clone().into_owned()).map_err(|e| {
                    refuse(format!("pinned root is not a usable trust anchor: {e}"))
                })?;
                let inner = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    self.provider.clone(),
                )
                .build()
                .map_err(|e| refuse(format!("cannot build verifier: {e}")))?;
                let rest: Vec<CertificateDer<'_>> = intermediates
                    .iter()
                    .filter(|c| c.as_ref() != root.as_ref())
                    .cloned()
                    .collect();
                inner
                    .verify_server_cert(end_entity, &rest, server_name, ocsp_response, now)
                    .map_err(|e| {
                        refuse(format!(
                            "server certificate does not verify under the pinned root: {e}"
                        ))
                    })
            }
        }
    }
}

impl ServerCertVerifier for CaServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.verify_chain(end_entity, intermediates, server_name, ocsp_response, now)?;
        // Every certificate of this CA chains to the root; only the CA server's own carries
        // the caServerIdentity mark.
        if !ca_core::ca_identity::has_ca_server_identity(end_entity.as_ref()) {
            let root = match self.anchor {
                Anchor::Roots(_) => "the CA root",
                Anchor::Pinned(_) => "the pinned root",
            };
            return Err(refuse(format!(
                "the server's certificate chains to {root} but is not the CA server's own (it \
                 lacks the caServerIdentity mark, the URI SAN {}): another certificate holder \
                 is answering for the CA",
                ca_core::ca_identity::CA_SERVER_IDENTITY_URI
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The verifier's refusal inside a failed handshake, if that is why it failed.
fn refusal(e: &std::io::Error) -> Option<String> {
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) =
        e.get_ref()?.downcast_ref::<rustls::Error>()?
    else {
        return None;
    };
    other.0.downcast_ref::<Refusal>().map(|r| r.0.clone())
}

fn setup(e: impl std::fmt::Display) -> ClientError {
    ClientError::Setup(e.to_string())
}

fn tls_config(
    verifier: Arc<CaServerVerifier>,
    identity: Option<ClientIdentity>,
) -> Result<Arc<ClientConfig>, ClientError> {
    let builder = ClientConfig::builder_with_provider(verifier.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(setup)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key)
            .map_err(|e| setup(format!("client certificate/key: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Host, port and authority of an `https://` or `http://` URL, and its path.
struct Target {
    scheme: String,
    host: String,
    port: u16,
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, ClientError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| setup(format!("URL {url:?}: {e}")))?;
    let scheme = uri.scheme_str().unwrap_or("http").to_string();
    let host = uri
        .host()
        .ok_or_else(|| setup(format!("URL {url:?} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_else(|| host.clone());
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    Ok(Target {
        scheme,
        host,
        port,
        authority,
        path,
    })
}

/// A client for one CA.
#[derive(Clone, Debug)]
pub struct ApiClient {
    url: String,
    host: String,
    port: u16,
    authority: String,
    server_name: ServerName<'static>,
    verifier: Arc<CaServerVerifier>,
    tls: Arc<ClientConfig>,
    timeout: Duration,
    user_agent: Option<&'static str>,
    max_body: Option<usize>,
}

impl ApiClient {
    /// `url` like `https://127.0.0.1:8443`; `root_pem` the CA root (trust anchor); `identity`
    /// a client certificate chain and key (PEM) for mTLS.
    pub fn new(
        url: &str,
        root_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
    ) -> Result<Self, ClientError> {
        let mut roots = RootCertStore::empty();
        let anchors: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(root_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| setup(format!("root certificate PEM: {e}")))?;
        if anchors.is_empty() {
            return Err(setup("the root file holds no PEM certificate"));
        }
        for a in anchors {
            roots.add(a).map_err(setup)?;
        }
        let provider = provider();
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(setup)?;
        let identity = identity
            .map(|(cert, key)| ClientIdentity::from_pem(cert, key))
            .transpose()?;
        Self::build(
            url,
            Arc::new(CaServerVerifier {
                anchor: Anchor::Roots(webpki),
                provider,
            }),
            identity,
        )
    }

    /// `url` like `https://ca.example.com:8443`, trusting only a root whose SHA-256 fingerprint
    /// (DER, lowercase hex without separators) is `pin`, with no client certificate
    /// ([`ApiClient::with_identity`] adds one).
    pub fn pinned(url: &str, pin: &str) -> Result<Self, ClientError> {
        Self::build(
            url,
            Arc::new(CaServerVerifier {
                anchor: Anchor::Pinned(pin.to_string()),
                provider: provider(),
            }),
            None,
        )
    }

    fn build(
        url: &str,
        verifier: Arc<CaServerVerifier>,
        identity: Option<ClientIdentity>,
    ) -> Result<Self, ClientError> {
        let t = parse_url(url)?;
        if t.scheme != "https" {
            return Err(setup(format!("URL {url:?} must start with https://")));
        }
        let server_name = ServerName::try_from(t.host.clone())
            .map_err(|e| setup(format!("host {:?}: {e}", t.host)))?;
        Ok(ApiClient {
            url: url.trim_end_matches('/').to_string(),
            host: t.host,
            port: t.port,
            authority: t.authority,
            server_name,
            tls: tls_config(verifier.clone(), identity)?,
            verifier,
            timeout: DEFAULT_TIMEOUT,
            user_agent: None,
            max_body: None,
        })
    }

    /// The same client presenting `identity` (mTLS), trusting the server as before.
    pub fn with_identity(&self, identity: ClientIdentity) -> Result<Self, ClientError> {
        Ok(ApiClient {
            tls: tls_config(self.verifier.clone(), Some(identity))?,
            ..self.clone()
        })
    }

    /// Limit each request (connect, handshake, request, whole answer) to `timeout` (default
    /// 60 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Send `User-Agent: user_agent` with every request.
    pub fn with_user_agent(mut self, user_agent: &'static str) -> Self {
        self.user_agent = Some(user_agent);
        self
    }

    /// Refuse answers whose body is larger than `bytes` (default: no limit; the admin CLI
    /// lists whole stores).
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = Some(bytes);
        self
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn connect_err(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Connect {
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    /// TCP connect and TLS handshake; a server the verifier refused is
    /// [`ClientError::Untrusted`].
    async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.connect_err(e))?;
        tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| match refusal(&e) {
                Some(reason) => ClientError::Untrusted {
                    url: self.url.clone(),
                    reason,
                },
                None => self.connect_err(format!("TLS: {e}")),
            })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        extra_headers: &[(&str, &str)],
    ) -> Result<http::Request<Full<Bytes>>, ClientError> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority);
        if let Some(ua) = self.user_agent {
            req = req.header(header::USER_AGENT, ua);
        }
        for (k, v) in extra_headers {
            req = req.header(*k, *v);
        }
        let bytes = match body {
            Some((ct, b)) => {
                req = req.header(header::CONTENT_TYPE, ct);
                b
            }
            None => Vec::new(),
        };
        req.body(Full::new(Bytes::from(bytes)))
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Send one request; any status is returned as is.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        extra_headers: &[(&str, &str)],
    ) -> Result<RawResponse, ClientError> {
        let url = format!("{}{path}", self.url);
        let fut = async {
            let req = self.request(method, path, body, extra_headers)?;
            let tls = self.connect().await?;
            exchange(tls, req, self.max_body)
                .await
                .map(|(status, headers, body)| RawResponse {
                    url: url.clone(),
                    status,
                    headers,
                    body,
                })
                .map_err(|e| self.connect_err(e))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| self.connect_err(format!("no answer within {:?}", self.timeout)))?
    }

    /// GET `path` and write the body to `out` as it arrives (constant memory); returns the
    /// number of bytes written. An error answer is returned as [`ClientError::Api`]. The
    /// connection and the answer's head must come within the timeout; the body then may take
    /// as long as it keeps arriving (no progress for 60 s ends it).
    pub async fn download(
        &self,
        path: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, ClientError> {
        let req = self.request(Method::GET, path, None, &[])?;
        let head = async {
            let tls = self.connect().await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| self.connect_err(e))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender
                .send_request(req)
                .await
                .map_err(|e| self.connect_err(e))
        };
        let resp = tokio::time::timeout(self.timeout.max(Duration::from_secs(120)), head)
            .await
            .map_err(|_| self.connect_err("timed out waiting for the answer"))??;
        let (parts, mut body) = resp.into_parts();
        if !parts.status.is_success() {
            let body = body
                .collect()
                .await
                .map_err(|e| self.connect_err(e))?
                .to_bytes();
            return Err(RawResponse {
                url: format!("{}{path}", self.url),
                status: parts.status,
                headers: parts.headers,
                body,
            }
            .error());
        }
        let mut n = 0u64;
        // No progress for this long ends the download.
        let idle = Duration::from_secs(60);
        while let Some(frame) = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| self.connect_err("the answer stalled"))?
        {
            let frame = frame.map_err(|e| self.connect_err(e))?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data)
                    .map_err(|e| ClientError::Protocol(format!("writing the output: {e}")))?;
                n += data.len() as u64;
            }
        }
        Ok(n)
    }

    /// GET a JSON resource.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.raw(Method::GET, path, None, &[]).await?.json()
    }

    /// POST JSON and decode the JSON answer.
    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let b = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.raw(Method::POST, path, Some(("application/json", b)), &[])
            .await?
            .json()
    }

    /// `GET /v1/chain`: the issuing CA and the root, and the root's fingerprint.
    pub async fn chain(&self) -> Result<ChainResponse, ClientError> {
        self.get_json(crate::routes::CHAIN).await
    }

    /// `POST /v1/enroll` with a one-time token.
    pub async fn enroll(&self, req: &EnrollRequest) -> Result<IssuedResponse, ClientError> {
        self.post_json(crate::routes::ENROLL, req).await
    }

    /// `POST /v1/renew`; the client must present the current certificate
    /// ([`ApiClient::with_identity`]).
    pub async fn renew(&self, req: &RenewRequest) -> Result<IssuedResponse, ClientError> {
        self.post_json(crate::routes::RENEW, req).await
    }

    /// `GET /v1/admin/certs`: one page. For the next, send the same query with `cursor` set to
    /// the answer's `next_cursor`, until an answer has none.
    pub async fn list_certs(&self, q: &CertsQuery) -> Result<CertsResponse, ClientError> {
        let query = q.to_query();
        let path = if query.is_empty() {
            crate::routes::ADMIN_CERTS.to_string()
        } else {
            format!("{}?{query}", crate::routes::ADMIN_CERTS)
        };
        self.get_json(&path).await
    }

    /// `GET /v1/admin/certs/counts`.
    pub async fn cert_counts(&self) -> Result<CertCountsResponse, ClientError> {
        self.get_json(crate::routes::ADMIN_CERT_COUNTS).await
    }
}

/// One HTTP/1.1 exchange on `io`: status, headers and the whole body (at most `max_body`
/// bytes).
async fn exchange<S>(
    io: S,
    req: http::Request<Full<Bytes>>,
    max_body: Option<usize>,
) -> Result<(StatusCode, http::HeaderMap, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    // The connection task ends with the connection: after this one answer, once `sender` is
    // dropped.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = read_body(body, max_body)
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    Ok((parts.status, parts.headers, body))
}

async fn read_body(body: Incoming, max_body: Option<usize>) -> Result<Bytes, String> {
    match max_body {
        Some(max) => Ok(http_body_util::Limited::new(body, max)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes()),
        None => Ok(body.collect().await.map_err(|e| e.to_string())?.to_bytes()),
    }
}

/// One plain-HTTP exchange (the status server: OCSP over `http://`, RFC 6960 A.1), with the
/// answer's body limited to `max_body` bytes. Any status is returned as is.
pub async fn plain_http(
    url: &str,
    method: Method,
    content_type: Option<&str>,
    body: Vec<u8>,
    timeout: Duration,
    max_body: usize,
) -> Result<RawResponse, ClientError> {
    let t = parse_url(url)?;
    let connect_err = |message: String| ClientError::Connect {
        url: url.to_string(),
        message,
    };
    if t.scheme != "http" {
        return Err(setup(format!(
            "URL {url:?}: only http:// is supported here"
        )));
    }
    let fut = async {
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| connect_err(format!("connect: {e}")))?;
        let mut req = http::Request::builder()
            .method(method)
            .uri(t.path.as_str())
            .header(header::HOST, t.authority.as_str());
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (status, headers, body) = exchange(tcp, req, Some(max_body))
            .await
            .map_err(connect_err)?;
        Ok(RawResponse {
            url: url.to_string(),
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| connect_err(format!("no answer within {timeout:?}")))?
}

#[cfg(test)]
mod tests;
