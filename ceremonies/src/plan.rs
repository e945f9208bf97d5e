//! Validation: a [`Config`] becomes a [`Plan`] only if every field, input file and output path
//! is acceptable. Nothing here touches the HSM; errors name the field path.
//!
//! This module checks what every kind shares (name, officers and operator, the one section of
//! the kind, tokens, quorum shares, the transcripts directory); each kind in [`crate::kind`]
//! checks its own section into its task.

use crate::config::{Config, Kind, Period, Subject, Validity};
use crate::error::Error;
use crate::kind::Input;
pub use crate::kind::Task;
use crate::x509::{read_cert_pem, CertInfo};
use ca_core::revocation::RevocationReason;
use ca_core::signer::pkcs11::{find_softhsm_module, PinSource};
use ca_core::signer::sha256_hex;
use chrono::{DateTime, Duration, Utc};
use std::path::{Path, PathBuf};

/// Longest allowed lifetime of an OCSP signing certificate or root CRL. The root-signed OCSP
/// response is limited to [`ca_core::ocsp::MAX_CA_RESPONSE_VALIDITY_DAYS`] (365, CA/B Forum
/// BR 4.9.10).
pub const MAX_SHORT_LIVED_DAYS: i64 = 366;

/// A token to open.
#[derive(Debug, Clone)]
pub struct TokenRef {
    /// PKCS#11 module.
    pub module: PathBuf,
    /// Token label.
    pub label: String,
}

/// A fully validated ceremony.
#[derive(Debug)]
pub struct Plan {
    /// Configuration file.
    pub file: PathBuf,
    /// Its directory (relative paths are relative to it).
    pub base: PathBuf,
    /// Configuration text.
    pub config_text: String,
    /// SHA-256 of the configuration file.
    pub config_sha256: String,
    /// Which ceremony.
    pub kind: Kind,
    /// Human title from the configuration, e.g. "Example Corp root key ceremony 2025".
    pub name: String,
    /// Ceremony start (validity and update times are computed from it).
    pub start: DateTime<Utc>,
    /// Transcript directory.
    pub transcripts: PathBuf,
    /// Officers present.
    pub officers: Vec<String>,
    /// HSM operator.
    pub operator: String,
    /// Share files to read (ceremonies that use the root key).
    pub share_inputs: Vec<PathBuf>,
    /// The checked, kind-specific work to do on the HSM.
    pub task: Task,
}

/// The validator of one configuration file: its errors name the file and the field path;
/// relative paths are resolved against the file's directory.
pub(crate) struct V<'a> {
    file: &'a Path,
    base: &'a Path,
}

impl V<'_> {
    pub(crate) fn err(&self, path: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Config {
            file: self.file.to_path_buf(),
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn path(&self, p: &Path) -> PathBuf {
        self.base.join(p)
    }

    pub(crate) fn non_empty(&self, path: &str, v: &str) -> Result<(), Error> {
        if v.trim().is_empty() {
            return Err(self.err(path, "must not be empty"));
        }
        Ok(())
    }

    pub(crate) fn output(
        &self,
        path: &str,
        p: &Path,
        seen: &mut Vec<PathBuf>,
    ) -> Result<PathBuf, Error> {
        if p.as_os_str().is_empty() {
            return Err(self.err(path, "output path must not be empty"));
        }
        let full = self.path(p);
        if full.exists() {
            return Err(Error::OutputExists(full));
        }
        if seen.contains(&full) {
            return Err(self.err(
                path,
                format!("{} is also used for another output", full.display()),
            ));
        }
        seen.push(full.clone());
        Ok(full)
    }

    pub(crate) fn module(&self, path: &str, module: &Option<PathBuf>) -> Result<PathBuf, Error> {
        match module {
            Some(m) => {
                let m = self.path(m);
                if !m.exists() {
                    return Err(self.err(path, format!("PKCS#11 module {} does not exist", m.display())));
                }
                Ok(m)
            }
            None => find_softhsm_module().ok_or_else(|| {
                self.err(path, "no PKCS#11 module given and SoftHSM2 not found; set module = \"/path/to/pkcs11.so\" or PKCS11_MODULE")
            }),
        }
    }

    pub(crate) fn pin(&self, path: &str, pin: &PinSource) -> Result<PinSource, Error> {
        let resolved = match pin {
            PinSource::File(p) => PinSource::File(self.path(p)),
            other => other.clone(),
        };
        // Reading the PIN is not an HSM operation; a missing PIN file is a configuration error.
        resolved.read().map_err(|e| self.err(path, e.to_string()))?;
        Ok(resolved)
    }

    pub(crate) fn subject(&self, path: &str, s: &Subject) -> Result<(), Error> {
        if let Some(c) = &s.country {
            if c.len() != 2 || !c.chars().all(|ch| ch.is_ascii_uppercase()) {
                return Err(self.err(
                    format!("{path}.country"),
                    format!("{c:?} is not a two-letter ISO 3166 code (e.g. \"US\")"),
                ));
            }
        }
        // RFC 5280 Appendix A upper bounds: ub-common-name, ub-organization-name and
        // ub-organizational-unit-name are 64, ub-state-name and ub-locality-name 128.
        for (field, v, max) in [
            ("common_name", Some(&s.common_name), 64),
            ("organization", s.organization.as_ref(), 64),
            ("organizational_unit", s.organizational_unit.as_ref(), 64),
            ("state", s.state.as_ref(), 128),
            ("locality", s.locality.as_ref(), 128),
        ] {
            if let Some(v) = v {
                self.non_empty(&format!("{path}.{field}"), v)?;
                if v.chars().count() > max {
                    return Err(self.err(
                        format!("{path}.{field}"),
                        format!("longer than {max} characters (RFC 5280 Appendix A upper bound)"),
                    ));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn validity(
        &self,
        path: &str,
        v: &Validity,
        start: DateTime<Utc>,
    ) -> Result<(DateTime<Utc>, DateTime<Utc>), Error> {
        let not_before = v.not_before.unwrap_or(start);
        let not_after = match (v.not_after, v.days, v.hours) {
            (Some(t), None, None) => t,
            (None, Some(d), None) if d > 0 => not_before + Duration::days(d.into()),
            (None, None, Some(h)) if h > 0 => not_before + Duration::hours(h.into()),
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(self.err(path, "the lifetime must be positive"))
            }
            _ => return Err(self.err(path, "give exactly one of not_after, days, hours")),
        };
        if not_after <= not_before {
            return Err(self.err(
                path,
                format!("not_after {not_after} is not after not_before {not_before}"),
            ));
        }
        if not_after <= start {
            return Err(self.err(
                path,
                format!(
                    "the certificate would already be expired at the ceremony's start ({start})"
                ),
            ));
        }
        Ok((not_before, not_after))
    }

    pub(crate) fn period(&self, path: &str, p: &Period, max_days: i64) -> Result<Duration, Error> {
        let d = match (p.days, p.hours) {
            (Some(d), None) if d > 0 => Duration::days(d.into()),
            (None, Some(h)) if h > 0 => Duration::hours(h.into()),
            (Some(_), None) | (None, Some(_)) => {
                return Err(self.err(path, "the period must be positive"))
            }
            _ => return Err(self.err(path, "give exactly one of days, hours")),
        };
        if d > Duration::days(max_days) {
            return Err(self.err(path, format!("at most {max_days} days")));
        }
        Ok(d)
    }

    pub(crate) fn within_issuer(
        &self,
        path: &str,
        what: &str,
        (nb, na): (DateTime<Utc>, DateTime<Utc>),
        issuer: &CertInfo,
    ) -> Result<(), Error> {
        if nb < issuer.not_before || na > issuer.not_after {
            return Err(self.err(
                path,
                format!(
                    "{nb} .. {na} is not within the {what}'s validity {} .. {} (RFC 5280 6.1.3: a certificate \
                     cannot outlive its issuer)",
                    issuer.not_before, issuer.not_after
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn ca_cert(
        &self,
        path: &str,
        what: &'static str,
        p: &Path,
        start: DateTime<Utc>,
    ) -> Result<CertInfo, Error> {
        let c = read_cert_pem(what, &self.path(p))?;
        if !c.is_ca {
            return Err(self.err(
                path,
                format!(
                    "{} is not a CA certificate (basicConstraints cA is not set)",
                    c.path.display()
                ),
            ));
        }
        if c.not_after <= start {
            return Err(self.err(
                path,
                format!("{} expired at {}", c.path.display(), c.not_after),
            ));
        }
        Ok(c)
    }

    pub(crate) fn urls(&self, path: &str, urls: &[String]) -> Result<(), Error> {
        for (i, u) in urls.iter().enumerate() {
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && u.len() > "https://".len()
                && u.is_ascii()
                && !u.chars().any(|c| c.is_whitespace());
            if !ok {
                return Err(self.err(
                    format!("{path}[{i}]"),
                    format!("{u:?} is not an http:// or https:// URL"),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn reason(&self, path: &str, r: &Option<String>) -> Result<RevocationReason, Error> {
        let reason = match r {
            None => RevocationReason::Unspecified,
            Some(s) => s.parse().map_err(|e: String| self.err(path, e))?,
        };
        // RFC 5280 5.3.1: "The removeFromCRL (8) reasonCode value may only appear in delta
        // CRLs"; the root CRL is a complete CRL, and an OCSP response cannot say it either.
        if reason == RevocationReason::RemoveFromCrl {
            return Err(self.err(
                path,
                "removeFromCRL only appears in delta CRLs (RFC 5280 5.3.1); to un-revoke, leave the serial out",
            ));
        }
        Ok(reason)
    }
}

impl Plan {
    /// Validate `config` (read from `file`, text `text`) for a ceremony starting at `start`.
    /// `extra_shares` are share files given on the command line.
    pub fn from_config(
        file: &Path,
        config: Config,
        text: String,
        start: DateTime<Utc>,
        extra_shares: &[PathBuf],
    ) -> Result<Plan, Error> {
        let base = file
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let v = V { file, base: &base };
        let kind = config.kind;
        v.non_empty("name", &config.name)?;

        // Officers and operator.
        if config.officers.is_empty() {
            return Err(v.err(
                "officers",
                "no officer listed; every ceremony needs at least one officer to confirm it",
            ));
        }
        let mut officers: Vec<String> = Vec::new();
        for (i, o) in config.officers.iter().enumerate() {
            let path = format!("officers[{i}].name");
            v.non_empty(&path, &o.name)?;
            if officers.contains(&o.name) {
                return Err(v.err(path, format!("officer {:?} is listed twice", o.name)));
            }
            officers.push(o.name.clone());
        }
        let operator = match &config.operator {
            Some(op) if !officers.contains(op) => {
                return Err(v.err(
                    "operator",
                    format!("{op:?} is not one of the listed officers"),
                ));
            }
            Some(op) => op.clone(),
            None => officers[0].clone(),
        };

        // Sections: exactly the one for this kind.
        let sections: [(&str, bool); 6] = [
            ("root", config.root.is_some()),
            ("key", config.key.is_some()),
            ("intermediate", config.intermediate.is_some()),
            ("ocsp_signer", config.ocsp_signer.is_some()),
            ("crl", config.crl.is_some()),
            ("ocsp_response", config.ocsp_response.is_some()),
        ];
        if sections
            .iter()
            .any(|(section, present)| *section == kind.section() && !present)
        {
            let section = kind.section();
            return Err(v.err(
                section,
                format!("missing: a {kind} ceremony needs a [{section}] section"),
            ));
        }
        if let Some((section, _)) = sections
            .iter()
            .find(|(section, present)| *section != kind.section() && *present)
        {
            return Err(v.err(
                *section,
                format!("not used by a {kind} ceremony; remove it"),
            ));
        }

        // Tokens.
        let root_token = match (&config.root_token, kind.uses_root_token()) {
            (Some(t), true) => {
                v.non_empty("root_token.label", &t.label)?;
                v.non_empty("root_token.key_label", &t.key_label)?;
                match (kind, &t.so_pin) {
                    (Kind::Root, None) => {
                        return Err(v.err(
                            "root_token.so_pin",
                            "required in a root ceremony, to set the quorum PIN on the token",
                        ))
                    }
                    (Kind::Root, Some(_)) => {}
                    (_, Some(_)) => {
                        return Err(v.err(
                            "root_token.so_pin",
                            format!("not used by a {kind} ceremony; remove it"),
                        ))
                    }
                    (_, None) => {}
                }
                Some((
                    TokenRef {
                        module: v.module("root_token.module", &t.module)?,
                        label: t.label.clone(),
                    },
                    t,
                ))
            }
            (None, true) => {
                return Err(v.err(
                    "root_token",
                    format!("missing: a {kind} ceremony uses the root key"),
                ))
            }
            (Some(_), false) => {
                return Err(v.err(
                    "root_token",
                    format!("not used by a {kind} ceremony; remove it"),
                ))
            }
            (None, false) => None,
        };
        let online_token = match (
            &config.online_token,
            matches!(kind, Kind::Key | Kind::OcspSigner),
        ) {
            (Some(t), true) => {
                v.non_empty("online_token.label", &t.label)?;
                let pin = v.pin("online_token.pin", &t.pin)?;
                Some((
                    TokenRef {
                        module: v.module("online_token.module", &t.module)?,
                        label: t.label.clone(),
                    },
                    pin,
                ))
            }
            (None, true) => {
                return Err(v.err(
                    "online_token",
                    format!("missing: a {kind} ceremony uses the online token"),
                ))
            }
            (Some(_), false) => {
                return Err(v.err(
                    "online_token",
                    format!("not used by a {kind} ceremony; remove it"),
                ))
            }
            (None, false) => None,
        };

        // Quorum and shares.
        if kind != Kind::Root && config.quorum.is_some() {
            return Err(v.err(
                "quorum",
                "only a root ceremony sets the quorum; later ceremonies take it from the shares",
            ));
        }
        let mut outputs: Vec<PathBuf> = Vec::new();
        let mut share_inputs = Vec::new();
        let mut shareholders = Vec::new();
        for (i, o) in config.officers.iter().enumerate() {
            let Some(share) = &o.share else { continue };
            let path = format!("officers[{i}].share");
            match kind {
                Kind::Root => {
                    shareholders.push((o.name.clone(), v.output(&path, share, &mut outputs)?))
                }
                k if k.uses_root_token() => share_inputs.push(v.path(share)),
                _ => {
                    return Err(v.err(
                        path,
                        format!(
                            "not used by a {kind} ceremony (no quorum PIN is needed); remove it"
                        ),
                    ))
                }
            }
        }
        let reads_shares = kind.uses_root_token() && kind != Kind::Root;
        if !extra_shares.is_empty() && !reads_shares {
            return Err(v.err("--share", format!("a {kind} ceremony reads no PIN shares")));
        }
        for s in extra_shares {
            if !share_inputs.contains(s) {
                share_inputs.push(s.clone());
            }
        }

        let transcripts = v.path(&config.transcripts);
        if transcripts.exists() && !transcripts.is_dir() {
            return Err(v.err(
                "transcripts",
                format!("{} is not a directory", transcripts.display()),
            ));
        }

        let task = Task::plan(
            kind,
            Input {
                v: &v,
                config: &config,
                start,
                root_token,
                online_token,
                shareholders,
                outputs: &mut outputs,
            },
        )?;

        let config_sha256 = sha256_hex(text.as_bytes());
        Ok(Plan {
            file: file.to_path_buf(),
            base,
            config_text: text,
            config_sha256,
            kind,
            name: config.name,
            start,
            transcripts,
            officers,
            operator,
            share_inputs,
            task,
        })
    }

    /// The root token this ceremony unlocks with quorum shares, if any (not the root ceremony,
    /// which sets the PIN).
    pub fn quorum_token(&self) -> Option<&TokenRef> {
        self.task.quorum_token()
    }

    /// A path relative to the configuration's directory, for display and transcripts.
    pub fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.base)
            .unwrap_or(p)
            .display()
            .to_string()
    }
}
