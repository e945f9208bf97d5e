//! The one adapter from a [`Signer`] to rcgen, for everything the CA and the ceremonies sign
//! with rcgen (certificates, CSR-less CA certificates, CRLs). The only part of [`crate::x509`]
//! that needs rcgen.

use crate::error::{Error, Result};
use crate::signer::Signer;
use std::cell::RefCell;
use std::sync::Arc;

/// A [`Signer`] as rcgen's signing key.
///
/// rcgen's `RemoteKeyError` carries no detail, so the signer's error of a failed signature is
/// kept aside for [`RcgenKey::map_err`]. rcgen signs on the caller's thread, and one key may be
/// shared by concurrent issuances (the issuing CA's, cached in its `rcgen::Issuer`), so the error
/// is kept per thread, not per key.
pub struct RcgenKey<'a> {
    signer: Held<'a>,
}

enum Held<'a> {
    Borrowed(&'a dyn Signer),
    Shared(Arc<dyn Signer>),
}

thread_local! {
    static LAST_SIGN_ERROR: RefCell<Option<Error>> = const { RefCell::new(None) };
}

impl<'a> RcgenKey<'a> {
    /// Borrow a signer for one signing operation (a ceremony, a CRL).
    pub fn new(signer: &'a dyn Signer) -> Self {
        RcgenKey {
            signer: Held::Borrowed(signer),
        }
    }

    /// Own a share of a signer, for a key that outlives the caller's borrow (the issuing CA's
    /// cached `rcgen::Issuer`).
    pub fn shared(signer: Arc<dyn Signer>) -> RcgenKey<'static> {
        RcgenKey {
            signer: Held::Shared(signer),
        }
    }

    fn signer(&self) -> &dyn Signer {
        match &self.signer {
            Held::Borrowed(s) => *s,
            Held::Shared(s) => s.as_ref(),
        }
    }

    /// Map an rcgen error to ours, recovering the signer's error if this thread's last
    /// signature failed.
    pub fn map_err(&self, e: rcgen::Error) -> Error {
        if let rcgen::Error::RemoteKeyError = e {
            if let Some(inner) = LAST_SIGN_ERROR.with(|l| l.borrow_mut().take()) {
                return inner;
            }
        }
        Error::Build(e)
    }
}

impl std::fmt::Debug for RcgenKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RcgenKey").field(&self.signer()).finish()
    }
}

impl rcgen::PublicKeyData for RcgenKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.signer().public_key_bits()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.signer().algorithm().rcgen()
    }
}

impl rcgen::SigningKey for RcgenKey<'_> {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.signer().sign(msg).map_err(|e| {
            tracing::error!(error = %e, "HSM signing failed");
            LAST_SIGN_ERROR.with(|l| *l.borrow_mut() = Some(e));
            rcgen::Error::RemoteKeyError
        })
    }
}

/// rcgen's key identifier setting for a certificate of the key `spki_der`: the subject key
/// identifier of [`crate::x509::key_identifier`], which the authority key identifier of what
/// the certificate signs repeats.
pub fn key_id_method(spki_der: &[u8]) -> Result<rcgen::KeyIdMethod> {
    crate::x509::key_identifier(spki_der).map(rcgen::KeyIdMethod::PreSpecified)
}
