//! Token redemption: a one-time enrollment token is checked, then consumed only after the
//! request passed every policy check, and given back if the issuance failed before any
//! certificate was stored.

use super::{Authority, Outcome};
use crate::audit::NewAuditEvent;
use crate::csr::CsrRequest;
use crate::error::{Error, Result};
use crate::issuance::IssueContext;
use crate::store::TokenRecord;

impl Authority {
    /// Enrollment with the token whose SHA-256 (hex) is `token_hash`.
    pub(super) fn enroll(&self, csr: &CsrRequest, token_hash: &str) -> Result<Outcome> {
        let now = self.clock.now();
        let token = self
            .tokens
            .get_token(token_hash)?
            .ok_or(Error::TokenRejected("unknown token"))?;
        token.check_usable(now)?;
        let prepared = self
            .ca
            .prepare(csr, IssueContext::Enrollment { token: &token })?;
        let token = self.tokens.consume_token(token_hash, now)?;
        match prepared.issue() {
            Ok(issued) => Ok(Outcome {
                issued,
                token: Some(token),
            }),
            Err(e) => {
                // `issue` returns an error only before the certificate record is inserted
                // (the insert is its last step, and inside this unit of work the insert does
                // not flush), so no certificate exists for this token: give the token back so
                // it works once the fault (HSM down, store error) is gone. The release is a
                // compare-and-swap on the `used_at` this call wrote, so concurrent uses still
                // yield one certificate. A failure of the unit's final flush is not undone
                // here: the certificate may then be durable, and the token stays used.
                // Likewise when the store became unavailable: on PostgreSQL the insert
                // commits on its own, and a connection lost during its commit leaves the
                // outcome unknown (the certificate may exist); the token stays used, and
                // the enrollment needs a new token (fail closed: one token, one certificate).
                if !e.is_store_unavailable() {
                    self.release_token(&token, &e);
                }
                Err(e)
            }
        }
    }

    /// Give back a token consumed for an issuance that failed before storing anything.
    fn release_token(&self, token: &TokenRecord, cause: &Error) {
        let Some(used_at) = token.used_at else {
            return;
        };
        match self.tokens.release_token(&token.hash, used_at) {
            Ok(true) => {
                tracing::warn!(token_id = %token.id, error = %cause,
                    "issuance failed after the token was checked; the token stays usable");
                self.audit(
                    NewAuditEvent::ok("ca-server", "token.release", &token.id).with_detail(
                        serde_json::json!({ "cause": self.observer.error_code(cause) }),
                    ),
                );
            }
            Ok(false) => {
                tracing::error!(token_id = %token.id, "token changed while its issuance failed; not released");
            }
            Err(e) => {
                tracing::error!(token_id = %token.id, error = %e, "could not release the token of a failed issuance");
                self.observer.failure("token_release");
            }
        }
    }
}
