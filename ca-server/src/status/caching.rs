//! HTTP caching of what the status listener serves. This is the one place the rules are
//! written out; the README and the crate docs point here.
//!
//! # OCSP responses (GET) and the CRL (RFC 5019 6.2)
//!
//! For a signed OCSP response fetched with GET (not one echoing a nonce, not an error
//! response) and for the CRL:
//!
//! - `Cache-Control: max-age=N, public, no-transform, must-revalidate`, with N the seconds left
//!   until nextUpdate, capped by `[ocsp] max_age` ([`super::StatusConfig::max_age`], default
//!   60 s, so that HTTP caches between relying parties and the responder do not hide a
//!   revocation for long);
//! - `Last-Modified` = thisUpdate, `Expires` = nextUpdate (HTTP-dates, RFC 9110 5.6.7);
//! - a strong `ETag`: for an OCSP response the first 128 bits of the SHA-256 of its DER, in
//!   hex, quoted ([`ocsp_etag`]); for the CRL `"crl-<CRL number>"`;
//! - a request whose `If-None-Match` lists that tag (or `*`) gets 304 without a body.
//!
//! POST answers, error responses and nonce-echoing answers carry none of these headers.
//!
//! # Static files
//!
//! `/ca.crt`: [`CA_CERT_CACHE_CONTROL`]; `/root.crl`: [`ROOT_CRL_CACHE_CONTROL`].
//!
//! The fixed part of an OCSP response's headers is formatted once per answer and kept in the
//! answer's [`ca_core::ocsp::TransportCache`]; per request only `max-age` may be recomputed
//! (when less than the cap is left).

use axum::http::header::{self, HeaderMap, HeaderValue};
use ca_core::ocsp::{AnswerKind, OcspAnswer};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// `Cache-Control` of the issuing CA certificate (`/ca.crt`, AIA caIssuers).
pub(super) const CA_CERT_CACHE_CONTROL: &str = "max-age=3600, public, no-transform";
/// `Cache-Control` of the root CRL file (`/root.crl`).
pub(super) const ROOT_CRL_CACHE_CONTROL: &str = "max-age=300, public, no-transform";

/// The strong entity tag of an OCSP response: the first 128 bits of the SHA-256 of its DER,
/// in hex, quoted.
fn ocsp_etag(der: &[u8]) -> String {
    format!("\"{}\"", &ca_core::signer::sha256_hex(der)[..32])
}

/// The caching headers of an OCSP answer: only a signed, cacheable answer fetched with GET
/// has them. Formatted once per answer and kept in its transport slot (`owned` holds them if
/// the slot is taken by another type).
pub(super) fn ocsp_cache_meta<'a>(
    a: &'a OcspAnswer,
    get: bool,
    owned: &'a mut Option<CacheMeta>,
) -> Option<&'a CacheMeta> {
    let (this_update, next_update) = match &a.kind {
        AnswerKind::Signed {
            this_update,
            next_update,
            cacheable: true,
            ..
        } if get => (*this_update, *next_update),
        _ => return None,
    };
    let init = || CacheMeta::new(this_update, next_update, ocsp_etag(&a.der));
    match a.transport.get_or_init(init) {
        Some(m) => Some(m),
        None => Some(owned.insert(init())),
    }
}

/// The entity tag of the CRL with this number.
pub(super) fn crl_etag(number: impl std::fmt::Display) -> String {
    format!("\"crl-{number}\"")
}

/// HTTP-date (RFC 9110 5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(super) fn http_date(t: DateTime<Utc>) -> HeaderValue {
    HeaderValue::from_str(&t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

fn cache_control(max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "max-age={max_age}, public, no-transform, must-revalidate"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("no-cache"))
}

/// The fixed part of the headers of one response, formatted once.
pub(super) struct CacheMeta {
    next_update: DateTime<Utc>,
    last_modified: HeaderValue,
    expires: HeaderValue,
    etag: String,
    etag_header: Option<HeaderValue>,
}

impl CacheMeta {
    pub(super) fn new(
        this_update: DateTime<Utc>,
        next_update: DateTime<Utc>,
        etag: String,
    ) -> Self {
        CacheMeta {
            next_update,
            last_modified: http_date(this_update),
            expires: http_date(next_update),
            etag_header: HeaderValue::from_str(&etag).ok(),
            etag,
        }
    }

    /// Whether the request's `If-None-Match` lists this response's tag (or `*`).
    pub(super) fn not_modified(&self, req: &HeaderMap) -> bool {
        req.get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim() == self.etag || t.trim() == "*")
    }

    /// Set the caching headers; `max-age` is the time left until nextUpdate, capped.
    pub(super) fn apply(&self, h: &mut HeaderMap, cap: &MaxAge) {
        let left = u64::try_from((self.next_update - Utc::now()).num_seconds().max(0)).unwrap_or(0);
        let cc = if left >= cap.secs {
            cap.full.clone()
        } else {
            cache_control(left)
        };
        h.insert(header::CACHE_CONTROL, cc);
        h.insert(header::LAST_MODIFIED, self.last_modified.clone());
        h.insert(header::EXPIRES, self.expires.clone());
        if let Some(e) = &self.etag_header {
            h.insert(header::ETAG, e.clone());
        }
    }
}

/// The configured `max-age` cap and its preformatted `Cache-Control` value.
#[derive(Clone, Debug)]
pub(crate) struct MaxAge {
    secs: u64,
    full: HeaderValue,
}

impl MaxAge {
    pub(crate) fn new(cap: Duration) -> Self {
        let secs = cap.as_secs();
        MaxAge {
            secs,
            full: cache_control(secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_imf_fixdate() {
        let t = DateTime::from_timestamp(784_111_777, 0).unwrap_or_default();
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn entity_tags_and_revalidation() {
        // SHA-256 of the empty string, first 128 bits.
        assert_eq!(ocsp_etag(b""), "\"e3b0c44298fc1c149afbf4c8996fb924\"");
        assert_eq!(crl_etag(7), "\"crl-7\"");
        let now = Utc::now();
        let meta = CacheMeta::new(now, now + chrono::Duration::hours(1), crl_etag(7));
        let mut req = HeaderMap::new();
        assert!(!meta.not_modified(&req));
        req.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", \"crl-7\""),
        );
        assert!(meta.not_modified(&req));
        req.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(meta.not_modified(&req));
    }

    #[test]
    fn max_age_is_time_left_capped() {
        let now = Utc::now();
        let mut h = HeaderMap::new();
        let cap = MaxAge::new(Duration::from_secs(60));
        CacheMeta::new(now, now + chrono::Duration::hours(1), crl_etag(1)).apply(&mut h, &cap);
        assert_eq!(
            h[header::CACHE_CONTROL],
            "max-age=60, public, no-transform, must-revalidate"
        );
        let soon = now + chrono::Duration::seconds(30);
        CacheMeta::new(now, soon, crl_etag(1)).apply(&mut h, &cap);
        let cc = h[header::CACHE_CONTROL]
            .to_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            cc == "max-age=30, public, no-transform, must-revalidate"
                || cc == "max-age=29, public, no-transform, must-revalidate",
            "{cc}"
        );
        CacheMeta::new(now, now, crl_etag(1)).apply(&mut h, &cap);
        assert_eq!(
            h[header::CACHE_CONTROL],
            "max-age=0, public, no-transform, must-revalidate"
        );
        assert_eq!(h[header::ETAG], "\"crl-1\"");
    }
}
