//! The per-certificate state file (`<state_dir>/<name>.json`), read by `ca-agent status`.

use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How a managed certificate is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Valid, renewal on schedule.
    #[default]
    Ok,
    /// No key/certificate at the configured paths.
    Missing,
    /// Renewal attempts are failing; the working certificate is kept, retries continue.
    RenewalFailing,
    /// The new certificate did not take effect (reload failed or probe saw the old one); the
    /// previous pair was restored.
    ReloadFailed,
    /// The certificate was revoked: renewal cannot work, re-enrollment is needed.
    Revoked,
    /// The certificate expired: renewal cannot work, re-enrollment is needed.
    Expired,
    /// The key and certificate on disk do not match.
    KeyMismatch,
    /// The CA never renews this certificate (administrator or CA server certificate): a
    /// security officer re-issues it.
    NotRenewable,
}

impl Condition {
    /// Whether an operator should look at it.
    pub fn is_healthy(self) -> bool {
        self == Condition::Ok
    }
}

/// The OCSP staple the agent keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StapleState {
    /// Serial the staple is for.
    pub serial: String,
    /// `good`, `revoked` or `unknown`.
    pub status: String,
    /// thisUpdate.
    pub this_update: Option<DateTime<Utc>>,
    /// nextUpdate.
    pub next_update: Option<DateTime<Utc>>,
    /// When the agent stops trusting it (nextUpdate, or thisUpdate + 1 hour without one).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// When the agent fetched it.
    pub fetched_at: Option<DateTime<Utc>>,
    /// When the agent fetches the next one.
    pub refresh_at: Option<DateTime<Utc>>,
}

/// What the agent remembers about one certificate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CertState {
    /// Config name.
    pub name: String,
    /// Identity of the current certificate.
    pub identity: Option<String>,
    /// Serial of the current certificate.
    pub serial: Option<String>,
    /// notBefore of the current certificate.
    pub not_before: Option<DateTime<Utc>>,
    /// notAfter of the current certificate.
    pub not_after: Option<DateTime<Utc>>,
    /// When the next renewal is planned.
    pub next_renewal: Option<DateTime<Utc>>,
    /// How the certificate stands (ok, renewal due, expired, revoked, ...).
    pub condition: Condition,
    /// What to do about a bad condition.
    pub fix: Option<String>,
    /// Last error, for operators.
    pub last_error: Option<String>,
    /// The CA's error code of the last error, when there was one.
    pub last_error_code: Option<String>,
    /// When the last error happened.
    pub last_error_at: Option<DateTime<Utc>>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// Earliest time of the next attempt after a failure (backoff).
    pub retry_at: Option<DateTime<Utc>>,
    /// Last successful renewal (or enrollment).
    pub last_renewal: Option<DateTime<Utc>>,
    /// Successful renewals so far.
    pub renewals: u64,
    /// Successful reloads so far.
    pub reloads: u64,
    /// A new pair was installed but its reload has not been confirmed (set before the install,
    /// cleared after reload and probe); a restart finishes the job.
    pub pending_reload: Option<String>,
    /// The OCSP staple.
    pub staple: Option<StapleState>,
    /// When this file was written.
    pub updated_at: Option<DateTime<Utc>>,
}

/// The state file path of certificate `name`.
pub fn path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("{name}.json"))
}

impl CertState {
    /// Load, or a fresh state if there is none yet.
    pub fn load(state_dir: &Path, name: &str) -> Result<CertState> {
        let p = path(state_dir, name);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Config {
                path: p.display().to_string(),
                reason: format!("state file is not valid JSON ({e}); delete it to start over"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CertState {
                name: name.to_string(),
                ..CertState::default()
            }),
            Err(e) => Err(Error::io("read", p, e)),
        }
    }

    /// Save atomically.
    pub fn save(&mut self, state_dir: &Path) -> Result<()> {
        self.updated_at = Some(Utc::now());
        let text = serde_json::to_vec_pretty(self).map_err(|e| Error::Config {
            path: "state".into(),
            reason: e.to_string(),
        })?;
        crate::install::write_atomic(&path(state_dir, &self.name), &text, 0o644)
    }

    /// Record an error.
    pub fn record_error(&mut self, condition: Condition, err: &Error, fix: Option<String>) {
        self.condition = condition;
        self.last_error = Some(err.to_string());
        self.last_error_code = err.api_code().map(str::to_string);
        self.last_error_at = Some(Utc::now());
        self.fix = fix;
    }

    /// Clear error fields after a success.
    pub fn clear_error(&mut self) {
        self.condition = Condition::Ok;
        self.fix = None;
        self.consecutive_failures = 0;
        self.retry_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = CertState::load(dir.path(), "web").unwrap();
        assert_eq!(fresh.name, "web");
        assert_eq!(fresh.condition, Condition::Ok);
        let mut s = fresh.clone();
        s.serial = Some("ab".into());
        s.condition = Condition::Revoked;
        s.save(dir.path()).unwrap();
        let back = CertState::load(dir.path(), "web").unwrap();
        assert_eq!(back.serial.as_deref(), Some("ab"));
        assert_eq!(back.condition, Condition::Revoked);
        std::fs::write(path(dir.path(), "bad"), "{nope").unwrap();
        assert!(CertState::load(dir.path(), "bad").is_err());
    }
}
