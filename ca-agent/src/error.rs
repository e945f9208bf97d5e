//! The one error type of the agent.

use std::path::PathBuf;
use std::time::Duration;

/// Result with the agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the agent.
///
/// Variants carry the context an operator needs (which file, which server, which serial) and
/// keep the underlying error reachable through [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file is invalid; `path` names the offending field.
    #[error("config {path}: {reason}")]
    Config {
        /// Field path, e.g. `certificate[0].key_mode`.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read, written, renamed or synced.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`read`, `write`, `rename`, `fsync`, ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS reported.
        #[source]
        source: std::io::Error,
    },
    /// Key generation or key parsing failed.
    #[error("key: {0}")]
    Key(String),
    /// A certificate (or chain) could not be parsed.
    #[error("cannot parse certificate {what}: {reason}")]
    CertParse {
        /// Which certificate.
        what: String,
        /// Why.
        reason: String,
    },
    /// The private key on disk does not belong to the certificate next to it.
    #[error("key {} does not match certificate {}: refusing to use or install the pair", key.display(), cert.display())]
    KeyMismatch {
        /// Key file.
        key: PathBuf,
        /// Certificate file.
        cert: PathBuf,
    },
    /// A configured key or certificate path is a symbolic link that leads out of its directory
    /// (and out of the agent's store); the agent neither reads nor imports it.
    #[error(
        "{} is a symbolic link to {}, outside {}: refusing to read or import it (it may have been \
         planted to make the agent copy another file). Fix: remove the link and put the real \
         file there, or remove it and enroll again",
        path.display(), target.display(), dir.display()
    )]
    UnsafeLink {
        /// The configured path.
        path: PathBuf,
        /// Where it leads.
        target: PathBuf,
        /// The directory it should stay in.
        dir: PathBuf,
    },
    /// A certificate the CA returned failed verification; nothing was installed.
    #[error("certificate from the CA failed verification, not installed: {0}")]
    Verify(String),
    /// The server did not present the pinned root.
    #[error("server {server} is not trusted: {reason} (pinned root SHA-256 {pin}); no credential was sent")]
    Untrusted {
        /// Server URL.
        server: String,
        /// Pinned fingerprint.
        pin: String,
        /// What did not match.
        reason: String,
    },
    /// Could not reach the server (DNS, TCP, TLS, timeout).
    #[error("cannot reach {url}: {reason}")]
    Transport {
        /// URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The CA answered with an error (API.md error codes).
    #[error("CA refused {url}: HTTP {status} {code}: {message}")]
    Api {
        /// URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Stable machine-readable code.
        code: String,
        /// Human message from the server.
        message: String,
        /// `Retry-After`, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// The current certificate can no longer be renewed (revoked or expired).
    #[error("certificate {serial} ({identity}) is {state}: renewal cannot work. Fix: {fix}")]
    NeedsEnrollment {
        /// Serial (hex).
        serial: String,
        /// Identity.
        identity: String,
        /// `revoked`, `expired` or `not renewable`.
        state: &'static str,
        /// What the operator should do.
        fix: String,
    },
    /// A reload action failed to run or exited non-zero.
    #[error("reload action {action} failed: {reason}")]
    Reload {
        /// The action, as written in the config.
        action: String,
        /// Why.
        reason: String,
    },
    /// The service did not pick up the new certificate; the previous pair was restored.
    #[error("{0}")]
    ReloadNotEffective(String),
    /// An OCSP staple could not be fetched or checked.
    #[error("OCSP staple: {0}")]
    Ocsp(String),
}

impl Error {
    /// The agent's view of a failed exchange with `url` (the CA, trusted through the root
    /// fingerprint `pin`, or its OCSP responder).
    pub fn from_client(e: ca_api::ClientError, url: &str, pin: &str) -> Self {
        use ca_api::ClientError as C;
        match e {
            C::Untrusted { url, reason } => Error::Untrusted {
                server: url,
                pin: pin.to_string(),
                reason,
            },
            C::Connect { url, message } => Error::Transport {
                url,
                reason: message,
            },
            C::Api {
                url,
                status,
                code,
                message,
                retry_after,
            } => Error::Api {
                url,
                status: status.as_u16(),
                code,
                message,
                retry_after: retry_after.map(Duration::from_secs),
            },
            C::BadAnswer {
                url,
                status,
                reason,
            } => Error::Api {
                url,
                status: status.as_u16(),
                code: "bad_response".into(),
                message: reason,
                retry_after: None,
            },
            other => Error::Transport {
                url: url.to_string(),
                reason: other.to_string(),
            },
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether a later retry may succeed (network, 5xx, rate limits) as opposed to a problem
    /// that needs an operator.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } => true,
            Error::Api { status, code, .. } => {
                *status >= 500 || *status == 429 || code == "rate_limited"
            }
            _ => false,
        }
    }

    /// The server's `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The API error code, if the CA answered with one.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ca_api::RawResponse;

    fn answer(status: u16, retry_after: Option<&str>, body: &[u8]) -> Error {
        let mut headers = http::HeaderMap::new();
        if let Some(r) = retry_after {
            headers.insert(http::header::RETRY_AFTER, r.parse().unwrap());
        }
        let resp = RawResponse {
            url: "https://x/v1/renew".into(),
            status: http::StatusCode::from_u16(status).unwrap(),
            headers,
            body: body.to_vec().into(),
        };
        Error::from_client(resp.error(), "https://x", "00")
    }

    #[test]
    fn api_errors_keep_code_and_retry_after() {
        let e = answer(
            429,
            Some("7"),
            br#"{"code":"rate_limited","message":"slow down"}"#,
        );
        assert_eq!(e.api_code(), Some("rate_limited"));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(e.is_transient());
        let e = answer(403, None, br#"{"code":"cert_revoked","message":"revoked"}"#);
        assert_eq!(e.api_code(), Some("cert_revoked"));
        assert!(!e.is_transient());
        let e = answer(502, None, b"<html>bad gateway</html>");
        assert_eq!(e.api_code(), Some("http_502"));
        assert!(e.is_transient());
    }

    #[test]
    fn an_untrusted_server_names_the_pin() {
        let e = Error::from_client(
            ca_api::ClientError::Untrusted {
                url: "https://ca.test".into(),
                reason: "no caServerIdentity".into(),
            },
            "https://ca.test",
            "ab12",
        );
        let text = e.to_string();
        assert!(
            text.contains("not trusted") && text.contains("pinned root SHA-256 ab12"),
            "{text}"
        );
        assert!(!e.is_transient());
    }
}
