//! TLS for the HTTPS listener: rustls with the ring provider only, TLS 1.2 and 1.3 with
//! AEAD/ECDHE suites, client certificates optional at the handshake.
//!
//! Client certificates are verified at the handshake against this CA's chain (the issuing CA and
//! the root are both trust anchors, so a client may send its leaf alone) with a proof of
//! possession of the key. Expiry and purpose are *not* decided here: an expired certificate is
//! verified at its own notAfter and let through so that the route can refuse it with a precise
//! `cert_expired` (and audit it); revocation state and expiry are checked per request against
//! the store (see [`crate::auth`]). A certificate that does not chain to this CA fails the
//! handshake.

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use std::sync::Arc;
use std::time::Duration;
use webpki::{ExtendedKeyUsageValidator, KeyPurposeIdIter};

/// Errors building TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A CA certificate could not be used as a trust anchor.
    #[error("CA certificate cannot be a trust anchor: {0}")]
    Anchor(String),
}

/// The one crypto provider: ring (never aws-lc-rs; CRATES.md).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accept whatever extended key usage the certificate has: the route decides what a
/// certificate may do (renewal accepts server certificates of this CA too).
#[derive(Debug, Clone, Copy)]
struct AnyPurpose;

impl ExtendedKeyUsageValidator for AnyPurpose {
    fn validate(&self, _iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

/// Client certificate verifier: chain to this CA + proof of possession; expiry left to routes.
#[derive(Debug)]
pub struct ClientVerifier {
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    subjects: Vec<DistinguishedName>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientVerifier {
    /// Trust the given CA certificates (issuing CA and root, DER).
    pub fn new(ca_certs: &[Vec<u8>], provider: &CryptoProvider) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        let mut anchors = Vec::new();
        for der in ca_certs {
            let cert = CertificateDer::from(der.clone());
            let anchor = webpki::anchor_from_trusted_cert(&cert)
                .map_err(|e| TlsError::Anchor(e.to_string()))?
                .to_owned();
            anchors.push(anchor);
            roots
                .add(cert)
                .map_err(|e| TlsError::Anchor(e.to_string()))?;
        }
        Ok(ClientVerifier {
            anchors,
            subjects: roots.subjects(),
            algs: provider.signature_verification_algorithms,
        })
    }

    /// Verify a chain at `now`, or at the leaf's notAfter if it has expired.
    pub fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::InvalidCertificate(pki_error(e)))?;
        let not_after = leaf_not_after(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        // An expired certificate is checked as of its last valid second: the chain must still
        // verify; the route answers `cert_expired`.
        let at = if now.as_secs() > not_after {
            UnixTime::since_unix_epoch(Duration::from_secs(not_after))
        } else {
            now
        };
        ee.verify_for_usage(
            self.algs.all,
            &self.anchors,
            intermediates,
            at,
            AnyPurpose,
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| rustls::Error::InvalidCertificate(pki_error(e)))
    }
}

fn pki_error(e: webpki::Error) -> rustls::CertificateError {
    use rustls::CertificateError as C;
    match e {
        webpki::Error::BadDer | webpki::Error::BadDerTime => C::BadEncoding,
        webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => C::BadSignature,
        other => C::Other(rustls::OtherError(Arc::new(other))),
    }
}

/// notAfter of a DER certificate, as Unix seconds.
pub fn leaf_not_after(der: &[u8]) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify_chain(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Build a server configuration: TLS 1.3 and 1.2 (ring's suites are all ECDHE + AEAD),
/// ALPN h2 and http/1.1, optional client certificates.
pub fn server_config(
    provider: Arc<CryptoProvider>,
    verifier: Arc<ClientVerifier>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The live server configuration, swapped when the server certificate is renewed. Read once
/// per accepted connection.
#[derive(Debug)]
pub struct LiveConfig(ArcSwap<ServerConfig>);

impl LiveConfig {
    /// Start with a configuration.
    pub fn new(cfg: ServerConfig) -> Self {
        LiveConfig(ArcSwap::from_pointee(cfg))
    }
    /// The current configuration.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.0.load_full()
    }
    /// Replace it (new connections use the new one).
    pub fn swap(&self, cfg: ServerConfig) {
        self.0.store(Arc::new(cfg));
    }
}
