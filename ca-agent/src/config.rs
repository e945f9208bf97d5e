//! `agent.toml`: which certificates the agent manages and how.
//!
//! Strict: unknown fields are refused, and [`Config::validate`] names the offending field path.
//!
//! ```toml
//! server = "https://ca.internal:8443"
//! root_fingerprint = "3f1c...e9"          # SHA-256 of the root certificate (DER), hex
//! state_dir = "/var/lib/ca-agent"
//!
//! [[certificate]]
//! name = "nginx"
//! cert = "/etc/nginx/tls/server.crt"
//! key = "/etc/nginx/tls/server.key"
//! fullchain = "/etc/nginx/tls/fullchain.pem"
//! key_type = "p256"
//! group = "www-data"
//! key_mode = "0600"
//!
//! [[certificate.reload]]
//! signal = "HUP"
//! pidfile = "/run/nginx.pid"
//!
//! [certificate.probe]
//! address = "127.0.0.1:443"
//! ```

use crate::error::{Error, Result};
use ca_core::profile::Span;
use ca_core::signer::KeyAlgorithm;
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base URL of the CA's HTTPS API, e.g. `https://ca.internal:8443`.
    pub server: String,
    /// SHA-256 fingerprint (hex, colons allowed) of the root certificate to trust. The agent
    /// trusts nothing else: no trust on first use.
    pub root_fingerprint: String,
    /// Where per-certificate state (`<name>.json`) is kept.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Timeout of one HTTP exchange with the CA.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Span,
    /// First retry delay after a failure; doubles with each failure, with jitter.
    #[serde(default = "default_retry_min")]
    pub retry_min: Span,
    /// Longest retry delay.
    #[serde(default = "default_retry_max")]
    pub retry_max: Span,
    /// How often the daemon re-reads every certificate from disk even when nothing is due.
    #[serde(default = "default_check_interval")]
    pub check_interval: Span,
    /// The managed certificates.
    #[serde(rename = "certificate", default)]
    pub certificates: Vec<CertConfig>,
}

/// One managed certificate.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// Short unique name (`[A-Za-z0-9._-]`), used for the state file and in logs.
    pub name: String,
    /// Certificate path (leaf only, PEM).
    pub cert: PathBuf,
    /// Private key path (PKCS#8 PEM).
    pub key: PathBuf,
    /// Optional CA chain path (issuing CA, then root; PEM).
    #[serde(default)]
    pub chain: Option<PathBuf>,
    /// Optional leaf + intermediates path (PEM), what nginx wants as `ssl_certificate`.
    #[serde(default)]
    pub fullchain: Option<PathBuf>,
    /// Where the versioned key/cert pairs live; default `<key dir>/.ca-agent/<name>`.
    #[serde(default)]
    pub store_dir: Option<PathBuf>,
    /// Key algorithm for new keys.
    #[serde(default = "default_key_type")]
    pub key_type: KeyAlgorithm,
    /// File owner (user name or uid); default: unchanged / the agent's user.
    #[serde(default)]
    pub owner: Option<String>,
    /// File group (group name or gid); default: unchanged / the agent's group.
    #[serde(default)]
    pub group: Option<String>,
    /// Mode of the key file, octal string (default `0600`). Only `0600` or stricter (`0400`):
    /// a mode that lets the group or others read the key is refused. The key never inherits the
    /// mode of a file it replaces.
    #[serde(default, deserialize_with = "de_mode")]
    pub key_mode: Option<u32>,
    /// Mode of certificate and chain files, octal string (default `0644`).
    #[serde(default, deserialize_with = "de_mode")]
    pub cert_mode: Option<u32>,
    /// Renew when this fraction of the lifetime has passed (default 2/3).
    #[serde(default = "default_renew_at")]
    pub renew_at: f64,
    /// Spread: the renewal point is drawn (per certificate, stable) from
    /// `[renew_at - jitter, renew_at]` so a fleet does not renew at once (default 0.05).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// Actions run, in order, after a new pair is installed.
    #[serde(default)]
    pub reload: Vec<ReloadConfig>,
    /// Check that the service serves the new certificate after the reload.
    #[serde(default)]
    pub probe: Option<ProbeConfig>,
    /// Keep a DER OCSP response for the current certificate here (nginx `ssl_stapling_file`).
    #[serde(default)]
    pub ocsp_staple: Option<PathBuf>,
    /// OCSP responder URL; default: the certificate's AIA OCSP URL.
    #[serde(default)]
    pub ocsp_url: Option<String>,
    /// File holding a one-time enrollment token, used when the certificate is revoked, expired or
    /// missing. The file is emptied after the token is used.
    #[serde(default)]
    pub reenroll_token_file: Option<PathBuf>,
}

/// A reload action: a signal to the process in a pidfile, or a command.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Signal name (`HUP`, `USR1`, ...), sent to the pid in `pidfile`.
    #[serde(default)]
    pub signal: Option<String>,
    /// Pidfile for `signal`.
    #[serde(default)]
    pub pidfile: Option<PathBuf>,
    /// Command: an argv array (run directly) or a string (run with `/bin/sh -c`).
    #[serde(default)]
    pub command: Option<CommandSpec>,
    /// How long a command may run (default 30s); it is killed after that.
    #[serde(default = "default_reload_timeout")]
    pub timeout: Span,
}

/// A command line.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum CommandSpec {
    /// Run through `/bin/sh -c`.
    Shell(String),
    /// Run directly.
    Argv(Vec<String>),
}

/// Where the service listens, to prove it serves the new certificate.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// `host:port` of the service's TLS listener.
    pub address: String,
    /// SNI name to send (default: none for IP addresses, the host otherwise).
    #[serde(default)]
    pub server_name: Option<String>,
    /// How long to wait for the new serial (default 15s).
    #[serde(default = "default_probe_timeout")]
    pub timeout: Span,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ca-agent")
}
fn span(secs: i64) -> Span {
    Span(chrono::Duration::seconds(secs))
}
fn default_request_timeout() -> Span {
    span(30)
}
fn default_retry_min() -> Span {
    span(5)
}
fn default_retry_max() -> Span {
    span(600)
}
fn default_check_interval() -> Span {
    span(300)
}
fn default_reload_timeout() -> Span {
    span(30)
}
fn default_probe_timeout() -> Span {
    span(15)
}
fn default_key_type() -> KeyAlgorithm {
    KeyAlgorithm::P256
}
fn default_renew_at() -> f64 {
    2.0 / 3.0
}
fn default_jitter() -> f64 {
    0.05
}

fn de_mode<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<u32>, D::Error> {
    let s = String::deserialize(d)?;
    parse_mode(&s).map(Some).map_err(serde::de::Error::custom)
}

/// Parse an octal file mode such as `0640`.
pub fn parse_mode(s: &str) -> std::result::Result<u32, String> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?} is not an octal mode like \"0640\""))?;
    if m > 0o777 {
        return Err(format!(
            "{s:?}: only permission bits (at most 0777) are allowed"
        ));
    }
    Ok(m)
}

/// The most a key file's mode may allow: read and write by its owner.
pub const KEY_MODE_MAX: u32 = 0o600;

/// A private key's mode must let its owner read it and nobody else (nor execute it): `0600`
/// or `0400`.
pub fn check_key_mode(m: u32) -> std::result::Result<(), String> {
    if m & 0o400 == 0 {
        return Err(format!(
            "{m:04o} does not let the owner read the private key; use \"0600\" or \"0400\""
        ));
    }
    if m & !KEY_MODE_MAX != 0 {
        return Err(format!(
            "{m:04o} lets {} the private key; use \"0600\" (or \"0400\") and give the service \
             access through `owner`",
            if m & 0o077 != 0 {
                "the group or others read or use"
            } else {
                "anyone execute"
            }
        ));
    }
    Ok(())
}

/// Turn a span into a std duration (negative spans become zero).
pub fn std_duration(s: Span) -> Duration {
    s.0.to_std().unwrap_or_default()
}

/// Normalise a SHA-256 fingerprint: lowercase hex, colons and spaces removed. `path` names the
/// field in errors.
pub fn normalize_fingerprint(fp: &str, path: &str) -> Result<String> {
    let s: String = fp
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let s = s.strip_prefix("sha256").unwrap_or(&s).to_string();
    if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::Config {
            path: path.into(),
            reason: format!("{fp:?} is not a SHA-256 fingerprint (64 hex digits)"),
        });
    }
    Ok(s)
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        Config::parse(&text).map_err(|e| match e {
            Error::Config { path: p, reason } => Error::Config {
                path: format!("{}: {p}", path.display()),
                reason,
            },
            other => other,
        })
    }

    /// Parse and validate config text.
    pub fn parse(text: &str) -> Result<Config> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| Error::Config {
            path: e
                .span()
                .map(|s| format!("byte {}", s.start))
                .unwrap_or_else(|| "(file)".into()),
            reason: e.message().to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check the values; errors name the field path. Normalises the fingerprint.
    pub fn validate(&mut self) -> Result<()> {
        let err = |path: String, reason: String| Error::Config { path, reason };
        self.root_fingerprint = normalize_fingerprint(&self.root_fingerprint, "root_fingerprint")?;
        let uri: http::Uri = self
            .server
            .parse()
            .map_err(|e| err("server".into(), format!("{:?}: {e}", self.server)))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err(err(
                "server".into(),
                format!("{:?} must be an https:// URL", self.server),
            ));
        }
        for (name, s) in [
            ("request_timeout", self.request_timeout),
            ("retry_min", self.retry_min),
            ("retry_max", self.retry_max),
            ("check_interval", self.check_interval),
        ] {
            if s.0 <= chrono::Duration::zero() {
                return Err(err(name.into(), "must be positive".into()));
            }
        }
        if self.retry_max.0 < self.retry_min.0 {
            return Err(err("retry_max".into(), "is shorter than retry_min".into()));
        }
        if self.certificates.is_empty() {
            return Err(err(
                "certificate".into(),
                "at least one [[certificate]] is required".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in self.certificates.iter().enumerate() {
            let p = |f: &str| format!("certificate[{i}].{f}");
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
                || c.name.starts_with('.')
            {
                return Err(err(
                    p("name"),
                    format!("{:?}: use letters, digits, '.', '_' and '-'", c.name),
                ));
            }
            if !names.insert(c.name.clone()) {
                return Err(err(p("name"), format!("{:?} is used twice", c.name)));
            }
            for (f, path) in [("cert", Some(&c.cert)), ("key", Some(&c.key))]
                .into_iter()
                .chain([
                    ("chain", c.chain.as_ref()),
                    ("fullchain", c.fullchain.as_ref()),
                ])
            {
                if let Some(path) = path {
                    if !path.is_absolute() || path.file_name().is_none() {
                        return Err(err(
                            p(f),
                            format!("{} must be an absolute file path", path.display()),
                        ));
                    }
                }
            }
            if c.cert == c.key {
                return Err(err(p("key"), "must differ from cert".into()));
            }
            if let Some(m) = c.key_mode {
                check_key_mode(m).map_err(|reason| err(p("key_mode"), reason))?;
            }
            if !(0.1..=0.95).contains(&c.renew_at) {
                return Err(err(
                    p("renew_at"),
                    format!("{} must be between 0.1 and 0.95", c.renew_at),
                ));
            }
            if !(0.0..=0.3).contains(&c.jitter) || c.jitter >= c.renew_at {
                return Err(err(
                    p("jitter"),
                    format!("{} must be between 0 and 0.3 and below renew_at", c.jitter),
                ));
            }
            if c.key_type.rsa_bits().is_some() && c.key_type != KeyAlgorithm::Rsa2048 {
                return Err(err(
                    p("key_type"),
                    format!(
                        "{} is not generated by the agent; use p256, p384, ed25519 or rsa2048",
                        c.key_type.name()
                    ),
                ));
            }
            for (j, r) in c.reload.iter().enumerate() {
                let rp = |f: &str| format!("certificate[{i}].reload[{j}].{f}");
                match (&r.signal, &r.pidfile, &r.command) {
                    (Some(sig), Some(_), None) => {
                        crate::reload::parse_signal(sig).map_err(|e| err(rp("signal"), e))?;
                    }
                    (None, None, Some(cmd)) => {
                        if matches!(cmd, CommandSpec::Argv(a) if a.is_empty())
                            || matches!(cmd, CommandSpec::Shell(s) if s.trim().is_empty())
                        {
                            return Err(err(rp("command"), "must not be empty".into()));
                        }
                    }
                    _ => {
                        return Err(err(
                            format!("certificate[{i}].reload[{j}]"),
                            "give either signal + pidfile, or command".into(),
                        ))
                    }
                }
                if r.timeout.0 <= chrono::Duration::zero() {
                    return Err(err(rp("timeout"), "must be positive".into()));
                }
            }
            if let Some(pr) = &c.probe {
                if crate::probe::split_host_port(&pr.address).is_none() {
                    return Err(err(
                        p("probe.address"),
                        format!("{:?} is not host:port", pr.address),
                    ));
                }
                if pr.timeout.0 <= chrono::Duration::zero() {
                    return Err(err(p("probe.timeout"), "must be positive".into()));
                }
            }
            if let Some(u) = &c.ocsp_url {
                if !u.starts_with("http://") {
                    return Err(err(
                        p("ocsp_url"),
                        format!("{u:?} must be an http:// URL (RFC 6960 A.1)"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl CertConfig {
    /// The directory holding this certificate's versioned pairs.
    pub fn store_dir(&self) -> PathBuf {
        match &self.store_dir {
            Some(d) => d.clone(),
            None => self
                .key
                .parent()
                .unwrap_or_else(|| Path::new("/"))
                .join(".ca-agent")
                .join(&self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89";

    fn base(extra: &str) -> String {
        format!(
            "server = \"https://127.0.0.1:8443\"\nroot_fingerprint = \"{FP}\"\n\
             [[certificate]]\nname = \"web\"\ncert = \"/tmp/x/c.pem\"\nkey = \"/tmp/x/k.pem\"\n{extra}"
        )
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(&base("")).unwrap();
        assert_eq!(c.root_fingerprint.len(), 64);
        assert!(!c.root_fingerprint.contains(':'));
        let cert = &c.certificates[0];
        assert_eq!(cert.key_type, KeyAlgorithm::P256);
        assert!((cert.renew_at - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(cert.store_dir(), PathBuf::from("/tmp/x/.ca-agent/web"));
    }

    #[test]
    fn full_config_parses() {
        let c = Config::parse(&base(
            "key_mode = \"0400\"\nkey_type = \"ed25519\"\nocsp_staple = \"/tmp/x/o.der\"\n\
             [[certificate.reload]]\nsignal = \"HUP\"\npidfile = \"/run/nginx.pid\"\n\
             [[certificate.reload]]\ncommand = [\"systemctl\", \"reload\", \"nginx\"]\ntimeout = \"10s\"\n\
             [[certificate.reload]]\ncommand = \"echo hi\"\n\
             [certificate.probe]\naddress = \"127.0.0.1:443\"\n",
        ))
        .unwrap();
        let cert = &c.certificates[0];
        assert_eq!(cert.key_mode, Some(0o400));
        assert_eq!(cert.reload.len(), 3);
        assert!(cert.probe.is_some());
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../examples/agent.toml");
        let c = Config::parse(text).unwrap();
        assert_eq!(c.certificates.len(), 2);
        assert_eq!(c.certificates[0].key_mode, Some(0o600));
        assert!(c.certificates[0].probe.is_some());
    }

    /// One row per class of bad input, each with the field path the error must name.
    #[test]
    fn bad_configs_name_the_field() {
        let rows: &[(&str, &str)] = &[
            ("bogus = 1\n", "byte"),
            ("key_mode = \"0999\"\n", "byte"),
            // A key others (or the group) can read is refused, whatever the reason.
            ("key_mode = \"0640\"\n", "certificate[0].key_mode"),
            ("key_mode = \"0644\"\n", "certificate[0].key_mode"),
            ("key_mode = \"0604\"\n", "certificate[0].key_mode"),
            ("key_mode = \"0660\"\n", "certificate[0].key_mode"),
            ("key_mode = \"0700\"\n", "certificate[0].key_mode"),
            ("key_mode = \"0200\"\n", "certificate[0].key_mode"),
            ("key_mode = \"0000\"\n", "certificate[0].key_mode"),
            ("renew_at = 0.99\n", "certificate[0].renew_at"),
            ("jitter = 0.5\n", "certificate[0].jitter"),
            ("key_type = \"rsa4096\"\n", "certificate[0].key_type"),
            (
                "[[certificate.reload]]\nsignal = \"HUP\"\n",
                "certificate[0].reload[0]",
            ),
            (
                "[[certificate.reload]]\nsignal = \"NOPE\"\npidfile = \"/x\"\n",
                "certificate[0].reload[0].signal",
            ),
            (
                "[certificate.probe]\naddress = \"nohost\"\n",
                "certificate[0].probe.address",
            ),
            ("ocsp_url = \"https://x\"\n", "certificate[0].ocsp_url"),
        ];
        for (extra, want) in rows {
            let e = Config::parse(&base(extra)).unwrap_err();
            match e {
                Error::Config { path, .. } => assert!(path.starts_with(want), "{extra}: {path}"),
                other => panic!("{extra}: {other}"),
            }
        }
        let e = Config::parse(&base("").replace("https://", "http://")).unwrap_err();
        assert!(matches!(e, Error::Config { path, .. } if path == "server"));
        let e = Config::parse(&base("").replace(FP, "abc")).unwrap_err();
        assert!(matches!(e, Error::Config { path, .. } if path == "root_fingerprint"));
        let e = Config::parse(&base("").replace("/tmp/x/k.pem", "rel/k.pem")).unwrap_err();
        assert!(matches!(e, Error::Config { path, .. } if path == "certificate[0].key"));
    }
}
