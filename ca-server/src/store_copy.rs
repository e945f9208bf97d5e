//! `ca-server store copy`: move a dev or single-node installation from its sled store to an
//! empty PostgreSQL store, in one PostgreSQL transaction, checked before it is committed.
//!
//! What is copied: certificates (revocation state, lineage, generation), revocation entries,
//! lineage locks, enrollment tokens (used and unused, with their use time), pre-signed OCSP
//! responses, the CRL number (the target's next number is greater than every number the
//! source issued) and the archived CRLs, the audit events (sequence, time, previous hash and hash unchanged), the
//! audit head and the signed audit checkpoints.
//!
//! The source is read through the store traits (plus [`SledStore::current_crl_number`] and
//! [`SledStore::for_each_lineage_lock`]); the target is written through
//! [`PgStore::import`], which refuses a non-empty database and rolls back on any error.
//! The latest signed CRL of each scope (the CRL archive) is copied as signed.
//! Before the commit, the rows per kind written are compared with the rows read, and the
//! audit log is verified inside the transaction (hash chain, checkpoints, signatures with the
//! audit key when given); after the commit it is verified again as `audit verify` does. The
//! copy records itself in the target's log (`store.copy`, after the copied head, in the same
//! transaction).

use ca_core::audit::{AuditEvent, AuditKey, AuditReport, NewAuditEvent};
use ca_core::store::prelude::*;
use ca_core::store::{PgImport, PgStore, SledStore, StoreCounts, TargetNotEmpty};
use clap::{ArgGroup, Args};
use serde::Serialize;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// `store copy` arguments.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("target")
        .required(true)
        .args(["to_env", "to_file", "to", "config"])
))]
pub struct CopyArgs {
    /// The sled store to copy: the server's data directory (holding `store/`) or the store
    /// directory itself. The server using it must be stopped.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Target: the PostgreSQL URL is in this environment variable.
    #[arg(long, value_name = "VAR")]
    pub to_env: Option<String>,
    /// Target: the PostgreSQL URL is in this file (trailing newline ignored).
    #[arg(long, value_name = "PATH")]
    pub to_file: Option<PathBuf>,
    /// Target: the PostgreSQL URL itself, only without a password (a command line is
    /// visible to every user of the host); a URL with one is refused: use --to-env or
    /// --to-file.
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
    /// Target: the `[store]` (kind = "postgres") of this server configuration.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The audit public key (PEM): checkpoint signatures are checked with it, on the source
    /// before the copy and on the target after it. Without it, checkpoints are checked
    /// against the events but their signatures are not.
    #[arg(long, value_name = "PEM")]
    pub audit_key: Option<PathBuf>,
    /// Print the summary (or the error and its code) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Why a copy did not happen, or did not verify. Each has a stable [`StoreCopyError::code`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreCopyError {
    /// `--to` carries a password.
    #[error(
        "--to: the database URL carries a password, and a command line is visible to every \
         user of this host (ps, /proc): put the URL in an environment variable (--to-env VAR) \
         or in a file only you can read (--to-file PATH)"
    )]
    PasswordOnCommandLine,
    /// The target's URL could not be read or parsed, or the configuration names no
    /// PostgreSQL store.
    #[error("{0}")]
    TargetUrl(String),
    /// The target database could not be opened.
    #[error("opening the target PostgreSQL store: {0}")]
    TargetUnavailable(#[source] ca_core::Error),
    /// Nothing to copy at `--from`.
    #[error(
        "no sled store at {0}: give the server's data directory (holding store/) or the store \
         directory itself"
    )]
    SourceMissing(PathBuf),
    /// The sled store is open in another process.
    #[error(
        "the sled store {path} is in use, most likely by a running ca-server: stop the server, \
         then copy (a copy reads a store nothing writes to)"
    )]
    SourceInUse {
        /// The store directory.
        path: PathBuf,
        /// sled's error.
        #[source]
        source: ca_core::Error,
    },
    /// The sled store could not be opened or read.
    #[error("reading the sled store {path}: {source}")]
    Source {
        /// The store directory.
        path: PathBuf,
        /// The store's error.
        #[source]
        source: ca_core::Error,
    },
    /// The audit key file could not be read.
    #[error("the audit public key {path}: {reason}")]
    AuditKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The source's audit log does not verify: its copy would not either.
    #[error(
        "the source's audit log does not verify, so nothing was copied (`ca-server audit \
         verify` on the source shows the same): {0}"
    )]
    SourceAudit(#[source] ca_core::Error),
    /// The target holds data.
    #[error("{0}")]
    TargetNotEmpty(String),
    /// A read or a write failed during the copy: the transaction was rolled back.
    #[error("the copy failed and was rolled back, the target is unchanged: {0}")]
    Copy(#[source] ca_core::Error),
    /// What was written does not match what was read: the transaction was rolled back.
    #[error(
        "the copy does not match its source, so it was rolled back (the target is unchanged): {0}"
    )]
    Mismatch(String),
    /// The committed copy does not verify.
    #[error(
        "the copy was committed but does not verify on PostgreSQL: {0}. Do not switch the \
         server to it: recreate the database empty and copy again"
    )]
    AfterCommit(String),
}

impl StoreCopyError {
    /// The stable, machine-readable code of this error (scripts match on it).
    pub fn code(&self) -> &'static str {
        match self {
            StoreCopyError::PasswordOnCommandLine => "url_has_password",
            StoreCopyError::TargetUrl(_) => "target_url",
            StoreCopyError::TargetUnavailable(_) => "target_unavailable",
            StoreCopyError::SourceMissing(_) => "source_missing",
            StoreCopyError::SourceInUse { .. } => "source_in_use",
            StoreCopyError::Source { .. } => "source_unreadable",
            StoreCopyError::AuditKey { .. } => "audit_key",
            StoreCopyError::SourceAudit(_) => "source_audit_invalid",
            StoreCopyError::TargetNotEmpty(_) => "target_not_empty",
            StoreCopyError::Copy(_) => "copy_failed",
            StoreCopyError::Mismatch(_) => "copy_mismatch",
            StoreCopyError::AfterCommit(_) => "verification_failed",
        }
    }
}

impl From<ca_core::Error> for StoreCopyError {
    /// An error inside [`PgStore::import`]: the refusal of a non-empty target, or a failed
    /// read or write (rolled back).
    fn from(e: ca_core::Error) -> Self {
        if let ca_core::Error::Store { source, .. } = &e {
            if let Some(t) = source.downcast_ref::<TargetNotEmpty>() {
                return StoreCopyError::TargetNotEmpty(t.to_string());
            }
        }
        StoreCopyError::Copy(e)
    }
}

/// The audit head: sequence number and hash of the last event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Head {
    /// Sequence number.
    pub seq: u64,
    /// Hash (hex).
    pub hash: String,
}

/// What a copy wrote and how the target verified.
#[derive(Debug, Serialize)]
pub struct CopySummary {
    /// The sled store copied.
    pub source: PathBuf,
    /// Rows per kind copied: read from the source, written and checked in the transaction
    /// (the `store.copy` audit event is not counted).
    pub counts: StoreCounts,
    /// The last CRL number the source allocated; the target's next is greater.
    pub crl_number: u64,
    /// The source's audit head, copied.
    pub audit_head: Option<Head>,
    /// The event that records the copy (`store.copy`), right after the copied head: the
    /// target's head.
    pub recorded: Head,
    /// The target's audit log as `audit verify` checks it, after the commit.
    pub audit: AuditReport,
}

/// The sled store directory `--from` names: DIR itself if it is a sled store, else DIR/store.
pub fn source_dir(from: &Path) -> Result<PathBuf, StoreCopyError> {
    // sled keeps its configuration in `conf` and its log in `db`.
    let is_store = |d: &Path| d.join("conf").is_file() && d.join("db").is_file();
    if is_store(from) {
        return Ok(from.to_path_buf());
    }
    let inner = from.join("store");
    if is_store(&inner) {
        return Ok(inner);
    }
    Err(StoreCopyError::SourceMissing(from.to_path_buf()))
}

/// Open the sled store at `dir` (which must exist: opening creates a missing one). Waits a
/// few seconds for sled's lock, then reports the store in use.
pub fn open_source(dir: &Path) -> Result<SledStore, StoreCopyError> {
    SledStore::open(dir).map_err(|source| {
        let chain = error_chain(&source);
        if chain.contains("could not acquire lock") || chain.contains("WouldBlock") {
            StoreCopyError::SourceInUse {
                path: dir.to_path_buf(),
                source,
            }
        } else {
            StoreCopyError::Source {
                path: dir.to_path_buf(),
                source,
            }
        }
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The target URL the arguments name. Errors never repeat the URL.
pub fn target_url(args: &CopyArgs) -> Result<Zeroizing<String>, StoreCopyError> {
    let url = if let Some(var) = &args.to_env {
        std::env::var(var).map(Zeroizing::new).map_err(|_| {
            StoreCopyError::TargetUrl(format!(
                "--to-env: environment variable {var} is not set or not UTF-8"
            ))
        })?
    } else if let Some(path) = &args.to_file {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            StoreCopyError::TargetUrl(format!("--to-file: cannot read {}: {e}", path.display()))
        })?);
        Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_string())
    } else if let Some(url) = &args.to {
        let has_password = PgStore::url_has_password(url)
            .map_err(|e| StoreCopyError::TargetUrl(format!("--to: not a PostgreSQL URL: {e}")))?;
        if has_password {
            return Err(StoreCopyError::PasswordOnCommandLine);
        }
        Zeroizing::new(url.clone())
    } else if let Some(config) = &args.config {
        let cfg = crate::config::ServerConfig::load(config)
            .map_err(|e| StoreCopyError::TargetUrl(format!("--config: {e}")))?;
        if cfg.store.kind != crate::config::StoreKind::Postgres {
            return Err(StoreCopyError::TargetUrl(format!(
                "--config: the [store] of {} is sled: set kind = \"postgres\" and url there, or \
                 name the target with --to-env or --to-file",
                config.display()
            )));
        }
        let source = cfg.store.url.as_ref().ok_or_else(|| {
            StoreCopyError::TargetUrl(format!("--config: {} has no store.url", config.display()))
        })?;
        source
            .read()
            .map_err(|e| StoreCopyError::TargetUrl(format!("--config: {e}")))?
    } else {
        return Err(StoreCopyError::TargetUrl(
            "no target: give --to-env VAR, --to-file PATH, --to URL or --config FILE".into(),
        ));
    };
    if url.trim().is_empty() {
        return Err(StoreCopyError::TargetUrl(
            "the target database URL is empty".into(),
        ));
    }
    Ok(url)
}

fn read_audit_key(path: &Path) -> Result<AuditKey, StoreCopyError> {
    let bad = |reason: String| StoreCopyError::AuditKey {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    AuditKey::from_pem(&pem).map_err(|e| bad(e.to_string()))
}

/// Copy everything in `source` into the empty `target`, in one transaction; verify before
/// the commit (counts, CRL number, audit chain and checkpoints) and after it (`audit verify`).
pub fn copy(
    source: &SledStore,
    source_path: &Path,
    target: &PgStore,
    key: Option<&AuditKey>,
) -> Result<CopySummary, StoreCopyError> {
    let src = |source| StoreCopyError::Source {
        path: source_path.to_path_buf(),
        source,
    };
    let source_report = source
        .verify_audit_log(key)
        .map_err(StoreCopyError::SourceAudit)?;
    let head = source.audit_head().map_err(src)?;
    let crl_number = source.current_crl_number().map_err(src)?;
    let source_cert_counts = source.cert_counts().map_err(src)?;
    let (read, record) = target.import(
        |imp: &mut PgImport<'_, '_>| -> Result<(StoreCounts, AuditEvent), StoreCopyError> {
            let mut n = StoreCounts::default();
            source.for_each_cert(&mut |rec| {
                imp.insert_cert(&rec)?;
                n.certs += 1;
                Ok(())
            })?;
            source.for_each_revoked(&mut |entry| {
                imp.insert_revoked(&entry)?;
                n.revoked += 1;
                Ok(())
            })?;
            source.for_each_lineage_lock(&mut |lineage, lock| {
                imp.lock_lineage(&lineage, &lock)?;
                n.lineage_locks += 1;
                Ok(())
            })?;
            for tok in source.list_tokens()? {
                imp.insert_token(&tok)?;
                n.tokens += 1;
                n.used_tokens += u64::from(tok.used_at.is_some());
            }
            source.for_each_ocsp_response(&mut |resp| {
                imp.put_ocsp_response(&resp)?;
                n.ocsp_responses += 1;
                Ok(())
            })?;
            for ev in source.audit_iter(1) {
                imp.insert_audit_event(&ev?)?;
                n.audit_events += 1;
            }
            for cp in source.audit_checkpoints(0) {
                imp.put_audit_checkpoint(&cp?)?;
                n.audit_checkpoints += 1;
            }
            source.for_each_archived_crl(&mut |crl| {
                imp.put_crl(&crl)?;
                n.archived_crls += 1;
                Ok(())
            })?;
            imp.set_audit_head(head.as_ref().map(|(s, h)| (*s, h.as_str())))?;
            imp.set_crl_number(crl_number)?;

            // Checked inside the transaction: a mismatch rolls the copy back.
            let written = imp.counts()?;
            let diffs = n.differences(&written);
            if !diffs.is_empty() {
                return Err(StoreCopyError::Mismatch(describe(&diffs)));
            }
            // The certificate counters the inserts moved: the source's, key for key.
            if imp.cert_counts()? != source_cert_counts {
                return Err(StoreCopyError::Mismatch(
                    "the certificate counters written differ from the source's".into(),
                ));
            }
            let written_crl = imp.crl_number()?;
            if written_crl != crl_number {
                return Err(StoreCopyError::Mismatch(format!(
                    "CRL number {crl_number} read, {written_crl} written"
                )));
            }
            let report = imp
                .verify_audit_log(key)
                .map_err(|e| StoreCopyError::Mismatch(format!("the copied audit log: {e}")))?;
            same_audit(&source_report, &report).map_err(StoreCopyError::Mismatch)?;

            // The move itself goes into the log, chained after the copied head, in the same
            // transaction: the audit log says when and by whom the store was moved.
            let (os_user, host) = crate::breakglass::operator_identity();
            let record = imp.append_audit(
                NewAuditEvent::ok(
                    format!("store-copy: {os_user}@{host}"),
                    "store.copy",
                    source_path.display().to_string(),
                )
                .with_detail(serde_json::json!({
                    "from": "sled",
                    "to": "postgres",
                    "counts": n,
                    "crl_number": crl_number,
                    "source_head": head.as_ref().map(|(seq, hash)| {
                        serde_json::json!({ "seq": seq, "hash": hash })
                    }),
                    "os_user": os_user,
                    "host": host,
                })),
            )?;
            Ok((n, record))
        },
    )?;

    // Committed: check it as the server's `audit verify` will, through the store. A node
    // started on the target meanwhile may have added to it: nothing may be missing, more is
    // fine.
    let after = |what: String| StoreCopyError::AfterCommit(what);
    let audit = target
        .verify_audit_log(key)
        .map_err(|e| after(format!("audit log: {e}")))?;
    let at_record = target
        .audit_events(record.seq, 1)
        .map_err(|e| after(format!("audit log: {e}")))?;
    if record.seq != source_report.last_seq + 1
        || record.prev_hash != source_report.last_hash
        || at_record.first().map(|e| &e.hash) != Some(&record.hash)
        || audit.checkpoints < source_report.checkpoints
    {
        return Err(after(format!(
            "audit log: the event recording the copy ({}) does not follow the copied head \
             ({} {}), or checkpoints are missing ({} of {})",
            record.seq,
            source_report.last_seq,
            source_report.last_hash,
            audit.checkpoints,
            source_report.checkpoints
        )));
    }
    let counts = target.counts().map_err(|e| after(e.to_string()))?;
    let expected = StoreCounts {
        audit_events: read.audit_events + 1,
        ..read.clone()
    };
    let missing: Vec<_> = expected
        .differences(&counts)
        .into_iter()
        .filter(|(_, copied, found)| found < copied)
        .collect();
    if !missing.is_empty() {
        return Err(after(describe(&missing)));
    }
    let target_crl = target
        .current_crl_number()
        .map_err(|e| after(e.to_string()))?;
    if target_crl < crl_number {
        return Err(after(format!(
            "CRL number {target_crl}, the source's is {crl_number}"
        )));
    }
    Ok(CopySummary {
        source: source_path.to_path_buf(),
        counts: read,
        crl_number,
        audit_head: head.map(|(seq, hash)| Head { seq, hash }),
        recorded: Head {
            seq: record.seq,
            hash: record.hash,
        },
        audit,
    })
}

fn describe(diffs: &[(&str, u64, u64)]) -> String {
    diffs
        .iter()
        .map(|(what, read, written)| format!("{what}: {read} read, {written} written"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The two verifications saw the same log: events, last event, checkpoints.
fn same_audit(source: &AuditReport, target: &AuditReport) -> Result<(), String> {
    if (
        source.events,
        source.last_seq,
        &source.last_hash,
        source.checkpoints,
    ) != (
        target.events,
        target.last_seq,
        &target.last_hash,
        target.checkpoints,
    ) {
        return Err(format!(
            "audit log: source {} events to {} ({}) with {} checkpoints, copy {} events to {} \
             ({}) with {} checkpoints",
            source.events,
            source.last_seq,
            source.last_hash,
            source.checkpoints,
            target.events,
            target.last_seq,
            target.last_hash,
            target.checkpoints
        ));
    }
    Ok(())
}

/// Resolve the arguments, open both stores and copy (blocking: run it on a thread that may
/// block).
pub fn run_blocking(args: &CopyArgs) -> Result<CopySummary, StoreCopyError> {
    // Refuse a password on the command line before touching anything.
    let url = target_url(args)?;
    let key = args.audit_key.as_deref().map(read_audit_key).transpose()?;
    let dir = source_dir(&args.from)?;
    let source = open_source(&dir)?;
    let target =
        PgStore::open_with_pool_size(&url, 2).map_err(StoreCopyError::TargetUnavailable)?;
    copy(&source, &dir, &target, key.as_ref())
}

/// `ca-server store copy`: run it and print the summary (or the error with its code).
pub async fn run(args: CopyArgs) -> anyhow::Result<()> {
    let json = args.json;
    let result = tokio::task::spawn_blocking(move || run_blocking(&args)).await?;
    match result {
        Ok(s) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", summary_text(&s));
            }
            Ok(())
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "ok": false, "code": e.code(), "error": e.to_string(),
                    }))?
                );
            }
            Err(anyhow::anyhow!("store copy [{}]: {e}", e.code()))
        }
    }
}

fn summary_text(s: &CopySummary) -> String {
    let c = &s.counts;
    let head = match &s.audit_head {
        Some(h) => format!("sequence {} hash {}", h.seq, h.hash),
        None => "none (empty log)".into(),
    };
    let signatures = match (&s.audit.audit_key_sha256, s.audit.signatures_checked) {
        (Some(k), true) => format!("checkpoint signatures verified with audit key {k}"),
        _ => "checkpoint signatures NOT checked (give --audit-key)".into(),
    };
    format!(
        "copied {} to PostgreSQL in one transaction (committed)\n\
         \x20 certificates       {}\n\
         \x20 revocation entries {}\n\
         \x20 locked lineages    {}\n\
         \x20 tokens             {} ({} used)\n\
         \x20 OCSP responses     {}\n\
         \x20 audit events       {} copied, {} checkpoints\n\
         \x20 audit head         {head} (copied)\n\
         \x20 recorded as        audit event {} (store.copy) hash {}\n\
         \x20 CRL number         {} (the next CRL is numbered {} or higher), {} archived CRLs\n\
         verified: rows per kind equal (the source's, and the record); the audit chain \
         verifies on PostgreSQL, {signatures}\n\
         next: set [store] kind = \"postgres\" and url in the server's configuration and start \
         it; keep {} as a backup and never start a server on it again\n",
        s.source.display(),
        c.certs,
        c.revoked,
        c.lineage_locks,
        c.tokens,
        c.used_tokens,
        c.ocsp_responses,
        c.audit_events,
        c.audit_checkpoints,
        s.recorded.seq,
        s.recorded.hash,
        s.crl_number,
        s.crl_number + 1,
        c.archived_crls,
        s.source.display(),
    )
}
