//! Following other nodes (DESIGN "Several nodes"): answers another node signed and stored are
//! taken into this responder's cache without a signature of its own, and a revocation another
//! node made withdraws the `good` answer this one serves until the new answer arrives.
//!
//! Invariants:
//! - A followed answer is served only if its signature verifies with this responder's own key
//!   and it answers for this issuer: whoever can write the store cannot make a node serve a
//!   response that key did not sign.
//! - No rollback: a followed answer never turns a `revoked` answer `good`, nor is a `good`
//!   answer taken for a serial the feed said was revoked in the last [`RECENT`] (a node that
//!   had not yet seen the revocation may commit a `good` group response after it); a
//!   `revoked` answer replaces a `good` one whatever their times; otherwise the newer wins.
//! - Following writes nothing and signs nothing; it takes the serial's sign lock, like every
//!   other write of the answer cache.

use super::super::build::parse_response;
use super::super::serial_magnitude;
use super::answer::OcspAnswer;
use super::cache::{check_stored, AnswerCache};
use super::key::Signing;
use super::live::UnknownAnswers;
use super::single;
use crate::error::{Error, Result};
use crate::store::{Store, StoredOcspResponse};
use der::Encode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a revocation told by the feed keeps followed `good` answers out.
pub(super) const RECENT: Duration = Duration::from_secs(600);

/// What following one change did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FollowStats {
    /// Answers taken into the cache.
    pub taken: usize,
    /// Answers refused: not signed by this responder's key, older than the one served, or
    /// `good` for a serial known revoked.
    pub refused: usize,
    /// `good` answers withdrawn after a revocation elsewhere.
    pub withdrawn: usize,
}

impl std::ops::AddAssign for FollowStats {
    fn add_assign(&mut self, o: Self) {
        self.taken += o.taken;
        self.refused += o.refused;
        self.withdrawn += o.withdrawn;
    }
}

/// Serials revoked recently according to the feed.
#[derive(Default)]
pub(super) struct Follower {
    revoked: Mutex<HashMap<Vec<u8>, Instant>>,
}

/// The parts following touches.
pub(super) struct FollowCtx<'a> {
    pub(super) signing: &'a Signing,
    pub(super) cache: &'a AnswerCache,
    pub(super) unknown: &'a UnknownAnswers,
    pub(super) store: &'a dyn Store,
}

/// The answer for `serial` in `stored`, a response read from this process's own store, if it
/// names this responder's key and this issuer: only that serial's SingleResponse is decoded
/// (`single.rs`); a response of another shape is decoded in full.
fn own_answer(
    stored: StoredOcspResponse,
    serial: &[u8],
    cx: &FollowCtx<'_>,
) -> Option<Arc<OcspAnswer>> {
    let (issuer, key_hash) = (cx.signing.issuer(), cx.signing.own_key_hash());
    match single::kind_for(&stored.der, serial, issuer, key_hash) {
        Some(kind) => Some(cx.cache.interner().answer(&stored.der, kind)),
        None => check_stored(&stored, issuer, key_hash, cx.cache.interner())?
            .into_iter()
            .find(|(s, _)| s == serial)
            .map(|(_, a)| a),
    }
}

impl Follower {
    fn recently_revoked(&self, serial: &[u8]) -> bool {
        let now = Instant::now();
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(serial)
            .is_some_and(|t| now.duration_since(*t) < RECENT)
    }

    /// A revocation committed elsewhere: withdraw a `good` answer for `serial` (the next
    /// request is answered from the store's record: signed live within the budget, or
    /// `tryLater`) until the revoking node's answer arrives.
    pub(super) fn revoked(&self, serial: &[u8], cx: &FollowCtx<'_>) -> FollowStats {
        let serial = serial_magnitude(serial);
        {
            let now = Instant::now();
            let mut r = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            r.retain(|_, t| now.duration_since(*t) < RECENT);
            r.insert(serial.to_vec(), now);
        }
        let _g = cx.cache.sign_lock(serial);
        let mut stats = FollowStats::default();
        if cx.cache.get(serial).is_some_and(|a| a.is_good()) {
            cx.cache.remove(serial);
            stats.withdrawn = 1;
        }
        stats
    }

    /// A request about `serial` (magnitude) missed the cache: read its stored response back
    /// and serve it, without a signature, if it names this responder's key and this issuer,
    /// it is fresh at `now`, and its status is the one the store holds for the certificate
    /// now (a response left `good` by a crash between a revocation's commit and its
    /// re-signing is not served; neither is a `good` for a serial the feed said was revoked
    /// recently). Installed in the cache under the serial's sign lock. `None`: answer live.
    pub(super) fn read_back(
        &self,
        serial: &[u8],
        now: chrono::DateTime<chrono::Utc>,
        cx: &FollowCtx<'_>,
    ) -> Option<Arc<OcspAnswer>> {
        let _g = cx.cache.sign_lock(serial);
        self.read_back_locked(serial, now, cx)
    }

    /// [`Follower::read_back`] on the async executor, for a store whose reads are local
    /// (sled: memory, or one page from disk): `None` at once if the serial's sign lock is
    /// held (a signing in progress) or the store holds nothing usable; the caller then takes
    /// the blocking path. Saves the hop to the blocking pool, which cost most of a miss.
    pub(super) fn read_back_nowait(
        &self,
        serial: &[u8],
        now: chrono::DateTime<chrono::Utc>,
        cx: &FollowCtx<'_>,
    ) -> Option<Arc<OcspAnswer>> {
        let _g = cx.cache.try_sign_lock(serial)?;
        self.read_back_locked(serial, now, cx)
    }

    fn read_back_locked(
        &self,
        serial: &[u8],
        now: chrono::DateTime<chrono::Utc>,
        cx: &FollowCtx<'_>,
    ) -> Option<Arc<OcspAnswer>> {
        if let Some(a) = cx.cache.get_fresh(serial, now) {
            return Some(a);
        }
        let read = |what: &str, e: Error| -> Option<Arc<OcspAnswer>> {
            tracing::warn!(serial = %hex::encode(serial), error = %e, "reading the {what} back for OCSP failed; answered live");
            None
        };
        let stored = match cx.store.get_ocsp_response(serial) {
            Ok(s) => s?,
            Err(e) => return read("stored response", e),
        };
        // Signed by this responder's key for this issuer; its status is checked against the
        // record below. On a shared store (other nodes, other writers: DESIGN "Several
        // nodes") the signature is verified, as for any followed answer. On this process's
        // own store (sled) the key hash is checked, as loading at start does, and the
        // signature is not verified again on this hot path (a relying party verifies it).
        let answer = if cx.store.is_shared() {
            let answers = self.verified(&stored, cx)?;
            answers.into_iter().find(|(s, _)| s == serial)?.1
        } else {
            own_answer(stored, serial, cx)?
        };
        if !answer.fresh(now) || (answer.is_good() && self.recently_revoked(serial)) {
            return None;
        }
        let rec = match cx.store.get_cert(serial) {
            Ok(r) => r?,
            Err(e) => return read("certificate", e),
        };
        if !answer
            .cert_status()
            .is_some_and(|s| super::same_status(s, &rec.cert_status()))
        {
            tracing::warn!(serial = %hex::encode(serial), "stored OCSP response disagrees with the certificate's status: signed again");
            return None;
        }
        cx.cache.insert(serial, answer.clone());
        Some(answer)
    }

    /// Serve `answer`, a stored answer `Responder::load` checked against the certificate's
    /// record, unless an answer was installed for `serial` meanwhile or the feed said it was
    /// revoked recently (a `good`). Whether it was installed.
    pub(super) fn install_loaded(
        &self,
        serial: &[u8],
        answer: Arc<OcspAnswer>,
        cx: &FollowCtx<'_>,
    ) -> bool {
        let _g = cx.cache.sign_lock(serial);
        if cx.cache.get(serial).is_some() || (answer.is_good() && self.recently_revoked(serial)) {
            return false;
        }
        cx.cache.insert(serial, answer);
        true
    }

    /// The answers of a stored response, if its signature verifies with this responder's key
    /// and it answers for this issuer.
    fn verified(
        &self,
        stored: &StoredOcspResponse,
        cx: &FollowCtx<'_>,
    ) -> Option<Vec<(Vec<u8>, Arc<OcspAnswer>)>> {
        let signer = cx.signing.key().signer();
        let verified = parse_response(&stored.der).and_then(|p| {
            let basic = p.basic.as_ref().ok_or(Error::SignatureCheckFailed)?;
            let tbs = basic.tbs_response_data.to_der()?;
            let sig = basic
                .signature
                .as_bytes()
                .ok_or(Error::SignatureCheckFailed)?;
            crate::signer::verify_own(signer, &tbs, sig)
        });
        match verified {
            Ok(()) => check_stored(
                stored,
                cx.signing.issuer(),
                cx.signing.own_key_hash(),
                cx.cache.interner(),
            ),
            Err(_) => None,
        }
    }

    /// Take the answers of a stored response, if this responder's key signed it.
    fn take(&self, stored: &StoredOcspResponse, cx: &FollowCtx<'_>) -> FollowStats {
        let mut stats = FollowStats::default();
        let Some(answers) = self.verified(stored, cx) else {
            tracing::warn!(serial = %hex::encode(&stored.serial), "stored OCSP response not signed by this responder's key for this issuer: not served");
            stats.refused = 1;
            return stats;
        };
        for (serial, answer) in answers {
            let _g = cx.cache.sign_lock(&serial);
            let current = cx.cache.get(&serial);
            // The followers' no-rollback rule (`OcspAnswer::replaces`), and no `good` answer
            // for a serial the feed said was revoked recently.
            let wanted = current.as_ref().is_none_or(|c| answer.replaces(c))
                && (answer.is_revoked() || !self.recently_revoked(&serial));
            if !wanted {
                stats.refused += 1;
                continue;
            }
            if current.is_some_and(|c| c.der == answer.der) {
                continue;
            }
            cx.cache.insert(&serial, answer);
            cx.unknown.forget(&serial);
            stats.taken += 1;
        }
        stats
    }

    /// The response stored under `serial` was replaced (by any node): take it.
    pub(super) fn stored(&self, serial: &[u8], cx: &FollowCtx<'_>) -> Result<FollowStats> {
        Ok(match cx.store.get_ocsp_response(serial)? {
            Some(stored) => self.take(&stored, cx),
            None => FollowStats::default(),
        })
    }

    /// Changes may have been missed: take every stored response newer than what is served.
    pub(super) fn resync(&self, cx: &FollowCtx<'_>) -> Result<FollowStats> {
        let mut stats = FollowStats::default();
        cx.store.for_each_ocsp_response(&mut |stored| {
            stats += self.take(&stored, cx);
            Ok(())
        })?;
        Ok(stats)
    }
}
