//! The one error type of the API: a stable machine-readable code, a human message, an HTTP
//! status. Internal details stay in the server log (axum's error-handling example).
//!
//! The codes ([`Code`]) and the error body ([`ErrorBody`]) are the contract crate's
//! ([`ca_api`]): a contract with the agent and the admin CLI (docs/API.md), never renumbered or
//! reused.

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

pub use ca_api::{Code, ErrorBody};

/// `Retry-After` (seconds) of a `503 store_unavailable`: a restarting database or a
/// failover takes a few seconds.
pub const STORE_RETRY_AFTER_SECS: u64 = 2;

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
        E::BadCursor(_) => Code::BadCursor,
        E::HsmUnavailable { .. }
        | E::TokenNotFound { .. }
        | E::KeyNotFound { .. }
        | E::BadPin { .. }
        | E::PinSource { .. }
        | E::Hsm { .. }
        | E::HsmData { .. }
        | E::LoginBackoff { .. }
        | E::SignerNotReady { .. }
        | E::RevocationPending { .. } => Code::HsmUnavailable,
        // Unreachable, restarting, read-only or out of disk: retry later. Any other store
        // error (a corrupt record, a failed task) is `internal`.
        E::StoreUnavailable { .. } => Code::StoreUnavailable,
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
                let signer_unusable = matches!(
                    &e,
                    ca_core::Error::RevocationPending { source, .. }
                        if matches!(**source, ca_core::Error::OcspSignerUnusable { .. })
                );
                let message = if signer_unusable {
                    "the revocation is stored and the CRL will list it, but the OCSP responder \
                     certificate is expired or revoked, so its OCSP answer cannot be signed (the \
                     certificate is answered tryLater, never good): rotate the OCSP responder \
                     certificate (README \"Rotating the OCSP responder certificate\")"
                } else if matches!(e, ca_core::Error::RevocationPending { .. }) {
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
                tracing::error!(error = %e, "store unavailable");
                let mut err = ApiError::new(
                    code,
                    "the store cannot write now (database unreachable, restarting or \
                     read-only, or the disk is full); nothing was stored; retry later",
                );
                err.retry_after = Some(STORE_RETRY_AFTER_SECS);
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
            (
                ca_core::Error::StoreUnavailable {
                    op: "insert certificate",
                    source: "connection closed".into(),
                },
                "store_unavailable",
                503,
            ),
            (
                ca_core::Error::Store {
                    op: "revoke task",
                    source: "task panicked".into(),
                },
                "internal",
                500,
            ),
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
    fn store_unavailable_says_when_to_retry() {
        let api = ApiError::from(ca_core::Error::StoreUnavailable {
            op: "insert certificate",
            source: "db error: FATAL: terminating connection due to administrator command".into(),
        });
        assert_eq!(api.retry_after, Some(STORE_RETRY_AFTER_SECS));
        assert!(!api.message.contains("administrator command"));
        let resp = api.into_response();
        assert_eq!(resp.status().as_u16(), 503);
        assert_eq!(resp.headers()[http::header::RETRY_AFTER], "2");
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let api = ApiError::from(ca_core::Error::Corrupt("secret path /var/x".into()));
        assert_eq!(api.code, Code::Internal);
        assert!(!api.message.contains("/var/x"));
    }
}
