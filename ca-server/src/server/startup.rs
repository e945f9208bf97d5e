//! How `ca-server serve` starts when its database or its HSM is away (README "Starting
//! without the database or the HSM"): the node does not exit, it waits for them, serving what
//! it can meanwhile, and finishes starting once they answer, without a restart.
//!
//! States, in order ([`StartState`], `ca_start_state` in `/metrics`):
//!
//! 1. **waiting for the store**: the status listener is bound first. `/healthz` answers 200
//!    (the process is alive), `/readyz` 503 with a JSON reason
//!    (`{"ready":false,"state":"waiting_for_store","code":"store_unavailable","attempts":N}`),
//!    `/metrics` is served, every other path is 503 `store_unavailable`. The store is opened
//!    again with backoff ([`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`]), each failure logged
//!    with the attempt number and the error, never the database URL.
//! 2. **waiting for the HSM**: the store is open. The OCSP responder and the CRL publisher
//!    are built with the public keys of the certificates
//!    ([`DeferredSigner`]: the issuing certificate's key, the delegated OCSP responder
//!    certificate's key), so the status listener serves OCSP from the store's pre-signed
//!    answers (those that need a new signature wait on the re-sign backlog; requests for them
//!    get `tryLater`; a stored answer whose status is out of date is withdrawn), `/ca.crt`,
//!    and `/crl` (the last CRL archived in the store; 503 if there is none) with its usual
//!    `/readyz`. The API listener is not bound: its port refuses connections. The issuing
//!    key is opened again with the same backoff, through a freshly initialised PKCS#11
//!    module from the second attempt on; whether that calls `C_Login` is the token's login
//!    policy (its own backoff, and a PIN the token refused is tried again only after
//!    `hsm.refused_pin_retry`). Maintenance passes that can sign nothing give the CRL and
//!    OCSP refresh leases up, so that nodes with a working HSM do that work.
//! 3. **started**: the HSM keys are installed into the deferred signers (refused, and the
//!    node exits, if the token's key is not the certificate's), the re-sign backlog and the
//!    first CRL are signed, the server's TLS certificate is issued and the API listener is
//!    bound.
//!
//! Not retried (the node exits non-zero at once, fail closed): configuration errors (a
//! certificate file, a missing URL source, a malformed database URL, a PKCS#11 module that
//! does not load, a key label the token does not hold), a database schema newer than this
//! binary (`SchemaTooNew`), a sled store that does not open, a listener that cannot be bound.

use super::*;
use crate::listener::{serve_plain, ConnLimits, Gate};
use arc_swap::ArcSwap;
use axum::response::IntoResponse;
use ca_core::signer::deferred::DeferredSigner;
use prometheus_client::metrics::gauge::Gauge;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

/// First wait between two attempts to open the store or the HSM key at start.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest wait between two attempts (the wait doubles from [`BACKOFF_MIN`] up to this).
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How long one attempt waits for PostgreSQL to accept a connection at start.
pub const STORE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a starting node is ([`start_staged`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartState {
    /// Started: the API listener serves.
    Started = 0,
    /// The store could not be opened yet.
    WaitingForStore = 1,
    /// The store is open; the HSM key could not be opened yet (OCSP is served).
    WaitingForHsm = 2,
}

impl StartState {
    fn name(self) -> &'static str {
        match self {
            StartState::Started => "started",
            StartState::WaitingForStore => "waiting_for_store",
            StartState::WaitingForHsm => "waiting_for_hsm",
        }
    }
}

/// The start's progress, for `/readyz`, `/metrics` and the log.
#[derive(Debug)]
struct Progress {
    state: std::sync::Mutex<StartState>,
    attempts: AtomicU64,
    gauge: Gauge,
}

impl Progress {
    fn new(metrics: &Metrics) -> Arc<Self> {
        let gauge = Gauge::default();
        metrics.register(
            "ca_start_state",
            "0 once started; 1 while waiting for the store at start, 2 while waiting for the HSM at start",
            gauge.clone(),
        );
        let p = Arc::new(Progress {
            state: std::sync::Mutex::new(StartState::WaitingForStore),
            attempts: AtomicU64::new(0),
            gauge,
        });
        p.set(StartState::WaitingForStore);
        p
    }

    fn set(&self, s: StartState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s;
        self.attempts.store(0, Ordering::Relaxed);
        self.gauge.set(s as i64);
    }

    fn get(&self) -> StartState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The outcome of one attempt to open something at start.
enum Attempt<T> {
    Done(T),
    /// Not available yet: try again after a backoff.
    Retry(anyhow::Error),
    /// Never going to work: stop the start.
    Fatal(anyhow::Error),
}

/// The status listener's routes, replaced as the start progresses.
type Routes = Arc<ArcSwap<Router>>;

/// A router that hands every request to the current routes of `routes`.
fn switching_router(routes: Routes) -> Router {
    Router::new().fallback(move |req: axum::extract::Request| {
        let router = (**routes.load()).clone();
        async move {
            use tower::ServiceExt;
            match router.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
        }
    })
}

/// `/healthz` and `/metrics` without the CA's state (it does not exist yet).
fn liveness(metrics: Arc<Metrics>) -> Router {
    use axum::routing::get;
    Router::new()
        .route(ca_api::routes::HEALTHZ, get(|| async { "ok\n" }))
        .route(
            ca_api::routes::METRICS,
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
}

/// The status listener while the store cannot be opened: alive, not ready, nothing else.
fn waiting_router(progress: Arc<Progress>, metrics: Arc<Metrics>) -> Router {
    use axum::routing::get;
    let ready = move || {
        let progress = progress.clone();
        async move {
            let body = serde_json::json!({
                "ready": false,
                "state": progress.get().name(),
                "code": Code::StoreUnavailable.as_str(),
                "attempts": progress.attempts.load(Ordering::Relaxed),
            });
            (http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    };
    liveness(metrics)
        .route(ca_api::routes::READYZ, get(ready))
        .fallback(|| async {
            let mut e = crate::error::ApiError::new(
                Code::StoreUnavailable,
                "the node is starting and its store cannot be opened yet; retry later",
            );
            e.retry_after = Some(BACKOFF_MAX.as_secs());
            e.into_response()
        })
}

/// Try `attempt` (blocking, on the blocking pool) until it is done, backing off in between;
/// `Ok(None)` if `stop` fired first.
async fn retry<T: Send + 'static>(
    what: &'static str,
    progress: &Progress,
    stop: &mut Pin<&mut impl Future<Output = ()>>,
    attempt: impl Fn() -> Attempt<T> + Send + Sync + Clone + 'static,
) -> anyhow::Result<Option<T>> {
    let mut wait = BACKOFF_MIN;
    loop {
        let n = progress.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        let job = tokio::task::spawn_blocking(attempt.clone());
        let outcome = tokio::select! {
            r = job => r.context("start-up task failed")?,
            _ = stop.as_mut() => return Ok(None),
        };
        match outcome {
            Attempt::Done(v) => {
                if n > 1 {
                    tracing::info!(attempts = n, "{what} available");
                }
                return Ok(Some(v));
            }
            Attempt::Fatal(e) => return Err(e),
            Attempt::Retry(e) => {
                tracing::warn!(
                    attempt = n,
                    retry_in_ms = wait.as_millis() as u64,
                    error = format!("{e:#}"),
                    "{what} not available at start; retrying (the node serves /healthz, and /readyz says not ready)"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.as_mut() => return Ok(None),
        }
        wait = (wait * 2).min(BACKOFF_MAX);
    }
}

/// Whether a store that did not open may open later: not for a schema newer than this binary,
/// a malformed URL, or a sled store (its errors are local: a lock held by another process, a
/// disk error; the supervisor's restart is the retry).
fn store_attempt(cfg: &ServerConfig) -> Attempt<Arc<dyn Store>> {
    match open_store_checked(cfg, Some(STORE_CONNECT_TIMEOUT)) {
        Ok(s) => Attempt::Done(s),
        Err(e) => {
            let core = e.downcast_ref::<ca_core::Error>();
            let permanent = cfg.store.kind == StoreKind::Sled
                || e.downcast_ref::<crate::config::ConfigError>().is_some()
                || match core {
                    Some(ca_core::Error::Store { op, source }) => {
                        *op == "parse database URL"
                            || source
                                .downcast_ref::<ca_core::store::SchemaTooNew>()
                                .is_some()
                    }
                    _ => false,
                };
            if permanent {
                Attempt::Fatal(e)
            } else {
                Attempt::Retry(e)
            }
        }
    }
}

/// The keys opened in the HSM at start: the issuing and audit keys, and the delegated OCSP
/// responder key when configured.
struct OpenedKeys {
    keys: HsmKeys,
    ocsp: Option<Pkcs11Signer>,
}

/// Open the HSM keys; errors that mean "not now" (login refused or backing off, token absent,
/// HSM errors) are retried, others (a missing key label, a key that does not match) are not.
fn hsm_attempt(cfg: &ServerConfig, token: &ca_core::signer::pkcs11::Token) -> Attempt<OpenedKeys> {
    let opened = open_hsm_keys(cfg, token).and_then(|keys| {
        let ocsp = match (&cfg.ocsp.signer_key, &cfg.ocsp.signer_cert) {
            (Some(label), Some(_)) => Some(token.signer(label).with_context(|| {
                format!("opening the OCSP signing key {label:?} (ocsp.signer_key)")
            })?),
            _ => None,
        };
        Ok(OpenedKeys { keys, ocsp })
    });
    match opened {
        Ok(k) => Attempt::Done(k),
        Err(e) => match e.downcast_ref::<ca_core::Error>() {
            Some(c) if c.is_signer_unavailable() => Attempt::Retry(e),
            _ => Attempt::Fatal(e),
        },
    }
}

/// What the start has set up so far, stopped again if it does not finish.
struct Started {
    status: StartedStatus,
    parts: Option<StatusParts>,
}

impl Started {
    async fn stop(self) {
        if let Some(p) = self.parts {
            close_status(p.state, p.maintenance).await;
        }
        let _ = self.status.shutdown.send(true);
        let _ = self.status.task.await;
    }
}

/// `ca-server serve`: start from `cfg`, waiting for the store and the HSM when they are away
/// (see the module documentation), with the status listener `status` served from the
/// beginning and the API listener bound (`listen.api`) once the node can sign. Returns the
/// running server, `Ok(None)` if `stop` fired during the start (everything started is stopped
/// again), or the error that stops the start for good.
pub async fn start_staged(
    cfg: &ServerConfig,
    status: TcpListener,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Option<Running>> {
    let mut stop = std::pin::pin!(stop);
    let metrics = Arc::new(Metrics::new());
    let progress = Progress::new(&metrics);
    let addr = status.local_addr()?;
    let routes: Routes = Arc::new(ArcSwap::from_pointee(waiting_router(
        progress.clone(),
        metrics.clone(),
    )));
    let (shutdown, rx) = watch::channel(false);
    let gate = Gate::new(ConnLimits::status(&cfg.limits), metrics.clone());
    let task = tokio::spawn(serve_plain(
        status,
        switching_router(routes.clone()),
        gate,
        rx,
    ));
    tracing::info!(status_addr = %addr, "status listener up; starting");
    let mut started = Started {
        status: StartedStatus {
            addr,
            task,
            shutdown,
        },
        parts: None,
    };
    match run(cfg, &progress, &routes, &metrics, &mut started, &mut stop).await {
        Ok(Some((state, tls_names, api))) => {
            let parts = started.parts.take();
            let (status_state, maintenance) = match parts {
                Some(p) => (p.state, p.maintenance),
                None => (None, None),
            };
            match start(
                state,
                tls_names,
                api,
                StatusListener::Serving(started.status),
            )
            .await
            {
                Ok(mut running) => {
                    running.attach_status(status_state, maintenance);
                    let crl_validity = cfg
                        .crl
                        .validity
                        .map_or_else(|| ca_core::crl::CrlConfig::default().validity, |v| v.0);
                    running.start_retention(&cfg.retention, crl_validity);
                    progress.set(StartState::Started);
                    Ok(Some(running))
                }
                Err(e) => {
                    close_status(status_state, maintenance).await;
                    Err(e)
                }
            }
        }
        Ok(None) => {
            tracing::info!("stop requested while starting");
            started.stop().await;
            Ok(None)
        }
        Err(e) => {
            started.stop().await;
            Err(e)
        }
    }
}

/// The start up to the API listener: the shared state, the server certificate's names and
/// the bound API listener.
async fn run(
    cfg: &ServerConfig,
    progress: &Arc<Progress>,
    routes: &Routes,
    metrics: &Arc<Metrics>,
    started: &mut Started,
    stop: &mut Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<Option<(Arc<AppState>, Vec<String>, TcpListener)>> {
    check_softhsm_env(cfg)?;
    let certs = read_ca_certs(cfg)?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    let shared = Arc::new(cfg.clone());

    // 1. The store.
    let c = shared.clone();
    let Some(store) = retry("the store", progress, stop, move || store_attempt(&c)).await? else {
        return Ok(None);
    };

    // 2. OCSP, /ca.crt and /crl from the store, with the keys known from the certificates.
    let c = shared.clone();
    let token = tokio::task::spawn_blocking(move || open_token(&c))
        .await
        .context("opening the HSM token")??;
    let issuing =
        Arc::new(DeferredSigner::from_cert("issuing key", &certs.0).context("ca.certificate")?);
    let delegated = match (&cfg.ocsp.signer_key, &cfg.ocsp.signer_cert) {
        (Some(_), Some(path)) => {
            let cert = read_pem_certs(path).context("ocsp.signer_cert")?;
            Some(Arc::new(
                DeferredSigner::from_cert("OCSP responder key", &cert[0])
                    .context("ocsp.signer_cert")?,
            ))
        }
        _ => None,
    };
    let keys = StatusKeys {
        issuing: issuing.clone(),
        delegated: delegated.clone().map(|d| d as Arc<dyn Signer>),
    };
    let inputs = StatusInputs {
        issuing_der: certs.0.clone(),
        chain_der: certs.1.clone(),
        urls: cfg.urls.clone(),
        store: store.clone(),
        clock: Arc::new(SystemClock),
        metrics: metrics.clone(),
        longest_validity: super::longest_validity(
            &cfg.profiles,
            cfg.admin.validity,
            cfg.tls.validity,
        ),
    };
    let (ocsp, crl) = (cfg.ocsp.clone(), cfg.crl.clone());
    let parts =
        tokio::task::spawn_blocking(move || status_integration_with(&ocsp, &crl, &inputs, keys))
            .await
            .context("starting the status listener")??;
    let status_state = parts.state.clone();
    routes.store(Arc::new(
        parts.router.clone().merge(liveness(metrics.clone())),
    ));
    started.parts = Some(parts);
    progress.set(StartState::WaitingForHsm);
    tracing::info!("store open; serving OCSP and the CA certificate; waiting for the HSM");

    // 3. The HSM keys. From the second attempt on, the module is initialised again first:
    // a module reads its slots and tokens at C_Initialize (a network HSM that was not
    // reachable then, SoftHSM's view of a PIN another process changed). Nothing else uses
    // the module yet (the status listener's keys are deferred); the login policy's state
    // (backoff, refused PIN) is kept across reloads.
    let c = shared.clone();
    let current = Arc::new(std::sync::Mutex::new((token, false)));
    let Some(opened) = retry("the HSM key", progress, stop, move || {
        let mut cur = current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.1 {
            match cur.0.reloaded() {
                Ok(t) => cur.0 = t,
                Err(e) => {
                    return Attempt::Retry(
                        anyhow::Error::new(e).context("reloading the PKCS#11 module"),
                    )
                }
            }
        }
        cur.1 = true;
        hsm_attempt(&c, &cur.0)
    })
    .await?
    else {
        return Ok(None);
    };
    issuing
        .install(Arc::new(TimedSigner::new(
            opened.keys.issuing.clone(),
            metrics.clone(),
        )))
        .context("hsm.issuing_key against ca.certificate")?;
    if let (Some(d), Some(s)) = (&delegated, opened.ocsp) {
        d.install(Arc::new(TimedSigner::new(Arc::new(s), metrics.clone())))
            .context("ocsp.signer_key against ocsp.signer_cert")?;
    }
    // What waited for the key: OCSP answers on the re-sign backlog, the first CRL.
    if let Some(s) = status_state.clone() {
        tokio::task::spawn_blocking(move || s.maintain_blocking())
            .await
            .context("signing what waited for the HSM")?;
    }
    let parts = parts_from(cfg, opened.keys, certs, store, metrics.clone());
    let state = build_state(&parts, status_state)?;
    let api = TcpListener::bind(cfg.listen.api)
        .await
        .with_context(|| format!("binding listen.api {}", cfg.listen.api))?;
    Ok(Some((state, parts.tls_names, api)))
}
