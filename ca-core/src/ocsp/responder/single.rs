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
use der::Decode;
use x509_ocsp::{OcspGeneralizedTime, SingleResponse};

const SEQUENCE: u8 = 0x30;
const ENUMERATED: u8 = 0x0a;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const INTEGER: u8 = 0x02;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0]` constructed: OCSPResponse.responseBytes, ResponseData.version, SingleResponse.nextUpdate.
const CTX0: u8 = 0xa0;
/// `[2]` constructed: ResponderID byKey.
const CTX2: u8 = 0xa2;
/// id-pkix-ocsp-basic (1.3.6.1.5.5.7.48.1.1), content octets.
const OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
/// A DER GeneralizedTime without fractions: `YYYYMMDDHHMMSSZ`.
const TIME_LEN: usize = 15;

/// One TLV: (tag, the whole element, its contents, what follows). Single-byte tags and
/// definite lengths only (DER).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        (
            bytes.iter().fold(0usize, |l, b| (l << 8) | usize::from(*b)),
            rest,
        )
    };
    if rest.len() < len {
        return None;
    }
    let header = b.len() - rest.len();
    let (contents, after) = rest.split_at(len);
    Some((tag, &b[..header + len], contents, after))
}

/// The element of `b` with tag `want` and what follows it.
fn expect(b: &[u8], want: u8) -> Option<(&[u8], &[u8], &[u8])> {
    let (tag, whole, contents, after) = tlv(b)?;
    (tag == want).then_some((whole, contents, after))
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
    let (_, resp, _) = expect(der, SEQUENCE)?;
    let (_, status, rest) = expect(resp, ENUMERATED)?;
    if status != [0] {
        return None;
    }
    let (_, bytes, _) = expect(rest, CTX0)?;
    let (_, bytes, _) = expect(bytes, SEQUENCE)?;
    let (_, oid, rest) = expect(bytes, OID)?;
    if oid != OCSP_BASIC {
        return None;
    }
    let (_, basic, _) = expect(rest, OCTET_STRING)?;
    // BasicOCSPResponse { tbsResponseData, ... }: the signature is not checked here (the
    // caller's store is this process's own: module docs of `follow.rs`).
    let (_, basic, _) = expect(basic, SEQUENCE)?;
    let (_, tbs, _) = expect(basic, SEQUENCE)?;
    // ResponseData { version [0] OPTIONAL, responderID, producedAt, responses, ... }.
    let tbs = match expect(tbs, CTX0) {
        Some((_, _, after)) => after,
        None => tbs,
    };
    let (_, by_key, rest) = expect(tbs, CTX2)?;
    let (_, key_hash, _) = expect(by_key, OCTET_STRING)?;
    if key_hash != own_key_hash {
        return None;
    }
    let (produced_at, _, rest) = expect(rest, GENERALIZED_TIME)?;
    let (_, mut singles, _) = expect(rest, SEQUENCE)?;
    let mut found: Option<SingleResponse> = None;
    // The earliest nextUpdate, compared as `YYYYMMDDHHMMSSZ` strings (their order is the
    // times' order).
    let mut next_update: Option<(&[u8], &[u8])> = None;
    while !singles.is_empty() {
        let (whole, single, after) = expect(singles, SEQUENCE)?;
        singles = after;
        let (_, cert_id, rest) = expect(single, SEQUENCE)?;
        // certStatus (one element) and thisUpdate, then nextUpdate [0].
        let (_, _, _, rest) = tlv(rest)?;
        let (_, _, rest) = expect(rest, GENERALIZED_TIME)?;
        let (_, next, _) = expect(rest, CTX0)?;
        let (time, contents, _) = expect(next, GENERALIZED_TIME)?;
        if contents.len() != TIME_LEN || contents.last() != Some(&b'Z') {
            return None;
        }
        if next_update.is_none_or(|(_, earliest)| contents < earliest) {
            next_update = Some((time, contents));
        }
        if found.is_some() {
            continue;
        }
        // CertID { hashAlgorithm, issuerNameHash, issuerKeyHash, serialNumber }.
        let (_, _, rest) = expect(cert_id, SEQUENCE)?;
        let (_, _, rest) = expect(rest, OCTET_STRING)?;
        let (_, _, rest) = expect(rest, OCTET_STRING)?;
        let (_, number, _) = expect(rest, INTEGER)?;
        if serial_magnitude(number) != serial {
            continue;
        }
        // This serial: decoded in full, and kept if it names this issuer (the first that
        // does, as `stored_answers` takes it).
        let single = SingleResponse::from_der(whole).ok()?;
        if issuer.matches(&single.cert_id).is_some() {
            found = Some(single);
        }
    }
    let single = found?;
    let produced_at = from_gtime(&OcspGeneralizedTime::from_der(produced_at).ok()?);
    let next_update = from_gtime(&OcspGeneralizedTime::from_der(next_update?.0).ok()?);
    Some(AnswerKind::Signed {
        status: from_ocsp_status(&single.cert_status),
        produced_at,
        this_update: from_gtime(&single.this_update),
        next_update,
        cacheable: true,
    })
}
