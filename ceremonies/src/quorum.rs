//! The quorum: the root token's user PIN is split into Shamir shares (blahaj, GF(256)) so no
//! single officer knows it, and reassembled from `m` of `n` shares for each later ceremony.
//!
//! Each share file carries, besides its share:
//!
//! - the ceremony id, token label and token serial it belongs to, so shares of different
//!   ceremonies are never combined and the shares are never tried on another token;
//! - a commitment to the PIN, `SHA-256("ceremony-pin/v1" 0 ceremony_id 0 PIN)` (the PIN is 32
//!   random alphanumerics, about 190 bits, so the commitment reveals nothing useful), against
//!   which the reassembled PIN is checked: a wrong combination is detected instead of yielding a
//!   wrong PIN that would cost a failed login;
//! - a checksum over all of the above, so an accidentally damaged file is named.
//!
//! Everything here is pure: no HSM is opened. The ceremony reassembles the PIN before it opens
//! the token.

use crate::error::QuorumError;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Format tag of share files.
pub const SHARE_FORMAT: &str = "ceremony-pin-share/v1";
/// Length of generated PINs (alphanumeric).
pub const PIN_LEN: usize = 32;

/// Identity of a set of shares: what the root ceremony records in its transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareSet {
    /// The root ceremony that made the shares.
    pub ceremony_id: String,
    /// Token whose user PIN the shares reassemble.
    pub token_label: String,
    /// That token's serial number.
    pub token_serial: String,
    /// Shares needed (m).
    pub threshold: u8,
    /// Shares made (n).
    pub total: u8,
    /// Commitment to the PIN.
    pub pin_commitment: String,
}

/// One officer's share file (JSON, mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareFile {
    /// [`SHARE_FORMAT`].
    pub format: String,
    /// The share set this share belongs to.
    pub set: ShareSet,
    /// The officer holding it.
    pub officer: String,
    /// Share number (the x coordinate, 1..=n).
    pub index: u8,
    /// The share (x then y bytes), hex.
    pub share: String,
    /// SHA-256 over every field above (see [`ShareFile::compute_checksum`]), hex.
    pub checksum: String,
}

impl ShareFile {
    /// Checksum over all fields except `checksum` itself.
    pub fn compute_checksum(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.format.as_str(),
            &self.set.ceremony_id,
            &self.set.token_label,
            &self.set.token_serial,
            &self.set.threshold.to_string(),
            &self.set.total.to_string(),
            &self.set.pin_commitment,
            &self.officer,
            &self.index.to_string(),
            &self.share,
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// The JSON text written to the file.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_string_pretty(self)
            .map(|s| s + "\n")
            .unwrap_or_default()
    }
}

/// A fresh random PIN of [`PIN_LEN`] alphanumerics, from the OS CSPRNG.
pub fn random_pin() -> Zeroizing<String> {
    use rand::distributions::{Alphanumeric, DistString};
    Zeroizing::new(Alphanumeric.sample_string(&mut OsRng, PIN_LEN))
}

/// The commitment to `pin` recorded with the shares of ceremony `ceremony_id`.
pub fn pin_commitment(ceremony_id: &str, pin: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"ceremony-pin/v1\0");
    h.update(ceremony_id.as_bytes());
    h.update(b"\0");
    h.update(pin.as_bytes());
    hex::encode(h.finalize())
}

/// Split `pin` into one share per officer, any `threshold` of which reassemble it.
/// Checks before returning that the first and the last `threshold` shares both reassemble the
/// PIN, so a ceremony never sets a PIN its shares cannot restore.
pub fn split(
    pin: &str,
    ceremony_id: &str,
    token_label: &str,
    token_serial: &str,
    threshold: u8,
    officers: &[String],
) -> Result<(ShareSet, Vec<ShareFile>), QuorumError> {
    let total = u8::try_from(officers.len()).map_err(|_| QuorumError::NotEnoughShares {
        have: 255,
        need: officers.len(),
    })?;
    if threshold < 1 || threshold > total {
        return Err(QuorumError::NotEnoughShares {
            have: total as usize,
            need: threshold as usize,
        });
    }
    let set = ShareSet {
        ceremony_id: ceremony_id.to_string(),
        token_label: token_label.to_string(),
        token_serial: token_serial.to_string(),
        threshold,
        total,
        pin_commitment: pin_commitment(ceremony_id, pin),
    };
    let sharks = blahaj::Sharks(threshold);
    let files: Vec<ShareFile> = sharks
        .dealer_rng(pin.as_bytes(), &mut OsRng)
        .zip(officers)
        .map(|(share, officer)| {
            let bytes = Zeroizing::new(Vec::from(&share));
            let mut f = ShareFile {
                format: SHARE_FORMAT.to_string(),
                set: set.clone(),
                officer: officer.clone(),
                index: bytes.first().copied().unwrap_or(0),
                share: hex::encode(&*bytes),
                checksum: String::new(),
            };
            f.checksum = f.compute_checksum();
            f
        })
        .collect();
    let t = threshold as usize;
    for subset in [&files[..t], &files[files.len() - t..]] {
        let loaded: Vec<LoadedShare> = subset
            .iter()
            .map(|f| LoadedShare {
                file: PathBuf::from(format!("share {}", f.index)),
                share: f.clone(),
            })
            .collect();
        let (again, _) = reassemble(
            &loaded,
            &Expect {
                token_label,
                ceremony: None,
                officers,
            },
        )?;
        if again.as_str() != pin {
            return Err(QuorumError::PinMismatch);
        }
    }
    Ok((set, files))
}

/// A share file read from disk.
#[derive(Debug, Clone)]
pub struct LoadedShare {
    /// Where it was read from.
    pub file: PathBuf,
    /// Its content.
    pub share: ShareFile,
}

/// Read and check one share file (format and checksum).
pub fn read_share(path: &Path) -> Result<LoadedShare, QuorumError> {
    let corrupt = |reason: String| QuorumError::CorruptShare {
        file: path.display().to_string(),
        reason,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| corrupt(format!("cannot read it: {e}")))?;
    let share: ShareFile =
        serde_json::from_str(&text).map_err(|e| corrupt(format!("not a share file: {e}")))?;
    if share.format != SHARE_FORMAT {
        return Err(corrupt(format!(
            "unknown format {:?} (expected {SHARE_FORMAT})",
            share.format
        )));
    }
    if share.compute_checksum() != share.checksum {
        return Err(corrupt("checksum does not match its content".into()));
    }
    let bytes = hex::decode(&share.share).map_err(|_| corrupt("share is not hex".into()))?;
    if bytes.len() < 2 || bytes[0] != share.index || share.index == 0 {
        return Err(corrupt("share bytes do not match the share index".into()));
    }
    Ok(LoadedShare {
        file: path.to_path_buf(),
        share,
    })
}

/// What the shares must match.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// Token label of this ceremony's root token.
    pub token_label: &'a str,
    /// `(ceremony id, PIN commitment)` of the root ceremony recorded in the history, if known.
    pub ceremony: Option<(&'a str, &'a str)>,
    /// Officers of this ceremony; every share must belong to one of them.
    pub officers: &'a [String],
}

/// Check the shares against each other and `expect`, and reassemble the PIN. Errors name the
/// offending file. No HSM is involved.
pub fn reassemble(
    shares: &[LoadedShare],
    expect: &Expect<'_>,
) -> Result<(Zeroizing<String>, ShareSet), QuorumError> {
    let first = shares.first().ok_or(QuorumError::NoShares)?;
    let set = &first.share.set;
    let name = |s: &LoadedShare| s.file.display().to_string();
    for s in shares {
        if s.share.set.ceremony_id != set.ceremony_id
            || s.share.set.pin_commitment != set.pin_commitment
        {
            return Err(QuorumError::MixedShares {
                file: name(s),
                first: name(first),
                expected: set.ceremony_id.clone(),
                found: s.share.set.ceremony_id.clone(),
            });
        }
        if s.share.set != *set {
            return Err(QuorumError::CorruptShare {
                file: name(s),
                reason: "its quorum parameters differ from the other shares of the same ceremony"
                    .into(),
            });
        }
    }
    if let Some((ceremony_id, commitment)) = expect.ceremony {
        if set.ceremony_id != ceremony_id || set.pin_commitment != commitment {
            return Err(QuorumError::WrongCeremony {
                token: expect.token_label.to_string(),
                expected: ceremony_id.to_string(),
                found: set.ceremony_id.clone(),
            });
        }
    }
    if set.token_label != expect.token_label {
        return Err(QuorumError::WrongToken {
            expected: expect.token_label.to_string(),
            found: set.token_label.clone(),
        });
    }
    let mut seen: Vec<(u8, &LoadedShare)> = Vec::new();
    for s in shares {
        if !expect.officers.contains(&s.share.officer) {
            return Err(QuorumError::OfficerNotListed {
                file: name(s),
                officer: s.share.officer.clone(),
            });
        }
        if let Some((_, other)) = seen.iter().find(|(i, _)| *i == s.share.index) {
            return Err(QuorumError::DuplicateShare {
                file: name(s),
                other: name(other),
                index: s.share.index,
            });
        }
        seen.push((s.share.index, s));
    }
    if seen.len() < set.threshold as usize {
        return Err(QuorumError::NotEnoughShares {
            have: seen.len(),
            need: set.threshold as usize,
        });
    }
    let parsed = shares
        .iter()
        .map(|s| {
            let corrupt = |reason: String| QuorumError::CorruptShare {
                file: name(s),
                reason,
            };
            let bytes = Zeroizing::new(
                hex::decode(&s.share.share).map_err(|_| corrupt("share is not hex".into()))?,
            );
            blahaj::Share::try_from(bytes.as_slice()).map_err(|e| corrupt(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let secret = Zeroizing::new(
        blahaj::Sharks(set.threshold)
            .recover(parsed.iter())
            .map_err(|_| QuorumError::NotEnoughShares {
                have: seen.len(),
                need: set.threshold as usize,
            })?,
    );
    let pin =
        Zeroizing::new(String::from_utf8(secret.to_vec()).map_err(|_| QuorumError::PinMismatch)?);
    if pin_commitment(&set.ceremony_id, &pin) != set.pin_commitment {
        return Err(QuorumError::PinMismatch);
    }
    Ok((pin, set.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn officers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("officer {i}")).collect()
    }

    fn loaded(files: &[ShareFile]) -> Vec<LoadedShare> {
        files
            .iter()
            .map(|f| LoadedShare {
                file: PathBuf::from(format!("{}.share", f.officer)),
                share: f.clone(),
            })
            .collect()
    }

    fn expect(o: &[String]) -> Expect<'_> {
        Expect {
            token_label: "root",
            ceremony: None,
            officers: o,
        }
    }

    #[test]
    fn any_m_of_n_reassemble_and_fewer_do_not() {
        let o = officers(5);
        let pin = random_pin();
        let (_, files) = split(&pin, "c1", "root", "serial", 3, &o).unwrap();
        let all = loaded(&files);
        for combo in [[0, 1, 2], [0, 2, 4], [1, 3, 4], [2, 3, 4]] {
            let pick: Vec<_> = combo.iter().map(|i| all[*i].clone()).collect();
            assert_eq!(*reassemble(&pick, &expect(&o)).unwrap().0, *pin);
        }
        assert_eq!(
            reassemble(&all[..2], &expect(&o)).unwrap_err(),
            QuorumError::NotEnoughShares { have: 2, need: 3 }
        );
    }

    #[test]
    fn altered_share_with_fixed_checksum_is_caught_by_the_commitment() {
        let o = officers(3);
        let (_, files) = split(&random_pin(), "c1", "root", "s", 2, &o).unwrap();
        let mut all = loaded(&files);
        let mut bytes = hex::decode(&all[1].share.share).unwrap();
        bytes[3] ^= 0x01;
        all[1].share.share = hex::encode(bytes);
        all[1].share.checksum = all[1].share.compute_checksum();
        assert_eq!(
            reassemble(&all[..2], &expect(&o)).unwrap_err(),
            QuorumError::PinMismatch
        );
    }

    #[test]
    fn duplicate_and_foreign_shares_are_refused() {
        let o = officers(3);
        let (_, a) = split(&random_pin(), "ceremony-a", "root", "s", 2, &o).unwrap();
        let (_, b) = split(&random_pin(), "ceremony-b", "root", "s", 2, &o).unwrap();
        let a = loaded(&a);
        let b = loaded(&b);
        assert!(matches!(
            reassemble(&[a[0].clone(), a[0].clone()], &expect(&o)),
            Err(QuorumError::DuplicateShare { index: 1, .. })
        ));
        assert!(matches!(
            reassemble(&[a[0].clone(), b[1].clone()], &expect(&o)),
            Err(QuorumError::MixedShares { .. })
        ));
        let e = Expect {
            token_label: "root",
            ceremony: Some(("ceremony-a", &a[0].share.set.pin_commitment)),
            officers: &o,
        };
        assert!(matches!(
            reassemble(&b[..2], &e),
            Err(QuorumError::WrongCeremony { .. })
        ));
        let e = Expect {
            token_label: "other",
            ceremony: None,
            officers: &o,
        };
        assert!(matches!(
            reassemble(&a[..2], &e),
            Err(QuorumError::WrongToken { .. })
        ));
        let fewer = officers(1);
        assert!(matches!(
            reassemble(&a[..2], &expect(&fewer)),
            Err(QuorumError::OfficerNotListed { .. })
        ));
    }

    #[test]
    fn damaged_file_is_named() {
        let o = officers(2);
        let (_, files) = split(&random_pin(), "c", "root", "s", 2, &o).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.share");
        std::fs::write(
            &p,
            files[0].to_json().replace("\"officer 0\"", "\"officer 9\""),
        )
        .unwrap();
        assert!(matches!(
            read_share(&p),
            Err(QuorumError::CorruptShare { .. })
        ));
        let p2 = dir.path().join("b.share");
        std::fs::write(&p2, files[1].to_json()).unwrap();
        assert_eq!(read_share(&p2).unwrap().share.index, files[1].index);
    }
}
