//! Hash-chained audit events (DESIGN invariant 4) and signed checkpoints.
//!
//! Each event carries the hash of the previous one; its own hash is SHA-256 over the previous
//! hash and the canonical JSON of its fields. Changing, removing or reordering any event breaks
//! the chain, which [`verify_chain`] detects.
//!
//! A hash chain alone proves nothing against whoever can write the store: they can cut its tail
//! or recompute every hash. A [`Checkpoint`] is the CA's signature, with an HSM key made for
//! this alone (never the issuing key), over a sequence number and the hash of the event there.
//! [`LogVerifier`] checks events and checkpoints as one stream, in constant memory: a log that
//! ends before its last checkpoint, or whose event at a checkpoint's sequence has another hash,
//! fails, and so does a checkpoint whose signature is not the audit key's.

use crate::error::{Error, Result};
use crate::signer::{self, Signer};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Hash of the (virtual) event before the first one.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event before it is sealed into the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAuditEvent {
    /// Who: certificate subject, token id, `system`, an officer name.
    pub actor: String,
    /// What: `issue`, `renew`, `revoke`, `token.create`, `token.use`, `auth.fail`, ...
    pub action: String,
    /// On what: serial hex, token id, route.
    pub object: String,
    /// `ok`, or an error code.
    pub result: String,
    /// Free-form detail (never secrets).
    #[serde(default)]
    pub detail: serde_json::Value,
}

impl NewAuditEvent {
    /// A successful event.
    pub fn ok(
        actor: impl Into<String>,
        action: impl Into<String>,
        object: impl Into<String>,
    ) -> Self {
        NewAuditEvent {
            actor: actor.into(),
            action: action.into(),
            object: object.into(),
            result: "ok".into(),
            detail: serde_json::Value::Null,
        }
    }
    /// A failed event with an error code.
    pub fn failed(
        actor: impl Into<String>,
        action: impl Into<String>,
        object: impl Into<String>,
        code: impl Into<String>,
    ) -> Self {
        NewAuditEvent {
            actor: actor.into(),
            action: action.into(),
            object: object.into(),
            result: code.into(),
            detail: serde_json::Value::Null,
        }
    }
    /// Attach detail.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

/// A sealed audit event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Sequence number, dense from 1.
    pub seq: u64,
    /// Time of the event.
    pub time: DateTime<Utc>,
    /// The event's fields.
    #[serde(flatten)]
    pub event: NewAuditEvent,
    /// Hash of the previous event (or [`GENESIS`]).
    pub prev_hash: String,
    /// This event's hash.
    pub hash: String,
}

#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    time: &'a DateTime<Utc>,
    event: &'a NewAuditEvent,
    prev_hash: &'a str,
}

/// Compute the hash of an event from its fields and the previous hash.
pub fn event_hash(
    seq: u64,
    time: &DateTime<Utc>,
    event: &NewAuditEvent,
    prev_hash: &str,
) -> Result<String> {
    let bytes = serde_json::to_vec(&Hashed {
        seq,
        time,
        event,
        prev_hash,
    })
    .map_err(|e| Error::Corrupt(format!("audit event not serialisable: {e}")))?;
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(&bytes);
    Ok(hex::encode(h.finalize()))
}

/// Seal an event onto a chain whose last event has `prev_seq` and `prev_hash`.
pub fn seal(
    prev_seq: u64,
    prev_hash: &str,
    time: DateTime<Utc>,
    event: NewAuditEvent,
) -> Result<AuditEvent> {
    let seq = prev_seq + 1;
    let hash = event_hash(seq, &time, &event, prev_hash)?;
    Ok(AuditEvent {
        seq,
        time,
        event,
        prev_hash: prev_hash.to_string(),
        hash,
    })
}

/// Check a sequence of events, starting at the genesis. Returns the number of events.
pub fn verify_chain<I: IntoIterator<Item = AuditEvent>>(events: I) -> Result<u64> {
    let mut v = LogVerifier::new(None);
    for ev in events {
        v.event(&ev)?;
    }
    Ok(v.seq())
}

/// Domain-separation label of checkpoint signatures: a checkpoint signature can never be
/// taken for a signature over anything else the key might sign, nor the other way round.
pub const CHECKPOINT_LABEL: &str = "ca-server audit checkpoint v1";

/// The public half of the audit checkpoint key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditKey {
    spki: Vec<u8>,
    sha256: String,
}

impl AuditKey {
    /// From a DER SubjectPublicKeyInfo (refused if the algorithm is weak or unknown).
    pub fn from_spki_der(spki: &[u8]) -> Result<Self> {
        signer::KeyAlgorithm::from_spki(spki)?;
        Ok(AuditKey {
            spki: spki.to_vec(),
            sha256: signer::sha256_hex(spki),
        })
    }

    /// From a PEM `PUBLIC KEY` (what the key ceremony and the server write for auditors).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let der = crate::x509::pem_decode_all(pem.as_bytes(), "PUBLIC KEY")
            .map_err(|e| Error::Corrupt(format!("audit public key PEM: {e}")))?
            .into_iter()
            .next()
            .ok_or_else(|| {
                Error::Corrupt("no PEM PUBLIC KEY block in the audit public key".into())
            })?;
        Self::from_spki_der(&der)
    }

    /// The PEM form (`PUBLIC KEY`).
    pub fn to_pem(&self) -> String {
        crate::x509::pem_encode("PUBLIC KEY", &self.spki)
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// SHA-256 of the SubjectPublicKeyInfo (hex): the key's id in checkpoints and exports.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// The CA's signed statement "at `time` the audit log had `seq` events, the last with hash
/// `head_hash`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Sequence number of the last event covered (0: the empty log).
    pub seq: u64,
    /// Hash of that event ([`GENESIS`] for the empty log).
    pub head_hash: String,
    /// When it was signed (whole seconds).
    pub time: DateTime<Utc>,
    /// SHA-256 of the signing key's SubjectPublicKeyInfo (hex).
    pub key_sha256: String,
    /// Signature (X.509 encoding: DER ECDSA-Sig-Value for ECDSA), hex.
    pub signature: String,
}

/// The bytes a checkpoint signature covers: the label, then one `name=value` line per field.
/// No field can hold a newline (numbers, hex, RFC 3339), so the encoding is unambiguous.
pub fn checkpoint_message(
    seq: u64,
    head_hash: &str,
    time: &DateTime<Utc>,
    key_sha256: &str,
) -> Vec<u8> {
    format!(
        "{CHECKPOINT_LABEL}\nseq={seq}\nhead={head_hash}\ntime={}\nkey={key_sha256}\n",
        time.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
    .into_bytes()
}

impl Checkpoint {
    /// Sign a checkpoint of the log whose last event is `seq` with hash `head_hash`, and check
    /// the signature before returning it.
    pub fn sign(
        signer: &dyn Signer,
        seq: u64,
        head_hash: &str,
        time: DateTime<Utc>,
    ) -> Result<Checkpoint> {
        let time = crate::clock::truncate(time);
        let key_sha256 = signer::sha256_hex(signer.spki_der());
        let msg = checkpoint_message(seq, head_hash, &time, &key_sha256);
        let sig = signer.sign(&msg)?;
        signer::verify_own(signer, &msg, &sig)?;
        Ok(Checkpoint {
            seq,
            head_hash: head_hash.to_string(),
            time,
            key_sha256,
            signature: hex::encode(sig),
        })
    }

    /// Check that `key` signed this checkpoint.
    pub fn verify(&self, key: &AuditKey) -> Result<()> {
        let bad = |reason: String| Error::AuditChain {
            seq: self.seq,
            reason,
        };
        if self.key_sha256 != key.sha256 {
            return Err(bad(format!(
                "the checkpoint of sequence {} signed at {} names key {}, not the audit key {}",
                self.seq, self.time, self.key_sha256, key.sha256
            )));
        }
        let sig = hex::decode(&self.signature).map_err(|_| {
            bad(format!(
                "the checkpoint of sequence {} signed at {} has a malformed signature",
                self.seq, self.time
            ))
        })?;
        let msg = checkpoint_message(self.seq, &self.head_hash, &self.time, &self.key_sha256);
        signer::verify(&key.spki, &msg, &sig).map_err(|_| {
            bad(format!(
                "the signature of the checkpoint of sequence {} signed at {} does not verify with \
                 the audit key {} (forged or edited checkpoint)",
                self.seq, self.time, key.sha256
            ))
        })
    }

    fn describe(&self) -> String {
        format!(
            "checkpoint of sequence {} signed at {}",
            self.seq, self.time
        )
    }
}

/// What [`LogVerifier`] established.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    /// Events checked.
    pub events: u64,
    /// Sequence number of the first event checked (1 for a whole log).
    pub first_seq: u64,
    /// Sequence number of the last event (0 for an empty log).
    pub last_seq: u64,
    /// Hash of the last event.
    pub last_hash: String,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The last checkpoint, if any.
    pub last_checkpoint: Option<Checkpoint>,
    /// Whether checkpoint signatures were checked (an audit key was given).
    pub signatures_checked: bool,
    /// SHA-256 of the audit key the signatures were checked with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_key_sha256: Option<String>,
    /// Events archived and truncated below the log's start (0: the log starts at event 1):
    /// the log was checked from the signed checkpoint in [`AuditReport::start`].
    #[serde(default)]
    pub archived_events: u64,
    /// The signed checkpoint a truncated log starts from (its first event links to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Checkpoint>,
}

impl AuditReport {
    /// Events after the last checkpoint: not yet covered by a signature.
    pub fn unsigned_tail(&self) -> u64 {
        self.last_seq
            - self
                .last_checkpoint
                .as_ref()
                .map(|c| c.seq)
                .unwrap_or(self.first_seq.saturating_sub(1))
    }
}

/// Checks an audit log as a stream of events and checkpoints, in sequence order, holding only
/// the last event's hash (memory does not grow with the log).
///
/// Feed each event with [`LogVerifier::event`], and each checkpoint right after the event at
/// its sequence with [`LogVerifier::checkpoint`] (a checkpoint of the empty log, or the anchor
/// of an export, before the first event); then [`LogVerifier::finish`] with the first
/// checkpoint left over (one beyond the last event: the log lost its tail).
#[derive(Debug)]
pub struct LogVerifier {
    key: Option<AuditKey>,
    seq: u64,
    hash: String,
    report: AuditReport,
}

impl LogVerifier {
    /// Verify a whole log, from the genesis. Without `key`, checkpoints are checked against
    /// the events but their signatures are not.
    pub fn new(key: Option<AuditKey>) -> Self {
        LogVerifier {
            report: AuditReport {
                first_seq: 1,
                last_hash: GENESIS.into(),
                signatures_checked: key.is_some(),
                audit_key_sha256: key.as_ref().map(|k| k.sha256.clone()),
                ..AuditReport::default()
            },
            key,
            seq: 0,
            hash: GENESIS.into(),
        }
    }

    /// Verify a log that continues from a signed checkpoint (an export's anchor): the first
    /// event must be `anchor.seq + 1` and link to `anchor.head_hash`.
    pub fn anchored(anchor: &Checkpoint, key: AuditKey) -> Result<Self> {
        LogVerifier::starting_at(anchor, Some(key))
    }

    /// Verify a log that starts at a signed checkpoint: an export's anchor, or the start of a
    /// store's log after `audit truncate` (events up to `anchor.seq` archived and deleted).
    /// With `key` the anchor's signature is checked first (an anchor not signed by the audit
    /// key is refused); without, only the chain from its hash on is.
    pub fn starting_at(anchor: &Checkpoint, key: Option<AuditKey>) -> Result<Self> {
        if let Some(key) = &key {
            anchor.verify(key)?;
        }
        let mut v = LogVerifier::new(key);
        v.seq = anchor.seq;
        v.hash = anchor.head_hash.clone();
        v.report.first_seq = anchor.seq + 1;
        v.report.last_seq = anchor.seq;
        v.report.last_hash = anchor.head_hash.clone();
        v.report.checkpoints = 1;
        v.report.last_checkpoint = Some(anchor.clone());
        Ok(v)
    }

    /// Sequence number of the last event fed (or of the start).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Check the next event.
    pub fn event(&mut self, ev: &AuditEvent) -> Result<()> {
        let expected = self.seq + 1;
        if ev.seq != expected {
            return Err(Error::AuditChain {
                seq: ev.seq,
                reason: format!("expected sequence {expected} (events missing or reordered)"),
            });
        }
        if ev.prev_hash != self.hash {
            return Err(Error::AuditChain {
                seq: ev.seq,
                reason: "previous-hash link broken".into(),
            });
        }
        let h = event_hash(ev.seq, &ev.time, &ev.event, &ev.prev_hash)?;
        if h != ev.hash {
            return Err(Error::AuditChain {
                seq: ev.seq,
                reason: "event content does not match its hash".into(),
            });
        }
        self.seq = ev.seq;
        self.hash = h;
        self.report.events += 1;
        self.report.last_seq = ev.seq;
        self.report.last_hash = self.hash.clone();
        Ok(())
    }

    /// Check a checkpoint of the event just fed.
    pub fn checkpoint(&mut self, cp: &Checkpoint) -> Result<()> {
        if cp.seq > self.seq {
            return Err(Error::AuditChain {
                seq: self.seq + 1,
                reason: format!(
                    "the {} covers events up to {}, but the log ends at {}: events {}..={} were removed",
                    cp.describe(),
                    cp.seq,
                    self.seq,
                    self.seq + 1,
                    cp.seq
                ),
            });
        }
        if cp.seq < self.seq {
            return Err(Error::AuditChain {
                seq: cp.seq,
                reason: format!(
                    "the {} is out of order (after event {})",
                    cp.describe(),
                    self.seq
                ),
            });
        }
        if let Some(key) = &self.key {
            cp.verify(key)?;
        }
        if cp.head_hash != self.hash {
            return Err(Error::AuditChain {
                seq: cp.seq,
                reason: format!(
                    "the event at the {} has another hash than the one signed: the log was rewritten \
                     (signed {}, found {})",
                    cp.describe(),
                    cp.head_hash,
                    self.hash
                ),
            });
        }
        self.report.checkpoints += 1;
        self.report.last_checkpoint = Some(cp.clone());
        Ok(())
    }

    /// End of the stream. `leftover` is a checkpoint not yet fed (its sequence is beyond the
    /// last event): the log is shorter than its checkpoint, so its tail was deleted.
    pub fn finish(self, leftover: Option<&Checkpoint>) -> Result<AuditReport> {
        if let Some(cp) = leftover {
            return Err(Error::AuditChain {
                seq: self.seq + 1,
                reason: format!(
                    "the log ends at {} but the {} covers events up to {}: the tail of the log \
                     (events {}..={}) was deleted",
                    self.seq,
                    cp.describe(),
                    cp.seq,
                    self.seq + 1,
                    cp.seq
                ),
            });
        }
        Ok(self.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signed bytes are a contract with auditors who write their own verifier
    /// (docs/API.md): a change here breaks every checkpoint already signed.
    #[test]
    fn checkpoint_message_is_stable() {
        let time = DateTime::parse_from_rfc3339("2026-12-04T21:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let msg = checkpoint_message(42, "ab", &time, "cd");
        assert_eq!(
            String::from_utf8(msg).unwrap(),
            "ca-server audit checkpoint v1\nseq=42\nhead=ab\ntime=2026-12-04T21:30:00Z\nkey=cd\n"
        );
    }

    fn event(seq: u64, prev: &str) -> AuditEvent {
        seal(
            seq - 1,
            prev,
            Utc::now(),
            NewAuditEvent::ok("t", "test", seq.to_string()),
        )
        .unwrap()
    }

    #[test]
    fn verifier_checks_checkpoint_hashes_and_leftovers() {
        let e1 = event(1, GENESIS);
        let e2 = event(2, &e1.hash);
        let cp = |seq: u64, head: &str| Checkpoint {
            seq,
            head_hash: head.to_string(),
            time: Utc::now(),
            key_sha256: "k".into(),
            signature: String::new(),
        };
        let mut v = LogVerifier::new(None);
        v.checkpoint(&cp(0, GENESIS)).unwrap();
        v.event(&e1).unwrap();
        v.checkpoint(&cp(1, &e1.hash)).unwrap();
        assert!(
            v.checkpoint(&cp(1, &e2.hash)).is_err(),
            "hash of another event"
        );
        assert!(v.checkpoint(&cp(2, &e2.hash)).is_err(), "beyond the log");
        v.event(&e2).unwrap();
        let left = cp(3, "x");
        let err = v.finish(Some(&left)).unwrap_err().to_string();
        assert!(err.contains("was deleted"), "{err}");
    }
}
