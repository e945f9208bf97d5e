//! Renewal policy: the lineage rules. Every certificate belongs to a lineage (the serial of
//! its generation 1); only the lineage's newest generation renews, at most once (the store's
//! check-and-insert, [`crate::store::CertStore::insert_renewal`]), and a locked lineage
//! renews no more. Whether a profile is renewable at all is the CA's check
//! ([`crate::issuance::Ca::prepare`], `not_renewable`).

use super::{Authority, Outcome};
use crate::audit::NewAuditEvent;
use crate::csr::CsrRequest;
use crate::error::{Error, Result};
use crate::issuance::{IssueContext, Issued};
use crate::store::{CertRecord, Requester};

/// How the authority answers a renewal by a superseded generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenewalPolicy {
    /// Lock the lineage when a superseded generation tries to renew (`[renewal]
    /// lock_on_superseded`, default on): two holders of one key renewing in turn is a cloned
    /// key.
    pub lock_on_superseded: bool,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        RenewalPolicy {
            lock_on_superseded: true,
        }
    }
}

/// The audit actor of a certificate's holder: its identity and serial (the server names
/// certificate holders the same way).
fn cert_actor(rec: &CertRecord) -> String {
    format!("{} (serial {})", rec.identity, rec.serial_hex())
}

impl Authority {
    /// Renewal authenticated by `previous`.
    pub(super) fn renew(&self, csr: &CsrRequest, previous: &CertRecord) -> Result<Outcome> {
        // Before any HSM work: a locked lineage, or a generation that renewed already.
        if let Some(lock) = self.certs.lineage_lock(&previous.lineage)? {
            return Err(Error::LineageLocked {
                lineage: previous.lineage_hex(),
                reason: lock.reason,
            });
        }
        let newest = self.certs.lineage_newest(&previous.lineage)?;
        if newest.is_some_and(|n| n.serial != previous.serial) {
            return self.superseded_renewal(csr, previous);
        }
        let prepared = self.ca.prepare(csr, IssueContext::Renewal { previous })?;
        match prepared.issue() {
            Ok(issued) => Ok(Outcome {
                issued,
                token: None,
            }),
            // Another renewal of the same generation was stored first (the store checks
            // again, atomically with the insert).
            Err(Error::GenerationSuperseded { .. }) => self.superseded_renewal(csr, previous),
            Err(e) => Err(e),
        }
    }

    /// A renewal by `previous`, a generation that has already renewed.
    ///
    /// If the request proves possession of the key of `previous`'s own successor (the CSR
    /// carries that certificate's public key, and the CSR's signature is the proof) and the
    /// successor is still the newest generation, this is the same agent retrying a renewal
    /// whose answer it lost: the successor is returned again, nothing is signed. Anything else
    /// is two holders of one key renewing in turn (a cloned key): refused with
    /// `generation_superseded`, audited as such, reported, and with
    /// [`RenewalPolicy::lock_on_superseded`] the lineage is locked.
    fn superseded_renewal(&self, csr: &CsrRequest, previous: &CertRecord) -> Result<Outcome> {
        let lineage = self.certs.lineage_certs(&previous.lineage)?;
        let newest = lineage.last().map_or(previous.generation, |c| c.generation);
        let successor = lineage.iter().find(|c| {
            c.generation == previous.generation.saturating_add(1)
                && c.requester == Requester::Renewal(previous.serial_hex())
        });
        let csr_key = crate::signer::sha256_hex(csr.public_key.spki_der());
        if let Some(s) = successor {
            if s.generation == newest && !s.is_revoked() && s.spki_sha256 == csr_key {
                self.audit(
                    NewAuditEvent::ok(cert_actor(previous), "renew.replay", s.serial_hex())
                        .with_detail(serde_json::json!({
                            "previous": previous.serial_hex(),
                            "lineage": previous.lineage_hex(),
                            "generation": s.generation,
                        })),
                );
                return Ok(Outcome {
                    issued: Issued {
                        record: s.clone(),
                        chain: self.ca.full_chain(),
                    },
                    token: None,
                });
            }
        }
        self.observer.renewal_superseded();
        tracing::warn!(
            serial = %previous.serial_hex(),
            lineage = %previous.lineage_hex(),
            generation = previous.generation,
            newest,
            "renewal by a superseded generation: a cloned key?"
        );
        let locked = if self.policy.lock_on_superseded {
            self.lock_lineage(previous, "superseded_renewal", "ca")?;
            true
        } else {
            false
        };
        self.audit(
            NewAuditEvent::failed(
                cert_actor(previous),
                "renew.superseded",
                previous.serial_hex(),
                "generation_superseded",
            )
            .with_detail(serde_json::json!({
                "lineage": previous.lineage_hex(),
                "generation": previous.generation,
                "newest": newest,
                "lineage_locked": locked,
                "signal": "a generation that already renewed tried to renew again: the key may be cloned",
            })),
        );
        Err(Error::GenerationSuperseded {
            serial: previous.serial_hex(),
            lineage: previous.lineage_hex(),
            generation: previous.generation,
            newest,
        })
    }
}
