//! Signed checkpoints of the audit log, its export for off-box storage, and the offline check
//! of an export (README "Audit log").
//!
//! - [`Checkpointer`]: signs `(sequence, head hash, time)` with the audit checkpoint key (an
//!   HSM key of its own, never the issuing key) periodically, at shutdown and on demand. It
//!   signs only a log that extends its last checkpoint, so the CA never vouches for a rewritten
//!   history.
//! - [`write_export`]: JSON lines (header, events, checkpoints, end), anchored at a checkpoint
//!   and ending at one.
//! - [`verify_export`]: checks an export with the audit public key alone: no server, no HSM,
//!   no store.

use ca_core::audit::{AuditEvent, AuditKey, AuditReport, Checkpoint, LogVerifier, GENESIS};
use ca_core::clock::Clock;
use ca_core::signer::Signer;
use ca_core::store::AuditLog;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Format name in an export's header line.
pub(crate) const EXPORT_FORMAT: &str = "ca-server-audit-export/1";

/// Signs audit checkpoints.
pub struct Checkpointer {
    signer: Arc<dyn Signer>,
    store: Arc<dyn AuditLog>,
    clock: Arc<dyn Clock>,
    key: AuditKey,
    interval: Duration,
    /// One checkpoint at a time (they are kept in sequence order).
    busy: Mutex<()>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("key", &self.key.sha256())
            .finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// A checkpointer signing with `signer` (the audit checkpoint key) every `interval`
    /// once [`Checkpointer::spawn_periodic`] runs.
    pub fn new(
        signer: Arc<dyn Signer>,
        store: Arc<dyn AuditLog>,
        clock: Arc<dyn Clock>,
        interval: Duration,
    ) -> ca_core::Result<Self> {
        let key = AuditKey::from_spki_der(signer.spki_der())?;
        Ok(Checkpointer {
            signer,
            store,
            clock,
            key,
            interval,
            busy: Mutex::new(()),
        })
    }

    /// The audit public key.
    pub fn key(&self) -> &AuditKey {
        &self.key
    }

    /// Sign a checkpoint of the current head and store it (blocking: HSM and store).
    ///
    /// Unless `force`, nothing is signed when the last checkpoint already covers the head
    /// (`Ok(None)`). Before signing, the events since the last checkpoint are checked to extend
    /// it (its signature, and the chain from its hash to the head; the whole log for the first
    /// checkpoint): a log whose signed part was cut or rewritten is refused with
    /// [`ca_core::Error::AuditChain`], never signed.
    pub fn checkpoint(&self, force: bool) -> ca_core::Result<Option<Checkpoint>> {
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let last = self.store.audit_checkpoint_before(u64::MAX)?;
        let (seq, hash) = match &last {
            // The first checkpoint vouches for the whole log: check it all once, and sign
            // the head that check reached.
            None => {
                let report = self.store.verify_audit_log(Some(&self.key))?;
                (report.last_seq, report.last_hash)
            }
            Some(_) => self.store.audit_head()?.unwrap_or((0, GENESIS.to_string())),
        };
        if let Some(last) = &last {
            if seq < last.seq {
                return Err(ca_core::Error::AuditChain {
                    seq: seq + 1,
                    reason: format!(
                        "the audit head ({seq}) is behind the checkpoint of sequence {} signed at {}: \
                         the tail of the log was deleted",
                        last.seq, last.time
                    ),
                });
            }
            if !force && last.seq == seq && last.head_hash == hash {
                return Ok(None);
            }
            let mut v = LogVerifier::anchored(last, self.key.clone())?;
            for ev in self.store.audit_iter(last.seq + 1) {
                let ev = ev?;
                if ev.seq > seq {
                    break;
                }
                v.event(&ev)?;
            }
            if v.seq() != seq {
                return Err(ca_core::Error::AuditChain {
                    seq: v.seq() + 1,
                    reason: format!(
                        "the head says {seq} but the log after the last checkpoint ends at {}",
                        v.seq()
                    ),
                });
            }
            let report = v.finish(None)?;
            if report.last_hash != hash {
                return Err(ca_core::Error::AuditChain {
                    seq,
                    reason: "the audit head's hash is not the last event's".into(),
                });
            }
        }
        let cp = Checkpoint::sign(self.signer.as_ref(), seq, &hash, self.clock.now())?;
        self.store.put_audit_checkpoint(&cp)?;
        tracing::info!(seq = cp.seq, time = %cp.time, "audit checkpoint signed");
        Ok(Some(cp))
    }

    /// [`Checkpointer::checkpoint`] on the blocking pool.
    pub async fn checkpoint_async(
        self: &Arc<Self>,
        force: bool,
    ) -> ca_core::Result<Option<Checkpoint>> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.checkpoint(force))
            .await
            .map_err(|e| ca_core::Error::Corrupt(format!("checkpoint task failed: {e}")))?
    }

    /// Sign a checkpoint every interval (`[audit] checkpoint_interval`) until `shutdown`
    /// changes; an interval with no new event signs nothing.
    pub fn spawn_periodic(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let interval = self.interval;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.changed() => return,
                }
                if let Err(e) = self.checkpoint_async(false).await {
                    tracing::error!(error = %e, "audit checkpoint refused or failed");
                }
            }
        })
    }
}

/// The first line of an export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportHeader {
    /// [`EXPORT_FORMAT`].
    pub format: String,
    /// When the export was made.
    pub exported_at: DateTime<Utc>,
    /// The `--since` asked for (the export starts after the last checkpoint before it).
    pub since: u64,
    /// SHA-256 of the audit public key (hex) that signed the checkpoints, if one is configured.
    pub audit_key_sha256: Option<String>,
}

/// The last line of an export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportEnd {
    /// Events in the export.
    pub events: u64,
    /// Checkpoints in the export (the anchor included).
    pub checkpoints: u64,
    /// Sequence number of the last event (or of the anchor, without events).
    pub last_seq: u64,
}

/// One line of an export.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "one line at a time; boxing would only add allocations"
)]
pub(crate) enum ExportLine {
    /// First line.
    Header(ExportHeader),
    /// An audit event.
    Event(AuditEvent),
    /// A checkpoint, right after the event at its sequence (the anchor: before every event).
    Checkpoint(Checkpoint),
    /// Last line.
    End(ExportEnd),
}

fn line(l: &ExportLine) -> ca_core::Result<Vec<u8>> {
    let mut v = serde_json::to_vec(l)
        .map_err(|e| ca_core::Error::Corrupt(format!("export line not serialisable: {e}")))?;
    v.push(b'\n');
    Ok(v)
}

/// Write an export of the events from `since` up to `until` (a checkpoint's sequence, so the
/// export ends at a signature; `None`: the head), with the checkpoints among them. The export
/// starts right after the last checkpoint before `since`, which is written first as its anchor
/// (or at event 1 when there is none), so that its first event is anchored by a signature.
/// `out` receives the bytes in chunks (blocking; constant memory).
pub(crate) fn write_export<S: AuditLog + ?Sized>(
    store: &S,
    since: u64,
    until: Option<u64>,
    key: Option<&AuditKey>,
    now: DateTime<Utc>,
    out: &mut dyn FnMut(Vec<u8>) -> ca_core::Result<()>,
) -> ca_core::Result<ExportEnd> {
    const CHUNK: usize = 64 * 1024;
    let until = match until {
        Some(u) => u,
        None => store.audit_head()?.map(|(s, _)| s).unwrap_or(0),
    };
    let anchor = if since > 1 {
        store.audit_checkpoint_before(since.min(until + 1))?
    } else {
        None
    };
    let mut buf = line(&ExportLine::Header(ExportHeader {
        format: EXPORT_FORMAT.into(),
        exported_at: now,
        since,
        audit_key_sha256: key.map(|k| k.sha256().to_string()),
    }))?;
    let mut end = ExportEnd {
        events: 0,
        checkpoints: 0,
        last_seq: 0,
    };
    let (first, cp_from) = match &anchor {
        Some(a) => {
            buf.extend(line(&ExportLine::Checkpoint(a.clone()))?);
            end.checkpoints += 1;
            end.last_seq = a.seq;
            (a.seq + 1, a.seq + 1)
        }
        None => (1, 0),
    };
    let mut checkpoints = store.audit_checkpoints(cp_from).peekable();
    let mut flush_checkpoints =
        |upto: u64, buf: &mut Vec<u8>, end: &mut ExportEnd| -> ca_core::Result<()> {
            while let Some(cp) = checkpoints.next_if(|c| c.as_ref().map_or(true, |c| c.seq <= upto))
            {
                buf.extend(line(&ExportLine::Checkpoint(cp?))?);
                end.checkpoints += 1;
            }
            Ok(())
        };
    if first == 1 {
        flush_checkpoints(0, &mut buf, &mut end)?;
    }
    for ev in store.audit_iter(first) {
        let ev = ev?;
        if ev.seq > until {
            break;
        }
        let seq = ev.seq;
        buf.extend(line(&ExportLine::Event(ev))?);
        end.events += 1;
        end.last_seq = seq;
        flush_checkpoints(seq, &mut buf, &mut end)?;
        if buf.len() >= CHUNK {
            out(std::mem::take(&mut buf))?;
        }
    }
    buf.extend(line(&ExportLine::End(end.clone()))?);
    out(buf)?;
    Ok(end)
}

/// What an export proved.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ExportSummary {
    /// The export's first line: format, time, `--since` and audit key.
    pub header: ExportHeader,
    /// Chain and checkpoints.
    pub report: AuditReport,
}

/// Why an export does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ExportError {
    /// Reading failed.
    #[error("reading the export: {0}")]
    Read(#[from] std::io::Error),
    /// A line is not an export line.
    #[error("line {line}: {message}")]
    Malformed {
        /// Line number (from 1).
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The chain or a checkpoint does not verify.
    #[error("line {line}: {source}")]
    Tampered {
        /// Line number (from 1).
        line: u64,
        /// Why the chain or the checkpoint does not verify.
        #[source]
        source: ca_core::Error,
    },
    /// The export is cut short or ends outside a checkpoint.
    #[error("{0}")]
    Incomplete(String),
}

/// Verify an export with the audit public key alone: the header names this key; the first
/// event is anchored (event 1, or the signed checkpoint before it); every event links to the
/// one before; every checkpoint's signature verifies and its hash is the event's at its
/// sequence; the end line matches; and the export ends at its last checkpoint (events after
/// it would not be covered by any signature: `ca-server audit export` always ends at one).
pub(crate) fn verify_export(
    input: impl BufRead,
    key: &AuditKey,
) -> Result<ExportSummary, ExportError> {
    let mut header: Option<ExportHeader> = None;
    let mut v: Option<LogVerifier> = None;
    let mut end: Option<ExportEnd> = None;
    let mut checkpoints = 0u64;
    let mut n = 0u64;
    for l in input.lines() {
        let l = l?;
        n += 1;
        let malformed = |message: String| ExportError::Malformed { line: n, message };
        let tampered = |source| ExportError::Tampered { line: n, source };
        if end.is_some() {
            return Err(malformed("lines after the end line".into()));
        }
        let parsed: ExportLine =
            serde_json::from_str(&l).map_err(|e| malformed(format!("not an export line: {e}")))?;
        match (parsed, &header) {
            (ExportLine::Header(h), None) => {
                if h.format != EXPORT_FORMAT {
                    return Err(malformed(format!(
                        "format {:?}, expected {EXPORT_FORMAT:?}",
                        h.format
                    )));
                }
                match &h.audit_key_sha256 {
                    Some(k) if k == key.sha256() => {}
                    Some(k) => {
                        return Err(malformed(format!(
                            "the export's checkpoints are signed by key {k}, not by the audit public key given ({})",
                            key.sha256()
                        )))
                    }
                    None => {
                        return Err(malformed(
                            "the export has no audit key: the server had no [audit] key, so nothing in it is signed"
                                .into(),
                        ))
                    }
                }
                header = Some(h);
            }
            (_, None) => return Err(malformed("the first line must be the header".into())),
            (ExportLine::Header(_), Some(_)) => {
                return Err(malformed("a second header line".into()))
            }
            (ExportLine::Checkpoint(cp), Some(_)) => {
                checkpoints += 1;
                match &mut v {
                    Some(v) => v.checkpoint(&cp).map_err(tampered)?,
                    None if cp.seq == 0 => {
                        let mut fresh = LogVerifier::new(Some(key.clone()));
                        fresh.checkpoint(&cp).map_err(tampered)?;
                        v = Some(fresh);
                    }
                    None => v = Some(LogVerifier::anchored(&cp, key.clone()).map_err(tampered)?),
                }
            }
            (ExportLine::Event(ev), Some(_)) => {
                let verifier = v.get_or_insert_with(|| LogVerifier::new(Some(key.clone())));
                verifier.event(&ev).map_err(tampered)?;
            }
            (ExportLine::End(e), Some(_)) => end = Some(e),
        }
    }
    let header = header.ok_or_else(|| ExportError::Incomplete("the export is empty".into()))?;
    let end = end.ok_or_else(|| {
        ExportError::Incomplete(format!(
            "the export stops at line {n} without its end line: it was cut short (truncated)"
        ))
    })?;
    let report = match v {
        Some(v) => v
            .finish(None)
            .map_err(|source| ExportError::Tampered { line: n, source })?,
        None => LogVerifier::new(Some(key.clone()))
            .finish(None)
            .map_err(|source| ExportError::Tampered { line: n, source })?,
    };
    if end.events != report.events
        || end.checkpoints != checkpoints
        || end.last_seq != report.last_seq
    {
        return Err(ExportError::Incomplete(format!(
            "the end line says {} events, {} checkpoints, last sequence {}; the export holds {} events, {checkpoints} checkpoints, last sequence {}: lines were removed",
            end.events, end.checkpoints, end.last_seq, report.events, report.last_seq
        )));
    }
    match &report.last_checkpoint {
        None => {
            return Err(ExportError::Incomplete(
                "the export holds no checkpoint: nothing in it is signed".into(),
            ))
        }
        Some(cp) if cp.seq != report.last_seq => {
            return Err(ExportError::Incomplete(format!(
                "the export ends at sequence {} but its last checkpoint covers only up to {}: {} events at its end are not covered by any signature (edited or appended?)",
                report.last_seq,
                cp.seq,
                report.last_seq - cp.seq
            )))
        }
        Some(_) => {}
    }
    Ok(ExportSummary { header, report })
}
