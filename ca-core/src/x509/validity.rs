//! Validity windows: reading them from certificates and choosing them at issuance.

use crate::error::{Error, Result};
use chrono::{DateTime, Duration, Utc};
use der::Decode;

/// An X.509 time (UTCTime or GeneralizedTime, whole seconds) as a chrono time.
pub fn time(t: x509_cert::time::Time) -> Result<DateTime<Utc>> {
    i64::try_from(t.to_unix_duration().as_secs())
        .ok()
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .ok_or_else(|| Error::Der(der::ErrorKind::DateTime.into()))
}

/// The (notBefore, notAfter) of a DER certificate.
pub fn validity(cert_der: &[u8]) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let cert = x509_cert::Certificate::from_der(cert_der)?;
    let v = &cert.tbs_certificate.validity;
    Ok((time(v.not_before)?, time(v.not_after)?))
}

/// The validity of a certificate issued at `now`: notBefore backdated by `backdate` (clock skew
/// of relying parties), notAfter `lifetime` after `now`, both clamped into the issuer's own
/// window (`issuer`: its notBefore and notAfter), so no certificate outlives its issuer
/// (RFC 5280 6.1.3 checks every certificate of the path at the same time). An issuer that has
/// expired at `now` issues nothing.
pub fn issuance_window(
    now: DateTime<Utc>,
    backdate: Duration,
    lifetime: Duration,
    issuer: (DateTime<Utc>, DateTime<Utc>),
) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let (issuer_not_before, issuer_not_after) = issuer;
    if now >= issuer_not_after {
        return Err(Error::IssuerExpired {
            not_after: issuer_not_after,
        });
    }
    let not_before = (now - backdate).max(issuer_not_before);
    let not_after = (now + lifetime).min(issuer_not_after);
    Ok((not_before, not_after))
}
