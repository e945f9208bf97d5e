//! The read-only follower behind a stateless OCSP responder (`ca-server ocsp`): it answers
//! from the responses the signing nodes pre-signed and stored, and holds no key.
//!
//! It keeps the same bounded answer cache and request memo as [`super::Responder`]: a request
//! whose answer is not in memory reads the stored response
//! ([`crate::store::OcspResponseStore::get_ocsp_response`]) and the certificate's record, and
//! the answer, once checked, stays in memory (up to `cache_max_entries`; memory does not grow
//! with the store). The store's change feed ([`crate::store::ChangeFeed`]) keeps what is in
//! memory current: a changed response is read back and installed, a revocation withdraws the
//! `good` answer, a kept CRL is re-read ([`crate::store::CrlArchive::latest_crl`]); what is in
//! memory is re-read after a gap in the feed and on a slow periodic pass. Nothing is read at
//! start but the CRL: the time to ready does not grow with the store.
//!
//! # Whom it trusts
//!
//! Not the database. Whoever can write it must not be able to make the follower answer
//! `good` for a revoked certificate, so:
//!
//! - a stored response is installed only if its signature verifies with the issuing CA's key,
//!   or with the key of a delegated responder certificate embedded in it that the issuing CA
//!   signed, that carries id-kp-OCSPSigning (RFC 6960 4.2.2.2), that is within its validity
//!   and that the store does not list as revoked; anything else is refused and logged
//!   ([`StatelessStats::refused`]), and the answer in memory (or `tryLater`) stays;
//! - an answer is never served past its nextUpdate (`tryLater` instead);
//! - a response replaces the one in memory only if its thisUpdate is not older, and a `good`
//!   never replaces a `revoked` (a replayed old row does not roll a serial back; the rule of
//!   a signing node following another, `follow.rs`);
//! - a certificate the store lists as revoked is never answered `good`: its `good` answer is
//!   withdrawn when the revocation is seen, and a `good` response read for it is not installed
//!   (`tryLater` until the signing node's `revoked` response arrives);
//! - the CRL is served only once its signature verifies with the issuing CA's key, its issuer
//!   is the CA, and its number is not lower than the one served.
//!
//! A restarted follower has no memory of what it served: a replayed response that is validly
//! signed and not past its nextUpdate is served until a newer one is read (the window is the
//! response validity, `[ocsp] validity` on the signing nodes).
//!
//! # Answers
//!
//! | Request | Answer |
//! |---|---|
//! | undecodable, nonce outside 1..=32 bytes, several CertIDs (RFC 5019 2.1.1) | `malformedRequest` |
//! | another issuer, or a CertID hash other than SHA-1/SHA-256 | `unauthorized` |
//! | a fresh stored response covers the serial | that response (nonce ignored, RFC 5019 2.2.1) |
//! | no fresh response, the certificate is in the store | `tryLater` |
//! | no certificate with this serial in the store | `unauthorized`: it cannot sign `unknown` (RFC 5019 2.2.3) |
//! | the store cannot be read, or too many reads in flight | `tryLater` |

use super::super::build::{error_response, key_hash, parse_response};
use super::super::request::parse_request;
use super::super::{serial_magnitude, OcspIssuer};
use super::answer::{AnswerKind, ErrorAnswers, OcspAnswer};
use super::cache::{stored_answers, AnswerCache};
use super::check_delegated;
use super::key::PRESIGNED_ALGS;
use super::{LiveRequest, Lookup, MemoStats};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::revocation::CertStatus;
use crate::store::{Change, Store, StoredCrl, StoredOcspResponse, DELTA_CRL, FULL_CRL};
use chrono::{DateTime, Utc};
use der::Encode;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use x509_cert::Certificate;
use x509_ocsp::{OcspResponseStatus, ResponderId};

/// Settings of a [`StatelessResponder`].
#[derive(Clone, Debug)]
pub struct StatelessConfig {
    /// Bound in bytes of the request memo (as [`super::ResponderConfig::memo_max_bytes`]).
    pub memo_max_bytes: usize,
    /// Most store reads in flight for requests the memory cannot answer; more get `tryLater`
    /// (default 16), so that requests about random serials cannot queue up on the database.
    pub max_store_reads: usize,
    /// Time between re-reads of what is in memory, the safety net behind the change feed
    /// (default 5 minutes).
    pub full_reload_interval: Duration,
    /// Most answers kept in memory (default 200 000, as
    /// [`super::ResponderConfig::cache_max_entries`]); the others are read from the store when
    /// asked about.
    pub cache_max_entries: usize,
    /// Bound in bytes of those answers (default 64 MiB, as
    /// [`super::ResponderConfig::cache_max_bytes`]).
    pub cache_max_bytes: usize,
}

impl Default for StatelessConfig {
    fn default() -> Self {
        StatelessConfig {
            memo_max_bytes: 8 * 1024 * 1024,
            max_store_reads: 16,
            full_reload_interval: Duration::from_secs(300),
            cache_max_entries: 200_000,
            cache_max_bytes: super::config::DEFAULT_CACHE_MAX_BYTES,
        }
    }
}

/// Counters of a [`StatelessResponder`], for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatelessStats {
    /// Serials with an answer in memory.
    pub answers: usize,
    /// Stored responses refused: undecodable, not signed by the CA or a valid delegated
    /// responder of it, or a CRL that does not verify. Each is logged.
    pub refused: u64,
    /// Stored responses not installed because the answer in memory is newer (a replayed row).
    pub older_ignored: u64,
    /// Stored responses installed (at full reloads and from the change feed).
    pub installed: u64,
    /// Full re-reads of the store completed.
    pub full_reloads: u64,
    /// The cRLNumber of the CRL served, if any.
    pub crl_number: Option<u64>,
}

/// A CRL read from the store's archive whose issuer and signature were checked; its number
/// and times are read from the signed CRL, not from the store's columns. (Its own type: the
/// `ocsp` module does not depend on `crl`, which depends on it.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedCrl {
    /// DER CertificateList.
    pub der: Vec<u8>,
    /// cRLNumber.
    pub number: u64,
    /// thisUpdate.
    pub this_update: DateTime<Utc>,
    /// nextUpdate.
    pub next_update: DateTime<Utc>,
}

impl AsRef<[u8]> for ArchivedCrl {
    fn as_ref(&self) -> &[u8] {
        &self.der
    }
}

/// Why a stored response or CRL was refused.
#[derive(Debug)]
enum Refusal {
    Undecodable(String),
    NotSuccessful(OcspResponseStatus),
    UnknownSigner,
    BadSignature,
    Delegate(String),
    Uncovered,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Undecodable(e) => write!(f, "undecodable: {e}"),
            Refusal::NotSuccessful(s) => write!(f, "response status {s:?}, not successful"),
            Refusal::UnknownSigner => f.write_str(
                "responderID is neither the issuing CA's key nor a responder certificate in the response",
            ),
            Refusal::BadSignature => f.write_str("signature does not verify"),
            Refusal::Delegate(e) => write!(f, "delegated responder certificate refused: {e}"),
            Refusal::Uncovered => {
                f.write_str("no fresh SingleResponse of this issuer for the serial it is stored under")
            }
        }
    }
}

/// How long a delegated responder certificate's revocation status read from the store is
/// trusted before it is read again (a revocation in the change feed ends it at once).
const DELEGATE_TTL: Duration = Duration::from_secs(10);

/// The answers one stored response gives, by serial (magnitude).
type SerialAnswers = Vec<(Vec<u8>, Arc<OcspAnswer>)>;

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// A stateless OCSP responder's state: verified answers and CRL from the store, no key.
/// Thread-safe; share it in an `Arc`.
pub struct StatelessResponder {
    issuer: OcspIssuer,
    issuer_key_hash: Vec<u8>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: StatelessConfig,
    cache: AnswerCache,
    errors: ErrorAnswers,
    /// Delegated responder certificates (serial magnitude) -> whether the store lists them
    /// as revoked, and when that was read (kept [`DELEGATE_TTL`]; a revocation in the feed
    /// forgets it at once).
    delegates: Mutex<HashMap<Vec<u8>, (bool, Instant)>>,
    /// The verified CRLs served, by archive scope: the full CRL ([`FULL_CRL`]), the delta
    /// ([`DELTA_CRL`]) and the shards (`shard:<id>`).
    crls: RwLock<HashMap<String, Arc<ArchivedCrl>>>,
    loaded: AtomicBool,
    stopping: AtomicBool,
    reads_in_flight: AtomicUsize,
    refused: AtomicU64,
    older_ignored: AtomicU64,
    installed: AtomicU64,
    full_reloads: AtomicU64,
}

impl std::fmt::Debug for StatelessResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatelessResponder")
            .field("answers", &self.cache.len())
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

impl StatelessResponder {
    /// A follower answering for certificates issued by `issuer_cert_der`, reading `store`.
    /// Nothing is read yet: [`StatelessResponder::reload`] (or [`StatelessResponder::start`]) fills it.
    pub fn new(
        issuer_cert_der: &[u8],
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: StatelessConfig,
    ) -> Result<Self> {
        if config.cache_max_entries == 0 {
            return Err(Error::Config {
                path: "ocsp.cache_max_entries".into(),
                reason: "must be at least 1".into(),
            });
        }
        if config.cache_max_bytes < super::config::MIN_CACHE_MAX_BYTES {
            return Err(Error::Config {
                path: "ocsp.cache_max_bytes".into(),
                reason: "must be at least 4096".into(),
            });
        }
        if config.max_store_reads == 0 {
            return Err(Error::Config {
                path: "ocsp.max_store_reads".into(),
                reason: "must be at least 1".into(),
            });
        }
        let issuer = OcspIssuer::from_cert_der(issuer_cert_der)?;
        Ok(StatelessResponder {
            issuer_key_hash: key_hash(issuer.public_key_bits()),
            issuer,
            store,
            clock,
            cache: AnswerCache::new(
                config.memo_max_bytes,
                config.cache_max_entries,
                config.cache_max_bytes,
            ),
            config,
            errors: ErrorAnswers::new(),
            delegates: Mutex::new(HashMap::new()),
            crls: RwLock::new(HashMap::new()),
            loaded: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            reads_in_flight: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            older_ignored: AtomicU64::new(0),
            installed: AtomicU64::new(0),
            full_reloads: AtomicU64::new(0),
        })
    }

    /// An unsigned error response (`tryLater`, `malformedRequest`, ...), for a transport that
    /// has no follower yet (the store not opened).
    pub fn error_answer(status: OcspResponseStatus) -> Arc<OcspAnswer> {
        Arc::new(OcspAnswer::new(
            error_response(status),
            AnswerKind::Error(status),
        ))
    }

    /// The issuer answered for.
    pub fn issuer(&self) -> &OcspIssuer {
        &self.issuer
    }

    /// Whether a full read of the store has completed (answers and CRL loaded).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The verified full CRL served, if one was read.
    pub fn crl(&self) -> Option<Arc<ArchivedCrl>> {
        self.archived_crl(FULL_CRL)
    }

    /// The verified CRL of an archive scope served: [`FULL_CRL`], the delta CRL
    /// ([`DELTA_CRL`]) or a shard ([`crate::x509::CrlShard::scope`]), if one was read.
    pub fn archived_crl(&self, scope: &str) -> Option<Arc<ArchivedCrl>> {
        read(&self.crls).get(scope).cloned()
    }

    /// Counters.
    pub fn stats(&self) -> StatelessStats {
        StatelessStats {
            answers: self.cache.len(),
            refused: self.refused.load(Ordering::Relaxed),
            older_ignored: self.older_ignored.load(Ordering::Relaxed),
            installed: self.installed.load(Ordering::Relaxed),
            full_reloads: self.full_reloads.load(Ordering::Relaxed),
            crl_number: self.crl().map(|c| c.number),
        }
    }

    /// Sizes of the request memo.
    pub fn memo_stats(&self) -> MemoStats {
        self.cache.memo_stats()
    }

    /// The answer cache: entries, bound, hits, misses, misses answered from the store,
    /// evictions.
    pub fn cache_stats(&self) -> super::CacheStats {
        self.cache.stats()
    }

    /// The answer in memory for `serial`, fresh or not.
    pub fn cached(&self, serial: &[u8]) -> Option<Arc<OcspAnswer>> {
        self.cache.get(serial_magnitude(serial))
    }

    /// The precomputed `malformedRequest` response.
    pub fn malformed_request(&self) -> Arc<OcspAnswer> {
        self.errors.malformed.clone()
    }

    /// The precomputed `tryLater` response (e.g. before the first load).
    pub fn try_later(&self) -> Arc<OcspAnswer> {
        self.errors.try_later.clone()
    }

    /// Answer from memory (no I/O): a fresh stored response, or an error response. Returns
    /// [`Lookup::Live`] when the store must be asked whether the certificate exists: call
    /// [`StatelessResponder::answer_miss`] off the async executor.
    pub fn lookup(&self, request_der: &[u8]) -> Lookup {
        let now = self.clock.now();
        if let Some(a) = self
            .cache
            .memo_lookup(request_der, |serial| self.cache.get_fresh(serial, now))
        {
            self.cache.count_hit();
            return Lookup::Ready(a);
        }
        // RFC 5019 2.1.1: one CertID per request; a stored response cannot answer several.
        let parsed = match parse_request(request_der, 1) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "malformed OCSP request");
                return Lookup::Ready(self.errors.malformed.clone());
            }
        };
        let Some(rc) = parsed.certs.first() else {
            return Lookup::Ready(self.errors.malformed.clone());
        };
        // Another issuer, or a CertID hash no stored response carries: the CertID of the
        // answer would not match the request's.
        match self.issuer.matches(&rc.cert_id) {
            Some(alg) if PRESIGNED_ALGS.contains(&alg) => {}
            _ => return Lookup::Ready(self.errors.unauthorized.clone()),
        }
        if let Some(a) = self.cache.get_fresh(&rc.serial, now) {
            self.cache.memoise(request_der, &rc.cert_id, &rc.serial);
            self.cache.count_hit();
            return Lookup::Ready(a);
        }
        Lookup::Live(LiveRequest { parsed })
    }

    /// Answer a request [`StatelessResponder::lookup`] could not (blocking: reads the store):
    /// the stored response, read back and checked like any other (signature, freshness) and
    /// against the certificate's status in the store; else `tryLater`
    /// when the certificate exists (its response is missing, stale or withheld), `unauthorized`
    /// when the store has no certificate with this serial (a follower cannot sign `unknown`),
    /// `tryLater` when the store cannot be read or [`StatelessConfig::max_store_reads`] reads
    /// are in flight already.
    pub fn answer_miss(&self, live: LiveRequest) -> Arc<OcspAnswer> {
        let Some(rc) = live.parsed.certs.first() else {
            return self.errors.malformed.clone();
        };
        if let Some(a) = self.cache.get_fresh(&rc.serial, self.clock.now()) {
            return a;
        }
        if !self.is_loaded() {
            return self.errors.try_later.clone();
        }
        let in_flight = self.reads_in_flight.fetch_add(1, Ordering::AcqRel);
        struct Release<'a>(&'a AtomicUsize);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _release = Release(&self.reads_in_flight);
        if in_flight >= self.config.max_store_reads {
            return self.errors.try_later.clone();
        }
        let read = self.read_back(serial_magnitude(&rc.serial));
        self.cache.count_miss(read.is_some());
        if let Some(a) = read {
            return a;
        }
        match self.store.serial_exists(&rc.serial) {
            Ok(true) => self.errors.try_later.clone(),
            Ok(false) => self.errors.unauthorized.clone(),
            Err(e) => {
                tracing::warn!(error = %e, "OCSP: cannot look the serial up in the store; answering tryLater");
                self.errors.try_later.clone()
            }
        }
    }

    /// Answer a request completely (blocking when the store must be read).
    pub fn respond(&self, request_der: &[u8]) -> Arc<OcspAnswer> {
        match self.lookup(request_der) {
            Lookup::Ready(a) => a,
            Lookup::Live(l) => self.answer_miss(l),
        }
    }

    /// Re-read what is in memory (blocking): each answer's stored response (a newer one is
    /// taken, a removed one forgotten), each `good` answer's certificate (revoked or gone:
    /// withdrawn), and the latest full CRL; answers past their nextUpdate are dropped. The
    /// safety net behind the change feed: its cost follows the bounded cache, not the store
    /// (answers not in memory are read when asked about). The follower counts as loaded once
    /// this has succeeded once.
    pub fn reload(&self) -> Result<()> {
        let now = self.clock.now();
        for serial in self.cache.select(|_| true) {
            match self.store.get_ocsp_response(&serial)? {
                None => self.forget(&serial),
                Some(stored) => {
                    if self.cache.get(&serial).is_some_and(|a| a.der != stored.der) {
                        self.install_stored(&stored);
                    }
                }
            }
            if self.cache.get(&serial).is_some_and(|a| a.is_good()) {
                let revoked = !matches!(self.store.get_cert(&serial)?, Some(r) if !r.is_revoked());
                if revoked {
                    self.withdraw_good(&serial);
                }
            }
        }
        for serial in self.cache.select(|a| !a.fresh(now)) {
            let _g = self.cache.sign_lock(&serial);
            if self.cache.get(&serial).is_some_and(|a| !a.fresh(now)) {
                self.cache.remove(&serial);
            }
        }
        self.reload_crls()?;
        self.full_reloads.fetch_add(1, Ordering::Relaxed);
        let first = !self.loaded.swap(true, Ordering::AcqRel);
        let s = self.stats();
        tracing::info!(
            answers = s.answers,
            refused = s.refused,
            crl_number = ?s.crl_number,
            first,
            "stateless OCSP responder: store read"
        );
        Ok(())
    }

    /// A request about `serial` (magnitude) missed the cache: its stored response, if it
    /// verifies, is fresh, and gives the status the store holds for the certificate now
    /// (a `good` for a revoked certificate is not served); installed in the cache.
    fn read_back(&self, serial: &[u8]) -> Option<Arc<OcspAnswer>> {
        let warn = |what: &str, e: Error| -> Option<Arc<OcspAnswer>> {
            tracing::warn!(serial = %hex::encode(serial), error = %e, "stateless OCSP responder: cannot read the {what}; answering tryLater");
            None
        };
        let stored = match self.store.get_ocsp_response(serial) {
            Ok(s) => s?,
            Err(e) => return warn("stored response", e),
        };
        let now = self.clock.now();
        let answers = match self.verify_stored(&stored, now) {
            Ok(a) => a,
            Err(reason) => {
                self.refuse(&stored, &reason);
                return None;
            }
        };
        let (_, answer) = answers.into_iter().find(|(s, _)| s == serial)?;
        if !answer.fresh(now) {
            return None;
        }
        let _g = self.cache.sign_lock(serial);
        let rec = match self.store.get_cert(serial) {
            Ok(r) => r?,
            Err(e) => return warn("certificate", e),
        };
        let right = matches!(
            (answer.cert_status(), rec.is_revoked()),
            (Some(CertStatus::Good), false) | (Some(CertStatus::Revoked { .. }), true)
        );
        if !right {
            tracing::info!(serial = %hex::encode(serial), "stateless OCSP responder: the stored response disagrees with the certificate's status; tryLater until the signing node's answer arrives");
            return None;
        }
        if let Some(current) = self.cache.get_fresh(serial, now) {
            return Some(current);
        }
        self.cache.insert(serial, answer.clone());
        self.installed.fetch_add(1, Ordering::Relaxed);
        Some(answer)
    }

    fn forget(&self, serial: &[u8]) {
        let _g = self.cache.sign_lock(serial);
        self.cache.remove(serial);
    }

    fn refuse(&self, stored: &StoredOcspResponse, reason: &Refusal) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            serial = %hex::encode(&stored.serial),
            %reason,
            "stateless OCSP responder: refusing a stored OCSP response; serving the previous answer or tryLater"
        );
    }

    /// Apply one change from the feed (blocking: reads the store).
    pub fn apply(&self, change: &Change) -> Result<()> {
        match change {
            Change::Revoked(serial) => {
                let serial = serial_magnitude(serial).to_vec();
                self.delegates
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&serial);
                self.withdraw_good(&serial);
                Ok(())
            }
            // Only for an answer in memory: one that is not is read when asked about.
            Change::OcspResponse(serial) => {
                if self.cache.get(serial_magnitude(serial)).is_some() {
                    if let Some(stored) = self.store.get_ocsp_response(serial)? {
                        self.install_stored(&stored);
                    }
                }
                Ok(())
            }
            Change::Pruned(serial) => {
                // Retention removed the certificate: forget its answer. A group response
                // stored again under a remaining member cannot bring it back fresh (it was
                // signed at issuance, long before the retention period ended).
                self.forget(serial_magnitude(serial));
                Ok(())
            }
            Change::Crl { scope, .. } if served_scope(scope) => self.reload_crl(scope),
            Change::Crl { .. } => Ok(()),
            Change::Resync => self.reload(),
        }
    }

    /// The certificate is revoked (or gone) in the store: withdraw its `good` answer.
    fn withdraw_good(&self, serial: &[u8]) {
        let _g = self.cache.sign_lock(serial);
        if self.cache.get(serial).is_some_and(|a| a.is_good()) {
            tracing::info!(serial = %hex::encode(serial), "stateless OCSP responder: certificate revoked in the store; its good answer is withdrawn until the revoked response arrives");
            self.cache.remove(serial);
        }
    }

    /// Verify a stored response and install every answer it gives, for a serial with an
    /// answer in memory, that is not older than that answer (and, for a `good`, whose
    /// certificate the store does not list as revoked). Refusals are logged and counted, never
    /// fatal.
    fn install_stored(&self, stored: &StoredOcspResponse) {
        let now = self.clock.now();
        let answers = match self.verify_stored(stored, now) {
            Ok(a) => a,
            Err(reason) => {
                self.refuse(stored, &reason);
                return;
            }
        };
        for (serial, answer) in answers {
            if !answer.fresh(now) || self.cache.get(&serial).is_none() {
                continue;
            }
            let _g = self.cache.sign_lock(&serial);
            if answer.is_good()
                && !matches!(self.store.get_cert(&serial), Ok(Some(r)) if !r.is_revoked())
            {
                continue;
            }
            match self.cache.get(&serial) {
                None => {}
                Some(old) if Arc::ptr_eq(&old, &answer) || old.der == answer.der => {}
                Some(old) if !answer.replaces(&old) => {
                    self.older_ignored.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        serial = %hex::encode(&serial),
                        "stateless OCSP responder: a stored response older than the one served was ignored (replayed row?)"
                    );
                }
                _ => {
                    self.cache.insert(&serial, answer);
                    self.installed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// The answers of a stored response whose signature verifies with the issuing CA's key or
    /// with a delegated responder certificate of it (RFC 6960 4.2.2.2).
    fn verify_stored(
        &self,
        stored: &StoredOcspResponse,
        now: DateTime<Utc>,
    ) -> std::result::Result<SerialAnswers, Refusal> {
        let parsed =
            parse_response(&stored.der).map_err(|e| Refusal::Undecodable(e.to_string()))?;
        if parsed.status != OcspResponseStatus::Successful {
            return Err(Refusal::NotSuccessful(parsed.status));
        }
        let basic = parsed
            .basic
            .as_ref()
            .ok_or(Refusal::NotSuccessful(parsed.status))?;
        // Only byKey: the signing nodes never use byName (RFC 6960 4.2.2.3).
        let ResponderId::ByKey(hash) = &basic.tbs_response_data.responder_id else {
            return Err(Refusal::UnknownSigner);
        };
        let signer_spki = if hash.as_bytes() == self.issuer_key_hash.as_slice() {
            self.issuer.spki_der().to_vec()
        } else {
            let cert = basic
                .certs
                .iter()
                .flatten()
                .find(|c| {
                    key_hash(
                        c.tbs_certificate
                            .subject_public_key_info
                            .subject_public_key
                            .raw_bytes(),
                    ) == hash.as_bytes()
                })
                .ok_or(Refusal::UnknownSigner)?;
            self.check_delegate(cert, now)?;
            cert.tbs_certificate
                .subject_public_key_info
                .to_der()
                .map_err(|e| Refusal::Undecodable(e.to_string()))?
        };
        let tbs = basic
            .tbs_response_data
            .to_der()
            .map_err(|e| Refusal::Undecodable(e.to_string()))?;
        let sig = basic.signature.as_bytes().ok_or(Refusal::BadSignature)?;
        crate::signer::verify(&signer_spki, &tbs, sig).map_err(|_| Refusal::BadSignature)?;
        stored_answers(&parsed, stored, &self.issuer, self.cache.interner())
            .ok_or(Refusal::Uncovered)
    }

    /// A delegated responder certificate: signed by the issuer with id-kp-OCSPSigning, valid
    /// now, and not revoked in the store.
    fn check_delegate(
        &self,
        cert: &Certificate,
        now: DateTime<Utc>,
    ) -> std::result::Result<(), Refusal> {
        check_delegated(cert, &self.issuer).map_err(|e| Refusal::Delegate(e.to_string()))?;
        let v = &cert.tbs_certificate.validity;
        let within = matches!(
            (crate::x509::time(v.not_before), crate::x509::time(v.not_after)),
            (Ok(from), Ok(until)) if from <= now && now < until
        );
        if !within {
            return Err(Refusal::Delegate("outside its validity period".to_string()));
        }
        let serial = serial_magnitude(cert.tbs_certificate.serial_number.as_bytes());
        if self.delegate_revoked(serial) {
            return Err(Refusal::Delegate(format!(
                "certificate {} is revoked",
                hex::encode(serial)
            )));
        }
        Ok(())
    }

    /// Whether the store lists the delegated responder certificate `serial` as revoked (or
    /// cannot say: fail closed), read at most every [`DELEGATE_TTL`].
    fn delegate_revoked(&self, serial: &[u8]) -> bool {
        let mut known = self.delegates.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((revoked, at)) = known.get(serial) {
            if at.elapsed() < DELEGATE_TTL {
                return *revoked;
            }
        }
        let revoked = match self.store.get_cert(serial) {
            Ok(Some(rec)) => rec.is_revoked(),
            // Not a certificate this CA issued and recorded, or the store cannot say.
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "stateless OCSP responder: cannot read the delegated responder certificate's status; refusing its responses");
                return true;
            }
        };
        known.retain(|_, (_, at)| at.elapsed() < DELEGATE_TTL);
        known.insert(serial.to_vec(), (revoked, Instant::now()));
        revoked
    }

    /// Read every CRL the store archives that a client may ask for: the full CRL, the delta
    /// CRL, and each shard's.
    fn reload_crls(&self) -> Result<()> {
        self.reload_crl(FULL_CRL)?;
        self.reload_crl(DELTA_CRL)?;
        for scope in self.store.archived_crl_scopes("shard:")? {
            self.reload_crl(&scope)?;
        }
        Ok(())
    }

    /// Read the latest CRL of `scope` and serve it if it verifies, is what the scope holds
    /// (a shard's CRL names that shard as its issuing distribution point; the delta is a
    /// delta, the full CRL is not) and is not older than the one served.
    fn reload_crl(&self, scope: &str) -> Result<()> {
        let Some(stored) = self.store.latest_crl(scope)? else {
            return Ok(());
        };
        match self.verify_crl(&stored).and_then(|crl| {
            scope_holds(scope, &crl.der)?;
            Ok(crl)
        }) {
            Ok(crl) => {
                let mut crls = write(&self.crls);
                match crls.get(scope) {
                    Some(c) if c.number > crl.number => {
                        tracing::warn!(
                            scope,
                            served = c.number,
                            stored = crl.number,
                            "stateless OCSP responder: the stored CRL is older than the one served; kept the served one"
                        );
                    }
                    Some(c) if c.number == crl.number && c.der == crl.der => {}
                    _ => {
                        tracing::info!(
                            scope,
                            number = crl.number,
                            "stateless OCSP responder: serving CRL"
                        );
                        crls.insert(scope.to_string(), Arc::new(crl));
                    }
                }
            }
            Err(reason) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(scope, number = stored.number, %reason, "stateless OCSP responder: refusing the stored CRL; serving the previous one");
            }
        }
        Ok(())
    }

    /// Check a stored CRL (issuer name, signature by the CA key) and take its number and
    /// times from the signed CRL itself, not from the store's columns.
    fn verify_crl(&self, stored: &StoredCrl) -> std::result::Result<ArchivedCrl, Refusal> {
        let checked =
            crate::x509::check_crl(self.issuer.cert_der(), &stored.der).map_err(|e| match e {
                crate::Error::SignatureCheckFailed => Refusal::BadSignature,
                other => Refusal::Undecodable(other.to_string()),
            })?;
        Ok(ArchivedCrl {
            number: checked.number,
            this_update: checked.this_update,
            next_update: checked.next_update,
            der: stored.der.clone(),
        })
    }

    /// Follow the store on a thread of its own until [`StatelessResponder::stop`]: subscribe to the
    /// change feed, read everything, then apply each change as it comes, re-reading everything
    /// after a `Resync`, after a failed read, and every [`StatelessConfig::full_reload_interval`].
    /// Store errors are retried with backoff (1 s doubling to 30 s); answers in memory keep
    /// being served meanwhile.
    pub fn start(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("ocsp-stateless".into())
            .spawn(move || me.follow())
    }

    /// Ask the thread of [`StatelessResponder::start`] to end (within about 200 ms); join its handle.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    fn stopped(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Sleep up to `d` in small steps; false if asked to stop.
    fn pause(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.stopped() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100).min(end - Instant::now()));
        }
        !self.stopped()
    }

    fn follow(&self) {
        let mut backoff = Duration::from_secs(1);
        'outer: while !self.stopped() {
            let sub = match self.store.subscribe() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "stateless OCSP responder: cannot subscribe to the store's changes");
                    if !self.pause(backoff) {
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            // Subscribed first, then read: nothing committed in between is missed.
            let mut reload_due = Instant::now();
            loop {
                if self.stopped() {
                    break 'outer;
                }
                if Instant::now() >= reload_due {
                    match self.reload() {
                        Ok(()) => {
                            backoff = Duration::from_secs(1);
                            reload_due = Instant::now() + self.config.full_reload_interval;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?backoff, "stateless OCSP responder: cannot read the store; serving what is in memory");
                            if !self.pause(backoff) {
                                break 'outer;
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                            reload_due = Instant::now();
                            continue;
                        }
                    }
                }
                let change = match sub.recv_timeout(Duration::from_millis(200)) {
                    Ok(Some(c)) => c,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "stateless OCSP responder: subscribing again");
                        continue 'outer;
                    }
                };
                if let Err(e) = self.apply(&change) {
                    tracing::warn!(error = %e, ?change, "stateless OCSP responder: cannot apply a change; re-reading everything");
                    reload_due = Instant::now();
                }
            }
        }
        tracing::info!("stateless OCSP responder: follower stopped");
    }
}

/// The archive scopes a stateless responder serves: the full CRL, the delta, the shards.
fn served_scope(scope: &str) -> bool {
    scope == FULL_CRL || scope == DELTA_CRL || crate::x509::CrlShard::from_scope(scope).is_some()
}

/// Whether a verified CRL is what `scope` holds: a shard's names that shard in its issuing
/// distribution point (a CRL of another shard, stored under this one by whoever can write the
/// database, is refused: verifiers would find it not authoritative for this shard's
/// certificates); the delta carries a delta CRL indicator, the full CRL does not.
fn scope_holds(scope: &str, der: &[u8]) -> std::result::Result<(), Refusal> {
    let delta = crate::x509::crl_is_delta(der);
    let holds = if scope == FULL_CRL {
        !delta
    } else if scope == DELTA_CRL {
        delta
    } else {
        let shard = crate::x509::CrlShard::from_scope(scope);
        shard.is_some()
            && !delta
            && crate::x509::crl_idp_uri(der).and_then(|u| crate::x509::crl_shard_of_url(&u))
                == shard
    };
    if holds {
        Ok(())
    } else {
        Err(Refusal::Undecodable(format!(
            "the CRL archived under {scope:?} is not that scope's CRL"
        )))
    }
}
