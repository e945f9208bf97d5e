//! TLS pieces of the agent: its client identity for renewal, and the probe's recorder.
//!
//! The CA server is trusted only through the pinned root, with the caServerIdentity mark
//! required (the contract crate's client, [`ca_api::client`]): nothing is sent to the server (no
//! token, no CSR) before that check has passed in the handshake.

use crate::error::{Error, Result};
pub use ca_api::client::provider;
pub use ca_api::ClientIdentity;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::{Arc, Mutex};

/// The identity renewal presents: the certificate and its key, plus the intermediates of the
/// chain file (PEM texts; the certificate file may hold the chain too; the key is PKCS#8).
pub fn client_identity(
    cert_pem: &[u8],
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<ClientIdentity> {
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
