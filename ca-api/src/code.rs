//! The stable error codes of the API and the JSON body that carries them (docs/API.md
//! "Errors").
//!
//! The codes are a contract between the server, the agent and the admin CLI: never renumber,
//! rename or reuse one. The server maps its errors onto [`Code`]; a client decodes the body back
//! with [`Code::from_wire`] (a code this version does not know stays available as a string).

use http::StatusCode;
use serde::{Deserialize, Serialize};

/// Stable error codes (docs/API.md "Errors").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Code {
    /// Body is not the expected JSON / parameters invalid.
    BadRequest,
    /// CSR cannot be parsed.
    MalformedCsr,
    /// CSR signature (proof of possession) invalid.
    CsrSignature,
    /// Key too weak or unsupported.
    WeakKey,
    /// CSR asks for an extension the profile does not allow.
    ExtensionNotAllowed,
    /// A requested name is outside the profile or the token/identity binding.
    NameNotAllowed,
    /// Renewal with the current public key.
    KeyReuse,
    /// Enrollment token unknown, expired or already used.
    TokenRejected,
    /// Route needs a client certificate and none was presented.
    ClientCertRequired,
    /// Client certificate is revoked.
    CertRevoked,
    /// Client certificate is expired.
    CertExpired,
    /// Client certificate was not issued by this CA.
    CertUnknown,
    /// Admin role does not allow this route.
    Forbidden,
    /// Unknown serial / route.
    NotFound,
    /// Certificate already revoked.
    AlreadyRevoked,
    /// Body over the limit.
    PayloadTooLarge,
    /// Wrong content type.
    UnsupportedMediaType,
    /// Token bucket empty.
    RateLimited,
    /// HSM not reachable.
    HsmUnavailable,
    /// Store not reachable.
    StoreUnavailable,
    /// The audit log does not verify.
    AuditTampered,
    /// The request took longer than the server's timeout.
    RequestTimeout,
    /// Anything else.
    Internal,
    /// The certificate's lineage is locked (keyCompromise, lineage revocation, or a renewal
    /// attempt from a superseded generation): enroll again with a new token.
    LineageLocked,
    /// Renewal from a generation that has already renewed (a sign of a cloned key).
    GenerationSuperseded,
    /// Administrator and server TLS certificates never renew through the API.
    NotRenewable,
    /// The name is reserved for the CA's own endpoints.
    NameReserved,
    /// A number or duration in the request is outside its allowed range.
    OutOfRange,
    /// Revoking the last valid security-officer certificate is refused.
    LastSecurityOfficer,
    /// A list cursor the server did not hand out for this listing (malformed, or from a
    /// listing with other filters): list again from the start.
    BadCursor,
}

impl Code {
    /// Every code, in the order of the contract table.
    pub const ALL: [Code; 30] = [
        Code::BadRequest,
        Code::MalformedCsr,
        Code::CsrSignature,
        Code::WeakKey,
        Code::ExtensionNotAllowed,
        Code::NameNotAllowed,
        Code::KeyReuse,
        Code::TokenRejected,
        Code::ClientCertRequired,
        Code::CertRevoked,
        Code::CertExpired,
        Code::CertUnknown,
        Code::Forbidden,
        Code::NotFound,
        Code::AlreadyRevoked,
        Code::PayloadTooLarge,
        Code::UnsupportedMediaType,
        Code::RateLimited,
        Code::HsmUnavailable,
        Code::StoreUnavailable,
        Code::AuditTampered,
        Code::RequestTimeout,
        Code::Internal,
        Code::LineageLocked,
        Code::GenerationSuperseded,
        Code::NotRenewable,
        Code::NameReserved,
        Code::OutOfRange,
        Code::LastSecurityOfficer,
        Code::BadCursor,
    ];

    /// The code a wire string names, if this version of the contract defines it.
    pub fn from_wire(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The wire form (`bad_request`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::MalformedCsr => "malformed_csr",
            Code::CsrSignature => "csr_signature",
            Code::WeakKey => "weak_key",
            Code::ExtensionNotAllowed => "extension_not_allowed",
            Code::NameNotAllowed => "name_not_allowed",
            Code::KeyReuse => "key_reuse",
            Code::TokenRejected => "token_rejected",
            Code::ClientCertRequired => "client_cert_required",
            Code::CertRevoked => "cert_revoked",
            Code::CertExpired => "cert_expired",
            Code::CertUnknown => "cert_unknown",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::AlreadyRevoked => "already_revoked",
            Code::PayloadTooLarge => "payload_too_large",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::RateLimited => "rate_limited",
            Code::HsmUnavailable => "hsm_unavailable",
            Code::StoreUnavailable => "store_unavailable",
            Code::AuditTampered => "audit_tampered",
            Code::RequestTimeout => "request_timeout",
            Code::Internal => "internal",
            Code::LineageLocked => "lineage_locked",
            Code::GenerationSuperseded => "generation_superseded",
            Code::NotRenewable => "not_renewable",
            Code::NameReserved => "name_reserved",
            Code::OutOfRange => "out_of_range",
            Code::LastSecurityOfficer => "last_security_officer",
            Code::BadCursor => "bad_cursor",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::BadRequest
            | Code::MalformedCsr
            | Code::CsrSignature
            | Code::WeakKey
            | Code::ExtensionNotAllowed
            | Code::KeyReuse
            | Code::OutOfRange
            | Code::BadCursor => StatusCode::BAD_REQUEST,
            Code::TokenRejected | Code::ClientCertRequired => StatusCode::UNAUTHORIZED,
            Code::NameNotAllowed
            | Code::CertRevoked
            | Code::CertExpired
            | Code::CertUnknown
            | Code::Forbidden
            | Code::LineageLocked
            | Code::GenerationSuperseded
            | Code::NotRenewable
            | Code::NameReserved => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyRevoked | Code::LastSecurityOfficer => StatusCode::CONFLICT,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::HsmUnavailable | Code::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Code::AuditTampered | Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Code {
    type Err = UnknownCode;
    fn from_str(s: &str) -> Result<Self, UnknownCode> {
        Code::from_wire(s).ok_or_else(|| UnknownCode(s.to_string()))
    }
}

/// A code string this version of the contract does not define.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown API error code {0:?}")]
pub struct UnknownCode(pub String);

/// The JSON body of an error answer (docs/API.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The stable code ([`Code::as_str`]).
    pub code: String,
    /// A message for people; never internal details.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_wire_form_and_serde() {
        for c in Code::ALL {
            assert_eq!(Code::from_wire(c.as_str()), Some(c));
            assert_eq!(c.as_str().parse::<Code>(), Ok(c));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<Code>(&json).unwrap(), c);
        }
        assert_eq!(Code::from_wire("http_502"), None);
        assert!("nope".parse::<Code>().is_err());
    }

    /// The contract table (docs/API.md "Errors"): code, status. A change here is a breaking
    /// change for every deployed agent.
    #[test]
    fn codes_and_statuses_are_the_documented_ones() {
        let table: &[(&str, u16)] = &[
            ("bad_request", 400),
            ("malformed_csr", 400),
            ("csr_signature", 400),
            ("weak_key", 400),
            ("extension_not_allowed", 400),
            ("name_not_allowed", 403),
            ("key_reuse", 400),
            ("token_rejected", 401),
            ("client_cert_required", 401),
            ("cert_revoked", 403),
            ("cert_expired", 403),
            ("cert_unknown", 403),
            ("forbidden", 403),
            ("not_found", 404),
            ("already_revoked", 409),
            ("payload_too_large", 413),
            ("unsupported_media_type", 415),
            ("rate_limited", 429),
            ("hsm_unavailable", 503),
            ("store_unavailable", 503),
            ("audit_tampered", 500),
            ("request_timeout", 408),
            ("internal", 500),
            ("lineage_locked", 403),
            ("generation_superseded", 403),
            ("not_renewable", 403),
            ("name_reserved", 403),
            ("out_of_range", 400),
            ("last_security_officer", 409),
            ("bad_cursor", 400),
        ];
        assert_eq!(table.len(), Code::ALL.len());
        for (wire, status) in table {
            let c = Code::from_wire(wire).unwrap();
            assert_eq!(c.status().as_u16(), *status, "{wire}");
        }
    }
}
