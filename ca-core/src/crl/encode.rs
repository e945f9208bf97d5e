//! The DER of a CRL (RFC 5280 5.1), written directly. Entries are encoded as they are read
//! from the store ([`EntryList::push`]), so a CRL costs its own DER in memory (about 42 bytes
//! an entry) and no object per entry: a full CRL of a million revocations is built in one pass
//! over the store, then numbered, signed and checked (`CrlIssuer::sign_list`).
//!
//! What is written, in this order (the layout rcgen wrote before, byte for byte on the fields
//! both write): version 2; the signature algorithm; the issuer's subject name, copied from its
//! certificate; thisUpdate and nextUpdate (UTCTime through 2049, GeneralizedTime from 2050,
//! RFC 5280 5.1.2.4); the entries, absent when there are none (RFC 5280 5.1.2.6), each a
//! serial, a revocation date and a reason code unless `unspecified` (RFC 5280 5.3.1); then the
//! extensions: authority key identifier, CRL number, the issuing distribution point (critical)
//! when there is one, and the caller's (delta CRL indicator, Freshest CRL).

use super::CrlHeadRequest;
use crate::error::{Error, Result};
use crate::revocation::{RevocationReason, RevokedEntry};
use chrono::{DateTime, Datelike, Timelike, Utc};
use der::asn1::{Ia5String, OctetString, Uint};
use der::Encode;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, IssuingDistributionPoint};
use x509_cert::ext::Extension;

use crate::x509::der_walk::{
    BIT_STRING, CTX0 as CRL_EXTENSIONS, ENUMERATED, GENERALIZED_TIME, INTEGER, OCTET_STRING,
    SEQUENCE, UTC_TIME,
};

/// OBJECT IDENTIFIER 2.5.29.21 (reasonCode), tag and length included.
const REASON_CODE_OID: [u8; 5] = [0x06, 0x03, 0x55, 0x1d, 0x15];

/// Append a DER length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// Bytes a tag and DER length of `len` take.
fn header_len(len: usize) -> usize {
    let mut v = Vec::with_capacity(9);
    push_len(&mut v, len);
    1 + v.len()
}

fn push_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    push_len(out, value.len());
    out.extend_from_slice(value);
}

/// A positive INTEGER from a big-endian magnitude: leading zeros dropped, a zero octet added
/// when the first bit is set (X.690 8.3), zero as one zero octet.
fn push_uint(out: &mut Vec<u8>, magnitude: &[u8]) {
    let m = &magnitude[magnitude.iter().take_while(|b| **b == 0).count()..];
    let pad = m.first().is_none_or(|b| b & 0x80 != 0);
    out.push(INTEGER);
    push_len(out, m.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(m);
}

fn push_digits(out: &mut Vec<u8>, n: u32, width: usize) {
    let mut buf = [b'0'; 4];
    let mut n = n;
    for slot in buf[..width].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf[..width]);
}

/// An X.509 Time in whole seconds: UTCTime for 1950 to 2049, GeneralizedTime otherwise
/// (RFC 5280 5.1.2.4, 4.1.2.5).
fn push_time(out: &mut Vec<u8>, t: DateTime<Utc>) -> Result<()> {
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return Err(Error::Der(der::ErrorKind::DateTime.into()));
    }
    let year = year as u32;
    if (1950..2050).contains(&year) {
        out.extend_from_slice(&[UTC_TIME, 13]);
        push_digits(out, year % 100, 2);
    } else {
        out.extend_from_slice(&[GENERALIZED_TIME, 15]);
        push_digits(out, year, 4);
    }
    for part in [t.month(), t.day(), t.hour(), t.minute(), t.second()] {
        push_digits(out, part, 2);
    }
    out.push(b'Z');
    Ok(())
}

/// Bytes left free before the first entry: the CRL's outer header, the TBSCertList's header
/// and first fields and the entry list's header are written there once the entries are in, so
/// the whole CRL is assembled in the entries' own buffer (no copy of a 42 MB list). A longer
/// prefix (an issuer name of kilobytes) moves the entries once.
const FRONT_GAP: usize = 1024;

/// The revokedCertificates of a CRL, encoded one entry at a time.
#[derive(Debug)]
pub(super) struct EntryList {
    /// [`FRONT_GAP`] free bytes, then the entries' DER, concatenated (the SEQUENCE OF's
    /// content).
    der: Vec<u8>,
    count: usize,
    /// One entry's content, reused.
    scratch: Vec<u8>,
}

impl Default for EntryList {
    fn default() -> Self {
        EntryList {
            der: vec![0; FRONT_GAP],
            count: 0,
            scratch: Vec::new(),
        }
    }
}

impl EntryList {
    /// The entries of `entries`, in order.
    pub(super) fn of(entries: &[RevokedEntry]) -> Result<Self> {
        let mut list = EntryList::default();
        for e in entries {
            list.push(e)?;
        }
        Ok(list)
    }

    /// Append one entry: serial, revocation date, and the reason code unless it is
    /// `unspecified` (RFC 5280 5.3.1: expressed by leaving the code out).
    pub(super) fn push(&mut self, e: &RevokedEntry) -> Result<()> {
        let body = &mut self.scratch;
        body.clear();
        push_uint(body, crate::ocsp::serial_magnitude(&e.serial));
        push_time(body, e.revoked_at)?;
        if e.reason != RevocationReason::Unspecified {
            // crlEntryExtensions: SEQUENCE { Extension { reasonCode, OCTET STRING { ENUMERATED } } }
            body.extend_from_slice(&[SEQUENCE, 12, SEQUENCE, 10]);
            body.extend_from_slice(&REASON_CODE_OID);
            body.extend_from_slice(&[OCTET_STRING, 3, ENUMERATED, 1, e.reason.code()]);
        }
        self.der.push(SEQUENCE);
        push_len(&mut self.der, body.len());
        self.der.extend_from_slice(body);
        self.count += 1;
        Ok(())
    }

    /// Number of entries.
    pub(super) fn len(&self) -> usize {
        self.count
    }
}

/// What a CRL says besides its entries: the request's number, times (whole seconds) and
/// distribution point, and the issuer's parts.
pub(super) struct CrlHead<'a> {
    pub(super) req: CrlHeadRequest<'a>,
    /// The issuer's key identifier, repeated as the authority key identifier.
    pub(super) key_id: &'a [u8],
    /// The issuer's subject Name, DER.
    pub(super) issuer_name: &'a [u8],
    /// The signature AlgorithmIdentifier, DER.
    pub(super) algorithm: &'a [u8],
}

fn extension(id: const_oid::ObjectIdentifier, critical: bool, value: Vec<u8>) -> Result<Extension> {
    Ok(Extension {
        extn_id: id,
        critical,
        extn_value: OctetString::new(value)?,
    })
}

/// The CRL's extensions: authority key identifier, CRL number, issuing distribution point,
/// then `extra`.
fn crl_extensions(head: &CrlHead<'_>, extra: &[Extension]) -> Result<Vec<u8>> {
    use const_oid::db::rfc5280::{
        ID_CE_AUTHORITY_KEY_IDENTIFIER, ID_CE_CRL_NUMBER, ID_CE_ISSUING_DISTRIBUTION_POINT,
    };
    let mut exts = vec![
        extension(
            ID_CE_AUTHORITY_KEY_IDENTIFIER,
            false,
            AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(head.key_id)?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            }
            .to_der()?,
        )?,
        extension(
            ID_CE_CRL_NUMBER,
            false,
            Uint::new(&head.req.number.to_be_bytes())?.to_der()?,
        )?,
    ];
    if let Some(url) = head.req.distribution_point {
        let idp = IssuingDistributionPoint {
            distribution_point: Some(DistributionPointName::FullName(vec![
                GeneralName::UniformResourceIdentifier(Ia5String::new(url)?),
            ])),
            only_contains_user_certs: false,
            only_contains_ca_certs: false,
            only_some_reasons: None,
            indirect_crl: false,
            only_contains_attribute_certs: false,
        };
        exts.push(extension(
            ID_CE_ISSUING_DISTRIBUTION_POINT,
            true,
            idp.to_der()?,
        )?);
    }
    exts.extend(extra.iter().cloned());
    Ok(exts.to_der()?)
}

/// The signed CRL of `head`, `entries` and `extra` extensions: the TBSCertList is assembled
/// around the entries in their own buffer, `sign` signs it (and checks its signature), and the
/// CertificateList (the TBSCertList, the algorithm again, the signature as a BIT STRING) is
/// finished in the same buffer.
pub(super) fn signed_crl(
    head: &CrlHead<'_>,
    extra: &[Extension],
    entries: EntryList,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    let EntryList {
        der: mut buf,
        count,
        ..
    } = entries;
    let entries_len = buf.len() - FRONT_GAP;

    let mut prefix = Vec::with_capacity(256);
    prefix.extend_from_slice(&[INTEGER, 1, 1]);
    prefix.extend_from_slice(head.algorithm);
    prefix.extend_from_slice(head.issuer_name);
    push_time(&mut prefix, head.req.this_update)?;
    push_time(&mut prefix, head.req.next_update)?;
    // RFC 5280 5.1.2.6: no revoked certificates, no list.
    if count > 0 {
        prefix.push(SEQUENCE);
        push_len(&mut prefix, entries_len);
    }
    let exts = crl_extensions(head, extra)?;
    let content = prefix.len() + entries_len + header_len(exts.len()) + exts.len();
    let mut tbs_header = Vec::with_capacity(8);
    tbs_header.push(SEQUENCE);
    push_len(&mut tbs_header, content);

    // The prefix goes right before the entries, with room for the outer header before it.
    let front = tbs_header.len() + prefix.len();
    if front + 8 > FRONT_GAP {
        let mut wider = vec![0; front + 8];
        wider.extend_from_slice(&buf[FRONT_GAP..]);
        buf = wider;
    }
    let gap = buf.len() - entries_len;
    let start = gap - front;
    buf[start..start + tbs_header.len()].copy_from_slice(&tbs_header);
    buf[start + tbs_header.len()..gap].copy_from_slice(&prefix);
    push_tlv(&mut buf, CRL_EXTENSIONS, &exts);

    let signature = sign(&buf[start..])?;
    let tbs_len = buf.len() - start;
    buf.extend_from_slice(head.algorithm);
    buf.push(BIT_STRING);
    push_len(&mut buf, 1 + signature.len());
    buf.push(0);
    buf.extend_from_slice(&signature);

    let mut outer = Vec::with_capacity(8);
    outer.push(SEQUENCE);
    push_len(
        &mut outer,
        tbs_len + head.algorithm.len() + header_len(1 + signature.len()) + 1 + signature.len(),
    );
    let begin = start - outer.len();
    buf[begin..start].copy_from_slice(&outer);
    buf.drain(..begin);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// The CRL assembled in the entries' buffer decodes as written, whether its prefix fits
    /// the gap before the entries or (an issuer name of kilobytes) does not; the signature is
    /// over exactly the TBSCertList.
    #[test]
    fn the_crl_assembled_around_its_entries_decodes() {
        use der::Decode;
        use x509_cert::name::Name;
        let now = Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap();
        for cn_len in [10usize, 3000] {
            let name: Name = format!("CN={}", "a".repeat(cn_len)).parse().unwrap();
            let name_der = name.to_der().unwrap();
            let algorithm = crate::signer::KeyAlgorithm::P256
                .signature_algorithm_id()
                .to_der()
                .unwrap();
            for n in [0u8, 3] {
                let mut list = EntryList::default();
                for i in 0..n {
                    list.push(&RevokedEntry {
                        serial: vec![0x81, i],
                        revoked_at: now,
                        reason: RevocationReason::KeyCompromise,
                    })
                    .unwrap();
                }
                let head = CrlHead {
                    req: CrlHeadRequest {
                        number: 7,
                        this_update: now,
                        next_update: now + chrono::Duration::hours(1),
                        distribution_point: Some("http://ca.test/crl"),
                    },
                    key_id: &[1; 20],
                    issuer_name: &name_der,
                    algorithm: &algorithm,
                };
                let mut signed = Vec::new();
                let der = signed_crl(&head, &[], list, |tbs| {
                    signed = tbs.to_vec();
                    Ok(vec![0x30, 0x01, 0x00])
                })
                .unwrap();
                let crl = x509_cert::crl::CertificateList::from_der(&der).unwrap();
                assert_eq!(crl.tbs_cert_list.to_der().unwrap(), signed);
                assert_eq!(crl.tbs_cert_list.issuer, name);
                assert_eq!(crl.signature.raw_bytes(), [0x30, 0x01, 0x00]);
                let listed = crl
                    .tbs_cert_list
                    .revoked_certificates
                    .map_or(0, |l| l.len());
                assert_eq!(listed, usize::from(n));
                assert_eq!(crl.tbs_cert_list.crl_extensions.unwrap().len(), 3);
            }
        }
    }

    #[test]
    fn lengths_integers_and_times_are_der() {
        let mut v = Vec::new();
        push_len(&mut v, 0x7f);
        push_len(&mut v, 0x80);
        push_len(&mut v, 0x1_0000);
        assert_eq!(v, [0x7f, 0x81, 0x80, 0x83, 0x01, 0x00, 0x00]);
        assert_eq!(header_len(0x7f), 2);
        assert_eq!(header_len(0x1_0000), 5);

        for (magnitude, der) in [
            (&[][..], &[2u8, 1, 0][..]),
            (&[0, 0, 5], &[2, 1, 5]),
            (&[0x80], &[2, 2, 0, 0x80]),
            (&[0x7f, 1], &[2, 2, 0x7f, 1]),
        ] {
            let mut v = Vec::new();
            push_uint(&mut v, magnitude);
            assert_eq!(v, der, "{magnitude:?}");
            let parsed: der::asn1::Int = der::Decode::from_der(&v).unwrap();
            assert!(!parsed.as_bytes().is_empty());
        }

        for (t, text) in [
            (
                Utc.with_ymd_and_hms(2026, 12, 5, 7, 8, 9).unwrap(),
                "261205070809Z",
            ),
            (
                Utc.with_ymd_and_hms(2049, 12, 31, 23, 59, 59).unwrap(),
                "491231235959Z",
            ),
            (
                Utc.with_ymd_and_hms(2050, 1, 1, 0, 0, 0).unwrap(),
                "20500101000000Z",
            ),
        ] {
            let mut v = Vec::new();
            push_time(&mut v, t).unwrap();
            assert_eq!(&v[2..], text.as_bytes());
            let parsed: x509_cert::time::Time = der::Decode::from_der(&v).unwrap();
            assert_eq!(crate::x509::time(parsed).unwrap(), t);
        }
    }
}
