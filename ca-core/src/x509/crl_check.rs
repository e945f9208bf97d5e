//! The check a CRL read from somewhere else (the store's archive, written by another node or
//! by whoever can write the database) passes before it is served: issued by this CA and
//! signed by its key; its number and times are then read from the signed bytes, never from
//! what was stored beside them.

use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use der::{Decode, Encode};
use x509_cert::crl::CertificateList;
use x509_cert::Certificate;

/// What a checked CRL says, read from its signed content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedCrl {
    /// cRLNumber (RFC 5280 5.2.3).
    pub number: u64,
    /// thisUpdate.
    pub this_update: DateTime<Utc>,
    /// nextUpdate (required: RFC 5280 5.1.2.5 for conforming CAs).
    pub next_update: DateTime<Utc>,
    /// Number of revoked certificates listed.
    pub entries: usize,
}

/// Check that `crl_der` was issued by the CA of `issuer_cert_der` (issuer name) and signed by
/// its key, and read its number, times and entry count from the signed content.
pub fn check_crl(issuer_cert_der: &[u8], crl_der: &[u8]) -> Result<CheckedCrl> {
    let crl = CertificateList::from_der(crl_der)?;
    let issuer = Certificate::from_der(issuer_cert_der)?;
    let tbs = &crl.tbs_cert_list;
    if tbs.issuer != issuer.tbs_certificate.subject {
        return Err(Error::SignatureCheckFailed);
    }
    let sig = crl
        .signature
        .as_bytes()
        .ok_or(Error::SignatureCheckFailed)?;
    crate::signer::verify(
        &issuer.tbs_certificate.subject_public_key_info.to_der()?,
        &tbs.to_der()?,
        sig,
    )?;
    let number = tbs
        .crl_extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_CRL_NUMBER)
        .and_then(|e| der::asn1::Uint::from_der(e.extn_value.as_bytes()).ok())
        .and_then(|n| {
            let b = n.as_bytes();
            let b = &b[b.iter().take_while(|x| **x == 0).count()..];
            (b.len() <= 8).then(|| b.iter().fold(0u64, |acc, x| acc << 8 | u64::from(*x)))
        })
        .ok_or_else(|| Error::Corrupt("CRL without a usable cRLNumber".into()))?;
    let next_update = tbs
        .next_update
        .ok_or_else(|| Error::Corrupt("CRL without nextUpdate".into()))?;
    Ok(CheckedCrl {
        number,
        this_update: super::time(tbs.this_update)?,
        next_update: super::time(next_update)?,
        entries: tbs.revoked_certificates.as_ref().map_or(0, Vec::len),
    })
}
