//! Building, signing and reading BasicOCSPResponses (RFC 6960 4.2.1) with x509-ocsp types.

use super::{HashAlg, OcspIssuer};
use crate::error::{Error, Result};
use crate::revocation::{CertStatus, RevocationReason};
use crate::signer::{verify, Signer};
use chrono::{DateTime, Utc};
use der::asn1::{BitString, GeneralizedTime, OctetString};
use der::{Decode, Encode};
use x509_cert::ext::pkix::CrlReason;
use x509_cert::ext::Extension;
use x509_cert::Certificate;
use x509_ocsp::{
    BasicOcspResponse, CertId, OcspGeneralizedTime, OcspResponse, OcspResponseStatus, ResponderId,
    ResponseData, RevokedInfo, SingleResponse, Version,
};

/// chrono time to OCSP GeneralizedTime (whole seconds; RFC 6960 4.2.2.1 uses GeneralizedTime).
pub(crate) fn gtime(t: DateTime<Utc>) -> Result<OcspGeneralizedTime> {
    let secs = u64::try_from(t.timestamp()).map_err(|_| Error::Config {
        path: "ocsp.time".into(),
        reason: format!("{t} is before 1970"),
    })?;
    Ok(OcspGeneralizedTime(GeneralizedTime::from_unix_duration(
        std::time::Duration::from_secs(secs),
    )?))
}

/// OCSP GeneralizedTime to chrono.
pub(crate) fn from_gtime(t: &OcspGeneralizedTime) -> DateTime<Utc> {
    let secs = i64::try_from(t.0.to_unix_duration().as_secs()).unwrap_or(i64::MAX);
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn crl_reason(r: RevocationReason) -> CrlReason {
    match r {
        RevocationReason::Unspecified => CrlReason::Unspecified,
        RevocationReason::KeyCompromise => CrlReason::KeyCompromise,
        RevocationReason::CaCompromise => CrlReason::CaCompromise,
        RevocationReason::AffiliationChanged => CrlReason::AffiliationChanged,
        RevocationReason::Superseded => CrlReason::Superseded,
        RevocationReason::CessationOfOperation => CrlReason::CessationOfOperation,
        RevocationReason::CertificateHold => CrlReason::CertificateHold,
        RevocationReason::RemoveFromCrl => CrlReason::RemoveFromCRL,
        RevocationReason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
        RevocationReason::AaCompromise => CrlReason::AaCompromise,
    }
}

fn from_crl_reason(r: CrlReason) -> RevocationReason {
    match r {
        CrlReason::Unspecified => RevocationReason::Unspecified,
        CrlReason::KeyCompromise => RevocationReason::KeyCompromise,
        CrlReason::CaCompromise => RevocationReason::CaCompromise,
        CrlReason::AffiliationChanged => RevocationReason::AffiliationChanged,
        CrlReason::Superseded => RevocationReason::Superseded,
        CrlReason::CessationOfOperation => RevocationReason::CessationOfOperation,
        CrlReason::CertificateHold => RevocationReason::CertificateHold,
        CrlReason::RemoveFromCRL => RevocationReason::RemoveFromCrl,
        CrlReason::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        CrlReason::AaCompromise => RevocationReason::AaCompromise,
    }
}

/// Our status as the x509-ocsp CertStatus. `unspecified` omits the reason (RFC 5280 5.3.1,
/// CA/B Forum BR 7.3).
pub(crate) fn ocsp_status(s: &CertStatus) -> Result<x509_ocsp::CertStatus> {
    Ok(match s {
        CertStatus::Good => x509_ocsp::CertStatus::good(),
        CertStatus::Unknown => x509_ocsp::CertStatus::unknown(),
        CertStatus::Revoked { at, reason } => x509_ocsp::CertStatus::revoked(RevokedInfo {
            revocation_time: gtime(*at)?,
            revocation_reason: (*reason != RevocationReason::Unspecified)
                .then(|| crl_reason(*reason)),
        }),
    })
}

/// The x509-ocsp CertStatus as ours.
pub(crate) fn from_ocsp_status(s: &x509_ocsp::CertStatus) -> CertStatus {
    match s {
        x509_ocsp::CertStatus::Good(_) => CertStatus::Good,
        x509_ocsp::CertStatus::Unknown(_) => CertStatus::Unknown,
        x509_ocsp::CertStatus::Revoked(info) => CertStatus::Revoked {
            at: from_gtime(&info.revocation_time),
            reason: info
                .revocation_reason
                .map(from_crl_reason)
                .unwrap_or(RevocationReason::Unspecified),
        },
    }
}

/// The responder's key hash: SHA-1 over the subjectPublicKey BIT STRING contents
/// (RFC 6960 4.2.1, `KeyHash`).
pub(crate) fn key_hash(public_key_bits: &[u8]) -> Vec<u8> {
    HashAlg::Sha1.digest(public_key_bits)
}

/// Check that a delegated responder certificate holds the signer's key and return it parsed.
pub(crate) fn responder_cert(signer: &dyn Signer, cert_der: &[u8]) -> Result<Certificate> {
    let cert = Certificate::from_der(cert_der)
        .map_err(|e| Error::Issuer(format!("cannot parse OCSP responder certificate: {e}")))?;
    if cert
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes()
        != signer.public_key_bits()
    {
        return Err(Error::Issuer(
            "the OCSP responder certificate does not hold the responder signing key; re-issue it for this key".into(),
        ));
    }
    Ok(cert)
}

/// Sign `responses` into a DER OCSPResponse (successful, id-pkix-ocsp-basic), verifying the
/// signature before returning it (fail closed).
pub(crate) fn sign_basic(
    signer: &dyn Signer,
    responder_cert: Option<&Certificate>,
    responses: Vec<SingleResponse>,
    produced_at: DateTime<Utc>,
    response_extensions: Option<Vec<Extension>>,
) -> Result<Vec<u8>> {
    let tbs_response_data = ResponseData {
        version: Version::V1,
        // RFC 6960 4.2.2.3: byKey, the SHA-1 of the responder's public key.
        responder_id: ResponderId::ByKey(OctetString::new(key_hash(signer.public_key_bits()))?),
        produced_at: gtime(produced_at)?,
        responses,
        response_extensions,
    };
    let tbs = tbs_response_data.to_der()?;
    let signature = signer.sign(&tbs)?;
    crate::signer::verify_own(signer, &tbs, &signature)?;
    let basic = BasicOcspResponse {
        tbs_response_data,
        signature_algorithm: signer.algorithm().signature_algorithm_id(),
        signature: BitString::from_bytes(&signature)?,
        // RFC 6960 4.2.2.2: a delegated responder includes its certificate.
        certs: responder_cert.map(|c| vec![c.clone()]),
    };
    Ok(OcspResponse::successful(basic)?.to_der()?)
}

/// A SingleResponse for `cert_id`.
pub(crate) fn single(
    cert_id: CertId,
    status: &CertStatus,
    this_update: DateTime<Utc>,
    next_update: DateTime<Utc>,
) -> Result<SingleResponse> {
    Ok(SingleResponse {
        cert_id,
        cert_status: ocsp_status(status)?,
        this_update: gtime(this_update)?,
        next_update: Some(gtime(next_update)?),
        single_extensions: None,
    })
}

/// Sign a complete OCSP response: a DER OCSPResponse (`successful`, BasicOCSPResponse) about
/// certificates issued by `issuer_cert_der`, with one SingleResponse per `(serial, status)`
/// (serial as big-endian magnitude) using SHA-1 CertIDs, responderID byKey, and
/// `certs = [responder certificate]` when `responder_cert_der` is given (a delegated
/// responder; its key must be `signer`'s). Without it `signer` must be the issuer's key.
/// `nonce` (RFC 8954, 1 to 32 bytes) is echoed in a nonce extension when given.
///
/// The signature is verified before the response is returned. The key ceremony uses this for
/// the root-signed response about the intermediate:
///
/// ```no_run
/// # use ca_core::{ocsp::sign_response, revocation::CertStatus, signer::Signer};
/// # fn f(root: &dyn Signer, root_der: &[u8], intermediate_serial: Vec<u8>) -> ca_core::Result<()> {
/// let now = chrono::Utc::now();
/// let der = sign_response(root, None, root_der, &[(intermediate_serial, CertStatus::Good)],
///                         now, now + chrono::Duration::days(30), None)?;
/// # Ok(()) }
/// ```
pub fn sign_response(
    signer: &dyn Signer,
    responder_cert_der: Option<&[u8]>,
    issuer_cert_der: &[u8],
    answers: &[(Vec<u8>, CertStatus)],
    this_update: DateTime<Utc>,
    next_update: DateTime<Utc>,
    nonce: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let issuer = OcspIssuer::from_cert_der(issuer_cert_der)?;
    let responder = responder_cert_der
        .map(|d| responder_cert(signer, d))
        .transpose()?;
    if responder.is_none() && signer.public_key_bits() != issuer.public_key_bits() {
        return Err(Error::Issuer(
            "the OCSP signing key is neither the issuer's key nor given a delegated responder certificate".into(),
        ));
    }
    if answers.is_empty() {
        return Err(Error::Config {
            path: "ocsp.answers".into(),
            reason: "at least one certificate status is needed".into(),
        });
    }
    if next_update <= this_update {
        return Err(Error::Config {
            path: "ocsp.next_update".into(),
            reason: "nextUpdate must be after thisUpdate".into(),
        });
    }
    let mut responses = Vec::with_capacity(answers.len());
    for (serial, status) in answers {
        responses.push(single(
            issuer.cert_id(HashAlg::Sha1, serial)?,
            status,
            this_update,
            next_update,
        )?);
    }
    let extensions = match nonce {
        None => None,
        Some(n) if n.is_empty() || n.len() > super::request::MAX_NONCE_LEN => {
            return Err(Error::Config {
                path: "ocsp.nonce".into(),
                reason: "a nonce has 1 to 32 bytes (RFC 8954 2.1)".into(),
            })
        }
        Some(n) => Some(vec![nonce_extension(n)?]),
    };
    sign_basic(
        signer,
        responder.as_ref(),
        responses,
        crate::clock::truncate(this_update),
        extensions,
    )
}

/// The id-pkix-ocsp-nonce extension with `Nonce ::= OCTET STRING` inside (RFC 8954 2.1).
pub(crate) fn nonce_extension(nonce: &[u8]) -> Result<Extension> {
    Ok(Extension {
        extn_id: const_oid::db::rfc6960::ID_PKIX_OCSP_NONCE,
        critical: false,
        extn_value: OctetString::new(OctetString::new(nonce)?.to_der()?)?,
    })
}

/// A decoded OCSPResponse, for reloading stored responses and checking loaded files.
#[derive(Clone, Debug)]
pub struct ParsedResponse {
    /// responseStatus (RFC 6960 4.2.1): `successful`, or the error status.
    pub status: OcspResponseStatus,
    /// The BasicOCSPResponse, when the status is `successful`.
    pub basic: Option<BasicOcspResponse>,
}

impl ParsedResponse {
    /// The SingleResponses (empty for an error response).
    pub fn singles(&self) -> &[SingleResponse] {
        self.basic
            .as_ref()
            .map(|b| b.tbs_response_data.responses.as_slice())
            .unwrap_or(&[])
    }

    /// Earliest nextUpdate over all SingleResponses (`None` if any lacks one, or none exist).
    pub fn next_update(&self) -> Option<DateTime<Utc>> {
        let mut min: Option<DateTime<Utc>> = None;
        for s in self.singles() {
            let t = from_gtime(s.next_update.as_ref()?);
            min = Some(min.map_or(t, |m| m.min(t)));
        }
        min
    }

    /// Latest thisUpdate over all SingleResponses.
    pub fn this_update(&self) -> Option<DateTime<Utc>> {
        self.singles()
            .iter()
            .map(|s| from_gtime(&s.this_update))
            .max()
    }

    /// producedAt of the BasicOCSPResponse (`None` for an error response).
    pub fn produced_at(&self) -> Option<DateTime<Utc>> {
        self.basic
            .as_ref()
            .map(|b| from_gtime(&b.tbs_response_data.produced_at))
    }

    /// Verify the signature with the public key in `spki_der`, or, when the response embeds a
    /// responder certificate that `spki_der` signed, with that certificate's key.
    pub fn verify_signature(&self, spki_der: &[u8]) -> Result<()> {
        let basic = self.basic.as_ref().ok_or(Error::SignatureCheckFailed)?;
        let tbs = basic.tbs_response_data.to_der()?;
        let sig = basic
            .signature
            .as_bytes()
            .ok_or(Error::SignatureCheckFailed)?;
        if verify(spki_der, &tbs, sig).is_ok() {
            return Ok(());
        }
        for cert in basic.certs.iter().flatten() {
            let cert_tbs = cert.tbs_certificate.to_der()?;
            let cert_sig = cert
                .signature
                .as_bytes()
                .ok_or(Error::SignatureCheckFailed)?;
            if verify(spki_der, &cert_tbs, cert_sig).is_ok() {
                let delegated = cert.tbs_certificate.subject_public_key_info.to_der()?;
                return verify(&delegated, &tbs, sig);
            }
        }
        Err(Error::SignatureCheckFailed)
    }
}

/// Decode a DER OCSPResponse (and its BasicOCSPResponse, when successful).
pub fn parse_response(der: &[u8]) -> Result<ParsedResponse> {
    let resp = OcspResponse::from_der(der)?;
    let basic = match &resp.response_bytes {
        Some(rb) if rb.response_type == const_oid::db::rfc6960::ID_PKIX_OCSP_BASIC => {
            Some(BasicOcspResponse::from_der(rb.response.as_bytes())?)
        }
        Some(rb) => {
            return Err(Error::Config {
                path: "ocsp.response".into(),
                reason: format!(
                    "response type {} is not id-pkix-ocsp-basic",
                    rb.response_type
                ),
            })
        }
        None => None,
    };
    Ok(ParsedResponse {
        status: resp.response_status,
        basic,
    })
}

/// DER of an unsigned error response (RFC 6960 4.2.1: no responseBytes).
pub(crate) fn error_response(status: OcspResponseStatus) -> Vec<u8> {
    let resp = OcspResponse {
        response_status: status,
        response_bytes: None,
    };
    // Encoding a two-field SEQUENCE with an ENUMERATED cannot fail; fall back to the known
    // bytes of malformedRequest just in case.
    resp.to_der()
        .unwrap_or_else(|_| vec![0x30, 0x03, 0x0a, 0x01, 0x01])
}
