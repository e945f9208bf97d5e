//! Validation: a [`Config`] becomes a [`Plan`] only if every field, input file and output path
//! is acceptable. Nothing here touches the HSM; errors name the field path.

use crate::config::{Config, Kind, NameConstraintsSpec, Period, StatusSpec, Subject, Validity};
use crate::error::Error;
use crate::x509::{check_certificate, parse_serial, read_cert_pem, read_public_key_pem, CertInfo};
use ca_core::revocation::{CertStatus, RevocationReason, RevokedEntry};
use ca_core::signer::pkcs11::{find_softhsm_module, PinSource};
use ca_core::signer::{sha256_hex, KeyAlgorithm, PublicKey};
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

/// `root`: checked.
#[derive(Debug)]
pub struct RootTask {
    /// Root token.
    pub token: TokenRef,
    /// Root key label.
    pub key_label: String,
    /// Security officer PIN source.
    pub so_pin: PinSource,
    /// Quorum threshold.
    pub threshold: u8,
    /// (officer, share file) for every share holder.
    pub shares: Vec<(String, PathBuf)>,
    /// Key algorithm.
    pub algorithm: KeyAlgorithm,
    /// Subject.
    pub subject: Subject,
    /// notBefore.
    pub not_before: DateTime<Utc>,
    /// notAfter.
    pub not_after: DateTime<Utc>,
    /// Output certificate (PEM).
    pub certificate: PathBuf,
}

/// `key`: checked.
#[derive(Debug)]
pub struct KeyTask {
    /// Online token.
    pub token: TokenRef,
    /// Online token PIN.
    pub pin: PinSource,
    /// Key label.
    pub key_label: String,
    /// Algorithm.
    pub algorithm: KeyAlgorithm,
    /// Output public key (PEM).
    pub public_key: PathBuf,
    /// The audit checkpoint key to generate too, if configured.
    pub audit: Option<AuditKeyTask>,
}

/// The audit checkpoint key of a `key` ceremony: checked.
#[derive(Debug)]
pub struct AuditKeyTask {
    /// Key label.
    pub key_label: String,
    /// Algorithm.
    pub algorithm: KeyAlgorithm,
    /// Output public key (PEM).
    pub public_key: PathBuf,
}

/// `intermediate`: checked.
#[derive(Debug)]
pub struct IntermediateTask {
    /// Root token.
    pub token: TokenRef,
    /// Root key label.
    pub key_label: String,
    /// Root certificate.
    pub root: CertInfo,
    /// Issuing public key.
    pub public_key: PublicKey,
    /// Where it was read from.
    pub public_key_path: PathBuf,
    /// Subject.
    pub subject: Subject,
    /// notBefore.
    pub not_before: DateTime<Utc>,
    /// notAfter.
    pub not_after: DateTime<Utc>,
    /// CRL distribution points.
    pub crl_urls: Vec<String>,
    /// AIA OCSP.
    pub ocsp_urls: Vec<String>,
    /// AIA caIssuers.
    pub ca_issuers_urls: Vec<String>,
    /// Name constraints.
    pub name_constraints: Option<rcgen::NameConstraints>,
    /// Extended key usages.
    pub extended_key_usage: Vec<rcgen::ExtendedKeyUsagePurpose>,
    /// Output certificate (PEM).
    pub certificate: PathBuf,
    /// Output chain (PEM).
    pub chain: Option<PathBuf>,
}

/// `ocsp-signer`: checked.
#[derive(Debug)]
pub struct OcspSignerTask {
    /// Online token.
    pub token: TokenRef,
    /// Online token PIN.
    pub pin: PinSource,
    /// Issuing CA certificate.
    pub issuer: CertInfo,
    /// Issuing key label.
    pub issuing_key_label: String,
    /// OCSP key label.
    pub key_label: String,
    /// OCSP key algorithm.
    pub algorithm: KeyAlgorithm,
    /// Subject.
    pub subject: Subject,
    /// notBefore.
    pub not_before: DateTime<Utc>,
    /// notAfter.
    pub not_after: DateTime<Utc>,
    /// Output certificate (PEM).
    pub certificate: PathBuf,
}

/// `crl`: checked.
#[derive(Debug)]
pub struct CrlTask {
    /// Root token.
    pub token: TokenRef,
    /// Root key label.
    pub key_label: String,
    /// Root certificate.
    pub root: CertInfo,
    /// thisUpdate.
    pub this_update: DateTime<Utc>,
    /// nextUpdate.
    pub next_update: DateTime<Utc>,
    /// Revoked certificates.
    pub revoked: Vec<RevokedEntry>,
    /// CRL number (set from the history by the runner).
    pub number: u64,
    /// Output CRL (DER).
    pub crl: PathBuf,
}

/// `ocsp-response`: checked.
#[derive(Debug)]
pub struct OcspResponseTask {
    /// Root token.
    pub token: TokenRef,
    /// Root key label.
    pub key_label: String,
    /// Root certificate.
    pub root: CertInfo,
    /// The certificate the response is about.
    pub subject_cert: CertInfo,
    /// Its status.
    pub status: CertStatus,
    /// thisUpdate.
    pub this_update: DateTime<Utc>,
    /// nextUpdate.
    pub next_update: DateTime<Utc>,
    /// Output response (DER).
    pub response: PathBuf,
}

/// The work of a ceremony, checked.
#[derive(Debug)]
pub enum Task {
    /// `root`
    Root(RootTask),
    /// `key`
    Key(KeyTask),
    /// `intermediate`
    Intermediate(IntermediateTask),
    /// `ocsp-signer`
    OcspSigner(OcspSignerTask),
    /// `crl`
    Crl(CrlTask),
    /// `ocsp-response`
    OcspResponse(OcspResponseTask),
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
    /// Kind.
    pub kind: Kind,
    /// Title.
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
    /// The work.
    pub task: Task,
}

struct V<'a> {
    file: &'a Path,
    base: &'a Path,
}

impl V<'_> {
    fn err(&self, path: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Config {
            file: self.file.to_path_buf(),
            path: path.into(),
            reason: reason.into(),
        }
    }

    fn path(&self, p: &Path) -> PathBuf {
        self.base.join(p)
    }

    fn non_empty(&self, path: &str, v: &str) -> Result<(), Error> {
        if v.trim().is_empty() {
            return Err(self.err(path, "must not be empty"));
        }
        Ok(())
    }

    fn output(&self, path: &str, p: &Path, seen: &mut Vec<PathBuf>) -> Result<PathBuf, Error> {
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

    fn module(&self, path: &str, module: &Option<PathBuf>) -> Result<PathBuf, Error> {
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

    fn pin(&self, path: &str, pin: &PinSource) -> Result<PinSource, Error> {
        let resolved = match pin {
            PinSource::File(p) => PinSource::File(self.path(p)),
            other => other.clone(),
        };
        // Reading the PIN is not an HSM operation; a missing PIN file is a configuration error.
        resolved.read().map_err(|e| self.err(path, e.to_string()))?;
        Ok(resolved)
    }

    fn subject(&self, path: &str, s: &Subject) -> Result<(), Error> {
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

    fn validity(
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

    fn period(&self, path: &str, p: &Period, max_days: i64) -> Result<Duration, Error> {
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

    fn within_issuer(
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

    fn ca_cert(
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

    fn urls(&self, path: &str, urls: &[String]) -> Result<(), Error> {
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

    fn reason(&self, path: &str, r: &Option<String>) -> Result<RevocationReason, Error> {
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

fn cidr(s: &str) -> Option<rcgen::CidrSubnet> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: std::net::IpAddr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then(|| rcgen::CidrSubnet::from_addr_prefix(addr, prefix))
}

fn name_constraints(
    v: &V<'_>,
    path: &str,
    nc: &NameConstraintsSpec,
) -> Result<rcgen::NameConstraints, Error> {
    use rcgen::GeneralSubtree;
    let dns = |field: &str, list: &[String]| -> Result<Vec<GeneralSubtree>, Error> {
        list.iter()
            .enumerate()
            .map(|(i, d)| {
                let ok = !d.is_empty() && d.is_ascii() && !d.contains(['*', ' ', '/']);
                ok.then(|| GeneralSubtree::DnsName(d.clone()))
                    .ok_or_else(|| {
                        v.err(
                            format!("{path}.{field}[{i}]"),
                            format!("{d:?} is not a DNS name constraint (e.g. \"example.com\")"),
                        )
                    })
            })
            .collect()
    };
    let ips = |field: &str, list: &[String]| -> Result<Vec<GeneralSubtree>, Error> {
        list.iter()
            .enumerate()
            .map(|(i, c)| {
                cidr(c).map(GeneralSubtree::IpAddress).ok_or_else(|| {
                    v.err(
                        format!("{path}.{field}[{i}]"),
                        format!("{c:?} is not a CIDR range (e.g. \"10.0.0.0/8\")"),
                    )
                })
            })
            .collect()
    };
    let mut permitted = dns("permitted_dns", &nc.permitted_dns)?;
    permitted.extend(ips("permitted_ip", &nc.permitted_ip)?);
    for (i, e) in nc.permitted_email.iter().enumerate() {
        if e.is_empty() || !e.is_ascii() || e.contains(' ') {
            return Err(v.err(
                format!("{path}.permitted_email[{i}]"),
                format!("{e:?} is not an email name constraint"),
            ));
        }
        permitted.push(GeneralSubtree::Rfc822Name(e.clone()));
    }
    let mut excluded = dns("excluded_dns", &nc.excluded_dns)?;
    excluded.extend(ips("excluded_ip", &nc.excluded_ip)?);
    if permitted.is_empty() && excluded.is_empty() {
        return Err(v.err(
            path,
            "name constraints with no subtree; remove the section or list permitted/excluded names",
        ));
    }
    Ok(rcgen::NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: excluded,
    })
}

fn eku(
    v: &V<'_>,
    path: &str,
    list: &[String],
) -> Result<Vec<rcgen::ExtendedKeyUsagePurpose>, Error> {
    use rcgen::ExtendedKeyUsagePurpose as E;
    list.iter()
        .enumerate()
        .map(|(i, s)| match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "serverauth" => Ok(E::ServerAuth),
            "clientauth" => Ok(E::ClientAuth),
            "ocspsigning" => Ok(E::OcspSigning),
            "codesigning" => Ok(E::CodeSigning),
            "emailprotection" => Ok(E::EmailProtection),
            "timestamping" => Ok(E::TimeStamping),
            _ => Err(v.err(format!("{path}[{i}]"), format!("unknown extended key usage {s:?} (serverAuth, clientAuth, ocspSigning, ...)"))),
        })
        .collect()
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

        let task = match kind {
            Kind::Root => {
                let (token, t) = root_token.ok_or_else(|| v.err("root_token", "missing"))?;
                let spec = config
                    .root
                    .as_ref()
                    .ok_or_else(|| v.err("root", "missing"))?;
                let so_pin = v.pin(
                    "root_token.so_pin",
                    t.so_pin
                        .as_ref()
                        .ok_or_else(|| v.err("root_token.so_pin", "missing"))?,
                )?;
                let quorum = config.quorum.as_ref().ok_or_else(|| {
                    v.err("quorum", "missing: a root ceremony splits the token PIN among the officers; add [quorum] threshold = m")
                })?;
                let n = shareholders.len();
                if quorum.threshold < 2 {
                    return Err(v.err(
                        "quorum.threshold",
                        "at least 2: with 1 a single officer would hold the whole PIN",
                    ));
                }
                if n > 255 {
                    return Err(v.err("officers", "at most 255 share holders"));
                }
                if quorum.threshold as usize > n {
                    return Err(v.err(
                        "quorum.threshold",
                        format!(
                            "{} shares needed but only {n} officer(s) hold a share (officers[].share); the PIN could never be reassembled",
                            quorum.threshold
                        ),
                    ));
                }
                v.subject("root.subject", &spec.subject)?;
                let (not_before, not_after) = v.validity("root.validity", &spec.validity, start)?;
                Task::Root(RootTask {
                    token,
                    key_label: t.key_label.clone(),
                    so_pin,
                    threshold: quorum.threshold,
                    shares: shareholders,
                    algorithm: spec.algorithm,
                    subject: spec.subject.clone(),
                    not_before,
                    not_after,
                    certificate: v.output("root.certificate", &spec.certificate, &mut outputs)?,
                })
            }
            Kind::Key => {
                let (token, pin) = online_token.ok_or_else(|| v.err("online_token", "missing"))?;
                let spec = config.key.as_ref().ok_or_else(|| v.err("key", "missing"))?;
                v.non_empty("key.key_label", &spec.key_label)?;
                let public_key = v.output("key.public_key", &spec.public_key, &mut outputs)?;
                let audit = match (&spec.audit_key_label, &spec.audit_public_key) {
                    (Some(label), Some(path)) => {
                        v.non_empty("key.audit_key_label", label)?;
                        if *label == spec.key_label {
                            return Err(v.err(
                                "key.audit_key_label",
                                "must differ from key.key_label: audit checkpoints are never signed with the issuing key",
                            ));
                        }
                        Some(AuditKeyTask {
                            key_label: label.clone(),
                            algorithm: spec.audit_algorithm.unwrap_or(spec.algorithm),
                            public_key: v.output("key.audit_public_key", path, &mut outputs)?,
                        })
                    }
                    (None, None) => {
                        if spec.audit_algorithm.is_some() {
                            return Err(v.err(
                                "key.audit_algorithm",
                                "only with key.audit_key_label and key.audit_public_key",
                            ));
                        }
                        None
                    }
                    (Some(_), None) => {
                        return Err(v.err(
                            "key.audit_public_key",
                            "missing: key.audit_key_label and key.audit_public_key go together",
                        ))
                    }
                    (None, Some(_)) => {
                        return Err(v.err(
                            "key.audit_key_label",
                            "missing: key.audit_key_label and key.audit_public_key go together",
                        ))
                    }
                };
                Task::Key(KeyTask {
                    token,
                    pin,
                    key_label: spec.key_label.clone(),
                    algorithm: spec.algorithm,
                    public_key,
                    audit,
                })
            }
            Kind::Intermediate => {
                let (token, t) = root_token.ok_or_else(|| v.err("root_token", "missing"))?;
                let spec = config
                    .intermediate
                    .as_ref()
                    .ok_or_else(|| v.err("intermediate", "missing"))?;
                let root = v.ca_cert(
                    "intermediate.root_certificate",
                    "root certificate",
                    &spec.root_certificate,
                    start,
                )?;
                let public_key_path = v.path(&spec.public_key);
                let public_key = read_public_key_pem("issuing public key", &public_key_path)?;
                if public_key.spki_der() == root.spki_der.as_slice() {
                    return Err(v.err(
                        "intermediate.public_key",
                        "this is the root's own key; give the issuing key from the key ceremony",
                    ));
                }
                v.subject("intermediate.subject", &spec.subject)?;
                let validity = v.validity("intermediate.validity", &spec.validity, start)?;
                v.within_issuer("intermediate.validity", "root certificate", validity, &root)?;
                if spec.crl_urls.is_empty() {
                    return Err(v.err(
                        "intermediate.crl_urls",
                        "at least one URL where the root CRL is published (RFC 5280 4.2.1.13)",
                    ));
                }
                v.urls("intermediate.crl_urls", &spec.crl_urls)?;
                v.urls("intermediate.ocsp_urls", &spec.ocsp_urls)?;
                v.urls("intermediate.ca_issuers_urls", &spec.ca_issuers_urls)?;
                let nc = spec
                    .name_constraints
                    .as_ref()
                    .map(|nc| name_constraints(&v, "intermediate.name_constraints", nc))
                    .transpose()?;
                let extended_key_usage = eku(
                    &v,
                    "intermediate.extended_key_usage",
                    &spec.extended_key_usage,
                )?;
                let certificate =
                    v.output("intermediate.certificate", &spec.certificate, &mut outputs)?;
                let chain = spec
                    .chain
                    .as_ref()
                    .map(|c| v.output("intermediate.chain", c, &mut outputs))
                    .transpose()?;
                Task::Intermediate(IntermediateTask {
                    token,
                    key_label: t.key_label.clone(),
                    root,
                    public_key,
                    public_key_path,
                    subject: spec.subject.clone(),
                    not_before: validity.0,
                    not_after: validity.1,
                    crl_urls: spec.crl_urls.clone(),
                    ocsp_urls: spec.ocsp_urls.clone(),
                    ca_issuers_urls: spec.ca_issuers_urls.clone(),
                    name_constraints: nc,
                    extended_key_usage,
                    certificate,
                    chain,
                })
            }
            Kind::OcspSigner => {
                let (token, pin) = online_token.ok_or_else(|| v.err("online_token", "missing"))?;
                let spec = config
                    .ocsp_signer
                    .as_ref()
                    .ok_or_else(|| v.err("ocsp_signer", "missing"))?;
                let issuer = v.ca_cert(
                    "ocsp_signer.issuer_certificate",
                    "issuing CA certificate",
                    &spec.issuer_certificate,
                    start,
                )?;
                v.non_empty("ocsp_signer.issuing_key_label", &spec.issuing_key_label)?;
                v.non_empty("ocsp_signer.key_label", &spec.key_label)?;
                if spec.key_label == spec.issuing_key_label {
                    return Err(v.err(
                        "ocsp_signer.key_label",
                        "must differ from issuing_key_label: the OCSP signer gets its own key",
                    ));
                }
                v.subject("ocsp_signer.subject", &spec.subject)?;
                let validity = v.validity("ocsp_signer.validity", &spec.validity, start)?;
                if validity.1 - validity.0 > Duration::days(MAX_SHORT_LIVED_DAYS) {
                    return Err(v.err(
                        "ocsp_signer.validity",
                        format!("at most {MAX_SHORT_LIVED_DAYS} days: an ocsp-nocheck certificate cannot be revoked, so it must be short-lived (RFC 6960 4.2.2.2.1)"),
                    ));
                }
                v.within_issuer(
                    "ocsp_signer.validity",
                    "issuing CA certificate",
                    validity,
                    &issuer,
                )?;
                Task::OcspSigner(OcspSignerTask {
                    token,
                    pin,
                    issuer,
                    issuing_key_label: spec.issuing_key_label.clone(),
                    key_label: spec.key_label.clone(),
                    algorithm: spec.algorithm,
                    subject: spec.subject.clone(),
                    not_before: validity.0,
                    not_after: validity.1,
                    certificate: v.output(
                        "ocsp_signer.certificate",
                        &spec.certificate,
                        &mut outputs,
                    )?,
                })
            }
            Kind::Crl => {
                let (token, t) = root_token.ok_or_else(|| v.err("root_token", "missing"))?;
                let spec = config.crl.as_ref().ok_or_else(|| v.err("crl", "missing"))?;
                let root = v.ca_cert(
                    "crl.root_certificate",
                    "root certificate",
                    &spec.root_certificate,
                    start,
                )?;
                let next_update =
                    start + v.period("crl.next_update", &spec.next_update, MAX_SHORT_LIVED_DAYS)?;
                let mut revoked: Vec<RevokedEntry> = Vec::new();
                for (i, r) in spec.revoked.iter().enumerate() {
                    let serial = parse_serial(&r.serial).ok_or_else(|| {
                        v.err(
                            format!("crl.revoked[{i}].serial"),
                            format!(
                                "{:?} is not a certificate serial in hex (1 to 20 bytes)",
                                r.serial
                            ),
                        )
                    })?;
                    if revoked.iter().any(|e| e.serial == serial) {
                        return Err(v.err(format!("crl.revoked[{i}].serial"), "listed twice"));
                    }
                    let revoked_at = r.revoked_at.unwrap_or(start);
                    if revoked_at > start {
                        return Err(v.err(format!("crl.revoked[{i}].revoked_at"), "in the future"));
                    }
                    let reason = v.reason(&format!("crl.revoked[{i}].reason"), &r.reason)?;
                    revoked.push(RevokedEntry {
                        serial,
                        revoked_at: ca_core::clock::truncate(revoked_at),
                        reason,
                    });
                }
                Task::Crl(CrlTask {
                    token,
                    key_label: t.key_label.clone(),
                    root,
                    this_update: start,
                    next_update,
                    revoked,
                    number: 0,
                    crl: v.output("crl.crl", &spec.crl, &mut outputs)?,
                })
            }
            Kind::OcspResponse => {
                let (token, t) = root_token.ok_or_else(|| v.err("root_token", "missing"))?;
                let spec = config
                    .ocsp_response
                    .as_ref()
                    .ok_or_else(|| v.err("ocsp_response", "missing"))?;
                let root = v.ca_cert(
                    "ocsp_response.root_certificate",
                    "root certificate",
                    &spec.root_certificate,
                    start,
                )?;
                let subject_cert =
                    read_cert_pem("intermediate certificate", &v.path(&spec.certificate))?;
                check_certificate(
                    "intermediate certificate",
                    &subject_cert.der,
                    &root.spki_der,
                )
                .map_err(|_| {
                    v.err(
                        "ocsp_response.certificate",
                        format!(
                            "{} was not issued by the root certificate's key",
                            subject_cert.path.display()
                        ),
                    )
                })?;
                // CA/B Forum BR 4.9.10: the status of a subordinate CA is updated at least
                // every twelve months (365 days here), the validity interval counting both
                // thisUpdate and nextUpdate; so nextUpdate is one second before the end of
                // the configured period, and the interval is exactly the period.
                let next_update = start
                    + v.period(
                        "ocsp_response.validity",
                        &spec.validity,
                        ca_core::ocsp::MAX_CA_RESPONSE_VALIDITY_DAYS,
                    )?
                    - Duration::seconds(1);
                if next_update > root.not_after {
                    return Err(v.err(
                        "ocsp_response.validity",
                        format!(
                            "nextUpdate {next_update} is after the root expires ({})",
                            root.not_after
                        ),
                    ));
                }
                let status = match spec.status {
                    StatusSpec::Good => {
                        if spec.reason.is_some() {
                            return Err(
                                v.err("ocsp_response.reason", "only for status = \"revoked\"")
                            );
                        }
                        if spec.revoked_at.is_some() {
                            return Err(
                                v.err("ocsp_response.revoked_at", "only for status = \"revoked\"")
                            );
                        }
                        CertStatus::Good
                    }
                    StatusSpec::Revoked => {
                        let at = spec.revoked_at.unwrap_or(start);
                        if at > start {
                            return Err(v.err("ocsp_response.revoked_at", "in the future"));
                        }
                        CertStatus::Revoked {
                            at: ca_core::clock::truncate(at),
                            reason: v.reason("ocsp_response.reason", &spec.reason)?,
                        }
                    }
                };
                Task::OcspResponse(OcspResponseTask {
                    token,
                    key_label: t.key_label.clone(),
                    root,
                    subject_cert,
                    status,
                    this_update: start,
                    next_update,
                    response: v.output("ocsp_response.response", &spec.response, &mut outputs)?,
                })
            }
        };

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
        match &self.task {
            Task::Intermediate(t) => Some(&t.token),
            Task::Crl(t) => Some(&t.token),
            Task::OcspResponse(t) => Some(&t.token),
            _ => None,
        }
    }

    /// A path relative to the configuration's directory, for display and transcripts.
    pub fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.base)
            .unwrap_or(p)
            .display()
            .to_string()
    }
}
