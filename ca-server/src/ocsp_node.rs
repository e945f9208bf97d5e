//! `ca-server ocsp --config FILE`: a stateless OCSP responder. It serves what the signing
//! nodes pre-signed and stored in PostgreSQL, with no HSM access at all (no PKCS#11 module is
//! loaded), and follows the store's change feed, so responders scale out and stay up while
//! every signing node is down (README "Stateless OCSP responders").
//!
//! # Routes (plain HTTP, `[listen] status`)
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /ocsp/{base64}`, `POST /ocsp` | as the signing node's status listener (`status.rs`: same request parsing, limits and RFC 5019 caching headers), from [`ca_core::ocsp::StatelessResponder`] |
//! | `GET /crl` | the latest full CRL of the store's CRL archive, once its signature verifies; 503 before one is read or past its nextUpdate |
//! | `GET /crl/shard/{id}`, `GET /crl/delta` | the latest archived CRL of that shard, or the latest delta CRL (the signing nodes publish them with `[crl] shard_width`), once it verifies and is that scope's (a shard's CRL names the shard as its issuing distribution point; the delta carries a delta CRL indicator); 404 if none is archived, 503 past its nextUpdate |
//! | `GET /ca.crt` | the issuing CA certificate (`[ca] certificate`) |
//! | `GET /healthz` | `ok` while the process runs |
//! | `GET /readyz` | 200 once the store was read completely and while it answers; 503 otherwise |
//! | `GET /metrics` | Prometheus text: OCSP answers by outcome, follower counters |
//!
//! What the follower trusts and answers is written out in `ca-core/src/ocsp/responder/stateless.rs`.
//!
//! # Configuration
//!
//! The same file as `serve` ([`crate::config`]); this command reads `[ca] certificate`,
//! `[listen] status`, `[store]` (must be `kind = "postgres"`: the sled store is one process's
//! embedded database), `[ocsp] max_age`, `memo_max_bytes`, `cache_max_entries`, `cache_max_bytes` and `stateless_reload_interval`,
//! `[limits]` (connection limits of `[limits.status]`) and `[log]`. `[hsm]`, `[profiles]` and
//! the API's sections may be present and are ignored (never opened); `[hsm]` is not required.

use crate::config::{
    CaSection, ConfigError, Limits, Listen, LogSection, OcspSection, StoreKind, StoreSection,
    UrlFrom, UrlSource, CACHE_BYTES_RANGE, MAX_CACHE_BYTES,
};
use crate::metrics::Metrics;
use crate::status::{
    ca_cert_http, crl_http, ocsp_get_request, ocsp_post_request, ocsp_response, outcome, MaxAge,
};
use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ca_core::clock::{Clock, SystemClock};
use ca_core::ocsp::{Lookup, OcspAnswer, OcspResponseStatus, StatelessConfig, StatelessResponder};
use ca_core::store::{PgStore, Store};
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// Largest OCSP request accepted (as the signing node's status listener).
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How often `/readyz`'s view of the store is refreshed, and how long one check may take.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
/// Bounds of `[ocsp] stateless_reload_interval`.
const RELOAD_MIN: Duration = Duration::from_secs(10);
const RELOAD_MAX: Duration = Duration::from_secs(24 * 3600);

/// The sections of a server configuration file a stateless responder reads; the others are
/// accepted and ignored, so one file serves `serve` and `ocsp`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    listen: Listen,
    ca: CaSection,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    ocsp: OcspSection,
    #[serde(default)]
    store: StoreSection,
    // Sections of `serve` a stateless responder never uses (no HSM, no API). Keep in step
    // with `ServerConfig`: the `stateless_ocsp` test loads a complete `serve` file.
    #[serde(default, rename = "data_dir")]
    _data_dir: Option<toml::Value>,
    #[serde(default, rename = "hsm")]
    _hsm: Option<toml::Value>,
    #[serde(default, rename = "urls")]
    _urls: Option<toml::Value>,
    #[serde(default, rename = "tls")]
    _tls: Option<toml::Value>,
    #[serde(default, rename = "admin")]
    _admin: Option<toml::Value>,
    #[serde(default, rename = "tokens")]
    _tokens: Option<toml::Value>,
    #[serde(default, rename = "renewal")]
    _renewal: Option<toml::Value>,
    #[serde(default, rename = "crl")]
    _crl: Option<toml::Value>,
    #[serde(default, rename = "audit")]
    _audit: Option<toml::Value>,
    #[serde(default, rename = "profiles")]
    _profiles: Option<toml::Value>,
    #[serde(default, rename = "retention")]
    _retention: Option<toml::Value>,
}

/// What `ca-server ocsp` runs with, read from a server configuration file.
#[derive(Clone, Debug)]
pub struct OcspNodeConfig {
    /// Where it listens (`[listen] status`).
    pub listen: std::net::SocketAddr,
    /// The issuing CA certificate (PEM, `[ca] certificate`).
    pub ca_certificate: PathBuf,
    /// The PostgreSQL URL's source (`[store] url`).
    pub store_url: UrlSource,
    /// `[store] pool_size` (default [`ca_core::store::DEFAULT_POOL_SIZE`], enough for the
    /// store reads of [`StatelessConfig::max_store_reads`] requests at once).
    pub pool_size: Option<u32>,
    /// Cap on `Cache-Control: max-age` (`[ocsp] max_age`, default 60 s).
    pub max_age: Duration,
    /// StatelessResponder settings (`[ocsp] memo_max_bytes`, `stateless_reload_interval`).
    pub follower: StatelessConfig,
    /// Connection limits (`[limits]`, `[limits.status]`).
    pub limits: Limits,
    /// `[log]`.
    pub log: LogSection,
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl OcspNodeConfig {
    /// Read and check the configuration file at `path` (relative paths are resolved against
    /// its directory). A sled store is refused: see [`OcspNodeConfig::parse`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { key, message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                key,
                message,
            },
            other => other,
        })?;
        if let Some(base) = path.parent() {
            if cfg.ca_certificate.is_relative() {
                cfg.ca_certificate = base.join(&cfg.ca_certificate);
            }
            if let UrlSource(UrlFrom::File(p)) = &mut cfg.store_url {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        Ok(cfg)
    }

    /// Parse and check TOML text (paths as written). Refused: `[store] kind = "sled"` (also
    /// the default when `[store]` is absent), since sled is one process's embedded database
    /// that the signing node holds locked; invalid `[limits]`; a non-positive `[ocsp]
    /// max_age`; a `stateless_reload_interval` outside 10s..24h.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::new(text);
        let file: File = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Parse {
                path: PathBuf::new(),
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message: e.into_inner().message().to_string(),
            }
        })?;
        if file.store.kind == StoreKind::Sled {
            return Err(invalid(
                "store.kind",
                "a stateless OCSP responder (`ca-server ocsp`) needs kind = \"postgres\": the \
                 sled store is one process's embedded database, held by the signing node, and \
                 cannot be followed by another process (README \"Stateless OCSP responders\")",
            ));
        }
        let store_url = file.store.url.clone().ok_or_else(|| {
            invalid(
                "store.url",
                "required for kind = \"postgres\": { env = \"VAR\" } or { file = \"/path\" }",
            )
        })?;
        if let UrlSource(UrlFrom::Env(v)) = &store_url {
            if v.is_empty() {
                return Err(invalid("store.url.env", "must not be empty"));
            }
        }
        if let Some(n) = file.store.pool_size {
            if n == 0 || n > 1024 {
                return Err(invalid("store.pool_size", "must be between 1 and 1024"));
            }
        }
        file.limits.validate()?;
        let max_age = match file.ocsp.max_age {
            Some(s) => {
                s.0.to_std()
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| invalid("ocsp.max_age", "must be positive"))?
            }
            None => Duration::from_secs(60),
        };
        let mut follower = StatelessConfig::default();
        if let Some(n) = file.ocsp.memo_max_bytes {
            if n > 1024 * 1024 * 1024 {
                return Err(invalid("ocsp.memo_max_bytes", "at most 1 GiB"));
            }
            follower.memo_max_bytes = n;
        }
        if let Some(n) = file.ocsp.cache_max_entries {
            if !(1..=50_000_000).contains(&n) {
                return Err(invalid("ocsp.cache_max_entries", "between 1 and 50000000"));
            }
            follower.cache_max_entries = n;
        }
        if let Some(n) = file.ocsp.cache_max_bytes {
            if !(ca_core::ocsp::MIN_CACHE_MAX_BYTES..=MAX_CACHE_BYTES).contains(&n) {
                return Err(invalid("ocsp.cache_max_bytes", CACHE_BYTES_RANGE));
            }
            follower.cache_max_bytes = n;
        }
        if let Some(s) = file.ocsp.stateless_reload_interval {
            let d = s.0.to_std().unwrap_or_default();
            if !(RELOAD_MIN..=RELOAD_MAX).contains(&d) {
                return Err(invalid(
                    "ocsp.stateless_reload_interval",
                    "must be between 10s and 24h",
                ));
            }
            follower.full_reload_interval = d;
        }
        Ok(OcspNodeConfig {
            listen: file.listen.status,
            ca_certificate: file.ca.certificate,
            store_url,
            pool_size: file.store.pool_size,
            max_age,
            follower,
            limits: file.limits,
            log: file.log,
        })
    }
}

/// Shared state of the responder's routes.
struct NodeState {
    /// Before the follower exists: `tryLater` for every request.
    try_later: Arc<OcspAnswer>,
    malformed: Arc<OcspAnswer>,
    /// Set once the store is open and the follower's thread runs.
    follower: OnceLock<Arc<StatelessResponder>>,
    ca_cert: Bytes,
    max_age: MaxAge,
    metrics: Arc<Metrics>,
    /// The last store health check succeeded (within [`HEALTH_TIMEOUT`]).
    store_ok: AtomicBool,
    gauges: Gauges,
}

struct Gauges {
    answers: Gauge,
    refused: Gauge,
    older_ignored: Gauge,
    crl_number: Gauge,
    ready: Gauge,
    /// The answer cache: [entries, bound, hits, misses, store reads, evictions, bytes, bytes
    /// bound].
    cache: [Gauge; 8],
}

impl Gauges {
    fn register(metrics: &Metrics) -> Self {
        let g = Gauges {
            answers: Gauge::default(),
            refused: Gauge::default(),
            older_ignored: Gauge::default(),
            crl_number: Gauge::default(),
            ready: Gauge::default(),
            cache: Default::default(),
        };
        for (g, (name, help)) in g.cache.iter().zip([
            ("ca_ocsp_cache_entries", "OCSP answers in memory"),
            (
                "ca_ocsp_cache_max_entries",
                "Bound on the OCSP answers in memory (ocsp.cache_max_entries)",
            ),
            ("ca_ocsp_cache_hits", "OCSP requests answered from memory since start"),
            (
                "ca_ocsp_cache_misses",
                "OCSP requests about this CA's certificates with no fresh answer in memory since start",
            ),
            (
                "ca_ocsp_cache_store_reads",
                "OCSP cache misses answered from the stored response since start",
            ),
            (
                "ca_ocsp_cache_evictions",
                "OCSP answers evicted from memory to stay under the bound since start",
            ),
            (
                "ca_ocsp_cache_bytes",
                "Bytes the OCSP answers in memory hold (each group response counted once)",
            ),
            (
                "ca_ocsp_cache_max_bytes",
                "Bound on the bytes of the OCSP answers in memory (ocsp.cache_max_bytes)",
            ),
        ]) {
            metrics.register(name, help, g.clone());
        }
        metrics.register(
            "ca_ocsp_follower_answers",
            "Certificates with a verified pre-signed OCSP response in memory",
            g.answers.clone(),
        );
        metrics.register(
            "ca_ocsp_follower_refused_responses",
            "Stored OCSP responses and CRLs refused since start (signature, signer, encoding)",
            g.refused.clone(),
        );
        metrics.register(
            "ca_ocsp_follower_older_ignored",
            "Stored OCSP responses ignored since start because the one served is newer",
            g.older_ignored.clone(),
        );
        metrics.register(
            "ca_ocsp_follower_crl_number",
            "cRLNumber of the CRL served (0: none yet)",
            g.crl_number.clone(),
        );
        metrics.register(
            "ca_ocsp_follower_ready",
            "1 when the store was read and answers its health check",
            g.ready.clone(),
        );
        g
    }
}

impl NodeState {
    fn ready(&self) -> bool {
        self.store_ok.load(Ordering::Acquire) && self.follower.get().is_some_and(|f| f.is_loaded())
    }
}

/// A running stateless responder: [`RunningOcspNode::shutdown`] stops it.
pub struct RunningOcspNode {
    /// The bound address.
    pub addr: std::net::SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    state: Arc<NodeState>,
    follower_thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for RunningOcspNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningOcspNode")
            .field("addr", &self.addr)
            .field("follower", &self.state.follower.get())
            .finish()
    }
}

impl RunningOcspNode {
    /// Serve until SIGINT/SIGTERM, then stop.
    pub async fn wait_for(self, signal: &mut crate::server::ShutdownSignal) {
        signal.recv().await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }

    /// Stop accepting, finish the requests in flight, stop the follower thread.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(f) = self.state.follower.get() {
            f.stop();
        }
        let handle = self
            .follower_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// Start the responder on `listener`: it answers at once (`tryLater`, `/readyz` 503) and
/// becomes ready once the store is open and read; the store is opened in the background,
/// retried with backoff (1 s doubling to 30 s) while the database is unreachable.
pub async fn start(
    cfg: &OcspNodeConfig,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<RunningOcspNode> {
    let issuer = crate::server::read_pem_certs(&cfg.ca_certificate).context("ca.certificate")?;
    let issuer_der = issuer[0].clone();
    // Fail on a bad certificate now, not in the background.
    ca_core::ocsp::OcspIssuer::from_cert_der(&issuer_der).context("ca.certificate")?;
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(NodeState {
        try_later: StatelessResponder::error_answer(OcspResponseStatus::TryLater),
        malformed: StatelessResponder::error_answer(OcspResponseStatus::MalformedRequest),
        follower: OnceLock::new(),
        ca_cert: Bytes::from(issuer_der.clone()),
        max_age: MaxAge::new(cfg.max_age),
        gauges: Gauges::register(&metrics),
        metrics: metrics.clone(),
        store_ok: AtomicBool::new(false),
    });
    let addr = listener.local_addr()?;
    let (tx, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let follower_thread = Arc::new(std::sync::Mutex::new(None));

    // Open the store (with backoff), then start following it.
    let store_cell: Arc<OnceLock<Arc<dyn Store>>> = Arc::new(OnceLock::new());
    {
        let url = cfg.store_url.clone();
        let pool = cfg.pool_size.unwrap_or(ca_core::store::DEFAULT_POOL_SIZE);
        let fcfg = cfg.follower.clone();
        let state = state.clone();
        let thread_slot = follower_thread.clone();
        let store_cell = store_cell.clone();
        let mut rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            let store = loop {
                let url = url.clone();
                let opened = tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<dyn Store>> {
                    let url = url.read()?;
                    Ok(Arc::new(
                        PgStore::open_reader(&url, pool)
                            .context("opening the PostgreSQL store to read it (store.url)")?,
                    ))
                })
                .await;
                match opened {
                    Ok(Ok(s)) => break s,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "cannot open the store; not ready")
                    }
                    Err(e) => tracing::error!(error = %e, "store open task failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = rx.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            };
            let _ = store_cell.set(store.clone());
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            let follower = match StatelessResponder::new(&issuer_der, store, clock, fcfg) {
                Ok(f) => Arc::new(f),
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the OCSP follower");
                    return;
                }
            };
            match follower.start() {
                Ok(h) => {
                    *thread_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the OCSP follower thread");
                    return;
                }
            }
            let _ = state.follower.set(follower);
        }));
    }

    // Keep `/readyz`'s view of the store current: one check at a time, each bounded.
    {
        let state = state.clone();
        let store_cell = store_cell.clone();
        let mut rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut pending: Option<tokio::task::JoinHandle<ca_core::Result<()>>> = None;
            loop {
                if let Some(store) = store_cell.get() {
                    let mut job = match pending.take() {
                        Some(j) => j,
                        None => {
                            let store = store.clone();
                            tokio::task::spawn_blocking(move || store.health())
                        }
                    };
                    let ok = match tokio::time::timeout(HEALTH_TIMEOUT, &mut job).await {
                        Ok(Ok(Ok(()))) => true,
                        Ok(Ok(Err(e))) => {
                            tracing::warn!(error = %e, "store health check failed; not ready");
                            false
                        }
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "store health check task failed");
                            false
                        }
                        Err(_) => {
                            tracing::warn!("store health check timed out; not ready");
                            // Still running: wait for it next time instead of piling up.
                            pending = Some(job);
                            false
                        }
                    };
                    let was = state.store_ok.swap(ok, Ordering::AcqRel);
                    if was != ok {
                        tracing::info!(store_ok = ok, "store reachability changed");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
                    _ = rx.changed() => return,
                }
            }
        }));
    }

    let router = router(state.clone());
    let gate =
        crate::listener::Gate::new(crate::listener::ConnLimits::status(&cfg.limits), metrics);
    tasks.push(tokio::spawn(crate::listener::serve_plain(
        listener, router, gate, rx,
    )));
    tracing::info!(%addr, "stateless OCSP responder listening");
    Ok(RunningOcspNode {
        addr,
        shutdown: tx,
        tasks,
        state,
        follower_thread,
    })
}

fn router(state: Arc<NodeState>) -> Router {
    use ca_api::routes;
    Router::new()
        .route(routes::OCSP, post(ocsp_post))
        .route(&format!("{}/", routes::OCSP), post(ocsp_post))
        .route(&format!("{}/{{*request}}", routes::OCSP), get(ocsp_get))
        .route(routes::CRL, get(crl))
        .route(&format!("{}/shard/{{id}}", routes::CRL), get(crl_shard))
        .route(
            &format!("{}/{}", routes::CRL, ca_core::store::DELTA_CRL),
            get(crl_delta),
        )
        .route(routes::CA_CERT, get(ca_cert))
        .route(routes::HEALTHZ, get(healthz))
        .route(routes::READYZ, get(readyz))
        .route(routes::METRICS, get(metrics))
        .with_state(state)
}

fn http(state: &NodeState, a: Arc<OcspAnswer>, get: bool, req: &HeaderMap) -> Response {
    state.metrics.ocsp_request(outcome(&a));
    ocsp_response(a, get, req, &state.max_age)
}

async fn answer(state: &Arc<NodeState>, der: &[u8], get: bool, req: &HeaderMap) -> Response {
    let Some(follower) = state.follower.get() else {
        // Not started yet: the store has not been read.
        return http(state, state.try_later.clone(), false, req);
    };
    let a = match follower.lookup(der) {
        Lookup::Ready(a) => a,
        Lookup::Live(miss) => {
            let f = follower.clone();
            match tokio::task::spawn_blocking(move || f.answer_miss(miss)).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "OCSP store lookup task failed");
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
            }
        }
    };
    http(state, a, get, req)
}

async fn ocsp_get(State(state): State<Arc<NodeState>>, uri: Uri, headers: HeaderMap) -> Response {
    match ocsp_get_request(&uri, MAX_REQUEST_BYTES) {
        Ok(Some(der)) => answer(&state, &der, true, &headers).await,
        Ok(None) => http(&state, state.malformed.clone(), false, &headers),
        Err(refused) => refused.into_response(),
    }
}

async fn ocsp_post(
    State(state): State<Arc<NodeState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match ocsp_post_request(&headers, body, MAX_REQUEST_BYTES).await {
        Ok(bytes) => answer(&state, &bytes, false, &headers).await,
        Err(refused) => refused.into_response(),
    }
}

async fn crl(State(state): State<Arc<NodeState>>, headers: HeaderMap) -> Response {
    match state.follower.get().and_then(|f| f.crl()) {
        Some(c) => archived_crl_http(&state, c, &headers),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no CRL has been read from the store yet\n",
        )
            .into_response(),
    }
}

/// `GET /crl/shard/{id}`: the shard's latest archived CRL; 404 for an id that is no shard or
/// whose CRL the store does not hold.
async fn crl_shard(
    State(state): State<Arc<NodeState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let crl = ca_core::crl::CrlShard::parse(&id).and_then(|s| {
        state
            .follower
            .get()
            .and_then(|f| f.archived_crl(&s.scope()))
    });
    match crl {
        Some(c) => archived_crl_http(&state, c, &headers),
        None => (StatusCode::NOT_FOUND, "no such CRL shard\n").into_response(),
    }
}

/// `GET /crl/delta`: the latest archived delta CRL; 404 when the store holds none.
async fn crl_delta(State(state): State<Arc<NodeState>>, headers: HeaderMap) -> Response {
    let crl = state
        .follower
        .get()
        .and_then(|f| f.archived_crl(ca_core::store::DELTA_CRL));
    match crl {
        Some(c) => archived_crl_http(&state, c, &headers),
        None => (StatusCode::NOT_FOUND, "no delta CRL\n").into_response(),
    }
}

/// An archived CRL with the caching headers, or 503 once past its nextUpdate (no signing node
/// has archived a newer one).
fn archived_crl_http(
    state: &NodeState,
    c: Arc<ca_core::ocsp::ArchivedCrl>,
    headers: &HeaderMap,
) -> Response {
    if c.next_update > chrono::Utc::now() {
        let (number, times) = (c.number, (c.this_update, c.next_update));
        return crl_http(c, number, times, &state.max_age, headers);
    }
    tracing::error!(
        number = c.number,
        next_update = %c.next_update,
        "the latest CRL in the store is past its nextUpdate; is any signing node running?"
    );
    (StatusCode::SERVICE_UNAVAILABLE, "the CRL has expired\n").into_response()
}

async fn ca_cert(State(state): State<Arc<NodeState>>) -> Response {
    ca_cert_http(state.ca_cert.clone())
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready: the store was read completely and its last health check (at most about a second
/// old) succeeded.
async fn readyz(State(state): State<Arc<NodeState>>) -> Response {
    if state.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<NodeState>>) -> Response {
    let g = &state.gauges;
    if let Some(f) = state.follower.get() {
        let s = f.stats();
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        g.answers.set(n(s.answers as u64));
        g.refused.set(n(s.refused));
        g.older_ignored.set(n(s.older_ignored));
        g.crl_number.set(n(s.crl_number.unwrap_or(0)));
        let c = f.cache_stats();
        for (g, v) in g.cache.iter().zip([
            c.entries as u64,
            c.max_entries as u64,
            c.hits,
            c.misses,
            c.store_reads,
            c.evictions,
            c.bytes as u64,
            c.max_bytes as u64,
        ]) {
            g.set(n(v));
        }
    }
    g.ready.set(i64::from(state.ready()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
