//! PKCS#10 certificate requests, parsed at the edge into a typed [`CsrRequest`].
//!
//! Parsing checks what does not depend on policy: DER well-formedness (no trailing bytes,
//! bounded size), the self-signature (proof of possession), that the key is not weak, and that
//! names are syntactically valid. Which names and extensions are allowed is the profile's
//! business ([`crate::issuance`]).

use crate::error::{Error, Result};
use crate::profile::{ExtKeyUsage, KeyUsage, San};
use crate::signer::PublicKey;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// Largest CSR accepted (DER bytes). Real CSRs are under 4 KiB even with RSA-8192.
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// What a CSR asks for, after parsing and proof-of-possession check.
#[derive(Clone, Debug)]
pub struct CsrRequest {
    /// The vetted public key.
    pub public_key: PublicKey,
    /// Subject commonName, if any.
    pub common_name: Option<String>,
    /// Subject attributes other than CN (they are not copied into certificates).
    pub other_subject_attributes: Vec<String>,
    /// Requested SANs (syntax-checked).
    pub sans: Vec<San>,
    /// Requested key usage bits we understand, if the CSR had a KU extension.
    pub key_usage: Option<Vec<KeyUsage>>,
    /// Whether the requested KU had bits beyond those we issue.
    pub key_usage_other: bool,
    /// Requested EKUs we understand, if the CSR had an EKU extension.
    pub extended_key_usage: Option<Vec<ExtKeyUsage>>,
    /// Requested EKUs beyond client/server auth (OIDs).
    pub extended_key_usage_other: Vec<String>,
    /// Whether the CSR asked for CA:TRUE.
    pub requests_ca: bool,
    /// OIDs of requested extensions other than SAN, KU, EKU, basicConstraints and those in
    /// [`IGNORED_EXTENSIONS`].
    pub other_extensions: Vec<String>,
    /// OIDs of requested extensions that were ignored ([`IGNORED_EXTENSIONS`]).
    pub ignored_extensions: Vec<String>,
}

/// Extensions a CSR may ask for that the CA ignores, as Boulder and step-ca do: values the CA
/// computes itself (key identifiers, its own URLs) and descriptions that change nothing about
/// what the certificate allows. JDK keytool, Go, Bouncy Castle, Windows certreq and OpenSSL
/// put some of these in CSRs by default. Nothing from a CSR is ever copied into a certificate
/// but its names; everything else comes from the profile.
pub const IGNORED_EXTENSIONS: &[(&str, &str)] = &[
    (
        "2.5.29.14",
        "subjectKeyIdentifier (computed from the key, RFC 5280 4.2.1.2)",
    ),
    (
        "2.5.29.35",
        "authorityKeyIdentifier (the CA's, RFC 5280 4.2.1.1)",
    ),
    ("2.5.29.31", "cRLDistributionPoints (the CA's own)"),
    ("2.5.29.46", "freshestCRL (the CA's own)"),
    ("1.3.6.1.5.5.7.1.1", "authorityInfoAccess (the CA's own)"),
    ("1.3.6.1.5.5.7.1.11", "subjectInfoAccess"),
    (
        "1.2.840.113549.1.9.15",
        "S/MIME capabilities (Windows certreq)",
    ),
    (
        "1.3.6.1.4.1.311.20.2",
        "Microsoft certificate template name (certreq)",
    ),
    (
        "1.3.6.1.4.1.311.21.7",
        "Microsoft certificate template (certreq)",
    ),
    ("2.16.840.1.113730.1.13", "Netscape comment"),
];

pub use crate::profile::MEANINGFUL_EXTENSIONS;

/// Parse a PEM (`-----BEGIN CERTIFICATE REQUEST-----`) or DER CSR.
pub fn parse_pem_or_der(input: &[u8]) -> Result<CsrRequest> {
    let trimmed = input.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(trimmed)
            .map_err(|_| Error::MalformedCsr("PEM is not UTF-8".into()))?;
        let (label, der) = der::pem::decode_vec(text.trim().as_bytes())
            .map_err(|e| Error::MalformedCsr(format!("bad PEM: {e}")))?;
        if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
            return Err(Error::MalformedCsr(format!(
                "PEM label is {label:?}, expected CERTIFICATE REQUEST"
            )));
        }
        parse_der(&der)
    } else {
        parse_der(input)
    }
}

/// Parse a DER CSR.
pub fn parse_der(der: &[u8]) -> Result<CsrRequest> {
    if der.len() > MAX_CSR_LEN {
        return Err(Error::MalformedCsr(format!(
            "{} bytes; the limit is {MAX_CSR_LEN}",
            der.len()
        )));
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| Error::MalformedCsr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Error::MalformedCsr(format!(
            "{} trailing bytes after the CSR",
            rest.len()
        )));
    }
    let info = &csr.certification_request_info;
    // Weak keys are refused before spending effort on the signature.
    let public_key = PublicKey::from_spki(info.subject_pki.raw)?;
    csr.verify_signature().map_err(|_| Error::CsrSignature)?;

    let mut common_name = None;
    let mut other_subject_attributes = Vec::new();
    for attr in info.subject.iter_attributes() {
        if attr.attr_type() == &x509_parser::oid_registry::OID_X509_COMMON_NAME {
            let cn = attr
                .as_str()
                .map_err(|_| Error::MalformedCsr("commonName is not a string".into()))?;
            if common_name.replace(cn.to_string()).is_some() {
                return Err(Error::MalformedCsr("more than one commonName".into()));
            }
        } else {
            other_subject_attributes.push(attr.attr_type().to_id_string());
        }
    }
    if let Some(cn) = &common_name {
        // RFC 5280 ub-common-name = 64.
        if cn.is_empty() || cn.chars().count() > 64 || cn.chars().any(char::is_control) {
            return Err(Error::NameNotAllowed {
                name: cn.clone(),
                reason: "commonName must be 1-64 printable characters".into(),
            });
        }
    }

    let mut req = CsrRequest {
        public_key,
        common_name,
        other_subject_attributes,
        sans: Vec::new(),
        key_usage: None,
        key_usage_other: false,
        extended_key_usage: None,
        extended_key_usage_other: Vec::new(),
        requests_ca: false,
        other_extensions: Vec::new(),
        ignored_extensions: Vec::new(),
    };
    let mut seen = std::collections::BTreeSet::new();
    for attr in info.iter_attributes() {
        match attr.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(ext_req) => {
                for ext in &ext_req.extensions {
                    // RFC 5280 4.2: an extension appears at most once.
                    if !seen.insert(ext.oid.as_bytes().to_vec()) {
                        return Err(Error::MalformedCsr(format!(
                            "extension {} requested twice",
                            ext.oid.to_id_string()
                        )));
                    }
                    classify_extension(&mut req, ext)?;
                }
            }
            // challengePassword and others carry nothing we issue from.
            ParsedCriAttribute::ChallengePassword(_) | ParsedCriAttribute::UnsupportedAttribute => {
            }
        }
    }
    Ok(req)
}

fn classify_extension(
    req: &mut CsrRequest,
    ext: &x509_parser::extensions::X509Extension<'_>,
) -> Result<()> {
    match ext.parsed_extension() {
        ParsedExtension::SubjectAlternativeName(san) => {
            for name in &san.general_names {
                let san = match name {
                    GeneralName::DNSName(d) => San::Dns(d.to_ascii_lowercase()),
                    GeneralName::URI(u) => San::Uri(u.to_string()),
                    GeneralName::RFC822Name(e) => San::Email(e.to_string()),
                    GeneralName::IPAddress(b) => San::Ip(match b.len() {
                        4 => std::net::IpAddr::from(
                            <[u8; 4]>::try_from(*b)
                                .map_err(|_| Error::MalformedCsr("IP SAN".into()))?,
                        ),
                        16 => std::net::IpAddr::from(
                            <[u8; 16]>::try_from(*b)
                                .map_err(|_| Error::MalformedCsr("IP SAN".into()))?,
                        ),
                        _ => {
                            return Err(Error::MalformedCsr(
                                "IP address SAN of wrong length".into(),
                            ))
                        }
                    }),
                    other => {
                        return Err(Error::NameNotAllowed {
                            name: format!("{other:?}"),
                            reason: "unsupported SAN type".into(),
                        });
                    }
                };
                san.check_syntax()?;
                if !req.sans.contains(&san) {
                    req.sans.push(san);
                }
            }
        }
        ParsedExtension::KeyUsage(ku) => {
            let mut v = Vec::new();
            if ku.digital_signature() {
                v.push(KeyUsage::DigitalSignature);
            }
            if ku.key_encipherment() {
                v.push(KeyUsage::KeyEncipherment);
            }
            if ku.key_agreement() {
                v.push(KeyUsage::KeyAgreement);
            }
            req.key_usage_other = ku.non_repudiation()
                || ku.data_encipherment()
                || ku.key_cert_sign()
                || ku.crl_sign()
                || ku.encipher_only()
                || ku.decipher_only();
            req.key_usage = Some(v);
        }
        ParsedExtension::ExtendedKeyUsage(eku) => {
            let mut v = Vec::new();
            if eku.client_auth {
                v.push(ExtKeyUsage::ClientAuth);
            }
            if eku.server_auth {
                v.push(ExtKeyUsage::ServerAuth);
            }
            let flags = [
                (eku.any, "2.5.29.37.0"),
                (eku.code_signing, "1.3.6.1.5.5.7.3.3"),
                (eku.email_protection, "1.3.6.1.5.5.7.3.4"),
                (eku.time_stamping, "1.3.6.1.5.5.7.3.8"),
                (eku.ocsp_signing, "1.3.6.1.5.5.7.3.9"),
            ];
            req.extended_key_usage_other = flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, o)| o.to_string())
                .collect();
            req.extended_key_usage_other
                .extend(eku.other.iter().map(|o| o.to_id_string()));
            req.extended_key_usage = Some(v);
        }
        ParsedExtension::BasicConstraints(bc) => req.requests_ca = bc.ca,
        ParsedExtension::ParseError { error } => {
            return Err(Error::MalformedCsr(format!(
                "extension {}: {error}",
                ext.oid.to_id_string()
            )));
        }
        _ => {
            let oid = ext.oid.to_id_string();
            if IGNORED_EXTENSIONS.iter().any(|(o, _)| *o == oid) {
                req.ignored_extensions.push(oid);
            } else {
                req.other_extensions.push(oid);
            }
        }
    }
    Ok(())
}
