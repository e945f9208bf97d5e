//! The signing key and what bounds its use: the issuer answered for, the delegated responder
//! certificate, whether that certificate was seen revoked, and the validity of what it signs.
//!
//! Invariants: nothing is signed once the delegated certificate has expired or is revoked (no
//! fallback to another key), and no response carries a nextUpdate after its notAfter
//! ([`Signing::next_update_at`]).

use super::super::build::{responder_cert, sign_basic, single};
use super::super::{serial_magnitude, HashAlg, OcspIssuer};
use super::answer::{AnswerKind, OcspAnswer};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::revocation::{CertStatus, RevocationReason};
use crate::signer::{verify, Signer};
use crate::store::Store;
use chrono::{DateTime, Duration, Utc};
use der::{Decode, Encode};
use std::sync::{Arc, Mutex};
use x509_cert::ext::Extension;
use x509_cert::Certificate;
use x509_ocsp::SingleResponse;

/// The hash algorithms of the CertIDs every pre-signed response carries (RFC 5019 2.1.1 SHA-1
/// for today's clients, SHA-256 per RFC 9919).
pub(super) const PRESIGNED_ALGS: [HashAlg; 2] = [HashAlg::Sha1, HashAlg::Sha256];

/// The key that signs responses: the CA's own key, or a delegated OCSP-signing certificate's.
#[derive(Clone)]
pub struct ResponderKey {
    signer: Arc<dyn Signer>,
    cert: Option<Certificate>,
    /// Serial (magnitude) and notAfter of `cert`.
    cert_info: Option<(Vec<u8>, DateTime<Utc>)>,
}

impl std::fmt::Debug for ResponderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponderKey")
            .field("signer", &self.signer)
            .field("delegated", &self.cert.is_some())
            .finish()
    }
}

impl ResponderKey {
    /// Sign with the CA's own key (RFC 6960 4.2.2.2, first case).
    pub fn ca(signer: Arc<dyn Signer>) -> Self {
        ResponderKey {
            signer,
            cert: None,
            cert_info: None,
        }
    }

    /// Sign with a delegated responder: `cert_der` must hold `signer`'s key (checked here);
    /// [`super::Responder::new`] checks that the issuer signed it and that it carries
    /// id-kp-OCSPSigning.
    pub fn delegated(signer: Arc<dyn Signer>, cert_der: &[u8]) -> Result<Self> {
        let cert = responder_cert(signer.as_ref(), cert_der)?;
        let serial = serial_magnitude(cert.tbs_certificate.serial_number.as_bytes()).to_vec();
        let secs = cert
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs();
        let not_after = i64::try_from(secs)
            .ok()
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .ok_or_else(|| {
                Error::Issuer("OCSP responder certificate notAfter out of range".into())
            })?;
        Ok(ResponderKey {
            signer,
            cert: Some(cert),
            cert_info: Some((serial, not_after)),
        })
    }

    /// The delegated responder certificate's serial (magnitude) and notAfter; `None` when the
    /// CA key signs.
    pub fn cert_serial_and_expiry(&self) -> Option<(&[u8], DateTime<Utc>)> {
        self.cert_info.as_ref().map(|(s, t)| (s.as_slice(), *t))
    }

    /// The HSM key that signs responses: the CA key or the delegated responder's.
    pub fn signer(&self) -> &dyn Signer {
        self.signer.as_ref()
    }
}

/// The state of the delegated responder certificate
/// ([`super::Responder::signer_cert_status`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerCertStatus {
    /// Serial (magnitude).
    pub serial: Vec<u8>,
    /// notAfter: no response carries a later nextUpdate.
    pub not_after: DateTime<Utc>,
    /// Revocation time and reason, once the responder has seen it revoked in the store.
    pub revoked: Option<(DateTime<Utc>, RevocationReason)>,
}

/// The signing side shared by every part that signs (presigner, refresher, live signing).
pub(super) struct Signing {
    issuer: OcspIssuer,
    key: ResponderKey,
    /// SHA-1 of the signing key (the ResponderID of every response it signs), computed once:
    /// reading a stored response back checks it on every cache miss.
    own_key_hash: Vec<u8>,
    clock: Arc<dyn Clock>,
    validity: Duration,
    refresh_before: Duration,
    /// Set once the delegated responder certificate is seen revoked: nothing is signed after.
    signer_revoked: Mutex<Option<(DateTime<Utc>, RevocationReason)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Signing {
    /// Checks (fail closed): a CA key must be the issuer's key; a delegated certificate must be
    /// signed by the issuer and carry id-kp-OCSPSigning (RFC 6960 4.2.2.2).
    pub(super) fn new(
        issuer_cert_der: &[u8],
        key: ResponderKey,
        clock: Arc<dyn Clock>,
        validity: Duration,
        refresh_before: Duration,
    ) -> Result<Self> {
        let issuer = OcspIssuer::from_cert_der(issuer_cert_der)?;
        match &key.cert {
            None => {
                if key.signer.public_key_bits() != issuer.public_key_bits() {
                    return Err(Error::Issuer(
                        "OCSP signing key is not the issuer's key; configure a delegated responder certificate".into(),
                    ));
                }
            }
            Some(cert) => check_delegated(cert, &issuer)?,
        }
        Ok(Signing {
            issuer,
            own_key_hash: super::super::build::key_hash(key.signer.public_key_bits()),
            key,
            clock,
            validity,
            refresh_before,
            signer_revoked: Mutex::new(None),
        })
    }

    pub(super) fn issuer(&self) -> &OcspIssuer {
        &self.issuer
    }

    pub(super) fn key(&self) -> &ResponderKey {
        &self.key
    }

    /// The key hash stored responses signed by this key carry as their ResponderID.
    pub(super) fn own_key_hash(&self) -> &[u8] {
        &self.own_key_hash
    }

    pub(super) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    #[inline]
    pub(super) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Whether `serial` (magnitude) is the delegated responder certificate's.
    pub(super) fn is_own_cert(&self, serial: &[u8]) -> bool {
        self.key
            .cert_info
            .as_ref()
            .is_some_and(|(s, _)| s == serial)
    }

    pub(super) fn signer_cert_status(&self) -> Option<SignerCertStatus> {
        let (serial, not_after) = self.key.cert_info.clone()?;
        Some(SignerCertStatus {
            serial,
            not_after,
            revoked: *lock(&self.signer_revoked),
        })
    }

    /// The nextUpdate of a response signed at `now`: `now + validity`, but never after the
    /// delegated responder certificate's notAfter (a response must not outlive the key that
    /// vouches for it: RFC 6960 4.2.2.2 and 3.2 item 6 make the client check the responder
    /// certificate, and with id-pkix-ocsp-nocheck it cannot ask about it). Refused
    /// (`OcspSignerUnusable`) once that certificate has expired or is revoked: the operator
    /// must rotate it; nothing falls back to another key silently.
    pub(super) fn next_update_at(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
        let next = now + self.validity;
        let Some((serial, not_after)) = &self.key.cert_info else {
            return Ok(next);
        };
        if let Some((at, reason)) = *lock(&self.signer_revoked) {
            return Err(Error::OcspSignerUnusable {
                serial: hex::encode(serial),
                reason: format!("it was revoked at {at} ({reason})"),
            });
        }
        if *not_after <= now {
            return Err(Error::OcspSignerUnusable {
                serial: hex::encode(serial),
                reason: format!("it expired at {not_after}"),
            });
        }
        Ok(next.min(*not_after))
    }

    /// How long before its nextUpdate a response is re-signed: nothing with a later
    /// nextUpdate than now + this is due ([`Signing::refresh_wanted`]).
    pub(super) fn refresh_before(&self) -> Duration {
        self.refresh_before
    }

    /// Whether a response with this nextUpdate is due for re-signing: within `refresh_before`
    /// of it, unless it already ends at the responder certificate's notAfter (re-signing
    /// could not extend it; it is left to run out).
    pub(super) fn refresh_wanted(&self, next_update: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        next_update - now <= self.refresh_before
            && self
                .key
                .cert_info
                .as_ref()
                .is_none_or(|(_, not_after)| next_update < *not_after)
    }

    /// Read the delegated certificate's record: once it is revoked (here, by another node
    /// sharing the store, or before a restart), stop signing with it.
    pub(super) fn refresh_signer_revocation(&self, store: &dyn Store) -> Result<()> {
        let Some((serial, _)) = &self.key.cert_info else {
            return Ok(());
        };
        if let Some(rec) = store.get_cert(serial)? {
            if let crate::store::RecordStatus::Revoked { at, reason } = rec.status {
                self.mark_signer_revoked(at, reason);
            }
        }
        Ok(())
    }

    pub(super) fn mark_signer_revoked(&self, at: DateTime<Utc>, reason: RevocationReason) {
        let mut r = lock(&self.signer_revoked);
        if r.is_none() {
            *r = Some((at, reason));
            let serial = self
                .key
                .cert_info
                .as_ref()
                .map(|(s, _)| hex::encode(s))
                .unwrap_or_default();
            tracing::error!(%serial, revoked_at = %at, %reason, "the OCSP responder certificate is REVOKED: no OCSP response is signed with it any more (pre-signed responses are served until their nextUpdate); rotate it now: run the ocsp-signer ceremony, set ocsp.signer_key/ocsp.signer_cert, restart the nodes");
        }
    }

    /// One response with a SingleResponse per (serial, CertID hash algorithm of
    /// [`PRESIGNED_ALGS`]), all with `status`: the form every pre-signed response has.
    pub(super) fn sign_canonical(
        &self,
        serials: &[&[u8]],
        status: &CertStatus,
    ) -> Result<Arc<OcspAnswer>> {
        let now = self.clock.now();
        let next = self.next_update_at(now)?;
        let mut singles = Vec::with_capacity(serials.len() * PRESIGNED_ALGS.len());
        for serial in serials {
            for alg in PRESIGNED_ALGS {
                singles.push(single(
                    self.issuer.cert_id(alg, serial)?,
                    status,
                    now,
                    next,
                )?);
            }
        }
        let der = self.sign(singles, now, None)?;
        Ok(Arc::new(OcspAnswer::new(
            der,
            AnswerKind::Signed {
                status: status.clone(),
                produced_at: now,
                this_update: now,
                next_update: next,
                cacheable: true,
            },
        )))
    }

    /// Sign a BasicOCSPResponse over `singles`, produced at `now`, with response extensions.
    pub(super) fn sign(
        &self,
        singles: Vec<SingleResponse>,
        now: DateTime<Utc>,
        extensions: Option<Vec<Extension>>,
    ) -> Result<Vec<u8>> {
        sign_basic(
            self.key.signer.as_ref(),
            self.key.cert.as_ref(),
            singles,
            now,
            extensions,
        )
    }
}

/// RFC 6960 4.2.2.2: a delegated responder certificate is issued directly by the CA and
/// carries id-kp-OCSPSigning.
pub(in crate::ocsp) fn check_delegated(cert: &Certificate, issuer: &OcspIssuer) -> Result<()> {
    let tbs = cert.tbs_certificate.to_der()?;
    let sig = cert
        .signature
        .as_bytes()
        .ok_or(Error::SignatureCheckFailed)?;
    verify(issuer.spki_der(), &tbs, sig).map_err(|_| {
        Error::Issuer("the OCSP responder certificate is not signed by the issuing CA".into())
    })?;
    let eku = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_EXT_KEY_USAGE)
        .and_then(|e| {
            x509_cert::ext::pkix::ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).ok()
        });
    if !eku.is_some_and(|k| k.0.contains(&const_oid::db::rfc5280::ID_KP_OCSP_SIGNING)) {
        return Err(Error::Issuer(
            "the OCSP responder certificate lacks extended key usage id-kp-OCSPSigning".into(),
        ));
    }
    Ok(())
}
