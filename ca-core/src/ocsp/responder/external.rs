//! External response files: responses about another issuer's certificates (normally the
//! intermediate, signed by the root in the `ocsp-response` ceremony), loaded from files and
//! served as they are.
//!
//! Invariants: a file is served only if its signature verifies with the configured signer
//! certificate, its status is successful, and every SingleResponse is unexpired with a
//! validity interval of at most [`super::super::MAX_CA_RESPONSE_VALIDITY_DAYS`]; a file that
//! changes and fails these checks keeps its previous answers until their nextUpdate; an answer
//! past its nextUpdate is never served (the CertID gets `unauthorized`).

use super::super::build::{from_gtime, from_ocsp_status, parse_response};
use super::super::request::RequestedCert;
use super::super::serial_magnitude;
use super::answer::{AnswerKind, OcspAnswer};
use crate::error::{Error, Result};
use chrono::{DateTime, Duration, Utc};
use der::{Decode, Encode};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use x509_cert::Certificate;
use x509_ocsp::OcspResponseStatus;

/// A response for another issuer's certificate, loaded from a file (e.g. the intermediate's
/// status signed by the root in a key ceremony) and served as is.
#[derive(Clone, Debug)]
pub struct ExternalResponse {
    /// DER (or PEM) OCSPResponse file; re-read when its modification time changes.
    pub path: PathBuf,
    /// Certificate of the key that signed it, or of the CA that issued the delegated responder
    /// certificate embedded in it (normally the root). The signature is checked at load.
    pub signer_cert_der: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ExternalKey {
    alg: Vec<u8>,
    name_hash: Vec<u8>,
    key_hash: Vec<u8>,
    serial: Vec<u8>,
}

impl ExternalKey {
    fn of(id: &x509_ocsp::CertId) -> Self {
        ExternalKey {
            alg: id.hash_algorithm.oid.as_bytes().to_vec(),
            name_hash: id.issuer_name_hash.as_bytes().to_vec(),
            key_hash: id.issuer_key_hash.as_bytes().to_vec(),
            serial: serial_magnitude(id.serial_number.as_bytes()).to_vec(),
        }
    }
}

/// Answers loaded from one file, by CertID.
type ExternalMap = HashMap<ExternalKey, Arc<OcspAnswer>>;

/// One file: where it is, its modification time when read, and its answers.
struct Source {
    file: ExternalResponse,
    mtime: Option<SystemTime>,
    answers: ExternalMap,
}

/// The external response files and their answers.
#[derive(Default)]
pub(super) struct ExternalResponses {
    sources: RwLock<Vec<Source>>,
}

impl ExternalResponses {
    /// Read and check `file` now (fail closed) and serve its answers; how many CertIDs.
    pub(super) fn add(&self, file: ExternalResponse, now: DateTime<Utc>) -> Result<usize> {
        let (mtime, answers) = load_external(&file, now)?;
        let n = answers.len();
        self.sources
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Source {
                file,
                mtime,
                answers,
            });
        Ok(n)
    }

    /// The fresh answer loaded for this CertID, if any.
    pub(super) fn answer(&self, rc: &RequestedCert, now: DateTime<Utc>) -> Option<Arc<OcspAnswer>> {
        let key = ExternalKey::of(&rc.cert_id);
        let sources = self.sources.read().unwrap_or_else(|p| p.into_inner());
        for src in sources.iter() {
            if let Some(a) = src.answers.get(&key) {
                if a.fresh(now) {
                    return Some(a.clone());
                }
                tracing::error!(path = %src.file.path.display(), "loaded OCSP response is past its nextUpdate; run the OCSP ceremony again");
            }
        }
        None
    }

    /// Re-read the files whose modification time changed; returns how many failed (those keep
    /// their previous answers).
    pub(super) fn reload(&self, now: DateTime<Utc>) -> usize {
        let mut failed = 0;
        let mut sources = self.sources.write().unwrap_or_else(|p| p.into_inner());
        for src in sources.iter_mut() {
            let current = std::fs::metadata(&src.file.path)
                .and_then(|m| m.modified())
                .ok();
            if current.is_some() && current == src.mtime {
                continue;
            }
            match load_external(&src.file, now) {
                Ok((t, m)) => {
                    tracing::info!(path = %src.file.path.display(), "reloaded OCSP response file");
                    src.mtime = t;
                    src.answers = m;
                }
                Err(e) => {
                    tracing::error!(path = %src.file.path.display(), error = %e, "cannot reload OCSP response file; keeping the previous one");
                    failed += 1;
                }
            }
        }
        failed
    }
}

/// Read, verify and check one external response file. Refused (fail closed): a signature
/// that does not verify, a status other than successful, a SingleResponse that has expired
/// (nextUpdate not after `now`) or whose validity interval exceeds
/// [`super::super::MAX_CA_RESPONSE_VALIDITY_DAYS`] (CA/B Forum BR 4.9.10: the status of a
/// subordinate CA is updated at least every twelve months; the interval counts both ends).
fn load_external(
    src: &ExternalResponse,
    now: DateTime<Utc>,
) -> Result<(Option<SystemTime>, ExternalMap)> {
    let io = |e| Error::Io {
        path: src.path.clone(),
        source: e,
    };
    let mtime = std::fs::metadata(&src.path).and_then(|m| m.modified()).ok();
    let bytes = std::fs::read(&src.path).map_err(io)?;
    let der = if bytes.starts_with(b"-----BEGIN") {
        der::pem::decode_vec(&bytes)
            .map_err(|e| Error::Der(e.into()))?
            .1
    } else {
        bytes
    };
    let parsed = parse_response(&der)?;
    if parsed.status != OcspResponseStatus::Successful {
        return Err(Error::Config {
            path: src.path.display().to_string(),
            reason: format!(
                "OCSP response status is {:?}, not successful",
                parsed.status
            ),
        });
    }
    let signer = Certificate::from_der(&src.signer_cert_der).map_err(|e| {
        Error::Issuer(format!(
            "cannot parse the signer certificate for {}: {e}",
            src.path.display()
        ))
    })?;
    parsed
        .verify_signature(&signer.tbs_certificate.subject_public_key_info.to_der()?)
        .map_err(|_| Error::Config {
            path: src.path.display().to_string(),
            reason:
                "OCSP response signature does not verify with the configured signer certificate"
                    .into(),
        })?;
    let produced_at = parsed.produced_at().unwrap_or_default();
    let mut map = HashMap::new();
    for s in parsed.singles() {
        let Some(next_update) = s.next_update.as_ref().map(from_gtime) else {
            continue;
        };
        let this_update = from_gtime(&s.this_update);
        let bad = |reason: String| Error::Config {
            path: src.path.display().to_string(),
            reason,
        };
        if super::super::validity_interval(this_update, next_update)
            > Duration::days(super::super::MAX_CA_RESPONSE_VALIDITY_DAYS)
        {
            return Err(bad(format!(
                "OCSP response valid from {this_update} to {next_update}: longer than {} days \
                 (CA/B Forum BR 4.9.10: the status of a CA certificate is renewed at least \
                 every twelve months); run the ocsp-response ceremony again",
                super::super::MAX_CA_RESPONSE_VALIDITY_DAYS
            )));
        }
        if next_update <= now {
            return Err(bad(format!(
                "OCSP response expired at {next_update} (its nextUpdate); run the \
                 ocsp-response ceremony again"
            )));
        }
        map.insert(
            ExternalKey::of(&s.cert_id),
            Arc::new(OcspAnswer::new(
                der.clone(),
                AnswerKind::Signed {
                    status: from_ocsp_status(&s.cert_status),
                    produced_at,
                    this_update,
                    next_update,
                    cacheable: true,
                },
            )),
        );
    }
    Ok((mtime, map))
}
