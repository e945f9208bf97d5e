//! A signer whose public key is known before its private key can be used: the node starts
//! while the HSM is away or refuses the login (README "Starting without the database or the
//! HSM"), and the OCSP responder and CRL publisher are built at once from the public key in a
//! certificate (the issuing certificate's SubjectPublicKeyInfo is the issuing key's, the
//! delegated OCSP responder certificate's is the responder key's).
//!
//! Until [`DeferredSigner::install`] gives it the HSM signer, every signature fails with
//! [`Error::SignerNotReady`]: nothing is signed, and callers that can wait (the OCSP re-sign
//! backlog, the CRL rebuild) retry later. `install` checks that the HSM key is the certificate's
//! key (fail closed: a token holding another key under the label never signs for this CA).

use super::{KeyAlgorithm, Signer};
use crate::error::{Error, Result};
use der::Decode;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// A [`Signer`] known by its public key, whose private key (an HSM signer) is installed later.
pub struct DeferredSigner {
    what: String,
    alg: KeyAlgorithm,
    spki: Vec<u8>,
    bits: Vec<u8>,
    inner: OnceLock<Arc<dyn Signer>>,
}

impl fmt::Debug for DeferredSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeferredSigner")
            .field("key", &self.what)
            .field("alg", &self.alg)
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl DeferredSigner {
    /// The key whose public half is `spki_der` (a SubjectPublicKeyInfo, e.g. from the
    /// certificate that certifies it). `what` names the key in errors (`issuing key`).
    pub fn from_spki(what: impl Into<String>, spki_der: &[u8]) -> Result<Self> {
        let alg = KeyAlgorithm::from_spki(spki_der)?;
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(spki_der)?;
        let bits = spki.subject_public_key.raw_bytes().to_vec();
        Ok(DeferredSigner {
            what: what.into(),
            alg,
            spki: super::spki_der(alg, &bits)?,
            bits,
            inner: OnceLock::new(),
        })
    }

    /// The key certified by the certificate `cert_der`.
    pub fn from_cert(what: impl Into<String>, cert_der: &[u8]) -> Result<Self> {
        use der::Encode;
        let cert = x509_cert::Certificate::from_der(cert_der)
            .map_err(|e| Error::Issuer(format!("cannot parse certificate: {e}")))?;
        let spki = cert.tbs_certificate.subject_public_key_info.to_der()?;
        Self::from_spki(what, &spki)
    }

    /// Sign with `signer` from now on. Refused (and nothing changes) if `signer` holds another
    /// key than the one this signer was made for, or if a signer was installed already.
    pub fn install(&self, signer: Arc<dyn Signer>) -> Result<()> {
        if signer.algorithm() != self.alg || signer.public_key_bits() != self.bits.as_slice() {
            return Err(Error::Issuer(format!(
                "the HSM key opened for the {} is not the key of its certificate",
                self.what
            )));
        }
        self.inner
            .set(signer)
            .map_err(|_| Error::Issuer(format!("the {} was installed twice", self.what)))
    }

    /// Whether the HSM signer is installed.
    pub fn is_ready(&self) -> bool {
        self.inner.get().is_some()
    }
}

impl Signer for DeferredSigner {
    fn algorithm(&self) -> KeyAlgorithm {
        self.alg
    }
    fn spki_der(&self) -> &[u8] {
        &self.spki
    }
    fn public_key_bits(&self) -> &[u8] {
        &self.bits
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        match self.inner.get() {
            Some(s) => s.sign(msg),
            None => Err(Error::SignerNotReady {
                key: self.what.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(DeferredSigner);
    impl Signer for Fixed {
        fn algorithm(&self) -> KeyAlgorithm {
            self.0.alg
        }
        fn spki_der(&self) -> &[u8] {
            &self.0.spki
        }
        fn public_key_bits(&self) -> &[u8] {
            &self.0.bits
        }
        fn sign(&self, _msg: &[u8]) -> Result<Vec<u8>> {
            Ok(b"sig".to_vec())
        }
    }

    fn p256(last: u8) -> Vec<u8> {
        let mut point = vec![4u8; 65];
        point[64] = last;
        super::super::spki_der(KeyAlgorithm::P256, &point).unwrap_or_default()
    }

    #[test]
    fn refuses_to_sign_until_installed_and_refuses_another_key() {
        let d =
            DeferredSigner::from_spki("issuing key", &p256(1)).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(d.sign(b"x"), Err(Error::SignerNotReady { .. })));
        let other = DeferredSigner::from_spki("x", &p256(2)).unwrap_or_else(|e| panic!("{e}"));
        assert!(d.install(Arc::new(Fixed(other))).is_err());
        assert!(!d.is_ready());
        let same = DeferredSigner::from_spki("x", &p256(1)).unwrap_or_else(|e| panic!("{e}"));
        d.install(Arc::new(Fixed(same)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.sign(b"x").ok(), Some(b"sig".to_vec()));
    }
}
