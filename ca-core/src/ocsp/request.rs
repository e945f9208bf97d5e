//! Parsing OCSP requests (RFC 6960 4.1) from untrusted bytes into typed values.

use super::{serial_magnitude, HashAlg};
use der::Decode;
use std::fmt;
use x509_ocsp::{CertId, OcspRequest};

/// RFC 8954 2.1: `Nonce ::= OCTET STRING(SIZE(1..32))`.
pub(super) const MAX_NONCE_LEN: usize = 32;

/// Why a request is malformed; each maps to the `malformedRequest` response status
/// (RFC 6960 2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OcspRequestError {
    /// Not a DER OCSPRequest (garbage, truncated, trailing bytes, over-long serial).
    Der(String),
    /// `requestList` is empty.
    NoCertificates,
    /// More CertIDs than the responder answers in one request.
    TooManyCertificates {
        /// CertIDs in the request.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// The nonce is empty or longer than 32 bytes (RFC 8954 2.1).
    BadNonce {
        /// Its length.
        len: usize,
    },
    /// The request carries a critical extension this responder does not understand
    /// (RFC 5280 4.2 semantics, applied as RFC 6960 4.4 asks).
    UnsupportedCriticalExtension(String),
}

impl fmt::Display for OcspRequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OcspRequestError::Der(e) => write!(f, "not a DER OCSP request: {e}"),
            OcspRequestError::NoCertificates => {
                f.write_str("OCSP request asks about no certificate")
            }
            OcspRequestError::TooManyCertificates { count, max } => {
                write!(f, "OCSP request asks about {count} certificates; at most {max} are answered per request")
            }
            OcspRequestError::BadNonce { len } => {
                write!(f, "OCSP nonce of {len} bytes (RFC 8954 allows 1 to 32)")
            }
            OcspRequestError::UnsupportedCriticalExtension(oid) => {
                write!(
                    f,
                    "OCSP request carries unsupported critical extension {oid}"
                )
            }
        }
    }
}

impl std::error::Error for OcspRequestError {}

/// One certificate asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedCert {
    /// The CertID exactly as the client sent it (echoed in the response).
    pub cert_id: CertId,
    /// Its hash algorithm, if supported (an unsupported one cannot match any issuer).
    pub hash_alg: Option<HashAlg>,
    /// Serial as big-endian magnitude without leading zeros (the cache key).
    pub serial: Vec<u8>,
}

/// A decoded, checked OCSP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest {
    /// The certificates asked about, in request order (at least one).
    pub certs: Vec<RequestedCert>,
    /// The nonce value (1 to 32 bytes), if the request carries one.
    pub nonce: Option<Vec<u8>>,
}

/// Decode and check an OCSP request. Signatures on requests are not required and not checked
/// (RFC 5019 2.1.2 clients do not sign); unknown non-critical extensions are ignored.
pub fn parse_request(der: &[u8], max_certs: usize) -> Result<ParsedRequest, OcspRequestError> {
    let req = OcspRequest::from_der(der).map_err(|e| OcspRequestError::Der(e.to_string()))?;
    let list = &req.tbs_request.request_list;
    if list.is_empty() {
        return Err(OcspRequestError::NoCertificates);
    }
    if list.len() > max_certs {
        return Err(OcspRequestError::TooManyCertificates {
            count: list.len(),
            max: max_certs,
        });
    }
    let mut nonce = None;
    for ext in req.tbs_request.request_extensions.iter().flatten() {
        if ext.extn_id == const_oid::db::rfc6960::ID_PKIX_OCSP_NONCE {
            nonce = Some(nonce_value(ext.extn_value.as_bytes())?);
        } else if ext.critical {
            return Err(OcspRequestError::UnsupportedCriticalExtension(
                ext.extn_id.to_string(),
            ));
        }
    }
    let mut certs = Vec::with_capacity(list.len());
    for r in list {
        if let Some(ext) = r
            .single_request_extensions
            .iter()
            .flatten()
            .find(|e| e.critical)
        {
            return Err(OcspRequestError::UnsupportedCriticalExtension(
                ext.extn_id.to_string(),
            ));
        }
        certs.push(RequestedCert {
            hash_alg: HashAlg::from_oid(&r.req_cert.hash_algorithm.oid),
            serial: serial_magnitude(r.req_cert.serial_number.as_bytes()).to_vec(),
            cert_id: r.req_cert.clone(),
        });
    }
    Ok(ParsedRequest { certs, nonce })
}

/// The nonce inside the extension value. RFC 8954 2.1 wraps it in an OCTET STRING; some old
/// clients put the raw bytes directly into extnValue, which is accepted too.
fn nonce_value(extn_value: &[u8]) -> Result<Vec<u8>, OcspRequestError> {
    let n = match der::asn1::OctetString::from_der(extn_value) {
        Ok(inner) => inner.as_bytes().to_vec(),
        Err(_) => extn_value.to_vec(),
    };
    if n.is_empty() || n.len() > MAX_NONCE_LEN {
        return Err(OcspRequestError::BadNonce { len: n.len() });
    }
    Ok(n)
}
