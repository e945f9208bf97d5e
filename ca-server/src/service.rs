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
use ca_core::issuance::{pem, Ca, IssueContext, Issued};
use ca_core::profile::{ExtKeyUsage, KeyUsage, NamePolicy, Profile, Profiles, Span};
use ca_core::revocation::RevocationReason;
use ca_core::store::{CertRecord, IdentityBinding, Store, TokenRecord};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;

/// Internal profile of administrator certificates (role in a `urn:ca:role:` URI SAN).
pub const ADMIN_PROFILE: &str = "_admin";
/// Internal profile of the server's own TLS certificate.
pub const SERVER_TLS_PROFILE: &str = "_server-tls";

/// Add the server's internal profiles (`_admin`, `_server-tls`) to the configured ones.
pub fn with_internal_profiles(mut profiles: Profiles, admin: Span, tls: Span) -> Profiles {
    let mut admin_profile = Profile::client(NamePolicy {
        uri: vec![crate::auth::ROLE_URI_PREFIX.into()],
        common_name: true,
        max_sans: 3,
        ..NamePolicy::default()
    });
    admin_profile.validity = admin;
    let mut tls_profile = Profile::client(NamePolicy {
        dns: vec!["*".into()],
        ip: vec!["0.0.0.0/0".into(), "::/0".into()],
        common_name: true,
        max_sans: 20,
        ..NamePolicy::default()
    });
    tls_profile.validity = tls;
    tls_profile.extended_key_usage = vec![ExtKeyUsage::ServerAuth];
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

/// Readiness probe of the HSM signer.
pub type HealthCheck = Arc<dyn Fn() -> ca_core::Result<()> + Send + Sync>;

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
    /// Settings.
    pub settings: Settings,
    /// The root certificate (DER).
    pub root_der: Vec<u8>,
    /// Serialises revocations on an administrator's authority ([`crate::auth::check_revocation_allowed`]).
    pub revocations: crate::auth::RevocationLock,
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
            .map(|c| pem("CERTIFICATE", c))
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
                let issued = self
                    .ca
                    .prepare(
                        csr,
                        IssueContext::Renewal {
                            previous: &previous,
                        },
                    )?
                    .issue()?;
                Ok(Outcome {
                    issued,
                    token: None,
                })
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

    /// Revoke through the status hooks (store, then OCSP), on the blocking pool.
    pub async fn revoke(
        self: &Arc<Self>,
        serial: Vec<u8>,
        reason: RevocationReason,
        actor: String,
    ) -> ApiResult<CertRecord> {
        let me = self.clone();
        let at = self.clock.now();
        let rec = tokio::task::spawn_blocking(move || me.hooks.revoke(&serial, reason, at, &actor))
            .await
            .map_err(ApiError::internal)??;
        Ok(rec)
    }

    /// Revoke on an administrator's authority: [`crate::auth::check_revocation_allowed`] and
    /// the revocation under one [`crate::auth::RevocationLock`] guard, on the blocking pool.
    /// A refusal is audited (`revoke`, with its code) here; the revocation itself is audited
    /// by the status hooks.
    pub async fn revoke_as(
        self: &Arc<Self>,
        actor_roles: Vec<crate::auth::Role>,
        serial: Vec<u8>,
        reason: RevocationReason,
        actor: String,
    ) -> ApiResult<CertRecord> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let held = me.revocations.lock();
            // An unknown serial goes on to the hooks, which answer and audit `not_found`.
            if let Some(target) = me.store.get_cert(&serial)? {
                if let Err(e) =
                    crate::auth::check_revocation_allowed(&me, &held, &actor_roles, &target)
                {
                    me.audit_blocking(
                        NewAuditEvent::failed(
                            &actor,
                            "revoke",
                            target.serial_hex(),
                            e.code.as_str(),
                        )
                        .with_detail(serde_json::json!({
                            "reason": reason.name(),
                            "profile": target.profile,
                            "message": e.message,
                        })),
                    );
                    return Err(e);
                }
            }
            let at = me.clock.now();
            Ok(me.hooks.revoke(&serial, reason, at, &actor)?)
        })
        .await
        .map_err(ApiError::internal)?
    }

    /// Whether the HSM and the store answer.
    pub async fn ready(&self) -> Result<(), String> {
        let hsm = self.hsm_health.clone();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store.health().map_err(|e| format!("store: {e}"))?;
            hsm().map_err(|e| format!("hsm: {e}"))
        })
        .await
        .map_err(|e| e.to_string())?
    }
}
