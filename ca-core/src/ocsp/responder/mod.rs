//! The pre-signed OCSP responder: one signed response per certificate, in memory, answered
//! without touching the HSM (DESIGN "Performance shape"; RFC 5019 2.2.1).
//!
//! [`Responder`] is a thin facade over parts split by the state each owns:
//!
//! | Part | Owns |
//! |---|---|
//! | `cache` | serial -> pre-signed answer (sharded), per-serial sign locks, request memo (`memo`) |
//! | `presign` | the issuance queue, its tickets and statistics; the `ocsp-issuance` thread runs it |
//! | `external` | answers loaded from response files about other issuers |
//! | `live` | the live-signing budget, the nonce policy, the cache of signed `unknown` answers |
//! | `refresh` | the re-sign backlog; re-signing at revocation and before nextUpdate |
//! | `key` | the signing key, the issuer, the responder certificate's validity and revocation |
//! | `stateless` | [`StatelessResponder`]: the keyless counterpart for `ca-server ocsp` (verified stored answers, change feed) |
//!
//! Answers are written through one path (`install`: sign, persist, serve), under the serial's
//! sign lock. The lookup path reads the memo, the answer cache and the `unknown` cache only.

mod answer;
mod cache;
mod config;
mod external;
mod follow;
mod install;
mod intern;
mod key;
mod live;
mod memo;
mod presign;
mod refresh;
mod single;
mod stateless;

pub use answer::{AnswerKind, OcspAnswer, TransportCache};
pub use cache::{CacheStats, CACHE_ANSWER_BYTES, CACHE_SLOT_BYTES};
pub use config::{ResponderConfig, DEFAULT_CACHE_MAX_BYTES, MIN_CACHE_MAX_BYTES};
pub use external::ExternalResponse;
pub use follow::FollowStats;
pub(in crate::ocsp) use key::check_delegated;
pub use key::{ResponderKey, SignerCertStatus};
pub use memo::MemoStats;
pub use presign::{IssuanceSigningStats, IssuedTicket};
pub use refresh::RefreshStats;
pub use stateless::{ArchivedCrl, StatelessConfig, StatelessResponder, StatelessStats};

use super::request::{parse_request, ParsedRequest};
use super::{serial_magnitude, OcspIssuer};
use crate::clock::Clock;
use crate::error::Result;
use crate::revocation::CertStatus;
use crate::store::{CertRecord, Store, StoredOcspResponse};
use answer::ErrorAnswers;
use cache::AnswerCache;
use chrono::{DateTime, Utc};
use external::ExternalResponses;
use follow::{FollowCtx, Follower};
use install::Installer;
use key::{Signing, PRESIGNED_ALGS};
use live::{LiveCtx, LiveSigner};
use presign::Presigner;
use refresh::Refresher;
use std::sync::Arc;

/// The result of [`Responder::lookup`].
#[derive(Debug)]
pub enum Lookup {
    /// Answer with this, now.
    Ready(Arc<OcspAnswer>),
    /// The request needs a live signature (or a store read): call [`Responder::answer_live`]
    /// off the async executor (e.g. in `spawn_blocking`).
    Live(LiveRequest),
}

/// A parsed request that [`Responder::lookup`] could not answer from memory.
#[derive(Debug)]
pub struct LiveRequest {
    parsed: ParsedRequest,
}

/// What [`Responder::load`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Stored responses taken into memory.
    pub loaded: usize,
    /// Stored responses ignored (other responder key or issuer, undecodable).
    pub discarded: usize,
    /// Responses signed because the stored one's status disagreed with the store.
    pub signed: usize,
    /// Certificates without an unexpired stored response: put on the re-sign backlog, which
    /// the first refresh pass signs (in groups) after start instead of before it.
    pub queued: usize,
    /// Responses that needed a signature but the key could not sign (the HSM is away): put
    /// on the re-sign backlog instead.
    pub deferred: usize,
}

/// The OCSP responder for one issuing CA. Thread-safe; share it in an `Arc`.
pub struct Responder {
    signing: Signing,
    store: Arc<dyn Store>,
    config: ResponderConfig,
    cache: AnswerCache,
    presigner: Presigner,
    external: ExternalResponses,
    live: LiveSigner,
    refresher: Refresher,
    follower: Follower,
    errors: ErrorAnswers,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("key", self.signing.key())
            .field("cached", &self.len())
            .finish()
    }
}

fn same_status(a: &CertStatus, b: &CertStatus) -> bool {
    match (a, b) {
        (
            CertStatus::Revoked { at: t1, reason: r1 },
            CertStatus::Revoked { at: t2, reason: r2 },
        ) => t1.timestamp() == t2.timestamp() && r1 == r2,
        _ => a == b,
    }
}

impl Responder {
    /// A responder for certificates issued by `issuer_cert_der`, signing with `key`.
    ///
    /// Checks (fail closed): a CA key must be the issuer's key; a delegated certificate must be
    /// signed by the issuer and carry id-kp-OCSPSigning (RFC 6960 4.2.2.2). Call [`load`] next
    /// to fill the cache.
    ///
    /// [`load`]: Responder::load
    pub fn new(
        issuer_cert_der: &[u8],
        key: ResponderKey,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: ResponderConfig,
    ) -> Result<Self> {
        config.validate()?;
        let signing = Signing::new(
            issuer_cert_der,
            key,
            clock,
            config.validity,
            config.refresh_before,
        )?;
        let responder = Responder {
            signing,
            store,
            cache: AnswerCache::new(
                config.memo_max_bytes,
                config.cache_max_entries,
                config.cache_max_bytes,
            ),
            presigner: Presigner::new(config.issuance_batch_max),
            external: ExternalResponses::default(),
            live: LiveSigner::new(&config),
            refresher: Refresher::new(config.issuance_batch_max),
            follower: Follower::default(),
            errors: ErrorAnswers::new(),
            config,
        };
        // Fail closed at start: a delegated certificate that has expired or that this CA
        // revoked cannot sign (RFC 6960 4.2.2.2; README "Rotating the OCSP responder
        // certificate").
        responder
            .signing
            .refresh_signer_revocation(responder.store.as_ref())?;
        responder.signing.next_update_at(responder.signing.now())?;
        Ok(responder)
    }

    /// The write path shared by the parts that sign (see `install.rs`).
    fn installer(&self) -> Installer<'_> {
        Installer {
            signing: &self.signing,
            cache: &self.cache,
            unknown: &self.live.unknown,
            store: self.store.as_ref(),
        }
    }

    /// The delegated responder certificate's state; `None` when the CA key signs.
    pub fn signer_cert_status(&self) -> Option<SignerCertStatus> {
        self.signing.signer_cert_status()
    }

    /// The issuer this responder answers for.
    pub fn issuer(&self) -> &OcspIssuer {
        self.signing.issuer()
    }

    /// The clock it signs by.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        self.signing.clock()
    }

    /// The settings it was built with (validity, refresh, rate and cache bounds).
    pub fn config(&self) -> &ResponderConfig {
        &self.config
    }

    /// Number of certificates with a response in memory.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether no response is in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pre-signed response for `serial`, if one is in memory.
    pub fn cached(&self, serial: &[u8]) -> Option<Arc<OcspAnswer>> {
        self.cache.get(serial_magnitude(serial))
    }

    /// Fill the cache after start, up to its bound: take the stored responses that this key
    /// signed for this issuer; sign now only those out of date with the store (revoked since);
    /// put the unexpired certificates without an unexpired response on the re-sign backlog
    /// (the next refresh pass signs them, in groups); leave responses within
    /// `refresh_before` of their nextUpdate to the refresh pass.
    ///
    /// Serving does not wait for it: the status listener runs it in the background, first
    /// thing of its maintenance task, and until then (or for what does not fit in memory) a
    /// request is answered from the stored response read back and checked against the
    /// certificate's status ([`answer_live`](Self::answer_live)). A stored answer is served
    /// from memory only once this has checked it against the certificate's record, and never
    /// over an answer installed meanwhile (a revocation, another node's answer). (Before, a
    /// 500,000 certificate store with every response due re-signed them one at a time, 202 s,
    /// before either listener accepted a connection; then loading alone took 4-11 s at 0.4-1M
    /// certificates.)
    pub fn load(&self) -> Result<LoadStats> {
        let staged = self.cache.stage_stored(
            self.store.as_ref(),
            self.issuer(),
            self.signing.own_key_hash(),
        )?;
        let mut stats = LoadStats {
            discarded: staged.discarded,
            ..LoadStats::default()
        };
        let answers = staged.answers;
        let now = self.signing.now();
        let mut todo = Vec::new();
        let mut queued = Vec::new();
        let follow = self.follow_ctx();
        // `own`: the staged answer came from the record's own stored response (always, unless
        // the stored answers did not all fit: `Staged::own`).
        let mut check = |rec: CertRecord, own: bool| -> Result<()> {
            if rec.not_after <= now {
                return Ok(());
            }
            let status = rec.cert_status();
            let magnitude = serial_magnitude(&rec.serial);
            match answers.get(magnitude) {
                // Another status than the store's (a revocation the stored answer missed):
                // signed now, never served.
                Some(a) if a.cert_status().is_some_and(|s| !same_status(s, &status)) => {
                    if own {
                        todo.push(rec.serial);
                    }
                    // Else from its group's bytes: its own record may hold a newer answer,
                    // read back when asked about.
                }
                // Right and unexpired: served from now on, unless something newer was
                // installed meanwhile; the refresh pass re-signs it when due.
                Some(a) if a.next_update().is_some_and(|n| n > now) => {
                    if self.follower.install_loaded(magnitude, a.clone(), &follow) {
                        stats.loaded += 1;
                    }
                }
                // Past the cache's bound: read back from the store when asked about, re-signed
                // by the refresh pass when due.
                None if staged.skipped => {}
                // None, or expired (never served again): the re-sign backlog, which the next
                // refresh pass signs in groups; meanwhile a request is answered by live
                // signing within its budget, or `tryLater`. Unless an answer was installed
                // since (issued, revoked or asked about meanwhile).
                _ => {
                    if self.cache.get_fresh(magnitude, now).is_none() {
                        queued.push(magnitude.to_vec());
                    }
                }
            }
            Ok(())
        };
        if staged.skipped {
            // Not everything fits: the records of the staged serials, not every certificate
            // (the others are read back when asked about and found due by the refresh pass).
            for serial in answers.keys() {
                if let Some(rec) = self.store.get_cert(serial)? {
                    check(rec, staged.own.contains(serial))?;
                }
            }
        } else {
            self.store.for_each_cert(&mut |rec| check(rec, true))?;
        }
        drop(answers);
        if !staged.skipped {
            self.cache.mark_complete();
        }
        self.cache.mark_loaded();
        stats.queued = queued.len();
        self.refresher.add(queued.iter().map(Vec::as_slice));
        let inst = self.installer();
        for serial in todo {
            let magnitude = serial_magnitude(&serial).to_vec();
            let _g = self.cache.sign_lock(&magnitude);
            // Re-read under the lock: a revocation may have happened meanwhile.
            let Some(rec) = self.store.get_cert(&serial)? else {
                continue;
            };
            let status = rec.cert_status();
            if self
                .cache
                .get_fresh(&magnitude, now)
                .is_some_and(|a| a.cert_status().is_some_and(|s| same_status(s, &status)))
            {
                // Installed meanwhile with the right status (a revocation's own re-signing).
                continue;
            }
            match inst.sign_and_install(&rec.serial, &status) {
                Ok(()) => stats.signed += 1,
                // The HSM is away (the node started without it): the serial waits on the
                // re-sign backlog, which every refresh pass signs once the key is usable. The
                // stored answer, whose status is out of date, is never served (reading it back
                // checks the status too): the certificate is answered live, or `tryLater`.
                Err(e) if e.is_signer_unavailable() => {
                    self.cache.remove(&magnitude);
                    self.refresher.add(std::iter::once(magnitude.as_slice()));
                    stats.deferred += 1;
                }
                Err(e) => return Err(e),
            }
        }
        if stats.deferred > 0 {
            tracing::warn!(
                deferred = stats.deferred,
                "OCSP responses could not be signed at start (HSM unavailable); they wait on \
                 the re-sign backlog (ca_ocsp_resign_backlog)"
            );
        }
        tracing::info!(
            loaded = stats.loaded,
            discarded = stats.discarded,
            signed = stats.signed,
            queued = stats.queued,
            deferred = stats.deferred,
            bounded = staged.skipped,
            "OCSP responder loaded"
        );
        Ok(stats)
    }

    /// Sign the response for a certificate just issued (status good), persist it and keep it
    /// in memory: [`enqueue_issued`] then [`await_issued`].
    ///
    /// [`enqueue_issued`]: Responder::enqueue_issued
    /// [`await_issued`]: Responder::await_issued
    pub fn on_issued(&self, rec: &CertRecord) -> Result<()> {
        let ticket = self.enqueue_issued(rec);
        self.await_issued(ticket)
    }

    /// Queue a certificate just stored for its first response (status good); cheap, signs
    /// nothing. Responses at issuance are signed in groups, one response for every
    /// certificate queued (up to [`ResponderConfig::issuance_batch_max`]), by whoever comes
    /// first: the issuance signer thread ([`start_issuance_signer`]), a caller of
    /// [`await_issued`] with this ticket, or an OCSP request about one of them. Without
    /// concurrent issuance every response covers one certificate.
    ///
    /// [`await_issued`]: Responder::await_issued
    /// [`start_issuance_signer`]: Responder::start_issuance_signer
    pub fn enqueue_issued(&self, rec: &CertRecord) -> IssuedTicket {
        self.presigner.enqueue(rec)
    }

    /// Wait until the certificate of `ticket` has its response in memory, signing the group
    /// it belongs to if nobody else is. A certificate that already has a response when its
    /// group is signed (it was revoked meanwhile) keeps that response.
    ///
    /// A group's response is stored once, under its first serial, without waiting for a
    /// flush; [`load`] gives it to every serial it covers, and after a crash signs again
    /// whatever is missing.
    ///
    /// [`load`]: Responder::load
    pub fn await_issued(&self, ticket: IssuedTicket) -> Result<()> {
        self.presigner
            .await_ticket(ticket, &self.installer(), &self.refresher)
    }

    /// Sign the next group of queued certificates, for a background signer: wait up to `idle`
    /// for a first certificate, then up to `window` for the group to fill
    /// ([`ResponderConfig::issuance_batch_max`]), then sign it. Failures are logged; the
    /// certificates concerned are then signed when asked about, or by the next refresh pass.
    pub fn sign_issued_group(&self, window: std::time::Duration, idle: std::time::Duration) {
        self.presigner
            .sign_next_group(window, idle, &self.installer(), &self.refresher);
    }

    /// Run [`sign_issued_group`] on a thread of its own until the responder is dropped:
    /// certificates queued by [`enqueue_issued`] get their response within about
    /// [`ResponderConfig::issuance_batch_window`] (plus one signature) without their issuance
    /// waiting for it, and one response covers every certificate queued within the window
    /// (at most [`ResponderConfig::issuance_batch_max`]).
    ///
    /// [`sign_issued_group`]: Responder::sign_issued_group
    /// [`enqueue_issued`]: Responder::enqueue_issued
    pub fn start_issuance_signer(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let window = self.config.issuance_batch_window;
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("ocsp-issuance".into())
            .spawn(move || {
                while let Some(r) = weak.upgrade() {
                    r.sign_issued_group(window, std::time::Duration::from_millis(200));
                    if r.presigner.finished() {
                        break;
                    }
                }
            })
    }

    /// Ask the issuance signer thread ([`start_issuance_signer`]) to sign what is still queued
    /// and end; join its handle afterwards. Part of shutdown: the thread signs with the HSM,
    /// so it must be gone before the PKCS#11 module is finalized (a thread inside
    /// `C_SignInit` while the process runs SoftHSM's destructors dies of SIGSEGV). Anything
    /// queued later is signed by whoever asks for it ([`await_issued`]), or at the next start.
    ///
    /// [`start_issuance_signer`]: Responder::start_issuance_signer
    /// [`await_issued`]: Responder::await_issued
    pub fn stop_issuance_signer(&self) {
        self.presigner.stop();
    }

    /// Responses signed at issuance so far, and the certificates they covered.
    pub fn issuance_signing_stats(&self) -> IssuanceSigningStats {
        self.presigner.stats()
    }

    /// Re-sign the response of a certificate just revoked (`rec` as the store returned it),
    /// persist it and serve it from now on. On failure the old response is withdrawn from
    /// memory, so that no `good` answer outlives the revocation (fail closed: the certificate
    /// is then answered live, or `tryLater`), and the serial goes on the re-sign backlog that
    /// every [`refresh_due`](Self::refresh_due) pass retries until it is signed.
    ///
    /// Revoking the delegated responder certificate itself: its own `revoked` answer is signed
    /// (a last signature), then the responder stops signing ([`SignerCertStatus::revoked`]).
    pub fn on_revoked(&self, rec: &CertRecord) -> Result<()> {
        self.refresher.on_revoked(rec, &self.installer())
    }

    /// Serials whose response could not be signed at issuance or re-signed after a status
    /// change (see [`on_revoked`](Self::on_revoked)), waiting for the next refresh pass.
    pub fn resign_backlog(&self) -> usize {
        self.refresher.len()
    }

    /// If `serial` is on the re-sign backlog, re-sign it now from the store's record (a
    /// repeated revocation after an HSM failure repairs its OCSP answer at once). `None` if it
    /// is not on the backlog.
    pub fn retry_resign(&self, serial: &[u8]) -> Option<Result<()>> {
        self.refresher.retry_resign(serial, &self.installer())
    }

    /// Sign what is on the re-sign backlog (issuances and status changes the HSM failed to
    /// sign), then every response within `refresh_before` of its nextUpdate, with the status
    /// the store holds now; drop responses of expired certificates once they are stale;
    /// re-read external response files that changed. Call it periodically (e.g. every
    /// minute).
    ///
    /// While the delegated responder certificate cannot sign (expired, revoked) nothing is
    /// signed: one error per pass, pre-signed responses run out at their nextUpdate (never
    /// after the certificate's notAfter), and requests needing a new signature get
    /// `tryLater`.
    pub fn refresh_due(&self) -> Result<RefreshStats> {
        self.refresher
            .refresh_due(&self.installer(), &self.external)
    }

    /// Sign what is on the re-sign backlog and re-read changed external response files, but
    /// leave answers near their nextUpdate alone: the pass of a node that does not hold the
    /// refresh lease (another node re-signs them, and this one follows, see
    /// [`follow_stored`](Self::follow_stored)).
    pub fn refresh_backlog(&self) -> Result<RefreshStats> {
        self.refresher
            .refresh_backlog(&self.installer(), &self.external)
    }

    fn follow_ctx(&self) -> FollowCtx<'_> {
        self.installer().follow_ctx()
    }

    /// Another node stored the response under `serial` (the store's change feed said so):
    /// serve its answers from now on if this responder's key signed them and they are not a
    /// rollback (`follow.rs`). Blocking (one store read); signs nothing.
    pub fn follow_stored(&self, serial: &[u8]) -> Result<FollowStats> {
        self.follower.stored(serial, &self.follow_ctx())
    }

    /// Another node revoked `serial`: stop serving a `good` answer for it now (the revoking
    /// node's answer follows within a round trip; meanwhile requests are answered live from
    /// the store's record, or `tryLater`).
    pub fn follow_revoked(&self, serial: &[u8]) -> FollowStats {
        self.follower.revoked(serial, &self.follow_ctx())
    }

    /// The change feed may have missed changes: take every stored response that is newer
    /// than what is served (same rules as [`follow_stored`](Self::follow_stored)). A full
    /// read of the stored responses.
    pub fn follow_resync(&self) -> Result<FollowStats> {
        self.follower.resync(&self.follow_ctx())
    }

    /// Answer from memory: the pre-signed response, a cached `unknown`, a loaded external
    /// response, or a precomputed error; on a local store (sled), also a stored answer read
    /// back (microseconds, no waiting on a lock). Performs no HSM operation and no network
    /// I/O. Returns [`Lookup::Live`] when a signature is needed (see [`answer_live`]).
    ///
    /// [`answer_live`]: Responder::answer_live
    pub fn lookup(&self, request_der: &[u8]) -> Lookup {
        // Fast path: bytes seen before map to a serial without decoding them again.
        let now = self.signing.now();
        if let Some(a) = self
            .cache
            .memo_lookup(request_der, |serial| self.presigned(serial, now))
        {
            self.cache.count_hit();
            return Lookup::Ready(a);
        }
        let parsed = match parse_request(request_der, self.config.max_certs_per_request) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "malformed OCSP request");
                return Lookup::Ready(self.errors.malformed.clone());
            }
        };
        let [rc] = parsed.certs.as_slice() else {
            // Several CertIDs: one signature over all of them (RFC 6960 4.2.2.3).
            return Lookup::Live(LiveRequest { parsed });
        };
        let Some(alg) = self.issuer().matches(&rc.cert_id) else {
            let a = self.external.answer(rc, self.signing.now());
            return Lookup::Ready(a.unwrap_or_else(|| self.errors.unauthorized.clone()));
        };
        if self.live.nonce_to_echo(&parsed).is_some() {
            return Lookup::Live(LiveRequest { parsed });
        }
        if PRESIGNED_ALGS.contains(&alg) {
            if let Some(a) = self.presigned(&rc.serial, self.signing.now()) {
                // Memoised only for a certificate answered from memory.
                self.cache.memoise(request_der, &rc.cert_id, &rc.serial);
                self.cache.count_hit();
                return Lookup::Ready(a);
            }
            // Not in memory, on a local store: read the stored answer back here rather than
            // on the blocking pool (sled reads take microseconds; a miss that finds nothing
            // usable, or a sign lock held, goes the blocking way).
            if !self.store.is_shared() {
                let read = self.follower.read_back_nowait(
                    &rc.serial,
                    self.signing.now(),
                    &self.follow_ctx(),
                );
                if let Some(a) = read {
                    self.cache.count_miss(true);
                    return Lookup::Ready(a);
                }
            }
        }
        Lookup::Live(LiveRequest { parsed })
    }

    /// A fresh pre-signed answer (or cached `unknown`) for a serial (magnitude).
    #[inline]
    fn presigned(&self, serial: &[u8], now: DateTime<Utc>) -> Option<Arc<OcspAnswer>> {
        self.cache
            .get_fresh(serial, now)
            .or_else(|| self.live.unknown.get_fresh(serial, now))
    }

    /// Sizes of the request memo (entries, bytes, bound, evictions).
    pub fn memo_stats(&self) -> MemoStats {
        self.cache.memo_stats()
    }

    /// The answer cache: entries, bound, hits, misses, misses answered from the store,
    /// evictions.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Answer a request that needs a signature or a store read. Blocking (HSM, store): call it
    /// off the async executor. Live signatures are rate limited
    /// ([`ResponderConfig::live_signing_rate`]); what happens over the limit, and to nonces,
    /// is written out in `ocsp/responder/live.rs`.
    pub fn answer_live(&self, live: LiveRequest) -> Arc<OcspAnswer> {
        let cx = LiveCtx {
            inst: self.installer(),
            presigner: &self.presigner,
            backlog: &self.refresher,
            follower: &self.follower,
            errors: &self.errors,
        };
        self.live.answer(&live.parsed, &cx)
    }

    /// Answer a request completely (blocking when a live signature is needed).
    pub fn respond(&self, request_der: &[u8]) -> Arc<OcspAnswer> {
        match self.lookup(request_der) {
            Lookup::Ready(a) => a,
            Lookup::Live(l) => self.answer_live(l),
        }
    }

    /// The precomputed `malformedRequest` response (for transport-level errors such as a bad
    /// base64 path or an oversized body).
    pub fn malformed_request(&self) -> Arc<OcspAnswer> {
        self.errors.malformed.clone()
    }

    /// Serve a response loaded from a file for the CertIDs it contains (another issuer's
    /// certificates: normally the intermediate, signed by the root). The file is read and its
    /// signature checked now (fail closed), and re-read by [`refresh_due`] when it changes.
    /// Returns the number of CertIDs it answers.
    ///
    /// [`refresh_due`]: Responder::refresh_due
    pub fn add_external(&self, source: ExternalResponse) -> Result<usize> {
        self.external.add(source, self.signing.now())
    }

    /// Retention (README "Retention"): forget the cached answer of a certificate pruned from
    /// the store; the next request about it is answered from the store, which no longer
    /// knows it (`unknown`).
    pub fn forget_pruned(&self, serial: &[u8]) {
        let serial = serial_magnitude(serial);
        let _g = self.cache.sign_lock(serial);
        self.cache.remove(serial);
    }

    /// Retention: `stored` was removed from the store with the certificate it was stored
    /// under. A response signed at issuance for a group is stored once, under the group's
    /// first serial, and is the persisted answer of every member whose cached answer is still
    /// that response: store it again under each such member not in `pruned` (its own record
    /// then wins at the next load, as for any record stored under its serial). Returns how
    /// many members it was stored for. Members this node's cache does not hold (another node
    /// signed for them) lose their persisted answer and are signed again when asked.
    pub fn keep_group_response(
        &self,
        stored: &StoredOcspResponse,
        pruned: &[Vec<u8>],
    ) -> Result<usize> {
        let parsed = match super::build::parse_response(&stored.der) {
            Ok(p) => p,
            Err(_) => return Ok(0),
        };
        let own = serial_magnitude(&stored.serial);
        let mut done: Vec<&[u8]> = vec![own];
        let mut kept = 0;
        for single in parsed.singles() {
            let serial = serial_magnitude(single.cert_id.serial_number.as_bytes());
            // Each certificate is answered for once per CertID hash (SHA-1, SHA-256).
            if done.contains(&serial)
                || pruned.iter().any(|p| serial_magnitude(p) == serial)
                || self.issuer().matches(&single.cert_id).is_none()
            {
                continue;
            }
            done.push(serial);
            let _g = self.cache.sign_lock(serial);
            if self.cache.get(serial).is_some_and(|a| a.der == stored.der) {
                self.store.put_ocsp_response(&StoredOcspResponse {
                    serial: serial.to_vec(),
                    ..stored.clone()
                })?;
                kept += 1;
            }
        }
        Ok(kept)
    }
}
