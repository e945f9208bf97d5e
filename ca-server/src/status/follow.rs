//! Following the other nodes on a shared store (DESIGN "Several nodes"): a thread of its own
//! receives what other nodes commit (the store's change feed, [`ca_core::store::ChangeFeed`])
//! and applies it to this node's OCSP responder and CRL publisher, signing nothing:
//!
//! | Change | Applied as |
//! |---|---|
//! | a revocation | the `good` answer for it withdrawn at once ([`Responder::follow_revoked`]); the CRL marked stale and the maintenance task woken (the lease holder rebuilds) |
//! | an OCSP response stored | its answers served if this node's key signed them and they are not a rollback ([`Responder::follow_stored`]) |
//! | a CRL archived | served if newer ([`CrlPublisher::adopt_archived`]) |
//! | resync (changes were missed) | every stored response re-read, the archived CRL, a CRL rebuild check |
//!
//! Only on a store other processes write (PostgreSQL); a sled store is this process's alone.
//!
//! [`Responder::follow_revoked`]: ca_core::ocsp::Responder::follow_revoked
//! [`Responder::follow_stored`]: ca_core::ocsp::Responder::follow_stored
//! [`CrlPublisher::adopt_archived`]: ca_core::crl::CrlPublisher::adopt_archived

use super::StatusState;
use ca_core::store::{Change, Subscription, FULL_CRL};
use std::sync::Weak;
use std::time::Duration;

/// How often the thread checks whether the server is stopping.
const POLL: Duration = Duration::from_millis(250);

/// Start the follower thread on `sub` (subscribed before the responder loaded, so nothing
/// committed in between is missed). It ends when the state is dropped or stopping.
pub(super) fn spawn(
    state: Weak<StatusState>,
    sub: Subscription,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("store-follow".into())
        .spawn(move || run(state, sub))
}

fn run(state: Weak<StatusState>, sub: Subscription) {
    loop {
        let change = match sub.recv_timeout(POLL) {
            Ok(c) => c,
            Err(_) => return,
        };
        let Some(me) = state.upgrade() else { return };
        if *me.stopping.borrow() {
            return;
        }
        if let Some(change) = change {
            apply(&me, change);
        }
    }
}

fn apply(me: &StatusState, change: Change) {
    match change {
        Change::Revoked(serial) => {
            let s = me.responder.follow_revoked(&serial);
            tracing::debug!(serial = %hex::encode(&serial), withdrawn = s.withdrawn, "revocation by another node");
            me.crls.note_revoked_serial(&serial);
            me.crl_dirty.notify_one();
        }
        Change::OcspResponse(serial) => {
            if let Err(e) = me.responder.follow_stored(&serial) {
                tracing::warn!(serial = %hex::encode(&serial), error = %e, "reading another node's OCSP response failed; the next resync or refresh takes it");
            }
        }
        Change::Pruned(serial) => {
            // Retention on another node: its record is gone, so is any answer served for it.
            // Kept out like a revoked serial's `good` answers (for `RECENT`), so the group
            // response the pruning node stores again under a remaining member does not bring
            // it back.
            me.responder.follow_revoked(&serial);
            me.responder.forget_pruned(&serial);
        }
        Change::Crl { scope, .. } if scope == FULL_CRL => {
            if let Err(e) = me.crls.adopt_archived() {
                tracing::warn!(error = %e, "reading the archived CRL failed");
            }
        }
        Change::Crl { scope, .. } if scope == ca_core::crl::DELTA_CRL => {
            if let Err(e) = me.crls.adopt_archived_delta() {
                tracing::warn!(error = %e, "reading the archived delta CRL failed");
            }
        }
        Change::Crl { scope, .. } => {
            if let Some(shard) = ca_core::crl::CrlShard::from_scope(&scope) {
                if let Err(e) = me.crls.adopt_archived_shard(shard) {
                    tracing::warn!(%shard, error = %e, "reading an archived CRL shard failed");
                }
            }
        }
        Change::Resync => {
            match me.responder.follow_resync() {
                Ok(s) => tracing::info!(
                    taken = s.taken,
                    refused = s.refused,
                    "resynchronised OCSP answers with the store"
                ),
                Err(e) => tracing::error!(error = %e, "resynchronising OCSP answers failed"),
            }
            if let Err(e) = me.crls.adopt_archived() {
                tracing::warn!(error = %e, "reading the archived CRL failed");
            }
            me.crls.mark_stale();
            me.crls.mark_all_shards_dirty();
            me.crl_dirty.notify_one();
        }
    }
}
