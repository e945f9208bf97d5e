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
//! - [`archive`] and [`truncate`] (`ca-server audit archive` / `audit truncate`): an export
//!   of the log up to a signed checkpoint written durably to a file, and the deletion of the
//!   events it holds from the store once that file verifies, leaving the log anchored at the
//!   checkpoint.

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
    // After `audit truncate` the log starts at a signed checkpoint: an export reaching back
    // to it (or beyond) is anchored there.
    let start = store.audit_start()?;
    let anchor = match start {
        Some(s) if since <= s.seq + 1 => Some(s),
        Some(s) => match store.audit_checkpoint_before(since.min(until + 1))? {
            Some(cp) if cp.seq >= s.seq => Some(cp),
            _ => Some(s),
        },
        None if since > 1 => store.audit_checkpoint_before(since.min(until + 1))?,
        None => None,
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

// ---- Archive and truncation (`ca-server audit archive`, `audit truncate`) ----

/// Why an archive or a truncation did not happen. Each has a stable [`ArchiveError::code`];
/// whatever the error, the store was not changed (a truncation interrupted after its start
/// was recorded is the exception: run it again to finish it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ArchiveError {
    /// No audit public key: nothing could be checked.
    #[error(
        "no audit public key: set [audit] key (the server writes [audit] public_key) or pass \
         --public-key"
    )]
    NoAuditKey,
    /// `--out` exists: an archive never overwrites a file.
    #[error("{0} exists: an archive is never written over a file; choose a new name")]
    OutExists(std::path::PathBuf),
    /// The log has no signed checkpoint to end the archive at.
    #[error(
        "the audit log has no signed checkpoint: sign one first (`ca-server audit checkpoint`, \
         or wait for the periodic one), then archive"
    )]
    NoCheckpoint,
    /// `--through-checkpoint` / `--below-checkpoint` names no stored checkpoint.
    #[error(
        "no signed checkpoint at sequence {0} in the store: list them in an archive of the \
         log, or omit --through-checkpoint for the latest"
    )]
    CheckpointNotFound(u64),
    /// The checkpoint is at or below the log's start: its events were archived already.
    #[error(
        "the log already starts after sequence {start}: the checkpoint of sequence {seq} was \
         archived and truncated before"
    )]
    AlreadyArchived {
        /// The checkpoint asked for.
        seq: u64,
        /// The log's start.
        start: u64,
    },
    /// The archive file is missing or unreadable.
    #[error("the archive {path} cannot be read: {source}")]
    ArchiveMissing {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The archive does not verify (tampered, cut short, another key).
    #[error("the archive {path} does not verify: {source}")]
    ArchiveInvalid {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: ExportError,
    },
    /// The archive does not hold the checkpoint of `--below-checkpoint`.
    #[error(
        "the archive holds no checkpoint of sequence {seq} (its checkpoints cover sequences \
         {first}..={last}): archive through that checkpoint first"
    )]
    CheckpointNotInArchive {
        /// The checkpoint asked for.
        seq: u64,
        /// First event of the archive.
        first: u64,
        /// Last event of the archive.
        last: u64,
    },
    /// The archive starts after the log's start: the events in between would be lost.
    #[error(
        "the archive starts at event {archive_first} but the store's log starts at {store_first}: \
         events {store_first}..{archive_first} are in no archive; archive them first"
    )]
    ArchiveGap {
        /// First event of the archive.
        archive_first: u64,
        /// First event of the store's log.
        store_first: u64,
    },
    /// The store's log is not the one the archive holds (or the start would move back).
    #[error("the store does not match the archive: {0}")]
    StoreMismatch(#[source] ca_core::Error),
    /// Reading or writing the store failed.
    #[error("the store: {0}")]
    Store(#[source] ca_core::Error),
    /// Writing the archive file failed (nothing was left at --out).
    #[error("writing the archive {path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ArchiveError {
    /// The stable, machine-readable code of this error (scripts match on it).
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ArchiveError::NoAuditKey => "no_audit_key",
            ArchiveError::OutExists(_) => "out_exists",
            ArchiveError::NoCheckpoint => "no_checkpoint",
            ArchiveError::CheckpointNotFound(_) => "checkpoint_not_found",
            ArchiveError::AlreadyArchived { .. } => "already_archived",
            ArchiveError::ArchiveMissing { .. } => "archive_missing",
            ArchiveError::ArchiveInvalid { .. } => "archive_invalid",
            ArchiveError::CheckpointNotInArchive { .. } => "checkpoint_not_in_archive",
            ArchiveError::ArchiveGap { .. } => "archive_gap",
            ArchiveError::StoreMismatch(_) => "store_mismatch",
            ArchiveError::Store(_) => "store",
            ArchiveError::Write { .. } => "write_failed",
        }
    }
}

/// What `audit archive` wrote.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ArchiveSummary {
    /// The archive file.
    pub out: std::path::PathBuf,
    /// First event archived.
    pub first_seq: u64,
    /// Events archived.
    pub events: u64,
    /// Checkpoints in the archive (its anchor included).
    pub checkpoints: u64,
    /// The checkpoint the archive ends at: `audit truncate --below-checkpoint` takes its
    /// sequence.
    pub through: Checkpoint,
    /// Bytes written.
    pub bytes: u64,
    /// SHA-256 of the file (hex).
    pub sha256: String,
}

/// Write an archive of the store's log, from its start through the signed checkpoint of
/// sequence `through` (`None`: the latest), to `out`: into a temporary file beside it, synced,
/// verified with `key`, then renamed to `out` (and the directory synced). Constant memory.
pub(crate) fn archive<S: AuditLog + ?Sized>(
    store: &S,
    through: Option<u64>,
    key: &AuditKey,
    now: DateTime<Utc>,
    out: &std::path::Path,
) -> Result<ArchiveSummary, ArchiveError> {
    use sha2::Digest;
    use std::io::Write;
    if out.exists() {
        return Err(ArchiveError::OutExists(out.to_path_buf()));
    }
    let cp = match through {
        Some(n) => store
            .audit_checkpoint_before(n.saturating_add(1))
            .map_err(ArchiveError::Store)?
            .filter(|c| c.seq == n)
            .ok_or(ArchiveError::CheckpointNotFound(n))?,
        None => store
            .audit_checkpoint_before(u64::MAX)
            .map_err(ArchiveError::Store)?
            .ok_or(ArchiveError::NoCheckpoint)?,
    };
    let start = store.audit_start().map_err(ArchiveError::Store)?;
    let first = start.as_ref().map_or(1, |s| s.seq + 1);
    if let Some(s) = &start {
        if cp.seq <= s.seq {
            return Err(ArchiveError::AlreadyArchived {
                seq: cp.seq,
                start: s.seq,
            });
        }
    }
    let write_err = |source| ArchiveError::Write {
        path: out.to_path_buf(),
        source,
    };
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit-archive".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // Removed on every error path; never a file of someone else (created here, new).
    struct Tmp(std::path::PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(write_err)?;
    let tmp = Tmp(tmp);
    let mut w = std::io::BufWriter::new(&file);
    let mut hash = sha2::Sha256::new();
    let mut bytes = 0u64;
    let end = write_export(store, first, Some(cp.seq), Some(key), now, &mut |chunk| {
        hash.update(&chunk);
        bytes += chunk.len() as u64;
        w.write_all(&chunk)
            .map_err(|e| ca_core::Error::Corrupt(format!("writing the archive: {e}")))
    })
    .map_err(|e| match e {
        e @ ca_core::Error::AuditChain { .. } => ArchiveError::StoreMismatch(e),
        e => ArchiveError::Store(e),
    })?;
    w.flush().map_err(write_err)?;
    drop(w);
    file.sync_all().map_err(write_err)?;
    drop(file);
    // What was written must verify before it is given the final name.
    let reader = std::io::BufReader::new(std::fs::File::open(&tmp.0).map_err(write_err)?);
    let summary = verify_export(reader, key).map_err(|source| ArchiveError::ArchiveInvalid {
        path: tmp.0.clone(),
        source,
    })?;
    if summary.report.last_seq != cp.seq {
        return Err(ArchiveError::StoreMismatch(ca_core::Error::AuditChain {
            seq: cp.seq,
            reason: format!(
                "the archive ends at {} instead of the checkpoint's sequence",
                summary.report.last_seq
            ),
        }));
    }
    // A hard link never replaces an existing file (no-clobber rename); the temporary name
    // is removed when `tmp` drops.
    std::fs::hard_link(&tmp.0, out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => ArchiveError::OutExists(out.to_path_buf()),
        _ => write_err(e),
    })?;
    drop(tmp);
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err)?;
    Ok(ArchiveSummary {
        out: out.to_path_buf(),
        first_seq: summary.report.first_seq,
        events: end.events,
        checkpoints: end.checkpoints,
        through: cp,
        bytes,
        sha256: hex::encode(hash.finalize()),
    })
}

/// Verify an archive file with `key` ([`verify_export`]).
pub(crate) fn verify_archive(
    path: &std::path::Path,
    key: &AuditKey,
) -> Result<ExportSummary, ArchiveError> {
    let f = std::fs::File::open(path).map_err(|source| ArchiveError::ArchiveMissing {
        path: path.to_path_buf(),
        source,
    })?;
    verify_export(std::io::BufReader::new(f), key).map_err(|source| ArchiveError::ArchiveInvalid {
        path: path.to_path_buf(),
        source,
    })
}

/// The archive's first checkpoint of sequence `seq` and the file's SHA-256 (hex), read in one
/// streaming pass (after [`verify_archive`]).
fn archive_checkpoint(
    path: &std::path::Path,
    seq: u64,
) -> Result<(Option<Checkpoint>, String), ArchiveError> {
    use sha2::Digest;
    let missing = |source| ArchiveError::ArchiveMissing {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(missing)?;
    let mut hash = sha2::Sha256::new();
    let mut found = None;
    let mut r = std::io::BufReader::new(f);
    let mut l = String::new();
    loop {
        l.clear();
        if r.read_line(&mut l).map_err(missing)? == 0 {
            break;
        }
        hash.update(l.as_bytes());
        if found.is_none() && l.contains("\"checkpoint\"") {
            if let Ok(ExportLine::Checkpoint(cp)) = serde_json::from_str::<ExportLine>(&l) {
                if cp.seq == seq {
                    found = Some(cp);
                }
            }
        }
    }
    Ok((found, hex::encode(hash.finalize())))
}

/// What `audit truncate` did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TruncateSummary {
    /// The checkpoint the log now starts from.
    pub start: Checkpoint,
    /// Events archived below it (its sequence).
    pub archived_events: u64,
    /// Records (events and checkpoints) deleted by this run.
    pub deleted: u64,
    /// Whether this run finished a truncation begun before (the start was already there).
    pub resumed: bool,
    /// SHA-256 of the archive file (hex).
    pub archive_sha256: String,
}

/// Truncate the store's log below the signed checkpoint of sequence `below` after checking
/// `archive_path` with `key`: it verifies, holds that checkpoint, and reaches back to the
/// log's start; the store's event at `below` has the checkpoint's hash. Then the start is
/// recorded (durable), the truncation audited (`audit.truncate`, by `actor`), and the events
/// at or below `below` deleted in batches of `batch`, each durable (run again to resume).
pub(crate) fn truncate<S: AuditLog + ?Sized>(
    store: &S,
    below: u64,
    archive_path: &std::path::Path,
    key: &AuditKey,
    actor: &str,
    batch: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<TruncateSummary, ArchiveError> {
    let summary = verify_archive(archive_path, key)?;
    let (cp, sha256) = archive_checkpoint(archive_path, below)?;
    // A checkpoint of the empty log (sequence 0) starts nothing.
    let cp = cp
        .filter(|c| c.seq > 0)
        .ok_or(ArchiveError::CheckpointNotInArchive {
            seq: below,
            first: summary.report.first_seq,
            last: summary.report.last_seq,
        })?;
    let start = store.audit_start().map_err(ArchiveError::Store)?;
    let resumed = start.as_ref() == Some(&cp);
    if !resumed {
        let store_first = start.as_ref().map_or(1, |s| s.seq + 1);
        if let Some(s) = &start {
            if cp.seq <= s.seq {
                return Err(ArchiveError::AlreadyArchived {
                    seq: cp.seq,
                    start: s.seq,
                });
            }
        }
        if summary.report.first_seq > store_first {
            return Err(ArchiveError::ArchiveGap {
                archive_first: summary.report.first_seq,
                store_first,
            });
        }
        store.set_audit_start(&cp).map_err(|e| match e {
            e @ ca_core::Error::AuditChain { .. } => ArchiveError::StoreMismatch(e),
            e => ArchiveError::Store(e),
        })?;
    }
    store
        .append_audit(
            ca_core::audit::NewAuditEvent::ok(actor, "audit.truncate", cp.seq.to_string())
                .with_detail(serde_json::json!({
                    "below_checkpoint": cp.seq,
                    "head_hash": cp.head_hash,
                    "checkpoint_time": cp.time,
                    "archive_sha256": sha256,
                    "archive_first_seq": summary.report.first_seq,
                    "resumed": resumed,
                })),
        )
        .map_err(ArchiveError::Store)?;
    let mut deleted = 0u64;
    loop {
        let n = store
            .delete_audit_below_start(batch.max(1))
            .map_err(ArchiveError::Store)?;
        if n == 0 {
            break;
        }
        deleted += n as u64;
        progress(deleted);
    }
    Ok(TruncateSummary {
        archived_events: cp.seq,
        start: cp,
        deleted,
        resumed,
        archive_sha256: sha256,
    })
}
