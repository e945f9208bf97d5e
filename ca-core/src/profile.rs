//! Certificate profiles: what a certificate issued under a name looks like and which names it
//! may carry. Profiles are configuration data (TOML), validated on load.
//!
//! ```toml
//! [profiles.client]
//! validity = "24h"
//! extended_key_usage = ["client_auth"]
//! [profiles.client.names]
//! dns = [".svc.example.com"]
//! uri = ["spiffe://example.com/"]
//! ```

use crate::error::{Error, Result};
use crate::signer::KeyAlgorithm;
use chrono::Duration;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A duration written as `30s`, `15m`, `24h` or `90d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Duration);

impl Span {
    /// Parse `<n><unit>` with unit s, m, h or d.
    pub fn parse(s: &str) -> std::result::Result<Span, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: i64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration like 30s, 15m, 24h or 90d"))?;
        let d = match unit {
            "s" => Duration::try_seconds(n),
            "m" => Duration::try_minutes(n),
            "h" => Duration::try_hours(n),
            "d" => Duration::try_days(n),
            _ => None,
        };
        d.map(Span)
            .ok_or_else(|| format!("{s:?} is not a duration like 30s, 15m, 24h or 90d"))
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0.num_seconds();
        if s % 86400 == 0 && s != 0 {
            write!(f, "{}d", s / 86400)
        } else if s % 3600 == 0 && s != 0 {
            write!(f, "{}h", s / 3600)
        } else if s % 60 == 0 && s != 0 {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Span, D::Error> {
        let s = String::deserialize(d)?;
        Span::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Key usage bits a profile may set (RFC 5280 4.2.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyUsage {
    /// digitalSignature
    DigitalSignature,
    /// keyEncipherment (RSA key transport, TLS 1.2 RSA kx)
    KeyEncipherment,
    /// keyAgreement
    KeyAgreement,
}

impl KeyUsage {
    pub(crate) fn rcgen(self) -> rcgen::KeyUsagePurpose {
        match self {
            KeyUsage::DigitalSignature => rcgen::KeyUsagePurpose::DigitalSignature,
            KeyUsage::KeyEncipherment => rcgen::KeyUsagePurpose::KeyEncipherment,
            KeyUsage::KeyAgreement => rcgen::KeyUsagePurpose::KeyAgreement,
        }
    }
}

/// Extended key usages a profile may set (RFC 5280 4.2.1.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtKeyUsage {
    /// id-kp-clientAuth
    ClientAuth,
    /// id-kp-serverAuth
    ServerAuth,
}

impl ExtKeyUsage {
    pub(crate) fn rcgen(self) -> rcgen::ExtendedKeyUsagePurpose {
        match self {
            ExtKeyUsage::ClientAuth => rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ExtKeyUsage::ServerAuth => rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        }
    }
}

/// Which names certificates under a profile may carry. Each list holds patterns:
/// - `dns`: `"*"` any; `".example.com"` any name below example.com; `"host.example.com"` exactly.
/// - `uri`: `"*"` any; otherwise a prefix such as `"spiffe://example.com/"`.
/// - `email`: `"*"` any; `"@example.com"` any address at that domain; or an exact address.
/// - `ip`: CIDR networks such as `"10.0.0.0/8"`, `"::/0"`.
///
/// An empty list forbids that name type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamePolicy {
    /// DNS name patterns.
    #[serde(default)]
    pub dns: Vec<String>,
    /// URI prefixes.
    #[serde(default)]
    pub uri: Vec<String>,
    /// Email patterns.
    #[serde(default)]
    pub email: Vec<String>,
    /// IP networks (CIDR).
    #[serde(default)]
    pub ip: Vec<String>,
    /// Whether a subject commonName is allowed (default true).
    #[serde(default = "yes")]
    pub common_name: bool,
    /// Maximum number of SANs (default 10).
    #[serde(default = "ten")]
    pub max_sans: usize,
}

fn yes() -> bool {
    true
}
fn ten() -> usize {
    10
}

fn default_validity() -> Span {
    Span(Duration::hours(24))
}
fn default_backdate() -> Span {
    Span(Duration::minutes(5))
}
fn default_ku() -> Vec<KeyUsage> {
    vec![KeyUsage::DigitalSignature]
}
fn default_eku() -> Vec<ExtKeyUsage> {
    vec![ExtKeyUsage::ClientAuth]
}

/// One certificate profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Lifetime of issued certificates (default 24h); always cut at the issuer's notAfter.
    #[serde(default = "default_validity")]
    pub validity: Span,
    /// How far notBefore is back-dated to absorb clock skew (default 5m).
    #[serde(default = "default_backdate")]
    pub backdate: Span,
    /// Key usage (default digital_signature). A certificate carries the bits its subject key
    /// type can use: key_encipherment only for RSA keys (RFC 3279 2.3.1), key_agreement only
    /// for EC keys (RFC 5480 3), neither for Ed25519 (RFC 8410 5).
    #[serde(default = "default_ku")]
    pub key_usage: Vec<KeyUsage>,
    /// Extended key usage (default client_auth).
    #[serde(default = "default_eku")]
    pub extended_key_usage: Vec<ExtKeyUsage>,
    /// Allowed names.
    #[serde(default)]
    pub names: NamePolicy,
    /// Allowed subject key types (default: all that are not weak).
    #[serde(default)]
    pub key_types: Option<Vec<KeyAlgorithm>>,
    /// Whether a renewal may keep the same public key (default false).
    #[serde(default)]
    pub allow_key_reuse: bool,
    /// OIDs of further CSR extensions that are tolerated (and ignored, never copied).
    #[serde(default)]
    pub tolerated_csr_extensions: Vec<String>,
    /// Whether certificates of this profile may renew with themselves (mTLS renewal, EST
    /// re-enroll). True for every configured profile; the server's internal profiles
    /// (administrators, its own TLS certificate) set it false. Not configurable.
    #[serde(skip, default = "renewable_default")]
    pub renewable: bool,
}

fn renewable_default() -> bool {
    true
}

impl Profile {
    /// A client-certificate profile with the defaults and the given name policy.
    pub fn client(names: NamePolicy) -> Self {
        Profile {
            validity: default_validity(),
            backdate: default_backdate(),
            key_usage: default_ku(),
            extended_key_usage: default_eku(),
            names,
            key_types: None,
            allow_key_reuse: false,
            tolerated_csr_extensions: Vec::new(),
            renewable: true,
        }
    }

    /// Check the profile; errors name the field under `path`.
    pub fn validate(&self, path: &str) -> Result<()> {
        let err = |field: &str, reason: String| Error::Config {
            path: format!("{path}.{field}"),
            reason,
        };
        if self.validity.0 <= Duration::zero() {
            return Err(err("validity", "must be positive".into()));
        }
        if self.validity.0 > Duration::days(398) {
            return Err(err(
                "validity",
                "longer than 398 days; short-lived certificates are the point".into(),
            ));
        }
        if self.backdate.0 < Duration::zero() || self.backdate.0 > Duration::hours(1) {
            return Err(err("backdate", "must be between 0s and 1h".into()));
        }
        if self.extended_key_usage.is_empty() {
            return Err(err(
                "extended_key_usage",
                "must name client_auth, server_auth or both".into(),
            ));
        }
        if self.key_usage.is_empty() {
            return Err(err("key_usage", "must not be empty".into()));
        }
        for (i, net) in self.names.ip.iter().enumerate() {
            parse_cidr(net).map_err(|r| err(&format!("names.ip[{i}]"), r))?;
        }
        for (i, p) in self.names.dns.iter().enumerate() {
            if p.is_empty() || p.contains(char::is_whitespace) {
                return Err(err(
                    &format!("names.dns[{i}]"),
                    format!("{p:?} is not a DNS pattern"),
                ));
            }
        }
        for (i, oid) in self.tolerated_csr_extensions.iter().enumerate() {
            oid.parse::<const_oid::ObjectIdentifier>().map_err(|e| {
                err(
                    &format!("tolerated_csr_extensions[{i}]"),
                    format!("{oid:?}: {e}"),
                )
            })?;
        }
        if self.names.max_sans == 0
            && self.names.dns.len()
                + self.names.uri.len()
                + self.names.email.len()
                + self.names.ip.len()
                > 0
        {
            return Err(err(
                "names.max_sans",
                "is 0 but name patterns are configured".into(),
            ));
        }
        Ok(())
    }
}

/// The named profiles of a CA.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Profiles(pub BTreeMap<String, Profile>);

impl Profiles {
    /// Look up a profile.
    pub fn get(&self, name: &str) -> Result<&Profile> {
        self.0
            .get(name)
            .ok_or_else(|| Error::UnknownProfile(name.to_string()))
    }

    /// Validate every profile (`profiles.<name>.<field>` in errors).
    pub fn validate(&self) -> Result<()> {
        if self.0.is_empty() {
            return Err(Error::Config {
                path: "profiles".into(),
                reason: "at least one profile is required".into(),
            });
        }
        for (name, p) in &self.0 {
            p.validate(&format!("profiles.{name}"))?;
        }
        Ok(())
    }
}

/// Parse `a.b.c.d/n` or `x::/n`.
pub fn parse_cidr(s: &str) -> std::result::Result<(IpAddr, u8), String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not CIDR (e.g. 10.0.0.0/8)"))?;
    let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?}: bad address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("{s:?}: bad prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!("{s:?}: prefix longer than {max}"));
    }
    Ok((addr, len))
}

fn ip_in(ip: IpAddr, net: (IpAddr, u8)) -> bool {
    match (ip, net.0) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if net.1 == 0 {
                0
            } else {
                u32::MAX << (32 - net.1)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if net.1 == 0 {
                0
            } else {
                u128::MAX << (128 - net.1)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// A subject alternative name, typed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum San {
    /// dNSName (lowercased)
    Dns(String),
    /// uniformResourceIdentifier
    Uri(String),
    /// iPAddress
    Ip(IpAddr),
    /// rfc822Name
    Email(String),
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Dns(v) => write!(f, "dns:{v}"),
            San::Uri(v) => write!(f, "uri:{v}"),
            San::Ip(v) => write!(f, "ip:{v}"),
            San::Email(v) => write!(f, "email:{v}"),
        }
    }
}

impl std::str::FromStr for San {
    type Err = Error;
    /// `dns:host`, `uri:spiffe://...`, `ip:10.0.0.1`, `email:a@b`. A bare value is a DNS name.
    fn from_str(s: &str) -> Result<San> {
        let bad = |r: &str| Error::NameNotAllowed {
            name: s.to_string(),
            reason: r.to_string(),
        };
        let san = match s.split_once(':') {
            Some(("dns", v)) => San::Dns(v.to_ascii_lowercase()),
            Some(("uri", v)) => San::Uri(v.to_string()),
            Some(("ip", v)) => San::Ip(v.parse().map_err(|_| bad("not an IP address"))?),
            Some(("email", v)) => San::Email(v.to_string()),
            _ if !s.contains(':') => San::Dns(s.to_ascii_lowercase()),
            _ => return Err(bad("expected dns:, uri:, ip: or email: prefix")),
        };
        san.check_syntax()?;
        Ok(san)
    }
}

impl San {
    /// Syntax checks independent of policy (RFC 5280 4.2.1.6, RFC 1034 preferred syntax).
    pub fn check_syntax(&self) -> Result<()> {
        let bad = |r: &str| {
            Err(Error::NameNotAllowed {
                name: self.to_string(),
                reason: r.to_string(),
            })
        };
        match self {
            San::Dns(d) => {
                if d.is_empty() || d.len() > 253 {
                    return bad("DNS name empty or longer than 253 characters");
                }
                for (i, label) in d.split('.').enumerate() {
                    let wildcard = i == 0 && label == "*";
                    if !wildcard
                        && (label.is_empty()
                            || label.len() > 63
                            || label.starts_with('-')
                            || label.ends_with('-')
                            || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                    {
                        return bad("not a valid DNS name");
                    }
                }
                if d.starts_with("*.") {
                    return bad("wildcard names are not issued");
                }
                Ok(())
            }
            San::Uri(u) => {
                // RFC 5280 4.2.1.6: an absolute URI (RFC 3986) with a scheme and a
                // scheme-specific part; one with an authority names its host.
                let Some((scheme, rest)) = u.split_once(':') else {
                    return bad("URI without scheme");
                };
                if !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                    || !scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                    || rest.is_empty()
                {
                    return bad("malformed URI");
                }
                if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return bad("URI contains whitespace");
                }
                if !uri_chars_ok(u) {
                    return bad(
                        "URI contains characters RFC 3986 does not allow (percent-encode them)",
                    );
                }
                if let Some(after) = rest.strip_prefix("//") {
                    let authority = after.split(['/', '?', '#']).next().unwrap_or_default();
                    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                    let host_ok = match host_port.strip_prefix('[') {
                        Some(v6) => v6
                            .split_once(']')
                            .is_some_and(|(a, _)| a.parse::<std::net::Ipv6Addr>().is_ok()),
                        None => {
                            let host = host_port.split(':').next().unwrap_or_default();
                            host.parse::<std::net::Ipv4Addr>().is_ok() || dns_name_ok(host)
                        }
                    };
                    if !host_ok {
                        return bad("a URI with an authority must name a DNS host or an IP address (RFC 5280 4.2.1.6)");
                    }
                }
                Ok(())
            }
            San::Email(e) => {
                // RFC 5280 4.2.1.6: a Mailbox as RFC 2821 4.1.2 defines it. Its Domain is
                // `sub-domain 1*("." sub-domain)`: at least two labels. Quoted local parts and
                // address literals are not issued.
                let Some((local, domain)) = e.rsplit_once('@') else {
                    return bad("malformed email address");
                };
                let atext =
                    |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
                if local.is_empty()
                    || local.len() > 64
                    || local
                        .split('.')
                        .any(|atom| atom.is_empty() || !atom.chars().all(atext))
                {
                    return bad("malformed email address (local part)");
                }
                if !dns_name_ok(domain) || !domain.contains('.') {
                    return bad(
                        "the email domain must be a DNS name of at least two labels (RFC 2821 4.1.2)",
                    );
                }
                Ok(())
            }
            San::Ip(_) => Ok(()),
        }
    }

    pub(crate) fn rcgen(&self) -> Result<rcgen::SanType> {
        let ia5 = |s: &str| {
            rcgen::string::Ia5String::try_from(s.to_string()).map_err(|_| Error::NameNotAllowed {
                name: self.to_string(),
                reason: "not IA5 (ASCII)".into(),
            })
        };
        Ok(match self {
            San::Dns(v) => rcgen::SanType::DnsName(ia5(v)?),
            San::Uri(v) => rcgen::SanType::URI(ia5(v)?),
            San::Email(v) => rcgen::SanType::Rfc822Name(ia5(v)?),
            San::Ip(v) => rcgen::SanType::IpAddress(*v),
        })
    }
}

/// A DNS name in the preferred name syntax (RFC 1034 3.5, RFC 1123 2.1): 1-253 characters,
/// labels of 1-63 letters, digits and hyphens, not starting or ending with a hyphen.
fn dns_name_ok(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Only characters RFC 3986 2 allows in a URI (unreserved, reserved, `%` followed by two hex
/// digits).
fn uri_chars_ok(u: &str) -> bool {
    let b = u.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            match (b.get(i + 1), b.get(i + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i += 3,
                _ => return false,
            }
            continue;
        }
        if !(c.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&c)) {
            return false;
        }
        i += 1;
    }
    true
}

impl NamePolicy {
    /// Whether the profile allows this name.
    pub fn allows(&self, san: &San) -> bool {
        match san {
            San::Dns(d) => self.dns.iter().any(|p| {
                let p = p.to_ascii_lowercase();
                p == "*" || (p.starts_with('.') && d.ends_with(&p) && d.len() > p.len()) || *d == p
            }),
            San::Uri(u) => self
                .uri
                .iter()
                .any(|p| p == "*" || u.starts_with(p.as_str())),
            San::Email(e) => self.email.iter().any(|p| {
                p == "*"
                    || (p.starts_with('@')
                        && e.to_ascii_lowercase().ends_with(&p.to_ascii_lowercase()))
                    || e.eq_ignore_ascii_case(p)
            }),
            San::Ip(ip) => self
                .ip
                .iter()
                .filter_map(|n| parse_cidr(n).ok())
                .any(|n| ip_in(*ip, n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::San;

    /// RFC 5280 4.2.1.6 syntax: one row per class of name.
    #[test]
    fn san_syntax() {
        for ok in [
            "dns:svc1.example.com",
            "dns:localhost",
            "uri:spiffe://example.com/ns/prod/sa/web",
            "uri:spiffe://test/urn:ca:role:security-officer",
            "uri:https://[::1]:8443/x?y=%20#z",
            "uri:https://user@10.0.0.1:8443/",
            "uri:urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
            "email:svc1@example.com",
            "email:first.last+tag@mail.example.com",
            "ip:10.0.0.1",
            "ip:::1",
        ] {
            assert!(ok.parse::<San>().is_ok(), "{ok} must be accepted");
        }
        for bad in [
            "dns:-bad.example.com",
            "dns:under_score.example.com",
            "dns:*.example.com",
            "uri:1http://example.com/",
            "uri:spiffe:",
            "uri:https://exa mple.com/",
            "uri:https://example.com/<script>",
            "uri:https://example.com/%zz",
            "uri:https:///path-without-host",
            "uri:https://bad_host.example.com/",
            "uri:https://[not-v6]/",
            // RFC 2821 4.1.2: Domain = sub-domain 1*("." sub-domain).
            "email:svc1@test",
            "email:@example.com",
            "email:a..b@example.com",
            "email:\"quoted\"@example.com",
            "email:svc1@-example.com",
            "email:svc1@[10.0.0.1]",
        ] {
            assert!(bad.parse::<San>().is_err(), "{bad} must be refused");
        }
    }
}
