//! The plain-HTTP status listener: OCSP (RFC 6960 appendix A, RFC 5019), the CRL and the
//! issuer certificate, as TLS endpoints fetch them.
//!
//! # Routes
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /ocsp/{base64}` | `application/ocsp-response`; the base64 DER request may be URL-encoded and contain `/` (RFC 6960 A.1); RFC 5019 6.2 caching headers |
//! | `POST /ocsp` (also `/ocsp/`) | body `application/ocsp-request` -> `application/ocsp-response`, not cacheable |
//! | `GET /crl` | current CRL, DER, `application/pkix-crl` |
//! | `GET /crl/shard/{id}` | the current CRL of shard `id` (README "CRLs"), when shards are on; 404 otherwise |
//! | `GET /crl/delta` | the current delta CRL of the full CRL, when shards are on; 404 otherwise |
//! | `GET /ca.crt` | issuing CA certificate, DER, `application/pkix-cert` (AIA caIssuers) |
//! | `GET /root.crl` | root CRL file from the key ceremony, when configured |
//!
//! Malformed input never panics: undecodable requests (bad base64, garbage, truncated DER, too
//! many CertIDs, bad nonce) get the OCSP `malformedRequest` response; a body over
//! [`StatusConfig::max_request_bytes`] gets HTTP 413, a POST with another content type 415.
//!
//! Answers come from [`ca_core::ocsp::Responder`]'s memory without any HSM operation; the few
//! requests that need a live signature (unknown serials, several CertIDs, nonce echo when
//! enabled) run on tokio's blocking pool, rate limited by the responder.
//!
//! # Caching headers
//!
//! Written out once, in `status/caching.rs` (RFC 5019 6.2 headers on GET answers and the CRL,
//! capped by [`StatusConfig::max_age`]; entity tags; 304).
//!
//! # Public API
//!
//! - [`StatusState::build`] (blocking: loads the responder, signs what is missing, loads
//!   external responses, builds the first CRL) from a [`StatusSetup`].
//! - [`router`] gives the axum `Router` for the listener (add health routes as you like).
//! - [`serve`] runs the router on a bound listener with graceful shutdown, together with the
//!   maintenance tasks ([`StatusState::spawn_maintenance`]: one re-signs due OCSP responses,
//!   the other rebuilds the CRL when due and right after each revocation, never waiting for the
//!   first).
//! - [`StatusState`] lends its responder and CRL publisher to the authority
//!   ([`ca_core::authority::Authority`]: pre-signing at issuance, re-signing at revocation),
//!   and [`StatusState::crl_wake`] schedules a CRL rebuild; [`StatusState::revoke`] revokes
//!   through [`ca_core::authority::revoke`] (store, then OCSP, then audit) on its own.
//!
//! ```no_run
//! # async fn f(setup: ca_server::status::StatusSetup) -> anyhow::Result<()> {
//! use ca_server::status;
//! let state = tokio::task::spawn_blocking(move || status::StatusState::build(setup)).await??;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! status::serve(listener, state, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

mod caching;
mod follow;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use ca_core::clock::Clock;
use ca_core::crl::{CrlConfig, CrlPublisher};
use ca_core::ocsp::OcspResponseStatus;
use ca_core::ocsp::{
    AnswerKind, ExternalResponse, Lookup, OcspAnswer, Responder, ResponderConfig, ResponderKey,
};
use ca_core::revocation::RevocationReason;
use ca_core::signer::Signer;
use ca_core::store::{CertRecord, Store};
use chrono::{DateTime, Utc};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub(crate) use caching::MaxAge;
use caching::{
    crl_etag, ocsp_cache_meta, CacheMeta, CA_CERT_CACHE_CONTROL, ROOT_CRL_CACHE_CONTROL,
};

const OCSP_RESPONSE: &str = "application/ocsp-response";
const OCSP_REQUEST: &str = "application/ocsp-request";
const PKIX_CRL: &str = "application/pkix-crl";
const PKIX_CERT: &str = "application/pkix-cert";

/// The lease ([`ca_core::store::Leases`]) of the node that re-signs OCSP responses near
/// their nextUpdate.
pub const OCSP_REFRESH_LEASE: &str = "ocsp:refresh";

/// HTTP-side settings of the status listener.
#[derive(Clone, Debug)]
pub struct StatusConfig {
    /// Largest OCSP request accepted, as POST body or decoded GET path (default 8 KiB).
    pub max_request_bytes: usize,
    /// Cap on `Cache-Control: max-age` for OCSP responses and the CRL (default 60 s).
    pub max_age: Duration,
    /// How often the maintenance task re-signs due responses and checks the CRL (default 60 s).
    pub maintenance_interval: Duration,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            max_request_bytes: 8 * 1024,
            max_age: Duration::from_secs(60),
            maintenance_interval: Duration::from_secs(60),
        }
    }
}

/// Everything [`StatusState::build`] needs.
#[derive(Debug)]
pub struct StatusSetup {
    /// The issuing CA certificate (DER): served at `/ca.crt`, issuer of the CRL and of the
    /// certificates the responder answers for.
    pub issuer_cert_der: Vec<u8>,
    /// The issuing key (signs the CRL).
    pub issuing_signer: Arc<dyn Signer>,
    /// The OCSP signing key: [`ResponderKey::ca`] or [`ResponderKey::delegated`].
    pub ocsp_key: ResponderKey,
    /// The store revocation status and stored OCSP responses are read from.
    pub store: Arc<dyn Store>,
    /// The clock CRL and OCSP times are read from (tests inject a fixed one).
    pub clock: Arc<dyn Clock>,
    /// OCSP responder settings: response validity, refresh, live-signing rate, caches.
    pub responder: ResponderConfig,
    /// CRL validity, rebuild margin and issuing distribution point.
    pub crl: CrlConfig,
    /// Pre-signed responses about other issuers, loaded from files (the root-signed response
    /// about the intermediate from the OCSP ceremony).
    pub external_responses: Vec<ExternalResponse>,
    /// The root CRL file from the key ceremony, served at `/root.crl` (DER or PEM).
    pub root_crl: Option<PathBuf>,
    /// HTTP side of the status listener: request size, `max-age` cap, maintenance interval.
    pub http: StatusConfig,
}

/// Observer told the outcome of every OCSP request (`good`, `revoked`, `unknown`,
/// `malformed`, `unauthorized`, `try_later`, `internal_error`), e.g. to count it in metrics.
pub type AnswerObserver = Arc<dyn Fn(&'static str) + Send + Sync>;

/// Shared state of the status listener.
pub struct StatusState {
    responder: Arc<Responder>,
    crls: Arc<CrlPublisher>,
    store: Arc<dyn Store>,
    ca_cert: Bytes,
    root_crl: Option<PathBuf>,
    config: StatusConfig,
    crl_dirty: Arc<Notify>,
    observer: std::sync::OnceLock<AnswerObserver>,
    max_age: MaxAge,
    /// The responder's issuance signer thread, joined by [`StatusState::close_blocking`].
    issuance_signer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The thread following other nodes (`status/follow.rs`), on a shared store; joined by
    /// [`StatusState::close_blocking`].
    follower: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// This node's name as holder of the OCSP refresh lease.
    holder: String,
    /// Set at shutdown: the maintenance task ends after the pass in progress.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Whether the responder has loaded the stored responses (the first OCSP pass does it).
    loaded: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for StatusState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusState")
            .field("responder", &self.responder)
            .field("crls", &self.crls)
            .field("root_crl", &self.root_crl)
            .field("config", &self.config)
            .finish()
    }
}

/// Dropping the state stops and joins its threads (see [`StatusState::close_blocking`]), so the
/// responder is never dropped last by the issuance signer thread: that drop closes PKCS#11
/// sessions, and a process exiting meanwhile (a test harness, an embedding program that never
/// called `close_blocking`) ran SoftHSM's destructors under it and died of SIGSEGV.
impl Drop for StatusState {
    fn drop(&mut self) {
        self.close_blocking();
    }
}

impl StatusState {
    /// Assemble the status listener's state. Blocking (HSM, store): run it before the runtime
    /// starts or in `spawn_blocking`. Fails closed on a bad key, certificate or external
    /// response file, or when the first CRL cannot be signed; except with a key that is not
    /// available yet ([`ca_core::signer::deferred::DeferredSigner`]): then OCSP answers that
    /// need a signature wait on the re-sign backlog and the first CRL is built by the
    /// maintenance task once the key signs.
    pub fn build(setup: StatusSetup) -> ca_core::Result<Arc<Self>> {
        Self::build_with_shards(setup, None)
    }

    /// [`StatusState::build`], publishing sharded CRLs too when `shards` is given (the scheme
    /// and the least time between two full CRL rebuilds after revocations; README "CRLs").
    pub fn build_with_shards(
        setup: StatusSetup,
        shards: Option<(ca_core::crl::ShardScheme, chrono::Duration)>,
    ) -> ca_core::Result<Arc<Self>> {
        // Other nodes' changes from here on; subscribed before loading, so nothing committed
        // in between is missed (`status/follow.rs`).
        let followed = if setup.store.is_shared() {
            Some(setup.store.subscribe_remote()?)
        } else {
            None
        };
        let responder = Arc::new(Responder::new(
            &setup.issuer_cert_der,
            setup.ocsp_key,
            setup.store.clone(),
            setup.clock.clone(),
            setup.responder,
        )?);
        // Not loaded here: serving starts at once, and the maintenance task's first OCSP pass
        // loads the stored responses in the background (`Responder::load`; until then a miss
        // reads the stored response back).
        let issuance_signer =
            responder
                .start_issuance_signer()
                .map_err(|e| ca_core::Error::Io {
                    path: "(thread ocsp-issuance)".into(),
                    source: e,
                })?;
        // From here on, an error must stop the thread again (it signs with the HSM).
        let stop_signer = |e: ca_core::Error| {
            responder.stop_issuance_signer();
            e
        };
        for ext in setup.external_responses {
            let path = ext.path.clone();
            let n = responder.add_external(ext).map_err(stop_signer)?;
            tracing::info!(path = %path.display(), cert_ids = n, "serving OCSP responses from file");
        }
        let mut crls = CrlPublisher::new(
            setup.store.clone(),
            setup.issuing_signer,
            setup.issuer_cert_der.clone(),
            setup.clock,
            setup.crl,
        )
        .map_err(stop_signer)?
        .with_lease_ttl(setup.http.maintenance_interval * 3);
        if let Some((scheme, full_interval)) = shards {
            crls = crls.with_shards(scheme, full_interval);
        }
        let crls = Arc::new(crls);
        match crls.start() {
            Ok(()) => {}
            // Started before the HSM (README "Starting without the database or the HSM") and
            // no CRL archived: `/crl` answers 503 until the maintenance task builds the first
            // CRL, which it does as soon as the key signs (no CRL yet counts as due). With an
            // archived CRL, `start` serves it and succeeds.
            Err(e @ ca_core::Error::SignerNotReady { .. }) => {
                tracing::warn!(error = %e, "no CRL at start: none archived and the issuing key is not available yet; /crl answers 503 until it is");
            }
            Err(e) => return Err(stop_signer(e)),
        }
        let state = Self::new(
            responder,
            crls,
            setup.store,
            setup.issuer_cert_der,
            setup.root_crl,
            setup.http,
        );
        *lock(&state.issuance_signer) = Some(issuance_signer);
        state
            .loaded
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let state = Arc::new(state);
        if let Some(sub) = followed {
            let follower = follow::spawn(Arc::downgrade(&state), sub).map_err(|e| {
                state.close_blocking();
                ca_core::Error::Io {
                    path: "(thread store-follow)".into(),
                    source: e,
                }
            })?;
            *lock(&state.follower) = Some(follower);
        }
        Ok(state)
    }

    /// Assemble from parts already built (the responder loaded, the CRL publisher ready).
    pub fn new(
        responder: Arc<Responder>,
        crls: Arc<CrlPublisher>,
        store: Arc<dyn Store>,
        issuer_cert_der: Vec<u8>,
        root_crl: Option<PathBuf>,
        config: StatusConfig,
    ) -> Self {
        let holder = crls.holder().to_string();
        StatusState {
            holder,
            follower: std::sync::Mutex::new(None),
            responder,
            crls,
            store,
            ca_cert: Bytes::from(issuer_cert_der),
            root_crl,
            max_age: MaxAge::new(config.max_age),
            config,
            crl_dirty: Arc::new(Notify::new()),
            observer: std::sync::OnceLock::new(),
            issuance_signer: std::sync::Mutex::new(None),
            stopping: tokio::sync::watch::channel(false).0,
            loaded: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Shutdown, first step: the maintenance task ([`StatusState::spawn_maintenance`]) ends
    /// after the pass in progress (await its handle).
    pub fn stop_maintenance(&self) {
        self.stopping.send_replace(true);
    }

    /// Whether the first OCSP maintenance pass has loaded the stored responses (serving does
    /// not wait for it: until then misses read the store).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Shutdown, last step (blocking): stop the maintenance task and the responder's issuance
    /// signer thread (it signs what is still queued), and join the thread. After this no
    /// thread of the status listener touches the HSM; OCSP answers already in memory are still
    /// served. Idempotent.
    pub fn close_blocking(&self) {
        self.stop_maintenance();
        self.responder.stop_issuance_signer();
        let handle = lock(&self.issuance_signer).take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("the OCSP issuance signer thread panicked");
            }
        }
        let follower = lock(&self.follower).take();
        // Not from the follower thread itself (it may drop the last reference).
        if let Some(h) = follower.filter(|h| h.thread().id() != std::thread::current().id()) {
            if h.join().is_err() {
                tracing::error!("the store follower thread panicked");
            }
        }
    }

    /// Report every OCSP outcome to `observer` (metrics).
    pub fn with_observer(self, observer: AnswerObserver) -> Self {
        self.set_observer(observer);
        self
    }

    /// Report every OCSP outcome to `observer` (metrics), on a state already shared; only the
    /// first observer set is kept (returns whether this one was).
    pub fn set_observer(&self, observer: AnswerObserver) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// The OCSP responder.
    pub fn responder(&self) -> &Arc<Responder> {
        &self.responder
    }

    /// The CRL publisher.
    pub fn crls(&self) -> &Arc<CrlPublisher> {
        &self.crls
    }

    /// What wakes the CRL maintenance task to rebuild the CRL right away (a revocation marked
    /// it stale).
    pub fn crl_wake(&self) -> Arc<dyn Fn() + Send + Sync> {
        let dirty = self.crl_dirty.clone();
        Arc::new(move || dirty.notify_one())
    }

    /// Revoke (blocking): store, OCSP re-signed, audit ([`ca_core::authority::revoke`]); then
    /// a CRL rebuild is scheduled on the CRL maintenance task.
    pub fn revoke_blocking(
        &self,
        serial: &[u8],
        reason: RevocationReason,
        at: DateTime<Utc>,
        actor: &str,
    ) -> ca_core::Result<CertRecord> {
        let r = ca_core::authority::revoke(
            self.store.as_ref(),
            &self.responder,
            serial,
            reason,
            at,
            actor,
        );
        // Rebuild the CRL unless nothing can have changed. After a failed OCSP re-signing the
        // revocation is stored all the same, and after `already_revoked` an earlier attempt's
        // rebuild may have failed: the CRL stays stale, and every maintenance pass retries,
        // until a build succeeds.
        if !matches!(
            r,
            Err(ca_core::Error::CertNotFound(_) | ca_core::Error::ReasonNotAllowed(..))
        ) {
            self.crls.note_revoked_serial(serial);
            self.crl_dirty.notify_one();
        }
        r
    }

    /// [`revoke_blocking`](Self::revoke_blocking) on the blocking pool.
    pub async fn revoke(
        self: &Arc<Self>,
        serial: Vec<u8>,
        reason: RevocationReason,
        at: DateTime<Utc>,
        actor: String,
    ) -> ca_core::Result<CertRecord> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.revoke_blocking(&serial, reason, at, &actor))
            .await
            .map_err(|e| ca_core::Error::Store {
                op: "revoke task",
                source: Box::new(e),
            })?
    }

    /// One maintenance pass (blocking): the OCSP refresh ([`StatusState::refresh_ocsp_blocking`]),
    /// then the CRL rebuild if due or stale. The maintenance task runs the two apart
    /// ([`StatusState::spawn_maintenance`]); this runs both in order, at start-up and in tests.
    pub fn maintain_blocking(&self) {
        self.refresh_ocsp_blocking();
        self.rebuild_crl_blocking();
    }

    /// Re-sign OCSP responses that are due or that an HSM failure left unsigned, and reload
    /// changed external response files (blocking). The first pass loads the stored responses
    /// into memory first ([`Responder::load`]), after serving has started.
    pub fn refresh_ocsp_blocking(&self) {
        if !self.loaded.load(std::sync::atomic::Ordering::Relaxed) {
            match self.responder.load() {
                Ok(_) => self
                    .loaded
                    .store(true, std::sync::atomic::Ordering::Relaxed),
                // Retried by the next pass; meanwhile misses read the stored response back.
                Err(e) => tracing::error!(error = %e, "loading stored OCSP responses failed"),
            }
        }
        // On a shared store one node at a time re-signs what is due (the lease holder); the
        // others sign their own backlog and follow its answers (`status/follow.rs`).
        let refresh = match self.store.try_lease(
            OCSP_REFRESH_LEASE,
            &self.holder,
            self.config.maintenance_interval * 3,
        ) {
            Ok(true) => {
                let r = self.responder.refresh_due();
                // Nothing could be signed (this node's HSM is away, e.g. it started without
                // it): give the lease up so that a node that can sign re-signs what is due.
                if matches!(&r, Ok(s) if s.failed > 0 && s.refreshed == 0) {
                    if let Err(e) = self.store.release_lease(OCSP_REFRESH_LEASE, &self.holder) {
                        tracing::warn!(error = %e, "giving up the OCSP refresh lease failed; it expires by itself");
                    }
                }
                r
            }
            Ok(false) => self.responder.refresh_backlog(),
            Err(e) => {
                tracing::error!(error = %e, "taking the OCSP refresh lease failed; signing the backlog only");
                self.responder.refresh_backlog()
            }
        };
        match refresh {
            Ok(s) if s.refreshed + s.dropped + s.failed > 0 => {
                tracing::info!(
                    refreshed = s.refreshed,
                    dropped = s.dropped,
                    failed = s.failed,
                    "OCSP refresh pass"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "OCSP refresh pass failed"),
        }
    }

    /// Rebuild the CRL shards that are dirty or due, then the full CRL if it is due or stale
    /// (blocking).
    pub fn rebuild_crl_blocking(&self) {
        match self.crls.regenerate_shards_if_due() {
            Ok(p) if p.failed > 0 => {
                tracing::error!(
                    failed = p.failed,
                    "some CRL shard rebuilds failed; they are retried at the next pass"
                )
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "CRL shard rebuild failed; serving the previous shard CRLs")
            }
        }
        if let Err(e) = self.crls.regenerate_if_due() {
            tracing::error!(error = %e, "CRL rebuild failed; serving the previous CRL");
        }
        if let Err(e) = self.crls.regenerate_delta_if_due() {
            tracing::error!(error = %e, "delta CRL build failed; serving the previous delta CRL");
        }
    }

    /// Start the maintenance tasks, which end once the state is dropped or
    /// [`StatusState::stop_maintenance`] is called (await the handle: it ends when both have):
    ///
    /// - the CRL task rebuilds the CRL right after each revocation (coalesced) and checks
    ///   every [`StatusConfig::maintenance_interval`] whether it is due;
    /// - the OCSP task re-signs due responses every interval, the first time right away (what
    ///   start-up put on the re-sign backlog).
    ///
    /// Apart, so that a revocation never waits for a long re-signing pass (hundreds of
    /// thousands of responses after an outage) to reach the CRL. Each holds only a weak
    /// reference to the state.
    pub fn spawn_maintenance(self: &Arc<Self>) -> JoinHandle<()> {
        let crl = self.spawn_loop("CRL", true, false, |me, _| me.rebuild_crl_blocking());
        // The first OCSP pass right away: it signs what start-up left on the backlog.
        let ocsp = self.spawn_loop("OCSP refresh", false, true, |me, timer| {
            if timer {
                me.refresh_ocsp_blocking();
            }
        });
        tokio::spawn(async move {
            let (a, b) = tokio::join!(crl, ocsp);
            for r in [a, b] {
                if let Err(e) = r {
                    tracing::error!(error = %e, "status maintenance task failed");
                }
            }
        })
    }

    /// A loop that runs `pass` (blocking; `true` when the interval elapsed, `false` when woken
    /// by a revocation, if `on_revocation`) until the state is dropped or stopping; the first
    /// timed pass at once if `first_now`, else after one interval.
    fn spawn_loop(
        self: &Arc<Self>,
        what: &'static str,
        on_revocation: bool,
        first_now: bool,
        pass: fn(&StatusState, bool),
    ) -> JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let dirty = self.crl_dirty.clone();
        let interval = self.config.maintenance_interval;
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            let mut next = tokio::time::Instant::now();
            if !first_now {
                next += interval;
            }
            loop {
                if *stopping.borrow_and_update() {
                    break;
                }
                let timer = tokio::select! {
                    _ = tokio::time::sleep_until(next) => true,
                    _ = dirty.notified(), if on_revocation => false,
                    _ = stopping.changed() => break,
                };
                let Some(me) = weak.upgrade() else { break };
                let job = tokio::task::spawn_blocking(move || pass(&me, timer));
                if let Err(e) = job.await {
                    tracing::error!(error = %e, task = what, "status maintenance pass failed");
                }
                if timer {
                    next = tokio::time::Instant::now() + interval;
                }
            }
        })
    }

    fn observe(&self, a: &OcspAnswer) {
        if let Some(o) = self.observer.get() {
            o(outcome(a));
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Metric label of an answer.
pub(crate) fn outcome(a: &OcspAnswer) -> &'static str {
    match &a.kind {
        AnswerKind::Signed { status, .. } => match status {
            ca_core::revocation::CertStatus::Good => "good",
            ca_core::revocation::CertStatus::Revoked { .. } => "revoked",
            ca_core::revocation::CertStatus::Unknown => "unknown",
        },
        AnswerKind::Error(OcspResponseStatus::MalformedRequest) => "malformed",
        AnswerKind::Error(OcspResponseStatus::Unauthorized) => "unauthorized",
        AnswerKind::Error(OcspResponseStatus::TryLater) => "try_later",
        AnswerKind::Error(_) => "internal_error",
    }
}

/// The status listener's routes.
pub fn router(state: Arc<StatusState>) -> Router {
    use ca_api::routes;
    Router::new()
        .route(routes::OCSP, post(ocsp_post))
        .route(&format!("{}/", routes::OCSP), post(ocsp_post))
        .route(&format!("{}/{{*request}}", routes::OCSP), get(ocsp_get))
        .route(routes::CRL, get(crl))
        .route(&format!("{}/shard/{{id}}", routes::CRL), get(crl_shard))
        .route(
            &format!("{}/{}", routes::CRL, ca_core::crl::DELTA_PATH),
            get(crl_delta),
        )
        .route(routes::CA_CERT, get(ca_cert))
        .route(routes::ROOT_CRL, get(root_crl))
        .route(routes::READYZ, get(ready))
        .with_state(state)
}

/// How long before the delegated OCSP responder certificate expires `/readyz` starts warning.
pub const SIGNER_EXPIRY_WARNING: chrono::Duration = chrono::Duration::days(30);

/// Readiness of the status listener: what serving OCSP and the CRL needs (the store readable,
/// a CRL built, an OCSP responder certificate that can still sign). Not the HSM: pre-signed
/// answers are served without it, so a load balancer keeps the responder in rotation through
/// an HSM outage (the API listener's `/readyz` does check the HSM).
///
/// The delegated responder certificate: expired or revoked is 503 (this node cannot sign a
/// fresh answer; a rotated node can, and the load balancer should prefer it). Within
/// [`SIGNER_EXPIRY_WARNING`] of its notAfter the answer stays 200, so that load balancers keep
/// a responder that still answers correctly, and the body's second line says
/// `warning: ocsp_signer_expiring ...` (also `ca_ocsp_signer_cert_expiry_seconds` in
/// `/metrics`).
async fn ready(State(state): State<Arc<StatusState>>) -> Response {
    let store = state.store.clone();
    let checked = tokio::task::spawn_blocking(move || store.health()).await;
    let now = state.responder.clock().now();
    let signer = state.responder.signer_cert_status();
    let mut warning = None;
    let problem = match checked {
        Ok(Ok(())) if state.crls.current().is_none() => {
            Some("no CRL has been built yet".to_string())
        }
        Ok(Ok(())) => match &signer {
            Some(s) if s.revoked.is_some() => Some(format!(
                "ocsp_signer_revoked: the OCSP responder certificate {} is revoked; nothing can be signed until it is rotated",
                hex::encode(&s.serial)
            )),
            Some(s) if s.not_after <= now => Some(format!(
                "ocsp_signer_expired: the OCSP responder certificate {} expired at {}; nothing can be signed until it is rotated",
                hex::encode(&s.serial),
                s.not_after.to_rfc3339()
            )),
            Some(s) if s.not_after - now <= SIGNER_EXPIRY_WARNING => {
                warning = Some(format!(
                    "warning: ocsp_signer_expiring: the OCSP responder certificate {} expires at {} (in {} days); rotate it",
                    hex::encode(&s.serial),
                    s.not_after.to_rfc3339(),
                    (s.not_after - now).num_days()
                ));
                None
            }
            _ => None,
        },
        Ok(Err(e)) => Some(format!("store: {e}")),
        Err(e) => Some(e.to_string()),
    };
    match (problem, warning) {
        (None, None) => (StatusCode::OK, "ready\n").into_response(),
        (None, Some(w)) => {
            tracing::warn!(warning = %w, "status listener ready with a warning");
            (StatusCode::OK, format!("ready\n{w}\n")).into_response()
        }
        (Some(p), _) => {
            tracing::warn!(problem = %p, "status listener not ready");
            // Anonymous caller: a stable code at most (the responder certificate's state),
            // never internal error text (it is in the log).
            let code = p
                .split(':')
                .next()
                .filter(|c| c.starts_with("ocsp_signer_"))
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready{code}\n"),
            )
                .into_response()
        }
    }
}

/// Serve the status routes on `listener` until `shutdown` resolves (then finish in-flight
/// requests), running the maintenance task alongside, with the default connection limits of
/// `[limits.status]` ([`crate::listener`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<StatusState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = crate::listener::ConnLimits::status(&crate::config::Limits::default());
    let gate = crate::listener::Gate::new(limits, Arc::new(crate::metrics::Metrics::new()));
    let maintenance = state.spawn_maintenance();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    crate::listener::serve_plain(listener, router(state.clone()), gate, rx).await;
    stop.abort();
    // Let the pass in progress finish rather than abandon it on the blocking pool.
    state.stop_maintenance();
    let _ = maintenance.await;
    Ok(())
}

/// Zero-copy body over a shared answer.
struct Shared<T>(Arc<T>);

impl<T: AsRef<[u8]>> AsRef<[u8]> for Shared<T> {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref().as_ref()
    }
}

fn shared_body<T: AsRef<[u8]> + Send + Sync + 'static>(v: Arc<T>) -> Body {
    Body::from(Bytes::from_owner(Shared(v)))
}

fn ocsp_http(
    state: &StatusState,
    a: Arc<OcspAnswer>,
    cacheable_get: bool,
    req: &HeaderMap,
) -> Response {
    state.observe(&a);
    ocsp_response(a, cacheable_get, req, &state.max_age)
}

/// An OCSP answer as the HTTP response: `application/ocsp-response`, and for a cacheable
/// signed answer fetched with GET the RFC 5019 caching headers (`status/caching.rs`) or 304.
/// Shared with the stateless responder (`ocsp_node.rs`).
pub(crate) fn ocsp_response(
    a: Arc<OcspAnswer>,
    cacheable_get: bool,
    req: &HeaderMap,
    max_age: &MaxAge,
) -> Response {
    let mut owned = None;
    let meta = ocsp_cache_meta(&a, cacheable_get, &mut owned);
    let not_mod = meta.is_some_and(|m| m.not_modified(req));
    // Build the response in place: no intermediate header map to merge.
    let mut resp = if not_mod {
        Response::new(Body::empty())
    } else {
        Response::new(shared_body(a.clone()))
    };
    if not_mod {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(OCSP_RESPONSE),
    );
    if let Some(meta) = meta {
        meta.apply(h, max_age);
    }
    resp
}

async fn answer(state: &Arc<StatusState>, der: &[u8], get: bool, req: &HeaderMap) -> Response {
    let a = match state.responder.lookup(der) {
        Lookup::Ready(a) => a,
        Lookup::Live(live) => {
            let responder = state.responder.clone();
            match tokio::task::spawn_blocking(move || responder.answer_live(live)).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "live OCSP task failed");
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
            }
        }
    };
    ocsp_http(state, a, get, req)
}

/// Decode an RFC 6960 A.1 GET path: percent-decoding (clients encode `+`, `/`, `=`), then
/// base64 in the standard or URL-safe alphabet, padding optional; stray leading slashes (from a
/// responder URL ending in `/`) are ignored: a DER request starts with 0x30, base64 `M`.
fn decode_get_path(raw: &str) -> Option<Vec<u8>> {
    use base64::engine::{
        general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig,
    };
    const CFG: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, CFG);
    const URL: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, CFG);
    let decoded = percent_decode(raw.as_bytes());
    let start = decoded
        .iter()
        .position(|b| *b != b'/')
        .unwrap_or(decoded.len());
    let b64 = &decoded[start..];
    if b64.iter().any(|b| *b == b'-' || *b == b'_') {
        URL.decode(b64).ok()
    } else {
        STD.decode(b64).ok()
    }
}

/// Percent-decoding (RFC 3986 2.1) in one pass, borrowing when there is nothing to decode;
/// a `%` not followed by two hex digits stays as it is (as the `percent-encoding` crate does,
/// but without its per-byte iterator: this runs on every OCSP GET).
fn percent_decode(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let Some(first) = raw.iter().position(|b| *b == b'%') else {
        return std::borrow::Cow::Borrowed(raw);
    };
    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(&raw[..first]);
    let mut i = first;
    while let Some(&b) = raw.get(i) {
        if b == b'%' {
            if let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// An OCSP request refused at the HTTP level: the status and a one-line body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refused(StatusCode, &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

/// The DER request of `GET /ocsp/{base64}` (RFC 6960 A.1): `Ok(None)` if it does not decode
/// (answer `malformedRequest`), `Err` (414) if it is over `max_request_bytes`. Shared with the
/// stateless responder (`ocsp_node.rs`).
pub(crate) fn ocsp_get_request(
    uri: &Uri,
    max_request_bytes: usize,
) -> Result<Option<Vec<u8>>, Refused> {
    // The raw path, not a `Path` extractor: one percent-decoding pass, no String.
    let raw = uri.path().strip_prefix("/ocsp/").unwrap_or("");
    // base64 is 4/3 of the DER and percent-encoding at most triples it: refuse before
    // decoding anything oversized.
    let too_large = || Refused(StatusCode::URI_TOO_LONG, "OCSP request too large\n");
    if raw.len() > max_request_bytes.saturating_mul(4) + 16 {
        return Err(too_large());
    }
    match decode_get_path(raw) {
        Some(der) if der.len() <= max_request_bytes => Ok(Some(der)),
        Some(_) => Err(too_large()),
        None => Ok(None),
    }
}

async fn ocsp_get(State(state): State<Arc<StatusState>>, uri: Uri, headers: HeaderMap) -> Response {
    match ocsp_get_request(&uri, state.config.max_request_bytes) {
        Ok(Some(der)) => answer(&state, &der, true, &headers).await,
        Ok(None) => ocsp_http(&state, state.responder.malformed_request(), false, &headers),
        Err(refused) => refused.into_response(),
    }
}

async fn ocsp_post(
    State(state): State<Arc<StatusState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match ocsp_post_request(&headers, body, state.config.max_request_bytes).await {
        Ok(bytes) => answer(&state, &bytes, false, &headers).await,
        Err(refused) => refused.into_response(),
    }
}

/// The body of `POST /ocsp`, or the HTTP answer refusing it: 415 for another content type
/// than `application/ocsp-request`, 413 over `max_request_bytes` (declared or read). Shared
/// with the stateless responder (`ocsp_node.rs`).
pub(crate) async fn ocsp_post_request(
    headers: &HeaderMap,
    body: Body,
    max_request_bytes: usize,
) -> Result<Bytes, Refused> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case(OCSP_REQUEST) {
        return Err(Refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/ocsp-request\n",
        ));
    }
    let too_large = || Refused(StatusCode::PAYLOAD_TOO_LARGE, "OCSP request too large\n");
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max_request_bytes) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, max_request_bytes)
        .await
        .map_err(|_| too_large())
}

/// The CRL as the HTTP response, with its caching headers or 304. Shared with the stateless
/// responder (`ocsp_node.rs`).
pub(crate) fn crl_http<T: AsRef<[u8]> + Send + Sync + 'static>(
    crl: Arc<T>,
    number: u64,
    (this_update, next_update): (DateTime<Utc>, DateTime<Utc>),
    cap: &MaxAge,
    req: &HeaderMap,
) -> Response {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PKIX_CRL));
    let meta = CacheMeta::new(this_update, next_update, crl_etag(number));
    meta.apply(&mut h, cap);
    if meta.not_modified(req) {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    (StatusCode::OK, h, shared_body(crl)).into_response()
}

async fn crl(State(state): State<Arc<StatusState>>, headers: HeaderMap) -> Response {
    match state.crls.current() {
        Some(c) => {
            let (number, times) = (c.number, (c.this_update, c.next_update));
            crl_http(c, number, times, &state.max_age, &headers)
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no CRL has been built yet\n",
        )
            .into_response(),
    }
}

/// `GET /crl/shard/{id}`: the shard's current CRL, with the full CRL's caching headers; 404
/// for an id that is not a shard this node serves (shards off, malformed, or no longer live).
async fn crl_shard(
    State(state): State<Arc<StatusState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let crl = ca_core::crl::CrlShard::parse(&id).and_then(|s| state.crls.shard(s));
    match crl {
        Some(c) => {
            let (number, times) = (c.number, (c.this_update, c.next_update));
            crl_http(c, number, times, &state.max_age, &headers)
        }
        None => (StatusCode::NOT_FOUND, "no such CRL shard\n").into_response(),
    }
}

/// `GET /crl/delta`: the current delta CRL of the full CRL (RFC 5280 5.2.4), with the full
/// CRL's caching headers; 404 when there is none (shards off, or no base built yet).
async fn crl_delta(State(state): State<Arc<StatusState>>, headers: HeaderMap) -> Response {
    match state.crls.delta() {
        Some(c) => {
            let (number, times) = (c.number, (c.this_update, c.next_update));
            crl_http(c, number, times, &state.max_age, &headers)
        }
        None => (StatusCode::NOT_FOUND, "no delta CRL\n").into_response(),
    }
}

async fn ca_cert(State(state): State<Arc<StatusState>>) -> Response {
    ca_cert_http(state.ca_cert.clone())
}

/// The issuing CA certificate as the HTTP response (`/ca.crt`). Shared with the stateless
/// responder (`ocsp_node.rs`).
pub(crate) fn ca_cert_http(der: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, PKIX_CERT),
            (header::CACHE_CONTROL, CA_CERT_CACHE_CONTROL),
        ],
        der,
    )
        .into_response()
}

async fn root_crl(State(state): State<Arc<StatusState>>) -> Response {
    let Some(path) = state.root_crl.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let der = if bytes.starts_with(b"-----BEGIN") {
                match der::pem::decode_vec(&bytes) {
                    Ok((_, d)) => d,
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "root CRL file is not valid PEM");
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                }
            } else {
                bytes
            };
            (
                [
                    (header::CONTENT_TYPE, PKIX_CRL),
                    (header::CACHE_CONTROL, ROOT_CRL_CACHE_CONTROL),
                ],
                der,
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the root CRL file");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_path_decoding_is_lenient_but_total() {
        assert_eq!(decode_get_path("MAo="), Some(vec![0x30, 0x0a]));
        assert_eq!(decode_get_path("MAo"), Some(vec![0x30, 0x0a]));
        assert_eq!(decode_get_path("//MAo="), Some(vec![0x30, 0x0a]));
        assert_eq!(decode_get_path("-_8"), Some(vec![0xfb, 0xff]));
        assert_eq!(decode_get_path("+/8="), Some(vec![0xfb, 0xff]));
        assert_eq!(decode_get_path("%2F%2FMAo%3D"), Some(vec![0x30, 0x0a]));
        assert_eq!(decode_get_path("%ZZ"), None);
        assert_eq!(decode_get_path("!!!"), None);
        assert_eq!(decode_get_path("M"), None);
    }

    #[test]
    fn percent_decoding_matches_the_percent_encoding_crate() {
        let alphabet = b"%%%0123456789abcdefABCDEFgzZ+/=-_";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..40 {
            for _ in 0..200 {
                let input: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        alphabet[(seed % alphabet.len() as u64) as usize]
                    })
                    .collect();
                let expected: Vec<u8> = percent_encoding::percent_decode(&input).collect();
                assert_eq!(
                    percent_decode(&input).as_ref(),
                    expected.as_slice(),
                    "{input:?}"
                );
            }
        }
        assert!(matches!(
            percent_decode(b"MAo="),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(percent_decode(b"%2b%2F%3d%4").as_ref(), b"+/=%4");
    }
}
