//! Ceremony transcripts: every step with its time, officer, token and inputs/outputs,
//! hash-chained, signed by a key of the ceremony, written as JSON (authoritative) plus a
//! readable Markdown report.
//!
//! # Integrity
//!
//! - Each entry's `hash` is SHA-256 over its compact JSON (with `hash` empty), and each entry's
//!   `prev_hash` is the previous entry's `hash`; the first links to
//!   `SHA-256("ceremony-transcript/v1" 0 ceremony_id)`.
//! - The signature covers the whole document: it is made over the canonical JSON with
//!   `signature.value` empty. The signing key is the ceremony's authority: the root key for
//!   `root`, `intermediate`, `crl` and `ocsp-response`, the issuing key for `key` (proving the
//!   new key works) and `ocsp-signer`. Its SubjectPublicKeyInfo is recorded in the transcript,
//!   but a recorded key proves nothing by itself: [`crate::history`] pins each transcript's
//!   signer to the key the history recorded for it (and `--expect-signer` can pin it too).
//! - The file must be byte-for-byte the canonical form the tool writes (pretty JSON and a final
//!   newline), so any changed byte fails verification, even whitespace.
//! - `previous_transcript_sha256` links each transcript to the one before it in the same
//!   directory, so the history of ceremonies is a chain too.

use crate::config::Kind;
use crate::error::{Error, TranscriptFault};
use crate::quorum::ShareSet;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ca_core::signer::{sha256_hex, KeyAlgorithm, Signer};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Format tag of transcripts.
pub const FORMAT: &str = "ceremony-transcript/v1";

/// A complete, signed transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transcript {
    /// [`FORMAT`].
    pub format: String,
    /// Random id of this ceremony.
    pub ceremony_id: String,
    /// Ceremony kind.
    pub kind: Kind,
    /// Ceremony title from the configuration.
    pub name: String,
    /// A rehearsal (confirmations were not typed).
    pub rehearsal: bool,
    /// Tool name and version.
    pub tool: String,
    /// Configuration file name.
    pub config_file: String,
    /// SHA-256 of the configuration file.
    pub config_sha256: String,
    /// The configuration text itself.
    pub config: String,
    /// SHA-256 of the previous transcript file in the same directory.
    pub previous_transcript_sha256: Option<String>,
    /// When the ceremony started.
    pub started_at: DateTime<Utc>,
    /// When the transcript was closed.
    pub finished_at: DateTime<Utc>,
    /// Officers present.
    pub officers: Vec<String>,
    /// Officer operating the HSM.
    pub operator: String,
    /// The steps, hash-chained.
    pub entries: Vec<Entry>,
    /// Machine-readable results later ceremonies rely on.
    pub facts: Facts,
    /// Signature over the whole document.
    pub signature: TranscriptSignature,
}

/// An HSM token as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenId {
    /// Token label.
    pub label: String,
    /// Token serial number.
    pub serial: String,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position, from 0.
    pub seq: u64,
    /// When the step happened.
    pub time: DateTime<Utc>,
    /// What (`config-validated`, `officer-confirmed`, `key-generated`, ...).
    pub step: String,
    /// The officer who performed or confirmed the step (`None` for steps no officer acts in).
    pub officer: Option<String>,
    /// Which HSM token.
    pub token: Option<TokenId>,
    /// Inputs (names to hashes or values).
    pub inputs: BTreeMap<String, String>,
    /// Outputs (names to fingerprints or values).
    pub outputs: BTreeMap<String, String>,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// Hash of this entry.
    pub hash: String,
}

/// A key generated in the ceremony.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFact {
    /// The HSM token holding the key.
    pub token: TokenId,
    /// Key label.
    pub key_label: String,
    /// Key algorithm.
    pub algorithm: KeyAlgorithm,
    /// SHA-256 of the SubjectPublicKeyInfo.
    pub spki_sha256: String,
    /// CKA_SENSITIVE
    pub sensitive: bool,
    /// CKA_EXTRACTABLE
    pub extractable: bool,
    /// CKA_ALWAYS_SENSITIVE
    pub always_sensitive: bool,
    /// CKA_NEVER_EXTRACTABLE
    pub never_extractable: bool,
}

/// A certificate signed in the ceremony.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFact {
    /// `root`, `intermediate`, `ocsp-signer`.
    pub role: String,
    /// Subject (RFC 4514).
    pub subject: String,
    /// Serial, hex.
    pub serial: String,
    /// notBefore (start of validity).
    pub not_before: DateTime<Utc>,
    /// notAfter (end of validity).
    pub not_after: DateTime<Utc>,
    /// SHA-256 of the DER (the certificate fingerprint).
    pub sha256: String,
    /// SHA-256 of the subject public key info.
    pub spki_sha256: String,
}

/// A CRL signed in the ceremony.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlFact {
    /// SHA-256 of the issuer's SubjectPublicKeyInfo (CRL numbers are per issuer).
    pub issuer_spki_sha256: String,
    /// CRL number.
    pub number: u64,
    /// thisUpdate: when the CRL was signed.
    pub this_update: DateTime<Utc>,
    /// nextUpdate: by when the next CRL is due.
    pub next_update: DateTime<Utc>,
    /// Revoked serials, hex.
    pub revoked: Vec<String>,
    /// SHA-256 of the DER.
    pub sha256: String,
}

/// An OCSP response signed in the ceremony.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcspFact {
    /// Serial of the certificate it is about, hex.
    pub serial: String,
    /// `good` or `revoked`.
    pub status: String,
    /// thisUpdate: the time the status is known correct at.
    pub this_update: DateTime<Utc>,
    /// nextUpdate: the time a newer response is due by.
    pub next_update: DateTime<Utc>,
    /// SHA-256 of the DER.
    pub sha256: String,
}

/// A file written by the ceremony.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFact {
    /// What it is.
    pub role: String,
    /// Path, relative to the configuration's directory where possible.
    pub path: String,
    /// SHA-256 of the file.
    pub sha256: String,
}

/// Results of the ceremony.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    /// The quorum share set (root ceremony).
    pub share_set: Option<ShareSet>,
    /// Keys generated.
    pub keys: Vec<KeyFact>,
    /// Certificates signed.
    pub certificates: Vec<CertFact>,
    /// CRL signed.
    pub crl: Option<CrlFact>,
    /// OCSP response signed.
    pub ocsp_response: Option<OcspFact>,
    /// Files written.
    pub files: Vec<FileFact>,
}

/// The transcript signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscriptSignature {
    /// Algorithm of the signing key.
    pub algorithm: KeyAlgorithm,
    /// Token holding the key.
    pub token: TokenId,
    /// Key label.
    pub key_label: String,
    /// SubjectPublicKeyInfo of the key, base64 DER.
    pub spki: String,
    /// SHA-256 of the SubjectPublicKeyInfo.
    pub spki_sha256: String,
    /// Signature (X.509 encoding), base64.
    pub value: String,
}

fn genesis(ceremony_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update([0]);
    h.update(ceremony_id.as_bytes());
    hex::encode(h.finalize())
}

fn entry_hash(e: &Entry) -> String {
    let mut copy = e.clone();
    copy.hash = String::new();
    // Serialising a struct of strings, maps and times cannot fail.
    sha256_hex(&serde_json::to_vec(&copy).unwrap_or_default())
}

/// Collects entries while the ceremony runs.
#[derive(Debug)]
pub struct Recorder {
    ceremony_id: String,
    entries: Vec<Entry>,
}

/// Names and values of a step's inputs or outputs.
pub type Pairs<'a> = &'a [(&'a str, String)];

impl Recorder {
    /// Start a transcript for ceremony `ceremony_id`.
    pub fn new(ceremony_id: &str) -> Self {
        Recorder {
            ceremony_id: ceremony_id.to_string(),
            entries: Vec::new(),
        }
    }

    /// Append a step.
    pub fn record(
        &mut self,
        time: DateTime<Utc>,
        step: &str,
        officer: Option<&str>,
        token: Option<&TokenId>,
        inputs: Pairs<'_>,
        outputs: Pairs<'_>,
    ) {
        let prev_hash = self
            .entries
            .last()
            .map(|e| e.hash.clone())
            .unwrap_or_else(|| genesis(&self.ceremony_id));
        let mut e = Entry {
            seq: self.entries.len() as u64,
            time,
            step: step.to_string(),
            officer: officer.map(str::to_string),
            token: token.cloned(),
            inputs: inputs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            outputs: outputs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            prev_hash,
            hash: String::new(),
        };
        e.hash = entry_hash(&e);
        self.entries.push(e);
    }

    /// The entries so far.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Take the entries.
    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }
}

impl Transcript {
    /// The exact bytes written to the file.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serialising this struct cannot fail (strings, numbers, maps with string keys).
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut copy = self.clone();
        copy.signature.value = String::new();
        copy.canonical_bytes()
    }

    /// Sign the transcript with `signer` (sets `signature`).
    pub fn sign(
        &mut self,
        signer: &dyn Signer,
        token: TokenId,
        key_label: &str,
    ) -> Result<(), Error> {
        self.signature = TranscriptSignature {
            algorithm: signer.algorithm(),
            token,
            key_label: key_label.to_string(),
            spki: B64.encode(signer.spki_der()),
            spki_sha256: sha256_hex(signer.spki_der()),
            value: String::new(),
        };
        let sig = signer
            .sign(&self.signed_bytes())
            .map_err(Error::core("signing the transcript"))?;
        self.signature.value = B64.encode(sig);
        verify_parsed(self, None).map_err(|fault| Error::SelfCheck {
            what: "transcript",
            reason: fault.to_string(),
        })
    }

    /// The readable Markdown report.
    pub fn markdown(&self, json_sha256: &str, json_name: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Key ceremony transcript: {}\n", self.name);
        if self.rehearsal {
            let _ = writeln!(s, "> **REHEARSAL.** Officers' confirmations were not typed; this is not a production ceremony.\n");
        }
        let _ = writeln!(s, "| | |\n|---|---|");
        let row = |s: &mut String, k: &str, v: &str| {
            let _ = writeln!(s, "| {k} | {} |", v.replace('|', "\\|"));
        };
        row(&mut s, "Kind", self.kind.name());
        row(&mut s, "Ceremony id", &format!("`{}`", self.ceremony_id));
        row(&mut s, "Started", &self.started_at.to_rfc3339());
        row(&mut s, "Finished", &self.finished_at.to_rfc3339());
        row(&mut s, "Operator", &self.operator);
        row(
            &mut s,
            "Configuration",
            &format!("`{}` (SHA-256 `{}`)", self.config_file, self.config_sha256),
        );
        row(
            &mut s,
            "Previous transcript",
            &self
                .previous_transcript_sha256
                .as_ref()
                .map(|h| format!("SHA-256 `{h}`"))
                .unwrap_or_else(|| "none (first ceremony)".into()),
        );
        row(
            &mut s,
            "Signed by",
            &format!(
                "key `{}` ({}) in token `{}` serial `{}`; public key SHA-256 `{}`",
                self.signature.key_label,
                self.signature.algorithm,
                self.signature.token.label,
                self.signature.token.serial,
                self.signature.spki_sha256
            ),
        );
        row(
            &mut s,
            "Transcript",
            &format!("`{json_name}` (SHA-256 `{json_sha256}`)"),
        );
        let _ = writeln!(s, "\n## Officers\n");
        for o in &self.officers {
            let when = self
                .entries
                .iter()
                .find(|e| e.step == "officer-confirmed" && e.officer.as_deref() == Some(o))
                .map(|e| format!("confirmed at {}", e.time.to_rfc3339()))
                .unwrap_or_else(|| "present".into());
            let _ = writeln!(s, "- {o}: {when}");
        }
        let _ = writeln!(s, "\n## Steps\n\n| # | Time | Step | Officer | Token | Inputs | Outputs |\n|---|---|---|---|---|---|---|");
        let pairs = |m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| format!("{k}: `{v}`"))
                .collect::<Vec<_>>()
                .join("<br>")
                .replace('|', "\\|")
        };
        for e in &self.entries {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                e.seq,
                e.time.to_rfc3339(),
                e.step,
                e.officer.as_deref().unwrap_or(""),
                e.token
                    .as_ref()
                    .map(|t| format!("{} ({})", t.label, t.serial))
                    .unwrap_or_default(),
                pairs(&e.inputs),
                pairs(&e.outputs)
            );
        }
        if !self.facts.files.is_empty() {
            let _ = writeln!(
                s,
                "\n## Outputs\n\n| What | File | SHA-256 of the file |\n|---|---|---|"
            );
            for f in &self.facts.files {
                let _ = writeln!(s, "| {} | `{}` | `{}` |", f.role, f.path, f.sha256);
            }
        }
        if !self.facts.keys.is_empty() {
            let _ = writeln!(s, "\n## Keys generated\n");
            for k in &self.facts.keys {
                let _ = writeln!(
                    s,
                    "- `{}` ({}) in token `{}` serial `{}`: public key SHA-256 `{}`; sensitive {}, extractable {}, always sensitive {}, never extractable {}",
                    k.key_label, k.algorithm, k.token.label, k.token.serial, k.spki_sha256, k.sensitive, k.extractable, k.always_sensitive, k.never_extractable
                );
            }
        }
        if !self.facts.certificates.is_empty() {
            let _ = writeln!(s, "\n## Certificates\n");
            for c in &self.facts.certificates {
                let _ = writeln!(
                    s,
                    "- {}: `{}`, serial `{}`, valid {} to {}, SHA-256 fingerprint `{}`",
                    c.role,
                    c.subject,
                    c.serial,
                    c.not_before.to_rfc3339(),
                    c.not_after.to_rfc3339(),
                    c.sha256
                );
            }
        }
        if let Some(c) = &self.facts.crl {
            let _ = writeln!(
                s,
                "\n## CRL\n\nCRL number {}, thisUpdate {}, nextUpdate {}, {} revoked, SHA-256 `{}`",
                c.number,
                c.this_update.to_rfc3339(),
                c.next_update.to_rfc3339(),
                c.revoked.len(),
                c.sha256
            );
        }
        if let Some(o) = &self.facts.ocsp_response {
            let _ = writeln!(
                s,
                "\n## OCSP response\n\nSerial `{}`: {}, thisUpdate {}, nextUpdate {}, SHA-256 `{}`",
                o.serial,
                o.status,
                o.this_update.to_rfc3339(),
                o.next_update.to_rfc3339(),
                o.sha256
            );
        }
        if let Some(q) = &self.facts.share_set {
            let _ = writeln!(
                s,
                "\n## Quorum\n\nThe user PIN of token `{}` (serial `{}`) was split into {} shares; {} are needed.",
                q.token_label, q.token_serial, q.total, q.threshold
            );
        }
        let _ = writeln!(
            s,
            "\n## Verifying\n\nThe JSON transcript is authoritative and signed; this report is a readable copy. Check it with\n\n    ceremony verify-transcript {json_name} --expect-signer {}\n",
            self.signature.spki_sha256
        );
        s
    }
}

/// The signed message. Taken from the verified canonical file bytes when given (saves a
/// serialisation): they end with the signature value, the document's last field, which the
/// signed form leaves empty. Falls back to serialising.
fn signed_message(t: &Transcript, canonical: Option<&[u8]>) -> Vec<u8> {
    if let Some(bytes) = canonical {
        let tail = format!("\"value\": \"{}\"\n  }}\n}}\n", t.signature.value);
        if let Some(prefix) = bytes.strip_suffix(tail.as_bytes()) {
            let mut v = prefix.to_vec();
            v.extend_from_slice(b"\"value\": \"\"\n  }\n}\n");
            return v;
        }
    }
    t.signed_bytes()
}

/// Check a parsed transcript: canonical form aside, its chain and its signature.
/// `canonical` are its canonical bytes, if the caller has them.
fn verify_parsed(t: &Transcript, canonical: Option<&[u8]>) -> Result<(), TranscriptFault> {
    if t.format != FORMAT {
        return Err(TranscriptFault::Malformed(format!(
            "unknown format {:?}",
            t.format
        )));
    }
    let mut prev = genesis(&t.ceremony_id);
    for (i, e) in t.entries.iter().enumerate() {
        if e.seq != i as u64 {
            return Err(TranscriptFault::Chain {
                seq: e.seq,
                reason: format!("entry {i} is numbered {}", e.seq),
            });
        }
        if e.prev_hash != prev {
            return Err(TranscriptFault::Chain {
                seq: e.seq,
                reason: "does not link to the previous entry".into(),
            });
        }
        if entry_hash(e) != e.hash {
            return Err(TranscriptFault::Chain {
                seq: e.seq,
                reason: "content does not match its hash".into(),
            });
        }
        prev = e.hash.clone();
    }
    let spki = B64
        .decode(&t.signature.spki)
        .map_err(|_| TranscriptFault::Malformed("signature.spki is not base64".into()))?;
    if sha256_hex(&spki) != t.signature.spki_sha256 {
        return Err(TranscriptFault::KeyFingerprint);
    }
    let sig = B64
        .decode(&t.signature.value)
        .map_err(|_| TranscriptFault::Malformed("signature.value is not base64".into()))?;
    ca_core::signer::verify(&spki, &signed_message(t, canonical), &sig)
        .map_err(|_| TranscriptFault::Signature)
}

/// Verify transcript bytes: exact canonical form, hash chain, signature, and (optionally) that
/// the signer's SubjectPublicKeyInfo has SHA-256 `expect_signer`.
pub fn verify_bytes(
    bytes: &[u8],
    expect_signer: Option<&str>,
) -> Result<Transcript, TranscriptFault> {
    let t: Transcript =
        serde_json::from_slice(bytes).map_err(|e| TranscriptFault::Malformed(e.to_string()))?;
    if t.canonical_bytes() != bytes {
        return Err(TranscriptFault::NotCanonical);
    }
    verify_parsed(&t, Some(bytes))?;
    if let Some(expected) = expect_signer {
        let expected = expected.to_ascii_lowercase().replace(':', "");
        if expected != t.signature.spki_sha256 {
            return Err(TranscriptFault::UnexpectedSigner {
                expected,
                found: t.signature.spki_sha256.clone(),
            });
        }
    }
    Ok(t)
}

/// Verify a transcript file (see [`verify_bytes`]).
pub fn verify_file(path: &Path, expect_signer: Option<&str>) -> Result<Transcript, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        what: "transcript",
        path: path.to_path_buf(),
        source,
    })?;
    verify_bytes(&bytes, expect_signer).map_err(|fault| Error::Transcript {
        file: path.to_path_buf(),
        fault,
    })
}

/// The SHA-256 of a certificate's or public key's SubjectPublicKeyInfo, for `--expect-signer`:
/// accepts a PEM certificate, a PEM public key, or a hex fingerprint.
pub fn signer_fingerprint(arg: &str) -> Result<String, Error> {
    let p = Path::new(arg);
    if p.exists() {
        let text = std::fs::read(p).map_err(|source| Error::Read {
            what: "expected signer",
            path: p.to_path_buf(),
            source,
        })?;
        let s = String::from_utf8_lossy(&text);
        if s.contains("BEGIN CERTIFICATE") {
            return Ok(sha256_hex(
                &crate::x509::read_cert_pem("expected signer certificate", p)?.spki_der,
            ));
        }
        return Ok(sha256_hex(
            crate::x509::read_public_key_pem("expected signer public key", p)?.spki_der(),
        ));
    }
    let hexed = arg.to_ascii_lowercase().replace(':', "");
    if hexed.len() == 64 && hexed.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(hexed)
    } else {
        Err(Error::Input {
            what: "expected signer",
            path: p.to_path_buf(),
            reason: "neither a PEM file nor a SHA-256 fingerprint (64 hex digits)".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_message_from_canonical_bytes_equals_the_serialised_form() {
        let t = Transcript {
            format: FORMAT.into(),
            ceremony_id: "c".into(),
            kind: Kind::Root,
            name: "n \"quoted\"".into(),
            rehearsal: true,
            tool: "t".into(),
            config_file: "f".into(),
            config_sha256: "h".into(),
            config: "a = 1\n".into(),
            previous_transcript_sha256: None,
            started_at: DateTime::from_timestamp(0, 0).unwrap_or_default(),
            finished_at: DateTime::from_timestamp(1, 0).unwrap_or_default(),
            officers: vec!["o".into()],
            operator: "o".into(),
            entries: Vec::new(),
            facts: Facts::default(),
            signature: TranscriptSignature {
                algorithm: KeyAlgorithm::P256,
                token: TokenId {
                    label: "l".into(),
                    serial: "s".into(),
                },
                key_label: "k".into(),
                spki: "AAAA".into(),
                spki_sha256: "x".into(),
                value: "MEUCIQ+/=".into(),
            },
        };
        let canonical = t.canonical_bytes();
        assert_eq!(signed_message(&t, Some(&canonical)), t.signed_bytes());
        assert_ne!(signed_message(&t, Some(&canonical)), canonical);
    }
}
