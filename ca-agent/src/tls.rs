//! TLS client configuration: the CA server is trusted only through the pinned root.
//!
//! [`PinnedRootVerifier`] accepts a server whose presented chain contains a certificate with the
//! pinned SHA-256 fingerprint, whose leaf then verifies (webpki, name check included) with that
//! certificate as the only trust anchor, and whose leaf carries the caServerIdentity mark (a
//! URI SAN) that only the CA server's own certificate has
//! ([`ca_core::ca_identity`]): a subscriber's certificate for the CA's host name is refused.
//! Nothing is sent to the server (no token, no CSR) before the handshake, and so this check,
//! has passed.

use crate::error::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::{Arc, Mutex};

/// The one crypto provider of the agent: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies the CA server against the pinned root fingerprint.
#[derive(Debug)]
pub struct PinnedRootVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
    /// Why the last verification failed, for an operator-facing error.
    last_failure: Mutex<Option<String>>,
}

impl PinnedRootVerifier {
    /// A verifier for the normalised hex fingerprint `pin`.
    pub fn new(pin: &str) -> Arc<PinnedRootVerifier> {
        Arc::new(PinnedRootVerifier {
            pin: pin.to_string(),
            provider: provider(),
            last_failure: Mutex::new(None),
        })
    }

    /// Why the last handshake was refused, if it was.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn fail(&self, reason: String) -> rustls::Error {
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
        rustls::Error::General(reason)
    }
}

impl ServerCertVerifier for PinnedRootVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let presented = std::iter::once(end_entity).chain(intermediates.iter());
        let Some(root) = presented
            .into_iter()
            .find(|c| ca_core::signer::sha256_hex(c.as_ref()) == self.pin)
        else {
            let got: Vec<String> = std::iter::once(end_entity)
                .chain(intermediates.iter())
                .map(|c| ca_core::signer::sha256_hex(c.as_ref()))
                .collect();
            return Err(self.fail(format!(
                "no certificate the server presented has the pinned fingerprint (presented: {})",
                got.join(", ")
            )));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(root.clone().into_owned())
            .map_err(|e| self.fail(format!("pinned root is not a usable trust anchor: {e}")))?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| self.fail(format!("cannot build verifier: {e}")))?;
        let rest: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| c.as_ref() != root.as_ref())
            .cloned()
            .collect();
        let verified = inner
            .verify_server_cert(end_entity, &rest, server_name, ocsp_response, now)
            .map_err(|e| {
                self.fail(format!(
                    "server certificate does not verify under the pinned root: {e}"
                ))
            })?;
        // Every certificate of this CA chains to the pinned root; only the CA server's own
        // carries the caServerIdentity mark (ca_core::ca_identity).
        if !ca_core::ca_identity::has_ca_server_identity(end_entity.as_ref()) {
            return Err(self.fail(format!(
                "the server's certificate chains to the pinned root but is not the CA server's \
                 own (it lacks the caServerIdentity mark, the URI SAN {}): another \
                 certificate holder is answering for the CA; nothing was sent",
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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

/// A client certificate and its key, for mTLS.
pub struct ClientIdentity {
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// From PEM texts (certificate file may hold the chain too; key is PKCS#8).
    pub fn from_pem(cert_pem: &[u8], chain_pem: &[u8], key_pem: &[u8]) -> Result<ClientIdentity> {
        use rustls::pki_types::pem::PemObject;
        let mut chain: Vec<CertificateDer<'static>> =
            crate::certs::pem_certs(cert_pem, "client certificate")?
                .into_iter()
                .map(CertificateDer::from)
                .collect();
        // Intermediates only: the root is not sent (RFC 8446 4.4.2 allows omitting it).
        for c in crate::certs::pem_certs(chain_pem, "client chain")? {
            let info = crate::certs::CertInfo::parse(&c, "client chain")?;
            if !info.self_issued && !chain.iter().any(|x| x.as_ref() == c.as_slice()) {
                chain.push(CertificateDer::from(c));
            }
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| Error::Key(format!("cannot read the client key: {e}")))?;
        Ok(ClientIdentity { chain, key })
    }
}

/// A client config that trusts only the pinned root, optionally presenting a client certificate.
pub fn pinned_client_config(
    verifier: Arc<PinnedRootVerifier>,
    identity: Option<ClientIdentity>,
) -> Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Key(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key)
            .map_err(|e| Error::Key(format!("client certificate refused by rustls: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Reading which certificate a local service presents (the reload probe). It accepts any
/// certificate because it only records the leaf; the probe sends no credential and no data.
pub mod danger {
    use super::*;

    /// Records the leaf certificate the server presented and accepts it.
    #[derive(Debug)]
    pub struct RecordServedCert {
        provider: Arc<CryptoProvider>,
        /// The leaf presented in the last handshake.
        pub served: Mutex<Option<Vec<u8>>>,
    }

    impl RecordServedCert {
        /// A new recorder.
        pub fn new() -> Arc<RecordServedCert> {
            Arc::new(RecordServedCert {
                provider: provider(),
                served: Mutex::new(None),
            })
        }

        /// The recorded leaf.
        pub fn take(&self) -> Option<Vec<u8>> {
            self.served.lock().unwrap_or_else(|p| p.into_inner()).take()
        }
    }

    impl ServerCertVerifier for RecordServedCert {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            *self.served.lock().unwrap_or_else(|p| p.into_inner()) = Some(end_entity.to_vec());
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
}
