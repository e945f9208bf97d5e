//! Hash-chained audit events (DESIGN invariant 4).
//!
//! Each event carries the hash of the previous one; its own hash is SHA-256 over the previous
//! hash and the canonical JSON of its fields. Changing, removing or reordering any event breaks
//! the chain, which [`verify_chain`] detects.

use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
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
    let mut prev_hash = GENESIS.to_string();
    let mut expected_seq = 1;
    for ev in events {
        if ev.seq != expected_seq {
            return Err(Error::AuditChain {
                seq: ev.seq,
                reason: format!("expected sequence {expected_seq}"),
            });
        }
        if ev.prev_hash != prev_hash {
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
        prev_hash = ev.hash;
        expected_seq += 1;
    }
    Ok(expected_seq - 1)
}
