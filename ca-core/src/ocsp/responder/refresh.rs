//! The refresher: re-signing after a status change ([`Refresher::on_revoked`]), the backlog of
//! serials the HSM failed to sign, and the periodic pass over answers near their nextUpdate
//! ([`Refresher::refresh_due`]).
//!
//! Invariants:
//! - No `good` answer outlives a revocation: if re-signing at revocation fails, the old answer
//!   is withdrawn (the certificate is answered live, or `tryLater`) and the serial stays on the
//!   backlog until a pass (or a repeated revocation, [`Refresher::retry_resign`]) signs it.
//! - Every re-signing reads the status the store holds now, under the serial's sign lock.
//! - While the responder certificate cannot sign, a pass signs nothing and logs one error.

use super::super::serial_magnitude;
use super::external::ExternalResponses;
use super::install::{Installer, Persist};
use crate::error::Result;
use crate::store::{CertRecord, RecordStatus};
use std::collections::{BTreeSet, HashSet};
use std::sync::{Mutex, MutexGuard};

/// What [`super::Responder::refresh_due`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefreshStats {
    /// Responses re-signed.
    pub refreshed: usize,
    /// Responses dropped (certificate expired and response stale, or certificate gone).
    pub dropped: usize,
    /// Re-signing failures (logged; retried on the next pass).
    pub failed: usize,
}

/// The re-sign backlog: serials (magnitude) whose response could not be signed at issuance
/// or re-signed after a status change.
pub(super) struct Refresher {
    backlog: Mutex<BTreeSet<Vec<u8>>>,
    batch_max: usize,
}

impl Refresher {
    pub(super) fn new(batch_max: usize) -> Self {
        Refresher {
            backlog: Mutex::new(BTreeSet::new()),
            batch_max,
        }
    }

    fn backlog(&self) -> MutexGuard<'_, BTreeSet<Vec<u8>>> {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Put serials (magnitudes) on the backlog.
    pub(super) fn add<'a>(&self, serials: impl Iterator<Item = &'a [u8]>) {
        self.backlog().extend(serials.map(<[u8]>::to_vec));
    }

    pub(super) fn len(&self) -> usize {
        self.backlog().len()
    }

    /// Re-sign the answer of a certificate just revoked; see `Responder::on_revoked`.
    pub(super) fn on_revoked(&self, rec: &CertRecord, inst: &Installer<'_>) -> Result<()> {
        let serial = serial_magnitude(&rec.serial).to_vec();
        let _g = inst.cache.sign_lock(&serial);
        if let (true, RecordStatus::Revoked { at, reason }) =
            (inst.signing.is_own_cert(&serial), &rec.status)
        {
            if let Err(e) = inst.sign_and_install(&rec.serial, &rec.cert_status()) {
                tracing::error!(error = %e, "signing the OCSP responder certificate's own revoked answer failed; the CRL lists it");
                inst.cache.remove(&serial);
            }
            self.backlog().remove(&serial);
            inst.signing.mark_signer_revoked(*at, *reason);
            return Ok(());
        }
        let r = inst.sign_and_install(&rec.serial, &rec.cert_status());
        if r.is_err() {
            inst.cache.remove(&serial);
            self.backlog().insert(serial);
        } else {
            self.backlog().remove(&serial);
        }
        r
    }

    /// Re-sign `serial` now if it is on the backlog; `None` if it is not.
    pub(super) fn retry_resign(&self, serial: &[u8], inst: &Installer<'_>) -> Option<Result<()>> {
        let serial = serial_magnitude(serial).to_vec();
        if !self.backlog().contains(&serial) {
            return None;
        }
        Some(match inst.store.get_cert(&serial) {
            Ok(Some(rec)) => self.on_revoked(&rec, inst),
            Ok(None) => {
                self.backlog().remove(&serial);
                Ok(())
            }
            Err(e) => Err(e),
        })
    }

    /// One refresh pass; see `Responder::refresh_due`.
    pub(super) fn refresh_due(
        &self,
        inst: &Installer<'_>,
        external: &ExternalResponses,
    ) -> Result<RefreshStats> {
        let signing = inst.signing;
        let now = signing.now();
        let mut stats = RefreshStats::default();
        if let Err(e) = signing.refresh_signer_revocation(inst.store) {
            tracing::error!(error = %e, "reading the OCSP responder certificate's record failed");
        }
        if let Err(e) = signing.next_update_at(now) {
            tracing::error!(error = %e, "OCSP refresh pass skipped: nothing can be signed");
            stats.failed += external.reload(now);
            return Ok(stats);
        }
        self.sign_backlog(inst, &mut stats);
        let due_at = |n| n <= now || signing.refresh_wanted(n, now);
        let due = if inst.cache.is_partial() {
            // The cache does not hold every answer (it is bounded): the stored responses'
            // dates say which are due, read in one streaming pass that reads no response
            // (memory: the due serials only).
            let mut due = Vec::new();
            let mut seen = HashSet::new();
            let horizon = now + signing.refresh_before();
            inst.store
                .for_each_ocsp_due(horizon, &mut |serial, next_update| {
                    if due_at(next_update) {
                        let serial = serial_magnitude(serial).to_vec();
                        if seen.insert(serial.clone()) {
                            due.push(serial);
                        }
                    }
                    Ok(())
                })?;
            due
        } else {
            inst.cache.select(|a| a.next_update().is_none_or(due_at))
        };
        for serial in due {
            let _g = inst.cache.sign_lock(&serial);
            let stale = inst.cache.get(&serial).is_none_or(|a| !a.fresh(now));
            match inst.store.get_cert(&serial) {
                Ok(Some(rec)) if rec.not_after > now => {
                    // Written without a flush each; one flush at the end of the pass (a crash
                    // before it leaves the previous, still valid, responses in the store).
                    match inst.sign_and_install_as(&rec.serial, &rec.cert_status(), Persist::Lazy) {
                        Ok(()) => stats.refreshed += 1,
                        Err(e) => {
                            tracing::error!(serial = %hex::encode(&serial), error = %e, "re-signing OCSP response failed");
                            stats.failed += 1;
                        }
                    }
                }
                Ok(Some(_)) if !stale => {}
                Ok(_) => {
                    inst.cache.remove(&serial);
                    stats.dropped += 1;
                }
                Err(e) => {
                    tracing::error!(serial = %hex::encode(&serial), error = %e, "store lookup for OCSP refresh failed");
                    stats.failed += 1;
                }
            }
        }
        if stats.refreshed > 0 {
            if let Err(e) = inst.store.flush() {
                tracing::error!(error = %e, "flushing re-signed OCSP responses failed; they are served, and signed again after a restart");
            }
        }
        inst.unknown.prune(now);
        stats.failed += external.reload(now);
        Ok(stats)
    }

    /// The backlog and the external files only; see `Responder::refresh_backlog`.
    pub(super) fn refresh_backlog(
        &self,
        inst: &Installer<'_>,
        external: &ExternalResponses,
    ) -> Result<RefreshStats> {
        let now = inst.signing.now();
        let mut stats = RefreshStats::default();
        if inst.signing.next_update_at(now).is_ok() && self.len() > 0 {
            self.sign_backlog(inst, &mut stats);
        }
        inst.unknown.prune(now);
        stats.failed += external.reload(now);
        Ok(stats)
    }

    /// Sign what the HSM failed to sign: unrevoked certificates (issuances) in groups, as at
    /// issuance; revoked ones each with its own status, through [`Refresher::on_revoked`],
    /// which keeps the backlog.
    fn sign_backlog(&self, inst: &Installer<'_>, stats: &mut RefreshStats) {
        let backlog: Vec<Vec<u8>> = self.backlog().iter().cloned().collect();
        let mut unrevoked: Vec<CertRecord> = Vec::new();
        for serial in backlog {
            let signed = match inst.store.get_cert(&serial) {
                Ok(Some(rec)) if !rec.is_revoked() => {
                    unrevoked.push(rec);
                    continue;
                }
                Ok(Some(rec)) => self.on_revoked(&rec, inst),
                Ok(None) => {
                    self.backlog().remove(&serial);
                    continue;
                }
                Err(e) => Err(e),
            };
            match signed {
                Ok(()) => stats.refreshed += 1,
                Err(e) => {
                    tracing::error!(serial = %hex::encode(&serial), error = %e, "re-signing OCSP response after a status change failed again");
                    stats.failed += 1;
                }
            }
        }
        for group in unrevoked.chunks(self.batch_max.max(1)) {
            let recs: Vec<&CertRecord> = group.iter().collect();
            match inst.sign_group(&recs) {
                Ok(_) => {
                    stats.refreshed += group.len();
                    let mut backlog = self.backlog();
                    for r in group {
                        backlog.remove(serial_magnitude(&r.serial));
                    }
                }
                Err(e) => {
                    tracing::error!(certificates = group.len(), error = %e, "signing OCSP responses left over from issuance failed again");
                    stats.failed += group.len();
                }
            }
        }
    }
}
