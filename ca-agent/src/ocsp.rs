//! OCSP: fetch the status of the current certificate (RFC 6960), check the response, and keep
//! it as a staple file (nginx `ssl_stapling_file`).

use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use der::{Decode, Encode};
use std::time::Duration;
use x509_cert::Certificate;
use x509_ocsp::{
    builder::OcspRequestBuilder, BasicOcspResponse, CertStatus, OcspRequest, OcspResponse,
    OcspResponseStatus, Request, ResponderId, Version,
};

/// Status of the certificate according to the responder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not revoked.
    Good,
    /// Revoked at this time, for this reason (RFC 5280 5.3.1 name).
    Revoked {
        /// Revocation time.
        at: DateTime<Utc>,
        /// Reason, when given.
        reason: Option<String>,
    },
    /// The responder does not know the certificate.
    Unknown,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Good => f.write_str("good"),
            Status::Unknown => f.write_str("unknown"),
            Status::Revoked { .. } => f.write_str("revoked"),
        }
    }
}

/// How long a response without nextUpdate is treated as valid after its thisUpdate. RFC 6960
/// 4.2.2.1 reads a missing nextUpdate as "newer information is always available", not as
/// "valid forever": without a bound, a replayed old `good` response (fetched over plain HTTP)
/// would be kept and stapled forever, hiding a revocation.
pub const NO_NEXT_UPDATE_LIFETIME: chrono::Duration = chrono::Duration::hours(1);

/// A checked OCSP response for one certificate.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The whole DER `OCSPResponse`, as stapled.
    pub der: Vec<u8>,
    /// Certificate status.
    pub status: Status,
    /// thisUpdate.
    pub this_update: DateTime<Utc>,
    /// nextUpdate, when given.
    pub next_update: Option<DateTime<Utc>>,
    /// When the agent stops trusting it: nextUpdate, or thisUpdate +
    /// [`NO_NEXT_UPDATE_LIFETIME`] when the responder gave none.
    pub expires_at: DateTime<Utc>,
}

impl Checked {
    /// When to fetch a fresh response: halfway through the validity window (thisUpdate to
    /// [`Checked::expires_at`]), and not before 30 seconds from now.
    pub fn refresh_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let half = (self.expires_at - self.this_update) / 2;
        (self.this_update + half).max(now + chrono::Duration::seconds(30))
    }
}

const ID_SHA1: der::oid::ObjectIdentifier = der::oid::ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const ID_SHA256: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");

/// Whether a CertID names `issuer`: the hashes of its subject name (DER) and of its public key
/// (the subjectPublicKey bits), with the CertID's own hash algorithm (RFC 6960 4.1.1). A serial
/// number alone says nothing: every CA numbers its own certificates.
fn names_issuer(id: &x509_ocsp::CertId, issuer: &Certificate) -> Result<bool> {
    use sha2::Digest;
    let name = issuer
        .tbs_certificate
        .subject
        .to_der()
        .map_err(|e| err(format!("issuer name: {e}")))?;
    let key = issuer
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    let (name_hash, key_hash) = match id.hash_algorithm.oid {
        ID_SHA1 => (
            sha1::Sha1::digest(&name).to_vec(),
            sha1::Sha1::digest(key).to_vec(),
        ),
        ID_SHA256 => (
            sha2::Sha256::digest(&name).to_vec(),
            sha2::Sha256::digest(key).to_vec(),
        ),
        // A hash we cannot compute cannot be matched: fail closed.
        _ => return Ok(false),
    };
    Ok(id.issuer_name_hash.as_bytes() == name_hash.as_slice()
        && id.issuer_key_hash.as_bytes() == key_hash.as_slice())
}

fn gt(t: &x509_ocsp::OcspGeneralizedTime) -> DateTime<Utc> {
    let secs = t.0.to_unix_duration().as_secs() as i64;
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn err(msg: impl Into<String>) -> Error {
    Error::Ocsp(msg.into())
}

/// Build the DER request for `cert` issued by `issuer` (SHA-1 CertID, RFC 5019 2.1.1).
pub fn request_der(cert_der: &[u8], issuer_der: &[u8]) -> Result<Vec<u8>> {
    let cert = Certificate::from_der(cert_der).map_err(|e| err(format!("certificate: {e}")))?;
    let issuer = Certificate::from_der(issuer_der).map_err(|e| err(format!("issuer: {e}")))?;
    let req = Request::from_cert::<sha1::Sha1>(&issuer, &cert)
        .map_err(|e| err(format!("cannot build the request: {e}")))?;
    let ocsp: OcspRequest = OcspRequestBuilder::new(Version::V1)
        .with_request(req)
        .build();
    ocsp.to_der()
        .map_err(|e| err(format!("cannot encode the request: {e}")))
}

/// Check a DER OCSP response for `cert_der`: successful, signed by the issuer or by a responder
/// certificate the issuer delegated (id-kp-OCSPSigning, RFC 6960 4.2.2.2), about this serial,
/// and current.
pub fn check(
    resp_der: &[u8],
    cert_der: &[u8],
    issuer_der: &[u8],
    now: DateTime<Utc>,
) -> Result<Checked> {
    let resp =
        OcspResponse::from_der(resp_der).map_err(|e| err(format!("not an OCSP response: {e}")))?;
    if resp.response_status != OcspResponseStatus::Successful {
        return Err(err(format!(
            "responder answered {:?}",
            resp.response_status
        )));
    }
    let bytes = resp
        .response_bytes
        .ok_or_else(|| err("successful response without responseBytes"))?;
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| err(format!("not a basic OCSP response: {e}")))?;
    let cert = Certificate::from_der(cert_der).map_err(|e| err(format!("certificate: {e}")))?;
    let issuer = Certificate::from_der(issuer_der).map_err(|e| err(format!("issuer: {e}")))?;
    let issuer_spki = issuer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| err(e.to_string()))?;

    // Who signed: the issuer itself, or a delegated responder certificate.
    let issuer_key_hash = {
        use sha1::Digest;
        sha1::Sha1::digest(
            issuer
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes(),
        )
        .to_vec()
    };
    let is_issuer = match &basic.tbs_response_data.responder_id {
        ResponderId::ByName(n) => *n == issuer.tbs_certificate.subject,
        ResponderId::ByKey(k) => k.as_bytes() == issuer_key_hash.as_slice(),
    };
    let signer_spki = if is_issuer {
        issuer_spki.clone()
    } else {
        let certs = basic.certs.as_deref().unwrap_or_default();
        let responder = certs
            .iter()
            .find(|c| match &basic.tbs_response_data.responder_id {
                ResponderId::ByName(n) => c.tbs_certificate.subject == *n,
                ResponderId::ByKey(k) => {
                    use sha1::Digest;
                    sha1::Sha1::digest(
                        c.tbs_certificate
                            .subject_public_key_info
                            .subject_public_key
                            .raw_bytes(),
                    )
                    .as_slice()
                        == k.as_bytes()
                }
            })
            .ok_or_else(|| err("response signed by an unknown responder"))?;
        // The responder certificate must be issued (signed) by the certificate's issuer...
        let tbs = responder
            .tbs_certificate
            .to_der()
            .map_err(|e| err(e.to_string()))?;
        ca_core::signer::verify(&issuer_spki, &tbs, responder.signature.raw_bytes())
            .map_err(|_| err("responder certificate is not signed by the issuer"))?;
        // ...and carry id-kp-OCSPSigning (RFC 6960 4.2.2.2).
        let rder = responder.to_der().map_err(|e| err(e.to_string()))?;
        let (_, parsed) =
            <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<
                '_,
                x509_parser::error::X509Error,
            >>::from_der(&rder)
            .map_err(|e| err(format!("responder certificate: {e}")))?;
        let ocsp_signing = parsed
            .extended_key_usage()
            .ok()
            .flatten()
            .is_some_and(|e| e.value.ocsp_signing);
        if !ocsp_signing {
            return Err(err("responder certificate lacks id-kp-OCSPSigning"));
        }
        let v = &responder.tbs_certificate.validity;
        let (nb, na) = (
            v.not_before.to_unix_duration().as_secs() as i64,
            v.not_after.to_unix_duration().as_secs() as i64,
        );
        if now.timestamp() < nb || now.timestamp() > na {
            return Err(err("responder certificate is not valid now"));
        }
        responder
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| err(e.to_string()))?
    };
    let tbs = basic
        .tbs_response_data
        .to_der()
        .map_err(|e| err(e.to_string()))?;
    ca_core::signer::verify(&signer_spki, &tbs, basic.signature.raw_bytes())
        .map_err(|_| err("response signature does not verify"))?;

    // The SingleResponse must be about this certificate: its serial AND its issuer (name and
    // key hash). A responder trusted for this issuer may also answer for other CAs, whose
    // serials can collide with ours.
    let mut same_serial = false;
    let mut single = None;
    for r in &basic.tbs_response_data.responses {
        if r.cert_id.serial_number != cert.tbs_certificate.serial_number {
            continue;
        }
        same_serial = true;
        if names_issuer(&r.cert_id, &issuer)? {
            single = Some(r);
            break;
        }
    }
    let single = single.ok_or_else(|| {
        err(if same_serial {
            "response is about this serial number under another issuer (CertID issuer name or \
             key hash differs)"
        } else {
            "response does not cover this certificate's serial"
        })
    })?;
    let this_update = gt(&single.this_update);
    let next_update = single.next_update.as_ref().map(gt);
    let expires_at = next_update.unwrap_or(this_update + NO_NEXT_UPDATE_LIFETIME);
    // RFC 5019 4: reject responses from the future (with skew) or past their nextUpdate.
    if this_update > now + chrono::Duration::minutes(5) {
        return Err(err("response thisUpdate is in the future"));
    }
    if expires_at < now {
        return Err(err(match next_update {
            Some(_) => "response is stale (nextUpdate passed)".to_string(),
            None => format!(
                "response is stale: it has no nextUpdate and its thisUpdate {this_update} is more \
                 than {} minutes old",
                NO_NEXT_UPDATE_LIFETIME.num_minutes()
            ),
        }));
    }
    let status = match &single.cert_status {
        CertStatus::Good(_) => Status::Good,
        CertStatus::Unknown(_) => Status::Unknown,
        CertStatus::Revoked(info) => Status::Revoked {
            at: gt(&info.revocation_time),
            reason: info.revocation_reason.map(|r| format!("{r:?}")),
        },
    };
    Ok(Checked {
        der: resp_der.to_vec(),
        status,
        this_update,
        next_update,
        expires_at,
    })
}

/// Fetch and check the status of `cert_der` from `url` (POST, RFC 6960 A.1).
pub async fn fetch(
    url: &str,
    cert_der: &[u8],
    issuer_der: &[u8],
    timeout: Duration,
) -> Result<Checked> {
    let req = request_der(cert_der, issuer_der)?;
    let resp = ca_api::client::plain_http(
        url,
        http::Method::POST,
        Some("application/ocsp-request"),
        req,
        timeout,
        crate::ca::MAX_BODY,
    )
    .await
    .map_err(|e| Error::from_client(e, url, ""))?;
    if resp.status != http::StatusCode::OK {
        return Err(Error::from_client(resp.error(), url, ""));
    }
    check(&resp.body, cert_der, issuer_der, Utc::now())
}
