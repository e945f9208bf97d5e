//! The state every route shares, and the async doors to the registration authority
//! ([`ca_core::authority::Authority`]): issuing (enrollment, renewal, the server's own and
//! administrators' certificates) and revoking go through it; who may revoke what
//! (segregation of duties, [`crate::auth::check_revocation_allowed`]) is checked here, before
//! the authority revokes.
//!
//! CA operations block (HSM signature, store flush), so they run on tokio's blocking pool.

use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use ca_core::audit::NewAuditEvent;
use ca_core::authority::{Authority, Observer, RenewalPolicy, RevocationRequest};
use ca_core::clock::Clock;
use ca_core::csr::CsrRequest;
use ca_core::issuance::Ca;
use ca_core::profile::{KeyUsage, NamePolicy, Profile, Profiles, Span};
use ca_core::revocation::RevocationReason;
use ca_core::signer::pkcs11::{HsmHealth, Token};
use ca_core::store::{CertRecord, Recovery, Store};
use ca_core::x509::pem_encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::time::Duration;

/// Internal profile of administrator certificates (role in a `urn:ca:role:` URI SAN).
pub const ADMIN_PROFILE: &str = "_admin";
/// Internal profile of the server's own TLS certificate.
pub const SERVER_TLS_PROFILE: &str = "_server-tls";

/// Add the server's internal profiles (`_admin`, `_server-tls`) to the configured ones.
pub fn with_internal_profiles(mut profiles: Profiles, admin: Span, tls: Span) -> Profiles {
    // The commonName of an administrator certificate is the administrator's name, bound by a
    // security officer's token.
    let mut admin_profile = Profile::client(NamePolicy {
        uri: vec![crate::auth::ROLE_URI_PREFIX.into()],
        common_name: true,
        max_sans: 3,
        common_name_patterns: vec!["*".into()],
        ..NamePolicy::default()
    });
    admin_profile.validity = admin;
    // A security officer re-issues administrator certificates; a stolen one cannot extend
    // itself.
    admin_profile.renewable = false;
    // serverAuth + the caServerIdentity mark; the only profile that may name the reserved names.
    let mut tls_profile = Profile::ca_server_tls(NamePolicy {
        dns: vec!["*".into()],
        ip: vec!["0.0.0.0/0".into(), "::/0".into()],
        common_name: true,
        max_sans: 20,
        ..NamePolicy::default()
    });
    tls_profile.validity = tls;
    // The server re-issues its own certificate on its own authority, never through /v1/renew.
    tls_profile.renewable = false;
    tls_profile.key_usage = vec![KeyUsage::DigitalSignature];
    profiles.0.insert(ADMIN_PROFILE.into(), admin_profile);
    profiles.0.insert(SERVER_TLS_PROFILE.into(), tls_profile);
    profiles
}

pub use ca_core::authority::{Outcome, Request, Revocation, SuccessAudit};

/// The authority's reports, counted in the server's metrics; error codes named as the API
/// names them.
#[derive(Debug)]
pub struct MetricsObserver(pub Arc<Metrics>);

impl Observer for MetricsObserver {
    fn renewal_superseded(&self) {
        self.0.renewal_superseded();
    }
    fn lineage_locked(&self, reason: &str) {
        self.0.lineage_locked(reason);
    }
    fn revoked_with_lineage(&self, reason: RevocationReason) {
        self.0.revoked(reason.name());
    }
    fn failure(&self, what: &'static str) {
        self.0.failure(what);
    }
    fn error_code(&self, e: &ca_core::Error) -> &'static str {
        ApiError::from_core_code(e)
    }
}

/// The server's authority: issuing through `ca`, counting in `metrics`, with the status
/// listener's OCSP responder and CRL publisher when it runs (`status`), and the renewal policy
/// of `settings`.
pub fn build_authority(
    ca: Arc<Ca>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    settings: &Settings,
    status: Option<&crate::status::StatusState>,
) -> Authority {
    let authority = Authority::new(ca, store, clock)
        .with_observer(Arc::new(MetricsObserver(metrics)))
        .with_renewal_policy(RenewalPolicy {
            lock_on_superseded: settings.lock_on_superseded,
        });
    match status {
        Some(st) => authority
            .with_responder(st.responder().clone())
            .with_crl_publisher(st.crls().clone(), Some(st.crl_wake())),
        None => authority,
    }
}

/// Readiness probe of the HSM signer: no signature, a bounded wait for a session
/// ([`ca_core::signer::pkcs11::Pkcs11Signer::health_check`]).
pub type HealthCheck = Arc<dyn Fn() -> ca_core::Result<HsmHealth> + Send + Sync>;

/// How long a readiness result is reused: `/readyz` checks the HSM and the store at most once
/// per this period, however many probes arrive.
pub const READINESS_TTL: Duration = Duration::from_secs(2);
/// Longest wait for an idle HSM session in a readiness check (a probe never queues behind
/// issuance for longer).
pub const READINESS_SESSION_WAIT: Duration = Duration::from_millis(250);
/// Longest a readiness check may take (the store's write probe, the HSM session): past it the
/// verdict is "not ready" (a store that does not answer in time cannot take writes either).
pub const READINESS_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the store is asked whether it needs the process restarted
/// ([`store_restart_required`]).
pub const STORE_FAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// The exit status of a server that stopped because its store needs a restart to write again
/// (EX_TEMPFAIL of sysexits.h): a supervisor restarts it (systemd `Restart=on-failure`).
pub const EXIT_STORE_RESTART: u8 = 75;

/// The store cannot write again in this process, and the fault that stopped it looks gone:
/// the server stops (gracefully) and exits with [`EXIT_STORE_RESTART`], so that its
/// supervisor starts it again on a freshly opened store (README "Store faults").
#[derive(Debug, thiserror::Error)]
#[error(
    "the store had an I/O error ({cause}) and refuses every write until it is opened again; \
     the fault is gone now: exiting with status 75 so that the supervisor restarts the server \
     (README \"Store faults\")"
)]
pub struct RestartRequired {
    /// The store's fault.
    pub cause: String,
}

/// Resolves once the store says it needs the process restarted and the fault looks gone
/// ([`ca_core::store::Durability::recovery`]); never while it writes, or while the fault
/// lasts (a restart then would fail the same way). Checks every
/// [`STORE_FAULT_CHECK_INTERVAL`], after the cached readiness check (whose write probe
/// notices a fault even when no request writes).
pub async fn store_restart_required(state: Arc<AppState>) -> RestartRequired {
    let mut warned = false;
    loop {
        tokio::time::sleep(STORE_FAULT_CHECK_INTERVAL).await;
        let _ = state.ready().await;
        let store = state.store.clone();
        match tokio::task::spawn_blocking(move || store.recovery()).await {
            Ok(Recovery::Restart {
                cause,
                cause_gone: true,
            }) => {
                tracing::error!(%cause, "store fault gone; restarting the server to reopen the store");
                return RestartRequired { cause };
            }
            Ok(Recovery::Restart { cause, .. }) if !warned => {
                warned = true;
                tracing::error!(
                    %cause,
                    "the store refuses writes until the server restarts; waiting for the fault \
                     (a full disk?) to be gone, then exiting with status 75 for the supervisor \
                     to restart it"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "store recovery check task failed"),
        }
    }
}

/// The cached readiness of the API listener (`/readyz`), checked with single flight: one check
/// at a time, every probe meanwhile waits for it and shares its result.
#[derive(Debug)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
    ready: Gauge,
    failures: Counter,
}

impl Readiness {
    /// Register `ca_hsm_ready` (gauge) and `ca_hsm_readiness_failures` (counter), and
    /// `ca_hsm_login_blocked` for `token` when given.
    pub fn new(metrics: &Metrics, token: Option<Token>) -> Self {
        let ready = Gauge::default();
        let failures = Counter::default();
        metrics.register(
            "ca_hsm_ready",
            "1 if the last readiness check found the HSM session logged in and the issuing key present, else 0",
            ready.clone(),
        );
        metrics.register(
            "ca_hsm_readiness_failures",
            "Readiness checks that failed (HSM or store); details in the log",
            failures.clone(),
        );
        if let Some(token) = token {
            metrics.register(
                "ca_hsm_login_blocked",
                "1 while HSM logins are held back after a failure (backoff, or a PIN the token refused), else 0",
                LoginBlocked(token),
            );
        }
        Readiness {
            last: tokio::sync::Mutex::new(None),
            ready,
            failures,
        }
    }
}

/// `ca_hsm_login_blocked`, read from the token at each scrape.
#[derive(Debug)]
struct LoginBlocked(Token);

impl prometheus_client::encoding::EncodeMetric for LoginBlocked {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&i64::from(self.0.login_blocked()))
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}

/// Settings routes need.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Token lifetime when none is asked for.
    pub token_default_ttl: chrono::Duration,
    /// Longest token lifetime.
    pub token_max_ttl: chrono::Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Per-request time limit.
    pub request_timeout: Duration,
    /// TLS handshake time limit.
    pub handshake_timeout: Duration,
    /// Lock a lineage when a superseded generation tries to renew (`[renewal]`).
    pub lock_on_superseded: bool,
    /// Connection limits of the API listener ([`crate::listener`]).
    pub api_connections: crate::listener::ConnLimits,
    /// Connection limits of the status listener.
    pub status_connections: crate::listener::ConnLimits,
    /// How often unauthenticated failures are summarised in the audit log.
    pub unauthenticated_summary_interval: Duration,
}

/// The state every API route handler shares: the CA, its store and clock, the authority,
/// limits and settings.
pub struct AppState {
    /// The issuing CA.
    pub ca: Arc<Ca>,
    /// The store (same as the CA's).
    pub store: Arc<dyn Store>,
    /// The clock (same as the CA's).
    pub clock: Arc<dyn Clock>,
    /// Prometheus counters and gauges served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Rate limiters.
    pub limits: RateLimits,
    /// The registration authority: issuance requests, renewals, revocations.
    pub authority: Arc<Authority>,
    /// HSM readiness probe.
    pub hsm_health: HealthCheck,
    /// Cached readiness (`/readyz`).
    pub readiness: Readiness,
    /// Token lifetimes and request limits the routes apply.
    pub settings: Settings,
    /// The root certificate (DER).
    pub root_der: Vec<u8>,
    /// Serialises revocations on an administrator's authority ([`crate::auth::check_revocation_allowed`]).
    pub revocations: crate::auth::RevocationLock,
    /// Signs audit checkpoints (`[audit] key`); `None` when no audit key is configured.
    pub checkpointer: Option<Arc<crate::audit_log::Checkpointer>>,
    /// Unauthenticated failures counted since their last audit summary ([`crate::unauth`]).
    pub unauthenticated: crate::unauth::UnauthFailures,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

/// Who revokes: the administrator, their roles, and the held revocation lock.
struct Revoker<'a> {
    held: &'a crate::auth::RevocationGuard<'a>,
    roles: &'a [crate::auth::Role],
    actor: &'a str,
}

/// SHA-256 of a token secret (hex): tokens are stored by hash only.
pub fn token_hash(secret: &str) -> String {
    ca_core::signer::sha256_hex(secret.as_bytes())
}

impl AppState {
    /// The chain served to clients: issuing CA then root (PEM).
    pub fn chain_pem(&self) -> String {
        self.ca
            .full_chain()
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect()
    }

    /// SHA-256 fingerprint of the root (hex).
    pub fn root_fingerprint(&self) -> String {
        ca_core::signer::sha256_hex(&self.root_der)
    }

    /// Append an audit event; a failure is logged (and counted), never hidden.
    pub async fn audit(&self, ev: NewAuditEvent) {
        let store = self.store.clone();
        let r = tokio::task::spawn_blocking(move || store.append_audit(ev)).await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "audit append failed");
                self.metrics.failure("audit_append");
            }
            Err(e) => {
                tracing::error!(error = %e, "audit task failed");
                self.metrics.failure("audit_append");
            }
        }
    }

    /// Check, sign, verify and store a certificate; runs on the blocking pool
    /// ([`Authority::issue`]).
    ///
    /// An enrollment token is looked up first and consumed only after the request passed
    /// every policy check, so a refused request leaves the token usable; consumption is
    /// atomic, so of concurrent uses exactly one proceeds to signing.
    pub async fn issue(self: &Arc<Self>, csr: CsrRequest, req: Request) -> ApiResult<Outcome> {
        self.issue_unit(csr, req, None).await
    }

    /// [`AppState::issue`], and on success the audit event `audit` builds from the outcome,
    /// appended in the same unit of work (failures are the caller's to audit).
    pub async fn issue_audited(
        self: &Arc<Self>,
        csr: CsrRequest,
        req: Request,
        audit: impl FnOnce(&Outcome) -> NewAuditEvent + Send + 'static,
    ) -> ApiResult<Outcome> {
        self.issue_unit(csr, req, Some(Box::new(audit))).await
    }

    /// One issuance as one unit of work on the blocking pool ([`Authority::issue`]: one
    /// group-committed flush, the outcome returned only once durable).
    async fn issue_unit(
        self: &Arc<Self>,
        csr: CsrRequest,
        req: Request,
        audit: Option<SuccessAudit>,
    ) -> ApiResult<Outcome> {
        let authority = self.authority.clone();
        tokio::task::spawn_blocking(move || authority.issue(&csr, req, audit))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::from)
    }

    /// Revoke on an administrator's authority, on the blocking pool: under one
    /// [`crate::auth::RevocationLock`] guard, [`Authority::revoke`] revokes (store, OCSP,
    /// CRL, audit; the lineage cascade on keyCompromise or `whole_lineage`), asking the
    /// segregation-of-duties check ([`crate::auth::check_revocation_allowed`]) before each
    /// certificate it revokes; refusals are audited here.
    pub async fn revoke(
        self: &Arc<Self>,
        actor_roles: Vec<crate::auth::Role>,
        serial: Vec<u8>,
        reason: RevocationReason,
        actor: String,
        whole_lineage: bool,
    ) -> ApiResult<Revocation> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let held = me.revocations.lock(me.store.as_ref())?;
            let who = Revoker {
                held: &held,
                roles: &actor_roles,
                actor: &actor,
            };
            let req = RevocationRequest {
                serial,
                reason,
                actor: actor.clone(),
                whole_lineage,
            };
            me.authority
                .revoke(&req, &mut |target| me.may_revoke(&who, target, reason))
        })
        .await
        .map_err(ApiError::internal)?
    }

    /// Segregation of duties for one certificate; a refusal is audited (`revoke`, its code).
    fn may_revoke(
        &self,
        who: &Revoker<'_>,
        target: &CertRecord,
        reason: RevocationReason,
    ) -> ApiResult<()> {
        crate::auth::check_revocation_allowed(self, who.held, who.roles, target).inspect_err(|e| {
            self.authority.audit(
                NewAuditEvent::failed(who.actor, "revoke", target.serial_hex(), e.code.as_str())
                    .with_detail(serde_json::json!({
                        "reason": reason.name(),
                        "profile": target.profile,
                        "message": e.message,
                    })),
            );
        })
    }

    /// Whether the store can write and the HSM answers: the cached result if it is younger
    /// than [`READINESS_TTL`], else one check (single flight): the store's write probe
    /// ([`ca_core::store::Durability::check_writable`]: a heartbeat written durably), then
    /// the HSM without a signature by the issuing key and with a bounded wait for a session;
    /// the whole check within [`READINESS_CHECK_TIMEOUT`]. Details of a failure go to the
    /// log and to `/metrics`, never to the (anonymous) caller.
    pub async fn ready(&self) -> bool {
        let mut last = self.readiness.last.lock().await;
        if let Some((at, ok)) = *last {
            if at.elapsed() < READINESS_TTL {
                return ok;
            }
        }
        let hsm = self.hsm_health.clone();
        let store = self.store.clone();
        let checked = tokio::time::timeout(
            READINESS_CHECK_TIMEOUT,
            tokio::task::spawn_blocking(move || {
                store.check_writable().map_err(|e| format!("store: {e}"))?;
                hsm().map_err(|e| format!("hsm: {e}"))
            }),
        )
        .await;
        let ok = match checked {
            Err(_) => {
                tracing::warn!(
                    timeout = ?READINESS_CHECK_TIMEOUT,
                    "readiness check timed out (store write probe or HSM)"
                );
                false
            }
            Ok(checked) => Self::verdict(checked, *last),
        };
        self.readiness.ready.set(i64::from(ok));
        if !ok {
            self.readiness.failures.inc();
        }
        *last = Some((std::time::Instant::now(), ok));
        ok
    }

    fn verdict(
        checked: Result<Result<HsmHealth, String>, tokio::task::JoinError>,
        last: Option<(std::time::Instant, bool)>,
    ) -> bool {
        match checked {
            Ok(Ok(HsmHealth::Ready)) => true,
            // Every session busy signing: the HSM works; keep the previous verdict.
            Ok(Ok(HsmHealth::Busy)) => {
                tracing::debug!("readiness: every HSM session busy; previous result kept");
                last.is_none_or(|(_, ok)| ok)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness check failed");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "readiness check task failed");
                false
            }
        }
    }
}
