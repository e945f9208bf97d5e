//! What the responder hands out: a DER OCSPResponse with the facts a transport needs about it.
//! Owns no state of the responder; the answers are shared (`Arc`) between the caches.

use super::super::build::error_response;
use crate::revocation::CertStatus;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use x509_ocsp::OcspResponseStatus;

/// What kind of response an [`OcspAnswer`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnswerKind {
    /// A signed `successful` response.
    Signed {
        /// Status of the (first) certificate asked about.
        status: CertStatus,
        /// producedAt: when the response was signed.
        produced_at: DateTime<Utc>,
        /// thisUpdate: the time the status is known correct at.
        this_update: DateTime<Utc>,
        /// nextUpdate: the time a newer response will be available by.
        next_update: DateTime<Utc>,
        /// Whether HTTP caches may keep it (false when it echoes a nonce: see the nonce policy
        /// in `ocsp/responder/live.rs`).
        cacheable: bool,
    },
    /// An unsigned error response (`malformedRequest`, `unauthorized`, `tryLater`,
    /// `internalError`).
    Error(OcspResponseStatus),
}

/// A DER OCSPResponse ready to send. The transport derives its own metadata from `kind` (the
/// status server's HTTP caching headers and entity tag) and may keep it in `transport`.
#[derive(Clone, Debug)]
pub struct OcspAnswer {
    /// The DER OCSPResponse.
    pub der: Vec<u8>,
    /// What it is.
    pub kind: AnswerKind,
    /// Data the transport derives once per answer (e.g. formatted HTTP headers).
    pub transport: TransportCache,
    /// How many slots of the answer cache hold it (the cache charges its bytes once, however
    /// many members of a group share it: `cache.rs`).
    pub(super) cache_slots: CacheSlots,
}

/// The count behind [`OcspAnswer::cache_slots`]. Cloning an answer gives the clone a count of
/// zero: no cache holds the clone yet.
#[derive(Default, Debug)]
pub(super) struct CacheSlots(std::sync::atomic::AtomicUsize);

impl CacheSlots {
    /// One more slot holds the answer; whether it is the first.
    pub(super) fn take(&self) -> bool {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0
    }

    /// One slot less holds the answer; whether it was the last.
    pub(super) fn release(&self) -> bool {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 1
    }
}

impl Clone for CacheSlots {
    fn clone(&self) -> Self {
        CacheSlots::default()
    }
}

/// A write-once slot in which the transport keeps what it derives from an answer, so that the
/// hot path does not recompute it per request. The responder neither reads nor knows its
/// type (the status server stores its formatted HTTP headers there). Cloning an answer leaves
/// the clone's slot empty.
#[derive(Default)]
pub struct TransportCache(std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>);

impl TransportCache {
    /// The value of type `T` in the slot, computed by `init` on first use. `None` if the slot
    /// already holds a value of another type.
    pub fn get_or_init<T: std::any::Any + Send + Sync>(
        &self,
        init: impl FnOnce() -> T,
    ) -> Option<&T> {
        self.0.get_or_init(|| Box::new(init())).downcast_ref::<T>()
    }
}

impl Clone for TransportCache {
    fn clone(&self) -> Self {
        TransportCache::default()
    }
}

impl std::fmt::Debug for TransportCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "TransportCache(set)"
        } else {
            "TransportCache(empty)"
        })
    }
}

impl AsRef<[u8]> for OcspAnswer {
    fn as_ref(&self) -> &[u8] {
        &self.der
    }
}

impl OcspAnswer {
    pub(super) fn new(der: Vec<u8>, kind: AnswerKind) -> Self {
        OcspAnswer {
            der,
            kind,
            transport: TransportCache::default(),
            cache_slots: CacheSlots::default(),
        }
    }

    fn error(status: OcspResponseStatus) -> Arc<Self> {
        Arc::new(Self::new(error_response(status), AnswerKind::Error(status)))
    }

    /// The status of the certificate asked about, for signed responses.
    pub fn cert_status(&self) -> Option<&CertStatus> {
        match &self.kind {
            AnswerKind::Signed { status, .. } => Some(status),
            AnswerKind::Error(_) => None,
        }
    }

    /// Whether it answers `good`.
    pub(super) fn is_good(&self) -> bool {
        matches!(self.cert_status(), Some(CertStatus::Good))
    }

    /// Whether it answers `revoked`.
    pub(super) fn is_revoked(&self) -> bool {
        matches!(self.cert_status(), Some(CertStatus::Revoked { .. }))
    }

    /// Whether this answer, read from the store, may replace `current` (the no-rollback rule
    /// of every follower: `follow.rs`, `stateless.rs`): a revocation is final, so a `revoked`
    /// answer replaces a `good` one whatever their times and a `good` answer never replaces a
    /// `revoked` one; otherwise the thisUpdate must not be older.
    pub(super) fn replaces(&self, current: &OcspAnswer) -> bool {
        match (self.is_revoked(), current.is_revoked()) {
            (true, false) => true,
            (false, true) => false,
            _ => current.this_update() <= self.this_update(),
        }
    }

    /// thisUpdate, for signed responses.
    pub fn this_update(&self) -> Option<DateTime<Utc>> {
        match &self.kind {
            AnswerKind::Signed { this_update, .. } => Some(*this_update),
            AnswerKind::Error(_) => None,
        }
    }

    /// nextUpdate, for signed responses.
    pub fn next_update(&self) -> Option<DateTime<Utc>> {
        match &self.kind {
            AnswerKind::Signed { next_update, .. } => Some(*next_update),
            AnswerKind::Error(_) => None,
        }
    }

    /// Whether it may still be served at `now` (signed and before its nextUpdate).
    #[inline]
    pub(super) fn fresh(&self, now: DateTime<Utc>) -> bool {
        self.next_update().is_some_and(|n| n > now)
    }
}

/// The unsigned error responses, encoded once at start and shared by every request that gets
/// one (they cost nothing to hand out).
pub(super) struct ErrorAnswers {
    pub(super) malformed: Arc<OcspAnswer>,
    pub(super) unauthorized: Arc<OcspAnswer>,
    pub(super) try_later: Arc<OcspAnswer>,
    pub(super) internal_error: Arc<OcspAnswer>,
}

impl ErrorAnswers {
    pub(super) fn new() -> Self {
        ErrorAnswers {
            malformed: OcspAnswer::error(OcspResponseStatus::MalformedRequest),
            unauthorized: OcspAnswer::error(OcspResponseStatus::Unauthorized),
            try_later: OcspAnswer::error(OcspResponseStatus::TryLater),
            internal_error: OcspAnswer::error(OcspResponseStatus::InternalError),
        }
    }
}
