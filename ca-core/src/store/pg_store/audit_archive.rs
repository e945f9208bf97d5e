//! The start of a truncated audit log on PostgreSQL (`ca-server audit truncate`): the
//! `audit_start` row holds the signed checkpoint the first kept event links to; events at or
//! below it and checkpoints below it are deleted in bounded batches, each its own durable
//! statement, so an interrupted truncation resumes where it stopped.
//!
//! Appends from every node go on meanwhile: they only write above the head, a truncation only
//! deletes at or below the start (never above the head), so the chain stays one.

use super::conn::Db;
use super::{dec, enc, pg, seq_col, seq_of, PgStore};
use crate::audit::{AuditEvent, Checkpoint};
use crate::error::Result;

impl PgStore {
    pub(super) fn read_audit_start(&self) -> Result<Option<Checkpoint>> {
        self.read_conn()?
            .query_opt("SELECT cp FROM audit_start", &[])
            .map_err(pg("audit start"))?
            .map(|r| dec("audit start", r.get::<_, &[u8]>(0)))
            .transpose()
    }

    pub(super) fn write_audit_start(&self, anchor: &Checkpoint) -> Result<()> {
        let mut c = self.conn()?;
        let mut tx = c.transaction().map_err(pg("set audit start"))?;
        // Two truncations at once: the second waits here and sees the first's start.
        tx.batch_execute("LOCK TABLE audit_start IN EXCLUSIVE MODE")
            .map_err(pg("set audit start"))?;
        let current: Option<Checkpoint> = tx
            .query_opt("SELECT cp FROM audit_start", &[])
            .map_err(pg("audit start"))?
            .map(|r| dec("audit start", r.get::<_, &[u8]>(0)))
            .transpose()?;
        // The head only moves forward: one read before the check is enough.
        let head = tx
            .query_opt("SELECT seq FROM audit_head", &[])
            .map_err(pg("audit head"))?
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(seq_of)
            .transpose()?;
        let event: Option<AuditEvent> = tx
            .query_opt(
                "SELECT event FROM audit_events WHERE seq = $1",
                &[&seq_col(anchor.seq)],
            )
            .map_err(pg("audit"))?
            .map(|r| dec("audit", r.get::<_, &[u8]>(0)))
            .transpose()?;
        crate::store::check_new_audit_start(anchor, current.as_ref(), head, event.as_ref())?;
        tx.execute(
            "INSERT INTO audit_start (one, seq, cp) VALUES (true, $1, $2) \
             ON CONFLICT (one) DO UPDATE SET seq = excluded.seq, cp = excluded.cp",
            &[&seq_col(anchor.seq), &enc(anchor)?],
        )
        .map_err(pg("set audit start"))?;
        tx.commit().map_err(pg("set audit start"))?;
        Ok(())
    }

    pub(super) fn delete_audit_below(&self, limit: usize) -> Result<usize> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut c = self.conn()?;
        let events: i64 = c
            .query_one(
                "WITH d AS (DELETE FROM audit_events WHERE seq IN (\
                   SELECT seq FROM audit_events \
                   WHERE seq <= (SELECT seq FROM audit_start) ORDER BY seq LIMIT $1) \
                 RETURNING 1) SELECT count(*) FROM d",
                &[&limit],
            )
            .map_err(pg("truncate audit"))?
            .get(0);
        let checkpoints: i64 = c
            .query_one(
                "WITH d AS (DELETE FROM audit_checkpoints WHERE (seq, time_s) IN (\
                   SELECT seq, time_s FROM audit_checkpoints \
                   WHERE seq < (SELECT seq FROM audit_start) ORDER BY seq, time_s LIMIT $1) \
                 RETURNING 1) SELECT count(*) FROM d",
                &[&(limit - events).max(0)],
            )
            .map_err(pg("truncate audit checkpoints"))?
            .get(0);
        Ok(usize::try_from(events + checkpoints).unwrap_or(usize::MAX))
    }
}

impl PgStore {
    /// Testing hook: delete a raw audit event, as an attacker with write access to the
    /// database would (no start recorded, head untouched).
    #[doc(hidden)]
    pub fn delete_audit_event_for_test(&self, seq: u64) -> Result<()> {
        self.conn()?
            .execute("DELETE FROM audit_events WHERE seq = $1", &[&seq_col(seq)])
            .map_err(pg("audit"))?;
        Ok(())
    }
}
