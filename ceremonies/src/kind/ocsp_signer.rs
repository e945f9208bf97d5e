//! `ocsp-signer`: the issuing key in the online token signs a delegated OCSP signing
//! certificate for a new key in the same token (id-kp-OCSPSigning, ocsp-nocheck,
//! short-lived).

use super::{sign_err, validity, Input, Steps};
use crate::config::Subject;
use crate::error::Error;
use crate::hsm;
use crate::plan::{TokenRef, MAX_SHORT_LIVED_DAYS};
use crate::run::{Authority, Ctx};
use crate::x509::{self, CertInfo};
use ca_core::clock::to_offset;
use ca_core::signer::pkcs11::PinSource;
use ca_core::signer::{sha256_hex, KeyAlgorithm, PublicKey, Signer};
use ca_core::x509::RcgenKey;
use chrono::{DateTime, Duration, Utc};
use std::path::PathBuf;

/// `ocsp-signer`: checked.
#[derive(Debug)]
pub struct OcspSignerTask {
    /// Online token.
    pub token: TokenRef,
    /// Online token PIN.
    pub pin: PinSource,
    /// Issuing CA certificate.
    pub issuer: CertInfo,
    /// Issuing key label.
    pub issuing_key_label: String,
    /// OCSP key label.
    pub key_label: String,
    /// OCSP key algorithm.
    pub algorithm: KeyAlgorithm,
    /// Subject name of the OCSP signer certificate.
    pub subject: Subject,
    /// notBefore (checked to lie within the issuer's validity).
    pub not_before: DateTime<Utc>,
    /// notAfter (checked to lie within the issuer's validity).
    pub not_after: DateTime<Utc>,
    /// Output certificate (PEM).
    pub certificate: PathBuf,
}

pub(super) fn plan(input: Input<'_>) -> Result<OcspSignerTask, Error> {
    let Input {
        v,
        config,
        start,
        online_token,
        outputs,
        ..
    } = input;
    let (token, pin) = online_token.ok_or_else(|| v.err("online_token", "missing"))?;
    let spec = config
        .ocsp_signer
        .as_ref()
        .ok_or_else(|| v.err("ocsp_signer", "missing"))?;
    let issuer = v.ca_cert(
        "ocsp_signer.issuer_certificate",
        "issuing CA certificate",
        &spec.issuer_certificate,
        start,
    )?;
    v.non_empty("ocsp_signer.issuing_key_label", &spec.issuing_key_label)?;
    v.non_empty("ocsp_signer.key_label", &spec.key_label)?;
    if spec.key_label == spec.issuing_key_label {
        return Err(v.err(
            "ocsp_signer.key_label",
            "must differ from issuing_key_label: the OCSP signer gets its own key",
        ));
    }
    v.subject("ocsp_signer.subject", &spec.subject)?;
    let validity = v.validity("ocsp_signer.validity", &spec.validity, start)?;
    if validity.1 - validity.0 > Duration::days(MAX_SHORT_LIVED_DAYS) {
        return Err(v.err(
            "ocsp_signer.validity",
            format!("at most {MAX_SHORT_LIVED_DAYS} days: an ocsp-nocheck certificate cannot be revoked, so it must be short-lived (RFC 6960 4.2.2.2.1)"),
        ));
    }
    v.within_issuer(
        "ocsp_signer.validity",
        "issuing CA certificate",
        validity,
        &issuer,
    )?;
    Ok(OcspSignerTask {
        token,
        pin,
        issuer,
        issuing_key_label: spec.issuing_key_label.clone(),
        key_label: spec.key_label.clone(),
        algorithm: spec.algorithm,
        subject: spec.subject.clone(),
        not_before: validity.0,
        not_after: validity.1,
        certificate: v.output("ocsp_signer.certificate", &spec.certificate, outputs)?,
    })
}

impl OcspSignerTask {
    pub(super) fn describe(&self, s: &mut Steps) {
        s.step(format!(
            "Open online token {:?}; open issuing key {:?} and check it matches {}",
            self.token.label,
            self.issuing_key_label,
            self.issuer.path.display()
        ));
        s.step(format!(
            "Generate {} OCSP signing key {:?}",
            self.algorithm, self.key_label
        ));
        s.step(format!(
            "Issue the OCSP signer CN={} (id-kp-OCSPSigning, ocsp-nocheck), valid {} -> {}",
            self.subject.common_name,
            validity(&self.not_before, &self.not_after),
            self.certificate.display()
        ));
    }

    pub(super) fn execute(&self, ctx: &mut Ctx<'_>) -> Result<Authority, Error> {
        let (token, id) = ctx.open_token(&self.token, self.pin.clone())?;
        let signer = token
            .signer(&self.issuing_key_label)
            .map_err(Error::core("opening the issuing key"))?;
        if signer.spki_der() != self.issuer.spki_der.as_slice() {
            return Err(Error::KeyMismatch {
                what: format!("key {:?} in token {:?}", self.issuing_key_label, id.label),
                reason: format!(
                    "its public key is not the one in {}",
                    self.issuer.path.display()
                ),
            });
        }
        ctx.step(
            "key-opened",
            Some(&id),
            &[("key_label", self.issuing_key_label.clone())],
            &[
                ("spki_sha256", sha256_hex(signer.spki_der())),
                ("matches", "issuing CA certificate".into()),
            ],
        );
        let (spki, fact) =
            hsm::generate_protected_key(&token, &id, &self.key_label, self.algorithm)?;
        ctx.key_generated(&id, fact);
        let public = PublicKey::from_spki(&spki)
            .map_err(Error::core("reading the OCSP signing public key"))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = x509::distinguished_name(&self.subject)?;
        params.not_before = to_offset(self.not_before);
        params.not_after = to_offset(self.not_after);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&x509::random_serial()));
        // RFC 6960 4.2.2.2: a delegated responder certificate carries id-kp-OCSPSigning, and
        // 4.2.2.2.1: id-pkix-ocsp-nocheck so clients do not ask about the responder itself.
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::OcspSigning];
        params.custom_extensions.push(x509::ocsp_nocheck()?);
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = x509::key_identifier(&spki)?;
        let key = RcgenKey::new(&signer);
        let issuer = rcgen::Issuer::from_ca_cert_der(&self.issuer.der.as_slice().into(), &key)
            .map_err(Error::build("issuer from the issuing CA certificate"))?;
        let cert = params
            .signed_by(&public, &issuer)
            .map_err(sign_err(&key, "signing the OCSP signer certificate"))?;
        x509::check_certificate("OCSP signer certificate", cert.der(), &self.issuer.spki_der)?;
        ctx.certificate("ocsp-signer", &self.certificate, cert.der())?;
        Ok(Authority { signer, token: id })
    }
}
