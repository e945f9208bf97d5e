//! The read-only follower behind a stateless OCSP responder (`ca-server ocsp`): it answers
//! from the responses the signing nodes pre-signed and stored, and holds no key.
//!
//! It keeps the same answer cache and request memo as [`super::Responder`], filled from the
//! store and kept current by the store's change feed ([`crate::store::ChangeFeed`]): a changed
//! response is read back ([`crate::store::OcspResponseStore::get_ocsp_response`]) and
//! installed, a kept CRL re-read ([`crate::store::CrlArchive::latest_crl`]), and everything is
//! re-read after a gap in the feed and on a slow periodic pass.
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
use crate::store::{Change, Store, StoredCrl, StoredOcspResponse, FULL_CRL};
use chrono::{DateTime, Utc};
use der::Encode;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
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
    /// Time between full re-reads of the store, the safety net behind the change feed
    /// (default 5 minutes).
    pub full_reload_interval: Duration,
}

impl Default for StatelessConfig {
    fn default() -> Self {
        StatelessConfig {
            memo_max_bytes: 8 * 1024 * 1024,
            max_store_reads: 16,
            full_reload_interval: Duration::from_secs(300),
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
    /// Serials (magnitude) the store lists as revoked: never answered `good`.
    revoked: RwLock<HashSet<Vec<u8>>>,
    crl: RwLock<Option<Arc<ArchivedCrl>>>,
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
            cache: AnswerCache::new(config.memo_max_bytes, usize::MAX),
            config,
            errors: ErrorAnswers::new(),
            revoked: RwLock::new(HashSet::new()),
            crl: RwLock::new(None),
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

    /// The verified CRL served, if one was read.
    pub fn crl(&self) -> Option<Arc<ArchivedCrl>> {
        read(&self.crl).clone()
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
            return Lookup::Ready(a);
        }
        Lookup::Live(LiveRequest { parsed })
    }

    /// Answer a request [`StatelessResponder::lookup`] could not (blocking: reads the store): `tryLater`
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

    /// Re-read everything (blocking): the revoked serials, every stored response, the latest
    /// full CRL. Answers past their nextUpdate are dropped from memory. The follower counts as
    /// loaded once this has succeeded once.
    pub fn reload(&self) -> Result<()> {
        let mut revoked = HashSet::new();
        self.store.for_each_revoked(&mut |e| {
            revoked.insert(serial_magnitude(&e.serial).to_vec());
            Ok(())
        })?;
        *write(&self.revoked) = revoked;
        // Answers `good` for serials revoked meanwhile (missed by a gap in the feed).
        for serial in self.cache.select(OcspAnswer::is_good) {
            self.withdraw_good_if_revoked(&serial);
        }
        self.store.for_each_ocsp_response(&mut |stored| {
            self.install_stored(&stored);
            Ok(())
        })?;
        let now = self.clock.now();
        for serial in self.cache.select(|a| !a.fresh(now)) {
            let _g = self.cache.sign_lock(&serial);
            if self.cache.get(&serial).is_some_and(|a| !a.fresh(now)) {
                self.cache.remove(&serial);
            }
        }
        self.reload_crl()?;
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

    /// Apply one change from the feed (blocking: reads the store).
    pub fn apply(&self, change: &Change) -> Result<()> {
        match change {
            Change::Revoked(serial) => {
                let serial = serial_magnitude(serial).to_vec();
                write(&self.revoked).insert(serial.clone());
                self.withdraw_good_if_revoked(&serial);
                Ok(())
            }
            Change::OcspResponse(serial) => {
                if let Some(stored) = self.store.get_ocsp_response(serial)? {
                    self.install_stored(&stored);
                }
                Ok(())
            }
            Change::Pruned(serial) => {
                // Retention removed the certificate: forget its answer. A group response
                // stored again under a remaining member cannot bring it back fresh (it was
                // signed at issuance, long before the retention period ended).
                let serial = serial_magnitude(serial).to_vec();
                {
                    let _g = self.cache.sign_lock(&serial);
                    self.cache.remove(&serial);
                }
                write(&self.revoked).remove(&serial);
                Ok(())
            }
            Change::Crl { scope, .. } if scope == FULL_CRL => self.reload_crl(),
            Change::Crl { .. } => Ok(()),
            Change::Resync => self.reload(),
        }
    }

    fn withdraw_good_if_revoked(&self, serial: &[u8]) {
        if !read(&self.revoked).contains(serial) {
            return;
        }
        let _g = self.cache.sign_lock(serial);
        if self.cache.get(serial).is_some_and(|a| a.is_good()) {
            tracing::info!(serial = %hex::encode(serial), "stateless OCSP responder: certificate revoked in the store; its good answer is withdrawn until the revoked response arrives");
            self.cache.remove(serial);
        }
    }

    /// Verify a stored response and install every answer it gives that is not older than the
    /// one in memory. Refusals are logged and counted, never fatal.
    fn install_stored(&self, stored: &StoredOcspResponse) {
        let now = self.clock.now();
        let answers = match self.verify_stored(stored, now) {
            Ok(a) => a,
            Err(reason) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    serial = %hex::encode(&stored.serial),
                    %reason,
                    "stateless OCSP responder: refusing a stored OCSP response; serving the previous answer or tryLater"
                );
                return;
            }
        };
        let revoked = read(&self.revoked);
        for (serial, answer) in answers {
            if !answer.fresh(now) {
                continue;
            }
            if answer.is_good() && revoked.contains(&serial) {
                continue;
            }
            let _g = self.cache.sign_lock(&serial);
            match self.cache.get(&serial) {
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
        stored_answers(&parsed, stored, &self.issuer).ok_or(Refusal::Uncovered)
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
        if read(&self.revoked).contains(serial) {
            return Err(Refusal::Delegate(format!(
                "certificate {} is revoked",
                hex::encode(serial)
            )));
        }
        Ok(())
    }

    /// Read the latest full CRL and serve it if it verifies and is not older than the one
    /// served.
    fn reload_crl(&self) -> Result<()> {
        let Some(stored) = self.store.latest_crl(FULL_CRL)? else {
            return Ok(());
        };
        match self.verify_crl(&stored) {
            Ok(crl) => {
                let mut cur = write(&self.crl);
                match cur.as_ref() {
                    Some(c) if c.number > crl.number => {
                        tracing::warn!(
                            served = c.number,
                            stored = crl.number,
                            "stateless OCSP responder: the stored CRL is older than the one served; kept the served one"
                        );
                    }
                    Some(c) if c.number == crl.number && c.der == crl.der => {}
                    _ => {
                        tracing::info!(
                            number = crl.number,
                            "stateless OCSP responder: serving CRL"
                        );
                        *cur = Some(Arc::new(crl));
                    }
                }
            }
            Err(reason) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(number = stored.number, %reason, "stateless OCSP responder: refusing the stored CRL; serving the previous one");
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
