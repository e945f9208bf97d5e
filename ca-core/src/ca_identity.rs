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
//! - [`ID_KP_CA_SERVER_IDENTITY`]: the server's TLS certificate carries this extended key usage
//!   besides serverAuth. Only a profile built with [`crate::profile::Profile::ca_server_tls`]
//!   (never one read from configuration) writes it, and a CSR that asks for it is refused.
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

/// id-kp-caServerIdentity, `2.25.95923129508261663907735384116149085307`: a UUID OID (ITU-T
/// X.667 / RFC 4122 section 6, UUID 482a1f6c-6887-4998-a961-84147d33e47b). Its last arc does
/// not fit in 64 bits, so it is kept as its encoded form.
pub const ID_KP_CA_SERVER_IDENTITY: &str = "2.25.95923129508261663907735384116149085307";

/// The contents octets of the id-kp-caServerIdentity OBJECT IDENTIFIER (X.690 8.19): `2.25`
/// as 105, then the UUID's 128-bit integer in base 128.
pub const ID_KP_CA_SERVER_IDENTITY_DER: [u8; 20] = [
    0x69, 0x81, 0x90, 0xaa, 0x8f, 0xdb, 0x8d, 0x88, 0xba, 0xa6, 0xb1, 0xa9, 0xb0, 0xe1, 0x82, 0xc7,
    0xe9, 0xcf, 0xc8, 0x7b,
];

/// id-kp-serverAuth (RFC 5280 4.2.1.12), contents octets.
const ID_KP_SERVER_AUTH_DER: [u8; 8] = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// id-kp-clientAuth (RFC 5280 4.2.1.12), contents octets.
const ID_KP_CLIENT_AUTH_DER: [u8; 8] = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Whether the certificate (DER) has the extended key usage id-kp-caServerIdentity: the mark
/// of the CA server's own TLS certificate. A certificate that cannot be parsed does not.
pub fn has_ca_server_identity(cert_der: &[u8]) -> bool {
    let Ok((rest, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return false;
    };
    if !rest.is_empty() {
        return false;
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) => eku
            .value
            .other
            .iter()
            .any(|oid| oid.as_bytes() == ID_KP_CA_SERVER_IDENTITY_DER),
        _ => false,
    }
}

/// The extendedKeyUsage extension of the CA server's TLS certificate (RFC 5280 4.2.1.12,
/// non-critical): the profile's purposes, then id-kp-caServerIdentity. Encoded here because
/// rcgen's `ExtendedKeyUsagePurpose::Other` takes 64-bit arcs.
pub(crate) fn server_tls_eku_extension(
    purposes: &[crate::profile::ExtKeyUsage],
) -> rcgen::CustomExtension {
    use crate::profile::ExtKeyUsage;
    let mut oids: Vec<&[u8]> = purposes
        .iter()
        .map(|p| match p {
            ExtKeyUsage::ServerAuth => &ID_KP_SERVER_AUTH_DER[..],
            ExtKeyUsage::ClientAuth => &ID_KP_CLIENT_AUTH_DER[..],
        })
        .collect();
    oids.push(&ID_KP_CA_SERVER_IDENTITY_DER);
    let mut body = Vec::new();
    for oid in oids {
        // OBJECT IDENTIFIER, short-form length (every OID here is under 128 octets).
        body.push(0x06);
        body.push(oid.len() as u8);
        body.extend_from_slice(oid);
    }
    let mut seq = vec![0x30];
    push_len(&mut seq, body.len());
    seq.extend_from_slice(&body);
    rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 37], seq)
}

/// A DER definite length (X.690 8.1.3).
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
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
    fn marker_oid_is_the_uuid_oid() {
        // X.667: 2.25.<the UUID as one integer>.
        let uuid = 0x482a1f6c_6887_4998_a961_84147d33e47b_u128;
        assert_eq!(
            ID_KP_CA_SERVER_IDENTITY,
            format!("2.25.{uuid}"),
            "dotted form"
        );
        let mut arcs = Vec::new();
        let mut n = uuid;
        loop {
            arcs.push((n & 0x7f) as u8);
            n >>= 7;
            if n == 0 {
                break;
            }
        }
        arcs.reverse();
        let last = arcs.len() - 1;
        for a in &mut arcs[..last] {
            *a |= 0x80;
        }
        let mut expected = vec![2 * 40 + 25];
        expected.extend(arcs);
        assert_eq!(ID_KP_CA_SERVER_IDENTITY_DER.to_vec(), expected);
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
