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

/// Extensions that would change what a certificate means if they were honoured; a CSR that
/// asks for one is refused (and no profile may tolerate them). basicConstraints cA=TRUE,
/// keyUsage and extendedKeyUsage beyond the profile are refused by their own checks.
pub const MEANINGFUL_EXTENSIONS: &[(&str, &str)] = &[
    ("2.5.29.30", "nameConstraints"),
    ("2.5.29.32", "certificatePolicies"),
    ("2.5.29.33", "policyMappings"),
    ("2.5.29.36", "policyConstraints"),
    ("2.5.29.54", "inhibitAnyPolicy"),
    ("2.5.29.9", "subjectDirectoryAttributes"),
    ("1.3.6.1.5.5.7.1.24", "TLS feature (must-staple)"),
    ("1.3.6.1.5.5.7.48.1.5", "OCSP no-check"),
    ("1.3.6.1.4.1.11129.2.4.3", "certificate transparency poison"),
    ("1.3.6.1.4.1.311.21.10", "Microsoft application policies"),
    ("2.16.840.1.113730.1.1", "Netscape certificate type"),
];

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

#[cfg(feature = "issue")]
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

#[cfg(feature = "issue")]
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
/// - `uri`: `"*"` any; otherwise a URI such as `"spiffe://example.com/ns"`, matched on the parsed
///   URI: the scheme and the authority exactly, the path as a prefix on segment boundaries
///   (`/ns` allows `/ns` and `/ns/...`, not `/nsevil`; an empty path allows every path). Without
///   an authority (`urn:ca:role:`) the rest is a prefix on `:` or `/` boundaries.
/// - `email`: `"*"` any; `"@example.com"` any address at that domain; or an exact address.
/// - `ip`: CIDR networks such as `"10.0.0.0/8"`, `"::/0"`.
///
/// An empty list forbids that name type.
///
/// The subject commonName is a name like the others: it must be one of the certificate's DNS
/// names or IP addresses (a CN-only request gets its CN added as a dNSName or iPAddress SAN,
/// which the patterns above then allow or refuse), or, in profiles without `server_auth`, match
/// `common_name_patterns` (CA/B Forum BR 7.1.4.3 for server certificates).
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
    /// commonName values allowed that are not one of the certificate's DNS names or IP
    /// addresses (a user or service label in a client certificate): `"*"` any, `".suffix"`,
    /// or an exact value (case-insensitive). Profiles with `server_auth` cannot have any.
    /// Default: none.
    #[serde(default)]
    pub common_name_patterns: Vec<String>,
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
    /// Whether certificates under this profile carry the caServerIdentity mark and may name the
    /// CA's reserved endpoints: only [`Profile::ca_server_tls`] sets it; configuration cannot.
    #[serde(skip)]
    ca_server_identity: bool,
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
            ca_server_identity: false,
        }
    }

    /// The profile of the CA server's own TLS certificate (the server's internal
    /// `_server-tls`): serverAuth plus the caServerIdentity mark
    /// ([`crate::ca_identity::CA_SERVER_IDENTITY_URI`]), and the only profile that may name
    /// the CA's reserved endpoints. Never used for a subscriber.
    pub fn ca_server_tls(names: NamePolicy) -> Self {
        let mut p = Profile::client(names);
        p.extended_key_usage = vec![ExtKeyUsage::ServerAuth];
        p.ca_server_identity = true;
        p
    }

    /// Whether this is the CA server's own TLS profile ([`Profile::ca_server_tls`]).
    pub fn is_ca_server_identity(&self) -> bool {
        self.ca_server_identity
    }

    /// Whether certificates under this profile are TLS server certificates.
    pub fn server_auth(&self) -> bool {
        self.extended_key_usage.contains(&ExtKeyUsage::ServerAuth)
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
        for (i, p) in self.names.uri.iter().enumerate() {
            check_uri_pattern(p).map_err(|r| err(&format!("names.uri[{i}]"), r))?;
        }
        if !self.names.common_name_patterns.is_empty() && self.server_auth() {
            return Err(err(
                "names.common_name_patterns",
                "a server_auth profile's commonName must be one of its DNS names or IP \
                 addresses (CA/B Forum BR 7.1.4.3); remove the patterns"
                    .into(),
            ));
        }
        for (i, p) in self.names.common_name_patterns.iter().enumerate() {
            if p.is_empty() || p.chars().any(char::is_control) {
                return Err(err(
                    &format!("names.common_name_patterns[{i}]"),
                    format!("{p:?} is not a pattern"),
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
            if let Some((_, name)) = MEANINGFUL_EXTENSIONS.iter().find(|(o, _)| o == oid) {
                return Err(err(
                    &format!("tolerated_csr_extensions[{i}]"),
                    format!("{oid} ({name}) would change what the certificate means; it cannot be tolerated"),
                ));
            }
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
                // `*`, `*.example.com`, `a*.example.com`: no wildcard form is issued, whatever
                // the policy says (a `*` pattern in a profile means "any name", not "a `*`").
                if d.contains('*') {
                    return bad("wildcard names are not issued");
                }
                if !dns_name_ok(d) {
                    return bad("not a valid DNS name");
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
                if u.contains('*') {
                    return bad("`*` is not issued in a URI (it reads as a wildcard)");
                }
                let lower = u.to_ascii_lowercase();
                // Encoded separators and dots, and encoded `%` (double encoding): a relying
                // party that decodes before matching would see another path (RFC 3986 2.4).
                if ["%2f", "%5c", "%2e", "%25", "%00"]
                    .iter()
                    .any(|e| lower.contains(e))
                {
                    return bad("URI contains a percent-encoded separator, dot or percent sign");
                }
                let Some(parts) = UriParts::split(u) else {
                    return bad("malformed URI");
                };
                // RFC 3986 5.2.4: `.` and `..` segments are resolved away by relying parties.
                if parts.path.split('/').any(|seg| seg == "." || seg == "..") {
                    return bad("URI path contains a dot segment (`.` or `..`)");
                }
                if let Some(authority) = parts.authority {
                    // RFC 3986 3.2.1: userinfo is deprecated, and `host@evil` reads as `evil`.
                    if authority.contains('@') {
                        return bad("URI with userinfo (`user@host`) is not issued");
                    }
                    // RFC 3986 3.2.3: port = *DIGIT.
                    let port_ok = |p: Option<&str>| {
                        p.is_none_or(|p| {
                            p.strip_prefix(':')
                                .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
                        })
                    };
                    let host_ok = match authority.strip_prefix('[') {
                        Some(v6) => v6.split_once(']').is_some_and(|(a, rest)| {
                            a.parse::<std::net::Ipv6Addr>().is_ok()
                                && port_ok((!rest.is_empty()).then_some(rest))
                        }),
                        None => {
                            let (host, port) = match authority.find(':') {
                                Some(i) => (&authority[..i], Some(&authority[i..])),
                                None => (authority, None),
                            };
                            (host.parse::<std::net::Ipv4Addr>().is_ok() || dns_name_ok(host))
                                && port_ok(port)
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
                if e.contains('*') {
                    return bad("`*` is not issued in an email address (it reads as a wildcard)");
                }
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

    #[cfg(feature = "issue")]
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

/// A URI split as RFC 3986 3 does: `scheme ":" ["//" authority] path ["?" query] ["#" fragment]`.
struct UriParts<'a> {
    scheme: &'a str,
    authority: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

impl<'a> UriParts<'a> {
    fn split(u: &'a str) -> Option<UriParts<'a>> {
        let (scheme, rest) = u.split_once(':')?;
        if scheme.is_empty() {
            return None;
        }
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (rest, None),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.strip_prefix("//") {
            Some(after) => match after.find('/') {
                Some(i) => (Some(&after[..i]), &after[i..]),
                None => (Some(after), ""),
            },
            None => (None, rest),
        };
        Some(UriParts {
            scheme,
            authority,
            path,
            query,
            fragment,
        })
    }
}

/// Whether the URI policy pattern `pattern` allows `uri` (both already syntax-checked): scheme
/// and authority equal (case-insensitive), no query or fragment, and the pattern's path a prefix
/// of the URI's on a segment boundary (`/`; also `:` for URIs without an authority, as URNs).
fn uri_matches(pattern: &str, uri: &str) -> bool {
    let (Some(p), Some(u)) = (UriParts::split(pattern), UriParts::split(uri)) else {
        return false;
    };
    if !p.scheme.eq_ignore_ascii_case(u.scheme) || u.query.is_some() || u.fragment.is_some() {
        return false;
    }
    let seps: &[char] = match (p.authority, u.authority) {
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => &['/'],
        (None, None) => &['/', ':'],
        _ => return false,
    };
    if p.path.is_empty() || u.path == p.path {
        return true;
    }
    match u.path.strip_prefix(p.path) {
        Some(rest) => p.path.ends_with(seps) || rest.starts_with(seps),
        None => false,
    }
}

/// A `names.uri` pattern: `*`, or a URI (RFC 3986) without userinfo, query or fragment.
fn check_uri_pattern(p: &str) -> std::result::Result<(), String> {
    if p == "*" {
        return Ok(());
    }
    San::Uri(p.to_string())
        .check_syntax()
        .map_err(|e| format!("{p:?}: {e}"))?;
    match UriParts::split(p) {
        Some(parts) if parts.query.is_none() && parts.fragment.is_none() => Ok(()),
        _ => Err(format!(
            "{p:?}: a URI pattern is a scheme, an authority and a path prefix (no query or fragment)"
        )),
    }
}

impl NamePolicy {
    /// Whether `cn` matches `common_name_patterns`.
    pub fn allows_common_name_label(&self, cn: &str) -> bool {
        self.common_name_patterns.iter().any(|p| {
            p == "*"
                || (p.starts_with('.')
                    && cn.len() > p.len()
                    && cn.to_ascii_lowercase().ends_with(&p.to_ascii_lowercase()))
                || cn.eq_ignore_ascii_case(p)
        })
    }

    /// Whether the profile allows this name.
    pub fn allows(&self, san: &San) -> bool {
        match san {
            San::Dns(d) => self.dns.iter().any(|p| {
                let p = p.to_ascii_lowercase();
                p == "*" || (p.starts_with('.') && d.ends_with(&p) && d.len() > p.len()) || *d == p
            }),
            San::Uri(u) => self.uri.iter().any(|p| p == "*" || uri_matches(p, u)),
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
            "uri:https://10.0.0.1:8443/",
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
            // Wildcards in any form, whatever the policy.
            "dns:*",
            "*",
            "dns:a*.example.com",
            "dns:*.*.example.com",
            "uri:spiffe://example.com/*",
            "email:*@example.com",
            // URIs a relying party could read differently from the policy check.
            "uri:spiffe://example.com@evil.test/ns",
            "uri:https://user:pw@10.0.0.1:8443/",
            "uri:spiffe://example.com/ns/../admin",
            "uri:spiffe://example.com/ns/./x",
            "uri:spiffe://example.com/..",
            "uri:spiffe://example.com/ns%2fadmin",
            "uri:spiffe://example.com/ns%2Fadmin",
            "uri:spiffe://example.com/%2e%2e/admin",
            "uri:spiffe://example.com/ns%5cadmin",
            "uri:spiffe://example.com/ns%252fadmin",
            "uri:spiffe://example.com:evil/ns",
        ] {
            assert!(bad.parse::<San>().is_err(), "{bad} must be refused");
        }
    }

    /// URI policy patterns match the parsed URI: one row per way a string prefix misleads.
    #[test]
    fn uri_policy_matches_parsed_uris() {
        let policy = |p: &[&str]| super::NamePolicy {
            uri: p.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let allows = |p: &[&str], u: &str| {
            let san: San = u.parse().unwrap();
            policy(p).allows(&san)
        };
        let rows: &[(&[&str], &str, bool)] = &[
            (
                &["spiffe://example.com"],
                "uri:spiffe://example.com/ns/prod",
                true,
            ),
            (&["spiffe://example.com"], "uri:spiffe://example.com", true),
            (
                &["spiffe://example.com"],
                "uri:spiffe://example.com.evil/ns",
                false,
            ),
            (
                &["spiffe://example.com"],
                "uri:spiffe://example.com:8443/ns",
                false,
            ),
            (
                &["spiffe://example.com"],
                "uri:SPIFFE://EXAMPLE.com/ns",
                true,
            ),
            (
                &["spiffe://example.com"],
                "uri:https://example.com/ns",
                false,
            ),
            (
                &["spiffe://example.com"],
                "uri:spiffe://example.com/ns?x=1",
                false,
            ),
            (
                &["spiffe://example.com"],
                "uri:spiffe://example.com/ns#frag",
                false,
            ),
            (
                &["spiffe://example.com/ns"],
                "uri:spiffe://example.com/ns",
                true,
            ),
            (
                &["spiffe://example.com/ns"],
                "uri:spiffe://example.com/ns/a",
                true,
            ),
            (
                &["spiffe://example.com/ns"],
                "uri:spiffe://example.com/nsevil",
                false,
            ),
            (
                &["spiffe://example.com/ns"],
                "uri:spiffe://example.com/NS/a",
                false,
            ),
            (
                &["spiffe://example.com/ns/"],
                "uri:spiffe://example.com/ns/a",
                true,
            ),
            (
                &["spiffe://example.com/ns/"],
                "uri:spiffe://example.com/ns",
                false,
            ),
            (
                &["spiffe://example.com/"],
                "uri:spiffe://example.com/a",
                true,
            ),
            (&["urn:ca:role:"], "uri:urn:ca:role:operator", true),
            (&["urn:example:a"], "uri:urn:example:a:b", true),
            (&["urn:example:a"], "uri:urn:example:ab", false),
            (&["urn:example:a"], "uri:spiffe://urn/example:a", false),
            (&["*"], "uri:https://anything.test/x?y", true),
            (&[], "uri:spiffe://example.com/ns", false),
        ];
        for (patterns, uri, expected) in rows {
            assert_eq!(allows(patterns, uri), *expected, "{patterns:?} vs {uri}");
        }
    }

    /// Bad profile fields, one row per class, each naming the field.
    #[test]
    fn profile_validation_table() {
        use super::{ExtKeyUsage, NamePolicy, Profile};
        let rows: Vec<(Profile, &str)> = vec![
            (
                Profile::client(NamePolicy {
                    uri: vec!["spiffe://user@example.com/".into()],
                    ..Default::default()
                }),
                "names.uri[0]",
            ),
            (
                Profile::client(NamePolicy {
                    uri: vec!["spiffe://example.com/ns?x".into()],
                    ..Default::default()
                }),
                "names.uri[0]",
            ),
            (
                {
                    let mut p = Profile::client(NamePolicy {
                        common_name_patterns: vec!["*".into()],
                        ..Default::default()
                    });
                    p.extended_key_usage = vec![ExtKeyUsage::ServerAuth];
                    p
                },
                "names.common_name_patterns",
            ),
            (
                {
                    let mut p = Profile::client(NamePolicy::default());
                    p.tolerated_csr_extensions = vec!["2.5.29.30".into()];
                    p
                },
                "tolerated_csr_extensions[0]",
            ),
        ];
        for (profile, field) in rows {
            match profile.validate("profiles.p") {
                Err(crate::Error::Config { path, .. }) => {
                    assert_eq!(path, format!("profiles.p.{field}"))
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    /// Configuration cannot make a profile that carries the CA server's mark.
    #[test]
    fn configuration_cannot_set_the_ca_server_identity() {
        let with = r#"{"extended_key_usage": ["server_auth"], "ca_server_identity": true}"#;
        assert!(serde_json::from_str::<super::Profile>(with).is_err());
        let p: super::Profile =
            serde_json::from_str(r#"{"extended_key_usage": ["server_auth"]}"#).unwrap();
        assert!(!p.is_ca_server_identity());
    }
}
