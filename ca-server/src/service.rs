//! The state every route shares, and the operations that change it: issuing (enrollment,
//! renewal, the server's own and administrators' certificates), revoking, auditing.
//!
//! CA operations block (HSM signature, store flush), so they run on tokio's blocking pool.

use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use ca_core::audit::NewAuditEvent;
use ca_core::clock::Clock;
use ca_core::csr::CsrRequest;
use ca_core::issuance::{Ca, IssueContext, Issued};
use ca_core::profile::{KeyUsage, NamePolicy, Profile, Profiles, Span};
use ca_core::revocation::RevocationReason;
use ca_core::signer::pkcs11::{HsmHealth, Token};
use ca_core::store::{CertRecord, IdentityBinding, LineageLock, Store, TokenRecord};
use ca_core::x509::pem_encode;
use chrono::{DateTime, Utc};
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

/// What the status listener (OCSP, CRL) needs to hear about, and how a revocation is made.
///
/// [`StoreOnly`] records revocations in the store; [`ResponderHooks`] also re-signs the OCSP
/// response before the revocation is acknowledged (DESIGN invariant 2). Either way `revoke`
/// appends the `revoke` audit event (success or failure) itself.
pub trait StatusHooks: Send + Sync + std::fmt::Debug {
    /// A certificate was issued and stored (its flush may be pending): queue its first OCSP
    /// response, which the responder's issuance signer signs with the others queued in the
    /// same few milliseconds ([`ca_core::ocsp::Responder::start_issuance_signer`]).
    fn on_issued(&self, record: &CertRecord);
    /// Revoke durably, publish, audit; return the updated record.
    fn revoke(
        &self,
        serial: &[u8],
        reason: RevocationReason,
        at: DateTime<Utc>,
        actor: &str,
    ) -> ca_core::Result<CertRecord>;
}

/// Revocation in the store only (no OCSP responder attached).
#[derive(Debug)]
pub struct StoreOnly(pub Arc<dyn Store>);

impl StatusHooks for StoreOnly {
    fn on_issued(&self, _record: &CertRecord) {}
    fn revoke(
        &self,
        serial: &[u8],
        reason: RevocationReason,
        at: DateTime<Utc>,
        actor: &str,
    ) -> ca_core::Result<CertRecord> {
        let object = hex::encode(serial);
        match self.0.revoke(serial, ca_core::clock::truncate(at), reason) {
            Ok(rec) => {
                self.0.append_audit(
                    NewAuditEvent::ok(actor, "revoke", &object)
                        .with_detail(serde_json::json!({ "reason": reason.name() })),
                )?;
                Ok(rec)
            }
            Err(e) => {
                let code = crate::error::ApiError::from_core_code(&e);
                let _ = self.0.append_audit(
                    NewAuditEvent::failed(actor, "revoke", &object, code)
                        .with_detail(serde_json::json!({ "reason": reason.name() })),
                );
                Err(e)
            }
        }
    }
}

/// Hooks backed by the pre-signed OCSP responder: sign at issuance, re-sign at revocation
/// before acknowledging ([`ca_core::revocation::revoke`]).
#[derive(Debug)]
pub struct ResponderHooks {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The responder.
    pub responder: Arc<ca_core::ocsp::Responder>,
}

impl StatusHooks for ResponderHooks {
    fn on_issued(&self, record: &CertRecord) {
        let _queued = self.responder.enqueue_issued(record);
    }
    fn revoke(
        &self,
        serial: &[u8],
        reason: RevocationReason,
        at: DateTime<Utc>,
        actor: &str,
    ) -> ca_core::Result<CertRecord> {
        ca_core::revocation::revoke(
            self.store.as_ref(),
            &self.responder,
            serial,
            reason,
            at,
            actor,
        )
    }
}

/// The audit event of a successful issuance, built from its outcome.
pub type SuccessAudit = Box<dyn FnOnce(&Outcome) -> NewAuditEvent + Send>;

/// Readiness probe of the HSM signer: no signature, a bounded wait for a session
/// ([`ca_core::signer::pkcs11::Pkcs11Signer::health_check`]).
pub type HealthCheck = Arc<dyn Fn() -> ca_core::Result<HsmHealth> + Send + Sync>;

/// How long a readiness result is reused: `/readyz` checks the HSM and the store at most once
/// per this period, however many probes arrive.
pub const READINESS_TTL: Duration = Duration::from_secs(2);
/// Longest wait for an idle HSM session in a readiness check (a probe never queues behind
/// issuance for longer).
pub const READINESS_SESSION_WAIT: Duration = Duration::from_millis(250);

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

/// The shared state.
pub struct AppState {
    /// The issuing CA.
    pub ca: Arc<Ca>,
    /// The store (same as the CA's).
    pub store: Arc<dyn Store>,
    /// The clock (same as the CA's).
    pub clock: Arc<dyn Clock>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Rate limiters.
    pub limits: RateLimits,
    /// Status listener hooks.
    pub hooks: Arc<dyn StatusHooks>,
    /// HSM readiness probe.
    pub hsm_health: HealthCheck,
    /// Cached readiness (`/readyz`).
    pub readiness: Readiness,
    /// Settings.
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

/// Why a certificate is issued, owned so it can move to the blocking pool.
#[derive(Clone, Debug)]
pub enum Request {
    /// Enrollment with the token whose SHA-256 is this hash.
    Enrollment {
        /// SHA-256 (hex) of the presented token.
        token_hash: String,
    },
    /// Renewal of this certificate.
    Renewal(CertRecord),
    /// The server's or an administrator's own authority.
    Admin {
        /// Profile.
        profile: String,
        /// Who.
        actor: String,
        /// Names imposed.
        binding: IdentityBinding,
    },
}

/// A successful issuance and the token it used, if any.
#[derive(Debug)]
pub struct Outcome {
    /// The certificate.
    pub issued: Issued,
    /// The token record (enrollment).
    pub token: Option<TokenRecord>,
}

/// What a revocation did: the certificate asked for, and the other generations of its lineage
/// it revoked with it (keyCompromise, or a whole-lineage revocation).
#[derive(Debug)]
pub struct Revocation {
    /// The certificate asked for, as revoked.
    pub record: CertRecord,
    /// Serials (hex) of the lineage's other certificates revoked with it.
    pub also_revoked: Vec<String>,
    /// Whether the lineage is now locked (no renewal, no re-enrollment).
    pub lineage_locked: bool,
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

    /// [`AppState::audit`] on the calling (blocking) thread.
    fn audit_blocking(&self, ev: NewAuditEvent) {
        if let Err(e) = self.store.append_audit(ev) {
            tracing::error!(error = %e, "audit append failed");
            self.metrics.failure("audit_append");
        }
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

    /// Check, sign, verify and store a certificate; runs on the blocking pool.
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

    /// One issuance as one unit of work on the blocking pool: token check and consumption,
    /// signing, verification and storage of the certificate, the audit event. Their store
    /// writes share **one** group-committed flush at the end ([`ca_core::store::deferred`])
    /// instead of one each, and the outcome is returned only after that flush: nothing is
    /// acknowledged before it is durable (DESIGN invariant 2).
    ///
    /// The certificate's first OCSP response is queued (status hooks) and signed by the
    /// responder's issuance signer together with the others queued within a few
    /// milliseconds; an OCSP request that arrives before that waits for it.
    async fn issue_unit(
        self: &Arc<Self>,
        csr: CsrRequest,
        req: Request,
        audit: Option<SuccessAudit>,
    ) -> ApiResult<Outcome> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            ca_core::store::deferred(me.store.as_ref(), || {
                let outcome = me.issue_blocking(&csr, req)?;
                me.hooks.on_issued(&outcome.issued.record);
                if let Some(audit) = audit {
                    me.audit_blocking(audit(&outcome));
                }
                Ok::<_, ApiError>(outcome)
            })
        })
        .await
        .map_err(ApiError::internal)?
    }

    fn issue_blocking(&self, csr: &CsrRequest, req: Request) -> ApiResult<Outcome> {
        match req {
            Request::Enrollment { token_hash } => {
                let now = self.clock.now();
                let token = self.find_token(&token_hash)?;
                if token.used_at.is_some() {
                    return Err(ca_core::Error::TokenRejected("token already used").into());
                }
                if now >= token.expires_at {
                    return Err(ca_core::Error::TokenRejected("token expired").into());
                }
                let prepared = self
                    .ca
                    .prepare(csr, IssueContext::Enrollment { token: &token })?;
                let token = self.store.consume_token(&token_hash, now)?;
                match prepared.issue() {
                    Ok(issued) => Ok(Outcome {
                        issued,
                        token: Some(token),
                    }),
                    Err(e) => {
                        // `issue` returns an error only before the certificate record is
                        // inserted (the insert is its last step, and inside this unit of work
                        // the insert does not flush), so no certificate exists for this token:
                        // give the token back so it works once the fault (HSM down, store
                        // error) is gone. The release is a compare-and-swap on the `used_at`
                        // this call wrote, so concurrent uses still yield one certificate. A
                        // failure of the unit's final flush is not undone here: the
                        // certificate may then be durable, and the token stays used.
                        self.release_token(&token, &e);
                        Err(e.into())
                    }
                }
            }
            Request::Renewal(previous) => {
                // Before any HSM work: a locked lineage, or a generation that renewed already.
                if let Some(lock) = self.store.lineage_lock(&previous.lineage)? {
                    return Err(ca_core::Error::LineageLocked {
                        lineage: previous.lineage_hex(),
                        reason: lock.reason,
                    }
                    .into());
                }
                let newest = self.store.lineage_newest(&previous.lineage)?;
                if newest.is_some_and(|n| n.serial != previous.serial) {
                    return self.superseded_renewal(csr, &previous);
                }
                let prepared = self.ca.prepare(
                    csr,
                    IssueContext::Renewal {
                        previous: &previous,
                    },
                )?;
                match prepared.issue() {
                    Ok(issued) => Ok(Outcome {
                        issued,
                        token: None,
                    }),
                    // Another renewal of the same generation was stored first (the store
                    // checks again, atomically with the insert).
                    Err(ca_core::Error::GenerationSuperseded { .. }) => {
                        self.superseded_renewal(csr, &previous)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Request::Admin {
                profile,
                actor,
                binding,
            } => {
                let issued = self
                    .ca
                    .prepare(
                        csr,
                        IssueContext::Admin {
                            profile: &profile,
                            actor: &actor,
                            binding: Some(&binding),
                        },
                    )?
                    .issue()?;
                Ok(Outcome {
                    issued,
                    token: None,
                })
            }
        }
    }

    /// A renewal by `previous`, a generation that has already renewed.
    ///
    /// If the request proves possession of the key of `previous`'s own successor (the CSR
    /// carries that certificate's public key, and the CSR's signature is the proof) and the
    /// successor is still the newest generation, this is the same agent retrying a renewal
    /// whose answer it lost: the successor is returned again, nothing is signed. Anything else
    /// is two holders of one key renewing in turn (a cloned key): refused with
    /// `generation_superseded`, audited as such, counted, and with `[renewal]
    /// lock_on_superseded` (default) the lineage is locked.
    fn superseded_renewal(&self, csr: &CsrRequest, previous: &CertRecord) -> ApiResult<Outcome> {
        let lineage = self.store.lineage_certs(&previous.lineage)?;
        let newest = lineage.last().map_or(previous.generation, |c| c.generation);
        let successor = lineage.iter().find(|c| {
            c.generation == previous.generation.saturating_add(1)
                && c.requester == ca_core::store::Requester::Renewal(previous.serial_hex())
        });
        let csr_key = ca_core::signer::sha256_hex(csr.public_key.spki_der());
        if let Some(s) = successor {
            if s.generation == newest && !s.is_revoked() && s.spki_sha256 == csr_key {
                self.audit_blocking(
                    NewAuditEvent::ok(
                        crate::auth::cert_actor(previous),
                        "renew.replay",
                        s.serial_hex(),
                    )
                    .with_detail(serde_json::json!({
                        "previous": previous.serial_hex(),
                        "lineage": previous.lineage_hex(),
                        "generation": s.generation,
                    })),
                );
                return Ok(Outcome {
                    issued: Issued {
                        record: s.clone(),
                        chain: self.ca.full_chain(),
                    },
                    token: None,
                });
            }
        }
        self.metrics.renewal_superseded();
        tracing::warn!(
            serial = %previous.serial_hex(),
            lineage = %previous.lineage_hex(),
            generation = previous.generation,
            newest,
            "renewal by a superseded generation: a cloned key?"
        );
        let locked = if self.settings.lock_on_superseded {
            self.lock_lineage_blocking(previous, "superseded_renewal", "ca")?;
            true
        } else {
            false
        };
        self.audit_blocking(
            NewAuditEvent::failed(
                crate::auth::cert_actor(previous),
                "renew.superseded",
                previous.serial_hex(),
                "generation_superseded",
            )
            .with_detail(serde_json::json!({
                "lineage": previous.lineage_hex(),
                "generation": previous.generation,
                "newest": newest,
                "lineage_locked": locked,
                "signal": "a generation that already renewed tried to renew again: the key may be cloned",
            })),
        );
        Err(ca_core::Error::GenerationSuperseded {
            serial: previous.serial_hex(),
            lineage: previous.lineage_hex(),
            generation: previous.generation,
            newest,
        }
        .into())
    }

    /// Lock `rec`'s lineage (audited and counted once, when it is newly locked).
    fn lock_lineage_blocking(&self, rec: &CertRecord, reason: &str, actor: &str) -> ApiResult<()> {
        let lock = LineageLock {
            at: self.clock.now(),
            reason: reason.into(),
            serial: rec.serial_hex(),
            actor: actor.into(),
        };
        let kept = self.store.lock_lineage(&rec.lineage, &lock)?;
        if kept == lock {
            self.metrics.lineage_locked(reason);
            tracing::warn!(lineage = %rec.lineage_hex(), %reason, "lineage locked");
            self.audit_blocking(
                NewAuditEvent::ok(actor, "lineage.lock", rec.lineage_hex()).with_detail(
                    serde_json::json!({ "reason": reason, "serial": rec.serial_hex() }),
                ),
            );
        }
        Ok(())
    }

    /// Give back a token consumed for an issuance that failed before storing anything.
    fn release_token(&self, token: &TokenRecord, cause: &ca_core::Error) {
        let Some(used_at) = token.used_at else {
            return;
        };
        match self.store.release_token(&token.hash, used_at) {
            Ok(true) => {
                tracing::warn!(token_id = %token.id, error = %cause,
                    "issuance failed after the token was checked; the token stays usable");
                self.audit_blocking(
                    NewAuditEvent::ok("ca-server", "token.release", &token.id).with_detail(
                        serde_json::json!({ "cause": crate::error::ApiError::from_core_code(cause) }),
                    ),
                );
            }
            Ok(false) => {
                tracing::error!(token_id = %token.id, "token changed while its issuance failed; not released");
            }
            Err(e) => {
                tracing::error!(token_id = %token.id, error = %e, "could not release the token of a failed issuance");
                self.metrics.failure("token_release");
            }
        }
    }

    /// The token with this hash.
    fn find_token(&self, hash: &str) -> ApiResult<TokenRecord> {
        self.store
            .get_token(hash)?
            .ok_or_else(|| ca_core::Error::TokenRejected("unknown token").into())
    }

    /// Revoke on an administrator's authority, on the blocking pool: segregation of duties
    /// ([`crate::auth::check_revocation_allowed`], for every certificate revoked, refusals
    /// audited) and the revocations under one [`crate::auth::RevocationLock`] guard; each
    /// revocation goes through the status hooks (store, then OCSP, then audit).
    ///
    /// keyCompromise also locks the certificate's lineage and revokes every later generation
    /// (a thief who renewed with the stolen key loses the renewed certificates too). With
    /// `whole_lineage` (`revoke --lineage`), every certificate of the lineage is revoked for
    /// `reason` and the lineage locked, whatever the reason; if any of them may not be revoked
    /// by this actor, nothing is.
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
            let held = me.revocations.lock();
            let who = Revoker {
                held: &held,
                roles: &actor_roles,
                actor: &actor,
            };
            if whole_lineage {
                me.revoke_lineage_blocking(&who, &serial, reason)
            } else {
                me.revoke_blocking(&who, &serial, reason)
            }
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
            self.audit_blocking(
                NewAuditEvent::failed(who.actor, "revoke", target.serial_hex(), e.code.as_str())
                    .with_detail(serde_json::json!({
                        "reason": reason.name(),
                        "profile": target.profile,
                        "message": e.message,
                    })),
            );
        })
    }

    fn revoke_blocking(
        &self,
        who: &Revoker<'_>,
        serial: &[u8],
        reason: RevocationReason,
    ) -> ApiResult<Revocation> {
        // An unknown serial goes on to the hooks, which answer and audit `not_found`.
        if let Some(target) = self.store.get_cert(serial)? {
            self.may_revoke(who, &target, reason)?;
        }
        let record = self
            .hooks
            .revoke(serial, reason, self.clock.now(), who.actor)?;
        if reason != RevocationReason::KeyCompromise {
            return Ok(Revocation {
                record,
                also_revoked: Vec::new(),
                lineage_locked: false,
            });
        }
        // Lock first: once the lock is stored no renewal of the lineage can be, so the list
        // below is complete.
        self.lock_lineage_blocking(&record, "key_compromise", who.actor)?;
        let later: Vec<CertRecord> = self
            .store
            .lineage_certs(&record.lineage)?
            .into_iter()
            .filter(|c| c.generation > record.generation)
            .collect();
        let also_revoked = self.revoke_all(who, &record, later, reason)?;
        Ok(Revocation {
            record,
            also_revoked,
            lineage_locked: true,
        })
    }

    fn revoke_lineage_blocking(
        &self,
        who: &Revoker<'_>,
        serial: &[u8],
        reason: RevocationReason,
    ) -> ApiResult<Revocation> {
        ca_core::revocation::check_reason(reason)?;
        let named = self
            .store
            .get_cert(serial)?
            .ok_or_else(|| ca_core::Error::CertNotFound(hex::encode(serial)))?;
        let certs = self.store.lineage_certs(&named.lineage)?;
        // All or nothing: every certificate the actor would revoke must be theirs to revoke.
        for c in certs.iter().filter(|c| !c.is_revoked()) {
            self.may_revoke(who, c, reason)?;
        }
        self.lock_lineage_blocking(&named, "lineage_revoked", who.actor)?;
        let also_revoked = self.revoke_all(who, &named, certs, reason)?;
        self.audit_blocking(
            NewAuditEvent::ok(who.actor, "lineage.revoke", named.lineage_hex()).with_detail(
                serde_json::json!({
                    "serial": named.serial_hex(),
                    "reason": reason.name(),
                    "revoked": also_revoked,
                }),
            ),
        );
        let record = self.store.get_cert(serial)?.unwrap_or(named);
        Ok(Revocation {
            record,
            also_revoked: also_revoked
                .into_iter()
                .filter(|s| *s != hex::encode(serial))
                .collect(),
            lineage_locked: true,
        })
    }

    /// Revoke each of `certs` not revoked yet (each through the hooks, so each is published
    /// and audited); returns their serials. A failure (the HSM could not sign an OCSP answer:
    /// the revocation itself is stored) does not stop the others; the first is returned.
    fn revoke_all(
        &self,
        who: &Revoker<'_>,
        cause: &CertRecord,
        certs: Vec<CertRecord>,
        reason: RevocationReason,
    ) -> ApiResult<Vec<String>> {
        let mut revoked = Vec::new();
        let mut first_error: Option<ApiError> = None;
        for c in certs.into_iter().filter(|c| !c.is_revoked()) {
            if let Err(e) = self.may_revoke(who, &c, reason) {
                first_error.get_or_insert(e);
                continue;
            }
            match self
                .hooks
                .revoke(&c.serial, reason, self.clock.now(), who.actor)
            {
                Ok(_) => {
                    self.metrics.revoked(reason.name());
                    tracing::warn!(serial = %c.serial_hex(), lineage = %cause.lineage_hex(), %reason, "revoked with its lineage");
                    revoked.push(c.serial_hex());
                }
                Err(ca_core::Error::AlreadyRevoked { .. }) => {}
                Err(e) => {
                    tracing::error!(serial = %c.serial_hex(), error = %e, "revoking a lineage member failed");
                    first_error.get_or_insert(e.into());
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(revoked),
        }
    }

    /// Whether the HSM and the store answer: the cached result if it is younger than
    /// [`READINESS_TTL`], else one check (single flight) without a signature by the issuing
    /// key and with a bounded wait for an HSM session. Details of a failure go to the log and
    /// to `/metrics`, never to the (anonymous) caller.
    pub async fn ready(&self) -> bool {
        let mut last = self.readiness.last.lock().await;
        if let Some((at, ok)) = *last {
            if at.elapsed() < READINESS_TTL {
                return ok;
            }
        }
        let hsm = self.hsm_health.clone();
        let store = self.store.clone();
        let checked = tokio::task::spawn_blocking(move || {
            store.health().map_err(|e| format!("store: {e}"))?;
            hsm().map_err(|e| format!("hsm: {e}"))
        })
        .await;
        let ok = match checked {
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
        };
        self.readiness.ready.set(i64::from(ok));
        if !ok {
            self.readiness.failures.inc();
        }
        *last = Some((std::time::Instant::now(), ok));
        ok
    }
}
