//! Which CRL shard a certificate belongs to (README "CRLs", DESIGN "CRL shards").
//!
//! A shard is a partitioned CRL (RFC 5280 5.2.5) covering the certificates whose notAfter
//! falls in one time window; its id is the window's end in Unix seconds. A certificate names
//! its shard in its CRL distribution point (`<crl url>/shard/<id>`, RFC 5280 4.2.1.13), and
//! that name is what decides the shard for good: [`crl_shard_of`] reads it back from the
//! certificate at revocation, so a later change of the window width never moves an issued
//! certificate to another shard.

use der::Decode;
use std::fmt;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::CrlDistributionPoints;
use x509_cert::Certificate;

/// The last path segment before a shard id in a shard's URL.
pub const SHARD_PATH: &str = "shard";

/// A CRL shard: the end (Unix seconds) of the notAfter window it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CrlShard(pub u64);

impl CrlShard {
    /// Parse a shard id as it appears in a URL: decimal digits, no sign, no leading zero.
    pub fn parse(s: &str) -> Option<CrlShard> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if s.len() > 1 && s.starts_with('0') {
            return None;
        }
        s.parse().ok().map(CrlShard)
    }

    /// The shard's scope in the CRL archive and its CRL number sequence.
    pub fn scope(self) -> String {
        format!("shard:{}", self.0)
    }

    /// The shard for a CRL archive scope written by [`CrlShard::scope`].
    pub fn from_scope(scope: &str) -> Option<CrlShard> {
        scope.strip_prefix("shard:").and_then(CrlShard::parse)
    }

    /// The lease of the node that builds this shard's CRL.
    pub fn lease(self) -> String {
        format!("crl:shard:{}", self.0)
    }
}

impl fmt::Display for CrlShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The shard a shard URL names: its last path segment, after a `shard` segment.
pub fn crl_shard_of_url(url: &str) -> Option<CrlShard> {
    let (rest, id) = url.rsplit_once('/')?;
    let (_, dir) = rest.rsplit_once('/')?;
    if dir != SHARD_PATH {
        return None;
    }
    CrlShard::parse(id)
}

/// The shard the certificate's CRL distribution point names, if it names one (a certificate
/// issued without shards names the full CRL, or nothing). Bytes that are not a certificate
/// name no shard.
pub fn crl_shard_of(cert_der: &[u8]) -> Option<CrlShard> {
    let cert = Certificate::from_der(cert_der).ok()?;
    let ext = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS)?;
    let points = CrlDistributionPoints::from_der(ext.extn_value.as_bytes()).ok()?;
    points.0.iter().find_map(|p| match &p.distribution_point {
        Some(DistributionPointName::FullName(names)) => names.iter().find_map(|n| match n {
            GeneralName::UniformResourceIdentifier(u) => crl_shard_of_url(u.as_str()),
            _ => None,
        }),
        _ => None,
    })
}

/// The URI of a CRL's issuing distribution point (RFC 5280 5.2.5), if it has one.
pub fn crl_idp_uri(crl_der: &[u8]) -> Option<String> {
    let crl = super::crl_check::CrlParts::parse(crl_der).ok()?;
    let ext = crl.extension(const_oid::db::rfc5280::ID_CE_ISSUING_DISTRIBUTION_POINT)?;
    let idp =
        x509_cert::ext::pkix::IssuingDistributionPoint::from_der(ext.extn_value.as_bytes()).ok()?;
    match idp.distribution_point? {
        DistributionPointName::FullName(names) => names.into_iter().find_map(|n| match n {
            GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
            _ => None,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ids_parse_strictly() {
        assert_eq!(CrlShard::parse("1796601600"), Some(CrlShard(1796601600)));
        assert_eq!(CrlShard::parse("0"), Some(CrlShard(0)));
        for bad in ["", "01", "-1", "+1", "1a", "1 ", "99999999999999999999999"] {
            assert_eq!(CrlShard::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            crl_shard_of_url("http://ca.test/crl/shard/3600"),
            Some(CrlShard(3600))
        );
        assert_eq!(crl_shard_of_url("http://ca.test/crl"), None);
        assert_eq!(crl_shard_of_url("http://ca.test/crl/other/3600"), None);
        assert_eq!(
            CrlShard::from_scope(&CrlShard(7).scope()),
            Some(CrlShard(7))
        );
        assert_eq!(CrlShard::from_scope("full"), None);
        assert_eq!(crl_shard_of(&[0x30, 0x00]), None);
    }
}
