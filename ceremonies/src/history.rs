//! The ceremony history: the transcripts already in the transcript directory, each verified,
//! linked to the one before it by hash, and each signed by the key the history itself pins for
//! its kind (see [`pinned_signer`]). Later ceremonies take from it the root ceremony's share
//! set (to check quorum shares before the HSM is touched), the last CRL number (so numbers
//! never repeat) and the hash of the latest transcript (to extend the chain).
//!
//! # Pinned signers
//!
//! A transcript's signature alone proves only that *some* key signed it: anyone can edit a
//! transcript and sign it again with a key of their own. So the signer of each transcript is
//! pinned from the history, never taken from the transcript:
//!
//! | kind | must be signed by |
//! |---|---|
//! | `root` | the root key it records (the one key it generated; the root certificate's key) |
//! | `key` | the issuing key it records (the one key it generated) |
//! | `intermediate`, `crl`, `ocsp-response` | a root key recorded by an earlier `root` transcript (for `crl`, also the CRL's issuer) |
//! | `ocsp-signer` | an issuing key recorded by an earlier `key` transcript |
//!
//! The root transcripts are the anchors: check the first one's signer against the root
//! certificate you hold (`ceremony verify-transcript 001-root.json --expect-signer root.pem`).

use crate::config::Kind;
use crate::error::Error;
use crate::quorum::ShareSet;
use crate::transcript::{verify_bytes, Transcript};
use ca_core::signer::sha256_hex;
use std::path::{Path, PathBuf};

/// One verified transcript.
#[derive(Debug, Clone)]
pub struct Record {
    /// Sequence number from the file name (`NNN-kind.json`).
    pub seq: u32,
    /// Path of the transcript file.
    pub path: PathBuf,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Its content.
    pub transcript: Transcript,
}

/// All verified transcripts of a directory, in order.
#[derive(Debug, Clone)]
pub struct History {
    /// The transcript directory it was loaded from.
    pub dir: PathBuf,
    /// The transcripts, by sequence number.
    pub records: Vec<Record>,
}

/// `NNN-kind.json` -> NNN.
fn seq_of(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".json")?;
    let (digits, rest) = stem.split_once('-')?;
    (!rest.is_empty() && digits.len() >= 3 && digits.chars().all(|c| c.is_ascii_digit()))
        .then(|| digits.parse().ok())?
}

impl History {
    /// Load and verify every transcript in `dir` (a missing directory is an empty history).
    pub fn load(dir: &Path) -> Result<History, Error> {
        let fail = |reason: String| Error::History {
            dir: dir.to_path_buf(),
            reason,
        };
        let mut records = Vec::new();
        let listing = match std::fs::read_dir(dir) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(History {
                    dir: dir.to_path_buf(),
                    records,
                })
            }
            Err(e) => return Err(fail(format!("cannot list: {e}"))),
        };
        for entry in listing {
            let entry = entry.map_err(|e| fail(format!("cannot list: {e}")))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(seq) = seq_of(&name) else { continue };
            let path = entry.path();
            let bytes =
                std::fs::read(&path).map_err(|e| fail(format!("cannot read {name}: {e}")))?;
            let transcript = verify_bytes(&bytes, None)
                .map_err(|f| fail(format!("{name} does not verify: {f}")))?;
            records.push(Record {
                seq,
                path,
                sha256: sha256_hex(&bytes),
                transcript,
            });
        }
        records.sort_by_key(|r| r.seq);
        for pair in records.windows(2) {
            if pair[0].seq == pair[1].seq {
                return Err(fail(format!("two transcripts numbered {:03}", pair[0].seq)));
            }
        }
        let mut prev: Option<&Record> = None;
        for r in &records {
            let expected = prev.map(|p| p.sha256.clone());
            if r.transcript.previous_transcript_sha256 != expected {
                return Err(fail(format!(
                    "{} does not follow {}: the chain of transcripts is broken (one was removed, replaced or reordered)",
                    r.path.display(),
                    prev.map(|p| p.path.display().to_string()).unwrap_or_else(|| "the start of the history".into())
                )));
            }
            prev = Some(r);
        }
        for (i, r) in records.iter().enumerate() {
            check_signer(&records[..i], r).map_err(fail)?;
        }
        Ok(History {
            dir: dir.to_path_buf(),
            records,
        })
    }

    /// The record of the transcript file `path` (same file name, same bytes), if it is part of
    /// this history, with the records before it.
    pub fn find(&self, path: &Path, sha256: &str) -> Option<(&[Record], &Record)> {
        let name = path.file_name()?;
        let i = self
            .records
            .iter()
            .position(|r| r.path.file_name() == Some(name) && r.sha256 == sha256)?;
        Some((&self.records[..i], &self.records[i]))
    }

    /// Sequence number for the next transcript.
    pub fn next_seq(&self) -> u32 {
        self.records.last().map(|r| r.seq + 1).unwrap_or(1)
    }

    /// SHA-256 of the latest transcript.
    pub fn head_sha256(&self) -> Option<String> {
        self.records.last().map(|r| r.sha256.clone())
    }

    /// The latest root ceremony for this token label, with its share set.
    pub fn root_ceremony(&self, token_label: &str) -> Option<(&Record, &ShareSet)> {
        self.records
            .iter()
            .rev()
            .filter(|r| r.transcript.kind == Kind::Root)
            .find_map(|r| {
                r.transcript
                    .facts
                    .share_set
                    .as_ref()
                    .filter(|s| s.token_label == token_label)
                    .map(|s| (r, s))
            })
    }

    /// The highest CRL number issued so far by the key with this SPKI SHA-256 (0 if none).
    pub fn last_crl_number(&self, issuer_spki_sha256: &str) -> u64 {
        self.records
            .iter()
            .filter_map(|r| r.transcript.facts.crl.as_ref())
            .filter(|c| c.issuer_spki_sha256 == issuer_spki_sha256)
            .map(|c| c.number)
            .max()
            .unwrap_or(0)
    }

    /// Which transcript recorded a key with this SPKI SHA-256 (for the plan display).
    pub fn key_origin(&self, spki_sha256: &str) -> Option<&Record> {
        self.records.iter().find(|r| {
            r.transcript
                .facts
                .keys
                .iter()
                .any(|k| k.spki_sha256 == spki_sha256)
        })
    }

    /// Which transcript recorded a certificate with this fingerprint.
    pub fn certificate_origin(&self, sha256: &str) -> Option<&Record> {
        self.records.iter().find(|r| {
            r.transcript
                .facts
                .certificates
                .iter()
                .any(|c| c.sha256 == sha256)
        })
    }
}

/// Verify one transcript file as `ceremony verify-transcript` does: exact form, hash chain and
/// signature ([`crate::transcript::verify_file`]), then its signer, pinned from the history in
/// the file's directory (which must verify as a whole, see [`History::load`]), or, for a file
/// outside any history, from the file itself (`root`, `key`) or from `expect_signer`. With
/// `expect_signer` (SHA-256 of the SubjectPublicKeyInfo) the signer must match it too: a
/// mismatch with the pin is refused either way.
pub fn verify_pinned(
    path: &Path,
    expect_signer: Option<&str>,
) -> Result<(Transcript, SignerPin), Error> {
    let t = crate::transcript::verify_file(path, None)?;
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        what: "transcript",
        path: path.to_path_buf(),
        source,
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // A transcript alone in its directory (a copy handed to an auditor) has no history to be
    // pinned by; anything else must be a whole, verified history.
    let alone = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| seq_of(&e.file_name().to_string_lossy()).is_some())
                .count()
                <= 1
        })
        .unwrap_or(false);
    let history = if alone {
        History {
            dir: dir.to_path_buf(),
            records: Vec::new(),
        }
    } else {
        History::load(dir)?
    };
    let refused = |reason: String| Error::History {
        dir: dir.to_path_buf(),
        reason,
    };
    let expected = expect_signer.map(|e| e.to_ascii_lowercase().replace(':', ""));
    let pin = match history.find(path, &sha256_hex(&bytes)) {
        // Part of the history: History::load already checked its signer against the pin.
        Some((earlier, _)) => pinned_signer(earlier, &t).map_err(refused)?,
        None => match pinned_signer(&[], &t) {
            Ok(pin) => pin,
            Err(reason) => match &expected {
                Some(e) => SignerPin {
                    spki_sha256: e.clone(),
                    source: "--expect-signer".into(),
                },
                None => {
                    return Err(refused(format!(
                        "{} is not part of the ceremony history in this directory, and {reason}; \
                         verify it in its transcripts directory, or pass --expect-signer",
                        path.display()
                    )))
                }
            },
        },
    };
    let fault = |expected: &str| Error::Transcript {
        file: path.to_path_buf(),
        fault: crate::error::TranscriptFault::UnexpectedSigner {
            expected: expected.to_string(),
            found: t.signature.spki_sha256.clone(),
        },
    };
    if t.signature.spki_sha256 != pin.spki_sha256 {
        return Err(fault(&pin.spki_sha256));
    }
    if let Some(e) = &expected {
        if *e != t.signature.spki_sha256 {
            return Err(fault(e));
        }
    }
    Ok((t, pin))
}

/// The key that must have signed a transcript, and which record says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerPin {
    /// SHA-256 of the SubjectPublicKeyInfo the signer must have.
    pub spki_sha256: String,
    /// Where the pin comes from, for messages (`001-root.json (root key "root-ca")`).
    pub source: String,
}

fn file_name(r: &Record) -> String {
    r.path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| r.path.display().to_string())
}

/// The one key a `root` or `key` ceremony generated.
fn generated_key(t: &Transcript) -> Result<&crate::transcript::KeyFact, String> {
    match t.facts.keys.as_slice() {
        [k] => Ok(k),
        // A key ceremony may generate the audit checkpoint key after the issuing key; the
        // issuing key (first) is the one that signs and that later ceremonies pin.
        [k, _audit] if t.kind == Kind::Key => Ok(k),
        keys => Err(format!(
            "a {} transcript must record exactly one generated key, this one records {}",
            t.kind,
            keys.len()
        )),
    }
}

/// The signer `t` must have, from `t` itself (`root`, `key`: the key the ceremony generated)
/// or from the transcripts before it (`earlier`, oldest first): a root key recorded by a `root`
/// ceremony for the root-signed kinds, an issuing key recorded by a `key` ceremony for
/// `ocsp-signer`. When several earlier ceremonies recorded keys of the right kind, the one
/// whose key signed `t` is the pin if there is one, else the latest (for the message).
pub fn pinned_signer(earlier: &[Record], t: &Transcript) -> Result<SignerPin, String> {
    let from = |kind: Kind, what: &str| -> Result<SignerPin, String> {
        let candidates: Vec<(&Record, &crate::transcript::KeyFact)> = earlier
            .iter()
            .filter(|r| r.transcript.kind == kind)
            .filter_map(|r| generated_key(&r.transcript).ok().map(|k| (r, k)))
            .collect();
        let (r, k) = candidates
            .iter()
            .find(|(_, k)| k.spki_sha256 == t.signature.spki_sha256)
            .or(candidates.last())
            .ok_or_else(|| {
                format!(
                    "no earlier {kind} ceremony in the history records the {what} that must sign \
                     a {} transcript, so its signer cannot be pinned",
                    t.kind
                )
            })?;
        Ok(SignerPin {
            spki_sha256: k.spki_sha256.clone(),
            source: format!("{} ({what} {:?})", file_name(r), k.key_label),
        })
    };
    match t.kind {
        Kind::Root | Kind::Key => {
            let k = generated_key(t)?;
            if t.kind == Kind::Root {
                // The root certificate the ceremony signed carries the same key.
                if let Some(c) = t.facts.certificates.iter().find(|c| c.role == "root") {
                    if c.spki_sha256 != k.spki_sha256 {
                        return Err(format!(
                            "the root certificate recorded has key {}, not the generated key {}",
                            c.spki_sha256, k.spki_sha256
                        ));
                    }
                }
            }
            Ok(SignerPin {
                spki_sha256: k.spki_sha256.clone(),
                source: format!(
                    "the key this {} ceremony generated ({:?})",
                    t.kind, k.key_label
                ),
            })
        }
        Kind::Intermediate | Kind::Crl | Kind::OcspResponse => from(Kind::Root, "root key"),
        Kind::OcspSigner => from(Kind::Key, "issuing key"),
    }
}

/// Refuse a record whose signer is not the key the history pins for it.
fn check_signer(earlier: &[Record], r: &Record) -> Result<(), String> {
    let t = &r.transcript;
    let name = file_name(r);
    let pin = pinned_signer(earlier, t).map_err(|e| format!("{name}: {e}"))?;
    if t.signature.spki_sha256 != pin.spki_sha256 {
        return Err(format!(
            "{name} is signed by key {}, but {} pins its signer to key {}: the transcript was \
             signed again with another key (edited?); refusing the history",
            t.signature.spki_sha256, pin.source, pin.spki_sha256
        ));
    }
    if let Some(crl) = &t.facts.crl {
        // CRL numbers are counted per issuer: a CRL fact counts for the key that signed it.
        if crl.issuer_spki_sha256 != t.signature.spki_sha256 {
            return Err(format!(
                "{name} records a CRL of issuer {} but is signed by key {}",
                crl.issuer_spki_sha256, t.signature.spki_sha256
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn transcript_file_names() {
        assert_eq!(super::seq_of("001-root.json"), Some(1));
        assert_eq!(super::seq_of("012-ocsp-response.json"), Some(12));
        assert_eq!(super::seq_of("1-root.json"), None);
        assert_eq!(super::seq_of("001-root.md"), None);
        assert_eq!(super::seq_of("notes.json"), None);
    }
}
