//! `crl`: the root key, unlocked with the quorum PIN, signs the root CRL listing the revoked
//! intermediates of the configuration. The CRL is made by [`ca_core::crl::issue_crl`], the
//! same function the CA server's CRL publisher uses; its number follows the highest one in
//! the transcript history for the root key.

use super::{Input, Steps};
use crate::error::Error;
use crate::history::History;
use crate::output::PUBLIC;
use crate::plan::{TokenRef, MAX_SHORT_LIVED_DAYS};
use crate::run::{Authority, Ctx, Unlock};
use crate::transcript::CrlFact;
use crate::x509::{self, parse_serial, CertInfo};
use ca_core::crl::{issue_crl, CrlRequest};
use ca_core::revocation::RevokedEntry;
use ca_core::signer::sha256_hex;
use chrono::{DateTime, Utc};
use std::path::PathBuf;

/// `crl`: checked.
#[derive(Debug)]
pub struct CrlTask {
    /// Root token.
    pub token: TokenRef,
    /// Root key label.
    pub key_label: String,
    /// Root certificate.
    pub root: CertInfo,
    /// thisUpdate: the ceremony's start.
    pub this_update: DateTime<Utc>,
    /// nextUpdate: the ceremony's start plus the configured period.
    pub next_update: DateTime<Utc>,
    /// Revoked certificates.
    pub revoked: Vec<RevokedEntry>,
    /// CRL number (set from the history by the runner).
    pub number: u64,
    /// Output CRL (DER).
    pub crl: PathBuf,
}

pub(super) fn plan(input: Input<'_>) -> Result<CrlTask, Error> {
    let Input {
        v,
        config,
        start,
        root_token,
        outputs,
        ..
    } = input;
    let (token, t) = root_token.ok_or_else(|| v.err("root_token", "missing"))?;
    let spec = config.crl.as_ref().ok_or_else(|| v.err("crl", "missing"))?;
    let root = v.ca_cert(
        "crl.root_certificate",
        "root certificate",
        &spec.root_certificate,
        start,
    )?;
    let next_update =
        start + v.period("crl.next_update", &spec.next_update, MAX_SHORT_LIVED_DAYS)?;
    let mut revoked: Vec<RevokedEntry> = Vec::new();
    for (i, r) in spec.revoked.iter().enumerate() {
        let serial = parse_serial(&r.serial).ok_or_else(|| {
            v.err(
                format!("crl.revoked[{i}].serial"),
                format!(
                    "{:?} is not a certificate serial in hex (1 to 20 bytes)",
                    r.serial
                ),
            )
        })?;
        if revoked.iter().any(|e| e.serial == serial) {
            return Err(v.err(format!("crl.revoked[{i}].serial"), "listed twice"));
        }
        let revoked_at = r.revoked_at.unwrap_or(start);
        if revoked_at > start {
            return Err(v.err(format!("crl.revoked[{i}].revoked_at"), "in the future"));
        }
        let reason = v.reason(&format!("crl.revoked[{i}].reason"), &r.reason)?;
        revoked.push(RevokedEntry {
            serial,
            revoked_at: ca_core::clock::truncate(revoked_at),
            reason,
        });
    }
    Ok(CrlTask {
        token,
        key_label: t.key_label.clone(),
        root,
        this_update: start,
        next_update,
        revoked,
        number: 0,
        crl: v.output("crl.crl", &spec.crl, outputs)?,
    })
}

impl CrlTask {
    /// Number the CRL one above the highest the history records for the root key
    /// (RFC 5280 5.2.3: CRL numbers increase).
    pub(super) fn bind_history(&mut self, history: &History) {
        self.number = history.last_crl_number(&sha256_hex(&self.root.spki_der)) + 1;
    }

    pub(super) fn describe(&self, s: &mut Steps) {
        s.step(format!(
            "Open token {:?} with the quorum PIN; check its serial; open root key {:?}",
            self.token.label, self.key_label
        ));
        s.step(format!(
            "Sign root CRL number {} (thisUpdate {}, nextUpdate {}) revoking {} certificate(s){} -> {}",
            self.number,
            self.this_update.to_rfc3339(),
            self.next_update.to_rfc3339(),
            self.revoked.len(),
            self.revoked.iter().map(|r| format!(" {} ({})", x509::serial_hex(&r.serial), r.reason)).collect::<String>(),
            self.crl.display()
        ));
    }

    pub(super) fn execute(
        &self,
        ctx: &mut Ctx<'_>,
        unlock: Option<&Unlock>,
    ) -> Result<Authority, Error> {
        let auth = ctx.open_root(&self.token, &self.key_label, &self.root.spki_der, unlock)?;
        let crl = issue_crl(
            &self.root.der,
            &auth.signer,
            &CrlRequest {
                number: self.number,
                this_update: self.this_update,
                next_update: self.next_update,
                entries: &self.revoked,
                distribution_point: None,
            },
        )
        .map_err(|e| match e {
            // The check after signing failed: reported as the other self-checks are.
            ca_core::Error::SignatureCheckFailed => Error::SelfCheck {
                what: "root CRL",
                reason: e.to_string(),
            },
            e => Error::Core {
                op: "signing the root CRL",
                source: e,
            },
        })?;
        let revoked: Vec<String> = self
            .revoked
            .iter()
            .map(|r| x509::serial_hex(&r.serial))
            .collect();
        let sha256 = sha256_hex(&crl.der);
        ctx.step(
            "crl-signed",
            Some(&auth.token),
            &[
                ("crl_number", self.number.to_string()),
                ("revoked", revoked.join(",")),
            ],
            &[
                ("sha256", sha256.clone()),
                ("signature", "verified with the root key".into()),
            ],
        );
        ctx.facts.crl = Some(CrlFact {
            issuer_spki_sha256: sha256_hex(&self.root.spki_der),
            number: self.number,
            this_update: self.this_update,
            next_update: self.next_update,
            revoked,
            sha256,
        });
        ctx.write("root CRL (DER)", &self.crl, &crl.der, PUBLIC, None)?;
        Ok(auth)
    }
}
