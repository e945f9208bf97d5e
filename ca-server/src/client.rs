//! A small HTTPS client for the API (admin CLI, tests): rustls with the ring provider, the
//! server verified against a pinned root and required to carry the CA server's mark
//! (the caServerIdentity mark), optional client certificate, one HTTP/1.1 request per connection.

use crate::error::ErrorBody;
use http::{header, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// What can go wrong talking to the API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Bad URL, root or client credentials.
    #[error("client setup: {0}")]
    Setup(String),
    /// Network or TLS failure.
    #[error("cannot reach {url}: {message}")]
    Connect {
        /// Base URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The server answered with an API error.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// Stable error code.
        code: String,
        /// Human message.
        message: String,
        /// Retry-After seconds, if given.
        retry_after: Option<u64>,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The API error code, if the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A raw answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl RawResponse {
    /// Turn an error answer into [`ClientError::Api`].
    pub fn error(&self) -> ClientError {
        match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(b) => ClientError::Api {
                status: self.status,
                code: b.code,
                message: b.message,
                retry_after: self
                    .headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
            },
            Err(_) => ClientError::Protocol(format!(
                "HTTP {} with body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )),
        }
    }
}

/// The server is the CA only if its certificate verifies under the root (webpki, host name
/// included) **and** carries the caServerIdentity mark ([`ca_core::ca_identity`]): any holder of
/// a certificate from this CA could pass the first check. Checked during the handshake, so no
/// request (and no admin credential beyond the TLS handshake itself) reaches an impostor.
#[derive(Debug)]
struct CaServerVerifier(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for CaServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.0.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if !ca_core::ca_identity::has_ca_server_identity(end_entity.as_ref()) {
            return Err(rustls::Error::General(format!(
                "the server's certificate chains to the CA root but is not the CA server's own \
                 (no caServerIdentity mark, the URI SAN {}): refusing to talk to it",
                ca_core::ca_identity::CA_SERVER_IDENTITY_URI
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A client for one CA.
#[derive(Clone, Debug)]
pub struct ApiClient {
    url: String,
    host: String,
    port: u16,
    authority: String,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
}

fn setup(e: impl std::fmt::Display) -> ClientError {
    ClientError::Setup(e.to_string())
}

impl ApiClient {
    /// `url` like `https://127.0.0.1:8443`; `root_pem` the CA root (trust anchor); `identity`
    /// a client certificate chain and key (PEM) for mTLS.
    pub fn new(
        url: &str,
        root_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
    ) -> Result<Self, ClientError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| setup(format!("URL {url:?}: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(setup(format!("URL {url:?} must start with https://")));
        }
        let host = uri
            .host()
            .ok_or_else(|| setup(format!("URL {url:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| host.clone());
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| setup(format!("host {host:?}: {e}")))?;
        let mut roots = RootCertStore::empty();
        let anchors: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &root_pem[..])
            .collect::<Result<_, _>>()
            .map_err(|e| setup(format!("root certificate PEM: {e}")))?;
        if anchors.is_empty() {
            return Err(setup("the root file holds no PEM certificate"));
        }
        for a in anchors {
            roots.add(a).map_err(setup)?;
        }
        let provider = crate::tls::provider();
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(setup)?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(setup)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CaServerVerifier(webpki)));
        let tls = match identity {
            Some((cert_pem, key_pem)) => {
                let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
                    .collect::<Result<_, _>>()
                    .map_err(|e| setup(format!("client certificate PEM: {e}")))?;
                if chain.is_empty() {
                    return Err(setup("the client certificate file holds no certificate"));
                }
                let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
                    .map_err(|e| setup(format!("client key PEM: {e}")))?
                    .ok_or_else(|| setup("the client key file holds no private key"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| setup(format!("client certificate/key: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(ApiClient {
            url: url.trim_end_matches('/').to_string(),
            host,
            port,
            authority,
            server_name,
            tls: Arc::new(tls),
        })
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

    /// Send one request; any status is returned as is.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        extra_headers: &[(&str, &str)],
    ) -> Result<RawResponse, ClientError> {
        let fut = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| self.connect_err(e))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| self.connect_err(format!("TLS: {e}")))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| self.connect_err(e))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut req = http::Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, &self.authority);
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
            let req = req
                .body(Full::new(Bytes::from(bytes)))
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| self.connect_err(e))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| self.connect_err(e))?
                .to_bytes();
            Ok(RawResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(60), fut)
            .await
            .map_err(|_| self.connect_err("timed out after 60 s"))?
    }

    /// GET `path` and write the body to `out` as it arrives (constant memory); returns the
    /// number of bytes written. An error answer is returned as [`ClientError::Api`].
    pub async fn download(
        &self,
        path: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, ClientError> {
        let tcp = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| self.connect_err("timed out connecting"))?
        .map_err(|e| self.connect_err(e))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| self.connect_err(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.connect_err(e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, &self.authority)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(120), sender.send_request(req))
            .await
            .map_err(|_| self.connect_err("timed out waiting for the answer"))?
            .map_err(|e| self.connect_err(e))?;
        let (parts, mut body) = resp.into_parts();
        if !parts.status.is_success() {
            let body = body
                .collect()
                .await
                .map_err(|e| self.connect_err(e))?
                .to_bytes();
            return Err(RawResponse {
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

    fn decode<T: DeserializeOwned>(resp: RawResponse) -> Result<T, ClientError> {
        if !resp.status.is_success() {
            return Err(resp.error());
        }
        serde_json::from_slice(&resp.body).map_err(|e| {
            ClientError::Protocol(format!("{e} in {:?}", String::from_utf8_lossy(&resp.body)))
        })
    }

    /// GET a JSON resource.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Self::decode(self.raw(Method::GET, path, None, &[]).await?)
    }

    /// POST JSON and decode the JSON answer.
    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let b = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Self::decode(
            self.raw(Method::POST, path, Some(("application/json", b)), &[])
                .await?,
        )
    }
}
