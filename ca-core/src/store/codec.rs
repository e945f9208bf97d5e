//! The on-disk encoding of certificate records and stored OCSP responses: length-prefixed
//! binary, the DER kept as raw bytes.
//!
//! These are the two records written at every issuance. JSON with base64 DER made them about
//! 1.7 times larger and cost a serialisation pass; sled rewrites whole leaf nodes (up to 16
//! records) when it consolidates a page, so record size is write volume at every flush.
//! Records written by earlier versions (JSON, first byte `{`) are still read; the other
//! records (tokens, revocations, audit events) stay JSON.
//!
//! Layout, version 1 (integers big-endian; `str`/`bytes` = u32 length + bytes; time = i64
//! seconds + u32 nanoseconds since the Unix epoch):
//!
//! - certificate: `01` serial:bytes subject:str sans:(u32 count, str...) identity:str
//!   profile:str not_before:time not_after:time issued_at:time requester:(u8 kind: 0 token,
//!   1 renewal, 2 admin; str) spki_sha256:str der:bytes status:(u8: 0 valid, 1 revoked; if
//!   revoked: at:time reason:u8 RFC 5280 code)
//!   Version 2 (`02`) appends lineage:bytes generation:(u32); version 1 records read as
//!   their own lineage, generation 1.
//! - OCSP response: `01` serial:bytes der:bytes this_update:time next_update:time

use super::{CertRecord, RecordStatus, Requester, StoredOcspResponse};
use crate::error::{Error, Result};
use crate::revocation::RevocationReason;
use chrono::{DateTime, Utc};

const V1: u8 = 1;
/// Certificate records with lineage and generation.
const V2: u8 = 2;

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: usize) -> Result<()> {
        let v = u32::try_from(v).map_err(|_| Error::Corrupt("record field over 4 GiB".into()))?;
        self.0.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }
    fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.u32(b.len())?;
        self.0.extend_from_slice(b);
        Ok(())
    }
    fn str(&mut self, s: &str) -> Result<()> {
        self.bytes(s.as_bytes())
    }
    fn time(&mut self, t: DateTime<Utc>) {
        self.0.extend_from_slice(&t.timestamp().to_be_bytes());
        self.0
            .extend_from_slice(&t.timestamp_subsec_nanos().to_be_bytes());
    }
}

struct R<'a> {
    what: &'static str,
    b: &'a [u8],
}

impl<'a> R<'a> {
    fn bad(&self, why: &str) -> Error {
        Error::Corrupt(format!("{} record: {why}", self.what))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(self.bad("truncated"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let b = self.take(N)?;
        <[u8; N]>::try_from(b).map_err(|_| self.bad("truncated"))
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<usize> {
        Ok(u32::from_be_bytes(self.array()?) as usize)
    }
    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.u32()?;
        Ok(self.take(n)?.to_vec())
    }
    fn str(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?).map_err(|_| self.bad("text field is not UTF-8"))
    }
    fn time(&mut self) -> Result<DateTime<Utc>> {
        let secs = i64::from_be_bytes(self.array()?);
        let nanos = u32::from_be_bytes(self.array()?);
        DateTime::from_timestamp(secs, nanos).ok_or_else(|| self.bad("time out of range"))
    }
    fn end(&self) -> Result<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(self.bad("trailing bytes"))
        }
    }
}

fn json<T: serde::de::DeserializeOwned>(what: &str, b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| Error::Corrupt(format!("{what} record: {e}")))
}

/// Encode a certificate record.
pub(super) fn encode_cert(rec: &CertRecord) -> Result<Vec<u8>> {
    let mut w = W(Vec::with_capacity(256 + rec.der.len()));
    w.u8(V2);
    w.bytes(&rec.serial)?;
    w.str(&rec.subject)?;
    w.u32(rec.sans.len())?;
    for s in &rec.sans {
        w.str(s)?;
    }
    w.str(&rec.identity)?;
    w.str(&rec.profile)?;
    w.time(rec.not_before);
    w.time(rec.not_after);
    w.time(rec.issued_at);
    let (kind, id) = match &rec.requester {
        Requester::Token(id) => (0, id),
        Requester::Renewal(id) => (1, id),
        Requester::Admin(id) => (2, id),
    };
    w.u8(kind);
    w.str(id)?;
    w.str(&rec.spki_sha256)?;
    w.bytes(&rec.der)?;
    match &rec.status {
        RecordStatus::Valid => w.u8(0),
        RecordStatus::Revoked { at, reason } => {
            w.u8(1);
            w.time(*at);
            w.u8(reason.code());
        }
    }
    w.bytes(&rec.lineage)?;
    w.u32(rec.generation as usize)?;
    Ok(w.0)
}

/// Decode a certificate record (version 1, or the JSON of earlier versions).
pub(super) fn decode_cert(b: &[u8]) -> Result<CertRecord> {
    const WHAT: &str = "certificate";
    let version = match b.first() {
        Some(b'{') => return json::<CertRecord>(WHAT, b).map(CertRecord::with_lineage_defaults),
        Some(&v) if v == V1 || v == V2 => v,
        _ => return Err(Error::Corrupt(format!("{WHAT} record: unknown encoding"))),
    };
    let mut r = R {
        what: WHAT,
        b: &b[1..],
    };
    let serial = r.bytes()?;
    let subject = r.str()?;
    let n = r.u32()?;
    // Each SAN takes at least its 4-byte length: bound the count before allocating.
    if n > r.b.len() / 4 {
        return Err(r.bad("SAN count beyond the record"));
    }
    let sans = (0..n).map(|_| r.str()).collect::<Result<Vec<_>>>()?;
    let identity = r.str()?;
    let profile = r.str()?;
    let not_before = r.time()?;
    let not_after = r.time()?;
    let issued_at = r.time()?;
    let requester = match (r.u8()?, r.str()?) {
        (0, id) => Requester::Token(id),
        (1, id) => Requester::Renewal(id),
        (2, id) => Requester::Admin(id),
        _ => return Err(r.bad("unknown requester kind")),
    };
    let spki_sha256 = r.str()?;
    let der = r.bytes()?;
    let status = match r.u8()? {
        0 => RecordStatus::Valid,
        1 => RecordStatus::Revoked {
            at: r.time()?,
            reason: RevocationReason::from_code(r.u8()?)
                .ok_or_else(|| r.bad("unknown revocation reason"))?,
        },
        _ => return Err(r.bad("unknown status")),
    };
    let (lineage, generation) = if version == V2 {
        let lineage = r.bytes()?;
        let generation = u32::try_from(r.u32()?).map_err(|_| r.bad("generation out of range"))?;
        (lineage, generation)
    } else {
        (Vec::new(), 0)
    };
    r.end()?;
    Ok(CertRecord {
        serial,
        subject,
        sans,
        identity,
        profile,
        not_before,
        not_after,
        issued_at,
        requester,
        spki_sha256,
        der,
        status,
        lineage,
        generation,
    }
    .with_lineage_defaults())
}

/// Encode a stored OCSP response.
pub(super) fn encode_ocsp(resp: &StoredOcspResponse) -> Result<Vec<u8>> {
    let mut w = W(Vec::with_capacity(32 + resp.serial.len() + resp.der.len()));
    w.u8(V1);
    w.bytes(&resp.serial)?;
    w.bytes(&resp.der)?;
    w.time(resp.this_update);
    w.time(resp.next_update);
    Ok(w.0)
}

/// An OCSP record that names the group response it shares instead of holding the bytes
/// (`OcspResponseStore::put_ocsp_responses_lazy`: one group response signed for several
/// certificates is kept once).
const OCSP_LINK: u8 = 0x4c;

/// What the OCSP tree or table holds under a serial.
pub(super) enum OcspRecord {
    /// The response itself.
    Full(StoredOcspResponse),
    /// A member of a group response kept once, under `group`.
    Link {
        group: Vec<u8>,
        this_update: DateTime<Utc>,
        next_update: DateTime<Utc>,
    },
}

/// Encode a link to the group response kept under `group`.
pub(super) fn encode_ocsp_link(resp: &StoredOcspResponse, group: &[u8]) -> Result<Vec<u8>> {
    let mut w = W(Vec::with_capacity(24 + group.len()));
    w.u8(OCSP_LINK);
    w.bytes(group)?;
    w.time(resp.this_update);
    w.time(resp.next_update);
    Ok(w.0)
}

/// Decode what is kept under a serial: a response, or a link to a group response.
pub(super) fn decode_ocsp_record(b: &[u8]) -> Result<OcspRecord> {
    if b.first() != Some(&OCSP_LINK) {
        return decode_ocsp(b).map(OcspRecord::Full);
    }
    let mut r = R {
        what: "OCSP link",
        b: &b[1..],
    };
    let link = OcspRecord::Link {
        group: r.bytes()?,
        this_update: r.time()?,
        next_update: r.time()?,
    };
    r.end()?;
    Ok(link)
}

/// The nextUpdate of what is kept under a serial, response or link, without decoding the
/// response: both encodings end with it (JSON records of earlier versions are decoded).
pub(super) fn ocsp_record_next_update(b: &[u8]) -> Result<DateTime<Utc>> {
    if b.first() == Some(&b'{') {
        return Ok(decode_ocsp(b)?.next_update);
    }
    let tail = b
        .len()
        .checked_sub(12)
        .map(|at| &b[at..])
        .ok_or_else(|| Error::Corrupt("OCSP record: too short".into()))?;
    R {
        what: "OCSP record",
        b: tail,
    }
    .time()
}

/// Decode a stored OCSP response (version 1, or the JSON of earlier versions).
pub(super) fn decode_ocsp(b: &[u8]) -> Result<StoredOcspResponse> {
    const WHAT: &str = "OCSP response";
    match b.first() {
        Some(b'{') => return json(WHAT, b),
        Some(&V1) => {}
        _ => return Err(Error::Corrupt(format!("{WHAT} record: unknown encoding"))),
    }
    let mut r = R {
        what: WHAT,
        b: &b[1..],
    };
    let resp = StoredOcspResponse {
        serial: r.bytes()?,
        der: r.bytes()?,
        this_update: r.time()?,
        next_update: r.time()?,
    };
    r.end()?;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn record(status: RecordStatus, requester: Requester) -> CertRecord {
        let now = Utc::now();
        CertRecord {
            serial: vec![0x7f, 1, 2, 3],
            subject: "CN=é.test".into(),
            sans: vec!["dns:a.test".into(), "uri:spiffe://test/x".into()],
            identity: "é.test".into(),
            profile: "client".into(),
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::hours(24),
            issued_at: now,
            requester,
            spki_sha256: "ab".repeat(32),
            der: vec![0x30, 0x03, 1, 2, 3],
            status,
            lineage: vec![0x55, 9],
            generation: 3,
        }
    }

    #[test]
    fn version_1_records_read_as_their_own_lineage() {
        let rec = record(RecordStatus::Valid, Requester::Token("t".into()));
        let bin = encode_cert(&rec).unwrap();
        // Version 1 is version 2 without the lineage tail (u32 length + bytes, u32 generation).
        let mut v1 = bin[..bin.len() - (4 + rec.lineage.len() + 4)].to_vec();
        v1[0] = V1;
        let old = decode_cert(&v1).unwrap();
        assert_eq!(
            (old.lineage.as_slice(), old.generation),
            (rec.serial.as_slice(), 1)
        );
        let mut json: serde_json::Value = serde_json::to_value(&rec).unwrap();
        json.as_object_mut().unwrap().remove("lineage");
        json.as_object_mut().unwrap().remove("generation");
        let old = decode_cert(&serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(
            (old.lineage.as_slice(), old.generation),
            (rec.serial.as_slice(), 1)
        );
    }

    #[test]
    fn certificate_records_round_trip_and_old_json_is_read() {
        let revoked = RecordStatus::Revoked {
            at: Utc::now(),
            reason: RevocationReason::KeyCompromise,
        };
        for rec in [
            record(RecordStatus::Valid, Requester::Token("t1".into())),
            record(revoked, Requester::Renewal("0a".into())),
            record(RecordStatus::Valid, Requester::Admin("ca-server".into())),
        ] {
            let bin = encode_cert(&rec).unwrap();
            assert_eq!(decode_cert(&bin).unwrap(), rec);
            let json = serde_json::to_vec(&rec).unwrap();
            assert!(bin.len() < json.len());
            assert_eq!(decode_cert(&json).unwrap(), rec);
        }
    }

    #[test]
    fn damaged_records_are_refused() {
        let bin = encode_cert(&record(RecordStatus::Valid, Requester::Token("t".into()))).unwrap();
        for cut in [0, 1, 5, bin.len() / 2, bin.len() - 1] {
            assert!(
                matches!(decode_cert(&bin[..cut]), Err(Error::Corrupt(_))),
                "{cut}"
            );
        }
        let mut long = bin.clone();
        long.push(0);
        assert!(matches!(decode_cert(&long), Err(Error::Corrupt(_))));
        let mut version = bin;
        version[0] = 9;
        assert!(matches!(decode_cert(&version), Err(Error::Corrupt(_))));
    }

    #[test]
    fn ocsp_responses_round_trip_and_old_json_is_read() {
        let now = Utc::now();
        let resp = StoredOcspResponse {
            serial: vec![1, 2],
            der: vec![0x30, 0x00],
            this_update: now,
            next_update: now + Duration::hours(24),
        };
        let bin = encode_ocsp(&resp).unwrap();
        assert_eq!(decode_ocsp(&bin).unwrap(), resp);
        assert_eq!(
            decode_ocsp(&serde_json::to_vec(&resp).unwrap()).unwrap(),
            resp
        );
        assert!(matches!(
            decode_ocsp(&bin[..bin.len() - 1]),
            Err(Error::Corrupt(_))
        ));
    }
}
