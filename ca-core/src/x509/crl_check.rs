//! The check a CRL read from somewhere else (the store's archive, written by another node or
//! by whoever can write the database) passes before it is served: issued by this CA and
//! signed by its key; its number and times are then read from the signed bytes, never from
//! what was stored beside them.
//!
//! The CRL is walked, not decoded into objects: the signature is checked over the
//! to-be-signed bytes as they are, the entries are counted without being decoded, and only
//! the CRL's own extensions are parsed. Checking a full CRL of a million entries (42 MB) costs
//! one pass over its bytes and no memory beyond them.

use super::der_walk::{tlv, Tlv, BIT_STRING, CTX0, GENERALIZED_TIME, INTEGER, SEQUENCE, UTC_TIME};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use der::{Decode, Encode};
use x509_cert::ext::Extension;
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

/// Reads DER elements one after another ([`super::der_walk::tlv`]).
struct Reader<'a> {
    rest: &'a [u8],
}

fn malformed(what: &str) -> Error {
    Error::Corrupt(format!("malformed CRL: {what}"))
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn next(&mut self) -> Result<Tlv<'a>> {
        let t = tlv(self.rest).ok_or_else(|| malformed("truncated or not DER"))?;
        self.rest = t.after;
        Ok(t)
    }

    /// The next TLV, which must have `tag`.
    fn expect(&mut self, tag: u8, what: &str) -> Result<Tlv<'a>> {
        let tlv = self.next()?;
        if tlv.tag != tag {
            return Err(malformed(what));
        }
        Ok(tlv)
    }
}

fn time(tlv: &Tlv<'_>) -> Result<DateTime<Utc>> {
    super::time(x509_cert::time::Time::from_der(tlv.whole)?)
}

/// A CRL split into its parts, borrowed from its DER.
pub(crate) struct CrlParts<'a> {
    /// The TBSCertList, tag and length included: the signed bytes.
    tbs: &'a [u8],
    signature: &'a [u8],
    /// The issuer Name, DER.
    issuer: &'a [u8],
    this_update: DateTime<Utc>,
    next_update: Option<DateTime<Utc>>,
    entries: usize,
    /// The CRL's extensions (RFC 5280 5.2).
    pub(crate) extensions: Vec<Extension>,
}

impl<'a> CrlParts<'a> {
    /// Split `der` (a CertificateList) into its parts, counting the entries without decoding
    /// them.
    pub(crate) fn parse(der: &'a [u8]) -> Result<Self> {
        let mut outer = Reader::new(der);
        let list = outer.expect(SEQUENCE, "not a SEQUENCE")?;
        if !outer.is_empty() {
            return Err(malformed("trailing bytes"));
        }
        let mut list = Reader::new(list.contents);
        let tbs = list.expect(SEQUENCE, "tbsCertList")?;
        list.expect(SEQUENCE, "signatureAlgorithm")?;
        let bits = list.expect(BIT_STRING, "signatureValue")?;
        if !list.is_empty() {
            return Err(malformed("trailing fields"));
        }
        let signature = match bits.contents.split_first() {
            Some((0, sig)) => sig,
            _ => return Err(malformed("signature bits")),
        };

        let mut f = Reader::new(tbs.contents);
        if f.peek_tag() == Some(INTEGER) {
            f.next()?; // version
        }
        f.expect(SEQUENCE, "signature")?;
        let issuer = f.expect(SEQUENCE, "issuer")?.whole;
        let this = f.next()?;
        if this.tag != UTC_TIME && this.tag != GENERALIZED_TIME {
            return Err(malformed("thisUpdate"));
        }
        let this_update = time(&this)?;
        let mut next_update = None;
        if matches!(f.peek_tag(), Some(UTC_TIME | GENERALIZED_TIME)) {
            next_update = Some(time(&f.next()?)?);
        }
        let mut entries = 0;
        if f.peek_tag() == Some(SEQUENCE) {
            let mut list = Reader::new(f.next()?.contents);
            while !list.is_empty() {
                list.expect(SEQUENCE, "revoked certificate")?;
                entries += 1;
            }
        }
        let mut extensions = Vec::new();
        if f.peek_tag() == Some(CTX0) {
            extensions = Vec::<Extension>::from_der(f.next()?.contents)?;
        }
        if !f.is_empty() {
            return Err(malformed("trailing bytes in tbsCertList"));
        }
        Ok(CrlParts {
            tbs: tbs.whole,
            signature,
            issuer,
            this_update,
            next_update,
            entries,
            extensions,
        })
    }

    /// The extension `id`, if the CRL has it.
    pub(crate) fn extension(&self, id: const_oid::ObjectIdentifier) -> Option<&Extension> {
        self.extensions.iter().find(|e| e.extn_id == id)
    }
}

/// Check that `crl_der` was issued by the CA of `issuer_cert_der` (issuer name) and signed by
/// its key, and read its number, times and entry count from the signed content.
pub fn check_crl(issuer_cert_der: &[u8], crl_der: &[u8]) -> Result<CheckedCrl> {
    let crl = CrlParts::parse(crl_der)?;
    let issuer = Certificate::from_der(issuer_cert_der)?;
    if crl.issuer != issuer.tbs_certificate.subject.to_der()? {
        return Err(Error::SignatureCheckFailed);
    }
    crate::signer::verify(
        &issuer.tbs_certificate.subject_public_key_info.to_der()?,
        crl.tbs,
        crl.signature,
    )?;
    let number = crl
        .extension(const_oid::db::rfc5280::ID_CE_CRL_NUMBER)
        .and_then(|e| der::asn1::Uint::from_der(e.extn_value.as_bytes()).ok())
        .and_then(|n| {
            let b = n.as_bytes();
            let b = &b[b.iter().take_while(|x| **x == 0).count()..];
            (b.len() <= 8).then(|| b.iter().fold(0u64, |acc, x| acc << 8 | u64::from(*x)))
        })
        .ok_or_else(|| Error::Corrupt("CRL without a usable cRLNumber".into()))?;
    let next_update = crl
        .next_update
        .ok_or_else(|| Error::Corrupt("CRL without nextUpdate".into()))?;
    Ok(CheckedCrl {
        number,
        this_update: crl.this_update,
        next_update,
        entries: crl.entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_refuses_truncated_and_indefinite_lengths() {
        assert!(Reader::new(&[0x30, 0x03, 0x02, 0x01]).next().is_err());
        assert!(Reader::new(&[0x30, 0x80, 0x00, 0x00]).next().is_err());
        let mut r = Reader::new(&[0x30, 0x00, 0x02, 0x00]);
        assert!(r.expect(INTEGER, "an INTEGER first").is_err());
        assert_eq!(r.next().unwrap().tag, INTEGER);
        assert!(r.is_empty());
    }

    #[test]
    fn garbage_is_not_a_crl() {
        for bad in [&b""[..], b"\x30\x00", b"\x30\x02\x30\x00", b"not a crl"] {
            assert!(CrlParts::parse(bad).is_err(), "{bad:?}");
        }
    }
}
