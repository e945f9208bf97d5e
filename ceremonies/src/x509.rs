//! Certificate plumbing for the ceremonies: reading input certificates and keys from files,
//! names, the extensions rcgen cannot encode (x509-cert), and the check of every signature
//! after signing. Serials, PEM, key identifiers and validity come from [`ca_core::x509`].

use crate::config::Subject;
use crate::error::Error;
use ca_core::signer::{verify, PublicKey};
use chrono::{DateTime, Utc};
use const_oid::db::rfc5280;
use der::{Decode, Encode};
use std::path::{Path, PathBuf};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AccessDescription, AuthorityInfoAccessSyntax, BasicConstraints, SubjectKeyIdentifier,
};

/// A certificate read from a PEM file, with what the ceremonies need from it.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Where it was read from.
    pub path: PathBuf,
    /// The certificate (DER).
    pub der: Vec<u8>,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256: String,
    /// SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
    /// Subject, RFC 4514 string.
    pub subject: String,
    /// Serial number (big-endian magnitude).
    pub serial: Vec<u8>,
    /// notBefore (start of validity).
    pub not_before: DateTime<Utc>,
    /// notAfter (end of validity).
    pub not_after: DateTime<Utc>,
    /// Subject key identifier, if present.
    pub ski: Option<Vec<u8>>,
    /// basicConstraints cA.
    pub is_ca: bool,
}

fn input<'a>(what: &'static str, path: &'a Path) -> impl Fn(String) -> Error + 'a {
    move |reason| Error::Input {
        what,
        path: path.to_path_buf(),
        reason,
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The first PEM block of a file, which must carry `label` (chain files are not inputs here).
fn pem_block(what: &'static str, path: &Path, bytes: &[u8], label: &str) -> Result<Vec<u8>, Error> {
    ca_core::x509::pem_decode(bytes, label).map_err(|e| input(what, path)(e.to_string()))
}

/// Parse a certificate's DER into [`CertInfo`].
pub fn cert_info(what: &'static str, path: &Path, der: Vec<u8>) -> Result<CertInfo, Error> {
    let bad = input(what, path);
    let cert = x509_cert::Certificate::from_der(&der)
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    let tbs = &cert.tbs_certificate;
    let time = |t| ca_core::x509::time(t).map_err(|_| bad("validity out of range".into()));
    let ski = tbs
        .get::<SubjectKeyIdentifier>()
        .map_err(|e| bad(format!("bad subjectKeyIdentifier: {e}")))?
        .map(|(_, s)| s.0.as_bytes().to_vec());
    let is_ca = tbs
        .get::<BasicConstraints>()
        .map_err(|e| bad(format!("bad basicConstraints: {e}")))?
        .map(|(_, b)| b.ca)
        .unwrap_or(false);
    Ok(CertInfo {
        path: path.to_path_buf(),
        sha256: ca_core::signer::sha256_hex(&der),
        spki_der: tbs
            .subject_public_key_info
            .to_der()
            .map_err(Error::der(what))?,
        subject: tbs.subject.to_string(),
        serial: magnitude(tbs.serial_number.as_bytes()),
        not_before: time(tbs.validity.not_before)?,
        not_after: time(tbs.validity.not_after)?,
        ski,
        is_ca,
        der,
    })
}

/// Strip the sign octet of a DER INTEGER's contents (serials are positive).
fn magnitude(b: &[u8]) -> Vec<u8> {
    let first = b
        .iter()
        .position(|x| *x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    b[first..].to_vec()
}

/// Read a PEM certificate.
pub fn read_cert_pem(what: &'static str, path: &Path) -> Result<CertInfo, Error> {
    let bytes = read(what, path)?;
    let der = pem_block(what, path, &bytes, "CERTIFICATE")?;
    cert_info(what, path, der)
}

/// Read a PEM public key (SubjectPublicKeyInfo), vetted by ca-core (no weak keys).
pub fn read_public_key_pem(what: &'static str, path: &Path) -> Result<PublicKey, Error> {
    let bytes = read(what, path)?;
    let der = pem_block(what, path, &bytes, "PUBLIC KEY")?;
    PublicKey::from_spki(&der).map_err(|e| input(what, path)(e.to_string()))
}

/// PEM text for DER ([`ca_core::x509::pem_encode`], which cannot fail; the `Result` keeps the
/// ceremony steps' `?` chains uniform).
pub fn pem(label: &'static str, der: &[u8]) -> Result<String, Error> {
    Ok(ca_core::x509::pem_encode(label, der))
}

/// The rcgen distinguished name for a configured subject.
///
/// RFC 5280 Appendix A: `X520countryName ::= PrintableString (SIZE (2))`, so the country is a
/// PrintableString; the other attributes are DirectoryStrings, written as UTF8String
/// (RFC 5280 4.1.2.4: "CAs MUST use either the PrintableString or UTF8String encoding").
pub fn distinguished_name(s: &Subject) -> Result<rcgen::DistinguishedName, Error> {
    use rcgen::{DnType, DnValue};
    let mut dn = rcgen::DistinguishedName::new();
    if let Some(v) = &s.country {
        let country = rcgen::string::PrintableString::try_from(v.as_str())
            .map_err(Error::build("subject country (PrintableString)"))?;
        dn.push(DnType::CountryName, DnValue::PrintableString(country));
    }
    if let Some(v) = &s.state {
        dn.push(DnType::StateOrProvinceName, v.as_str());
    }
    if let Some(v) = &s.locality {
        dn.push(DnType::LocalityName, v.as_str());
    }
    if let Some(v) = &s.organization {
        dn.push(DnType::OrganizationName, v.as_str());
    }
    if let Some(v) = &s.organizational_unit {
        dn.push(DnType::OrganizationalUnitName, v.as_str());
    }
    dn.push(DnType::CommonName, s.common_name.as_str());
    Ok(dn)
}

/// The CA's one serial rule ([`ca_core::x509::random_serial`]), for every ceremony certificate.
pub use ca_core::x509::random_serial;

/// The subject key identifier method for a certificate of the key `spki_der`
/// ([`ca_core::x509::key_id_method`]). The authorityKeyIdentifier of what that certificate
/// signs repeats it.
pub fn key_identifier(spki_der: &[u8]) -> Result<rcgen::KeyIdMethod, Error> {
    ca_core::x509::key_id_method(spki_der)
        .map_err(Error::core("deriving the subject key identifier"))
}

/// Authority information access (RFC 5280 4.2.2.1), which rcgen cannot encode.
pub fn authority_info_access(
    ocsp: &[String],
    ca_issuers: &[String],
) -> Result<Option<rcgen::CustomExtension>, Error> {
    let mut descriptions = Vec::new();
    for (method, urls) in [
        (rfc5280::ID_AD_OCSP, ocsp),
        (rfc5280::ID_AD_CA_ISSUERS, ca_issuers),
    ] {
        for url in urls {
            descriptions.push(AccessDescription {
                access_method: method,
                access_location: GeneralName::UniformResourceIdentifier(
                    der::asn1::Ia5String::new(url)
                        .map_err(Error::der("authority information access URL"))?,
                ),
            });
        }
    }
    if descriptions.is_empty() {
        return Ok(None);
    }
    let value = AuthorityInfoAccessSyntax(descriptions)
        .to_der()
        .map_err(Error::der("authority information access"))?;
    Ok(Some(rcgen::CustomExtension::from_oid_content(
        &oid_arcs(&rfc5280::ID_PE_AUTHORITY_INFO_ACCESS),
        value,
    )))
}

/// id-pkix-ocsp-nocheck (RFC 6960 4.2.2.2.1): the extension value is NULL.
pub fn ocsp_nocheck() -> Result<rcgen::CustomExtension, Error> {
    let value = der::asn1::Null
        .to_der()
        .map_err(Error::der("ocsp-nocheck extension"))?;
    Ok(rcgen::CustomExtension::from_oid_content(
        &oid_arcs(&const_oid::db::rfc6960::ID_PKIX_OCSP_NOCHECK),
        value,
    ))
}

fn oid_arcs(oid: &der::asn1::ObjectIdentifier) -> Vec<u64> {
    oid.arcs().map(u64::from).collect()
}

/// Check a freshly signed certificate: it parses, and its signature verifies with the
/// issuer's public key (the safe path: nothing unverified is written).
pub fn check_certificate(what: &'static str, der: &[u8], issuer_spki: &[u8]) -> Result<(), Error> {
    let cert = x509_cert::Certificate::from_der(der).map_err(Error::der(what))?;
    let tbs = cert.tbs_certificate.to_der().map_err(Error::der(what))?;
    let sig = cert.signature.as_bytes().ok_or_else(|| Error::SelfCheck {
        what,
        reason: "signature has unused bits".into(),
    })?;
    verify(issuer_spki, &tbs, sig).map_err(|e| Error::SelfCheck {
        what,
        reason: e.to_string(),
    })
}

/// Parse a hex serial (colons and spaces allowed) into big-endian magnitude bytes.
pub fn parse_serial(s: &str) -> Option<Vec<u8>> {
    let clean: String = s.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    let clean = clean.strip_prefix("0x").unwrap_or(&clean);
    if clean.is_empty() {
        return None;
    }
    let padded = if clean.len() % 2 == 1 {
        format!("0{clean}")
    } else {
        clean.to_string()
    };
    let mut bytes = hex::decode(padded).ok()?;
    while bytes.len() > 1 && bytes[0] == 0 {
        bytes.remove(0);
    }
    (bytes.len() <= 20 && bytes.iter().any(|b| *b != 0)).then_some(bytes)
}

/// Lowercase hex with no separators.
pub fn serial_hex(serial: &[u8]) -> String {
    hex::encode(serial)
}
