//! The change feed ([`super::ChangeFeed`]): what one node committed, told to every node that
//! follows the store (OCSP answers, CRLs), so that a revocation on one node is answered by all
//! of them within a round trip instead of a polling interval.
//!
//! [`Hub`] fans changes out to subscriptions in this process. The sled store publishes to its
//! hub after each committing write; the PostgreSQL store's listener thread publishes what
//! `LISTEN` delivers (the writes send `NOTIFY` in their own transaction, so a change is told at
//! commit and never for a rolled-back write).
//!
//! Each subscription has a bounded queue: a subscriber that falls behind by more than
//! [`QUEUE`] changes loses them and receives [`Change::Resync`] instead, once there is room
//! again. Memory never grows with a stalled follower.

use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::Duration;

/// Changes a subscription may have queued before it falls back to [`Change::Resync`].
pub(crate) const QUEUE: usize = 4096;

/// A change committed by some node (this one included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The certificate with this serial was revoked.
    Revoked(Vec<u8>),
    /// The OCSP response stored under this serial was replaced: read it with
    /// [`super::OcspResponseStore::get_ocsp_response`] (it may cover several serials).
    OcspResponse(Vec<u8>),
    /// The certificate with this serial was pruned past its retention (README "Retention"):
    /// the store no longer knows it; drop any answer served for it.
    Pruned(Vec<u8>),
    /// A CRL of `scope` numbered `number` became the scope's latest: read it with
    /// [`super::CrlArchive::latest_crl`].
    Crl {
        /// The CRL's scope ([`super::FULL_CRL`] for the full CRL).
        scope: String,
        /// Its CRL number.
        number: u64,
    },
    /// Changes may have been missed (the feed reconnected, or this subscriber fell behind):
    /// re-read everything followed.
    Resync,
}

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
impl Change {
    /// The notification payload (PostgreSQL `NOTIFY`): `<origin>|` then `r:<hex>`, `o:<hex>`,
    /// `c:<number>:<scope>`; `origin` names the store handle that wrote it.
    pub(crate) fn encode(&self, origin: &str) -> String {
        format!("{origin}|{}", self.encode_bare())
    }

    fn encode_bare(&self) -> String {
        match self {
            Change::Revoked(s) => format!("r:{}", hex::encode(s)),
            Change::OcspResponse(s) => format!("o:{}", hex::encode(s)),
            Change::Pruned(s) => format!("p:{}", hex::encode(s)),
            Change::Crl { scope, number } => format!("c:{number}:{scope}"),
            Change::Resync => "s".into(),
        }
    }

    /// Read a payload written by [`Change::encode`]: its origin and the change; anything else
    /// is `Resync` (a payload from a newer binary: re-reading is always safe).
    pub(crate) fn decode(payload: &str) -> (Option<&str>, Change) {
        match payload.split_once('|') {
            Some((origin, bare)) => (Some(origin), Self::decode_bare(bare)),
            None => (None, Change::Resync),
        }
    }

    fn decode_bare(payload: &str) -> Change {
        let serial = |h: &str| hex::decode(h).ok();
        match payload.split_once(':') {
            Some(("r", h)) => serial(h).map(Change::Revoked),
            Some(("o", h)) => serial(h).map(Change::OcspResponse),
            Some(("p", h)) => serial(h).map(Change::Pruned),
            Some(("c", rest)) => rest.split_once(':').and_then(|(n, scope)| {
                Some(Change::Crl {
                    scope: scope.to_string(),
                    number: n.parse().ok()?,
                })
            }),
            _ => None,
        }
        .unwrap_or(Change::Resync)
    }
}

/// The feed ended: the store it followed was dropped.
#[derive(Debug, thiserror::Error)]
#[error("the store's change feed is closed")]
pub struct FeedClosed;

/// The receiving end of a [`super::ChangeFeed`] subscription. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Change>,
}

impl Subscription {
    /// The next change, waiting up to `timeout` (blocking: call it from a thread that may
    /// block). `Ok(None)`: nothing within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Change>, FeedClosed> {
        match self.rx.recv_timeout(timeout) {
            Ok(c) => Ok(Some(c)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(FeedClosed),
        }
    }

    /// The next change if one is queued.
    pub fn try_recv(&self) -> Result<Option<Change>, FeedClosed> {
        match self.rx.try_recv() {
            Ok(c) => Ok(Some(c)),
            Err(mpsc::TryRecvError::Empty) => Ok(None),
            Err(mpsc::TryRecvError::Disconnected) => Err(FeedClosed),
        }
    }
}

struct Subscriber {
    tx: SyncSender<Change>,
    /// Only changes other store handles (other nodes) committed.
    remote_only: bool,
    /// Changes were dropped: a `Resync` is owed before anything else.
    lagged: bool,
}

/// Subscriptions in this process, and the fan-out to them.
#[derive(Default)]
pub(crate) struct Hub {
    subs: Mutex<Vec<Subscriber>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new subscription, receiving what is published from now on (with `remote_only`,
    /// only what [`Hub::publish`] is told is not local, and `Resync`).
    pub(crate) fn subscribe(&self, remote_only: bool) -> Subscription {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        self.lock().push(Subscriber {
            tx,
            remote_only,
            lagged: false,
        });
        Subscription { rx }
    }

    /// Whether anyone is subscribed (a store skips building payloads otherwise).
    pub(crate) fn has_subscribers(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Tell every subscription (`local`: written through this store handle); drop those
    /// whose receiver is gone.
    pub(crate) fn publish(&self, change: &Change, local: bool) {
        self.lock().retain_mut(|s| {
            if local && s.remote_only && *change != Change::Resync {
                return true;
            }
            if s.lagged {
                match s.tx.try_send(Change::Resync) {
                    Ok(()) => s.lagged = false,
                    Err(TrySendError::Full(_)) => return true,
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            }
            match s.tx.try_send(change.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    s.lagged = true;
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_unknown_ones_mean_resync() {
        for c in [
            Change::Revoked(vec![1, 0xab]),
            Change::OcspResponse(vec![0x7f; 20]),
            Change::Pruned(vec![0x33, 0x01]),
            Change::Crl {
                scope: "shard:3".into(),
                number: 42,
            },
            Change::Resync,
        ] {
            assert_eq!(Change::decode(&c.encode("n1")), (Some("n1"), c));
        }
        for junk in [
            "",
            "n|x:1",
            "n|r:zz",
            "n|c:notanumber:full",
            "n|c:5",
            "r:01",
        ] {
            assert_eq!(Change::decode(junk).1, Change::Resync, "{junk:?}");
        }
    }

    #[test]
    fn a_subscriber_that_falls_behind_gets_one_resync_then_new_changes() {
        let hub = Hub::default();
        let slow = hub.subscribe(false);
        for i in 0..QUEUE + 10 {
            hub.publish(&Change::Revoked(vec![(i % 256) as u8]), true);
        }
        let mut got = 0;
        while let Ok(Some(c)) = slow.try_recv() {
            assert!(matches!(c, Change::Revoked(_)));
            got += 1;
        }
        assert_eq!(got, QUEUE, "the queue is bounded");
        hub.publish(&Change::OcspResponse(vec![9]), false);
        assert_eq!(slow.try_recv().ok().flatten(), Some(Change::Resync));
        assert_eq!(
            slow.try_recv().ok().flatten(),
            Some(Change::OcspResponse(vec![9]))
        );
        drop(slow);
        hub.publish(&Change::Resync, true);
        assert!(!hub.has_subscribers(), "a dropped subscription is removed");
    }

    #[test]
    fn a_remote_only_subscription_skips_local_changes_but_not_resync() {
        let hub = Hub::default();
        let remote = hub.subscribe(true);
        hub.publish(&Change::Revoked(vec![1]), true);
        hub.publish(&Change::Revoked(vec![2]), false);
        hub.publish(&Change::Resync, true);
        assert_eq!(
            remote.try_recv().ok().flatten(),
            Some(Change::Revoked(vec![2]))
        );
        assert_eq!(remote.try_recv().ok().flatten(), Some(Change::Resync));
        assert_eq!(remote.try_recv().ok().flatten(), None);
    }
}
