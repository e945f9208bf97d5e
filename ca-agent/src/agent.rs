//! One renewal cycle for one certificate, and enrollment.
//!
//! A cycle re-reads the pair from disk, decides whether renewal is due, renews over mTLS with a
//! fresh key, verifies the answer, installs it atomically, reloads the service, proves the reload
//! with the probe (restoring the previous pair if it did not take), refreshes the OCSP staple,
//! and records everything in the state file.

use crate::ca::CaClient;
use crate::certs::{self, CertInfo, Identity};
use crate::config::{std_duration, CertConfig, Config};
use crate::error::{Error, Result};
use crate::install::{self, Material, OnDisk};
use crate::keys::PrivateKey;
use crate::state::{CertState, Condition, StapleState};
use crate::{backoff, ocsp, probe, reload};
use ca_api::types::IssuedResponse;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// What a cycle did.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing was due.
    NotDue,
    /// A new certificate was installed and (if configured) reloaded and proven.
    Renewed {
        /// New serial.
        serial: String,
    },
    /// The cycle failed; the error is in the state file too.
    Failed(Error),
}

/// A cycle's outcome and when the daemon should look at this certificate again.
#[derive(Debug)]
pub struct Report {
    /// What happened.
    pub outcome: Outcome,
    /// Next time anything is due for this certificate.
    pub next_wake: DateTime<Utc>,
}

/// The agent: configuration plus a client of the CA.
#[derive(Debug, Clone)]
pub struct Agent {
    cfg: Config,
    client: CaClient,
}

/// How `enroll` should treat the names of the new certificate.
#[derive(Clone, Debug, Default)]
pub struct EnrollRequest {
    /// Names to put in the CSR and to require in the answer; empty lets the token decide.
    pub identity: Identity,
    /// Key type.
    pub key_type: Option<ca_core::signer::KeyAlgorithm>,
}

/// A refusal of the CA that no retry can change: the agent stops renewing this certificate and
/// says what the operator must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What the certificate is, for the message: `revoked`, `expired` or `not renewable`.
    pub state: &'static str,
    /// The condition recorded (and shown by `ca-agent status`).
    pub condition: Condition,
}

/// Map the CA's error code for a refused renewal (docs/API.md) to a final refusal, or `None`
/// when a later retry may work.
///
/// - `cert_revoked`, `lineage_locked` (the lineage was revoked, e.g. for keyCompromise) and
///   `generation_superseded` (a newer certificate of the lineage exists: a copy of this key
///   renewed elsewhere) are all `revoked`: only a new enrollment helps.
/// - `cert_expired` is `expired`.
/// - `not_renewable` (administrator and CA server certificates never renew through the API)
///   is `not renewable`: a security officer re-issues them.
pub fn renewal_refusal(code: &str) -> Option<Refusal> {
    let (state, condition) = match code {
        "cert_revoked" | "lineage_locked" | "generation_superseded" => {
            ("revoked", Condition::Revoked)
        }
        "cert_expired" => ("expired", Condition::Expired),
        "not_renewable" => ("not renewable", Condition::NotRenewable),
        _ => return None,
    };
    Some(Refusal { state, condition })
}

/// The FIX line for a refusal with CA code `code`.
pub fn refusal_fix(c: &CertConfig, identity: &str, code: &str) -> String {
    match code {
        "lineage_locked" => format!(
            "the CA locked this certificate's lineage (a certificate of it was revoked for key \
             compromise, or the whole lineage was revoked): it will never renew again. {}",
            revoked_fix(c, identity)
        ),
        "generation_superseded" => format!(
            "a newer certificate of this lineage exists, so this key was renewed elsewhere (a copy \
             of it on another host?); the CA treats that as a cloned key. Find out who else holds \
             this key, then: {}",
            revoked_fix(c, identity)
        ),
        "not_renewable" => format!(
            "{identity} is an administrator or CA server certificate, which never renews through \
             /v1/renew: a security officer re-issues it (ca-server admin-cert create); remove it \
             from agent.toml"
        ),
        _ => revoked_fix(c, identity),
    }
}

fn revoked_fix(c: &CertConfig, identity: &str) -> String {
    format!(
        "an operator must create a new enrollment token for {identity} (ca-server token create, or \
         POST /v1/admin/tokens), then either run `ca-agent enroll --config <agent.toml> --name {} \
         --token-file <file> --force` or write the token to {}; the agent uses it on its next cycle",
        c.name,
        c.reenroll_token_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "a file named by reenroll_token_file in agent.toml".into())
    )
}

impl Agent {
    /// An agent for a validated config.
    pub fn new(cfg: Config) -> Result<Agent> {
        let client = CaClient::new(
            &cfg.server,
            &cfg.root_fingerprint,
            std_duration(cfg.request_timeout),
        )?;
        Ok(Agent { cfg, client })
    }

    /// The agent configuration this agent was built from (server URL, pinned root, certificates).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn state(&self, c: &CertConfig) -> CertState {
        CertState::load(&self.cfg.state_dir, &c.name).unwrap_or_else(|e| {
            tracing::warn!(cert = %c.name, error = %e, "state file unreadable; starting a fresh one");
            CertState {
                name: c.name.clone(),
                ..CertState::default()
            }
        })
    }

    fn save(&self, c: &CertConfig, st: &mut CertState) {
        if let Err(e) = st.save(&self.cfg.state_dir) {
            tracing::error!(cert = %c.name, error = %e, "cannot write the state file");
        }
    }

    /// Run one cycle for `c`. `force` renews even when not due (and ignores backoff).
    pub async fn cycle(&self, c: &CertConfig, force: bool) -> Report {
        let now = Utc::now();
        let check = now + self.cfg.check_interval.0;
        let _lock = match install::lock(c, Duration::from_secs(120)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(cert = %c.name, error = %e, "cannot lock the store");
                return Report {
                    outcome: Outcome::Failed(e),
                    next_wake: now + chrono::Duration::seconds(30),
                };
            }
        };
        let mut st = self.state(c);
        let outcome = self.cycle_locked(c, &mut st, force, now).await;
        if let Outcome::Failed(e) = &outcome {
            tracing::error!(cert = %c.name, condition = ?st.condition, fix = st.fix.as_deref().unwrap_or(""), "{e}");
        }
        self.save(c, &mut st);
        let mut next = check;
        for t in [
            st.next_renewal,
            st.retry_at,
            st.not_after,
            st.staple.as_ref().and_then(|s| s.refresh_at),
        ]
        .into_iter()
        .flatten()
        {
            if t < next {
                next = t;
            }
        }
        if let Some(retry) = st.retry_at {
            // During backoff, the renewal point (already passed) must not cause a busy loop.
            if next < retry && st.next_renewal.is_some_and(|r| r <= retry) {
                next = retry.min(check);
            }
        }
        let floor = Utc::now() + chrono::Duration::seconds(1);
        Report {
            outcome,
            next_wake: next.max(floor),
        }
    }

    async fn cycle_locked(
        &self,
        c: &CertConfig,
        st: &mut CertState,
        force: bool,
        now: DateTime<Utc>,
    ) -> Outcome {
        if let Err(e) = install::recover(c) {
            return self.fail(c, st, e, Condition::RenewalFailing, None);
        }
        // A restart after an install whose reload was not confirmed finishes the job.
        if let Some(pending) = st.pending_reload.clone() {
            match install::read_current(c) {
                Ok(Some(d)) if d.cert.serial == pending => {
                    tracing::warn!(cert = %c.name, serial = %pending, "finishing an interrupted reload");
                    if let Err(e) = self.activate(c, st, &d.cert.serial).await {
                        return self.fail(c, st, e, Condition::ReloadFailed, None);
                    }
                }
                _ => st.pending_reload = None,
            }
        }
        let disk = match install::read_current(c) {
            Ok(Some(d)) => d,
            Ok(None) => {
                if let Some(out) = self
                    .try_token(c, st, "no certificate on disk", Condition::Missing)
                    .await
                {
                    return out;
                }
                let e = Error::Io {
                    op: "read",
                    path: c.cert.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no key/certificate pair at the configured paths",
                    ),
                };
                let fix = format!(
                    "run `ca-agent enroll --config <agent.toml> --name {} --token-file <file>` \
                     with an enrollment token",
                    c.name
                );
                return self.fail(c, st, e, Condition::Missing, Some(fix));
            }
            Err(e @ Error::KeyMismatch { .. }) => {
                if let Some(out) = self
                    .try_token(
                        c,
                        st,
                        "key and certificate do not match",
                        Condition::KeyMismatch,
                    )
                    .await
                {
                    return out;
                }
                let fix = format!(
                    "put a matching pair back (the .prev files hold the previous one), or re-enroll \
                     `ca-agent enroll --config <agent.toml> --name {} --force`",
                    c.name
                );
                return self.fail(c, st, e, Condition::KeyMismatch, Some(fix));
            }
            Err(e) => return self.fail(c, st, e, Condition::RenewalFailing, None),
        };
        self.note_disk(c, st, &disk);
        let identity = disk.cert.identity.to_string();

        if disk.cert.not_after <= now {
            if let Some(out) = self
                .try_token(c, st, "certificate expired", Condition::Expired)
                .await
            {
                return out;
            }
            let e = Error::NeedsEnrollment {
                serial: disk.cert.serial.clone(),
                identity: identity.clone(),
                state: "expired",
                fix: revoked_fix(c, &identity),
            };
            let fix = revoked_fix(c, &identity);
            return self.fail(c, st, e, Condition::Expired, Some(fix));
        }
        // A final refusal is never retried on a timer (only `--force` or a new pair on disk).
        if matches!(st.condition, Condition::Revoked | Condition::NotRenewable) && !force {
            let state = if st.condition == Condition::Revoked {
                "revoked"
            } else {
                "not renewable"
            };
            let condition = st.condition;
            if let Some(out) = self.try_token(c, st, state, condition).await {
                return out;
            }
            // Keep saying so; nothing else can be done without an operator.
            st.retry_at = Some(now + self.cfg.check_interval.0);
            let code = st.last_error_code.clone().unwrap_or_default();
            return Outcome::Failed(Error::NeedsEnrollment {
                serial: disk.cert.serial.clone(),
                identity: identity.clone(),
                state,
                fix: refusal_fix(c, &identity, &code),
            });
        }

        let due = force || now >= disk.cert.renewal_point(c.renew_at, c.jitter);
        let backoff_over = force || st.retry_at.is_none_or(|t| now >= t);
        let outcome = if due && backoff_over {
            self.renew(c, st, &disk).await
        } else {
            Outcome::NotDue
        };

        // OCSP: keep the staple fresh and notice revocation early.
        if let Some(out) = self.refresh_staple(c, st, false).await {
            if let Some(out) = self
                .try_token(c, st, "OCSP says revoked", Condition::Revoked)
                .await
            {
                return out;
            }
            return out;
        }
        outcome
    }

    /// Update the state from what is on disk (the truth), forgetting a revocation of an older
    /// serial.
    fn note_disk(&self, c: &CertConfig, st: &mut CertState, disk: &OnDisk) {
        if st.serial.as_deref() != Some(disk.cert.serial.as_str()) {
            if st.serial.is_some() {
                tracing::info!(cert = %c.name, serial = %disk.cert.serial, "certificate on disk changed");
            }
            if matches!(
                st.condition,
                Condition::Revoked
                    | Condition::NotRenewable
                    | Condition::Expired
                    | Condition::Missing
                    | Condition::KeyMismatch
            ) {
                st.clear_error();
            }
        } else if matches!(st.condition, Condition::Missing | Condition::KeyMismatch) {
            st.clear_error();
        }
        st.serial = Some(disk.cert.serial.clone());
        st.identity = Some(disk.cert.identity.to_string());
        st.not_before = Some(disk.cert.not_before);
        st.not_after = Some(disk.cert.not_after);
        st.next_renewal = Some(disk.cert.renewal_point(c.renew_at, c.jitter));
    }

    /// Record a failure with backoff and return it as the outcome.
    fn fail(
        &self,
        c: &CertConfig,
        st: &mut CertState,
        e: Error,
        condition: Condition,
        fix: Option<String>,
    ) -> Outcome {
        let now = Utc::now();
        st.consecutive_failures = st.consecutive_failures.saturating_add(1);
        let delay = match condition {
            Condition::Revoked
            | Condition::NotRenewable
            | Condition::Expired
            | Condition::Missing
            | Condition::KeyMismatch => std_duration(self.cfg.check_interval),
            _ => backoff::delay(
                st.consecutive_failures,
                std_duration(self.cfg.retry_min),
                std_duration(self.cfg.retry_max),
                e.retry_after(),
                &mut rand::thread_rng(),
            ),
        };
        st.retry_at = Some(now + chrono::Duration::from_std(delay).unwrap_or_default());
        st.record_error(condition, &e, fix);
        tracing::warn!(
            cert = %c.name,
            failures = st.consecutive_failures,
            retry_in = ?delay,
            "attempt failed; keeping the working certificate"
        );
        Outcome::Failed(e)
    }

    async fn renew(&self, c: &CertConfig, st: &mut CertState, disk: &OnDisk) -> Outcome {
        tracing::info!(cert = %c.name, serial = %disk.cert.serial, "renewing");
        // The new key is kept (0600, beside the installed versions) until this renewal is
        // installed or finally refused, and a retry sends the same key: if the CA issued the
        // certificate but its answer was lost, the CA recognises the retry (the CSR proves
        // possession of the successor's key) and answers with that certificate again, instead
        // of seeing a superseded certificate renew twice (a cloned key) and locking the lineage.
        let pending = pending_key_path(c, &disk.cert.serial);
        let key = match pending_key(&pending, c.key_type).await {
            Ok(k) => k,
            Err(e) => return self.fail(c, st, e, Condition::RenewalFailing, None),
        };
        let csr = match key.csr_pem(&disk.cert.identity) {
            Ok(c) => c,
            Err(e) => return self.fail(c, st, e, Condition::RenewalFailing, None),
        };
        let ident = match crate::tls::client_identity(
            &disk.cert_pem,
            &disk.chain_pem,
            disk.key.pem().as_bytes(),
        ) {
            Ok(i) => i,
            Err(e) => return self.fail(c, st, e, Condition::RenewalFailing, None),
        };
        match self.client.renew(ident, &csr).await {
            Ok(issued) => {
                let out = self
                    .complete(c, st, key, issued, Some(&disk.cert.identity), true)
                    .await;
                if matches!(out, Outcome::Renewed { .. }) {
                    forget_pending_keys(c);
                }
                out
            }
            Err(e) => {
                let identity = disk.cert.identity.to_string();
                if let Some(Refusal { state, condition }) = e.api_code().and_then(renewal_refusal) {
                    // This certificate will never renew: its pending key is of no use.
                    forget_pending_keys(c);
                    let code = e.api_code().map(str::to_string);
                    if let Some(out) = self.try_token(c, st, state, condition).await {
                        return out;
                    }
                    let fix = refusal_fix(c, &identity, code.as_deref().unwrap_or_default());
                    let e = Error::NeedsEnrollment {
                        serial: disk.cert.serial.clone(),
                        identity,
                        state,
                        fix: fix.clone(),
                    };
                    let out = self.fail(c, st, e, condition, Some(fix));
                    // Keep the CA's code: it is what monitoring keys on.
                    st.last_error_code = code;
                    return out;
                }
                let fix = (e.api_code() == Some("cert_unknown")).then(|| {
                    format!(
                        "the CA does not know certificate {} (was the CA re-provisioned?): {}",
                        disk.cert.serial,
                        revoked_fix(c, &identity)
                    )
                });
                self.fail(c, st, e, Condition::RenewalFailing, fix)
            }
        }
    }

    /// Use the re-enrollment token, if the config names a token file holding one. When the
    /// token does not work for good (refused, not a transient failure), the certificate keeps
    /// `refused`, the condition that sent the agent here: a final refusal of the CA is never
    /// turned into a retried one by a bad token.
    async fn try_token(
        &self,
        c: &CertConfig,
        st: &mut CertState,
        why: &str,
        refused: Condition,
    ) -> Option<Outcome> {
        let path = c.reenroll_token_file.as_ref()?;
        let token = std::fs::read_to_string(path).ok()?.trim().to_string();
        if token.is_empty() {
            return None;
        }
        tracing::warn!(cert = %c.name, reason = why, "re-enrolling with the token from {}", path.display());
        let req = EnrollRequest {
            identity: Identity::default(),
            key_type: Some(c.key_type),
        };
        match self.enroll(c, st, &token, &req, true).await {
            Ok(serial) => {
                // One-time token: used up, so forget it.
                if let Err(e) = install::write_atomic(path, b"", 0o600) {
                    tracing::warn!(cert = %c.name, error = %e, "cannot empty the used token file");
                }
                Some(Outcome::Renewed { serial })
            }
            Err(e) => {
                let fix = if e.api_code() == Some("token_rejected") {
                    Some(format!(
                        "the token in {} was refused (unknown, expired or used): put a new one there",
                        path.display()
                    ))
                } else {
                    None
                };
                let cond = if e.is_transient() {
                    Condition::RenewalFailing
                } else {
                    refused
                };
                Some(self.fail(c, st, e, cond, fix))
            }
        }
    }

    /// Enroll with a one-time token: check the CA chain against the pin, generate the key, send
    /// the CSR, verify and install the answer. Returns the new serial.
    pub async fn enroll(
        &self,
        c: &CertConfig,
        st: &mut CertState,
        token: &str,
        req: &EnrollRequest,
        reload: bool,
    ) -> Result<String> {
        // Nothing is sent before the server proved it holds a chain to the pinned root.
        self.client.chain().await?;
        let key = generate(req.key_type.unwrap_or(c.key_type)).await?;
        let csr = key.csr_pem(&req.identity)?;
        let issued = self.client.enroll(token, &csr).await?;
        let expected = (!req.identity.is_empty()).then_some(&req.identity);
        match self.complete(c, st, key, issued, expected, reload).await {
            Outcome::Renewed { serial } => Ok(serial),
            Outcome::Failed(e) => Err(e),
            Outcome::NotDue => Err(Error::Verify("nothing installed".into())),
        }
    }

    /// Verify, install, reload (when `reload`), prove. On success the state is updated.
    async fn complete(
        &self,
        c: &CertConfig,
        st: &mut CertState,
        key: PrivateKey,
        issued: IssuedResponse,
        expected: Option<&Identity>,
        reload: bool,
    ) -> Outcome {
        let now = Utc::now();
        let checked = (|| {
            let leaf = CertInfo::from_pem(issued.certificate.as_bytes(), "new certificate")?;
            let chain = certs::pem_certs(issued.chain.as_bytes(), "chain of the new certificate")?;
            certs::verify_issued(
                &leaf,
                &chain,
                &key,
                expected,
                &self.cfg.root_fingerprint,
                now,
            )?;
            if certs::normalize_serial(&issued.serial) != leaf.serial {
                return Err(Error::Verify(format!(
                    "the CA said serial {} but the certificate has {}",
                    issued.serial, leaf.serial
                )));
            }
            Ok(leaf)
        })();
        let leaf = match checked {
            Ok(l) => l,
            Err(e) => return self.fail(c, st, e, Condition::RenewalFailing, None),
        };
        let material = Material {
            key_pem: key.pem().to_string(),
            cert_pem: issued.certificate.clone(),
            chain_pem: issued.chain.clone(),
        };
        // Remember the pending reload before the switch, so a crash in between is finished later.
        st.pending_reload = reload.then(|| leaf.serial.clone());
        self.save(c, st);
        let installed = match install::install(c, &material) {
            Ok(i) => i,
            Err(e) => {
                st.pending_reload = None;
                return self.fail(c, st, e, Condition::RenewalFailing, None);
            }
        };
        tracing::info!(
            cert = %c.name,
            serial = %leaf.serial,
            identity = %leaf.identity,
            not_after = %leaf.not_after,
            version = %installed.version,
            "new certificate installed"
        );
        st.serial = Some(leaf.serial.clone());
        st.identity = Some(leaf.identity.to_string());
        st.not_before = Some(leaf.not_before);
        st.not_after = Some(leaf.not_after);
        st.next_renewal = Some(leaf.renewal_point(c.renew_at, c.jitter));
        // A staple for the new certificate before the service reloads it.
        let _ = self.refresh_staple(c, st, true).await;
        if reload {
            if let Err(e) = self.activate(c, st, &leaf.serial).await {
                let fix = format!(
                    "make the reload actions of {} take effect (pidfile, signal, command) and check                      the probe address; `ca-agent renew --force` tries again at once",
                    c.name
                );
                return self.fail(c, st, e, Condition::ReloadFailed, Some(fix));
            }
        }
        st.last_renewal = Some(now);
        st.renewals += 1;
        st.clear_error();
        st.last_error = None;
        st.last_error_code = None;
        Outcome::Renewed {
            serial: leaf.serial,
        }
    }

    /// Reload and prove. When either fails: restore `.prev`, reload again, and return the error.
    async fn activate(&self, c: &CertConfig, st: &mut CertState, serial: &str) -> Result<()> {
        let ctx = reload::ReloadContext {
            serial: serial.to_string(),
        };
        let failure = match reload::run_all(c, &ctx).await {
            Err(e) => Some(e.to_string()),
            Ok(()) => match &c.probe {
                None => None,
                Some(p) => match probe::wait_for_serial(p, serial).await {
                    Ok(took) => {
                        tracing::info!(cert = %c.name, serial, took = ?took, address = %p.address, "probe: service serves the new certificate");
                        None
                    }
                    Err(last) => Some(format!(
                        "service at {} still shows {last} after {}s, not the new serial {serial}",
                        p.address,
                        p.timeout.0.num_seconds()
                    )),
                },
            },
        };
        let Some(reason) = failure else {
            st.pending_reload = None;
            if !c.reload.is_empty() {
                st.reloads += 1;
            }
            return Ok(());
        };
        tracing::error!(cert = %c.name, serial, "reload did not take effect: {reason}; restoring the previous pair");
        st.pending_reload = None;
        let restored = match install::restore_previous(c) {
            Ok(v) => v,
            Err(e) => {
                return Err(Error::ReloadNotEffective(format!(
                    "reload of {serial} did not take effect ({reason}) and the previous pair could \
                     not be restored ({e}); the new certificate stays installed"
                )))
            }
        };
        let old = install::read_current(c).ok().flatten();
        if let Some(old) = &old {
            self.note_disk(c, st, old);
            let ctx = reload::ReloadContext {
                serial: old.cert.serial.clone(),
            };
            if let Err(e) = reload::run_all(c, &ctx).await {
                tracing::error!(cert = %c.name, error = %e, "reload after restoring the previous pair failed too");
            }
            let _ = self.refresh_staple(c, st, true).await;
        }
        Err(Error::ReloadNotEffective(format!(
            "reload did not take effect: {reason}; restored the previous certificate {} ({restored}). \
             Fix the reload action or probe in agent.toml; the agent retries with backoff",
            old.map(|o| o.cert.serial).unwrap_or_default()
        )))
    }

    /// Fetch a fresh OCSP response when due (or `now`), write the staple, and notice revocation.
    /// Returns an outcome only when the certificate turned out revoked.
    async fn refresh_staple(
        &self,
        c: &CertConfig,
        st: &mut CertState,
        now_: bool,
    ) -> Option<Outcome> {
        let staple_path = c.ocsp_staple.as_ref()?;
        let disk = install::read_current(c).ok().flatten()?;
        let now = Utc::now();
        let fresh = st.staple.as_ref().is_some_and(|s| {
            s.serial == disk.cert.serial
                && s.refresh_at.is_some_and(|t| now < t)
                && staple_path.exists()
        });
        if fresh && !now_ {
            return None;
        }
        let url = c.ocsp_url.clone().or_else(|| disk.cert.ocsp_url.clone());
        let Some(url) = url else {
            tracing::warn!(cert = %c.name, "ocsp_staple is set but the certificate has no OCSP URL and ocsp_url is not set");
            return None;
        };
        let issuer = certs::pem_certs(&disk.chain_pem, "chain")
            .ok()
            .and_then(|v| v.into_iter().next());
        let Some(issuer) = issuer else {
            tracing::warn!(cert = %c.name, "no issuer certificate in the chain; cannot ask for OCSP");
            return None;
        };
        match ocsp::fetch(
            &url,
            &disk.cert.der,
            &issuer,
            std_duration(self.cfg.request_timeout),
        )
        .await
        {
            Ok(checked) => {
                let refresh_at = checked.refresh_at(now);
                st.staple = Some(StapleState {
                    serial: disk.cert.serial.clone(),
                    status: checked.status.to_string(),
                    this_update: Some(checked.this_update),
                    next_update: checked.next_update,
                    expires_at: Some(checked.expires_at),
                    fetched_at: Some(now),
                    refresh_at: Some(refresh_at),
                });
                if let ocsp::Status::Revoked { at, reason } = &checked.status {
                    let identity = disk.cert.identity.to_string();
                    tracing::error!(cert = %c.name, serial = %disk.cert.serial, revoked_at = %at, reason = reason.as_deref().unwrap_or("unspecified"), "OCSP says the certificate is revoked");
                    let fix = revoked_fix(c, &identity);
                    let e = Error::NeedsEnrollment {
                        serial: disk.cert.serial.clone(),
                        identity,
                        state: "revoked",
                        fix: fix.clone(),
                    };
                    return Some(self.fail(c, st, e, Condition::Revoked, Some(fix)));
                }
                if let Err(e) = install::write_atomic(staple_path, &checked.der, 0o644) {
                    tracing::error!(cert = %c.name, error = %e, "cannot write the OCSP staple");
                } else {
                    tracing::info!(cert = %c.name, status = %checked.status, next_fetch = %refresh_at, "OCSP staple refreshed");
                }
                None
            }
            Err(e) => {
                tracing::warn!(cert = %c.name, error = %e, "OCSP fetch failed; keeping the old staple");
                let retry = now
                    + chrono::Duration::from_std(std_duration(self.cfg.retry_min) * 6)
                        .unwrap_or_default();
                let s = st.staple.get_or_insert_with(StapleState::default);
                s.refresh_at = Some(retry);
                // A kept response is trusted only until it expires; after that it is reported as
                // expired, never as the status it once said.
                if s.expires_at.is_some_and(|t| t < now) && s.status != "expired" {
                    tracing::error!(cert = %c.name, expired_at = ?s.expires_at, "the OCSP staple on disk has expired and no fresh one could be fetched");
                    s.status = "expired".into();
                }
                None
            }
        }
    }
}

/// Where the new key of a renewal of certificate `serial` waits until the renewal is done.
fn pending_key_path(c: &CertConfig, serial: &str) -> std::path::PathBuf {
    c.store_dir().join(format!("pending-{serial}.key"))
}

/// The pending key at `path` if there is one of the configured type, else a fresh one, written
/// there (0600) before it is used.
async fn pending_key(
    path: &std::path::Path,
    alg: ca_core::signer::KeyAlgorithm,
) -> Result<PrivateKey> {
    if let Ok(pem) = std::fs::read_to_string(path) {
        match PrivateKey::from_pem(&pem) {
            Ok(k) if k.is(alg) => return Ok(k),
            _ => tracing::warn!(path = %path.display(), "discarding a pending key of another type"),
        }
    }
    let key = generate(alg).await?;
    install::write_atomic(path, key.pem().as_bytes(), 0o600)?;
    Ok(key)
}

/// Remove every pending renewal key of `c` (a renewal was installed, or will never work).
fn forget_pending_keys(c: &CertConfig) {
    let Ok(entries) = std::fs::read_dir(c.store_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("pending-") && name.ends_with(".key") {
            if let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!(path = %e.path().display(), error = %err, "cannot remove a pending key");
            }
        }
    }
}

async fn generate(alg: ca_core::signer::KeyAlgorithm) -> Result<PrivateKey> {
    // RSA generation takes a moment; keep it off the async workers.
    tokio::task::spawn_blocking(move || PrivateKey::generate(alg))
        .await
        .map_err(|e| Error::Key(format!("key generation task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(&format!(
            "server = \"https://127.0.0.1:1\"\nroot_fingerprint = \"{}\"\ncheck_interval = \"7m\"\n\
             retry_min = \"1s\"\nretry_max = \"2s\"\n[[certificate]]\nname = \"web\"\n\
             cert = \"/tmp/x/web.crt\"\nkey = \"/tmp/x/web.key\"\n\
             reenroll_token_file = \"/etc/ca-agent/web.token\"\n",
            "00".repeat(32)
        ))
        .unwrap()
    }

    /// One row per CA code: the state and condition it maps to (or `None`: retried), and words
    /// the FIX line must carry.
    #[test]
    fn final_renewal_refusals_map_to_a_condition_and_a_fix() {
        let cfg = config();
        let c = &cfg.certificates[0];
        type Row<'a> = (&'a str, Option<(&'a str, Condition)>, &'a [&'a str]);
        let rows: &[Row<'_>] = &[
            (
                "cert_revoked",
                Some(("revoked", Condition::Revoked)),
                &["new enrollment token", "--force", "/etc/ca-agent/web.token"],
            ),
            (
                "lineage_locked",
                Some(("revoked", Condition::Revoked)),
                &[
                    "locked",
                    "never renew again",
                    "new enrollment token",
                    "ca-agent enroll",
                    "--force",
                    "/etc/ca-agent/web.token",
                ],
            ),
            (
                "generation_superseded",
                Some(("revoked", Condition::Revoked)),
                &[
                    "newer certificate",
                    "cloned",
                    "new enrollment token",
                    "--force",
                    "/etc/ca-agent/web.token",
                ],
            ),
            (
                "cert_expired",
                Some(("expired", Condition::Expired)),
                &["new enrollment token", "--force"],
            ),
            (
                "not_renewable",
                Some(("not renewable", Condition::NotRenewable)),
                &["security officer", "admin-cert create"],
            ),
            ("rate_limited", None, &[]),
            ("internal", None, &[]),
            ("hsm_unavailable", None, &[]),
            ("cert_unknown", None, &[]),
            ("token_rejected", None, &[]),
        ];
        for (code, want, words) in rows {
            let got = renewal_refusal(code).map(|r| (r.state, r.condition));
            assert_eq!(got, *want, "{code}");
            if want.is_some() {
                let fix = refusal_fix(c, "CN=web", code);
                for w in *words {
                    assert!(fix.contains(w), "{code}: {w:?} not in {fix}");
                }
            }
        }
    }

    /// A final refusal waits a whole check interval (the daemon reports, it does not hammer the
    /// CA); only transient failures back off from retry_min.
    #[test]
    fn final_refusals_are_not_retried_with_backoff() {
        let cfg = config();
        let agent = Agent::new(cfg.clone()).unwrap();
        let c = &cfg.certificates[0];
        for code in ["lineage_locked", "generation_superseded", "not_renewable"] {
            let r = renewal_refusal(code).unwrap();
            let mut st = CertState::default();
            let before = Utc::now();
            let fix = refusal_fix(c, "CN=web", code);
            let e = Error::NeedsEnrollment {
                serial: "01".into(),
                identity: "CN=web".into(),
                state: r.state,
                fix: fix.clone(),
            };
            let _ = agent.fail(c, &mut st, e, r.condition, Some(fix.clone()));
            assert_eq!(st.condition, r.condition);
            assert_eq!(st.fix.as_deref(), Some(fix.as_str()));
            let wait = st.retry_at.unwrap() - before;
            assert!(wait >= chrono::Duration::minutes(7), "{code}: {wait}");
            assert!(!st.condition.is_healthy());
        }
        let mut st = CertState::default();
        let e = Error::Api {
            url: "u".into(),
            status: 503,
            code: "hsm_unavailable".into(),
            message: String::new(),
            retry_after: None,
        };
        let before = Utc::now();
        let _ = agent.fail(c, &mut st, e, Condition::RenewalFailing, None);
        assert!(st.retry_at.unwrap() - before < chrono::Duration::minutes(1));
    }
}
