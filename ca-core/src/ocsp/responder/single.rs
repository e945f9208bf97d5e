//! One serial's answer from a stored response, without decoding the whole response: what a
//! cache miss reads back on a local store (`Follower::read_back`). A group response signed at
//! issuance answers for up to [`super::ResponderConfig::issuance_batch_max`] certificates
//! under two CertID hashes each; decoding all of it (every CertID, status and time, with their
//! allocations) was most of a miss's cost. This walks the DER structure, compares serials as
//! bytes, and decodes only the SingleResponse asked about, producedAt and nextUpdate.
//!
//! It accepts no response that [`super::cache::check_stored`] would refuse: the responder ID
//! must be this responder's key hash, the CertID must name this issuer
//! ([`OcspIssuer::matches`]), and the answer has the same status and times (nextUpdate is the
//! earliest over all SingleResponses, as [`ParsedResponse::next_update`] computes it). Anything
//! it does not expect (indefinite lengths, fractional times, another response type) returns
//! `None`, and the caller decodes the response in full instead.
//!
//! [`ParsedResponse::next_update`]: super::super::build::ParsedResponse::next_update

use super::super::build::{from_gtime, from_ocsp_status};
use super::super::{serial_magnitude, OcspIssuer};
use super::answer::AnswerKind;
use crate::x509::der_walk::{
    tlv, Tlv, CTX0, ENUMERATED, GENERALIZED_TIME, INTEGER, OCTET_STRING, SEQUENCE,
};
use der::Decode;
use x509_ocsp::{OcspGeneralizedTime, SingleResponse};

/// OBJECT IDENTIFIER.
const OID: u8 = 0x06;
/// `[2]` constructed: ResponderID byKey.
const CTX2: u8 = 0xa2;
/// id-pkix-ocsp-basic (1.3.6.1.5.5.7.48.1.1), content octets.
const OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
/// A DER GeneralizedTime without fractions: `YYYYMMDDHHMMSSZ`.
const TIME_LEN: usize = 15;

/// The first element of `b` if its tag is `want`.
fn expect(b: &[u8], want: u8) -> Option<Tlv<'_>> {
    tlv(b).filter(|t| t.tag == want)
}

/// What `der` (a stored OCSPResponse) answers for `serial` (magnitude), if this responder's key
/// (`own_key_hash`) signed it for `issuer`; `None` if not, or if the response is not in the
/// shape this walk expects (see the module docs).
pub(super) fn kind_for(
    der: &[u8],
    serial: &[u8],
    issuer: &OcspIssuer,
    own_key_hash: &[u8],
) -> Option<AnswerKind> {
    // OCSPResponse: responseStatus successful (0), responseBytes [0] { id-pkix-ocsp-basic,
    // OCTET STRING BasicOCSPResponse }.
    let resp = expect(der, SEQUENCE)?.contents;
    let status = expect(resp, ENUMERATED)?;
    if status.contents != [0] {
        return None;
    }
    let bytes = expect(expect(status.after, CTX0)?.contents, SEQUENCE)?.contents;
    let oid = expect(bytes, OID)?;
    if oid.contents != OCSP_BASIC {
        return None;
    }
    let basic = expect(oid.after, OCTET_STRING)?.contents;
    // BasicOCSPResponse { tbsResponseData, ... }: the signature is not checked here (the
    // caller's store is this process's own: module docs of `follow.rs`).
    let basic = expect(basic, SEQUENCE)?.contents;
    let tbs = expect(basic, SEQUENCE)?.contents;
    // ResponseData { version [0] OPTIONAL, responderID, producedAt, responses, ... }.
    let tbs = expect(tbs, CTX0).map_or(tbs, |v| v.after);
    let by_key = expect(tbs, CTX2)?;
    if expect(by_key.contents, OCTET_STRING)?.contents != own_key_hash {
        return None;
    }
    let produced_at = expect(by_key.after, GENERALIZED_TIME)?;
    let mut singles = expect(produced_at.after, SEQUENCE)?.contents;
    let mut found: Option<SingleResponse> = None;
    // The earliest nextUpdate, compared as `YYYYMMDDHHMMSSZ` strings (their order is the
    // times' order).
    let mut next_update: Option<Tlv<'_>> = None;
    while !singles.is_empty() {
        let single = expect(singles, SEQUENCE)?;
        singles = single.after;
        let cert_id = expect(single.contents, SEQUENCE)?;
        // certStatus (one element) and thisUpdate, then nextUpdate [0].
        let cert_status = tlv(cert_id.after)?;
        let this_update = expect(cert_status.after, GENERALIZED_TIME)?;
        let next = expect(expect(this_update.after, CTX0)?.contents, GENERALIZED_TIME)?;
        if next.contents.len() != TIME_LEN || next.contents.last() != Some(&b'Z') {
            return None;
        }
        if next_update
            .as_ref()
            .is_none_or(|earliest| next.contents < earliest.contents)
        {
            next_update = Some(next);
        }
        if found.is_some() {
            continue;
        }
        // CertID { hashAlgorithm, issuerNameHash, issuerKeyHash, serialNumber }.
        let alg = expect(cert_id.contents, SEQUENCE)?;
        let name_hash = expect(alg.after, OCTET_STRING)?;
        let key_hash = expect(name_hash.after, OCTET_STRING)?;
        let number = expect(key_hash.after, INTEGER)?;
        if serial_magnitude(number.contents) != serial {
            continue;
        }
        // This serial: decoded in full, and kept if it names this issuer (the first that
        // does, as `stored_answers` takes it).
        let decoded = SingleResponse::from_der(single.whole).ok()?;
        if issuer.matches(&decoded.cert_id).is_some() {
            found = Some(decoded);
        }
    }
    let single = found?;
    let produced_at = from_gtime(&OcspGeneralizedTime::from_der(produced_at.whole).ok()?);
    let next_update = from_gtime(&OcspGeneralizedTime::from_der(next_update?.whole).ok()?);
    Some(AnswerKind::Signed {
        status: from_ocsp_status(&single.cert_status),
        produced_at,
        this_update: from_gtime(&single.this_update),
        next_update,
        cacheable: true,
    })
}
