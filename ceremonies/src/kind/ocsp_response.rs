//! `ocsp-response`: the root key, unlocked with the quorum PIN, signs an OCSP response about
//! the intermediate (CA/B Forum BR 4.9.10: at most twelve months valid).

use super::{validity, Input, Steps};
use crate::config::StatusSpec;
use crate::error::Error;
use crate::output::PUBLIC;
use crate::plan::TokenRef;
use crate::run::{Authority, Ctx, Unlock};
use crate::transcript::OcspFact;
use crate::x509::{self, check_certificate, read_cert_pem, CertInfo};
use ca_core::revocation::CertStatus;
use ca_core::signer::sha256_hex;
use chrono::{DateTime, Duration, Utc};
use std::path::PathBuf;

/// `ocsp-response`: checked.
#[derive(Debug)]
pub struct OcspResponseTask {
    /// Root token.
    pub token: TokenRef,
    /// Root key label.
    pub key_label: String,
    /// Root certificate.
    pub root: CertInfo,
    /// The certificate the response is about.
    pub subject_cert: CertInfo,
    /// Its status.
    pub status: CertStatus,
    /// thisUpdate: the ceremony's start.
    pub this_update: DateTime<Utc>,
    /// nextUpdate: the ceremony's start plus the configured period.
    pub next_update: DateTime<Utc>,
    /// Output response (DER).
    pub response: PathBuf,
}

pub(super) fn plan(input: Input<'_>) -> Result<OcspResponseTask, Error> {
    let Input {
        v,
        config,
        start,
        root_token,
        outputs,
        ..
    } = input;
    let (token, t) = root_token.ok_or_else(|| v.err("root_token", "missing"))?;
    let spec = config
        .ocsp_response
        .as_ref()
        .ok_or_else(|| v.err("ocsp_response", "missing"))?;
    let root = v.ca_cert(
        "ocsp_response.root_certificate",
        "root certificate",
        &spec.root_certificate,
        start,
    )?;
    let subject_cert = read_cert_pem("intermediate certificate", &v.path(&spec.certificate))?;
    check_certificate(
        "intermediate certificate",
        &subject_cert.der,
        &root.spki_der,
    )
    .map_err(|_| {
        v.err(
            "ocsp_response.certificate",
            format!(
                "{} was not issued by the root certificate's key",
                subject_cert.path.display()
            ),
        )
    })?;
    // CA/B Forum BR 4.9.10: the status of a subordinate CA is updated at least
    // every twelve months (365 days here), the validity interval counting both
    // thisUpdate and nextUpdate; so nextUpdate is one second before the end of
    // the configured period, and the interval is exactly the period.
    let next_update = start
        + v.period(
            "ocsp_response.validity",
            &spec.validity,
            ca_core::ocsp::MAX_CA_RESPONSE_VALIDITY_DAYS,
        )?
        - Duration::seconds(1);
    if next_update > root.not_after {
        return Err(v.err(
            "ocsp_response.validity",
            format!(
                "nextUpdate {next_update} is after the root expires ({})",
                root.not_after
            ),
        ));
    }
    let status = match spec.status {
        StatusSpec::Good => {
            if spec.reason.is_some() {
                return Err(v.err("ocsp_response.reason", "only for status = \"revoked\""));
            }
            if spec.revoked_at.is_some() {
                return Err(v.err("ocsp_response.revoked_at", "only for status = \"revoked\""));
            }
            CertStatus::Good
        }
        StatusSpec::Revoked => {
            let at = spec.revoked_at.unwrap_or(start);
            if at > start {
                return Err(v.err("ocsp_response.revoked_at", "in the future"));
            }
            CertStatus::Revoked {
                at: ca_core::clock::truncate(at),
                reason: v.reason("ocsp_response.reason", &spec.reason)?,
            }
        }
    };
    Ok(OcspResponseTask {
        token,
        key_label: t.key_label.clone(),
        root,
        subject_cert,
        status,
        this_update: start,
        next_update,
        response: v.output("ocsp_response.response", &spec.response, outputs)?,
    })
}

impl OcspResponseTask {
    pub(super) fn describe(&self, s: &mut Steps) {
        s.step(format!(
            "Open token {:?} with the quorum PIN; check its serial; open root key {:?}",
            self.token.label, self.key_label
        ));
        s.step(format!(
            "Sign an OCSP response: {} serial {} is {}, valid {} -> {}",
            self.subject_cert.subject,
            x509::serial_hex(&self.subject_cert.serial),
            match &self.status {
                CertStatus::Good => "good".to_string(),
                CertStatus::Revoked { at, reason } => format!("revoked at {at} ({reason})"),
                CertStatus::Unknown => "unknown".to_string(),
            },
            validity(&self.this_update, &self.next_update),
            self.response.display()
        ));
    }

    pub(super) fn execute(
        &self,
        ctx: &mut Ctx<'_>,
        unlock: Option<&Unlock>,
    ) -> Result<Authority, Error> {
        let auth = ctx.open_root(&self.token, &self.key_label, &self.root.spki_der, unlock)?;
        let der = ca_core::ocsp::sign_response(
            &auth.signer,
            None,
            &self.root.der,
            &[(self.subject_cert.serial.clone(), self.status.clone())],
            self.this_update,
            self.next_update,
            None,
        )
        .map_err(Error::core("signing the OCSP response"))?;
        let status = match &self.status {
            CertStatus::Good => "good".to_string(),
            CertStatus::Revoked { reason, .. } => format!("revoked ({reason})"),
            CertStatus::Unknown => "unknown".to_string(),
        };
        let sha256 = sha256_hex(&der);
        ctx.step(
            "ocsp-response-signed",
            Some(&auth.token),
            &[
                ("serial", x509::serial_hex(&self.subject_cert.serial)),
                ("status", status.clone()),
            ],
            &[
                ("sha256", sha256.clone()),
                ("next_update", self.next_update.to_rfc3339()),
            ],
        );
        ctx.facts.ocsp_response = Some(OcspFact {
            serial: x509::serial_hex(&self.subject_cert.serial),
            status,
            this_update: self.this_update,
            next_update: self.next_update,
            sha256,
        });
        ctx.write("OCSP response (DER)", &self.response, &der, PUBLIC, None)?;
        Ok(auth)
    }
}
