//! The one error type of the API: a stable machine-readable code, a human message, an HTTP
//! status. Internal details stay in the server log (axum's error-handling example).
//!
//! The codes are a contract with the agent and the admin CLI (docs/API.md): never renumber or
//! reuse one.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
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
}

impl Code {
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
            | Code::OutOfRange => StatusCode::BAD_REQUEST,
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

/// An API error: code, message for the client, and optionally a Retry-After.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Stable code.
    pub code: Code,
    /// Human message (never internal details for `internal`).
    pub message: String,
    /// Seconds for the Retry-After header (429, 503).
    pub retry_after: Option<u64>,
    /// Extra `WWW-Authenticate` challenge (EST, RFC 7030 3.2.3).
    pub www_authenticate: Option<&'static str>,
}

/// The JSON body of an error (docs/API.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code.
    pub code: String,
    /// Human message.
    pub message: String,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
            www_authenticate: None,
        }
    }

    /// `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, message)
    }

    /// `internal`, logging the cause server-side only.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            Code::Internal,
            "internal error; the server log has the details",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// The API code a core error maps to (for audit records).
    pub fn from_core_code(e: &ca_core::Error) -> &'static str {
        core_code(e).as_str()
    }
}

fn core_code(e: &ca_core::Error) -> Code {
    use ca_core::Error as E;
    match e {
        E::MalformedCsr(_) => Code::MalformedCsr,
        E::CsrSignature => Code::CsrSignature,
        E::WeakKey(_) | E::UnsupportedAlgorithm(_) => Code::WeakKey,
        E::ExtensionNotAllowed { .. } => Code::ExtensionNotAllowed,
        E::NameNotAllowed { .. } => Code::NameNotAllowed,
        E::KeyReuse => Code::KeyReuse,
        E::LineageLocked { .. } => Code::LineageLocked,
        E::GenerationSuperseded { .. } => Code::GenerationSuperseded,
        E::NotRenewable { .. } => Code::NotRenewable,
        E::NameReserved { .. } => Code::NameReserved,
        E::UnknownProfile(_) | E::ReasonNotAllowed(..) => Code::BadRequest,
        E::TokenRejected(_) => Code::TokenRejected,
        E::CertNotFound(_) => Code::NotFound,
        E::AlreadyRevoked { .. } => Code::AlreadyRevoked,
        E::AuditChain { .. } => Code::AuditTampered,
        E::HsmUnavailable { .. }
        | E::TokenNotFound { .. }
        | E::KeyNotFound { .. }
        | E::BadPin { .. }
        | E::PinSource { .. }
        | E::Hsm { .. }
        | E::HsmData { .. }
        | E::LoginBackoff { .. }
        | E::RevocationPending { .. } => Code::HsmUnavailable,
        E::Store { .. } => Code::StoreUnavailable,
        _ => Code::Internal,
    }
}

impl From<ca_core::Error> for ApiError {
    fn from(e: ca_core::Error) -> Self {
        let code = core_code(&e);
        match code {
            Code::Internal => ApiError::internal(&e),
            Code::HsmUnavailable => {
                tracing::error!(error = %e, "HSM failure");
                let message = if matches!(e, ca_core::Error::RevocationPending { .. }) {
                    "the revocation is stored, but the HSM did not sign its OCSP answer: the \
                     certificate is answered tryLater (never good) until it does, and OCSP and the \
                     CRL catch up within a minute of the HSM's return; repeating the revocation \
                     then signs it at once"
                } else {
                    "the HSM is not reachable; retry later"
                };
                let mut err = ApiError::new(code, message);
                err.retry_after = Some(5);
                err
            }
            Code::StoreUnavailable => {
                tracing::error!(error = %e, "store failure");
                let mut err = ApiError::new(code, "the store is not reachable; retry later");
                err.retry_after = Some(5);
                err
            }
            Code::TokenRejected => {
                ApiError::new(code, "enrollment token unknown, expired or already used")
            }
            _ => ApiError::new(code, e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.as_str().to_string(),
            message: self.message,
        };
        let mut resp = (self.code.status(), axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(challenge) = self.www_authenticate {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        resp.extensions_mut().insert(self.code);
        resp
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_errors_map_to_stable_codes() {
        let cases: Vec<(ca_core::Error, &str, u16)> = vec![
            (
                ca_core::Error::MalformedCsr("x".into()),
                "malformed_csr",
                400,
            ),
            (ca_core::Error::CsrSignature, "csr_signature", 400),
            (ca_core::Error::WeakKey("x".into()), "weak_key", 400),
            (ca_core::Error::KeyReuse, "key_reuse", 400),
            (
                ca_core::Error::TokenRejected("token already used"),
                "token_rejected",
                401,
            ),
            (ca_core::Error::CertNotFound("00".into()), "not_found", 404),
            (
                ca_core::Error::ReasonNotAllowed(
                    ca_core::revocation::RevocationReason::RemoveFromCrl,
                    "x",
                ),
                "bad_request",
                400,
            ),
            (
                ca_core::Error::AuditChain {
                    seq: 2,
                    reason: "x".into(),
                },
                "audit_tampered",
                500,
            ),
            (ca_core::Error::SignatureCheckFailed, "internal", 500),
        ];
        for (e, code, status) in cases {
            let api = ApiError::from(e);
            assert_eq!(
                (api.code.as_str(), api.code.status().as_u16()),
                (code, status)
            );
        }
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let api = ApiError::from(ca_core::Error::Corrupt("secret path /var/x".into()));
        assert_eq!(api.code, Code::Internal);
        assert!(!api.message.contains("/var/x"));
    }
}
