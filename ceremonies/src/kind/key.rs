//! `key`: generate the issuing key (and optionally the audit checkpoint key) in the online
//! token and export the public keys.

use super::{Input, Steps};
use crate::error::Error;
use crate::hsm;
use crate::output::PUBLIC;
use crate::plan::TokenRef;
use crate::run::{Authority, Ctx};
use crate::x509;
use ca_core::signer::pkcs11::PinSource;
use ca_core::signer::{KeyAlgorithm, Signer};
use std::path::PathBuf;

/// `key`: checked.
#[derive(Debug)]
pub struct KeyTask {
    /// Online token.
    pub token: TokenRef,
    /// Online token PIN.
    pub pin: PinSource,
    /// Key label.
    pub key_label: String,
    /// Algorithm of the issuing key to generate.
    pub algorithm: KeyAlgorithm,
    /// Output public key (PEM).
    pub public_key: PathBuf,
    /// The audit checkpoint key to generate too, if configured.
    pub audit: Option<AuditKeyTask>,
}

/// The audit checkpoint key of a `key` ceremony: checked.
#[derive(Debug)]
pub struct AuditKeyTask {
    /// Key label.
    pub key_label: String,
    /// Algorithm of the audit checkpoint key to generate.
    pub algorithm: KeyAlgorithm,
    /// Output public key (PEM).
    pub public_key: PathBuf,
}

pub(super) fn plan(input: Input<'_>) -> Result<KeyTask, Error> {
    let Input {
        v,
        config,
        online_token,
        outputs,
        ..
    } = input;
    let (token, pin) = online_token.ok_or_else(|| v.err("online_token", "missing"))?;
    let spec = config.key.as_ref().ok_or_else(|| v.err("key", "missing"))?;
    v.non_empty("key.key_label", &spec.key_label)?;
    let public_key = v.output("key.public_key", &spec.public_key, outputs)?;
    let audit = match (&spec.audit_key_label, &spec.audit_public_key) {
        (Some(label), Some(path)) => {
            v.non_empty("key.audit_key_label", label)?;
            if *label == spec.key_label {
                return Err(v.err(
                    "key.audit_key_label",
                    "must differ from key.key_label: audit checkpoints are never signed with the issuing key",
                ));
            }
            Some(AuditKeyTask {
                key_label: label.clone(),
                algorithm: spec.audit_algorithm.unwrap_or(spec.algorithm),
                public_key: v.output("key.audit_public_key", path, outputs)?,
            })
        }
        (None, None) => {
            if spec.audit_algorithm.is_some() {
                return Err(v.err(
                    "key.audit_algorithm",
                    "only with key.audit_key_label and key.audit_public_key",
                ));
            }
            None
        }
        (Some(_), None) => {
            return Err(v.err(
                "key.audit_public_key",
                "missing: key.audit_key_label and key.audit_public_key go together",
            ))
        }
        (None, Some(_)) => {
            return Err(v.err(
                "key.audit_key_label",
                "missing: key.audit_key_label and key.audit_public_key go together",
            ))
        }
    };
    Ok(KeyTask {
        token,
        pin,
        key_label: spec.key_label.clone(),
        algorithm: spec.algorithm,
        public_key,
        audit,
    })
}

impl KeyTask {
    pub(super) fn describe(&self, s: &mut Steps) {
        s.step(format!(
            "Open online token {:?} ({})",
            self.token.label,
            self.token.module.display()
        ));
        s.step(format!(
            "Generate {} issuing key {:?} (sensitive, not extractable)",
            self.algorithm, self.key_label
        ));
        s.step(format!(
            "Export its public key -> {}",
            self.public_key.display()
        ));
        if let Some(a) = &self.audit {
            s.step(format!(
                "Generate {} audit checkpoint key {:?} (sensitive, not extractable); export its public key -> {}",
                a.algorithm,
                a.key_label,
                a.public_key.display()
            ));
        }
    }

    pub(super) fn execute(&self, ctx: &mut Ctx<'_>) -> Result<Authority, Error> {
        let (token, id) = ctx.open_token(&self.token, self.pin.clone())?;
        let (spki, fact) =
            hsm::generate_protected_key(&token, &id, &self.key_label, self.algorithm)?;
        ctx.key_generated(&id, fact);
        let signer = token
            .signer(&self.key_label)
            .map_err(Error::core("opening the new key"))?;
        if signer.spki_der() != spki.as_slice() {
            return Err(Error::KeyMismatch {
                what: format!("key {:?}", self.key_label),
                reason: "the token returned another public key".into(),
            });
        }
        ctx.write(
            "issuing public key",
            &self.public_key,
            x509::pem("PUBLIC KEY", &spki)?.as_bytes(),
            PUBLIC,
            None,
        )?;
        if let Some(a) = &self.audit {
            // Recorded after the issuing key: the first key of a key ceremony is the issuing
            // key (history pins later signers to it).
            let (audit_spki, fact) =
                hsm::generate_protected_key(&token, &id, &a.key_label, a.algorithm)?;
            ctx.key_generated(&id, fact);
            ctx.write(
                "audit checkpoint public key",
                &a.public_key,
                x509::pem("PUBLIC KEY", &audit_spki)?.as_bytes(),
                PUBLIC,
                None,
            )?;
        }
        Ok(Authority { signer, token: id })
    }
}
