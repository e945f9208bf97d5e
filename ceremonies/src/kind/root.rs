//! `root`: generate the root key in the offline token, split a random user PIN among the
//! officers (quorum shares, written before the token gets the PIN), self-sign the root.

use super::{sign_err, validity, Input, Steps};
use crate::config::Subject;
use crate::error::Error;
use crate::hsm;
use crate::output::SECRET;
use crate::plan::TokenRef;
use crate::quorum;
use crate::run::{Authority, Ctx};
use crate::x509;
use ca_core::clock::to_offset;
use ca_core::signer::pkcs11::PinSource;
use ca_core::signer::{KeyAlgorithm, Signer};
use ca_core::x509::RcgenKey;
use chrono::{DateTime, Utc};
use std::path::PathBuf;

/// `root`: checked.
#[derive(Debug)]
pub struct RootTask {
    /// Root token.
    pub token: TokenRef,
    /// Root key label.
    pub key_label: String,
    /// Security officer PIN source.
    pub so_pin: PinSource,
    /// Quorum threshold.
    pub threshold: u8,
    /// (officer, share file) for every share holder.
    pub shares: Vec<(String, PathBuf)>,
    /// Key algorithm.
    pub algorithm: KeyAlgorithm,
    /// Subject (and issuer) name of the self-signed root.
    pub subject: Subject,
    /// notBefore (default: the ceremony's start).
    pub not_before: DateTime<Utc>,
    /// notAfter, from the configured validity.
    pub not_after: DateTime<Utc>,
    /// Output certificate (PEM).
    pub certificate: PathBuf,
}

pub(super) fn plan(input: Input<'_>) -> Result<RootTask, Error> {
    let Input {
        v,
        config,
        start,
        root_token,
        shareholders,
        outputs,
        ..
    } = input;
    let (token, t) = root_token.ok_or_else(|| v.err("root_token", "missing"))?;
    let spec = config
        .root
        .as_ref()
        .ok_or_else(|| v.err("root", "missing"))?;
    let so_pin = v.pin(
        "root_token.so_pin",
        t.so_pin
            .as_ref()
            .ok_or_else(|| v.err("root_token.so_pin", "missing"))?,
    )?;
    let quorum = config.quorum.as_ref().ok_or_else(|| {
        v.err("quorum", "missing: a root ceremony splits the token PIN among the officers; add [quorum] threshold = m")
    })?;
    let n = shareholders.len();
    if quorum.threshold < 2 {
        return Err(v.err(
            "quorum.threshold",
            "at least 2: with 1 a single officer would hold the whole PIN",
        ));
    }
    if n > 255 {
        return Err(v.err("officers", "at most 255 share holders"));
    }
    if quorum.threshold as usize > n {
        return Err(v.err(
            "quorum.threshold",
            format!(
                "{} shares needed but only {n} officer(s) hold a share (officers[].share); the PIN could never be reassembled",
                quorum.threshold
            ),
        ));
    }
    v.subject("root.subject", &spec.subject)?;
    let (not_before, not_after) = v.validity("root.validity", &spec.validity, start)?;
    Ok(RootTask {
        token,
        key_label: t.key_label.clone(),
        so_pin,
        threshold: quorum.threshold,
        shares: shareholders,
        algorithm: spec.algorithm,
        subject: spec.subject.clone(),
        not_before,
        not_after,
        certificate: v.output("root.certificate", &spec.certificate, outputs)?,
    })
}

impl RootTask {
    pub(super) fn describe(&self, s: &mut Steps) {
        s.step(format!(
            "Open token {:?} ({})",
            self.token.label,
            self.token.module.display()
        ));
        s.step(format!(
            "Generate a random user PIN and split it into {} shares, {} needed:",
            self.shares.len(),
            self.threshold
        ));
        for (o, p) in &self.shares {
            s.detail(format!("       {o}: {}", p.display()));
        }
        s.step("Set the user PIN as the security officer (C_InitPIN)");
        s.step(format!(
            "Generate {} root key {:?} in the token (sensitive, not extractable)",
            self.algorithm, self.key_label
        ));
        s.step(format!(
            "Self-sign the root certificate CN={} (CA, keyCertSign + cRLSign), valid {} -> {}",
            self.subject.common_name,
            validity(&self.not_before, &self.not_after),
            self.certificate.display()
        ));
    }

    pub(super) fn execute(&self, ctx: &mut Ctx<'_>) -> Result<Authority, Error> {
        let pin = quorum::random_pin();
        let (token, id) = ctx.open_token(&self.token, PinSource::Value(pin.clone()))?;
        let holders: Vec<String> = self.shares.iter().map(|(o, _)| o.clone()).collect();
        let (set, files) = quorum::split(
            &pin,
            ctx.ceremony_id,
            &id.label,
            &id.serial,
            self.threshold,
            &holders,
        )?;
        ctx.step(
            "pin-split",
            Some(&id),
            &[
                ("threshold", self.threshold.to_string()),
                ("shares", holders.len().to_string()),
            ],
            &[
                ("pin_commitment", set.pin_commitment.clone()),
                ("reassembly", "checked before use".into()),
            ],
        );
        // The shares are on disk before the token gets the PIN, so the PIN is never set
        // without a way to reassemble it.
        for ((officer, path), share) in self.shares.iter().zip(&files) {
            ctx.write(
                "PIN share",
                path,
                share.to_json().as_bytes(),
                SECRET,
                Some(officer),
            )?;
        }
        hsm::set_user_pin(&self.token, &token, &self.so_pin, &pin)?;
        ctx.step(
            "user-pin-set",
            Some(&id),
            &[("by", "security officer (C_InitPIN)".into())],
            &[("pin_commitment", set.pin_commitment.clone())],
        );
        ctx.facts.share_set = Some(set);
        let (spki, fact) =
            hsm::generate_protected_key(&token, &id, &self.key_label, self.algorithm)?;
        ctx.key_generated(&id, fact);
        let signer = token.signer(&self.key_label).map_err(Error::core(
            "logging in with the new PIN and opening the root key",
        ))?;
        if signer.spki_der() != spki.as_slice() {
            return Err(Error::KeyMismatch {
                what: format!("key {:?}", self.key_label),
                reason: "the token returned another public key".into(),
            });
        }
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = x509::distinguished_name(&self.subject)?;
        params.not_before = to_offset(self.not_before);
        params.not_after = to_offset(self.not_after);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&x509::random_serial()));
        // RFC 5280 4.2.1.9 and 4.2.1.3: a CA, signing certificates and CRLs; no EKU.
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.key_identifier_method = x509::key_identifier(&spki)?;
        let key = RcgenKey::new(&signer);
        let cert = params
            .self_signed(&key)
            .map_err(sign_err(&key, "signing the root certificate"))?;
        x509::check_certificate("root certificate", cert.der(), &spki)?;
        ctx.certificate("root", &self.certificate, cert.der())?;
        Ok(Authority { signer, token: id })
    }
}
