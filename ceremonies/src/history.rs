//! The ceremony history: the transcripts already in the transcript directory, each verified,
//! linked to the one before it by hash. Later ceremonies take from it the root ceremony's share
//! set (to check quorum shares before the HSM is touched), the last CRL number (so numbers
//! never repeat) and the hash of the latest transcript (to extend the chain).

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
    /// The file.
    pub path: PathBuf,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Its content.
    pub transcript: Transcript,
}

/// All verified transcripts of a directory, in order.
#[derive(Debug, Clone)]
pub struct History {
    /// The directory.
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
        Ok(History {
            dir: dir.to_path_buf(),
            records,
        })
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
