//! `ca-agent status`: what each managed certificate looks like, from disk and the state file.

use crate::config::Config;
use crate::install;
use crate::state::{CertState, Condition, StapleState};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// The status of one certificate.
#[derive(Clone, Debug, Serialize)]
pub struct CertStatus {
    /// Config name.
    pub name: String,
    /// Condition.
    pub condition: Condition,
    /// Certificate path.
    pub cert: String,
    /// Identity (CN and SANs).
    pub identity: Option<String>,
    /// Serial, hex.
    pub serial: Option<String>,
    /// notBefore.
    pub not_before: Option<DateTime<Utc>>,
    /// notAfter.
    pub not_after: Option<DateTime<Utc>>,
    /// Next planned renewal.
    pub next_renewal: Option<DateTime<Utc>>,
    /// Next attempt after a failure.
    pub retry_at: Option<DateTime<Utc>>,
    /// Last successful renewal.
    pub last_renewal: Option<DateTime<Utc>>,
    /// Last error.
    pub last_error: Option<String>,
    /// CA error code of the last error.
    pub last_error_code: Option<String>,
    /// When it happened.
    pub last_error_at: Option<DateTime<Utc>>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// What to do.
    pub fix: Option<String>,
    /// Renewals so far.
    pub renewals: u64,
    /// Reloads so far.
    pub reloads: u64,
    /// OCSP staple.
    pub staple: Option<StapleState>,
}

/// Gather the status of every certificate of `cfg`.
pub fn collect(cfg: &Config) -> Vec<CertStatus> {
    let now = Utc::now();
    cfg.certificates
        .iter()
        .map(|c| {
            let st = CertState::load(&cfg.state_dir, &c.name).unwrap_or_else(|e| CertState {
                name: c.name.clone(),
                last_error: Some(e.to_string()),
                ..CertState::default()
            });
            let mut s = CertStatus {
                name: c.name.clone(),
                condition: st.condition,
                cert: c.cert.display().to_string(),
                identity: st.identity.clone(),
                serial: st.serial.clone(),
                not_before: st.not_before,
                not_after: st.not_after,
                next_renewal: st.next_renewal,
                retry_at: st.retry_at,
                last_renewal: st.last_renewal,
                last_error: st.last_error.clone(),
                last_error_code: st.last_error_code.clone(),
                last_error_at: st.last_error_at,
                consecutive_failures: st.consecutive_failures,
                fix: st.fix.clone(),
                renewals: st.renewals,
                reloads: st.reloads,
                staple: st.staple.clone(),
            };
            // Disk is the truth for what is installed.
            match install::read_current(c) {
                Ok(Some(d)) => {
                    if st.serial.as_deref() != Some(d.cert.serial.as_str()) {
                        // Installed by someone else since the agent last looked.
                        if matches!(
                            s.condition,
                            Condition::Revoked
                                | Condition::NotRenewable
                                | Condition::Expired
                                | Condition::Missing
                        ) {
                            s.condition = Condition::Ok;
                            s.fix = None;
                        }
                    }
                    s.serial = Some(d.cert.serial.clone());
                    s.identity = Some(d.cert.identity.to_string());
                    s.not_before = Some(d.cert.not_before);
                    s.not_after = Some(d.cert.not_after);
                    s.next_renewal = Some(d.cert.renewal_point(c.renew_at, c.jitter));
                    if d.cert.not_after <= now {
                        s.condition = Condition::Expired;
                    }
                }
                Ok(None) => {
                    s.condition = Condition::Missing;
                    s.serial = None;
                }
                Err(e) => {
                    if matches!(e, crate::Error::KeyMismatch { .. }) {
                        s.condition = Condition::KeyMismatch;
                    }
                    s.last_error = Some(e.to_string());
                }
            }
            s
        })
        .collect()
}

fn when(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        None => "-".into(),
        Some(t) => {
            let d = t - now;
            let (sign, d) = if d < chrono::Duration::zero() {
                ("ago", -d)
            } else {
                ("", d)
            };
            let secs = d.num_seconds();
            let rel = if secs >= 86400 {
                format!("{}d{}h", secs / 86400, (secs % 86400) / 3600)
            } else if secs >= 3600 {
                format!("{}h{}m", secs / 3600, (secs % 3600) / 60)
            } else if secs >= 60 {
                format!("{}m{}s", secs / 60, secs % 60)
            } else {
                format!("{secs}s")
            };
            if sign.is_empty() {
                format!(
                    "{} (in {rel})",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            } else {
                format!(
                    "{} ({rel} ago)",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            }
        }
    }
}

/// Human-readable rendering.
pub fn render(list: &[CertStatus]) -> String {
    let now = Utc::now();
    let mut out = String::new();
    for s in list {
        let cond = serde_json::to_value(s.condition)
            .ok()
            .and_then(|v| v.as_str().map(str::to_uppercase))
            .unwrap_or_default();
        out.push_str(&format!("{}: {cond}\n", s.name));
        out.push_str(&format!("  certificate:   {}\n", s.cert));
        out.push_str(&format!(
            "  identity:      {}\n",
            s.identity.as_deref().unwrap_or("-")
        ));
        out.push_str(&format!(
            "  serial:        {}\n",
            s.serial.as_deref().unwrap_or("-")
        ));
        out.push_str(&format!("  expires:       {}\n", when(s.not_after, now)));
        out.push_str(&format!("  next renewal:  {}\n", when(s.next_renewal, now)));
        out.push_str(&format!("  last renewal:  {}\n", when(s.last_renewal, now)));
        out.push_str(&format!(
            "  renewals:      {} (reloads {})\n",
            s.renewals, s.reloads
        ));
        if let Some(st) = &s.staple {
            out.push_str(&format!(
                "  ocsp staple:   {} (next fetch {})\n",
                st.status,
                when(st.refresh_at, now)
            ));
        }
        match &s.last_error {
            Some(e) => {
                out.push_str(&format!("  last error:    {e}\n"));
                if let Some(code) = &s.last_error_code {
                    out.push_str(&format!("  error code:    {code}\n"));
                }
                out.push_str(&format!(
                    "  error at:      {}\n",
                    when(s.last_error_at, now)
                ));
                if s.consecutive_failures > 0 {
                    out.push_str(&format!(
                        "  failures:      {} (next attempt {})\n",
                        s.consecutive_failures,
                        when(s.retry_at, now)
                    ));
                }
            }
            None => out.push_str("  last error:    -\n"),
        }
        if let Some(fix) = &s.fix {
            out.push_str(&format!("  FIX:           {fix}\n"));
        }
    }
    out
}
