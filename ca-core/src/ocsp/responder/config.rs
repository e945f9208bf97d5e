//! The responder's settings ([`ResponderConfig`]), checked once at start.

use crate::error::{Error, Result};
use chrono::Duration;

/// Upper bound of [`ResponderConfig::issuance_batch_max`] (a response stays a few kilobytes).
const ISSUANCE_BATCH_LIMIT: usize = 64;

/// Responder settings. Defaults suit short-lived mTLS certificates.
#[derive(Clone, Debug)]
pub struct ResponderConfig {
    /// nextUpdate - thisUpdate of every signed response (default 24 hours).
    pub validity: Duration,
    /// Re-sign a response when less than this is left before its nextUpdate (default 12 hours).
    /// Must be shorter than `validity`.
    pub refresh_before: Duration,
    /// Most CertIDs answered in one request (default 16); more is `malformedRequest`.
    pub max_certs_per_request: usize,
    /// Live signatures per second (unknown serials, several CertIDs, nonce echo, CertIDs
    /// hashed with SHA-384/512). Default 20.
    pub live_signing_rate: u32,
    /// Burst allowance for live signing. Default 50.
    pub live_signing_burst: u32,
    /// Sign live and echo the nonce when a request carries one. Off by default. The nonce
    /// policy is written out once, in `ocsp/responder/live.rs` ([`crate::ocsp`] docs).
    pub echo_nonce: bool,
    /// Most signed `unknown` responses kept in memory (default 10 000; oldest dropped first).
    pub unknown_cache_size: usize,
    /// Most certificates one response pre-signed at issuance covers (default 8; 1 gives every
    /// certificate its own). Certificates issued while the previous response is being signed
    /// share the next signature: one response carries a SingleResponse pair for each of them,
    /// which RFC 6960 4.2.2.3 and RFC 5019 2.2.1 allow for pre-generation performance.
    /// Without concurrent issuance every response covers one certificate. The refresh pass
    /// re-signs one response per certificate.
    pub issuance_batch_max: usize,
    /// How long the issuance signer ([`super::Responder::start_issuance_signer`]) gathers queued
    /// certificates before it signs their response (default 5 ms, at most 100 ms). Nobody's
    /// issuance waits for it; an OCSP request for a certificate still queued does.
    pub issuance_batch_window: std::time::Duration,
    /// Bound in bytes of the request memo (request bytes -> serial; default 8 MiB, 0 turns it
    /// off). Only the canonical encoding of a single-CertID request about a certificate with a
    /// pre-signed response is memoised, so padded or unique requests cannot grow it.
    pub memo_max_bytes: usize,
    /// Most pre-signed answers kept in memory (default 200 000, rounded up to a multiple of
    /// 16). The others stay in the store and are read back, without a signature, when asked
    /// about; memory follows this bound, not the number of certificates (README "OCSP answer
    /// cache").
    pub cache_max_entries: usize,
    /// Bound in bytes of the answers kept in memory (default 64 MiB): a slot per serial and
    /// each answer's bytes once, however many serials of its group share it (`cache.rs`). With
    /// requests spread over a large fleet every answer held keeps its whole group response
    /// (2-3 KB) alive, so this bound, not `cache_max_entries`, is the one that holds memory.
    pub cache_max_bytes: usize,
}

/// Default of [`ResponderConfig::cache_max_bytes`].
pub const DEFAULT_CACHE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Least [`ResponderConfig::cache_max_bytes`]: about one group's answer.
pub const MIN_CACHE_MAX_BYTES: usize = 4096;

impl Default for ResponderConfig {
    fn default() -> Self {
        ResponderConfig {
            validity: Duration::hours(24),
            refresh_before: Duration::hours(12),
            max_certs_per_request: 16,
            live_signing_rate: 20,
            live_signing_burst: 50,
            echo_nonce: false,
            unknown_cache_size: 10_000,
            issuance_batch_max: 8,
            issuance_batch_window: std::time::Duration::from_millis(5),
            memo_max_bytes: 8 * 1024 * 1024,
            cache_max_entries: 200_000,
            cache_max_bytes: DEFAULT_CACHE_MAX_BYTES,
        }
    }
}

impl ResponderConfig {
    /// Check the settings; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |path: &str, reason: &str| {
            Err(Error::Config {
                path: format!("ocsp.{path}"),
                reason: reason.into(),
            })
        };
        if self.validity <= Duration::zero() {
            return bad("validity", "must be positive");
        }
        if self.refresh_before <= Duration::zero() || self.refresh_before >= self.validity {
            return bad(
                "refresh_before",
                "must be positive and shorter than ocsp.validity",
            );
        }
        if self.max_certs_per_request == 0 {
            return bad("max_certs_per_request", "must be at least 1");
        }
        if !(1..=ISSUANCE_BATCH_LIMIT).contains(&self.issuance_batch_max) {
            return bad("issuance_batch_max", "must be between 1 and 64");
        }
        if self.issuance_batch_window > std::time::Duration::from_millis(100) {
            return bad("issuance_batch_window", "at most 100ms");
        }
        if self.cache_max_entries == 0 {
            return bad("cache_max_entries", "must be at least 1");
        }
        if self.cache_max_bytes < MIN_CACHE_MAX_BYTES {
            return bad("cache_max_bytes", "must be at least 4096");
        }
        if self.live_signing_burst == 0 && self.live_signing_rate > 0 {
            return bad(
                "live_signing_burst",
                "must be at least 1 when live signing is enabled",
            );
        }
        Ok(())
    }
}
