//! The sled implementation of the store traits ([`super::Store`]). The only module that names sled.
//!
//! sled 0.34 makes writes durable only on `flush()`; every write here ends with a group
//! commit: concurrent writers share one flush (one leader flushes everything written before
//! it started, the others wait for it), so durability costs one fsync per batch, not per write.
//! (The vendored sled ends each log write with `fdatasync`, not `sync_file_range`: see
//! `vendor/README.md`.)
//! Inside [`super::deferred`] a thread's writes skip their own flush and share one at the end.
//!
//! The hot paths (certificate insert, audit append, token use, OCSP response) use single-key
//! operations, not sled transactions: in sled 0.34 every transaction or batch seals the log
//! buffer twice (two extra log writes and syncs on its thread pool), which
//! cost more than the rest of an insert. Atomicity comes from write order instead: sled
//! recovers a prefix of its log, so the write that makes a record visible is the last one
//! (see [`SledStore::insert_cert`] and [`SledStore::append_audit`]).

use super::codec;
use super::feed::{Change, Hub, Subscription};
use super::{
    AuditLog, CertCount, CertCounts, CertCutoff, CertFilter, CertRecord, CertStore, ChangeFeed,
    CrlArchive, CrlNumbers, DueVisitor, Durability, Leases, LineageLock, OcspResponseStore,
    PrunedCerts, Retention, StoredCrl, StoredOcspResponse, TokenRecord, TokenStore,
};
use crate::audit::{self, AuditEvent, Checkpoint, NewAuditEvent};
use crate::error::{Error, Result};
use crate::revocation::{RevocationReason, RevokedEntry};
use chrono::{DateTime, Utc};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Condvar, Mutex};

const META_CRL_NUMBER: &[u8] = b"crl_number";
const META_AUDIT_HEAD: &[u8] = b"audit_head";
/// Written (and flushed) by [`Durability::check_writable`]: the readiness write probe.
const META_HEARTBEAT: &[u8] = b"heartbeat";
/// The file [`Durability::recovery`] writes and syncs in the store's directory to see whether
/// a fault (a full disk) is gone; removed right after.
const WRITE_PROBE_FILE: &str = ".ca-write-probe";
/// Size of that file: two of sled's log segments (512 KiB each), what a restarted store
/// needs to write first.
const WRITE_PROBE_BYTES: usize = 1024 * 1024;

/// Whether `e` is a sled error that leaves the store unable to write for now (an I/O error:
/// a full disk, a failing device). [`super::is_unavailable`] asks.
pub(super) fn is_unavailable(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(e.downcast_ref::<sled::Error>(), Some(sled::Error::Io(_)))
}

#[derive(Default)]
struct CommitState {
    requested: u64,
    done: u64,
    flushing: bool,
}

/// Certificates, tokens, revocations and the audit log in a sled database on disk.
pub struct SledStore {
    db: sled::Db,
    certs: sled::Tree,
    by_identity: sled::Tree,
    by_expiry: sled::Tree,
    revoked: sled::Tree,
    tokens: sled::Tree,
    audit: sled::Tree,
    /// Signed audit checkpoints: `seq(u64 BE) time(u64 BE, Unix seconds)` -> [`Checkpoint`].
    audit_checkpoints: sled::Tree,
    meta: sled::Tree,
    ocsp: sled::Tree,
    /// Group responses kept once for all their members, by the group's first serial; the
    /// members' records in `ocsp` link here (`codec::OcspRecord::Link`).
    ocsp_groups: sled::Tree,
    /// Lineage index: `len(lineage) lineage generation(u32 BE) serial` -> empty.
    by_lineage: sled::Tree,
    /// Locked lineages: lineage -> [`LineageLock`] (JSON).
    lineage_locks: sled::Tree,
    /// The latest CRL per scope: scope -> `number(u64 BE) this_update(i64 BE, s)
    /// next_update(i64 BE, s) der`.
    crls: sled::Tree,
    /// Revocations by CRL shard: `shard(u64 BE) serial` -> empty (the entry is `revoked`'s).
    revoked_by_shard: sled::Tree,
    /// Leases: the store is one process (sled locks the database), so they live in memory.
    leases: Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// Subscriptions to the change feed (this process is the only writer).
    feed: Hub,
    /// Serialises renewal inserts and lineage locks, so the newest-generation check and the
    /// insert are one step (the store is one process: sled locks the database).
    lineage_guard: Mutex<()>,
    /// Serialises audit appends; holds the chain head `(seq, hash)` once read (the store is
    /// the only writer of the audit trees: sled locks the database to one process).
    audit_head: Mutex<Option<(u64, String)>>,
    commit: Mutex<CommitState>,
    committed: Condvar,
    id: u64,
    /// The directory the database is in (the write probe of [`Durability::recovery`]).
    dir: std::path::PathBuf,
    /// The first I/O error of sled's log, once seen. sled 0.34 keeps it (its "global
    /// error") and refuses every later write of this handle, even after the cause is gone:
    /// only opening the database again recovers ([`Durability::recovery`]).
    fault: Mutex<Option<String>>,
    /// The certificate counters ([`CertCounts`], see [`Counters`]).
    counters: Counters,
    /// Writes sled's page-table snapshot while the store runs (see [`Checkpointer`]).
    _checkpointer: Checkpointer,
}

/// How often the checkpointer looks at how far the log has moved.
const CHECKPOINT_POLL: std::time::Duration = std::time::Duration::from_secs(5);
/// Log bytes written since the last checkpoint that make the next one due at once.
const CHECKPOINT_BYTES: i64 = 64 * 1024 * 1024;
/// The longest a smaller amount of new log waits for its checkpoint.
const CHECKPOINT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Bounds the time to open the store. sled 0.34 writes its page-table snapshot only while
/// opening, so an open replays every log write since the previous open: 5.3 s at a million
/// certificates grown since the last start (`BENCHMARKS.md`), and more the longer a node ran.
/// This thread writes the snapshot while the store runs (`sled::Db::checkpoint`, vendored
/// change 5), once 64 MiB of log or a minute of writes has piled up, and once more when the
/// store closes: an open then replays at most that much log, whatever the store holds.
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(db: sled::Db) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sled-checkpoint".into())
            .spawn(move || {
                let (mut last_offset, mut last_at) =
                    (db.stable_log_offset(), std::time::Instant::now());
                loop {
                    let closing = !matches!(
                        stopped.recv_timeout(CHECKPOINT_POLL),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    );
                    let offset = db.stable_log_offset();
                    let grown = offset - last_offset;
                    if grown > 0
                        && (closing
                            || grown >= CHECKPOINT_BYTES
                            || last_at.elapsed() >= CHECKPOINT_MAX_AGE)
                    {
                        match db.checkpoint() {
                            Ok(_) => (last_offset, last_at) = (offset, std::time::Instant::now()),
                            // The next poll tries again; opening replays more log meanwhile.
                            Err(e) => tracing::warn!(error = %e, "store checkpoint failed"),
                        }
                    }
                    if closing {
                        break;
                    }
                }
            })
            .ok();
        Checkpointer {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Corrupt(format!("cannot encode record: {e}")))
}

fn dec<T: serde::de::DeserializeOwned>(what: &str, b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| Error::Corrupt(format!("{what} record: {e}")))
}

fn identity_key(identity: &str, serial: &[u8]) -> Vec<u8> {
    let mut k = identity.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(serial);
    k
}

fn expiry_key(not_after: DateTime<Utc>, serial: &[u8]) -> Vec<u8> {
    let mut k = (not_after.timestamp().max(0) as u64).to_be_bytes().to_vec();
    k.extend_from_slice(serial);
    k
}

fn lineage_prefix(lineage: &[u8]) -> Vec<u8> {
    // Serials and lineages are at most 20 bytes (RFC 5280 4.1.2.2); the length byte keeps one
    // lineage's prefix from being another's.
    let mut k = Vec::with_capacity(1 + lineage.len() + 4 + 20);
    k.push(lineage.len().min(255) as u8);
    k.extend_from_slice(lineage);
    k
}

fn lineage_key(rec: &CertRecord) -> Vec<u8> {
    let mut k = lineage_prefix(&rec.lineage);
    k.extend_from_slice(&rec.generation.to_be_bytes());
    k.extend_from_slice(&rec.serial);
    k
}

fn tx_err(op: &'static str, e: TransactionError<Error>) -> Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => Error::store(op, e),
    }
}

/// Bytes of sled's page cache (sled's own default is 1 GiB). Pages read by a scan (the audit
/// verification, the OCSP warm-up) stay cached up to this size: it bounds how much memory a
/// scan of a large store leaves behind.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl SledStore {
    /// Open (or create) the database in `dir`, with a page cache of
    /// [`DEFAULT_CACHE_BYTES`].
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Write sled's page-table snapshot now, so that the next open replays only the log
    /// written after this call (the store also does it by itself: [`Checkpointer`]). Safe
    /// while other threads write.
    pub fn checkpoint(&self) -> Result<()> {
        self.db
            .checkpoint()
            .map(drop)
            .map_err(|e| Error::store("checkpoint", e))
    }

    /// [`SledStore::open`] with a page cache of `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self> {
        // sled releases its file lock from a background thread shortly after the previous
        // handle is dropped (e.g. a restart in the same process): retry briefly on that only.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match sled::Config::new()
                .path(dir)
                .cache_capacity(cache_bytes)
                .open()
            {
                Ok(db) => break db,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(Error::store("open", e)),
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(|e| Error::store("open tree", e));
        let counters = Counters {
            tree: tree("cert_counts")?,
            stripes: std::array::from_fn(|_| Mutex::new(())),
            since_fold: std::sync::atomic::AtomicUsize::new(0),
        };
        let checkpointer = Checkpointer::start(db.clone());
        let store = SledStore {
            certs: tree("certs")?,
            by_identity: tree("by_identity")?,
            by_expiry: tree("by_expiry")?,
            revoked: tree("revoked")?,
            tokens: tree("tokens")?,
            audit: tree("audit")?,
            audit_checkpoints: tree("audit_checkpoints")?,
            meta: tree("meta")?,
            ocsp: tree("ocsp")?,
            ocsp_groups: tree("ocsp_groups")?,
            by_lineage: tree("by_lineage")?,
            lineage_locks: tree("lineage_locks")?,
            crls: tree("crls")?,
            revoked_by_shard: tree("revoked_by_shard")?,
            leases: Mutex::new(HashMap::new()),
            feed: Hub::default(),
            lineage_guard: Mutex::new(()),
            db,
            audit_head: Mutex::new(None),
            commit: Mutex::new(CommitState::default()),
            committed: Condvar::new(),
            id: super::deferral::store_id(),
            dir: dir.to_path_buf(),
            fault: Mutex::new(None),
            counters,
            _checkpointer: checkpointer,
        };
        store.complete_audit_head()?;
        store.open_counters()?;
        Ok(store)
    }

    /// An audit append writes the event, then the head (no transaction). A crash between the
    /// two leaves the head one event behind the last event; move it forward (only by that one
    /// event, and only if the event links to the head). Anything else is left for
    /// [`AuditLog::verify_audit`] to report.
    fn complete_audit_head(&self) -> Result<()> {
        let Some((_, last)) = self
            .audit
            .last()
            .map_err(|e| Error::store("audit tail", e))?
        else {
            return Ok(());
        };
        let last: AuditEvent = dec("audit", &last)?;
        let head = match self
            .meta
            .get(META_AUDIT_HEAD)
            .map_err(|e| Error::store("audit head", e))?
        {
            Some(v) => dec::<(u64, String)>("audit head", &v)?,
            None => (0, audit::GENESIS.to_string()),
        };
        if last.seq == head.0 + 1 && last.prev_hash == head.1 {
            tracing::info!(
                seq = last.seq,
                "audit head completed after an interrupted append"
            );
            self.meta
                .insert(META_AUDIT_HEAD, enc(&(last.seq, last.hash))?)
                .map_err(|e| Error::store("audit head", e))?;
            self.flush_group()?;
        }
        Ok(())
    }

    /// Make every write completed before this call durable (group commit), or, inside a
    /// deferral on this thread, note that the deferral's end must flush.
    fn durable(&self) -> Result<()> {
        let deferred = super::deferral::note_write(self.id);
        if deferred {
            return Ok(());
        }
        self.flush_group()
    }

    /// Group commit: one leader flushes everything written before it started; writers that
    /// arrive meanwhile wait for the next flush.
    fn flush_group(&self) -> Result<()> {
        let lock = || self.commit.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = lock();
        st.requested += 1;
        let mine = st.requested;
        loop {
            if st.done >= mine {
                return Ok(());
            }
            if st.flushing {
                st = self.committed.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.flushing = true;
            let target = st.requested;
            drop(st);
            let r = self.db.flush();
            st = lock();
            st.flushing = false;
            if r.is_ok() {
                st.done = st.done.max(target);
            }
            self.committed.notify_all();
            r.map_err(|e| self.note_fault(Error::store("flush", e)))?;
        }
    }

    /// Remember the first I/O error (sled keeps it and refuses every later write), and
    /// return `e`.
    fn note_fault(&self, e: Error) -> Error {
        if e.is_store_unavailable() {
            let mut fault = self.fault.lock().unwrap_or_else(|p| p.into_inner());
            if fault.is_none() {
                tracing::error!(
                    error = %e,
                    dir = %self.dir.display(),
                    "the sled store had an I/O error: it refuses every write until the \
                     process restarts (README \"Store faults\")"
                );
                *fault = Some(e.to_string());
            }
        }
        e
    }

    /// Write and sync [`WRITE_PROBE_FILE`] next to the database, then remove it.
    fn probe_directory(&self) -> std::io::Result<()> {
        use std::io::Write;
        let path = self.dir.join(WRITE_PROBE_FILE);
        let r = (|| {
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&vec![0u8; WRITE_PROBE_BYTES])?;
            f.sync_all()
        })();
        let _ = std::fs::remove_file(&path);
        r
    }

    fn decode_cert(&self, v: &[u8]) -> Result<CertRecord> {
        codec::decode_cert(v)
    }
}

impl CertStore for SledStore {
    /// Index entries first, the record last: its compare-and-swap is both the uniqueness check
    /// and the commit point. sled recovers a prefix of its log, so a record is never without
    /// its index entries; an index entry without its record (a crash in between, or a lost
    /// race on the serial) is skipped by every lookup.
    fn insert_cert(&self, rec: &CertRecord) -> Result<bool> {
        let value = codec::encode_cert(rec)?;
        // Its counter's marker before anything else (see `Counters`); a serial already stored
        // is refused here, before anything is written.
        let Some(marker) = self.mark_uncounted(&rec.serial)? else {
            return Ok(false);
        };
        let ik = identity_key(&rec.identity, &rec.serial);
        let ek = expiry_key(rec.not_after, &rec.serial);
        let err = |e| Error::store("insert certificate", e);
        let new_ik = self
            .by_identity
            .insert(ik.as_slice(), &[])
            .map_err(err)?
            .is_none();
        let new_ek = self
            .by_expiry
            .insert(ek.as_slice(), &[])
            .map_err(err)?
            .is_none();
        let lk = lineage_key(rec);
        let new_lk = self
            .by_lineage
            .insert(lk.as_slice(), &[])
            .map_err(err)?
            .is_none();
        let swapped = self
            .certs
            .compare_and_swap(rec.serial.as_slice(), None as Option<&[u8]>, Some(value))
            .map_err(err)?;
        match swapped {
            Ok(()) => {
                drop(marker);
                self.fold_counts_now_and_then()?;
                self.durable()?;
                Ok(true)
            }
            Err(taken) => {
                // The serial belongs to another record: withdraw the entries this call added,
                // unless that record has the very same ones.
                let other = taken.current.map(|v| self.decode_cert(&v)).transpose()?;
                let (other_ik, other_ek, other_lk) = match other {
                    Some(o) => (
                        Some(identity_key(&o.identity, &o.serial)),
                        Some(expiry_key(o.not_after, &o.serial)),
                        Some(lineage_key(&o)),
                    ),
                    None => (None, None, None),
                };
                if new_ik && other_ik.as_ref() != Some(&ik) {
                    self.by_identity.remove(ik.as_slice()).map_err(err)?;
                }
                if new_ek && other_ek.as_ref() != Some(&ek) {
                    self.by_expiry.remove(ek.as_slice()).map_err(err)?;
                }
                if new_lk && other_lk.as_ref() != Some(&lk) {
                    self.by_lineage.remove(lk.as_slice()).map_err(err)?;
                }
                marker.withdraw(self)?;
                Ok(false)
            }
        }
    }

    fn insert_renewal(&self, rec: &CertRecord, previous: &CertRecord) -> Result<bool> {
        let _guard = self.lineage_guard.lock().unwrap_or_else(|p| p.into_inner());
        let lineage = hex::encode(&rec.lineage);
        if let Some(lock) = self.lineage_lock(&rec.lineage)? {
            return Err(Error::LineageLocked {
                lineage,
                reason: lock.reason,
            });
        }
        // The newest stored generation; none for a lineage whose only certificate predates
        // lineages (it then renews as generation 1).
        let newest = self
            .lineage_newest(&rec.lineage)?
            .map(|c| (c.serial, c.generation));
        let newest_is_previous = match &newest {
            Some((serial, _)) => *serial == previous.serial,
            None => previous.generation == 1,
        };
        if !newest_is_previous || rec.generation != previous.generation.saturating_add(1) {
            return Err(Error::GenerationSuperseded {
                serial: previous.serial_hex(),
                lineage,
                generation: previous.generation,
                newest: newest.map_or(previous.generation, |(_, g)| g),
            });
        }
        self.insert_cert(rec)
    }

    fn lineage_certs(&self, lineage: &[u8]) -> Result<Vec<CertRecord>> {
        let prefix = lineage_prefix(lineage);
        let mut out = Vec::new();
        for kv in self.by_lineage.scan_prefix(&prefix) {
            let (k, _) = kv.map_err(|e| Error::store("scan lineage index", e))?;
            let Some(serial) = k.get(prefix.len() + 4..) else {
                continue;
            };
            // An index entry without its record (a crash, or a lost race on the serial) is
            // skipped, as for the other indexes.
            if let Some(rec) = self.get_cert(serial)? {
                if rec.lineage == lineage {
                    out.push(rec);
                }
            }
        }
        if out.is_empty() {
            // A certificate stored before lineages existed is its own lineage, unindexed.
            if let Some(rec) = self.get_cert(lineage)? {
                if rec.lineage == lineage {
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    /// Reads the lineage index backwards from its highest generation: one index step and one
    /// record read per renewal, whatever the lineage's length.
    fn lineage_newest(&self, lineage: &[u8]) -> Result<Option<CertRecord>> {
        let prefix = lineage_prefix(lineage);
        for kv in self.by_lineage.scan_prefix(&prefix).rev() {
            let (k, _) = kv.map_err(|e| Error::store("scan lineage index", e))?;
            let Some(serial) = k.get(prefix.len() + 4..) else {
                continue;
            };
            // An index entry without its record (a crash, a lost serial race) is skipped.
            if let Some(rec) = self.get_cert(serial)? {
                if rec.lineage == lineage {
                    return Ok(Some(rec));
                }
            }
        }
        // A certificate stored before lineages existed is its own lineage, unindexed.
        Ok(self.get_cert(lineage)?.filter(|r| r.lineage == lineage))
    }

    fn lock_lineage(&self, lineage: &[u8], lock: &LineageLock) -> Result<LineageLock> {
        let _guard = self.lineage_guard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = self.lineage_lock(lineage)? {
            return Ok(existing);
        }
        self.lineage_locks
            .insert(lineage, enc(lock)?)
            .map_err(|e| Error::store("lock lineage", e))?;
        self.durable()?;
        Ok(lock.clone())
    }

    fn lineage_lock(&self, lineage: &[u8]) -> Result<Option<LineageLock>> {
        self.lineage_locks
            .get(lineage)
            .map_err(|e| Error::store("get lineage lock", e))?
            .map(|v| dec("lineage lock", &v))
            .transpose()
    }

    fn serial_exists(&self, serial: &[u8]) -> Result<bool> {
        self.certs
            .contains_key(serial)
            .map_err(|e| Error::store("lookup serial", e))
    }

    fn get_cert(&self, serial: &[u8]) -> Result<Option<CertRecord>> {
        match self
            .certs
            .get(serial)
            .map_err(|e| Error::store("get certificate", e))?
        {
            Some(v) => Ok(Some(self.decode_cert(&v)?)),
            None => Ok(None),
        }
    }

    fn list_certs(&self, filter: &CertFilter) -> Result<Vec<CertRecord>> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let after = filter.checked_cursor()?;
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut consider = |rec: CertRecord| {
            if filter.matches(&rec) {
                out.push(rec);
            }
            out.len() >= limit
        };
        if let Some(lineage) = &filter.lineage {
            // A lineage is short: its index is read whole, the cursor skips what came before.
            for rec in self.lineage_certs(lineage)? {
                let past = after.is_none_or(|c| {
                    (i64::from(rec.generation.max(1)), rec.serial.as_slice())
                        > (c.key, c.serial.as_slice())
                });
                if past && consider(rec) {
                    break;
                }
            }
        } else if let Some(identity) = &filter.identity {
            let mut prefix = identity.as_bytes().to_vec();
            prefix.push(0);
            let start = match after {
                Some(c) => Excluded(identity_key(identity, &c.serial)),
                None => Included(prefix.clone()),
            };
            for kv in self.by_identity.range((start, Unbounded)) {
                let (k, _) = kv.map_err(|e| Error::store("scan identity index", e))?;
                let Some(serial) = k.strip_prefix(prefix.as_slice()) else {
                    break;
                };
                if let Some(rec) = self.get_cert(serial)? {
                    if consider(rec) {
                        break;
                    }
                }
            }
        } else if let Some(before) = filter.expiring_before {
            // The index holds whole seconds: a bound with a fraction keeps its second (the
            // filter below compares exactly), so a notAfter just before it is not lost.
            let secs = before.timestamp() + i64::from(before.timestamp_subsec_nanos() > 0);
            let end = (secs.max(0) as u64).to_be_bytes().to_vec();
            let start = match after {
                Some(c) => {
                    let mut k = (c.key.max(0) as u64).to_be_bytes().to_vec();
                    k.extend_from_slice(&c.serial);
                    if k >= end {
                        return Ok(out);
                    }
                    Excluded(k)
                }
                None => Unbounded,
            };
            for kv in self.by_expiry.range((start, Excluded(end))) {
                let (k, _) = kv.map_err(|e| Error::store("scan expiry index", e))?;
                if let Some(rec) = self.get_cert(&k[8..])? {
                    if consider(rec) {
                        break;
                    }
                }
            }
        } else {
            let start = match after {
                Some(c) => Excluded(c.serial.clone()),
                None => Unbounded,
            };
            for kv in self.certs.range::<Vec<u8>, _>((start, Unbounded)) {
                let (_, v) = kv.map_err(|e| Error::store("scan certificates", e))?;
                if consider(self.decode_cert(&v)?) {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn for_each_cert(&self, f: &mut dyn FnMut(CertRecord) -> Result<()>) -> Result<()> {
        for kv in self.certs.iter() {
            let (_, v) = kv.map_err(|e| Error::store("scan certificates", e))?;
            f(self.decode_cert(&v)?)?;
        }
        Ok(())
    }

    fn revoke(
        &self,
        serial: &[u8],
        at: DateTime<Utc>,
        reason: RevocationReason,
    ) -> Result<CertRecord> {
        crate::revocation::check_reason(reason)?;
        let rec = (
            &self.certs,
            &self.revoked,
            &self.counters.tree,
            &self.revoked_by_shard,
        )
            .transaction(|(certs, revoked, counts, by_shard)| {
                let abort = |e| ConflictableTransactionError::Abort(e);
                let v = certs
                    .get(serial)?
                    .ok_or_else(|| abort(Error::CertNotFound(hex::encode(serial))))?;
                let mut rec = codec::decode_cert(&v).map_err(abort)?;
                let was_valid = !rec.is_revoked();
                let entry = rec.revoke(at, reason).map_err(abort)?;
                if was_valid {
                    count_revocation(counts, &rec)?;
                }
                certs.insert(serial, codec::encode_cert(&rec).map_err(abort)?)?;
                revoked.insert(serial, enc(&entry).map_err(abort)?)?;
                if let Some(shard) = crate::x509::crl_shard_of(&rec.der) {
                    by_shard.insert(shard_key(shard, serial), &[] as &[u8])?;
                }
                Ok(rec)
            })
            .map_err(|e| tx_err("revoke", e))?;
        self.durable()?;
        self.feed.publish(&Change::Revoked(serial.to_vec()), true);
        Ok(rec)
    }

    fn for_each_revoked(&self, f: &mut dyn FnMut(RevokedEntry) -> Result<()>) -> Result<()> {
        for kv in self.revoked.iter() {
            let (_, v) = kv.map_err(|e| Error::store("scan revocations", e))?;
            f(dec("revocation", &v)?)?;
        }
        Ok(())
    }
}

impl CrlNumbers for SledStore {
    fn next_crl_number(&self) -> Result<u64> {
        let v = self
            .meta
            .update_and_fetch(META_CRL_NUMBER, |old| {
                let n = old
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Some((n + 1).to_be_bytes().to_vec())
            })
            .map_err(|e| Error::store("next CRL number", e))?
            .ok_or_else(|| Error::Corrupt("CRL number vanished".into()))?;
        self.durable()?;
        let b = <[u8; 8]>::try_from(v.as_ref()).map_err(|_| Error::Corrupt("CRL number".into()))?;
        Ok(u64::from_be_bytes(b))
    }
}

impl TokenStore for SledStore {
    fn insert_token(&self, tok: &TokenRecord) -> Result<()> {
        let old = self
            .tokens
            .compare_and_swap(tok.hash.as_bytes(), None as Option<&[u8]>, Some(enc(tok)?))
            .map_err(|e| Error::store("insert token", e))?;
        if old.is_err() {
            return Err(Error::Corrupt("enrollment token hash collision".into()));
        }
        self.durable()
    }

    fn consume_token(&self, hash: &str, now: DateTime<Utc>) -> Result<TokenRecord> {
        loop {
            let current = self
                .tokens
                .get(hash.as_bytes())
                .map_err(|e| Error::store("get token", e))?;
            let Some(current) = current else {
                return Err(Error::TokenRejected("unknown token"));
            };
            let mut tok: TokenRecord = dec("token", &current)?;
            tok.check_usable(now)?;
            tok.used_at = Some(now);
            let swapped = self
                .tokens
                .compare_and_swap(hash.as_bytes(), Some(current), Some(enc(&tok)?))
                .map_err(|e| Error::store("consume token", e))?;
            if swapped.is_ok() {
                self.durable()?;
                return Ok(tok);
            }
            // Lost a race: re-read; the winner has marked it used.
        }
    }

    fn release_token(&self, hash: &str, used_at: DateTime<Utc>) -> Result<bool> {
        loop {
            let current = self
                .tokens
                .get(hash.as_bytes())
                .map_err(|e| Error::store("get token", e))?;
            let Some(current) = current else {
                return Ok(false);
            };
            let mut tok: TokenRecord = dec("token", &current)?;
            if tok.used_at != Some(used_at) {
                return Ok(false);
            }
            tok.used_at = None;
            let swapped = self
                .tokens
                .compare_and_swap(hash.as_bytes(), Some(current), Some(enc(&tok)?))
                .map_err(|e| Error::store("release token", e))?;
            if swapped.is_ok() {
                self.durable()?;
                return Ok(true);
            }
            // The record changed under us: re-read and decide again.
        }
    }

    fn get_token(&self, hash: &str) -> Result<Option<TokenRecord>> {
        match self
            .tokens
            .get(hash.as_bytes())
            .map_err(|e| Error::store("get token", e))?
        {
            Some(v) => Ok(Some(dec("token", &v)?)),
            None => Ok(None),
        }
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.tokens
            .iter()
            .map(|kv| {
                let (_, v) = kv.map_err(|e| Error::store("scan tokens", e))?;
                dec("token", &v)
            })
            .collect()
    }
}

impl OcspResponseStore for SledStore {
    fn put_ocsp_response(&self, resp: &StoredOcspResponse) -> Result<()> {
        self.put_ocsp_response_lazy(resp)?;
        self.durable()
    }

    fn put_ocsp_response_lazy(&self, resp: &StoredOcspResponse) -> Result<()> {
        self.ocsp
            .insert(resp.serial.as_slice(), codec::encode_ocsp(resp)?)
            .map_err(|e| Error::store("put OCSP response", e))?;
        if self.feed.has_subscribers() {
            self.feed
                .publish(&Change::OcspResponse(resp.serial.clone()), true);
        }
        Ok(())
    }

    fn put_ocsp_response_if_absent(&self, resp: &StoredOcspResponse) -> Result<bool> {
        let kept = self
            .ocsp
            .compare_and_swap(
                resp.serial.as_slice(),
                None as Option<&[u8]>,
                Some(codec::encode_ocsp(resp)?),
            )
            .map_err(|e| Error::store("put OCSP response", e))?
            .is_ok();
        if kept {
            self.durable()?;
            self.feed
                .publish(&Change::OcspResponse(resp.serial.clone()), true);
        }
        Ok(kept)
    }

    fn put_ocsp_responses_lazy(&self, resps: &[StoredOcspResponse]) -> Result<()> {
        let [head, rest @ ..] = resps else {
            return Ok(());
        };
        if rest.is_empty() || rest.iter().any(|r| r.der != head.der) {
            return resps
                .iter()
                .try_for_each(|r| self.put_ocsp_response_lazy(r));
        }
        // The group's bytes once, then a link per member (the group first: a link never
        // names a group that is not there yet).
        self.ocsp_groups
            .insert(head.serial.as_slice(), codec::encode_ocsp(head)?)
            .map_err(|e| Error::store("put OCSP group response", e))?;
        // One insert per link, not a sled batch: a batch takes sled's global write lock and
        // stalls every other write of the store (enrollments) while it waits. A crash between
        // two links leaves a member without a record, which the next start signs again.
        for r in resps {
            self.ocsp
                .insert(
                    r.serial.as_slice(),
                    codec::encode_ocsp_link(r, &head.serial)?,
                )
                .map_err(|e| Error::store("put OCSP responses", e))?;
        }
        if self.feed.has_subscribers() {
            for r in resps {
                self.feed
                    .publish(&Change::OcspResponse(r.serial.clone()), true);
            }
        }
        Ok(())
    }

    fn get_ocsp_response(&self, serial: &[u8]) -> Result<Option<StoredOcspResponse>> {
        match self
            .ocsp
            .get(serial)
            .map_err(|e| Error::store("get OCSP response", e))?
        {
            Some(v) => self.resolve_ocsp(serial, &v),
            None => Ok(None),
        }
    }

    fn for_each_ocsp_response(
        &self,
        f: &mut dyn FnMut(StoredOcspResponse) -> Result<()>,
    ) -> Result<()> {
        for kv in self.ocsp.iter() {
            let (k, v) = kv.map_err(|e| Error::store("scan OCSP responses", e))?;
            if let Some(resp) = self.resolve_ocsp(&k, &v)? {
                f(resp)?;
            }
        }
        Ok(())
    }

    fn for_each_ocsp_due(&self, before: DateTime<Utc>, f: &mut DueVisitor<'_>) -> Result<()> {
        for kv in self.ocsp.iter() {
            let (k, v) = kv.map_err(|e| Error::store("scan OCSP responses", e))?;
            let next_update = codec::ocsp_record_next_update(&v)?;
            if next_update <= before {
                f(&k, next_update)?;
            }
        }
        Ok(())
    }

    fn sweep_ocsp_groups(&self, written_before: DateTime<Utc>) -> Result<usize> {
        // Every group key first, then every link: a group written after the first step is
        // not a candidate; one written before it whose links are not there yet is spared by
        // its age (the links follow within the same call).
        let mut candidates = Vec::new();
        for kv in self.ocsp_groups.iter() {
            let (k, v) = kv.map_err(|e| Error::store("scan OCSP groups", e))?;
            if codec::decode_ocsp(&v)?.this_update < written_before {
                candidates.push(k);
            }
        }
        if candidates.is_empty() {
            return Ok(0);
        }
        let mut linked = std::collections::HashSet::new();
        for kv in self.ocsp.iter() {
            let (_, v) = kv.map_err(|e| Error::store("scan OCSP responses", e))?;
            if let codec::OcspRecord::Link { group, .. } = codec::decode_ocsp_record(&v)? {
                linked.insert(group);
            }
        }
        let mut removed = 0;
        for k in candidates {
            if !linked.contains(k.as_ref()) {
                self.ocsp_groups
                    .remove(&k)
                    .map_err(|e| Error::store("remove OCSP group", e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl SledStore {
    /// The response a record of the OCSP tree gives for `serial`: the record itself, or the
    /// group response it links to, as the member's (`None` if that group is gone).
    fn resolve_ocsp(&self, serial: &[u8], v: &[u8]) -> Result<Option<StoredOcspResponse>> {
        match codec::decode_ocsp_record(v)? {
            codec::OcspRecord::Full(r) => Ok(Some(r)),
            codec::OcspRecord::Link {
                group,
                this_update,
                next_update,
            } => Ok(self
                .ocsp_groups
                .get(&group)
                .map_err(|e| Error::store("get OCSP group response", e))?
                .map(|g| codec::decode_ocsp(&g))
                .transpose()?
                .map(|g| StoredOcspResponse {
                    serial: serial.to_vec(),
                    der: g.der,
                    this_update,
                    next_update,
                })),
        }
    }
}

fn encode_crl(crl: &StoredCrl) -> Vec<u8> {
    let mut v = Vec::with_capacity(24 + crl.der.len());
    v.extend_from_slice(&crl.number.to_be_bytes());
    v.extend_from_slice(&crl.this_update.timestamp().to_be_bytes());
    v.extend_from_slice(&crl.next_update.timestamp().to_be_bytes());
    v.extend_from_slice(&crl.der);
    v
}

fn crl_number_of(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

fn decode_crl(scope: &str, v: &[u8]) -> Result<StoredCrl> {
    let corrupt = || Error::Corrupt(format!("CRL record {scope:?}"));
    let word = |i: usize| -> Result<[u8; 8]> {
        v.get(i..i + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(corrupt)
    };
    let time = |i: usize| -> Result<DateTime<Utc>> {
        DateTime::from_timestamp(i64::from_be_bytes(word(i)?), 0).ok_or_else(corrupt)
    };
    Ok(StoredCrl {
        scope: scope.to_string(),
        number: u64::from_be_bytes(word(0)?),
        this_update: time(8)?,
        next_update: time(16)?,
        der: v[24..].to_vec(),
    })
}

impl CrlArchive for SledStore {
    fn put_crl(&self, crl: &StoredCrl) -> Result<bool> {
        // Shared, not copied, each time sled runs the update (a full CRL can be tens of MB).
        let new = sled::IVec::from(encode_crl(crl));
        let mut kept = false;
        self.crls
            .fetch_and_update(crl.scope.as_bytes(), |old| {
                match old.and_then(crl_number_of) {
                    Some(n) if n >= crl.number => {
                        kept = false;
                        old.map(sled::IVec::from)
                    }
                    _ => {
                        kept = true;
                        Some(new.clone())
                    }
                }
            })
            .map_err(|e| Error::store("put CRL", e))?;
        if !kept {
            return Ok(false);
        }
        self.durable()?;
        self.feed.publish(
            &Change::Crl {
                scope: crl.scope.clone(),
                number: crl.number,
            },
            true,
        );
        Ok(true)
    }

    fn latest_crl(&self, scope: &str) -> Result<Option<StoredCrl>> {
        self.crls
            .get(scope.as_bytes())
            .map_err(|e| Error::store("get CRL", e))?
            .map(|v| decode_crl(scope, &v))
            .transpose()
    }
}

impl Leases for SledStore {
    fn try_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool> {
        let now = std::time::Instant::now();
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        match leases.get(name) {
            Some((h, until)) if h != holder && *until > now => Ok(false),
            _ => {
                leases.insert(name.to_string(), (holder.to_string(), now + ttl));
                Ok(true)
            }
        }
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if leases.get(name).is_some_and(|(h, _)| h == holder) {
            leases.remove(name);
        }
        Ok(())
    }
}

impl ChangeFeed for SledStore {
    fn subscribe(&self) -> Result<Subscription> {
        Ok(self.feed.subscribe(false))
    }

    fn subscribe_remote(&self) -> Result<Subscription> {
        Ok(self.feed.subscribe(true))
    }

    fn is_shared(&self) -> bool {
        false
    }
}

impl AuditLog for SledStore {
    fn append_audit(&self, ev: NewAuditEvent) -> Result<AuditEvent> {
        let sealed = {
            // The chain is extended under the lock; the flush happens after it is released,
            // so concurrent appends share flushes (group commit) instead of queueing one
            // fsync each. Event n+1 is written after event n, so any flush that makes n+1
            // durable makes n durable too.
            let mut head = self.audit_head.lock().unwrap_or_else(|p| p.into_inner());
            let (prev_seq, prev_hash) = match head.as_ref() {
                Some(h) => h.clone(),
                None => match self
                    .meta
                    .get(META_AUDIT_HEAD)
                    .map_err(|e| Error::store("audit head", e))?
                {
                    Some(v) => dec::<(u64, String)>("audit head", &v)?,
                    // No head and no event: the first append. No head while events exist:
                    // the head was removed; starting over at 1 would overwrite event 1.
                    None if self
                        .audit
                        .first()
                        .map_err(|e| Error::store("audit", e))?
                        .is_none() =>
                    {
                        (0, audit::GENESIS.to_string())
                    }
                    None => {
                        return Err(Error::AuditChain {
                            seq: 1,
                            reason: "the audit head is missing while events exist (head \
                                     deleted); refusing to append: run `audit verify`"
                                .into(),
                        })
                    }
                },
            };
            let sealed = audit::seal(prev_seq, &prev_hash, crate::clock::truncate(Utc::now()), ev)?;
            let value = enc(&sealed)?;
            let new_head = (sealed.seq, sealed.hash.clone());
            let head_value = enc(&new_head)?;
            // The event, then the head (see `complete_audit_head` for a crash in between).
            self.audit
                .insert(sealed.seq.to_be_bytes(), value)
                .map_err(|e| Error::store("append audit", e))?;
            // From here on the event exists: the next append must chain to it even if the
            // head write fails.
            *head = Some(new_head);
            self.meta
                .insert(META_AUDIT_HEAD, head_value)
                .map_err(|e| Error::store("append audit head", e))?;
            sealed
        };
        self.durable()?;
        Ok(sealed)
    }

    fn audit_events(&self, from: u64, limit: usize) -> Result<Vec<AuditEvent>> {
        self.audit
            .range(from.to_be_bytes()..)
            .take(limit)
            .map(|kv| {
                let (_, v) = kv.map_err(|e| Error::store("scan audit", e))?;
                dec("audit", &v)
            })
            .collect()
    }

    fn audit_iter(&self, from: u64) -> Box<dyn Iterator<Item = Result<AuditEvent>> + Send + '_> {
        Box::new(self.audit.range(from.to_be_bytes()..).map(|kv| {
            let (_, v) = kv.map_err(|e| Error::store("scan audit", e))?;
            dec("audit", &v)
        }))
    }

    fn audit_head(&self) -> Result<Option<(u64, String)>> {
        // Under the append lock: the stored head is the one the last append wrote.
        let _head = self.audit_head.lock().unwrap_or_else(|p| p.into_inner());
        match self
            .meta
            .get(META_AUDIT_HEAD)
            .map_err(|e| Error::store("audit head", e))?
        {
            Some(v) => Ok(Some(dec::<(u64, String)>("audit head", &v)?)),
            None => Ok(None),
        }
    }

    fn audit_head_and_any(&self) -> Result<(Option<(u64, String)>, bool)> {
        // Under the append lock: an append writes its event and the head together.
        let _lock = self.audit_head.lock().unwrap_or_else(|p| p.into_inner());
        let head = match self
            .meta
            .get(META_AUDIT_HEAD)
            .map_err(|e| Error::store("audit head", e))?
        {
            Some(v) => Some(dec::<(u64, String)>("audit head", &v)?),
            None => None,
        };
        let any = head.is_some()
            || self
                .audit
                .first()
                .map_err(|e| Error::store("audit", e))?
                .is_some();
        Ok((head, any))
    }

    fn put_audit_checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        let mut key = cp.seq.to_be_bytes().to_vec();
        key.extend_from_slice(&(cp.time.timestamp().max(0) as u64).to_be_bytes());
        self.audit_checkpoints
            .insert(key, enc(cp)?)
            .map_err(|e| Error::store("put audit checkpoint", e))?;
        self.durable()
    }

    fn audit_checkpoints(
        &self,
        from_seq: u64,
    ) -> Box<dyn Iterator<Item = Result<Checkpoint>> + Send + '_> {
        Box::new(
            self.audit_checkpoints
                .range(from_seq.to_be_bytes()..)
                .map(|kv| {
                    let (_, v) = kv.map_err(|e| Error::store("scan audit checkpoints", e))?;
                    dec("audit checkpoint", &v)
                }),
        )
    }

    fn audit_checkpoint_before(&self, before_seq: u64) -> Result<Option<Checkpoint>> {
        match self
            .audit_checkpoints
            .range(..before_seq.to_be_bytes())
            .next_back()
        {
            Some(kv) => {
                let (_, v) = kv.map_err(|e| Error::store("audit checkpoint", e))?;
                Ok(Some(dec("audit checkpoint", &v)?))
            }
            None => Ok(None),
        }
    }
    // Archive and truncation: see the block "Audit log archive and truncation" below.
    fn audit_start(&self) -> Result<Option<Checkpoint>> {
        self.read_audit_start()
    }

    fn set_audit_start(&self, anchor: &Checkpoint) -> Result<()> {
        self.write_audit_start(anchor)
    }

    fn delete_audit_below_start(&self, limit: usize) -> Result<usize> {
        self.delete_audit_below(limit)
    }
}

impl Durability for SledStore {
    fn health(&self) -> Result<()> {
        self.meta
            .get(b"health")
            .map(|_| ())
            .map_err(|e| Error::store("health", e))
    }

    /// The heartbeat key written and flushed (one group commit; the readiness cache calls
    /// this at most once per TTL). Fails at once after an I/O error sled keeps.
    fn check_writable(&self) -> Result<()> {
        if let Some(cause) = self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(Error::StoreUnavailable {
                op: "write probe",
                source: cause.into(),
            });
        }
        let now = Utc::now().timestamp_micros().to_be_bytes();
        self.meta
            .insert(META_HEARTBEAT, &now)
            .map_err(|e| self.note_fault(Error::store("write probe", e)))?;
        self.flush_group()
    }

    fn recovery(&self) -> super::Recovery {
        let Some(cause) = self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return super::Recovery::NotNeeded;
        };
        let cause_gone = match self.probe_directory() {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "store directory write probe failed");
                false
            }
        };
        super::Recovery::Restart { cause, cause_gone }
    }

    fn begin_deferred(&self) {
        super::deferral::begin(self.id);
    }

    fn end_deferred(&self) -> Result<()> {
        if super::deferral::end(self.id) {
            self.flush_group()?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.flush_group()
    }
}

/// Pruning (README "Retention"). The candidates are read from the expiry index, then removed
/// in one sled transaction over every tree that names them, which reads each record again and
/// applies the cutoff to what it finds: a revocation (itself a transaction over the record)
/// either commits first and is judged, or finds the record gone. The lineage guard is held
/// throughout, so no renewal or lineage lock interleaves with the removal of a lineage's lock.
impl Retention for SledStore {
    fn prune_expired_certs(&self, cutoff: &CertCutoff, limit: usize) -> Result<PrunedCerts> {
        if limit == 0 {
            return Ok(PrunedCerts::default());
        }
        let _guard = self.lineage_guard.lock().unwrap_or_else(|p| p.into_inner());
        // Whole seconds, like the index: a notAfter in the cutoff's own second waits a second.
        let end = (cutoff.expired_before.timestamp().max(0) as u64).to_be_bytes();
        let mut candidates: Vec<Vec<u8>> = Vec::new();
        for kv in self.by_expiry.range(..end.to_vec()) {
            let (k, _) = kv.map_err(|e| Error::store("scan expiry index", e))?;
            let Some(serial) = k.get(8..) else { continue };
            // An entry without its record (a crash, a lost serial race) is skipped, as by
            // every lookup; a revoked certificate the CRL must still list is passed over.
            if let Some(rec) = self.get_cert(serial)? {
                if expiry_key(rec.not_after, &rec.serial) == k.as_ref() && cutoff.allows(&rec) {
                    candidates.push(rec.serial);
                    if candidates.len() >= limit {
                        break;
                    }
                }
            }
        }
        if candidates.is_empty() {
            return Ok(PrunedCerts::default());
        }
        let (pruned, lineages) = (
            &self.certs,
            &self.by_identity,
            &self.by_expiry,
            &self.by_lineage,
            &self.revoked,
            &self.ocsp,
            &self.counters.tree,
        )
            .transaction(
                |(certs, by_identity, by_expiry, by_lineage, revoked, ocsp, counts)| {
                    let abort = |e| ConflictableTransactionError::Abort(e);
                    let mut out = PrunedCerts::default();
                    let mut lineages: Vec<Vec<u8>> = Vec::new();
                    for serial in &candidates {
                        let Some(v) = certs.get(serial.as_slice())? else {
                            continue;
                        };
                        let rec = codec::decode_cert(&v).map_err(abort)?;
                        if !cutoff.allows(&rec) {
                            continue;
                        }
                        count_pruned(counts, &rec)?;
                        certs.remove(serial.as_slice())?;
                        by_identity.remove(identity_key(&rec.identity, &rec.serial))?;
                        by_expiry.remove(expiry_key(rec.not_after, &rec.serial))?;
                        by_lineage.remove(lineage_key(&rec))?;
                        revoked.remove(serial.as_slice())?;
                        for key in super::ocsp_keys(serial) {
                            // A link needs nothing kept: its group stays for the other
                            // members (and goes by `sweep_ocsp_groups` after the last).
                            if let Some(o) = ocsp.remove(key)? {
                                if let codec::OcspRecord::Full(r) =
                                    codec::decode_ocsp_record(&o).map_err(abort)?
                                {
                                    out.ocsp_responses.push(r);
                                }
                            }
                        }
                        let lineage = rec.with_lineage_defaults().lineage;
                        if !lineages.contains(&lineage) {
                            lineages.push(lineage);
                        }
                        out.serials.push(serial.clone());
                    }
                    Ok((out, lineages))
                },
            )
            .map_err(|e| tx_err("prune certificates", e))?;
        // A lineage's lock goes with its last certificate (none can renew from it any more).
        // A crash before this leaves a lock on an empty lineage: harmless, nothing is left to
        // renew.
        for lineage in &lineages {
            if self.lineage_certs(lineage)?.is_empty() {
                self.lineage_locks
                    .remove(lineage.as_slice())
                    .map_err(|e| Error::store("prune lineage lock", e))?;
            }
        }
        self.durable()?;
        for serial in &pruned.serials {
            self.feed.publish(&Change::Pruned(serial.clone()), true);
        }
        Ok(pruned)
    }

    fn prune_tokens(&self, before: DateTime<Utc>, limit: usize) -> Result<usize> {
        let mut n = 0;
        for kv in self.tokens.iter() {
            if n >= limit {
                break;
            }
            let (k, v) = kv.map_err(|e| Error::store("scan tokens", e))?;
            let tok: TokenRecord = dec("token", &v)?;
            if tok.finished_at() >= before {
                continue;
            }
            // Only the state judged: a token consumed or released meanwhile stays.
            let removed = self
                .tokens
                .compare_and_swap(&k, Some(v), None as Option<&[u8]>)
                .map_err(|e| Error::store("prune token", e))?;
            if removed.is_ok() {
                n += 1;
            }
        }
        if n > 0 {
            self.durable()?;
        }
        Ok(n)
    }
}

impl SledStore {
    /// Testing hook: move the audit head back by one event, as a crash between an append's
    /// event write and its head write leaves it.
    #[doc(hidden)]
    pub fn rewind_audit_head_for_test(&self) -> Result<()> {
        let mut head = self.audit_head.lock().unwrap_or_else(|p| p.into_inner());
        let (_, last) = self
            .audit
            .last()
            .map_err(|e| Error::store("audit", e))?
            .ok_or(Error::AuditChain {
                seq: 1,
                reason: "empty".into(),
            })?;
        let last: AuditEvent = dec("audit", &last)?;
        self.meta
            .insert(META_AUDIT_HEAD, enc(&(last.seq - 1, last.prev_hash))?)
            .map_err(|e| Error::store("audit head", e))?;
        *head = None;
        self.flush_group()
    }

    /// Testing hook: overwrite a raw audit record (to prove tampering is detected).
    #[doc(hidden)]
    pub fn tamper_audit_for_test(
        &self,
        seq: u64,
        f: impl FnOnce(&mut serde_json::Value),
    ) -> Result<()> {
        let v = self
            .audit
            .get(seq.to_be_bytes())
            .map_err(|e| Error::store("audit", e))?
            .ok_or(Error::AuditChain {
                seq,
                reason: "missing".into(),
            })?;
        let mut json: serde_json::Value = dec("audit", &v)?;
        f(&mut json);
        self.audit
            .insert(seq.to_be_bytes(), enc(&json)?)
            .map_err(|e| Error::store("audit", e))?;
        Ok(())
    }
}

/// Read helpers for `ca-server store copy` (moving a store to PostgreSQL): state the store
/// traits do not expose because nothing but a copy needs it whole.
impl SledStore {
    /// The last CRL number allocated (0 if none was), read without allocating one.
    pub fn current_crl_number(&self) -> Result<u64> {
        match self
            .meta
            .get(META_CRL_NUMBER)
            .map_err(|e| Error::store("read CRL number", e))?
        {
            None => Ok(0),
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| Error::Corrupt("CRL number".into())),
        }
    }

    /// Visit every archived CRL (the latest of each scope), in scope order.
    pub fn for_each_archived_crl(&self, f: &mut dyn FnMut(StoredCrl) -> Result<()>) -> Result<()> {
        for kv in self.crls.iter() {
            let (k, v) = kv.map_err(|e| Error::store("scan CRLs", e))?;
            let scope = std::str::from_utf8(&k)
                .map_err(|_| Error::Corrupt("CRL scope is not UTF-8".into()))?;
            f(decode_crl(scope, &v)?)?;
        }
        Ok(())
    }

    /// Visit every locked lineage: `(lineage, lock)`, in lineage order.
    pub fn for_each_lineage_lock(
        &self,
        f: &mut dyn FnMut(Vec<u8>, LineageLock) -> Result<()>,
    ) -> Result<()> {
        for kv in self.lineage_locks.iter() {
            let (k, v) = kv.map_err(|e| Error::store("scan lineage locks", e))?;
            f(k.to_vec(), dec("lineage lock", &v)?)?;
        }
        Ok(())
    }
}

// --- CRL shards (README "CRLs"): the shard index and per-scope CRL numbers ---

fn shard_key(shard: crate::x509::CrlShard, serial: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + serial.len());
    k.extend_from_slice(&shard.0.to_be_bytes());
    k.extend_from_slice(serial);
    k
}

fn crl_number_key(scope: &str) -> Vec<u8> {
    [b"crl_number:".as_slice(), scope.as_bytes()].concat()
}

/// The shard index is a key range per shard; each key's entry is read from `revoked`, so a
/// pruned certificate (gone from `revoked`) is skipped and its key removed on the way.
impl super::CrlShards for SledStore {
    fn for_each_revoked_in_shard(
        &self,
        shard: crate::x509::CrlShard,
        f: &mut dyn FnMut(RevokedEntry) -> Result<()>,
    ) -> Result<()> {
        for kv in self.revoked_by_shard.scan_prefix(shard.0.to_be_bytes()) {
            let (k, _) = kv.map_err(|e| Error::store("scan CRL shard", e))?;
            let serial = &k[8..];
            match self
                .revoked
                .get(serial)
                .map_err(|e| Error::store("read revocation", e))?
            {
                Some(v) => f(dec("revocation", &v)?)?,
                None => {
                    self.revoked_by_shard
                        .remove(&k)
                        .map_err(|e| Error::store("drop pruned shard entry", e))?;
                }
            }
        }
        Ok(())
    }

    fn next_crl_number_in(&self, scope: &str) -> Result<u64> {
        let archived = self.latest_crl(scope)?.map_or(0, |c| c.number);
        let v = self
            .meta
            .update_and_fetch(crl_number_key(scope), |old| {
                let n = old
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Some((n.max(archived) + 1).to_be_bytes().to_vec())
            })
            .map_err(|e| Error::store("next CRL number", e))?
            .ok_or_else(|| Error::Corrupt("CRL number vanished".into()))?;
        self.durable()?;
        let b = <[u8; 8]>::try_from(v.as_ref()).map_err(|_| Error::Corrupt("CRL number".into()))?;
        Ok(u64::from_be_bytes(b))
    }

    fn archived_crl_scopes(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for kv in self.crls.scan_prefix(prefix.as_bytes()) {
            let (k, _) = kv.map_err(|e| Error::store("scan CRLs", e))?;
            out.push(
                String::from_utf8(k.to_vec())
                    .map_err(|_| Error::Corrupt("CRL scope is not UTF-8".into()))?,
            );
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Certificate counters ([`CertCounts`]; DESIGN "Inventory at scale").
//
// The tree `cert_counts` holds counters, `C` + (revoked, notAfter UTC day, profile) -> count,
// and insert markers, `P` + serial -> empty. A revocation and a prune are sled transactions
// already: they move the counters inside them. An insert is not (its record's compare-and-swap
// is the commit point, see `insert_cert`), and making it one would serialise every insert
// behind sled's global transaction lock. Instead an insert writes one small marker **before**
// its record, and the count is the counters plus one per marker whose record exists. sled
// recovers a prefix of its log, so after a crash a marker without its record (the insert did
// not commit) counts nothing and is removed at open, and a record always has its marker or was
// folded. A fold moves markers into the counters in one transaction that reads the record, the
// marker and the counter (every `FOLD_EVERY` inserts, at open, and before a read), so a marker
// is counted exactly once. A revocation of a certificate whose marker is still there leaves
// the counters alone (the fold counts the record as it finds it); a prune removes the marker.
// An insert holds its serial's stripe lock from its marker to its decision and writes a marker
// only for a serial with no record (checked under the lock): a marker next to a record is
// always that record's own, never a refused duplicate's, so revocations, prunes and folds can
// trust it.

/// In `meta`: the counters are complete (filled from the stored certificates once).
const META_COUNTS: &[u8] = b"cert_counts_v1";
/// Inserts between two folds (each fold is one transaction over this many markers at most).
const FOLD_EVERY: usize = 256;
/// Stripes of the insert marker lock.
const COUNT_STRIPES: usize = 16;
/// Key prefix of a counter in `cert_counts`.
const COUNTER: u8 = b'C';
/// Key prefix of an insert marker in `cert_counts`.
const MARKER: u8 = b'P';

/// The counter tree and the insert markers' locks.
struct Counters {
    tree: sled::Tree,
    stripes: [Mutex<()>; COUNT_STRIPES],
    since_fold: std::sync::atomic::AtomicUsize,
}

/// A counter's key: `C revoked(u8) day(i32 BE, sign bit flipped) profile`.
fn count_key(rec: &CertRecord) -> Vec<u8> {
    let day = super::count_day(rec.not_after);
    let mut k = Vec::with_capacity(6 + rec.profile.len());
    k.push(COUNTER);
    k.push(u8::from(rec.is_revoked()));
    k.extend_from_slice(&((day as u32) ^ 0x8000_0000).to_be_bytes());
    k.extend_from_slice(rec.profile.as_bytes());
    k
}

/// An insert marker's key.
fn marker_key(serial: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + serial.len());
    k.push(MARKER);
    k.extend_from_slice(serial);
    k
}

fn decode_count(k: &[u8], v: &[u8]) -> Result<Option<CertCount>> {
    let bad = || Error::Corrupt("certificate counter record".into());
    let n = i64::from_be_bytes(<[u8; 8]>::try_from(v).map_err(|_| bad())?);
    let revoked = *k.get(1).ok_or_else(bad)? == 1;
    let day = u32::from_be_bytes(
        k.get(2..6)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?,
    );
    let day = (day ^ 0x8000_0000) as i32;
    let profile = std::str::from_utf8(&k[6..]).map_err(|_| bad())?.to_string();
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(CertCount {
        profile,
        not_after_day: super::count_date(day)?,
        revoked,
        count: u64::try_from(n)
            .map_err(|_| Error::Corrupt(format!("certificate counter below zero ({n})")))?,
    }))
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<Error>>;
type TxTree = sled::transaction::TransactionalTree;

/// Add `delta` to the counter `key` inside a transaction (a counter at zero is removed).
fn add_count(counts: &TxTree, key: &[u8], delta: i64) -> TxResult<()> {
    let old = match counts.get(key)? {
        Some(v) => i64::from_be_bytes(<[u8; 8]>::try_from(v.as_ref()).map_err(|_| {
            ConflictableTransactionError::Abort(Error::Corrupt("certificate counter record".into()))
        })?),
        None => 0,
    };
    let n = old + delta;
    if n == 0 {
        counts.remove(key)?;
    } else {
        counts.insert(key, &n.to_be_bytes())?;
    }
    Ok(())
}

/// In the revoking transaction: `rec` (revoked now, valid before) moves from valid to revoked,
/// unless it is still only a marker (the fold will count it as it finds it).
fn count_revocation(counts: &TxTree, rec: &CertRecord) -> TxResult<()> {
    if counts.get(marker_key(&rec.serial))?.is_some() {
        return Ok(());
    }
    let revoked_key = count_key(rec);
    let mut valid_key = revoked_key.clone();
    valid_key[1] = 0;
    add_count(counts, &valid_key, -1)?;
    add_count(counts, &revoked_key, 1)
}

/// In the pruning transaction: `rec` leaves its counter (or its marker goes).
fn count_pruned(counts: &TxTree, rec: &CertRecord) -> TxResult<()> {
    if counts.remove(marker_key(&rec.serial))?.is_some() {
        return Ok(());
    }
    add_count(counts, &count_key(rec), -1)
}

/// An insert's marker, holding its stripe lock until the insert is decided.
struct Marker<'a> {
    key: Vec<u8>,
    /// Whether this insert wrote the marker (none was there).
    created: bool,
    _stripe: std::sync::MutexGuard<'a, ()>,
}

impl Marker<'_> {
    /// The insert lost (the serial is taken; not expected, as [`SledStore::mark_uncounted`]
    /// checked under the stripe lock): remove the marker if this insert made it.
    fn withdraw(self, store: &SledStore) -> Result<()> {
        if self.created {
            store
                .counters
                .tree
                .remove(&self.key)
                .map_err(|e| Error::store("insert certificate", e))?;
        }
        Ok(())
    }
}

impl SledStore {
    /// The marker of an insert of `serial`, or `None` if the serial is stored already
    /// (nothing written). Under the serial's stripe lock no other insert of it runs, so a
    /// marker is only ever written for a serial that has no record: a revocation, a prune or a
    /// fold that finds a marker next to a record finds that record's own.
    fn mark_uncounted(&self, serial: &[u8]) -> Result<Option<Marker<'_>>> {
        let stripe = serial.last().copied().map_or(0, usize::from) % COUNT_STRIPES;
        let guard = self.counters.stripes[stripe]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.serial_exists(serial)? {
            return Ok(None);
        }
        let key = marker_key(serial);
        let created = self
            .counters
            .tree
            .insert(key.as_slice(), &[])
            .map_err(|e| Error::store("insert certificate", e))?
            .is_none();
        Ok(Some(Marker {
            key,
            created,
            _stripe: guard,
        }))
    }

    /// After an insert: fold the markers once every [`FOLD_EVERY`] inserts.
    fn fold_counts_now_and_then(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let n = self.counters.since_fold.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= FOLD_EVERY {
            self.counters.since_fold.store(0, Ordering::Relaxed);
            self.fold_counts()?;
        }
        Ok(())
    }

    /// The marker keys after `from` (all from the first with `None`), at most `limit`.
    fn markers(&self, from: Option<&[u8]>, limit: usize) -> Result<Vec<sled::IVec>> {
        use std::ops::Bound::{Excluded, Included};
        let start = match from {
            Some(k) => Excluded(k.to_vec()),
            None => Included(vec![MARKER]),
        };
        let mut out = Vec::new();
        for k in self
            .counters
            .tree
            .range::<Vec<u8>, _>((start, Excluded(vec![MARKER + 1])))
            .keys()
            .take(limit)
        {
            out.push(k.map_err(|e| Error::store("certificate counters", e))?);
        }
        Ok(out)
    }

    /// Fold every marker whose record exists into the counters, [`FOLD_EVERY`] per
    /// transaction. A marker without its record (an insert in progress) stays.
    fn fold_counts(&self) -> Result<()> {
        let mut from: Option<sled::IVec> = None;
        loop {
            let keys = self.markers(from.as_deref(), FOLD_EVERY)?;
            let Some(last) = keys.last().cloned() else {
                return Ok(());
            };
            (&self.certs, &self.counters.tree)
                .transaction(|(certs, counts)| {
                    let mut deltas: std::collections::BTreeMap<Vec<u8>, i64> =
                        std::collections::BTreeMap::new();
                    for key in &keys {
                        if counts.get(key)?.is_none() {
                            continue;
                        }
                        let Some(v) = certs.get(&key[1..])? else {
                            continue;
                        };
                        let rec =
                            codec::decode_cert(&v).map_err(ConflictableTransactionError::Abort)?;
                        *deltas.entry(count_key(&rec)).or_insert(0) += 1;
                        counts.remove(key)?;
                    }
                    for (k, d) in &deltas {
                        add_count(counts, k, *d)?;
                    }
                    Ok(())
                })
                .map_err(|e| tx_err("fold certificate counters", e))?;
            if keys.len() < FOLD_EVERY {
                return Ok(());
            }
            from = Some(last);
        }
    }

    /// At open: fill the counters from the stored certificates once (a store of an earlier
    /// version has none; one scan, then [`META_COUNTS`] says it is done), drop the markers of
    /// inserts a crash interrupted (no record), and fold the rest.
    fn open_counters(&self) -> Result<()> {
        let done = self
            .meta
            .get(META_COUNTS)
            .map_err(|e| Error::store("certificate counters", e))?
            .is_some();
        if !done {
            let started = std::time::Instant::now();
            let mut counts: std::collections::BTreeMap<Vec<u8>, i64> =
                std::collections::BTreeMap::new();
            let mut n: u64 = 0;
            self.for_each_cert(&mut |rec| {
                *counts.entry(count_key(&rec)).or_insert(0) += 1;
                n += 1;
                Ok(())
            })?;
            // Whatever the tree holds is replaced: every record was counted by the scan.
            let mut stale = Vec::new();
            for k in self.counters.tree.iter().keys() {
                stale.push(k.map_err(|e| Error::store("certificate counters", e))?);
            }
            (&self.counters.tree, &self.meta)
                .transaction(|(c, meta)| {
                    for k in &stale {
                        c.remove(k)?;
                    }
                    for (k, v) in &counts {
                        c.insert(k.as_slice(), &v.to_be_bytes())?;
                    }
                    meta.insert(META_COUNTS, &[1u8])?;
                    Ok(())
                })
                .map_err(|e| tx_err("fill certificate counters", e))?;
            self.flush_group()?;
            tracing::info!(
                certificates = n,
                ms = started.elapsed().as_millis() as u64,
                "certificate counters filled from the stored certificates (once)"
            );
            return Ok(());
        }
        let mut from: Option<sled::IVec> = None;
        loop {
            let keys = self.markers(from.as_deref(), FOLD_EVERY)?;
            for key in &keys {
                if !self.serial_exists(&key[1..])? {
                    self.counters
                        .tree
                        .remove(key)
                        .map_err(|e| Error::store("certificate counters", e))?;
                }
            }
            match keys.last() {
                Some(last) if keys.len() == FOLD_EVERY => from = Some(last.clone()),
                _ => break,
            }
        }
        self.fold_counts()
    }

    /// Testing hook: make this store look like one of an earlier version (no counters), as
    /// the next open must fill them.
    #[doc(hidden)]
    pub fn forget_cert_counts_for_test(&self) -> Result<()> {
        let err = |e| Error::store("certificate counters", e);
        self.counters.tree.clear().map_err(err)?;
        self.meta.remove(META_COUNTS).map_err(err)?;
        self.flush_group()
    }
}

/// Folds the markers first (at most [`FOLD_EVERY`] plus the inserts in progress), then reads
/// the counters: rows, not certificates.
impl CertCounts for SledStore {
    fn cert_counts(&self) -> Result<Vec<CertCount>> {
        self.fold_counts()?;
        let mut out = Vec::new();
        for kv in self.counters.tree.scan_prefix([COUNTER]) {
            let (k, v) = kv.map_err(|e| Error::store("read certificate counters", e))?;
            out.extend(decode_count(&k, &v)?);
        }
        out.sort_by(|a, b| {
            (&a.profile, a.not_after_day, a.revoked).cmp(&(&b.profile, b.not_after_day, b.revoked))
        });
        Ok(out)
    }
}

// ---- Audit log archive and truncation (`ca-server audit truncate`) ----

/// The start of a truncated audit log: the signed checkpoint its first kept event links to.
const META_AUDIT_START: &[u8] = b"audit_start";

impl SledStore {
    fn read_audit_start(&self) -> Result<Option<Checkpoint>> {
        self.meta
            .get(META_AUDIT_START)
            .map_err(|e| Error::store("audit start", e))?
            .map(|v| dec("audit start", &v))
            .transpose()
    }

    fn write_audit_start(&self, anchor: &Checkpoint) -> Result<()> {
        {
            // Under the append lock: the head read here is the last append's.
            let _head = self.audit_head.lock().unwrap_or_else(|p| p.into_inner());
            let current = self.read_audit_start()?;
            let head = self
                .meta
                .get(META_AUDIT_HEAD)
                .map_err(|e| Error::store("audit head", e))?
                .map(|v| dec::<(u64, String)>("audit head", &v))
                .transpose()?;
            let event = self
                .audit
                .get(anchor.seq.to_be_bytes())
                .map_err(|e| Error::store("audit", e))?
                .map(|v| dec::<AuditEvent>("audit", &v))
                .transpose()?;
            super::check_new_audit_start(
                anchor,
                current.as_ref(),
                head.as_ref().map(|h| h.0),
                event.as_ref(),
            )?;
            self.meta
                .insert(META_AUDIT_START, enc(anchor)?)
                .map_err(|e| Error::store("set audit start", e))?;
        }
        self.durable()
    }

    fn delete_audit_below(&self, limit: usize) -> Result<usize> {
        let Some(start) = self.read_audit_start()? else {
            return Ok(0);
        };
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in self.audit.range(..=start.seq.to_be_bytes()).take(limit) {
            let (k, _) = kv.map_err(|e| Error::store("scan audit", e))?;
            batch.remove(k);
            n += 1;
        }
        self.audit
            .apply_batch(batch)
            .map_err(|e| Error::store("truncate audit", e))?;
        // Checkpoint keys are `seq(BE) time(BE)`: every key below `start.seq` sorts first.
        let mut batch = sled::Batch::default();
        for kv in self
            .audit_checkpoints
            .range(..start.seq.to_be_bytes())
            .take(limit - n.min(limit))
        {
            let (k, _) = kv.map_err(|e| Error::store("scan audit checkpoints", e))?;
            batch.remove(k);
            n += 1;
        }
        self.audit_checkpoints
            .apply_batch(batch)
            .map_err(|e| Error::store("truncate audit checkpoints", e))?;
        if n > 0 {
            self.durable()?;
        }
        Ok(n)
    }
}

impl SledStore {
    /// Testing hook: delete a raw audit event, as an attacker with write access to the store
    /// would (no start recorded, head untouched).
    #[doc(hidden)]
    pub fn delete_audit_event_for_test(&self, seq: u64) -> Result<()> {
        self.audit
            .remove(seq.to_be_bytes())
            .map_err(|e| Error::store("audit", e))?;
        self.flush_group()
    }
}
