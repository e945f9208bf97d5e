//! The CA's own identity: the names of its endpoints, which are never issued to a subscriber,
//! and the mark its TLS certificate carries, which no subscriber certificate can carry.
//!
//! Pinning the root alone is not enough to authenticate the CA server: every certificate the CA
//! issues chains to that root, so a subscriber holding an ordinary server certificate for the
//! CA's host name could answer in its place and collect enrollment tokens. Two controls close
//! this:
//!
//! - [`ReservedNames`]: the DNS names and IP addresses of the CA's endpoints (the server's TLS
//!   names and the hosts of the URLs written into certificates) are refused for every profile
//!   except the server's own (at token creation and at issuance).
//! - [`CA_SERVER_IDENTITY_URI`]: the server's TLS certificate carries this URI SAN (the
//!   caServerIdentity mark). Only a profile built with [`crate::profile::Profile::ca_server_tls`]
//!   (never one read from configuration) writes it; for every other profile it is a reserved
//!   name, so a CSR or token that asks for it is refused.
//!   Clients (the agent, the admin CLI) require it with [`has_ca_server_identity`] before they
//!   send anything.
//!
//! ```
//! use ca_core::ca_identity::ReservedNames;
//! let reserved = ReservedNames::from_names(["dns:CA.example.com.", "ip:10.0.0.5"])?;
//! assert!(reserved.check(&"dns:ca.example.com".parse()?).is_err());
//! assert!(reserved.check(&"dns:svc.example.com".parse()?).is_ok());
//! # Ok::<(), ca_core::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::profile::San;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// The CA server's mark (caServerIdentity): a URI SAN that only the CA server's own TLS
/// certificate carries, a UUID URN (RFC 4122 section 3; UUID
/// 482a1f6c-6887-4998-a961-84147d33e47b, made for this purpose).
///
/// A URI SAN rather than an extended key usage: an EKU needs an OID, and without an OID arc of
/// our own the only OIDs anyone may mint are UUID OIDs (`2.25.<128-bit integer>`, X.667),
/// whose last arc Go's crypto/x509 and pkilint cannot read: Go refuses to parse the whole
/// certificate, so every Go client (EST clients, cert-manager) would fail the handshake. A URI
/// SAN is read by every X.509 parser and ignored by host name verification (RFC 6125 6.4).
pub const CA_SERVER_IDENTITY_URI: &str = "urn:uuid:482a1f6c-6887-4998-a961-84147d33e47b";

/// Whether `uri` is the CA server's mark (compared case-insensitively, as URNs are).
pub fn is_ca_server_identity_uri(uri: &str) -> bool {
    uri.eq_ignore_ascii_case(CA_SERVER_IDENTITY_URI)
}

/// Whether the certificate (DER) carries the URI SAN [`CA_SERVER_IDENTITY_URI`]: the mark of
/// the CA server's own TLS certificate. A certificate that cannot be parsed does not.
pub fn has_ca_server_identity(cert_der: &[u8]) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((rest, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return false;
    };
    if !rest.is_empty() {
        return false;
    }
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .any(|n| matches!(n, GeneralName::URI(u) if is_ca_server_identity_uri(u))),
        _ => false,
    }
}

/// The DNS names and IP addresses of the CA's own endpoints: never issued to a subscriber.
///
/// DNS names compare case-insensitively and without a trailing dot; a wildcard name
/// (`*.example.com`) is refused when it would cover a reserved name (`ca.example.com`); a URI
/// whose host is reserved is refused; a commonName is compared as the DNS name or IP address
/// it reads as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReservedNames {
    dns: BTreeSet<String>,
    ips: BTreeSet<IpAddr>,
}

/// A DNS name in the form reserved names are compared in: lowercase, no trailing dot.
fn normalize_dns(d: &str) -> String {
    d.trim_end_matches('.').to_ascii_lowercase()
}

impl ReservedNames {
    /// No reserved names.
    pub fn none() -> Self {
        Self::default()
    }

    /// From names written as SANs are (`dns:ca.example.com`, `ip:10.0.0.5`, a bare DNS name),
    /// e.g. the server's `[tls] names`.
    pub fn from_names<I, S>(names: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut r = Self::default();
        for n in names {
            r.add_name(n.as_ref())?;
        }
        Ok(r)
    }

    /// Reserve one name (`dns:`/`ip:` prefix or a bare DNS name). Loopback names
    /// (`localhost`, 127.0.0.0/8, ::1) are never reserved: every host has them, a certificate
    /// for them designates no remote server, and services beside the CA (the agent's own
    /// tests, a local nginx) need them.
    pub fn add_name(&mut self, name: &str) -> Result<()> {
        let bad = |reason: &str| Error::Config {
            path: "tls.names".into(),
            reason: format!("{name:?}: {reason}"),
        };
        match name.split_once(':') {
            Some(("ip", v)) => {
                self.insert_ip(v.parse().map_err(|_| bad("not an IP address"))?);
            }
            Some(("dns", v)) => {
                self.insert_dns(v);
            }
            None => {
                self.insert_dns(name);
            }
            Some(_) => {
                if let Ok(ip) = name.parse::<IpAddr>() {
                    self.insert_ip(ip);
                } else {
                    return Err(bad("expected dns:NAME or ip:ADDRESS"));
                }
            }
        }
        Ok(())
    }

    /// Reserve the host of a URL the CA serves (`http://ca.example.com:8080/ocsp`).
    pub fn add_url_host(&mut self, url: &str) -> Result<()> {
        let host = url_host(url).ok_or_else(|| Error::Config {
            path: "urls".into(),
            reason: format!("{url:?} has no host"),
        })?;
        match host.parse::<IpAddr>() {
            Ok(ip) => {
                self.insert_ip(ip);
            }
            Err(_) => {
                self.insert_dns(&host);
            }
        }
        Ok(())
    }

    fn insert_ip(&mut self, ip: IpAddr) {
        if !ip.is_loopback() {
            self.ips.insert(ip);
        }
    }

    fn insert_dns(&mut self, d: &str) {
        let d = normalize_dns(d);
        if d != "localhost" && !d.ends_with(".localhost") {
            self.dns.insert(d);
        }
    }

    /// Whether nothing is reserved.
    pub fn is_empty(&self) -> bool {
        self.dns.is_empty() && self.ips.is_empty()
    }

    /// The reserved names, as SAN strings.
    pub fn names(&self) -> Vec<String> {
        self.dns
            .iter()
            .map(|d| format!("dns:{d}"))
            .chain(self.ips.iter().map(|i| format!("ip:{i}")))
            .collect()
    }

    fn dns_reserved(&self, d: &str) -> bool {
        let d = normalize_dns(d);
        if self.dns.contains(&d) {
            return true;
        }
        // A wildcard covers exactly one label (RFC 6125 6.4.3).
        if let Some(base) = d.strip_prefix("*.") {
            return self
                .dns
                .iter()
                .any(|r| r.split_once('.').is_some_and(|(_, parent)| parent == base));
        }
        false
    }

    /// Refuse a SAN that names one of the CA's endpoints.
    pub fn check(&self, san: &San) -> Result<()> {
        let reserved = match san {
            San::Dns(d) => self.dns_reserved(d),
            San::Ip(ip) => self.ips.contains(ip),
            San::Uri(u) if is_ca_server_identity_uri(u) => true,
            San::Uri(u) => match url_host(u) {
                Some(h) => match h.parse::<IpAddr>() {
                    Ok(ip) => self.ips.contains(&ip),
                    Err(_) => self.dns_reserved(&h),
                },
                None => false,
            },
            San::Email(_) => false,
        };
        if reserved {
            return Err(Error::NameReserved {
                name: san.to_string(),
            });
        }
        Ok(())
    }

    /// Refuse a commonName that reads as one of the CA's endpoint names.
    pub fn check_common_name(&self, cn: &str) -> Result<()> {
        let reserved = match cn.trim().parse::<IpAddr>() {
            Ok(ip) => self.ips.contains(&ip),
            Err(_) => self.dns_reserved(cn.trim()),
        };
        if reserved {
            return Err(Error::NameReserved {
                name: format!("CN={cn}"),
            });
        }
        Ok(())
    }
}

/// The host of an absolute URI with an authority (`scheme://[userinfo@]host[:port]/...`),
/// lowercased, IPv6 brackets removed.
fn url_host(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0,
        None => host_port.split(':').next().unwrap_or_default(),
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_reserved_for_every_profile_but_the_server_s() {
        // Reserved whatever the configured names, in any case.
        let none = ReservedNames::none();
        for uri in [
            CA_SERVER_IDENTITY_URI.to_string(),
            CA_SERVER_IDENTITY_URI.to_ascii_uppercase(),
        ] {
            assert!(matches!(
                none.check(&San::Uri(uri)),
                Err(Error::NameReserved { .. })
            ));
        }
        assert!(none
            .check(&San::Uri(
                "urn:uuid:00000000-6887-4998-a961-84147d33e47b".into()
            ))
            .is_ok());
    }

    #[test]
    fn reserved_names_table() {
        let mut r = ReservedNames::from_names(["dns:CA.Example.com.", "ip:10.0.0.5", "ip:fd00::5"])
            .unwrap();
        r.add_url_host("http://status.example.com:8080/ocsp")
            .unwrap();
        r.add_url_host("http://[fd00::1]:8080/crl").unwrap();
        for bad in [
            "dns:ca.example.com",
            "dns:CA.EXAMPLE.COM",
            "dns:*.example.com",
            "dns:status.example.com",
            "ip:10.0.0.5",
            "ip:fd00::5",
            "ip:fd00::1",
            "uri:https://ca.example.com/x",
            "uri:spiffe://CA.example.com/ns",
            "uri:https://10.0.0.5:8443/",
        ] {
            let san: San = bad.parse().unwrap_or_else(|_| {
                // Wildcards fail SAN syntax; build them directly for this check.
                San::Dns(bad.trim_start_matches("dns:").to_string())
            });
            assert!(
                matches!(r.check(&san), Err(Error::NameReserved { .. })),
                "{bad} must be reserved"
            );
        }
        for ok in [
            "dns:svc.example.com",
            "dns:example.com",
            "dns:ca.example.com.evil",
            "dns:xca.example.com",
            "ip:10.0.0.6",
            "uri:spiffe://example.com/ca.example.com",
            "email:ca@ca.example.com",
        ] {
            assert!(
                r.check(&ok.parse().unwrap()).is_ok(),
                "{ok} is not reserved"
            );
        }
        assert!(r.check(&San::Dns("*.evil.example.com".into())).is_ok());
        // Loopback names are every host's: never reserved.
        let lo = ReservedNames::from_names(["dns:localhost", "ip:127.0.0.1", "ip:::1"]).unwrap();
        assert!(lo.is_empty());
        for cn in ["ca.example.com", "CA.example.com.", "10.0.0.5", "fd00::5"] {
            assert!(r.check_common_name(cn).is_err(), "CN={cn}");
        }
        assert!(r.check_common_name("payments").is_ok());
        assert!(ReservedNames::from_names(["ip:nope"]).is_err());
    }
}
