//! Bulk import into an empty PostgreSQL store, in one transaction: what `ca-server store
//! copy` writes through when it moves a sled store here.
//!
//! [`PgStore::import`] locks every table of the store for the transaction, refuses a target
//! that holds anything ([`TargetNotEmpty`], nothing changed), hands the caller a
//! [`PgImport`] that writes records exactly as given (revocation state, lineage, generation,
//! token use, audit events with their sequence and hashes), and commits only if the caller
//! returns `Ok`: a failure at any row leaves the database as empty as it was. The same
//! transaction can read back what it wrote ([`PgImport::counts`],
//! [`PgImport::verify_audit_log`]), so a copy is checked before it is committed.

use super::conn::{Db, Tx};
use super::{codec, dec, enc, nanos, pg, seq_col, seq_of, PgStore, BATCH};
use crate::audit::{
    self, AuditEvent, AuditKey, AuditReport, Checkpoint, LogVerifier, NewAuditEvent,
};
use crate::error::{Error, Result};
use crate::revocation::RevokedEntry;
use crate::store::{CertRecord, LineageLock, StoredCrl, StoredOcspResponse, TokenRecord};
use r2d2_postgres::postgres::{self, Statement};
use serde::{Deserialize, Serialize};

/// Every table of the store, in the order they are locked.
const TABLES: &str =
    "certs, revoked, lineages, tokens, ocsp_responses, ocsp_groups, crl_number, crls, \
                      audit_events, audit_head, audit_checkpoints, cert_counts";

/// How long [`PgStore::import`] waits for the tables' locks (a node using the database holds
/// them only for its own short transactions).
const LOCK_TIMEOUT: &str = "10s";

/// The target of an import already holds data (or a CRL number or audit head): an import
/// writes only into an empty store, so nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error(
    "the target PostgreSQL store is not empty ({found}): a copy writes only into an empty, \
     freshly created database; nothing was changed"
)]
pub struct TargetNotEmpty {
    /// What was found, e.g. `12 rows in certs, CRL number 4`.
    pub found: String,
}

/// Rows per kind in a store: what a copy compares between its source and its target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCounts {
    /// Certificates.
    pub certs: u64,
    /// Revocation entries (the CRL's source).
    pub revoked: u64,
    /// Locked lineages.
    pub lineage_locks: u64,
    /// Enrollment tokens.
    pub tokens: u64,
    /// Of them, used ones.
    pub used_tokens: u64,
    /// Pre-signed OCSP responses.
    pub ocsp_responses: u64,
    /// Audit events.
    pub audit_events: u64,
    /// Signed audit checkpoints.
    pub audit_checkpoints: u64,
    /// Archived CRLs (the latest of each scope).
    #[serde(default)]
    pub archived_crls: u64,
}

impl StoreCounts {
    /// The kinds whose counts differ between `self` and `other`: `(kind, self, other)`.
    pub fn differences(&self, other: &StoreCounts) -> Vec<(&'static str, u64, u64)> {
        let rows = |c: &StoreCounts| {
            [
                ("certificates", c.certs),
                ("revocation entries", c.revoked),
                ("locked lineages", c.lineage_locks),
                ("tokens", c.tokens),
                ("used tokens", c.used_tokens),
                ("OCSP responses", c.ocsp_responses),
                ("audit events", c.audit_events),
                ("audit checkpoints", c.audit_checkpoints),
                ("archived CRLs", c.archived_crls),
            ]
        };
        rows(self)
            .into_iter()
            .zip(rows(other))
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, b)| (a.0, a.1, b.1))
            .collect()
    }
}

fn count(c: &mut impl Db, sql: &str) -> Result<u64> {
    let n: i64 = c.query_one(sql, &[]).map_err(pg("count rows"))?.get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

fn counts_in(c: &mut impl Db) -> Result<StoreCounts> {
    Ok(StoreCounts {
        certs: count(c, "SELECT count(*) FROM certs")?,
        revoked: count(c, "SELECT count(*) FROM revoked")?,
        lineage_locks: count(c, "SELECT count(*) FROM lineages WHERE lock IS NOT NULL")?,
        tokens: count(c, "SELECT count(*) FROM tokens")?,
        used_tokens: count(
            c,
            "SELECT count(*) FROM tokens WHERE used_at_ns IS NOT NULL",
        )?,
        ocsp_responses: count(c, "SELECT count(*) FROM ocsp_responses")?,
        audit_events: count(c, "SELECT count(*) FROM audit_events")?,
        audit_checkpoints: count(c, "SELECT count(*) FROM audit_checkpoints")?,
        archived_crls: count(c, "SELECT count(*) FROM crls")?,
    })
}

/// The stored CRL number (the last one allocated; 0 if none was).
fn crl_number_in(c: &mut impl Db) -> Result<u64> {
    let n: i64 = c
        .query_one("SELECT n FROM crl_number", &[])
        .map_err(pg("read CRL number"))?
        .get(0);
    u64::try_from(n).map_err(|_| Error::Corrupt(format!("CRL number {n}")))
}

impl PgStore {
    /// Rows per kind in the database (a copy's check, and for operators).
    pub fn counts(&self) -> Result<StoreCounts> {
        counts_in(&mut *self.conn()?)
    }

    /// The last CRL number allocated (0 if none was), read without allocating one.
    pub fn current_crl_number(&self) -> Result<u64> {
        crl_number_in(&mut *self.conn()?)
    }

    /// Whether a connection string (libpq URL or key=value) carries a password. An
    /// unparsable string is an error that does not repeat it.
    pub fn url_has_password(url: &str) -> Result<bool> {
        let config: postgres::Config = url.parse().map_err(pg("parse database URL"))?;
        Ok(config.get_password().is_some())
    }

    /// Import into this store, which must be empty, in one transaction: lock every table,
    /// check that nothing is stored (no row, CRL number 0, no audit head), run `f`, and commit
    /// if it returns `Ok`. Any error, from `f` or from a row it writes, rolls everything back.
    ///
    /// Errors: [`TargetNotEmpty`] (inside [`Error::Store`]) when the database holds anything;
    /// whatever `f` returns.
    pub fn import<T, E: From<Error>>(
        &self,
        f: impl FnOnce(&mut PgImport<'_, '_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mut c = self.conn()?;
        let mut tx = c.transaction().map_err(pg("import"))?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; \
             LOCK TABLE {TABLES} IN ACCESS EXCLUSIVE MODE"
        ))
        .map_err(pg("lock the store's tables"))?;
        let mut found = Vec::new();
        let counts = counts_in(&mut tx)?;
        let lineages = count(&mut tx, "SELECT count(*) FROM lineages")?;
        for (what, n) in [
            ("certs", counts.certs),
            ("revoked", counts.revoked),
            ("lineages", lineages),
            ("tokens", counts.tokens),
            ("ocsp_responses", counts.ocsp_responses),
            ("audit_events", counts.audit_events),
            ("audit_checkpoints", counts.audit_checkpoints),
            ("crls", counts.archived_crls),
        ] {
            if n > 0 {
                found.push(format!("{n} rows in {what}"));
            }
        }
        let crl = crl_number_in(&mut tx)?;
        if crl > 0 {
            found.push(format!("CRL number {crl}"));
        }
        let head: Option<i64> = tx
            .query_opt("SELECT seq FROM audit_head", &[])
            .map_err(pg("audit head"))?
            .and_then(|r| r.get(0));
        if let Some(seq) = head {
            found.push(format!("audit head at {seq}"));
        }
        if !found.is_empty() {
            return Err(Error::store(
                "import",
                TargetNotEmpty {
                    found: found.join(", "),
                },
            )
            .into());
        }
        let mut import = PgImport::prepare(&mut tx)?;
        let out = f(&mut import)?;
        drop(import);
        tx.commit().map_err(pg("commit the import"))?;
        Ok(out)
    }
}

/// Writes into an empty store inside [`PgStore::import`]'s transaction. Every write keeps
/// the record as given; a row that conflicts with one already written is an error (which
/// rolls the import back), never an overwrite.
pub struct PgImport<'t, 'c> {
    tx: &'t mut Tx<'c>,
    revoked: Statement,
    lineage: Statement,
    token: Statement,
    ocsp: Statement,
    event: Statement,
    checkpoint: Statement,
    crl: Statement,
}

impl std::fmt::Debug for PgImport<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgImport").finish_non_exhaustive()
    }
}

impl<'t, 'c> PgImport<'t, 'c> {
    fn prepare(tx: &'t mut Tx<'c>) -> Result<Self> {
        let mut p = |sql: &str| tx.prepare(sql).map_err(pg("prepare import"));
        Ok(PgImport {
            // The shard from the certificate imported before it (README "CRLs").
            revoked: p("INSERT INTO revoked (serial, entry, shard) VALUES ($1, $2, $3)")?,
            lineage: p("INSERT INTO lineages (lineage, lock) VALUES ($1, $2)")?,
            token: p(
                "INSERT INTO tokens (hash, expires_at_ns, used_at_ns, rec) VALUES ($1, $2, $3, $4)",
            )?,
            ocsp: p("INSERT INTO ocsp_responses (serial, rec) VALUES ($1, $2)")?,
            event: p("INSERT INTO audit_events (seq, event) VALUES ($1, $2)")?,
            checkpoint: p("INSERT INTO audit_checkpoints (seq, time_s, cp) VALUES ($1, $2, $3)")?,
            crl: p(
                "INSERT INTO crls (scope, number, this_update_s, next_update_s, der) \
                 VALUES ($1, $2, $3, $4, $5)",
            )?,
            tx,
        })
    }

    /// A certificate, with its revocation state, lineage and generation as stored.
    pub fn insert_cert(&mut self, rec: &CertRecord) -> Result<()> {
        if !PgStore::insert_cert_in(&mut *self.tx, rec)? {
            return Err(Error::Corrupt(format!(
                "certificate serial {} is imported twice",
                rec.serial_hex()
            )));
        }
        Ok(())
    }

    /// A revocation entry (its certificate must have been imported).
    pub fn insert_revoked(&mut self, entry: &RevokedEntry) -> Result<()> {
        let shard = match self
            .tx
            .query_opt("SELECT rec FROM certs WHERE serial = $1", &[&entry.serial])
            .map_err(pg("import revocation"))?
        {
            Some(row) => super::shard_column(&codec::decode_cert(row.get::<_, &[u8]>(0))?.der),
            None => None,
        };
        self.tx
            .execute(&self.revoked, &[&entry.serial, &enc(entry)?, &shard])
            .map_err(pg("import revocation"))?;
        Ok(())
    }

    /// A lineage's lock.
    pub fn lock_lineage(&mut self, lineage: &[u8], lock: &LineageLock) -> Result<()> {
        self.tx
            .execute(&self.lineage, &[&lineage, &enc(lock)?])
            .map_err(pg("import lineage lock"))?;
        Ok(())
    }

    /// An enrollment token, used or not (its `used_at` is kept).
    pub fn insert_token(&mut self, tok: &TokenRecord) -> Result<()> {
        let used = tok
            .used_at
            .map(|t| nanos("token use time", t))
            .transpose()?;
        // As `insert_token`: an expiry past what nanoseconds hold is "never".
        let expires = tok.expires_at.timestamp_nanos_opt().unwrap_or(i64::MAX);
        self.tx
            .execute(&self.token, &[&tok.hash, &expires, &used, &enc(tok)?])
            .map_err(pg("import token"))?;
        Ok(())
    }

    /// A pre-signed OCSP response.
    pub fn put_ocsp_response(&mut self, resp: &StoredOcspResponse) -> Result<()> {
        self.tx
            .execute(&self.ocsp, &[&resp.serial, &codec::encode_ocsp(resp)?])
            .map_err(pg("import OCSP response"))?;
        Ok(())
    }

    /// An audit event as sealed (sequence, time, previous hash and hash unchanged). The
    /// head is set apart, by [`PgImport::set_audit_head`].
    pub fn insert_audit_event(&mut self, ev: &AuditEvent) -> Result<()> {
        self.tx
            .execute(&self.event, &[&seq_col(ev.seq), &enc(ev)?])
            .map_err(pg("import audit event"))?;
        Ok(())
    }

    /// A signed audit checkpoint.
    pub fn put_audit_checkpoint(&mut self, cp: &Checkpoint) -> Result<()> {
        self.tx
            .execute(
                &self.checkpoint,
                &[&seq_col(cp.seq), &cp.time.timestamp().max(0), &enc(cp)?],
            )
            .map_err(pg("import audit checkpoint"))?;
        Ok(())
    }

    /// An archived CRL (the latest of its scope), as signed.
    pub fn put_crl(&mut self, crl: &StoredCrl) -> Result<()> {
        let number = i64::try_from(crl.number)
            .map_err(|_| Error::Corrupt(format!("CRL number {}", crl.number)))?;
        self.tx
            .execute(
                &self.crl,
                &[
                    &crl.scope,
                    &number,
                    &crl.this_update.timestamp(),
                    &crl.next_update.timestamp(),
                    &crl.der,
                ],
            )
            .map_err(pg("import CRL"))?;
        Ok(())
    }

    /// The audit chain's head `(seq, hash)` (none: the empty log).
    pub fn set_audit_head(&mut self, head: Option<(u64, &str)>) -> Result<()> {
        let (seq, hash) = match head {
            Some((s, h)) => (Some(seq_col(s)), Some(h)),
            None => (None, None),
        };
        self.tx
            .execute("UPDATE audit_head SET seq = $1, hash = $2", &[&seq, &hash])
            .map_err(pg("import audit head"))?;
        Ok(())
    }

    /// Append a new event to the imported chain (after its head, as
    /// [`crate::store::AuditLog::append_audit`] does): how an import records itself.
    pub fn append_audit(&mut self, ev: NewAuditEvent) -> Result<AuditEvent> {
        let (prev_seq, prev_hash) = self
            .audit_head()?
            .unwrap_or_else(|| (0, audit::GENESIS.to_string()));
        let sealed = audit::seal(
            prev_seq,
            &prev_hash,
            crate::clock::truncate(chrono::Utc::now()),
            ev,
        )?;
        self.insert_audit_event(&sealed)?;
        self.set_audit_head(Some((sealed.seq, &sealed.hash)))?;
        Ok(sealed)
    }

    /// The last CRL number allocated: the store's next one is `n + 1`.
    pub fn set_crl_number(&mut self, n: u64) -> Result<()> {
        let n = i64::try_from(n).map_err(|_| Error::Corrupt(format!("CRL number {n}")))?;
        self.tx
            .execute("UPDATE crl_number SET n = $1", &[&n])
            .map_err(pg("import CRL number"))?;
        Ok(())
    }

    /// Rows per kind written so far (read inside the transaction).
    pub fn counts(&mut self) -> Result<StoreCounts> {
        counts_in(&mut *self.tx)
    }

    /// The CRL number as written.
    pub fn crl_number(&mut self) -> Result<u64> {
        crl_number_in(&mut *self.tx)
    }

    /// The audit head as written.
    pub fn audit_head(&mut self) -> Result<Option<(u64, String)>> {
        let row = self
            .tx
            .query_opt("SELECT seq, hash FROM audit_head", &[])
            .map_err(pg("audit head"))?;
        match row.map(|r| (r.get::<_, Option<i64>>(0), r.get::<_, Option<String>>(1))) {
            Some((Some(seq), Some(hash))) => Ok(Some((seq_of(seq)?, hash))),
            _ => Ok(None),
        }
    }

    /// Check the audit log as written, inside the transaction, as
    /// [`crate::store::AuditLog::verify_audit_log`] checks a store: the hash chain, every
    /// checkpoint against the event at its sequence (and its signature with `key`), no
    /// checkpoint beyond the last event, and the head at the last event.
    pub fn verify_audit_log(&mut self, key: Option<&AuditKey>) -> Result<AuditReport> {
        let mut v = LogVerifier::new(key.cloned());
        let mut checkpoints = self.checkpoint_rows()?.into_iter().peekable();
        let feed = |v: &mut LogVerifier,
                    cps: &mut std::iter::Peekable<std::vec::IntoIter<Checkpoint>>|
         -> Result<()> {
            while let Some(cp) = cps.next_if(|c| c.seq <= v.seq()) {
                v.checkpoint(&cp)?;
            }
            Ok(())
        };
        feed(&mut v, &mut checkpoints)?;
        let mut after: i64 = 0;
        loop {
            let rows = self
                .tx
                .query(
                    "SELECT seq, event FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&after, &BATCH],
                )
                .map_err(pg("scan audit"))?;
            for r in &rows {
                let ev: AuditEvent = dec("audit", r.get::<_, &[u8]>(1))?;
                v.event(&ev)?;
                feed(&mut v, &mut checkpoints)?;
            }
            match rows.last() {
                Some(r) if rows.len() as i64 == BATCH => after = r.get(0),
                _ => break,
            }
        }
        let report = v.finish(checkpoints.next().as_ref())?;
        let head = self.audit_head()?;
        match head {
            None if report.events > 0 => Err(Error::AuditChain {
                seq: report.last_seq,
                reason: format!(
                    "the audit head is missing while {} events exist",
                    report.events
                ),
            }),
            Some((seq, hash)) if seq != report.last_seq || hash != report.last_hash => {
                Err(Error::AuditChain {
                    seq: report.last_seq,
                    reason: format!(
                        "the audit head ({seq}) is not the last event ({})",
                        report.last_seq
                    ),
                })
            }
            _ => Ok(report),
        }
    }

    /// The certificate counters as written so far ([`crate::store::CertCounts`]): a copy
    /// compares them with its source's.
    pub fn cert_counts(&mut self) -> Result<Vec<crate::store::CertCount>> {
        super::cert_counts_in(&mut *self.tx)
    }

    /// Every checkpoint written, in `(seq, time)` order (one per checkpoint signing: few).
    fn checkpoint_rows(&mut self) -> Result<Vec<Checkpoint>> {
        self.tx
            .query("SELECT cp FROM audit_checkpoints ORDER BY seq, time_s", &[])
            .map_err(pg("scan audit checkpoints"))?
            .iter()
            .map(|r| dec("audit checkpoint", r.get::<_, &[u8]>(0)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{PgStore, StoreCounts};

    #[test]
    fn a_password_is_found_in_both_connection_string_forms() {
        for (url, has) in [
            ("postgresql://ca:secret@db.example.com/ca", true),
            (
                "postgres://ca:secret@db1,db2/ca?target_session_attrs=read-write",
                true,
            ),
            (
                "host=db.example.com user=ca password=secret dbname=ca",
                true,
            ),
            ("postgresql://ca@db.example.com/ca", false),
            ("host=/run/postgresql user=ca dbname=ca", false),
        ] {
            assert_eq!(PgStore::url_has_password(url).unwrap(), has, "{url}");
        }
        let err = PgStore::url_has_password("postgresql://ca:secret@[bad").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn differences_name_each_kind_that_differs() {
        let a = StoreCounts {
            certs: 3,
            used_tokens: 1,
            ..StoreCounts::default()
        };
        let b = StoreCounts {
            certs: 2,
            used_tokens: 1,
            ..StoreCounts::default()
        };
        assert_eq!(a.differences(&b), vec![("certificates", 3, 2)]);
        assert!(a.differences(&a).is_empty());
    }
}
