//! The delegated OCSP responder certificate as a certificate this CA issued: recorded in the
//! store (profile [`OCSP_SIGNER_PROFILE`]) so that it is listed and revoked like any other.
//! The `ocsp-signer` ceremony issues it offline with the issuing key; the server records it
//! the first time it starts with it ([`register_signer_cert`]).

use super::responder::check_delegated;
use super::{serial_magnitude, OcspIssuer, OCSP_SIGNER_PROFILE};
use crate::audit::NewAuditEvent;
use crate::error::{Error, Result};
use crate::store::{CertRecord, RecordStatus, Requester, Store};
use chrono::{DateTime, Utc};
use der::{Decode, Encode};
use x509_cert::Certificate;

/// Record `cert_der` (a delegated responder certificate the issuing CA signed, checked here as
/// RFC 6960 4.2.2.2 asks) in the store, unless it is there already. Returns the stored record
/// and whether it was inserted now; an insertion is audited (`ocsp_signer.register`, object
/// the serial), once. A different certificate stored under the same serial is refused.
pub fn register_signer_cert(
    store: &dyn Store,
    issuer: &OcspIssuer,
    cert_der: &[u8],
    actor: &str,
) -> Result<(CertRecord, bool)> {
    let cert = Certificate::from_der(cert_der)
        .map_err(|e| Error::Issuer(format!("cannot parse OCSP responder certificate: {e}")))?;
    check_delegated(&cert, issuer)?;
    let tbs = &cert.tbs_certificate;
    let serial = serial_magnitude(tbs.serial_number.as_bytes()).to_vec();
    if let Some(existing) = store.get_cert(&serial)? {
        if existing.der != cert_der {
            return Err(Error::Issuer(format!(
                "serial {} of the OCSP responder certificate is recorded for another certificate",
                hex::encode(&serial)
            )));
        }
        return Ok((existing, false));
    }
    let time = |t: &x509_cert::time::Time| {
        i64::try_from(t.to_unix_duration().as_secs())
            .ok()
            .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
            .ok_or_else(|| Error::Issuer("OCSP responder certificate validity out of range".into()))
    };
    let subject = tbs.subject.to_string();
    let identity = common_name(&tbs.subject).unwrap_or_else(|| subject.clone());
    let not_before = time(&tbs.validity.not_before)?;
    let record = CertRecord {
        serial: serial.clone(),
        subject,
        sans: Vec::new(),
        identity,
        profile: OCSP_SIGNER_PROFILE.into(),
        not_before,
        not_after: time(&tbs.validity.not_after)?,
        // Issued offline in the ocsp-signer ceremony; its notBefore is the ceremony's start.
        issued_at: not_before,
        requester: Requester::Admin("ocsp-signer ceremony".into()),
        spki_sha256: crate::signer::sha256_hex(&tbs.subject_public_key_info.to_der()?),
        der: cert_der.to_vec(),
        status: RecordStatus::Valid,
        lineage: serial.clone(),
        generation: 1,
    };
    if !store.insert_cert(&record)? {
        // Another node recorded it between the lookup and the insert.
        return match store.get_cert(&serial)? {
            Some(existing) if existing.der == cert_der => Ok((existing, false)),
            _ => Err(Error::Issuer(format!(
                "serial {} of the OCSP responder certificate is recorded for another certificate",
                hex::encode(&serial)
            ))),
        };
    }
    store.append_audit(
        NewAuditEvent::ok(actor, "ocsp_signer.register", hex::encode(&serial)).with_detail(
            serde_json::json!({
                "profile": OCSP_SIGNER_PROFILE,
                "subject": record.subject,
                "not_after": record.not_after.to_rfc3339(),
            }),
        ),
    )?;
    tracing::info!(serial = %hex::encode(&serial), not_after = %record.not_after, "recorded the OCSP responder certificate in the store");
    Ok((record, true))
}

fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    name.0.iter().flat_map(|rdn| rdn.0.iter()).find_map(|atv| {
        if atv.oid != const_oid::db::rfc4519::CN {
            return None;
        }
        atv.value
            .decode_as::<der::asn1::Utf8StringRef<'_>>()
            .map(|s| s.as_str().to_string())
            .or_else(|_| {
                atv.value
                    .decode_as::<der::asn1::PrintableStringRef<'_>>()
                    .map(|s| s.as_str().to_string())
            })
            .ok()
    })
}
