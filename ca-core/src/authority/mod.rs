//! The registration authority (Boulder's RA role): it decides, the [`Ca`] signs, the store
//! keeps.
//!
//! The [`Authority`] owns the workflows that span several components:
//!
//! - token redemption ([`tokens`]): the token-usable rule checked before any HSM work
//!   ([`TokenRecord::check_usable`], the one the store applies again), consumption after every policy
//!   check, release when the issuance failed before anything was stored;
//! - renewal policy ([`renewal`]): the lineage rules (only the newest generation renews; a
//!   superseded generation is refused with `generation_superseded` and its lineage locked; a
//!   retry with the successor's key is answered with the successor; a locked lineage renews
//!   no more);
//! - revocation ([`revoke`]): the store update, the OCSP re-signing before acknowledging
//!   (DESIGN invariant 2), CRL staleness, the lineage cascade on keyCompromise, lineage locks
//!   and their audit events.
//!
//! It has no network code: it is handed the store (narrowed to the traits it uses), an
//! optional OCSP [`Responder`], an optional [`CrlPublisher`], the audit log and a clock. The
//! server's HTTP handlers call it; who may revoke what (segregation of duties) is the
//! server's to check, through the callback [`Authority::revoke`] takes.

pub mod renewal;
pub mod revoke;
pub mod tokens;

pub use renewal::RenewalPolicy;
pub use revoke::{revoke, Revocation, RevocationRequest};

use crate::audit::NewAuditEvent;
use crate::clock::Clock;
use crate::crl::CrlPublisher;
use crate::csr::CsrRequest;
use crate::error::{Error, Result};
use crate::issuance::{Ca, IssueContext, Issued};
use crate::ocsp::Responder;
use crate::revocation::RevocationReason;
use crate::store::{
    AuditLog, CertRecord, CertStore, Durability, IdentityBinding, LineageLock, Store, TokenRecord,
    TokenStore,
};
use std::sync::Arc;

/// What the authority reports to its host's metrics, and how the host names error codes.
/// Every method has a default that does nothing, so a host without metrics passes
/// [`NoObserver`].
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// A superseded generation tried to renew (a cloned key?).
    fn renewal_superseded(&self) {}
    /// A lineage was newly locked, for `reason` (`key_compromise`, `lineage_revoked`,
    /// `superseded_renewal`).
    fn lineage_locked(&self, reason: &str) {
        let _ = reason;
    }
    /// A certificate was revoked together with its lineage (the certificate an administrator
    /// named is counted by the caller).
    fn revoked_with_lineage(&self, reason: RevocationReason) {
        let _ = reason;
    }
    /// An operation the caller is not told about failed (`audit_append`, `token_release`).
    fn failure(&self, what: &'static str) {
        let _ = what;
    }
    /// The stable code of an error, as the API names it (written into audit details).
    fn error_code(&self, e: &Error) -> &'static str {
        let _ = e;
        "internal"
    }
}

/// An [`Observer`] that reports nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}

/// The CRL publisher, and how to tell its host that the CRL went stale (the host rebuilds it
/// soon instead of at its next periodic pass).
#[derive(Clone)]
struct CrlOutlet {
    publisher: Arc<CrlPublisher>,
    wake: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// Why a certificate is issued.
#[derive(Clone, Debug)]
pub enum Request {
    /// Enrollment with the token whose SHA-256 is this hash.
    Enrollment {
        /// SHA-256 (hex) of the presented token.
        token_hash: String,
    },
    /// Renewal of this certificate (authenticated by it).
    Renewal(CertRecord),
    /// The server's or an administrator's own authority.
    Admin {
        /// Name of the profile to issue under.
        profile: String,
        /// Administrator (certificate subject) or `ca-server` itself; recorded as the requester.
        actor: String,
        /// Names imposed.
        binding: IdentityBinding,
    },
}

/// A successful issuance and the token it used, if any.
#[derive(Debug)]
pub struct Outcome {
    /// The certificate (for a renewal retried after a lost answer: the successor issued
    /// before, returned again).
    pub issued: Issued,
    /// The token record (enrollment).
    pub token: Option<TokenRecord>,
}

/// The audit event of a successful issuance, built from its outcome.
pub type SuccessAudit = Box<dyn FnOnce(&Outcome) -> NewAuditEvent + Send>;

/// The registration authority: issuance requests, renewals and revocations go through it.
pub struct Authority {
    ca: Arc<Ca>,
    certs: Arc<dyn CertStore>,
    tokens: Arc<dyn TokenStore>,
    audit: Arc<dyn AuditLog>,
    durability: Arc<dyn Durability>,
    clock: Arc<dyn Clock>,
    responder: Option<Arc<Responder>>,
    crl: Option<CrlOutlet>,
    observer: Arc<dyn Observer>,
    policy: RenewalPolicy,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("responder", &self.responder.is_some())
            .field("crl", &self.crl.is_some())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// An authority issuing through `ca`, keeping state in `store` (the CA's store), with no
    /// OCSP responder, no CRL publisher, no observer and the default renewal policy.
    pub fn new(ca: Arc<Ca>, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Authority {
            ca,
            certs: store.clone().into_certs(),
            tokens: store.clone().into_tokens(),
            audit: store.clone().into_audit_log(),
            durability: store.into_durability(),
            clock,
            responder: None,
            crl: None,
            observer: Arc::new(NoObserver),
            policy: RenewalPolicy::default(),
        }
    }

    /// Re-sign OCSP responses with `responder` before a revocation is acknowledged, and queue
    /// each issued certificate's first response.
    pub fn with_responder(mut self, responder: Arc<Responder>) -> Self {
        self.responder = Some(responder);
        self
    }

    /// Mark `publisher`'s CRL stale after each revocation, and call `wake` (if any) so its host
    /// rebuilds it right away.
    pub fn with_crl_publisher(
        mut self,
        publisher: Arc<CrlPublisher>,
        wake: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> Self {
        self.crl = Some(CrlOutlet { publisher, wake });
        self
    }

    /// Report to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Use this renewal policy.
    pub fn with_renewal_policy(mut self, policy: RenewalPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The issuing CA.
    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// The OCSP responder, if one is attached.
    pub fn responder(&self) -> Option<&Arc<Responder>> {
        self.responder.as_ref()
    }

    /// Check, sign, verify and store a certificate (blocking: HSM and store), as one unit of
    /// work: token check and consumption, renewal policy, signing, verification and storage,
    /// the first OCSP response queued, and on success the audit event `audit` builds from the
    /// outcome (failures are the caller's to audit). Their store writes share **one**
    /// group-committed flush at the end ([`crate::store::deferred`]), and the outcome is
    /// returned only after that flush: nothing is acknowledged before it is durable (DESIGN
    /// invariant 2).
    ///
    /// An enrollment token is looked up first and consumed only after the request passed
    /// every policy check, so a refused request leaves the token usable; consumption is
    /// atomic, so of concurrent uses exactly one proceeds to signing.
    pub fn issue(
        &self,
        csr: &CsrRequest,
        req: Request,
        audit: Option<SuccessAudit>,
    ) -> Result<Outcome> {
        crate::store::deferred(self.durability.as_ref(), || {
            let outcome = match req {
                Request::Enrollment { token_hash } => self.enroll(csr, &token_hash)?,
                Request::Renewal(previous) => self.renew(csr, &previous)?,
                Request::Admin {
                    profile,
                    actor,
                    binding,
                } => Outcome {
                    issued: self
                        .ca
                        .prepare(
                            csr,
                            IssueContext::Admin {
                                profile: &profile,
                                actor: &actor,
                                binding: Some(&binding),
                            },
                        )?
                        .issue()?,
                    token: None,
                },
            };
            if let Some(responder) = &self.responder {
                // Signed by the responder's issuance signer together with the others queued
                // within a few milliseconds; an OCSP request arriving before waits for it.
                let _queued = responder.enqueue_issued(&outcome.issued.record);
            }
            if let Some(audit) = audit {
                self.audit(audit(&outcome));
            }
            Ok(outcome)
        })
    }

    /// Append an audit event on the calling thread; a failure is logged and reported to the
    /// observer (`audit_append`), never hidden and never the caller's error.
    pub fn audit(&self, ev: NewAuditEvent) {
        if let Err(e) = self.audit.append_audit(ev) {
            tracing::error!(error = %e, "audit append failed");
            self.observer.failure("audit_append");
        }
    }

    /// Lock `rec`'s lineage (audited `lineage.lock` and reported once, when it is newly
    /// locked; a locked lineage keeps its first lock). Once this returns no renewal of the
    /// lineage can be stored ([`CertStore::lock_lineage`]).
    pub fn lock_lineage(&self, rec: &CertRecord, reason: &str, actor: &str) -> Result<()> {
        let lock = LineageLock {
            at: self.clock.now(),
            reason: reason.into(),
            serial: rec.serial_hex(),
            actor: actor.into(),
        };
        let kept = self.certs.lock_lineage(&rec.lineage, &lock)?;
        if kept == lock {
            self.observer.lineage_locked(reason);
            tracing::warn!(lineage = %rec.lineage_hex(), %reason, "lineage locked");
            self.audit(
                NewAuditEvent::ok(actor, "lineage.lock", rec.lineage_hex()).with_detail(
                    serde_json::json!({ "reason": reason, "serial": rec.serial_hex() }),
                ),
            );
        }
        Ok(())
    }
}
