//! Reading certificates: serial, validity, identity, OCSP URL; chain verification to the pinned
//! root; key/certificate match; the renewal point.

use crate::error::{Error, Result};
use crate::keys::PrivateKey;
use ca_core::profile::San;
use chrono::{DateTime, Utc};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// The names a certificate is issued to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// Subject commonName.
    pub common_name: Option<String>,
    /// subjectAltNames, sorted.
    pub sans: Vec<San>,
}

impl Identity {
    /// A new identity; SANs are sorted so identities compare regardless of order.
    pub fn new(common_name: Option<String>, mut sans: Vec<San>) -> Identity {
        sans.sort();
        sans.dedup();
        Identity { common_name, sans }
    }

    /// Whether no name is set.
    pub fn is_empty(&self) -> bool {
        self.common_name.is_none() && self.sans.is_empty()
    }

    /// Whether a certificate for `self` answers a request for `requested`: the same names, or
    /// the same names plus the requested commonName as a SAN (the CA adds a commonName that is
    /// a DNS name or IP address to the SANs when it is not among them, CA/B Forum BR 7.1.4.3).
    pub fn answers(&self, requested: &Identity) -> bool {
        if self == requested {
            return true;
        }
        let Some(cn) = &requested.common_name else {
            return false;
        };
        let as_san = match cn.parse::<std::net::IpAddr>() {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(cn.to_ascii_lowercase()),
        };
        let mut sans = requested.sans.clone();
        sans.push(as_san);
        *self == Identity::new(requested.common_name.clone(), sans)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(cn) = &self.common_name {
            parts.push(format!("CN={cn}"));
        }
        parts.extend(self.sans.iter().map(|s| s.to_string()));
        if parts.is_empty() {
            f.write_str("(no names)")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// What the agent needs to know about a certificate.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// The DER encoding.
    pub der: Vec<u8>,
    /// Serial number, lowercase hex without leading zero bytes.
    pub serial: String,
    /// notBefore.
    pub not_before: DateTime<Utc>,
    /// notAfter.
    pub not_after: DateTime<Utc>,
    /// Subject CN and SANs.
    pub identity: Identity,
    /// subjectPublicKey contents.
    pub public_key_raw: Vec<u8>,
    /// AIA id-ad-ocsp URL (RFC 5280 4.2.2.1).
    pub ocsp_url: Option<String>,
    /// Whether the certificate is self-signed (subject == issuer).
    pub self_issued: bool,
}

impl CertInfo {
    /// Parse a DER certificate. `what` names it in errors.
    pub fn parse(der: &[u8], what: &str) -> Result<CertInfo> {
        let bad = |reason: String| Error::CertParse {
            what: what.to_string(),
            reason,
        };
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
        let ts = |t: x509_parser::time::ASN1Time| {
            DateTime::from_timestamp(t.timestamp(), 0)
                .ok_or_else(|| bad("validity out of range".into()))
        };
        let mut cn = None;
        for attr in cert.subject().iter_common_name() {
            cn = Some(
                attr.as_str()
                    .map_err(|e| bad(format!("commonName: {e}")))?
                    .to_string(),
            );
        }
        let mut sans = Vec::new();
        let mut ocsp_url = None;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        sans.push(match name {
                            GeneralName::DNSName(d) => San::Dns(d.to_ascii_lowercase()),
                            GeneralName::URI(u) => San::Uri(u.to_string()),
                            GeneralName::RFC822Name(m) => San::Email(m.to_string()),
                            GeneralName::IPAddress(ip) => San::Ip(match ip.len() {
                                4 => std::net::IpAddr::from(
                                    <[u8; 4]>::try_from(*ip)
                                        .map_err(|_| bad("bad IPv4 SAN".into()))?,
                                ),
                                16 => std::net::IpAddr::from(
                                    <[u8; 16]>::try_from(*ip)
                                        .map_err(|_| bad("bad IPv6 SAN".into()))?,
                                ),
                                _ => return Err(bad("iPAddress SAN of odd length".into())),
                            }),
                            other => return Err(bad(format!("unsupported SAN {other:?}"))),
                        });
                    }
                }
                ParsedExtension::AuthorityInfoAccess(aia) => {
                    for desc in &aia.accessdescs {
                        // id-ad-ocsp, RFC 5280 4.2.2.1
                        if desc.access_method.to_id_string() == "1.3.6.1.5.5.7.48.1" {
                            if let GeneralName::URI(u) = &desc.access_location {
                                ocsp_url.get_or_insert_with(|| u.to_string());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(CertInfo {
            der: der.to_vec(),
            serial: normalize_serial(&hex::encode(cert.raw_serial())),
            not_before: ts(cert.validity().not_before)?,
            not_after: ts(cert.validity().not_after)?,
            identity: Identity::new(cn, sans),
            public_key_raw: cert.public_key().subject_public_key.data.to_vec(),
            ocsp_url,
            self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
        })
    }

    /// Parse the first certificate of a PEM file.
    pub fn from_pem(pem: &[u8], what: &str) -> Result<CertInfo> {
        let ders = pem_certs(pem, what)?;
        let first = ders.first().ok_or_else(|| Error::CertParse {
            what: what.to_string(),
            reason: "no CERTIFICATE block".into(),
        })?;
        CertInfo::parse(first, what)
    }

    /// Whether `key` is the private key of this certificate.
    pub fn matches_key(&self, key: &PrivateKey) -> bool {
        self.public_key_raw == key.public_key_raw()
    }

    /// Lifetime as notAfter - notBefore.
    pub fn lifetime(&self) -> chrono::Duration {
        self.not_after - self.not_before
    }

    /// When to renew: at `renew_at` of the lifetime, moved earlier by up to `jitter` of the
    /// lifetime. The jitter is drawn from the serial, so it is stable across restarts for one
    /// certificate and spread across a fleet.
    pub fn renewal_point(&self, renew_at: f64, jitter: f64) -> DateTime<Utc> {
        let digest = ca_core::signer::sha256_hex(self.serial.as_bytes());
        let u = u64::from_str_radix(&digest[..12], 16).unwrap_or(0) as f64 / (1u64 << 48) as f64;
        let frac = (renew_at - jitter * u).clamp(0.0, 1.0);
        let ms = (self.lifetime().num_milliseconds() as f64 * frac) as i64;
        self.not_before + chrono::Duration::milliseconds(ms)
    }
}

/// Strip leading zero bytes and lowercase a hex serial, so serials from the API and from DER
/// compare equal.
pub fn normalize_serial(hex: &str) -> String {
    let s = hex.trim().to_ascii_lowercase().replace(':', "");
    let mut t = s.as_str();
    while t.len() > 2 && t.starts_with("00") {
        t = &t[2..];
    }
    t.to_string()
}

/// Every CERTIFICATE block of a PEM text, as DER.
pub fn pem_certs(pem: &[u8], what: &str) -> Result<Vec<Vec<u8>>> {
    CertificateDer::pem_slice_iter(pem)
        .map(|r| r.map(|c| c.to_vec()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::CertParse {
            what: what.to_string(),
            reason: format!("bad PEM: {e}"),
        })
}

/// PEM-encode DER certificates.
pub fn certs_pem(ders: &[Vec<u8>]) -> String {
    ders.iter()
        .map(|d| ca_core::x509::pem("CERTIFICATE", d))
        .collect()
}

/// Find the certificate with SHA-256 fingerprint `pin` (normalised hex) among `certs`.
pub fn find_pinned<'a>(certs: impl IntoIterator<Item = &'a [u8]>, pin: &str) -> Option<Vec<u8>> {
    certs
        .into_iter()
        .find(|c| ca_core::signer::sha256_hex(c) == pin)
        .map(<[u8]>::to_vec)
}

/// Verify that `leaf` chains to the pinned root: the root is taken from `chain` by its
/// fingerprint (`pin`), the other `chain` members serve as intermediates. Accepts a server or a
/// client certificate (RFC 5280 4.2.1.12: EKU, when present, must allow one of them).
pub fn verify_chain(leaf: &[u8], chain: &[Vec<u8>], pin: &str, now: DateTime<Utc>) -> Result<()> {
    let root = find_pinned(chain.iter().map(Vec::as_slice), pin).ok_or_else(|| {
        Error::Verify(format!(
            "the chain the CA returned has no certificate with the pinned fingerprint {pin}"
        ))
    })?;
    let root_der = CertificateDer::from(root.clone());
    let anchor = webpki::anchor_from_trusted_cert(&root_der)
        .map_err(|e| Error::Verify(format!("pinned root is not a usable trust anchor: {e}")))?;
    let intermediates: Vec<CertificateDer<'_>> = chain
        .iter()
        .filter(|c| **c != root)
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let leaf_der = CertificateDer::from(leaf);
    let ee = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| Error::Verify(format!("cannot parse the new certificate: {e}")))?;
    let time =
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.timestamp().max(0) as u64));
    let anchors = [anchor];
    let mut last = None;
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        match ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            time,
            usage,
            None,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Verify(format!(
        "does not chain to the pinned root {pin}: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// Full checks before a certificate from the CA is installed: chains to the pinned root, is
/// for `key`, carries `expected` identity (when given), and is currently valid.
pub fn verify_issued(
    leaf: &CertInfo,
    chain: &[Vec<u8>],
    key: &PrivateKey,
    expected: Option<&Identity>,
    pin: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    if !leaf.matches_key(key) {
        return Err(Error::Verify(format!(
            "certificate {} is not for the key the agent generated",
            leaf.serial
        )));
    }
    if let Some(want) = expected {
        if !leaf.identity.answers(want) {
            return Err(Error::Verify(format!(
                "certificate {} is for [{}], expected [{}]",
                leaf.serial, leaf.identity, want
            )));
        }
    }
    verify_chain(&leaf.der, chain, pin, now)
}
