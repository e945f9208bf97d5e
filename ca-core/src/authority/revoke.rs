//! The revocation workflow: store, OCSP, CRL, audit, and the lineage cascade.

use super::Authority;
use crate::audit::NewAuditEvent;
use crate::error::{Error, Result};
use crate::ocsp::Responder;
use crate::revocation::{check_reason, RevocationReason};
use crate::store::{AuditLog, CertRecord, CertStore, RecordStatus};
use chrono::{DateTime, Utc};

/// A revocation asked for by an administrator.
#[derive(Clone, Debug)]
pub struct RevocationRequest {
    /// The certificate's serial (big-endian magnitude).
    pub serial: Vec<u8>,
    /// The reason (RFC 5280 5.3.1).
    pub reason: RevocationReason,
    /// Who asks (audit actor).
    pub actor: String,
    /// Revoke every certificate of the serial's lineage and lock it (`revoke --lineage`).
    pub whole_lineage: bool,
}

/// What a revocation did: the certificate asked for, and the other generations of its lineage
/// it revoked with it (keyCompromise, or a whole-lineage revocation).
#[derive(Debug)]
pub struct Revocation {
    /// The certificate asked for, as revoked.
    pub record: CertRecord,
    /// Serials (hex) of the lineage's other certificates revoked with it.
    pub also_revoked: Vec<String>,
    /// Whether the lineage is now locked (no renewal, no re-enrollment).
    pub lineage_locked: bool,
}

/// Revoke a certificate and make every relying party able to see it before returning
/// (DESIGN invariant 2):
///
/// 1. the store records the revocation durably ([`CertStore::revoke`]: unknown serial is
///    `CertNotFound`, a second revocation is `AlreadyRevoked` unless it changes the reason to
///    keyCompromise, RFC 5280 5.3.1);
/// 2. the OCSP response is re-signed, persisted and served ([`Responder::on_revoked`]);
/// 3. the event is appended to the audit log (invariant 4).
///
/// Reasons [`check_reason`] refuses (removeFromCRL, certificateHold, cACompromise,
/// aACompromise) are refused with [`Error::ReasonNotAllowed`] before anything changes.
/// `at` is truncated to whole seconds. If step 2 fails the revocation stays recorded, the old
/// OCSP response is withdrawn (the serial is then answered live or with `tryLater`, never
/// `good`), the failure is audited and returned: do not acknowledge, retry (a retry with
/// keyCompromise or a restart re-signs). The CRL is the caller's to mark stale
/// ([`Authority::revoke_certificate`] does).
pub fn revoke<S: CertStore + AuditLog + ?Sized>(
    store: &S,
    responder: &Responder,
    serial: &[u8],
    reason: RevocationReason,
    at: DateTime<Utc>,
    actor: &str,
) -> Result<CertRecord> {
    record(store, store, Some(responder), serial, reason, at, actor)
}

/// [`revoke`], with the OCSP step skipped when there is no responder.
fn record<C: CertStore + ?Sized, A: AuditLog + ?Sized>(
    certs: &C,
    audit: &A,
    responder: Option<&Responder>,
    serial: &[u8],
    reason: RevocationReason,
    at: DateTime<Utc>,
    actor: &str,
) -> Result<CertRecord> {
    let at = crate::clock::truncate(at);
    let object = hex::encode(serial);
    // The store refuses reasons `check_reason` refuses before changing anything.
    let rec = match certs.revoke(serial, at, reason) {
        Ok(rec) => rec,
        Err(e) => {
            // Revoked already, by a call whose OCSP re-signing failed (the HSM was down): the
            // repeated command repairs the answer now rather than at the next refresh pass.
            if let (Error::AlreadyRevoked { .. }, Some(responder)) = (&e, responder) {
                if let Some(Err(resign)) = responder.retry_resign(serial) {
                    tracing::error!(serial = %object, error = %resign, "OCSP re-signing of an earlier revocation failed again");
                }
            }
            // The API's stable code where there is one (docs/API.md), so the audit log and the
            // answer name a refusal alike.
            let code = match &e {
                Error::CertNotFound(_) => "not_found",
                Error::AlreadyRevoked { .. } => "already_revoked",
                Error::ReasonNotAllowed(..) => "reason_not_allowed",
                _ => "store_error",
            };
            // Best effort: the store may be what failed.
            let _ = audit.append_audit(
                NewAuditEvent::failed(actor, "revoke", &object, code)
                    .with_detail(serde_json::json!({ "reason": reason.name() })),
            );
            return Err(e);
        }
    };
    let detail = serde_json::json!({ "reason": reason.name(), "revoked_at": revoked_at(&rec) });
    if let Some(responder) = responder {
        if let Err(e) = responder.on_revoked(&rec) {
            tracing::error!(serial = %object, error = %e, "revocation stored but OCSP re-signing failed");
            audit.append_audit(
                NewAuditEvent::failed(actor, "revoke", &object, "ocsp_resign_failed")
                    .with_detail(detail),
            )?;
            return Err(Error::RevocationPending {
                serial: object,
                source: Box::new(e),
            });
        }
    }
    audit.append_audit(NewAuditEvent::ok(actor, "revoke", &object).with_detail(detail))?;
    Ok(rec)
}

fn revoked_at(rec: &CertRecord) -> Option<String> {
    match &rec.status {
        RecordStatus::Revoked { at, .. } => Some(at.to_rfc3339()),
        RecordStatus::Valid => None,
    }
}

impl Authority {
    /// Revoke one certificate now ([`revoke`]: store, OCSP re-signed when a responder is
    /// attached, audit), then mark the CRL stale and wake its publisher's host, unless nothing
    /// can have changed. After a failed OCSP re-signing the revocation is stored all the same,
    /// and after `already_revoked` an earlier attempt's rebuild may have failed: the CRL stays
    /// stale, and every maintenance pass retries, until a build succeeds.
    pub fn revoke_certificate(
        &self,
        serial: &[u8],
        reason: RevocationReason,
        actor: &str,
    ) -> Result<CertRecord> {
        let r = record(
            self.certs.as_ref(),
            self.audit.as_ref(),
            self.responder.as_deref(),
            serial,
            reason,
            self.clock.now(),
            actor,
        );
        if !matches!(r, Err(Error::CertNotFound(_) | Error::ReasonNotAllowed(..))) {
            if let Some(crl) = &self.crl {
                // Marks the full CRL stale and the certificate's shard dirty (README "CRLs").
                crl.publisher.note_revoked_serial(serial);
                if let Some(wake) = &crl.wake {
                    wake();
                }
            }
        }
        r
    }

    /// Revoke on an administrator's authority (blocking). `may_revoke` is asked before each
    /// certificate is revoked, the cascaded ones included (segregation of duties is the
    /// caller's; it audits its own refusals); callers serialise revocations themselves.
    ///
    /// keyCompromise also locks the certificate's lineage and revokes every later generation
    /// (a thief who renewed with the stolen key loses the renewed certificates too). With
    /// `whole_lineage` (`revoke --lineage`), every certificate of the lineage is revoked for
    /// the reason and the lineage locked, whatever the reason; if any of them may not be
    /// revoked by this actor, nothing is.
    pub fn revoke<E: From<Error>>(
        &self,
        req: &RevocationRequest,
        may_revoke: &mut dyn FnMut(&CertRecord) -> std::result::Result<(), E>,
    ) -> std::result::Result<Revocation, E> {
        if req.whole_lineage {
            self.revoke_lineage(req, may_revoke)
        } else {
            self.revoke_single(req, may_revoke)
        }
    }

    fn revoke_single<E: From<Error>>(
        &self,
        req: &RevocationRequest,
        may_revoke: &mut dyn FnMut(&CertRecord) -> std::result::Result<(), E>,
    ) -> std::result::Result<Revocation, E> {
        // An unknown serial goes on to the revocation, which answers and audits it.
        if let Some(target) = self.certs.get_cert(&req.serial)? {
            may_revoke(&target)?;
        }
        let record = self.revoke_certificate(&req.serial, req.reason, &req.actor)?;
        if req.reason != RevocationReason::KeyCompromise {
            return Ok(Revocation {
                record,
                also_revoked: Vec::new(),
                lineage_locked: false,
            });
        }
        // Lock first: once the lock is stored no renewal of the lineage can be, so the list
        // below is complete.
        self.lock_lineage(&record, "key_compromise", &req.actor)?;
        let later: Vec<CertRecord> = self
            .certs
            .lineage_certs(&record.lineage)?
            .into_iter()
            .filter(|c| c.generation > record.generation)
            .collect();
        let also_revoked = self.revoke_all(req, &record, later, may_revoke)?;
        Ok(Revocation {
            record,
            also_revoked,
            lineage_locked: true,
        })
    }

    fn revoke_lineage<E: From<Error>>(
        &self,
        req: &RevocationRequest,
        may_revoke: &mut dyn FnMut(&CertRecord) -> std::result::Result<(), E>,
    ) -> std::result::Result<Revocation, E> {
        check_reason(req.reason)?;
        let named = self
            .certs
            .get_cert(&req.serial)?
            .ok_or_else(|| Error::CertNotFound(hex::encode(&req.serial)))?;
        let certs = self.certs.lineage_certs(&named.lineage)?;
        // All or nothing: every certificate the actor would revoke must be theirs to revoke.
        for c in certs.iter().filter(|c| !c.is_revoked()) {
            may_revoke(c)?;
        }
        self.lock_lineage(&named, "lineage_revoked", &req.actor)?;
        let also_revoked = self.revoke_all(req, &named, certs, may_revoke)?;
        self.audit(
            NewAuditEvent::ok(&req.actor, "lineage.revoke", named.lineage_hex()).with_detail(
                serde_json::json!({
                    "serial": named.serial_hex(),
                    "reason": req.reason.name(),
                    "revoked": also_revoked,
                }),
            ),
        );
        let record = self.certs.get_cert(&req.serial)?.unwrap_or(named);
        let named_hex = hex::encode(&req.serial);
        Ok(Revocation {
            record,
            also_revoked: also_revoked
                .into_iter()
                .filter(|s| *s != named_hex)
                .collect(),
            lineage_locked: true,
        })
    }

    /// Revoke each of `certs` not revoked yet (each through [`Authority::revoke_certificate`],
    /// so each is published and audited); returns their serials. A failure (the HSM could not
    /// sign an OCSP answer: the revocation itself is stored) does not stop the others; the
    /// first is returned.
    fn revoke_all<E: From<Error>>(
        &self,
        req: &RevocationRequest,
        cause: &CertRecord,
        certs: Vec<CertRecord>,
        may_revoke: &mut dyn FnMut(&CertRecord) -> std::result::Result<(), E>,
    ) -> std::result::Result<Vec<String>, E> {
        let mut revoked = Vec::new();
        let mut first_error: Option<E> = None;
        for c in certs.into_iter().filter(|c| !c.is_revoked()) {
            if let Err(e) = may_revoke(&c) {
                first_error.get_or_insert(e);
                continue;
            }
            match self.revoke_certificate(&c.serial, req.reason, &req.actor) {
                Ok(_) => {
                    self.observer.revoked_with_lineage(req.reason);
                    tracing::warn!(serial = %c.serial_hex(), lineage = %cause.lineage_hex(), reason = %req.reason, "revoked with its lineage");
                    revoked.push(c.serial_hex());
                }
                Err(Error::AlreadyRevoked { .. }) => {}
                Err(e) => {
                    tracing::error!(serial = %c.serial_hex(), error = %e, "revoking a lineage member failed");
                    first_error.get_or_insert(e.into());
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(revoked),
        }
    }
}
