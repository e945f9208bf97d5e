//! Listeners and lifecycle: the HTTPS API (tokio-rustls accept, client certificate into a
//! request extension, hyper-util auto HTTP/1.1 + HTTP/2), the plain-HTTP status listener, the
//! server's own certificate (issued by the CA, renewed at 2/3 of its lifetime), graceful
//! shutdown (stop accepting, let in-flight requests finish).

use crate::api;
use crate::audit_log::Checkpointer;
use crate::auth::Peer;
use crate::config::{Limits, RenewalSection, ServerConfig, StoreKind, TokenSection};
use crate::error::Code;
use crate::listener::{ConnLimits, Gate};
use crate::metrics::{Metrics, TimedSigner};
use crate::ratelimit::RateLimits;
use crate::service::{
    build_authority, with_internal_profiles, AppState, HealthCheck, Readiness, Request, Settings,
    SERVER_TLS_PROFILE,
};
use crate::tls::{self, ClientVerifier, LiveConfig};
use crate::unauth::{Kind, UnauthFailures};
use anyhow::Context;
use axum::Router;
use ca_core::audit::NewAuditEvent;
use ca_core::ca_identity::ReservedNames;
use ca_core::clock::{Clock, SystemClock};
use ca_core::issuance::{Ca, IssuerUrls};
use ca_core::profile::{Profiles, Span};
use ca_core::signer::pkcs11::{HsmConfig, Pkcs11Signer};
use ca_core::signer::Signer;
use ca_core::store::{IdentityBinding, PgStore, SledStore, Store};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod startup;

pub use startup::{start_staged, StartState, BACKOFF_MAX, BACKOFF_MIN, STORE_CONNECT_TIMEOUT};

/// How long in-flight requests get to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Everything a server is made of, however it was obtained (config file, `dev`, tests).
#[derive(Clone)]
pub struct ServerParts {
    /// The issuing key in the HSM.
    pub signer: Arc<Pkcs11Signer>,
    /// The issuing CA certificate (DER).
    pub issuing_der: Vec<u8>,
    /// Certificates above it (DER), root last.
    pub chain_der: Vec<Vec<u8>>,
    /// Enrollment profiles (internal ones are added).
    pub profiles: Profiles,
    /// URLs written into certificates.
    pub urls: IssuerUrls,
    /// The store the CA, the authority and the status server share.
    pub store: Arc<dyn Store>,
    /// The clock every validity window and audit time is read from (tests inject a fixed one).
    pub clock: Arc<dyn Clock>,
    /// Names of the server certificate.
    pub tls_names: Vec<String>,
    /// Lifetime of the server certificate.
    pub tls_validity: Span,
    /// Lifetime of admin certificates.
    pub admin_validity: Span,
    /// Request body, timeout and rate limits (`[limits]`).
    pub limits: Limits,
    /// Enrollment token lifetimes: default and longest (`[tokens]`).
    pub tokens: TokenSection,
    /// Renewal lineage settings.
    pub renewal: RenewalSection,
    /// Metrics registry (shared with the status listener).
    pub metrics: Arc<Metrics>,
    /// Audit checkpoints (`[audit]`); `None`: no audit key configured.
    pub audit: Option<AuditParts>,
}

/// The audit checkpoint key and how often to use it.
#[derive(Clone)]
pub struct AuditParts {
    /// The audit checkpoint key (HSM), never the issuing key.
    pub signer: Arc<dyn Signer>,
    /// Time between periodic checkpoints.
    pub interval: Duration,
}

impl std::fmt::Debug for ServerParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerParts").finish_non_exhaustive()
    }
}

/// Build the CA, its authority and the shared state. `status` is the status listener (see
/// [`status_integration`]), whose OCSP responder and CRL publisher the authority keeps
/// current; `None` means revocations are recorded in the store only.
fn build_state(
    parts: &ServerParts,
    status: Option<Arc<crate::status::StatusState>>,
) -> anyhow::Result<Arc<AppState>> {
    let profiles = with_internal_profiles(
        parts.profiles.clone(),
        parts.admin_validity,
        parts.tls_validity,
    );
    let signer: Arc<dyn Signer> = Arc::new(TimedSigner::new(
        parts.signer.clone(),
        parts.metrics.clone(),
    ));
    let ca = Ca::new(
        signer,
        parts.issuing_der.clone(),
        parts.chain_der.clone(),
        profiles,
        parts.urls.clone(),
        parts.store.clone(),
        parts.clock.clone(),
    )
    .context("assembling the issuing CA")?
    .with_reserved_names(reserved_names(parts)?);
    // Certificates name the CRL shards the status listener publishes (README "CRLs").
    let ca = match status
        .as_ref()
        .and_then(|s| s.crls().shard_scheme().cloned())
    {
        Some(scheme) => ca.with_crl_shards(scheme),
        None => ca,
    };
    let root_der = parts
        .chain_der
        .last()
        .cloned()
        .unwrap_or_else(|| parts.issuing_der.clone());
    let health_signer = parts.signer.clone();
    let hsm_health: HealthCheck =
        Arc::new(move || health_signer.health_check(crate::service::READINESS_SESSION_WAIT));
    let readiness = Readiness::new(&parts.metrics, Some(parts.signer.token().clone()));
    let checkpointer = match &parts.audit {
        Some(a) => {
            if a.signer.spki_der() == parts.signer.spki_der() {
                anyhow::bail!(
                    "audit.key is the issuing key: audit checkpoints need a key of their own"
                );
            }
            Some(Arc::new(
                Checkpointer::new(
                    a.signer.clone(),
                    parts.store.clone().into_audit_log(),
                    parts.clock.clone(),
                    a.interval,
                )
                .context("the audit checkpoint key (audit.key)")?,
            ))
        }
        None => None,
    };
    let settings = Settings {
        token_default_ttl: parts.tokens.default_ttl.0,
        token_max_ttl: parts.tokens.max_ttl.0,
        max_body_bytes: parts.limits.max_body_bytes,
        request_timeout: parts
            .limits
            .request_timeout
            .0
            .to_std()
            .unwrap_or(Duration::from_secs(30)),
        handshake_timeout: parts
            .limits
            .handshake_timeout
            .0
            .to_std()
            .unwrap_or(Duration::from_secs(10)),
        lock_on_superseded: parts.renewal.lock_on_superseded,
        api_connections: ConnLimits::api(&parts.limits),
        status_connections: ConnLimits::status(&parts.limits),
        unauthenticated_summary_interval: parts
            .limits
            .unauthenticated_summary_interval
            .0
            .to_std()
            .unwrap_or(Duration::from_secs(60)),
    };
    let ca = Arc::new(ca);
    let authority = Arc::new(build_authority(
        ca.clone(),
        parts.store.clone(),
        parts.clock.clone(),
        parts.metrics.clone(),
        &settings,
        status.as_deref(),
    ));
    Ok(Arc::new(AppState {
        ca,
        store: parts.store.clone(),
        clock: parts.clock.clone(),
        metrics: parts.metrics.clone(),
        limits: RateLimits::new(&parts.limits),
        authority,
        hsm_health,
        readiness,
        settings,
        root_der,
        revocations: Default::default(),
        checkpointer,
        unauthenticated: UnauthFailures::new(parts.metrics.clone()),
    }))
}

/// The names of the CA's own endpoints (`[tls] names`, the hosts of `[urls]`): never issued
/// to a subscriber ([`ca_core::ca_identity`]).
pub fn reserved_names(parts: &ServerParts) -> anyhow::Result<ReservedNames> {
    let mut reserved =
        ReservedNames::from_names(&parts.tls_names).context("reserving the [tls] names")?;
    for url in [&parts.urls.ocsp, &parts.urls.ca_issuers, &parts.urls.crl]
        .into_iter()
        .flatten()
    {
        reserved
            .add_url_host(url)
            .with_context(|| format!("reserving the host of {url}"))?;
    }
    Ok(reserved)
}

/// The status listener's pieces: its router (OCSP, CRL, `/ca.crt`), its state and its
/// maintenance task.
struct StatusParts {
    /// Routes for the plain-HTTP listener (health routes are added by [`start`]).
    router: Router,
    /// OCSP refresh and CRL rebuild task, stopped at shutdown ([`Running::attach_status`]).
    maintenance: Option<JoinHandle<()>>,
    /// The status listener's state: its OCSP responder and CRL publisher are the authority's
    /// ([`build_state`]); closed at shutdown (its issuance signer thread joined).
    state: Option<Arc<crate::status::StatusState>>,
}

impl std::fmt::Debug for StatusParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusParts").finish_non_exhaustive()
    }
}

/// Build the status listener ([`crate::status`]): OCSP responder (delegated signer when
/// `ocsp.signer_key` is set, else the issuing key), CRL publisher, external OCSP responses,
/// the root CRL, OCSP outcome metrics. Blocking (HSM, store): call it from `spawn_blocking`.
/// Needs a tokio runtime (it spawns the maintenance task).
fn status_integration(
    ocsp: &crate::config::OcspSection,
    crl: &crate::config::CrlSection,
    parts: &ServerParts,
) -> anyhow::Result<StatusParts> {
    let issuing: Arc<dyn Signer> = Arc::new(TimedSigner::new(
        parts.signer.clone(),
        parts.metrics.clone(),
    ));
    let delegated = match &ocsp.signer_key {
        Some(label) if ocsp.signer_cert.is_some() => {
            let signer = parts.signer.token().signer(label).with_context(|| {
                format!("opening the OCSP signing key {label:?} (ocsp.signer_key)")
            })?;
            Some(
                Arc::new(TimedSigner::new(Arc::new(signer), parts.metrics.clone()))
                    as Arc<dyn Signer>,
            )
        }
        _ => None,
    };
    let keys = StatusKeys { issuing, delegated };
    status_integration_with(ocsp, crl, &StatusInputs::of(parts), keys)
}

/// The keys the status listener signs with: the issuing key (CRLs, and OCSP unless
/// delegated) and the delegated OCSP responder key (`ocsp.signer_key`), HSM signers or
/// [`DeferredSigner`]s waiting for the HSM.
struct StatusKeys {
    issuing: Arc<dyn Signer>,
    delegated: Option<Arc<dyn Signer>>,
}

/// What the status listener is built from, besides its keys: the parts of [`ServerParts`]
/// that need no HSM.
struct StatusInputs {
    issuing_der: Vec<u8>,
    chain_der: Vec<Vec<u8>>,
    urls: IssuerUrls,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// The longest validity of any certificate the CA issues (CRL shards are published that
    /// far ahead).
    longest_validity: chrono::Duration,
}

impl StatusInputs {
    fn of(parts: &ServerParts) -> Self {
        StatusInputs {
            longest_validity: longest_validity(
                &parts.profiles,
                parts.admin_validity,
                parts.tls_validity,
            ),
            issuing_der: parts.issuing_der.clone(),
            chain_der: parts.chain_der.clone(),
            urls: parts.urls.clone(),
            store: parts.store.clone(),
            clock: parts.clock.clone(),
            metrics: parts.metrics.clone(),
        }
    }
}

/// The longest validity of any certificate the CA issues: its profiles', the administrator
/// and the server certificates' (how far ahead CRL shards are published).
pub(crate) fn longest_validity(
    profiles: &Profiles,
    admin_validity: Span,
    tls_validity: Span,
) -> chrono::Duration {
    profiles
        .0
        .values()
        .map(|p| p.validity.0)
        .chain([admin_validity.0, tls_validity.0])
        .max()
        .unwrap_or_else(|| chrono::Duration::days(1))
}

/// [`status_integration`] with its keys given.
fn status_integration_with(
    ocsp: &crate::config::OcspSection,
    crl: &crate::config::CrlSection,
    parts: &StatusInputs,
    keys: StatusKeys,
) -> anyhow::Result<StatusParts> {
    use crate::status::{StatusConfig, StatusSetup, StatusState};
    use ca_core::ocsp::{ExternalResponse, ResponderKey};
    let issuing = keys.issuing;
    let ocsp_key = match (keys.delegated, &ocsp.signer_cert) {
        (Some(signer), Some(cert)) => {
            let cert = read_pem_certs(cert).context("ocsp.signer_cert")?;
            let key = ResponderKey::delegated(signer, &cert[0]).context("ocsp.signer_cert")?;
            // Record it as a certificate this CA issued (listed, revocable), once; the
            // responder then refuses to start with it if it is expired or revoked.
            let issuer = ca_core::ocsp::OcspIssuer::from_cert_der(&parts.issuing_der)
                .context("ca.certificate")?;
            ca_core::ocsp::register_signer_cert(parts.store.as_ref(), &issuer, &cert[0], "server")
                .context("ocsp.signer_cert: recording the OCSP responder certificate")?;
            key
        }
        _ => ResponderKey::ca(issuing.clone()),
    };
    let responder = ocsp.responder_config();
    let mut crl_config = ca_core::crl::CrlConfig::default();
    if let Some(v) = crl.validity {
        crl_config.validity = v.0;
        crl_config.refresh_before = v.0 / 2;
    }
    crl_config.distribution_point = parts.urls.crl.clone();
    let shards = match (crl.shard_width, &parts.urls.crl) {
        (Some(width), Some(url)) => Some((
            ca_core::crl::ShardScheme::new(url, width.0, parts.longest_validity)
                .context("crl.shard_width")?,
            crl.full_interval(),
        )),
        _ => None,
    };
    let root_der = parts
        .chain_der
        .last()
        .cloned()
        .unwrap_or_else(|| parts.issuing_der.clone());
    let mut http = StatusConfig::default();
    if let Some(m) = ocsp.max_age {
        http.max_age = m.0.to_std().unwrap_or(http.max_age);
    }
    let setup = StatusSetup {
        issuer_cert_der: parts.issuing_der.clone(),
        issuing_signer: issuing,
        ocsp_key,
        store: parts.store.clone(),
        clock: parts.clock.clone(),
        responder,
        crl: crl_config,
        external_responses: ocsp
            .external_responses
            .iter()
            .map(|p| ExternalResponse {
                path: p.clone(),
                signer_cert_der: root_der.clone(),
            })
            .collect(),
        root_crl: crl.root_crl.clone(),
        http,
    };
    let state = StatusState::build_with_shards(setup, shards)
        .context("starting the OCSP responder and CRL publisher")?;
    let metrics = parts.metrics.clone();
    state.set_observer(Arc::new(move |outcome| metrics.ocsp_request(outcome)));
    crate::metrics::PresignCounter::register(&parts.metrics, state.responder());
    crate::metrics::RevocationGauge::register(&parts.metrics, state.responder(), state.crls());
    crate::metrics::OcspSignerGauge::register(
        &parts.metrics,
        state.responder(),
        parts.clock.clone(),
    );
    crate::metrics::MemoMetric::register(&parts.metrics, state.responder());
    crate::metrics::AnswerCacheMetric::register(&parts.metrics, state.responder());
    let maintenance = state.spawn_maintenance();
    Ok(StatusParts {
        router: crate::status::router(state.clone()),
        maintenance: Some(maintenance),
        state: Some(state),
    })
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// Bound HTTPS address.
    pub api_addr: SocketAddr,
    /// Bound status address.
    pub status_addr: Option<SocketAddr>,
    /// The state every route handler shares (CA, store, clock, authority, limits).
    pub state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    aborts: Vec<JoinHandle<()>>,
    status: Option<(Arc<crate::status::StatusState>, Option<JoinHandle<()>>)>,
    retention: Option<Arc<crate::retention::Pruner>>,
}

impl Running {
    /// A background task to abort once the listeners have stopped.
    pub fn abort_on_shutdown(&mut self, task: JoinHandle<()>) {
        self.aborts.push(task);
    }

    /// Start retention (`[retention]`, README "Retention"): a pruner over this server's store,
    /// with the status listener's OCSP responder when it has one, and, when
    /// `section.enabled`, its periodic task, stopped at shutdown after the batch in progress.
    /// `crl_validity` is the CRLs' validity (`crl.validity`). Returns the pruner (for a pass
    /// on demand).
    pub fn start_retention(
        &mut self,
        section: &crate::config::RetentionSection,
        crl_validity: chrono::Duration,
    ) -> Arc<crate::retention::Pruner> {
        let mut pruner = crate::retention::Pruner::new(
            self.state.store.clone(),
            self.state.clock.clone(),
            section.clone(),
            crl_validity,
            &self.state.metrics,
        );
        if let Some((status, _)) = &self.status {
            pruner = pruner.with_responder(status.responder().clone());
        }
        let pruner = Arc::new(pruner);
        if section.enabled {
            self.tasks
                .push(pruner.clone().spawn(self.shutdown.subscribe()));
        }
        self.retention = Some(pruner.clone());
        pruner
    }

    /// The pruner [`Running::start_retention`] started, if any.
    pub fn pruner(&self) -> Option<&Arc<crate::retention::Pruner>> {
        self.retention.as_ref()
    }

    /// The status listener's state and maintenance task ([`StatusParts`]): stopped, and its
    /// issuance signer thread joined, at shutdown.
    fn attach_status(
        &mut self,
        parts_state: Option<Arc<crate::status::StatusState>>,
        maintenance: Option<JoinHandle<()>>,
    ) {
        match parts_state {
            Some(state) => self.status = Some((state, maintenance)),
            None => self.aborts.extend(maintenance),
        }
    }

    /// Graceful shutdown, in this order (README "Shutdown"):
    ///
    /// 1. stop accepting on both listeners; in-flight requests finish (up to
    ///    [`SHUTDOWN_GRACE`]), and so do the server-certificate renewal and rate-limit tasks;
    /// 2. a last audit checkpoint is signed (it covers every event of this run), when an audit
    ///    key is configured;
    /// 3. the status maintenance task finishes the pass in progress and ends;
    /// 4. the OCSP issuance signer thread signs what is still queued and is joined;
    /// 5. the store is flushed.
    ///
    /// Afterwards no thread of this server touches the HSM or the store, except blocking
    /// tasks of requests that outlived the grace period: the caller drops the tokio runtime
    /// (which waits for them) before it finalizes the PKCS#11 module
    /// ([`ca_core::signer::pkcs11::finalize_modules`]).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // What the listeners refused since the last summary (crate::unauth), before the
        // last checkpoint so that it covers the summary too.
        self.state.summarise_unauthenticated().await;
        // Every request is done: the checkpoint covers the last event this run wrote.
        if let Some(c) = &self.state.checkpointer {
            if let Err(e) = c.checkpoint_async(false).await {
                tracing::error!(error = %e, "audit checkpoint at shutdown refused or failed");
            }
        }
        for t in self.aborts {
            t.abort();
        }
        if let Some((status, maintenance)) = self.status {
            close_status(Some(status), maintenance).await;
        }
        let store = self.state.store.clone();
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "flushing the store at shutdown failed"),
            Err(e) => tracing::error!(error = %e, "flushing the store at shutdown failed"),
        }
        tracing::info!("server stopped");
    }

    /// Serve until SIGINT or SIGTERM, then shut down gracefully (or until the store needs a
    /// restart: [`Running::wait_for`]).
    pub async fn wait_for_signal(self) -> Result<(), crate::service::RestartRequired> {
        match ShutdownSignal::install() {
            Ok(mut s) => self.wait_for(&mut s).await,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGINT/SIGTERM; stopping");
                self.shutdown().await;
                Ok(())
            }
        }
    }

    /// Serve until `signal` fires (also when it fired before this call), then shut down
    /// gracefully. Also stops, gracefully, when the store cannot write again in this process
    /// and its fault is gone ([`crate::service::store_restart_required`]): the error asks the
    /// caller to exit with [`crate::service::EXIT_STORE_RESTART`].
    pub async fn wait_for(
        self,
        signal: &mut ShutdownSignal,
    ) -> Result<(), crate::service::RestartRequired> {
        let fault = crate::service::store_restart_required(self.state.clone());
        let restart = tokio::select! {
            _ = signal.recv() => {
                tracing::info!("shutdown requested; finishing in-flight requests");
                None
            }
            r = fault => Some(r),
        };
        self.shutdown().await;
        restart.map_or(Ok(()), Err)
    }
}

/// Stop the status listener's background work: the maintenance task after its pass in
/// progress, then the OCSP issuance signer thread (joined). Shutdown, and startup failures
/// after [`status_integration`] (its thread must not outlive the server either).
async fn close_status(
    state: Option<Arc<crate::status::StatusState>>,
    maintenance: Option<JoinHandle<()>>,
) {
    let Some(state) = state else {
        if let Some(m) = maintenance {
            m.abort();
        }
        return;
    };
    state.stop_maintenance();
    if let Some(m) = maintenance {
        if tokio::time::timeout(SHUTDOWN_GRACE, m).await.is_err() {
            tracing::warn!("the status maintenance pass did not finish within the grace period");
        }
    }
    if let Err(e) = tokio::task::spawn_blocking(move || state.close_blocking()).await {
        tracing::error!(error = %e, "stopping the OCSP issuance signer failed");
    }
}

/// SIGINT and SIGTERM, listened for from [`ShutdownSignal::install`] on: a signal that
/// arrives while the server is still starting is kept, and the server stops as soon as it has
/// started (instead of dying of the signal's default action half-way through startup).
#[derive(Debug)]
pub struct ShutdownSignal {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    /// Start listening (needs a tokio runtime).
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(ShutdownSignal {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignal {})
    }

    /// Resolves on SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {},
            _ = self.term.recv() => {},
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    match ShutdownSignal::install() {
        Ok(mut s) => s.recv().await,
        Err(_) => std::future::pending::<()>().await,
    }
}

/// The server's own TLS identity.
struct ServerIdentity {
    config: rustls::ServerConfig,
    lifetime: chrono::Duration,
    not_after: chrono::DateTime<chrono::Utc>,
}

/// Issue a fresh server certificate (new P-256 key, in memory only) and build the TLS config.
async fn server_identity(
    state: &Arc<AppState>,
    names: &[String],
    verifier: Arc<ClientVerifier>,
) -> anyhow::Result<ServerIdentity> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating the server TLS key")?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .context("building the server CSR")?;
    let csr = ca_core::csr::parse_der(csr.der()).context("parsing the server CSR")?;
    let outcome = state
        .issue(
            csr,
            Request::Admin {
                profile: SERVER_TLS_PROFILE.into(),
                actor: "ca-server".into(),
                binding: IdentityBinding {
                    common_name: None,
                    sans: names.to_vec(),
                },
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("issuing the server certificate: {e}"))?;
    let rec = &outcome.issued.record;
    state.metrics.issued(&rec.profile);
    state
        .audit(
            NewAuditEvent::ok("ca-server", "issue", rec.serial_hex())
                .with_detail(serde_json::json!({ "profile": rec.profile, "sans": rec.sans })),
        )
        .await;
    let mut chain = vec![CertificateDer::from(rec.der.clone())];
    chain.extend(
        outcome
            .issued
            .chain
            .iter()
            .map(|c| CertificateDer::from(c.clone())),
    );
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = tls::server_config(tls::provider(), verifier, chain, key)?;
    tracing::info!(serial = %rec.serial_hex(), not_after = %rec.not_after, "server certificate issued");
    Ok(ServerIdentity {
        config,
        // From issuance, not from the back-dated notBefore.
        lifetime: rec.not_after - rec.issued_at,
        not_after: rec.not_after,
    })
}

/// The plain-HTTP status listener, as [`start`] gets it.
enum StatusListener {
    /// No status listener.
    None,
    /// Bound, not serving yet: serve these routes (the liveness routes are added).
    Bind(TcpListener, Router),
    /// Serving already since the start began ([`start_staged`]); it stops with the server.
    Serving(StartedStatus),
}

/// A status listener that [`start_staged`] serves from the beginning of the start.
struct StartedStatus {
    addr: SocketAddr,
    task: JoinHandle<()>,
    /// Stops the status listener; becomes the server's shutdown sender.
    shutdown: watch::Sender<bool>,
}

/// Start both listeners. `status` is the plain-HTTP listener and its extra routes.
async fn start(
    state: Arc<AppState>,
    tls_names: Vec<String>,
    api_listener: TcpListener,
    status: StatusListener,
) -> anyhow::Result<Running> {
    let verifier = Arc::new(ClientVerifier::new(
        &state.ca.full_chain(),
        &tls::provider(),
    )?);
    let identity = server_identity(&state, &tls_names, verifier.clone()).await?;
    let live = Arc::new(LiveConfig::new(identity.config));
    let mut tasks = Vec::new();
    let mut status_addr = None;
    let (tx, rx, status) = match status {
        StatusListener::Serving(s) => {
            let rx = s.shutdown.subscribe();
            status_addr = Some(s.addr);
            tasks.push(s.task);
            (s.shutdown, rx, None)
        }
        StatusListener::Bind(l, r) => {
            let (tx, rx) = watch::channel(false);
            (tx, rx, Some((l, r)))
        }
        StatusListener::None => {
            let (tx, rx) = watch::channel(false);
            (tx, rx, None)
        }
    };
    let api_addr = api_listener.local_addr()?;

    // Renew the server certificate at 2/3 of its lifetime.
    {
        let state = state.clone();
        let live = live.clone();
        let mut rx = rx.clone();
        let mut lifetime = identity.lifetime;
        let mut not_after = identity.not_after;
        tasks.push(tokio::spawn(async move {
            loop {
                let renew_at = not_after - lifetime / 3;
                let wait = (renew_at - state.clock.now())
                    .to_std()
                    .unwrap_or(Duration::from_secs(1));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = rx.changed() => return,
                }
                match server_identity(&state, &tls_names, verifier.clone()).await {
                    Ok(id) => {
                        live.swap(id.config);
                        lifetime = id.lifetime;
                        not_after = id.not_after;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "server certificate renewal failed; retrying in 60 s");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                            _ = rx.changed() => return,
                        }
                    }
                }
            }
        }));
    }

    // Signed audit checkpoints.
    if let Some(c) = &state.checkpointer {
        tasks.push(c.clone().spawn_periodic(rx.clone()));
    }

    // Forget idle rate-limit buckets.
    {
        let state = state.clone();
        let mut rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => state.limits.retain_recent(),
                    _ = rx.changed() => return,
                }
            }
        }));
    }

    // Summarise unauthenticated failures in the audit log (crate::unauth).
    {
        let state = state.clone();
        let mut rx = rx.clone();
        let every = state.settings.unauthenticated_summary_interval;
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => state.summarise_unauthenticated().await,
                    _ = rx.changed() => return,
                }
            }
        }));
    }

    let router = api::router(state.clone());
    let api_gate = Gate::new(
        state.settings.api_connections.clone(),
        state.metrics.clone(),
    );
    tasks.push(tokio::spawn(accept_loop(
        api_listener,
        live,
        router,
        state.clone(),
        api_gate,
        rx.clone(),
    )));

    if let Some((listener, extra)) = status {
        status_addr = Some(listener.local_addr()?);
        let router = extra.merge(api::liveness_router(state.clone()));
        let gate = Gate::new(
            state.settings.status_connections.clone(),
            state.metrics.clone(),
        );
        tasks.push(tokio::spawn(crate::listener::serve_plain(
            listener,
            router,
            gate,
            rx.clone(),
        )));
    }
    tracing::info!(%api_addr, ?status_addr, "listening");
    Ok(Running {
        api_addr,
        status_addr,
        state,
        shutdown: tx,
        tasks,
        aborts: Vec::new(),
        status: None,
        retention: None,
    })
}

async fn accept_loop(
    listener: TcpListener,
    live: Arc<LiveConfig>,
    router: Router,
    state: Arc<AppState>,
    gate: Arc<Gate>,
    shutdown: watch::Receiver<bool>,
) {
    let mut stop = shutdown.clone();
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        // The caps count handshakes too: a client that never finishes one holds a slot only
        // until limits.handshake_timeout.
        let Some(ticket) = gate.admit(addr.ip()) else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(live.current());
        let router = router.clone();
        let state = state.clone();
        let gate = gate.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let limit = gate.limits().handshake_timeout;
            let tls = match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    drop(ticket);
                    handshake_failed(&state, addr, &e);
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "TLS handshake timed out");
                    state.metrics.connection_closed("api", "handshake_timeout");
                    return;
                }
            };
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::new(c.to_vec()));
            let peer = Peer { addr, cert };
            crate::listener::serve_connection(
                gate,
                ticket,
                tls,
                router,
                Some(peer),
                addr,
                shutdown,
            )
            .await;
        });
    }
    drop(listener);
    if !gate.drained(SHUTDOWN_GRACE).await {
        tracing::warn!("in-flight connections did not finish within the grace period");
    }
}

/// A handshake that failed on the client certificate is an unauthenticated failure: counted
/// and summarised in the audit log ([`crate::unauth`]), not one event each.
fn handshake_failed(state: &Arc<AppState>, addr: SocketAddr, e: &std::io::Error) {
    let rustls_err = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_err {
        Some(rustls::Error::InvalidCertificate(ce)) => {
            tracing::info!(%addr, error = %ce, "client certificate refused at the handshake");
            let code = Code::CertUnknown.as_str();
            state.metrics.failure(code);
            state
                .unauthenticated
                .record(Kind::TlsClientCert, addr.ip(), "tls-handshake", code);
        }
        _ => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
    }
}

/// Read PEM certificates from a file.
pub fn read_pem_certs(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = ca_core::x509::pem_decode_all(&data, "CERTIFICATE")
        .with_context(|| format!("parsing PEM certificates in {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// The environment variable SoftHSM2 reads its configuration file from.
pub const SOFTHSM_CONF_ENV: &str = "SOFTHSM2_CONF";

/// Set by [`reexec_for_softhsm`] in the process it starts, so a mismatch there is an error
/// instead of another re-execution.
const REEXEC_GUARD_ENV: &str = "CA_SERVER_SOFTHSM_REEXEC";

fn softhsm_env_is(conf: &Path) -> bool {
    let Some(env) = std::env::var_os(SOFTHSM_CONF_ENV) else {
        return false;
    };
    let env = std::path::PathBuf::from(env);
    env == conf || matches!((env.canonicalize(), conf.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// Make sure SoftHSM will read `conf` (`hsm.softhsm_conf`): when `SOFTHSM2_CONF` names another
/// file (or none), replace this process by a fresh run of the same program with the same
/// arguments and `SOFTHSM2_CONF=conf` in its environment. Returns only if nothing had to be
/// done, or with the error that prevented the re-execution.
///
/// SoftHSM reads `SOFTHSM2_CONF` once, when the module is loaded, so it must be in the
/// environment then; and a running multithreaded program must not change its own environment
/// (`setenv` races `getenv` in other threads). Call it before anything loads the module, from
/// a command's entry point (`serve`, `dev`, break-glass), never from a library caller.
pub fn reexec_for_softhsm(conf: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    if softhsm_env_is(conf) || std::env::var_os(REEXEC_GUARD_ENV).is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating this program to restart it")?;
    let err = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(SOFTHSM_CONF_ENV, conf)
        .env(REEXEC_GUARD_ENV, "1")
        .exec();
    Err(anyhow::Error::new(err).context(format!(
        "restarting {} with {SOFTHSM_CONF_ENV}={}",
        exe.display(),
        conf.display()
    )))
}

/// Open the store `[store]` names (blocking: PostgreSQL's client must not run on an async
/// thread). Errors never show the database URL (it may hold a password).
pub(crate) fn open_store(cfg: &ServerConfig) -> anyhow::Result<Arc<dyn Store>> {
    open_store_checked(cfg, None)
}

/// [`open_store`], checking first that PostgreSQL accepts a connection within
/// `reachable_within` (when given), so that an attempt while it is down fails fast.
fn open_store_checked(
    cfg: &ServerConfig,
    reachable_within: Option<Duration>,
) -> anyhow::Result<Arc<dyn Store>> {
    match cfg.store.kind {
        StoreKind::Sled => {
            let store_dir = cfg.data_dir.join("store");
            Ok(Arc::new(SledStore::open(&store_dir).with_context(
                || format!("opening the store in {}", store_dir.display()),
            )?))
        }
        StoreKind::Postgres => {
            let source = cfg
                .store
                .url
                .as_ref()
                .context("store.url: required for kind = \"postgres\"")?;
            let url = source.read()?;
            if let Some(timeout) = reachable_within {
                PgStore::check_reachable(&url, timeout)
                    .context("opening the PostgreSQL store (store.url)")?;
            }
            let size = cfg
                .store
                .pool_size
                .unwrap_or(ca_core::store::DEFAULT_POOL_SIZE);
            Ok(Arc::new(
                PgStore::open_with_pool_size(&url, size)
                    .context("opening the PostgreSQL store (store.url)")?,
            ))
        }
    }
}

/// The check before the PKCS#11 module is loaded: SoftHSM reads `SOFTHSM2_CONF` once, when
/// the module is first loaded; the server does not set its own environment (see
/// [`reexec_for_softhsm`]), so it must be there already.
fn check_softhsm_env(cfg: &ServerConfig) -> anyhow::Result<()> {
    if let Some(conf) = &cfg.hsm.softhsm_conf {
        if !softhsm_env_is(conf) {
            anyhow::bail!(
                "hsm.softhsm_conf is {} but {SOFTHSM_CONF_ENV} is {}: start the server with                  {SOFTHSM_CONF_ENV}={} in its environment (dev.env exports it)",
                conf.display(),
                std::env::var_os(SOFTHSM_CONF_ENV)
                    .map(|v| format!("{:?}", std::path::PathBuf::from(v)))
                    .unwrap_or_else(|| "not set".into()),
                conf.display()
            );
        }
    }
    Ok(())
}

/// Load the PKCS#11 module and name the token (no login yet), with the configured login
/// policy (`hsm.refused_pin_retry`).
fn open_token(cfg: &ServerConfig) -> anyhow::Result<ca_core::signer::pkcs11::Token> {
    let mut hsm = HsmConfig::new(&cfg.hsm.token_label, cfg.hsm.pin.clone());
    hsm.module = cfg.hsm.module.clone();
    if let Some(n) = cfg.hsm.sessions {
        hsm.sessions = n;
    }
    let token = hsm.open().context("opening the HSM token (hsm.*)")?;
    token.set_refused_pin_retry(cfg.hsm.refused_pin_retry());
    Ok(token)
}

/// The keys a node signs with, opened (logged in) in the token.
struct HsmKeys {
    issuing: Arc<Pkcs11Signer>,
    audit: Option<AuditParts>,
}

/// Open the issuing key and the audit checkpoint key (`audit.key`) in `token`: the first
/// login. Writes the audit public key for auditors.
fn open_hsm_keys(
    cfg: &ServerConfig,
    token: &ca_core::signer::pkcs11::Token,
) -> anyhow::Result<HsmKeys> {
    let signer = Arc::new(token.signer(&cfg.hsm.issuing_key).with_context(|| {
        format!(
            "opening HSM key {:?} (hsm.issuing_key)",
            cfg.hsm.issuing_key
        )
    })?);
    let audit = match &cfg.audit.key {
        Some(label) => {
            let audit_signer = token.signer(label).with_context(|| {
                format!(
                    "opening the audit checkpoint key {label:?} (audit.key) in token {:?}: make it \
                     with the key ceremony (audit_key_label), or remove audit.key",
                    cfg.hsm.token_label
                )
            })?;
            if audit_signer.spki_der() == signer.spki_der() {
                anyhow::bail!("audit.key {label:?} is the issuing key: audit checkpoints need a key of their own");
            }
            let key = ca_core::audit::AuditKey::from_spki_der(audit_signer.spki_der())
                .context("the audit checkpoint key (audit.key)")?;
            let path = cfg.audit.public_key_path(&cfg.data_dir);
            write_public_key(&path, &key)
                .with_context(|| format!("writing the audit public key to {}", path.display()))?;
            Some(AuditParts {
                signer: Arc::new(audit_signer),
                interval: cfg
                    .audit
                    .checkpoint_interval
                    .0
                    .to_std()
                    .unwrap_or(Duration::from_secs(300)),
            })
        }
        None => {
            tracing::warn!("no audit checkpoint key ([audit] key): the audit log is a bare hash chain that whoever can write the store can cut or recompute");
            None
        }
    };
    Ok(HsmKeys {
        issuing: signer,
        audit,
    })
}

/// The issuing certificate and the chain above it (`[ca]`), DER.
fn read_ca_certs(cfg: &ServerConfig) -> anyhow::Result<(Vec<u8>, Vec<Vec<u8>>)> {
    let issuing = read_pem_certs(&cfg.ca.certificate).context("ca.certificate")?;
    let chain = read_pem_certs(&cfg.ca.chain).context("ca.chain")?;
    Ok((issuing[0].clone(), chain))
}

/// [`ServerParts`] from a configuration and what was opened: the HSM keys, the store.
fn parts_from(
    cfg: &ServerConfig,
    keys: HsmKeys,
    certs: (Vec<u8>, Vec<Vec<u8>>),
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
) -> ServerParts {
    ServerParts {
        signer: keys.issuing,
        issuing_der: certs.0,
        chain_der: certs.1,
        profiles: cfg.profiles.clone(),
        urls: cfg.urls.clone(),
        store,
        clock: Arc::new(SystemClock),
        tls_names: cfg.tls.names.clone(),
        tls_validity: cfg.tls.validity,
        admin_validity: cfg.admin.validity,
        limits: cfg.limits.clone(),
        tokens: cfg.tokens.clone(),
        renewal: cfg.renewal.clone(),
        metrics,
        audit: keys.audit,
    }
}

/// Open the HSM, the store and the certificates named by a configuration, failing at the
/// first part that cannot be opened (`serve` waits for the store and the HSM instead:
/// [`start_staged`]).
pub fn parts_from_config(cfg: &ServerConfig, metrics: Arc<Metrics>) -> anyhow::Result<ServerParts> {
    check_softhsm_env(cfg)?;
    let token = open_token(cfg)?;
    let keys = open_hsm_keys(cfg, &token)?;
    let certs = read_ca_certs(cfg)?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    let store = open_store(cfg)?;
    Ok(parts_from(cfg, keys, certs, store, metrics))
}

/// Write the audit public key (PEM) for auditors, unless the file already holds it.
fn write_public_key(path: &Path, key: &ca_core::audit::AuditKey) -> anyhow::Result<()> {
    let pem = key.to_pem();
    if std::fs::read_to_string(path).is_ok_and(|old| old == pem) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::dev::write_atomic(path, pem.as_bytes(), 0o644)?;
    tracing::info!(path = %path.display(), sha256 = key.sha256(), "audit public key written");
    Ok(())
}

/// `ca-server serve`: everything from a configuration, listeners bound as configured.
pub async fn start_from_config(cfg: &ServerConfig) -> anyhow::Result<Running> {
    let api = TcpListener::bind(cfg.listen.api)
        .await
        .with_context(|| format!("binding listen.api {}", cfg.listen.api))?;
    let status = TcpListener::bind(cfg.listen.status)
        .await
        .with_context(|| format!("binding listen.status {}", cfg.listen.status))?;
    start_with_listeners(cfg, api, status).await
}

/// Like [`start_from_config`] with listeners already bound (port 0 in tests and `dev`).
pub async fn start_with_listeners(
    cfg: &ServerConfig,
    api: TcpListener,
    status: TcpListener,
) -> anyhow::Result<Running> {
    ServerBuilder::from_config(cfg)
        .await?
        .assemble()
        .await?
        .start(api, Some(status))
        .await
}

/// The one way a server is assembled, for `serve`, `dev`, break-glass and the tests:
/// [`ServerParts`] (from a configuration, or built by a test), the status listener's sections
/// when it has one, then [`ServerBuilder::assemble`] (the CA, the shared state, the OCSP
/// responder and CRL publisher; nothing listens yet) and [`Assembled::start`].
#[derive(Debug)]
pub struct ServerBuilder {
    parts: ServerParts,
    status: Option<(crate::config::OcspSection, crate::config::CrlSection)>,
    retention: Option<crate::config::RetentionSection>,
}

impl ServerBuilder {
    /// A server made of `parts`, without a status listener until [`Self::with_status`].
    pub fn new(parts: ServerParts) -> Self {
        ServerBuilder {
            parts,
            status: None,
            retention: None,
        }
    }

    /// Everything a configuration names: the HSM, the store, the certificates, the status
    /// listener's OCSP and CRL settings.
    pub async fn from_config(cfg: &ServerConfig) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let owned = cfg.clone();
        let parts = tokio::task::spawn_blocking(move || parts_from_config(&owned, metrics))
            .await
            .context("opening the HSM and the store")??;
        Ok(Self::new(parts)
            .with_status(cfg.ocsp.clone(), cfg.crl.clone())
            .with_retention(cfg.retention.clone()))
    }

    /// Prune expired certificates and finished tokens with these settings once started
    /// ([`Running::start_retention`]).
    pub fn with_retention(mut self, retention: crate::config::RetentionSection) -> Self {
        self.retention = Some(retention);
        self
    }

    /// Serve OCSP, CRLs and the issuer certificate on the status listener, with these
    /// settings; revocations and issuances then reach the OCSP responder and the CRL.
    pub fn with_status(
        mut self,
        ocsp: crate::config::OcspSection,
        crl: crate::config::CrlSection,
    ) -> Self {
        self.status = Some((ocsp, crl));
        self
    }

    /// The parts this server is made of.
    pub fn parts(&self) -> &ServerParts {
        &self.parts
    }

    /// The CA, the shared state and (with [`Self::with_status`]) the OCSP responder, the CRL
    /// publisher and their maintenance task. Nothing listens yet: the caller may use the
    /// state first (`dev` issues its administrator certificate), then [`Assembled::start`] or
    /// [`Assembled::close`].
    pub async fn assemble(self) -> anyhow::Result<Assembled> {
        let crl_validity = self
            .status
            .as_ref()
            .and_then(|(_, crl)| crl.validity)
            .map_or_else(|| ca_core::crl::CrlConfig::default().validity, |v| v.0);
        let status = match self.status {
            Some((ocsp, crl)) => {
                let p = self.parts.clone();
                Some(
                    tokio::task::spawn_blocking(move || status_integration(&ocsp, &crl, &p))
                        .await
                        .context("starting the status listener")??,
                )
            }
            None => None,
        };
        let status_state = status.as_ref().and_then(|s| s.state.clone());
        match build_state(&self.parts, status_state) {
            Ok(state) => Ok(Assembled {
                state,
                tls_names: self.parts.tls_names,
                status,
                retention: self.retention.map(|r| (r, crl_validity)),
            }),
            Err(e) => {
                if let Some(s) = status {
                    close_status(s.state, s.maintenance).await;
                }
                Err(e)
            }
        }
    }
}

/// A server assembled by [`ServerBuilder::assemble`], not listening yet.
#[derive(Debug)]
pub struct Assembled {
    /// The state every route handler will share (CA, store, clock, authority, limits).
    pub state: Arc<AppState>,
    tls_names: Vec<String>,
    status: Option<StatusParts>,
    retention: Option<(crate::config::RetentionSection, chrono::Duration)>,
}

impl Assembled {
    /// Issue the server's certificate and start listening: the API on `api`, and the status
    /// routes (when assembled with them) and the liveness routes on `status`. A failed start
    /// stops the status listener's background work before it returns.
    pub async fn start(
        self,
        api: TcpListener,
        status: Option<TcpListener>,
    ) -> anyhow::Result<Running> {
        let (router, state, maintenance) = match self.status {
            Some(s) => (s.router, s.state, s.maintenance),
            None => (Router::new(), None, None),
        };
        let status = match status {
            Some(l) => StatusListener::Bind(l, router),
            None => StatusListener::None,
        };
        match start(self.state, self.tls_names, api, status).await {
            Ok(mut running) => {
                running.attach_status(state, maintenance);
                if let Some((section, crl_validity)) = &self.retention {
                    running.start_retention(section, *crl_validity);
                }
                Ok(running)
            }
            Err(e) => {
                close_status(state, maintenance).await;
                Err(e)
            }
        }
    }

    /// Give up before [`Self::start`]: stop the status listener's background work (its OCSP
    /// issuance signer thread must not outlive the server) and flush the store.
    pub async fn close(self) {
        if let Some(s) = self.status {
            close_status(s.state, s.maintenance).await;
        }
        let store = self.state.store.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.flush()).await {
            tracing::error!(error = %e, "flushing the store failed");
        }
    }
}
