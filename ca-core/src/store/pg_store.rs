//! The PostgreSQL implementation of the store traits ([`super::Store`]), for several CA nodes
//! on one database (cargo feature `postgres`). The only module that names PostgreSQL.
//!
//! Records are kept in the encodings the sled store uses (certificates and OCSP responses in
//! [`super::codec`]'s binary form, the rest JSON) in `bytea` columns, next to the columns the
//! queries and the atomic steps need (serial, identity, expiry, lineage, generation,
//! revocation, token use). Atomicity comes from the database, so it holds across processes:
//!
//! - serial uniqueness is the primary key (`INSERT ... ON CONFLICT DO NOTHING`);
//! - a renewal and a lineage lock both lock the lineage's row in `lineages` (`FOR UPDATE`)
//!   before they check and write, in one transaction;
//! - a token is consumed by one conditional `UPDATE ... WHERE used_at IS NULL AND
//!   expires_at > now` and released by a compare-and-swap on `used_at`;
//! - CRL numbers are one counter row incremented by `UPDATE ... RETURNING`;
//! - audit appends lock the single `audit_head` row (`FOR UPDATE`), then write the event and
//!   the head in the same transaction, so appends from every node form one chain.
//!
//! Durability: every session starts with `synchronous_commit = on`, so a write is durable
//! when its commit returns, except inside a deferral ([`Durability::begin_deferred`], the
//! issuance path's unit of work): a thread that defers gets sessions with
//! `synchronous_commit = off`, its writes return once applied (visible to every node, not yet
//! flushed), and the deferral's end makes them durable before the caller acknowledges
//! anything: either a durable commit made after them already flushed the WAL past them (the
//! thread's audit append, whose group always commits durably), or the end commits one small
//! transaction durably itself ([`Durability::flush`]: flushed with everything before it, and
//! replicated to a synchronous standby). WAL is one sequence, so a
//! durable commit covers every commit before it, on any session. A failed write is not
//! acknowledged either way. [`OcspResponseStore::put_ocsp_response_lazy`] commits with
//! `synchronous_commit = off` (durable at the WAL writer's next flush, or any later durable
//! commit's).
//!
//! The client is the synchronous `postgres` crate, which blocks the calling thread: call
//! the store from threads that may block (`spawn_blocking` in the server), never from an
//! async task's thread.
//!
//! The schema is created and upgraded at [`PgStore::open`], in one transaction under a
//! transaction-level advisory lock, and versioned in `schema_version`; a database whose
//! schema is newer than this binary knows is refused.

use super::codec;
use super::feed::{Change, Subscription};
use super::pg_listen::{notify, Listener, CHANNEL};
use super::{
    AuditLog, CertCount, CertCounts, CertCutoff, CertFilter, CertRecord, CertStore, ChangeFeed,
    CrlArchive, CrlNumbers, DueVisitor, Durability, Leases, LineageLock, OcspResponseStore,
    PrunedCerts, Retention, StoredCrl, StoredOcspResponse, TokenRecord, TokenStore,
};
use crate::audit::{self, AuditEvent, Checkpoint, NewAuditEvent};
use crate::error::{Error, Result};
use crate::revocation::{RevocationReason, RevokedEntry};
use audit_batch::AuditBatch;
use chrono::{DateTime, Utc};
pub(crate) use conn::Db;
use conn::{ReadWriteManager, SessionSetup};
use r2d2_postgres::postgres::{self, IsolationLevel, NoTls};
use r2d2_postgres::{r2d2, PostgresConnectionManager};
use std::collections::VecDeque;

mod audit_archive;
mod audit_batch;
mod conn;
mod import;
pub use import::{PgImport, StoreCounts, TargetNotEmpty};

/// Rows read per query by the streaming visitors and iterators.
const BATCH: i64 = 500;

/// Connections in the pool unless told otherwise.
pub const DEFAULT_POOL_SIZE: u32 = 16;

/// Longest wait for a pooled connection (an idle one, or a new one established). While the
/// database is unreachable a request fails after this long with
/// [`Error::StoreUnavailable`], instead of holding a blocking thread for r2d2's 30 s.
pub const CHECKOUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Time limit of one connection attempt to one host, unless the URL sets `connect_timeout`:
/// a host that does not answer (powered off, partitioned) costs this long before the next
/// host of a multi-host URL is tried.
pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Statement time limit of the readiness write probe ([`Durability::check_writable`]).
const PROBE_TIMEOUT: &str = "2s";

/// Whether `e` is a PostgreSQL client or pool error that means the database is unavailable
/// for now ([`super::is_unavailable`] asks): no connection from the pool in time; a closed
/// connection or an I/O error; and the SQLSTATEs of classes 08 (connection exception), 53
/// (insufficient resources: disk full, out of memory, too many connections), 57
/// (operator intervention: admin or crash shutdown, cannot connect now, statement
/// cancelled), 58 (system error: I/O), 40001/40P01 (serialization failure, deadlock: the
/// transaction was rolled back), 55P03 (lock not available) and 25006
/// (read_only_sql_transaction: a standby, or a primary made read-only for a switchover).
pub(super) fn is_unavailable(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<r2d2::Error>() {
        return true;
    }
    let Some(pe) = e.downcast_ref::<postgres::Error>() else {
        return false;
    };
    if pe.is_closed() {
        return true;
    }
    let Some(code) = pe.code() else {
        return false;
    };
    let code = code.code();
    ["08", "53", "57", "58"]
        .iter()
        .any(|class| code.starts_with(class))
        || matches!(code, "40001" | "40P01" | "55P03" | "25006")
}

/// Key of the advisory lock migrations run under (any constant no other user of the
/// database picks: "ca-store" in ASCII).
const MIGRATION_LOCK: i64 = 0x6361_2d73_746f_7265;

/// The schema, one entry per version: version n is `MIGRATIONS[n - 1]`. Append only.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE certs (
    serial bytea PRIMARY KEY,
    identity text NOT NULL,
    not_after_us bigint NOT NULL,
    lineage bytea NOT NULL,
    generation bigint NOT NULL,
    revoked boolean NOT NULL,
    rec bytea NOT NULL
);
CREATE INDEX certs_by_identity ON certs (identity, serial);
CREATE INDEX certs_by_expiry ON certs (not_after_us, serial);
CREATE INDEX certs_by_lineage ON certs (lineage, generation, serial);
CREATE TABLE revoked (
    serial bytea PRIMARY KEY REFERENCES certs (serial),
    entry bytea NOT NULL
);
CREATE TABLE lineages (
    lineage bytea PRIMARY KEY,
    lock bytea
);
CREATE TABLE tokens (
    hash text PRIMARY KEY,
    expires_at_ns bigint NOT NULL,
    used_at_ns bigint,
    rec bytea NOT NULL
);
CREATE TABLE ocsp_responses (
    serial bytea PRIMARY KEY,
    rec bytea NOT NULL
);
CREATE TABLE crl_number (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    n bigint NOT NULL
);
INSERT INTO crl_number (one, n) VALUES (true, 0);
CREATE TABLE audit_events (
    seq bigint PRIMARY KEY,
    event bytea NOT NULL
);
CREATE TABLE audit_head (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq bigint,
    hash text
);
INSERT INTO audit_head (one, seq, hash) VALUES (true, NULL, NULL);
CREATE TABLE audit_checkpoints (
    seq bigint NOT NULL,
    time_s bigint NOT NULL,
    cp bytea NOT NULL,
    PRIMARY KEY (seq, time_s)
);
"#,
    r#"
CREATE TABLE crls (
    scope text PRIMARY KEY,
    number bigint NOT NULL,
    this_update_s bigint NOT NULL,
    next_update_s bigint NOT NULL,
    der bytea NOT NULL
);
CREATE TABLE leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE TABLE store_heartbeat (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    at timestamptz NOT NULL
);
INSERT INTO store_heartbeat (one, at) VALUES (true, now());
"#,
    // CRL shards (README "CRLs"): revocations filed by the shard their certificate's CRL
    // distribution point names, and a CRL number sequence per archive scope.
    r#"
ALTER TABLE revoked ADD COLUMN shard bigint;
CREATE INDEX revoked_by_shard ON revoked (shard, serial) WHERE shard IS NOT NULL;
CREATE TABLE crl_numbers (
    scope text PRIMARY KEY,
    n bigint NOT NULL
);
"#,
    // The start of a truncated audit log (`ca-server audit truncate`): the signed checkpoint
    // the first kept event links to. No row: the log starts at event 1.
    r#"
CREATE TABLE audit_start (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq bigint NOT NULL,
    cp bytea NOT NULL
);
"#,
    // Group OCSP responses kept once (`put_ocsp_responses_lazy`): the members' rows link to
    // the group's row by `grp` (their `rec` holds the link and their own times).
    r#"
CREATE TABLE ocsp_groups (
    head bytea PRIMARY KEY,
    rec bytea NOT NULL,
    this_update_s bigint NOT NULL
);
ALTER TABLE ocsp_responses ADD COLUMN grp bytea;
CREATE INDEX ocsp_responses_by_group ON ocsp_responses (grp) WHERE grp IS NOT NULL;
"#,
    // Certificate counters (`counters` below): per (profile, notAfter UTC day, revoked) in
    // `COUNT_SLOTS` slots, filled once here from the certificates already stored. The
    // profile is inside the record (`codec`): two helper functions read it, dropped again.
    r#"
CREATE TABLE cert_counts (
    profile text NOT NULL,
    day integer NOT NULL,
    revoked boolean NOT NULL,
    slot smallint NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (profile, day, revoked, slot)
);
CREATE FUNCTION ca_migration_u32(r bytea, o integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT AS $fn$
    SELECT ((get_byte(r, o)::bigint << 24) + (get_byte(r, o + 1) << 16)
        + (get_byte(r, o + 2) << 8) + get_byte(r, o + 3))::integer
$fn$;
CREATE FUNCTION ca_migration_cert_profile(r bytea) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $fn$
DECLARE
    o integer := 1;
    sans integer;
BEGIN
    IF get_byte(r, 0) = 123 THEN
        RETURN convert_from(r, 'UTF8')::jsonb ->> 'profile';
    END IF;
    o := o + 4 + ca_migration_u32(r, o);
    o := o + 4 + ca_migration_u32(r, o);
    sans := ca_migration_u32(r, o);
    o := o + 4;
    FOR i IN 1..sans LOOP
        o := o + 4 + ca_migration_u32(r, o);
    END LOOP;
    o := o + 4 + ca_migration_u32(r, o);
    RETURN convert_from(substring(r FROM o + 5 FOR ca_migration_u32(r, o)), 'UTF8');
END
$fn$;
INSERT INTO cert_counts (profile, day, revoked, slot, n)
SELECT ca_migration_cert_profile(rec), floor(not_after_us / 86400000000.0)::integer, revoked,
       0, count(*)
FROM certs GROUP BY 1, 2, 3;
DROP FUNCTION ca_migration_cert_profile(bytea);
DROP FUNCTION ca_migration_u32(bytea, integer);
"#,
];

/// The schema version this binary writes and reads.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// A database whose schema is newer than this binary knows.
#[derive(Debug, thiserror::Error)]
#[error(
    "the database's schema is version {found}, newer than this binary knows ({known}): \
     run a ca-server at least as new as the one that upgraded it"
)]
pub struct SchemaTooNew {
    /// The version found in `schema_version`.
    pub found: i32,
    /// [`SCHEMA_VERSION`].
    pub known: i32,
}

/// A reader ([`PgStore::open_reader`]) found an older schema than this binary knows, or none.
#[derive(Debug, thiserror::Error)]
#[error(
    "the database schema is version {found}, this binary needs {known}: a stateless responder \
     never migrates; upgrade and start the signing nodes first (they migrate the schema)"
)]
pub struct SchemaTooOld {
    /// The version found in `schema_version` (0: no schema yet).
    pub found: i32,
    /// [`SCHEMA_VERSION`].
    pub known: i32,
}

/// The store is being dropped.
#[derive(Debug, thiserror::Error)]
#[error("the store is closed")]
struct StoreClosed;

/// The synchronous client runs its own runtime to close its connections, which panics on an
/// async runtime's thread; the pool is therefore always dropped on a thread of its own, so a
/// `PgStore` may be dropped anywhere (a server start that fails after the store opened).
impl Drop for PgStore {
    fn drop(&mut self) {
        let pools = (self.pool.take(), self.audit_pool.take());
        if pools.0.is_some() || pools.1.is_some() {
            let closing = std::thread::Builder::new()
                .name("pg-close".into())
                .spawn(move || drop(pools));
            if let Ok(h) = closing {
                let _ = h.join();
            }
        }
    }
}

/// A stored value out of the range a column holds.
#[derive(Debug, thiserror::Error)]
#[error("{0} is out of the range the PostgreSQL store keeps")]
struct OutOfRange(&'static str);

type Pool = r2d2::Pool<ReadWriteManager>;
type Conn = r2d2::PooledConnection<ReadWriteManager>;

/// Certificates, tokens, revocations and the audit log in a PostgreSQL database shared by
/// every node.
pub struct PgStore {
    /// Always `Some` until dropped (see the `Drop` impl).
    pool: Option<Pool>,
    /// The audit group leader's session (one, always `synchronous_commit = on`); `Some`
    /// until dropped.
    audit_pool: Option<Pool>,
    /// The audit head as this process last wrote it: the next group is appended with one
    /// compare-and-swap on the head row against it; `None` (at start, after an error, or when
    /// another node appended) takes the locking path, which reads the head.
    audit_head: std::sync::Mutex<Option<(u64, String)>>,
    /// Group commit of audit appends ([`AuditBatch`]).
    audit_batch: AuditBatch,
    /// The change feed's listening session ([`ChangeFeed`]).
    listener: Listener,
    /// This store among others in the process (`super::deferral`).
    id: u64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

fn pg(op: &'static str) -> impl FnOnce(postgres::Error) -> Error {
    move |e| Error::store(op, e)
}

fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Corrupt(format!("cannot encode record: {e}")))
}

fn dec<T: serde::de::DeserializeOwned>(what: &str, b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| Error::Corrupt(format!("{what} record: {e}")))
}

/// Microseconds since the epoch (certificate times are whole seconds).
fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn nanos(what: &'static str, t: DateTime<Utc>) -> Result<i64> {
    t.timestamp_nanos_opt()
        .ok_or_else(|| Error::store(what, OutOfRange(what)))
}

/// A sequence number as stored (`bigint`).
fn seq_col(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn seq_of(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Corrupt(format!("audit sequence {v}")))
}

impl PgStore {
    /// Connect to the database at `url` (a libpq connection string or URL) with a pool of
    /// [`DEFAULT_POOL_SIZE`] connections, and create or upgrade its schema.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with_pool_size(url, DEFAULT_POOL_SIZE)
    }

    /// [`PgStore::open`] with a pool of `size` connections.
    pub fn open_with_pool_size(url: &str, size: u32) -> Result<Self> {
        let store = Self::connect(url, size)?;
        store.migrate()?;
        Ok(store)
    }

    /// Open the store to read it only (a stateless OCSP responder): no migration, so a role
    /// with nothing but `SELECT` on the tables will do, and a schema other than this binary's
    /// is refused ([`SchemaTooOld`], [`SchemaTooNew`]), with a pool of `size` connections.
    pub fn open_reader(url: &str, size: u32) -> Result<Self> {
        let store = Self::connect(url, size)?;
        let found: i32 = match store
            .read_conn()?
            .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        {
            Ok(row) => row.get(0),
            // undefined_table: nothing was ever migrated here.
            Err(e) if e.code().is_some_and(|c| c.code() == "42P01") => 0,
            Err(e) => return Err(Error::store("schema version", e)),
        };
        if found > SCHEMA_VERSION {
            return Err(Error::store(
                "schema version",
                SchemaTooNew {
                    found,
                    known: SCHEMA_VERSION,
                },
            ));
        }
        if found < SCHEMA_VERSION {
            return Err(Error::store(
                "schema version",
                SchemaTooOld {
                    found,
                    known: SCHEMA_VERSION,
                },
            ));
        }
        Ok(store)
    }

    /// The pools, nothing read or written yet.
    fn connect(url: &str, size: u32) -> Result<Self> {
        let mut config: postgres::Config = url.parse().map_err(pg("parse database URL"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        let listener = Listener::new(config.clone());
        let audit_manager = ReadWriteManager(PostgresConnectionManager::new(config.clone(), NoTls));
        let manager = ReadWriteManager(PostgresConnectionManager::new(config, NoTls));
        // `test_on_check_out` (r2d2's default, kept): every checkout runs
        // `ReadWriteManager::is_valid`, so a connection broken by a restart or a failover is
        // replaced before a statement fails on it.
        let pool = r2d2::Pool::builder()
            .max_size(size.max(1))
            .min_idle(Some(1))
            .test_on_check_out(true)
            .connection_timeout(CHECKOUT_TIMEOUT)
            .connection_customizer(Box::new(SessionSetup))
            .build(manager)
            .map_err(|e| Error::store("connect to database", e))?;
        // The audit group's leader (one at a time) writes on a session of its own, which
        // always commits durably: the deferred issuance threads' sessions commit
        // asynchronously, and switching one back and forth costs a round trip each way.
        let audit_pool = r2d2::Pool::builder()
            .max_size(1)
            .min_idle(Some(0))
            .test_on_check_out(true)
            .connection_timeout(CHECKOUT_TIMEOUT)
            .connection_customizer(Box::new(SessionSetup))
            .build(audit_manager)
            .map_err(|e| Error::store("connect to database", e))?;
        let store = PgStore {
            pool: Some(pool),
            audit_pool: Some(audit_pool),
            audit_head: std::sync::Mutex::new(None),
            audit_batch: AuditBatch::default(),
            listener,
            id: super::deferral::store_id(),
        };
        Ok(store)
    }

    /// Whether the database at `url` accepts a connection within `timeout` (one connection,
    /// closed again; nothing is read or migrated): a quick check before [`PgStore::open`],
    /// whose pool waits up to 30 s for its first connection. Errors never show the URL.
    pub fn check_reachable(url: &str, timeout: std::time::Duration) -> Result<()> {
        let mut config: postgres::Config = url.parse().map_err(pg("parse database URL"))?;
        config.connect_timeout(timeout);
        let client = config.connect(NoTls).map_err(pg("connect to database"))?;
        drop(client);
        Ok(())
    }

    /// A pooled session for any statement: it commits durably unless this thread defers
    /// ([`Durability::begin_deferred`]; the deferral's end then makes the writes durable).
    fn conn(&self) -> Result<Conn> {
        let deferred = super::deferral::note_write(self.id);
        let mut c = self.pooled()?;
        c.set_synchronous_commit(!deferred)
            .map_err(pg("database connection"))?;
        Ok(c)
    }

    /// A pooled session for reads only, in whatever commit mode it is (a read commits
    /// nothing), so readers do not switch sessions back and forth.
    fn read_conn(&self) -> Result<Conn> {
        self.pooled()
    }

    fn pooled(&self) -> Result<Conn> {
        self.pool
            .as_ref()
            .ok_or_else(|| Error::store("database connection", StoreClosed))?
            .get()
            .map_err(|e| Error::store("database connection", e))
    }

    /// Every write this thread deferred so far is durable now (a durable commit came after
    /// them).
    fn deferred_writes_durable(&self) {
        super::deferral::writes_durable(self.id);
    }

    /// Create or upgrade the schema, in one transaction under an advisory lock (nodes
    /// starting together: one migrates, the others wait and find it done).
    fn migrate(&self) -> Result<()> {
        let mut c = self.conn()?;
        let mut tx = c.transaction().map_err(pg("migrate"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(pg("migration lock"))?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            .map_err(pg("schema version"))?;
        let found: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
            .map_err(pg("schema version"))?
            .get(0);
        if found > SCHEMA_VERSION {
            return Err(Error::store(
                "schema version",
                SchemaTooNew {
                    found,
                    known: SCHEMA_VERSION,
                },
            ));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
            let version = i as i32 + 1;
            tx.batch_execute(sql).map_err(pg("migrate schema"))?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&version],
            )
            .map_err(pg("schema version"))?;
            tracing::info!(version, "database schema migrated");
        }
        tx.commit().map_err(pg("migrate"))
    }

    /// Insert the certificate in `tx` (no commit); `false` if the serial is taken.
    fn insert_cert_in(tx: &mut impl Db, rec: &CertRecord) -> Result<bool> {
        let cols = rec.clone().with_lineage_defaults();
        let value = codec::encode_cert(rec)?;
        // The record and its counter in one statement (`counters`): the counter moves iff the
        // row was inserted, atomically with it.
        let n = tx
            .execute(
                "WITH ins AS (INSERT INTO certs (serial, identity, not_after_us, lineage, \
                 generation, revoked, rec) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (serial) DO NOTHING RETURNING 1) \
                 INSERT INTO cert_counts (profile, day, revoked, slot, n) \
                 SELECT $8, $9, $6, $10, 1 FROM ins \
                 ON CONFLICT (profile, day, revoked, slot) DO UPDATE SET n = cert_counts.n + 1",
                &[
                    &rec.serial,
                    &rec.identity,
                    &micros(rec.not_after),
                    &cols.lineage,
                    &i64::from(cols.generation),
                    &rec.is_revoked(),
                    &value,
                    &rec.profile,
                    &super::count_day(rec.not_after),
                    &count_slot(&rec.serial),
                ],
            )
            .map_err(pg("insert certificate"))?;
        Ok(n == 1)
    }

    /// Lock the lineage's row (created if missing) for the rest of `tx`; its lock, if any.
    fn lock_lineage_row(tx: &mut impl Db, lineage: &[u8]) -> Result<Option<LineageLock>> {
        // One statement: the row is created if missing, and locked either way (an update on
        // conflict locks the row as `FOR UPDATE` would, and returns its newest version).
        let row = tx
            .query_one(
                "INSERT INTO lineages (lineage) VALUES ($1) \
                 ON CONFLICT (lineage) DO UPDATE SET lock = lineages.lock RETURNING lock",
                &[&lineage],
            )
            .map_err(pg("lineage"))?;
        row.get::<_, Option<Vec<u8>>>(0)
            .map(|v| dec("lineage lock", &v))
            .transpose()
    }

    fn certs_where(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<CertRecord>> {
        let rows = self
            .read_conn()?
            .query(sql, params)
            .map_err(pg("read certificates"))?;
        rows.iter()
            .map(|r| codec::decode_cert(r.get::<_, &[u8]>(0)))
            .collect()
    }

    /// Visit the rows of `sql` (which must take the last key as `$1`, order by it and limit
    /// to `$2`) in batches, with no connection held while `f` runs.
    fn stream_by_serial(
        &self,
        op: &'static str,
        sql: &str,
        f: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut last: Vec<u8> = Vec::new();
        loop {
            let rows = self
                .read_conn()?
                .query(sql, &[&last, &BATCH])
                .map_err(pg(op))?;
            for r in &rows {
                f(r.get::<_, &[u8]>(1))?;
            }
            match rows.last() {
                Some(r) if rows.len() as i64 == BATCH => last = r.get(0),
                _ => return Ok(()),
            }
        }
    }
}

impl CertStore for PgStore {
    fn insert_cert(&self, rec: &CertRecord) -> Result<bool> {
        Self::insert_cert_in(&mut *self.conn()?, rec)
    }

    fn insert_renewal(&self, rec: &CertRecord, previous: &CertRecord) -> Result<bool> {
        let mut c = self.conn()?;
        let mut tx = c.transaction().map_err(pg("insert renewal"))?;
        let lineage = hex::encode(&rec.lineage);
        if let Some(lock) = Self::lock_lineage_row(&mut tx, &rec.lineage)? {
            return Err(Error::LineageLocked {
                lineage,
                reason: lock.reason,
            });
        }
        // Read after the row lock: every renewal committed before it is seen.
        let newest = tx
            .query_opt(
                "SELECT serial, generation FROM certs WHERE lineage = $1 \
                 ORDER BY generation DESC, serial DESC LIMIT 1",
                &[&rec.lineage],
            )
            .map_err(pg("lineage newest"))?
            .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, i64>(1)));
        let newest_is_previous = match &newest {
            Some((serial, _)) => *serial == previous.serial,
            None => previous.generation == 1,
        };
        if !newest_is_previous || rec.generation != previous.generation.saturating_add(1) {
            return Err(Error::GenerationSuperseded {
                serial: previous.serial_hex(),
                lineage,
                generation: previous.generation,
                newest: newest.map_or(previous.generation, |(_, g)| {
                    u32::try_from(g).unwrap_or(u32::MAX)
                }),
            });
        }
        if !Self::insert_cert_in(&mut tx, rec)? {
            return Ok(false);
        }
        tx.commit().map_err(pg("insert renewal"))?;
        Ok(true)
    }

    fn lineage_certs(&self, lineage: &[u8]) -> Result<Vec<CertRecord>> {
        self.certs_where(
            "SELECT rec FROM certs WHERE lineage = $1 ORDER BY generation, serial",
            &[&lineage],
        )
    }

    fn lineage_newest(&self, lineage: &[u8]) -> Result<Option<CertRecord>> {
        Ok(self
            .certs_where(
                "SELECT rec FROM certs WHERE lineage = $1 \
                 ORDER BY generation DESC, serial DESC LIMIT 1",
                &[&lineage],
            )?
            .pop())
    }

    fn lock_lineage(&self, lineage: &[u8], lock: &LineageLock) -> Result<LineageLock> {
        let mut c = self.conn()?;
        let mut tx = c.transaction().map_err(pg("lock lineage"))?;
        if let Some(existing) = Self::lock_lineage_row(&mut tx, lineage)? {
            return Ok(existing);
        }
        tx.execute(
            "UPDATE lineages SET lock = $2 WHERE lineage = $1",
            &[&lineage, &enc(lock)?],
        )
        .map_err(pg("lock lineage"))?;
        tx.commit().map_err(pg("lock lineage"))?;
        Ok(lock.clone())
    }

    fn lineage_lock(&self, lineage: &[u8]) -> Result<Option<LineageLock>> {
        self.read_conn()?
            .query_opt(
                "SELECT lock FROM lineages WHERE lineage = $1 AND lock IS NOT NULL",
                &[&lineage],
            )
            .map_err(pg("get lineage lock"))?
            .map(|r| dec("lineage lock", r.get::<_, &[u8]>(0)))
            .transpose()
    }

    fn serial_exists(&self, serial: &[u8]) -> Result<bool> {
        Ok(self
            .read_conn()?
            .query_opt("SELECT 1 FROM certs WHERE serial = $1", &[&serial])
            .map_err(pg("lookup serial"))?
            .is_some())
    }

    fn get_cert(&self, serial: &[u8]) -> Result<Option<CertRecord>> {
        Ok(self
            .certs_where("SELECT rec FROM certs WHERE serial = $1", &[&serial])?
            .pop())
    }

    fn list_certs(&self, filter: &CertFilter) -> Result<Vec<CertRecord>> {
        use super::CertOrder;
        // The order of the index the sled store scans for the same filter; the cursor is a
        // row comparison on the same columns, so a page is an index range from it on.
        let after = filter.checked_cursor()?;
        let (order, keyset) = match filter.order() {
            CertOrder::Generation => ("generation, serial", "(generation, serial) > ($8, $7)"),
            CertOrder::Expiry => ("not_after_us, serial", "(not_after_us, serial) > ($8, $7)"),
            CertOrder::Serial => ("serial", "serial > $7"),
        };
        let limit = filter.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
        let before = filter.expiring_before.map(micros);
        let valid_at = filter.valid_at.map(micros);
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![
            &filter.identity,
            &filter.lineage,
            &filter.revoked,
            &before,
            &valid_at,
            &limit,
        ];
        let cursor_key;
        let cursor = match after {
            Some(c) => {
                params.push(&c.serial);
                if c.order != CertOrder::Serial {
                    // Expiry: notAfter is stored in microseconds, the cursor holds seconds.
                    cursor_key = match c.order {
                        CertOrder::Expiry => c.key.saturating_mul(1_000_000),
                        _ => c.key,
                    };
                    params.push(&cursor_key);
                }
                format!("AND {keyset}")
            }
            None => String::new(),
        };
        let sql = format!(
            "SELECT rec FROM certs WHERE ($1::text IS NULL OR identity = $1) \
             AND ($2::bytea IS NULL OR lineage = $2) AND ($3::boolean IS NULL OR revoked = $3) \
             AND ($4::bigint IS NULL OR not_after_us < $4) \
             AND ($5::bigint IS NULL OR not_after_us > $5) {cursor} ORDER BY {order} LIMIT $6"
        );
        self.certs_where(&sql, &params)
    }

    fn for_each_cert(&self, f: &mut dyn FnMut(CertRecord) -> Result<()>) -> Result<()> {
        self.stream_by_serial(
            "scan certificates",
            "SELECT serial, rec FROM certs WHERE serial > $1 ORDER BY serial LIMIT $2",
            &mut |v| f(codec::decode_cert(v)?),
        )
    }

    fn revoke(
        &self,
        serial: &[u8],
        at: DateTime<Utc>,
        reason: RevocationReason,
    ) -> Result<CertRecord> {
        crate::revocation::check_reason(reason)?;
        let mut c = self.conn()?;
        let mut tx = c.transaction().map_err(pg("revoke"))?;
        let row = tx
            .query_opt(
                "SELECT rec FROM certs WHERE serial = $1 FOR UPDATE",
                &[&serial],
            )
            .map_err(pg("revoke"))?
            .ok_or_else(|| Error::CertNotFound(hex::encode(serial)))?;
        let mut rec = codec::decode_cert(row.get::<_, &[u8]>(0))?;
        let was_valid = !rec.is_revoked();
        let entry = rec.revoke(at, reason)?;
        if was_valid {
            count_revocation(&mut tx, &rec)?;
        }
        tx.execute(
            "UPDATE certs SET rec = $2, revoked = true WHERE serial = $1",
            &[&serial, &codec::encode_cert(&rec)?],
        )
        .map_err(pg("revoke"))?;
        tx.execute(
            "INSERT INTO revoked (serial, entry, shard) VALUES ($1, $2, $3) \
             ON CONFLICT (serial) DO UPDATE SET entry = excluded.entry, shard = excluded.shard",
            &[&serial, &enc(&entry)?, &shard_column(&rec.der)],
        )
        .map_err(pg("revoke"))?;
        notify(
            &mut tx,
            self.listener.origin(),
            &Change::Revoked(serial.to_vec()),
        )?;
        tx.commit().map_err(pg("revoke"))?;
        Ok(rec)
    }

    fn for_each_revoked(&self, f: &mut dyn FnMut(RevokedEntry) -> Result<()>) -> Result<()> {
        self.stream_by_serial(
            "scan revocations",
            "SELECT serial, entry FROM revoked WHERE serial > $1 ORDER BY serial LIMIT $2",
            &mut |v| f(dec("revocation", v)?),
        )
    }
}

impl CrlNumbers for PgStore {
    fn next_crl_number(&self) -> Result<u64> {
        let n: i64 = self
            .conn()?
            .query_one("UPDATE crl_number SET n = n + 1 RETURNING n", &[])
            .map_err(pg("next CRL number"))?
            .get(0);
        u64::try_from(n).map_err(|_| Error::Corrupt(format!("CRL number {n}")))
    }
}

impl PgStore {
    fn token_of(row: &postgres::Row) -> Result<TokenRecord> {
        let mut tok: TokenRecord = dec("token", row.get::<_, &[u8]>(0))?;
        // The column is the truth about use (the record keeps what it was created with).
        tok.used_at = row
            .get::<_, Option<i64>>(1)
            .map(DateTime::from_timestamp_nanos);
        Ok(tok)
    }
}

impl TokenStore for PgStore {
    fn insert_token(&self, tok: &TokenRecord) -> Result<()> {
        let used = tok
            .used_at
            .map(|t| nanos("token use time", t))
            .transpose()?;
        // An expiry past what nanoseconds hold is "never" for every `now` that fits.
        let expires = tok.expires_at.timestamp_nanos_opt().unwrap_or(i64::MAX);
        let n = self
            .conn()?
            .execute(
                "INSERT INTO tokens (hash, expires_at_ns, used_at_ns, rec) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (hash) DO NOTHING",
                &[&tok.hash, &expires, &used, &enc(tok)?],
            )
            .map_err(pg("insert token"))?;
        if n != 1 {
            return Err(Error::Corrupt("enrollment token hash collision".into()));
        }
        Ok(())
    }

    fn consume_token(&self, hash: &str, now: DateTime<Utc>) -> Result<TokenRecord> {
        let now_ns = nanos("token use time", now)?;
        let mut c = self.conn()?;
        loop {
            // The compare-and-swap: `TokenRecord::check_usable` (unused, `now` before the
            // expiry) as the update's condition.
            let won = c
                .query_opt(
                    "UPDATE tokens SET used_at_ns = $2 WHERE hash = $1 AND used_at_ns IS NULL \
                     AND expires_at_ns > $2 RETURNING rec, used_at_ns",
                    &[&hash, &now_ns],
                )
                .map_err(pg("consume token"))?;
            if let Some(row) = won {
                let mut tok = Self::token_of(&row)?;
                tok.used_at = Some(now);
                return Ok(tok);
            }
            // Not consumed: the rule itself says why.
            let Some(row) = c
                .query_opt(
                    "SELECT rec, used_at_ns FROM tokens WHERE hash = $1",
                    &[&hash],
                )
                .map_err(pg("get token"))?
            else {
                return Err(Error::TokenRejected("unknown token"));
            };
            Self::token_of(&row)?.check_usable(now)?;
            // Usable now: it was released in between; try again.
        }
    }

    fn release_token(&self, hash: &str, used_at: DateTime<Utc>) -> Result<bool> {
        let Some(used) = used_at.timestamp_nanos_opt() else {
            return Ok(false);
        };
        let n = self
            .conn()?
            .execute(
                "UPDATE tokens SET used_at_ns = NULL WHERE hash = $1 AND used_at_ns = $2",
                &[&hash, &used],
            )
            .map_err(pg("release token"))?;
        Ok(n == 1)
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.read_conn()?
            .query("SELECT rec, used_at_ns FROM tokens ORDER BY hash", &[])
            .map_err(pg("list tokens"))?
            .iter()
            .map(Self::token_of)
            .collect()
    }

    fn get_token(&self, hash: &str) -> Result<Option<TokenRecord>> {
        self.read_conn()?
            .query_opt(
                "SELECT rec, used_at_ns FROM tokens WHERE hash = $1",
                &[&hash],
            )
            .map_err(pg("get token"))?
            .as_ref()
            .map(Self::token_of)
            .transpose()
    }
}

impl PgStore {
    /// Store `resp` (replacing the serial's response, or only if it has none) with its
    /// notification, in one statement, so one round trip and one implicit transaction: the
    /// notification is sent if the row was written, at its commit. `durable: false` commits
    /// with `synchronous_commit = off`. Whether the row was written.
    fn put_ocsp(&self, resp: &StoredOcspResponse, durable: bool, replace: bool) -> Result<bool> {
        let mut c = if durable {
            self.conn()?
        } else {
            let mut c = self.pooled()?;
            c.set_synchronous_commit(false)
                .map_err(pg("put OCSP response"))?;
            c
        };
        let sql = if replace {
            "WITH w AS (INSERT INTO ocsp_responses (serial, rec) VALUES ($1, $2) \
             ON CONFLICT (serial) DO UPDATE SET rec = excluded.rec, grp = NULL RETURNING 1) \
             SELECT pg_notify($3, $4) FROM w"
        } else {
            "WITH w AS (INSERT INTO ocsp_responses (serial, rec) VALUES ($1, $2) \
             ON CONFLICT (serial) DO NOTHING RETURNING 1) \
             SELECT pg_notify($3, $4) FROM w"
        };
        let change = Change::OcspResponse(resp.serial.clone()).encode(self.listener.origin());
        let written = c
            .execute(
                sql,
                &[&resp.serial, &codec::encode_ocsp(resp)?, &CHANNEL, &change],
            )
            .map_err(pg("put OCSP response"))?;
        Ok(written == 1)
    }
}

impl OcspResponseStore for PgStore {
    fn put_ocsp_response(&self, resp: &StoredOcspResponse) -> Result<()> {
        self.put_ocsp(resp, true, true).map(drop)
    }

    fn put_ocsp_response_lazy(&self, resp: &StoredOcspResponse) -> Result<()> {
        self.put_ocsp(resp, false, true).map(drop)
    }

    fn put_ocsp_responses_lazy(&self, resps: &[StoredOcspResponse]) -> Result<()> {
        if resps.len() < 2 {
            return resps
                .iter()
                .try_for_each(|r| self.put_ocsp_response_lazy(r));
        }
        let head = &resps[0];
        if resps.iter().any(|r| r.der != head.der) {
            return resps
                .iter()
                .try_for_each(|r| self.put_ocsp_response_lazy(r));
        }
        let mut c = self.pooled()?;
        c.set_synchronous_commit(false)
            .map_err(pg("put OCSP responses"))?;
        let serials: Vec<&[u8]> = resps.iter().map(|r| r.serial.as_slice()).collect();
        let links = resps
            .iter()
            .map(|r| codec::encode_ocsp_link(r, &head.serial))
            .collect::<Result<Vec<_>>>()?;
        let changes: Vec<String> = resps
            .iter()
            .map(|r| Change::OcspResponse(r.serial.clone()).encode(self.listener.origin()))
            .collect();
        // One statement: the group's bytes once, a link row per member, then one
        // notification each (a data-modifying CTE runs whether or not the outer query reads
        // it).
        c.execute(
            "WITH g AS (INSERT INTO ocsp_groups (head, rec, this_update_s) VALUES ($5, $6, $7) \
             ON CONFLICT (head) DO UPDATE SET rec = excluded.rec, \
             this_update_s = excluded.this_update_s), \
             w AS (INSERT INTO ocsp_responses (serial, rec, grp) \
             SELECT s, r, $5 FROM unnest($1::bytea[], $2::bytea[]) AS t(s, r) \
             ON CONFLICT (serial) DO UPDATE SET rec = excluded.rec, grp = excluded.grp \
             RETURNING 1) \
             SELECT pg_notify($3, n) FROM unnest($4::text[]) AS n",
            &[
                &serials,
                &links,
                &CHANNEL,
                &changes,
                &head.serial,
                &codec::encode_ocsp(head)?,
                &head.this_update.timestamp(),
            ],
        )
        .map_err(pg("put OCSP responses"))?;
        Ok(())
    }

    fn sweep_ocsp_groups(&self, written_before: DateTime<Utc>) -> Result<usize> {
        let n = self
            .conn()?
            .execute(
                "DELETE FROM ocsp_groups g WHERE g.this_update_s < $1 \
                 AND NOT EXISTS (SELECT 1 FROM ocsp_responses r WHERE r.grp = g.head)",
                &[&written_before.timestamp()],
            )
            .map_err(pg("sweep OCSP groups"))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn for_each_ocsp_response(
        &self,
        f: &mut dyn FnMut(StoredOcspResponse) -> Result<()>,
    ) -> Result<()> {
        let mut last: Vec<u8> = Vec::new();
        loop {
            let rows = self
                .read_conn()?
                .query(
                    "SELECT r.serial, r.rec, g.rec FROM ocsp_responses r \
                     LEFT JOIN ocsp_groups g ON g.head = r.grp \
                     WHERE r.serial > $1 ORDER BY r.serial LIMIT $2",
                    &[&last, &BATCH],
                )
                .map_err(pg("scan OCSP responses"))?;
            for r in &rows {
                if let Some(resp) = resolve_ocsp(r.get(0), r.get(1), r.get(2))? {
                    f(resp)?;
                }
            }
            match rows.last() {
                Some(r) if rows.len() as i64 == BATCH => last = r.get(0),
                _ => return Ok(()),
            }
        }
    }

    fn for_each_ocsp_due(&self, before: DateTime<Utc>, f: &mut DueVisitor<'_>) -> Result<()> {
        // Only each record's last 12 bytes cross the wire (its nextUpdate: both encodings end
        // with it), the whole record only for the JSON of earlier versions.
        let mut last: Vec<u8> = Vec::new();
        loop {
            let rows = self
                .read_conn()?
                .query(
                    "SELECT serial, CASE WHEN get_byte(rec, 0) = 123 THEN rec \
                     ELSE substring(rec from length(rec) - 11) END \
                     FROM ocsp_responses WHERE serial > $1 ORDER BY serial LIMIT $2",
                    &[&last, &BATCH],
                )
                .map_err(pg("scan OCSP response dates"))?;
            for r in &rows {
                let serial: &[u8] = r.get(0);
                let next_update = codec::ocsp_record_next_update(r.get(1))?;
                if next_update <= before {
                    f(serial, next_update)?;
                }
            }
            match rows.last() {
                Some(r) if rows.len() as i64 == BATCH => last = r.get(0),
                _ => return Ok(()),
            }
        }
    }

    fn put_ocsp_response_if_absent(&self, resp: &StoredOcspResponse) -> Result<bool> {
        self.put_ocsp(resp, true, false)
    }

    fn get_ocsp_response(&self, serial: &[u8]) -> Result<Option<StoredOcspResponse>> {
        match self
            .read_conn()?
            .query_opt(
                "SELECT r.serial, r.rec, g.rec FROM ocsp_responses r \
                 LEFT JOIN ocsp_groups g ON g.head = r.grp WHERE r.serial = $1",
                &[&serial],
            )
            .map_err(pg("get OCSP response"))?
        {
            Some(r) => resolve_ocsp(r.get(0), r.get(1), r.get(2)),
            None => Ok(None),
        }
    }
}

/// The response a row of `ocsp_responses` gives for its serial: the record itself, or the
/// group response it links to (`group`, joined), as the member's (`None` if that group is
/// gone).
fn resolve_ocsp(
    serial: &[u8],
    rec: &[u8],
    group: Option<&[u8]>,
) -> Result<Option<StoredOcspResponse>> {
    match codec::decode_ocsp_record(rec)? {
        codec::OcspRecord::Full(r) => Ok(Some(r)),
        codec::OcspRecord::Link {
            this_update,
            next_update,
            ..
        } => group
            .map(|g| {
                codec::decode_ocsp(g).map(|g| StoredOcspResponse {
                    serial: serial.to_vec(),
                    der: g.der,
                    this_update,
                    next_update,
                })
            })
            .transpose(),
    }
}

impl CrlArchive for PgStore {
    fn put_crl(&self, crl: &StoredCrl) -> Result<bool> {
        let number = i64::try_from(crl.number)
            .map_err(|_| Error::store("put CRL", OutOfRange("CRL number")))?;
        let mut c = self.conn()?;
        let mut tx = c.transaction().map_err(pg("put CRL"))?;
        let kept = tx
            .query_opt(
                "INSERT INTO crls (scope, number, this_update_s, next_update_s, der) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (scope) DO UPDATE SET number = excluded.number, \
                 this_update_s = excluded.this_update_s, next_update_s = excluded.next_update_s, \
                 der = excluded.der WHERE crls.number < excluded.number RETURNING number",
                &[
                    &crl.scope,
                    &number,
                    &crl.this_update.timestamp(),
                    &crl.next_update.timestamp(),
                    &crl.der,
                ],
            )
            .map_err(pg("put CRL"))?
            .is_some();
        if kept {
            notify(
                &mut tx,
                self.listener.origin(),
                &Change::Crl {
                    scope: crl.scope.clone(),
                    number: crl.number,
                },
            )?;
        }
        tx.commit().map_err(pg("put CRL"))?;
        Ok(kept)
    }

    fn latest_crl(&self, scope: &str) -> Result<Option<StoredCrl>> {
        let Some(row) = self
            .read_conn()?
            .query_opt(
                "SELECT number, this_update_s, next_update_s, der FROM crls WHERE scope = $1",
                &[&scope],
            )
            .map_err(pg("get CRL"))?
        else {
            return Ok(None);
        };
        let corrupt = || Error::Corrupt(format!("CRL record {scope:?}"));
        let time = |i: usize| DateTime::from_timestamp(row.get::<_, i64>(i), 0).ok_or_else(corrupt);
        Ok(Some(StoredCrl {
            scope: scope.to_string(),
            number: u64::try_from(row.get::<_, i64>(0)).map_err(|_| corrupt())?,
            this_update: time(1)?,
            next_update: time(2)?,
            der: row.get(3),
        }))
    }
}

impl Leases for PgStore {
    fn try_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool> {
        let row = self
            .conn()?
            .query_opt(
                "INSERT INTO leases (name, holder, expires_at) \
                 VALUES ($1, $2, now() + $3::float8 * interval '1 second') \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at <= now() \
                 RETURNING holder",
                &[&name, &holder, &ttl.as_secs_f64()],
            )
            .map_err(pg("take lease"))?;
        Ok(row.is_some())
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        self.conn()?
            .execute(
                "DELETE FROM leases WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )
            .map_err(pg("release lease"))?;
        Ok(())
    }
}

impl ChangeFeed for PgStore {
    fn subscribe(&self) -> Result<Subscription> {
        self.listener.subscribe(false)
    }

    fn subscribe_remote(&self) -> Result<Subscription> {
        self.listener.subscribe(true)
    }

    fn is_shared(&self) -> bool {
        true
    }
}

/// Audit events from a sequence number on, read in batches as consumed.
struct AuditIter<'a> {
    store: &'a PgStore,
    next: u64,
    buf: VecDeque<AuditEvent>,
    done: bool,
}

impl Iterator for AuditIter<'_> {
    type Item = Result<AuditEvent>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() && !self.done {
            match self
                .store
                .audit_events(self.next, usize::try_from(BATCH).unwrap_or(500))
            {
                Ok(evs) => {
                    self.done = (evs.len() as i64) < BATCH;
                    self.buf = evs.into();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        let ev = self.buf.pop_front()?;
        self.next = ev.seq.saturating_add(1);
        Some(Ok(ev))
    }
}

/// Checkpoints from a sequence number on, in `(seq, time)` order, read in batches.
struct CheckpointIter<'a> {
    store: &'a PgStore,
    after: Option<(i64, i64)>,
    from: i64,
    buf: VecDeque<(i64, i64, Vec<u8>)>,
    done: bool,
}

impl CheckpointIter<'_> {
    fn fill(&mut self) -> Result<()> {
        let mut c = self.store.read_conn()?;
        let rows = match self.after {
            None => c.query(
                "SELECT seq, time_s, cp FROM audit_checkpoints WHERE seq >= $1 \
                 ORDER BY seq, time_s LIMIT $2",
                &[&self.from, &BATCH],
            ),
            Some((s, t)) => c.query(
                "SELECT seq, time_s, cp FROM audit_checkpoints WHERE (seq, time_s) > ($1, $2) \
                 ORDER BY seq, time_s LIMIT $3",
                &[&s, &t, &BATCH],
            ),
        }
        .map_err(pg("scan audit checkpoints"))?;
        self.done = (rows.len() as i64) < BATCH;
        self.buf = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        Ok(())
    }
}

impl Iterator for CheckpointIter<'_> {
    type Item = Result<Checkpoint>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() && !self.done {
            if let Err(e) = self.fill() {
                self.done = true;
                return Some(Err(e));
            }
        }
        let (seq, time, cp) = self.buf.pop_front()?;
        self.after = Some((seq, time));
        Some(dec("audit checkpoint", &cp))
    }
}

impl PgStore {
    /// Append `events` in order with one durable commit: the write behind [`AuditBatch`], on
    /// the audit session. Usually one statement (a compare-and-swap of the head this process
    /// wrote last); otherwise one transaction under the lock of the head row.
    fn append_audit_batch(&self, events: Vec<NewAuditEvent>) -> Result<Vec<AuditEvent>> {
        let mut c = self
            .audit_pool
            .as_ref()
            .ok_or_else(|| Error::store("database connection", StoreClosed))?
            .get()
            .map_err(|e| Error::store("database connection", e))?;
        let mut known = self.audit_head.lock().unwrap_or_else(|p| p.into_inner());
        let head = known.take();
        let written = match head {
            Some((seq, hash)) => match Self::append_audit_if_head(&mut *c, &events, seq, &hash)? {
                Some(sealed) => Ok(sealed),
                // Another node appended since: read the head under its lock.
                None => Self::append_audit_locked(&mut c, events),
            },
            None => Self::append_audit_locked(&mut c, events),
        }?;
        if let Some(last) = written.last() {
            *known = Some((last.seq, last.hash.clone()));
        }
        Ok(written)
    }

    /// Seal `events` after `prev` and write them with the new head, in one durable
    /// statement, if the head row is still (`seq`, `hash`) (a compare-and-swap); `None` if it
    /// is not (nothing written).
    fn append_audit_if_head(
        c: &mut impl Db,
        events: &[NewAuditEvent],
        seq: u64,
        hash: &str,
    ) -> Result<Option<Vec<AuditEvent>>> {
        let (sealed, seqs, rows) = Self::seal_group(seq, hash, events.to_vec())?;
        let Some(last) = sealed.last() else {
            return Ok(Some(sealed));
        };
        let swapped: i64 = c
            .query_one(
                "WITH h AS (UPDATE audit_head SET seq = $3, hash = $4 \
                 WHERE seq = $5 AND hash = $6 RETURNING 1), \
                 e AS (INSERT INTO audit_events (seq, event) \
                 SELECT * FROM unnest($1::bigint[], $2::bytea[]) WHERE EXISTS (SELECT 1 FROM h)) \
                 SELECT count(*) FROM h",
                &[
                    &seqs,
                    &rows,
                    &seq_col(last.seq),
                    &last.hash,
                    &seq_col(seq),
                    &hash,
                ],
            )
            .map_err(pg("append audit"))?
            .get(0);
        Ok((swapped == 1).then_some(sealed))
    }

    /// The group's events sealed after (`prev_seq`, `prev_hash`), and their columns.
    #[allow(clippy::type_complexity)]
    fn seal_group(
        mut prev_seq: u64,
        prev_hash: &str,
        events: Vec<NewAuditEvent>,
    ) -> Result<(Vec<AuditEvent>, Vec<i64>, Vec<Vec<u8>>)> {
        let now = crate::clock::truncate(Utc::now());
        let mut prev_hash = prev_hash.to_string();
        let mut sealed_all = Vec::with_capacity(events.len());
        let (mut seqs, mut rows) = (Vec::with_capacity(events.len()), Vec::new());
        for ev in events {
            let sealed = audit::seal(prev_seq, &prev_hash, now, ev)?;
            seqs.push(seq_col(sealed.seq));
            rows.push(enc(&sealed)?);
            prev_seq = sealed.seq;
            prev_hash = sealed.hash.clone();
            sealed_all.push(sealed);
        }
        Ok((sealed_all, seqs, rows))
    }

    /// Append `events` in order, in one transaction under the lock of the head row, after
    /// the head it reads there (checked: present, or absent with no event written).
    fn append_audit_locked(
        c: &mut conn::PgConn,
        events: Vec<NewAuditEvent>,
    ) -> Result<Vec<AuditEvent>> {
        let mut tx = c.transaction().map_err(pg("append audit"))?;
        // The one head row serialises appends from every node.
        let head = tx
            .query_opt("SELECT seq, hash FROM audit_head FOR UPDATE", &[])
            .map_err(pg("audit head"))?
            .ok_or_else(|| Error::AuditChain {
                seq: 1,
                reason: "the audit head row is missing (deleted); refusing to append: run \
                         `audit verify`"
                    .into(),
            })?;
        let (prev_seq, prev_hash) = match (
            head.get::<_, Option<i64>>(0),
            head.get::<_, Option<String>>(1),
        ) {
            (Some(seq), Some(hash)) => (seq_of(seq)?, hash),
            _ => {
                let any = tx
                    .query_opt("SELECT 1 FROM audit_events LIMIT 1", &[])
                    .map_err(pg("audit"))?
                    .is_some();
                if any {
                    // Starting over at 1 would overwrite event 1.
                    return Err(Error::AuditChain {
                        seq: 1,
                        reason: "the audit head is missing while events exist (head \
                                 deleted); refusing to append: run `audit verify`"
                            .into(),
                    });
                }
                (0, audit::GENESIS.to_string())
            }
        };
        let (sealed_all, seqs, rows) = Self::seal_group(prev_seq, &prev_hash, events)?;
        let Some(last) = sealed_all.last() else {
            return Ok(sealed_all);
        };
        // The group's events and the new head in one statement (one round trip).
        tx.execute(
            "WITH e AS (INSERT INTO audit_events (seq, event) \
             SELECT * FROM unnest($1::bigint[], $2::bytea[])) \
             UPDATE audit_head SET seq = $3, hash = $4",
            &[&seqs, &rows, &seq_col(last.seq), &last.hash],
        )
        .map_err(pg("append audit"))?;
        tx.commit().map_err(pg("append audit"))?;
        Ok(sealed_all)
    }
}

impl AuditLog for PgStore {
    fn append_audit(&self, ev: NewAuditEvent) -> Result<AuditEvent> {
        let sealed = self
            .audit_batch
            .append(ev, |events| self.append_audit_batch(events))?;
        // Its group committed durably after this thread's earlier writes.
        self.deferred_writes_durable();
        Ok(sealed)
    }

    fn audit_events(&self, from: u64, limit: usize) -> Result<Vec<AuditEvent>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read_conn()?
            .query(
                "SELECT event FROM audit_events WHERE seq >= $1 ORDER BY seq LIMIT $2",
                &[&seq_col(from), &limit],
            )
            .map_err(pg("scan audit"))?
            .iter()
            .map(|r| dec("audit", r.get::<_, &[u8]>(0)))
            .collect()
    }

    fn audit_iter(&self, from: u64) -> Box<dyn Iterator<Item = Result<AuditEvent>> + Send + '_> {
        Box::new(AuditIter {
            store: self,
            next: from,
            buf: VecDeque::new(),
            done: false,
        })
    }

    fn audit_head(&self) -> Result<Option<(u64, String)>> {
        let row = self
            .read_conn()?
            .query_opt("SELECT seq, hash FROM audit_head", &[])
            .map_err(pg("audit head"))?;
        match row.map(|r| (r.get::<_, Option<i64>>(0), r.get::<_, Option<String>>(1))) {
            Some((Some(seq), Some(hash))) => Ok(Some((seq_of(seq)?, hash))),
            _ => Ok(None),
        }
    }

    fn audit_head_and_any(&self) -> Result<(Option<(u64, String)>, bool)> {
        // One snapshot: an append writes its event and the head in one transaction.
        let mut c = self.read_conn()?;
        let mut tx = c
            .transaction_with(Some(IsolationLevel::RepeatableRead), true)
            .map_err(pg("audit head"))?;
        let head = match tx
            .query_opt("SELECT seq, hash FROM audit_head", &[])
            .map_err(pg("audit head"))?
            .map(|r| (r.get::<_, Option<i64>>(0), r.get::<_, Option<String>>(1)))
        {
            Some((Some(seq), Some(hash))) => Some((seq_of(seq)?, hash)),
            _ => None,
        };
        let any = head.is_some()
            || tx
                .query_opt("SELECT 1 FROM audit_events LIMIT 1", &[])
                .map_err(pg("audit"))?
                .is_some();
        tx.commit().map_err(pg("audit head"))?;
        Ok((head, any))
    }

    fn put_audit_checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        self.conn()?
            .execute(
                "INSERT INTO audit_checkpoints (seq, time_s, cp) VALUES ($1, $2, $3) \
                 ON CONFLICT (seq, time_s) DO UPDATE SET cp = excluded.cp",
                &[&seq_col(cp.seq), &cp.time.timestamp().max(0), &enc(cp)?],
            )
            .map_err(pg("put audit checkpoint"))?;
        Ok(())
    }

    fn audit_checkpoints(
        &self,
        from_seq: u64,
    ) -> Box<dyn Iterator<Item = Result<Checkpoint>> + Send + '_> {
        Box::new(CheckpointIter {
            store: self,
            after: None,
            from: seq_col(from_seq),
            buf: VecDeque::new(),
            done: false,
        })
    }

    fn audit_checkpoint_before(&self, before_seq: u64) -> Result<Option<Checkpoint>> {
        self.read_conn()?
            .query_opt(
                "SELECT cp FROM audit_checkpoints WHERE seq < $1 \
                 ORDER BY seq DESC, time_s DESC LIMIT 1",
                &[&seq_col(before_seq)],
            )
            .map_err(pg("audit checkpoint"))?
            .map(|r| dec("audit checkpoint", r.get::<_, &[u8]>(0)))
            .transpose()
    }

    // Archive and truncation: see pg_store/audit_archive.rs.
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

impl Durability for PgStore {
    fn health(&self) -> Result<()> {
        self.read_conn()?
            .batch_execute("SELECT 1")
            .map_err(pg("health"))
    }

    fn begin_deferred(&self) {
        super::deferral::begin(self.id);
    }

    fn end_deferred(&self) -> Result<()> {
        if super::deferral::end(self.id) {
            self.flush()?;
        }
        Ok(())
    }

    /// One durable commit of a transaction that wrote WAL: it is flushed (and replicated to a
    /// synchronous standby) with all WAL before it, which holds every commit made so far on
    /// any session. The WAL it writes is a transactional logical-decoding message (prefix
    /// `ca-store-flush`, empty; no table, so concurrent flushes do not wait for each other's
    /// row locks). A transaction that only takes a transaction id writes no WAL before its
    /// commit record, and PostgreSQL does not flush for it.
    fn flush(&self) -> Result<()> {
        let mut c = self.pooled()?;
        c.set_synchronous_commit(true).map_err(pg("flush"))?;
        c.batch_execute("SELECT pg_logical_emit_message(true, 'ca-store-flush', '')")
            .map_err(pg("flush"))
    }

    /// One short read-write transaction on the heartbeat row, committed durably, with a
    /// statement time limit: fails on a standby, on a read-only primary, on a full disk and
    /// while the database is unreachable (the checkout itself is bounded by
    /// [`CHECKOUT_TIMEOUT`]).
    fn check_writable(&self) -> Result<()> {
        let mut c = self.conn()?;
        let mut tx = c.transaction().map_err(pg("write probe"))?;
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = '{PROBE_TIMEOUT}'; \
             SET LOCAL lock_timeout = '{PROBE_TIMEOUT}'; \
             UPDATE store_heartbeat SET at = now()"
        ))
        .map_err(pg("write probe"))?;
        tx.commit().map_err(pg("write probe"))
    }
}

/// An instant as the nanoseconds a token column holds, clamped to the column's range (a
/// cutoff beyond it compares like the range's end).
fn nanos_clamped(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() > 0 {
        i64::MAX
    } else {
        i64::MIN
    })
}

/// Pruning (README "Retention"). Each call is one transaction that claims its rows with
/// `FOR UPDATE SKIP LOCKED`: nodes pruning at once take disjoint rows, and a row another
/// transaction holds (a revocation in progress) is left for the next pass, never waited for.
/// The revocation path locks the same certificate row (`FOR UPDATE`), so a racing revocation
/// either commits first (the row is then judged revoked) or finds the row gone.
impl Retention for PgStore {
    fn prune_expired_certs(&self, cutoff: &CertCutoff, limit: usize) -> Result<PrunedCerts> {
        if limit == 0 {
            return Ok(PrunedCerts::default());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut c = self.conn()?;
        let mut tx = c.transaction().map_err(pg("prune certificates"))?;
        // The SQL narrows by the columns; `CertCutoff::allows` on the record decides.
        let rows = tx
            .query(
                "SELECT serial, rec FROM certs WHERE not_after_us < $1 \
                 AND (NOT revoked OR ($2::bigint IS NOT NULL AND not_after_us < $2)) \
                 ORDER BY not_after_us, serial LIMIT $3 FOR UPDATE SKIP LOCKED",
                &[
                    &micros(cutoff.expired_before),
                    &cutoff.revoked_listed_before.map(micros),
                    &limit,
                ],
            )
            .map_err(pg("prune certificates"))?;
        let mut serials: Vec<Vec<u8>> = Vec::new();
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut lineages: Vec<Vec<u8>> = Vec::new();
        let mut pruned_keys = std::collections::BTreeMap::new();
        for r in &rows {
            let rec = codec::decode_cert(r.get::<_, &[u8]>(1))?;
            if !cutoff.allows(&rec) {
                continue;
            }
            keys.extend(
                super::ocsp_keys(&rec.serial)
                    .into_iter()
                    .map(<[u8]>::to_vec),
            );
            let lineage = rec.clone().with_lineage_defaults().lineage;
            if !lineages.contains(&lineage) {
                lineages.push(lineage);
            }
            *pruned_keys.entry(CountKey::of(&rec)).or_insert(0) += 1;
            serials.push(rec.serial);
        }
        if serials.is_empty() {
            tx.commit().map_err(pg("prune certificates"))?;
            return Ok(PrunedCerts::default());
        }
        tx.execute("DELETE FROM revoked WHERE serial = ANY($1)", &[&serials])
            .map_err(pg("prune revocations"))?;
        let ocsp_responses = tx
            .query(
                "DELETE FROM ocsp_responses WHERE serial = ANY($1) RETURNING rec",
                &[&keys],
            )
            .map_err(pg("prune OCSP responses"))?
            .iter()
            .map(|r| codec::decode_ocsp_record(r.get::<_, &[u8]>(0)))
            // A link needs nothing kept: its group stays for the other members (and goes by
            // `sweep_ocsp_groups` after the last).
            .filter_map(|r| match r {
                Ok(codec::OcspRecord::Full(r)) => Some(Ok(r)),
                Ok(codec::OcspRecord::Link { .. }) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>>>()?;
        count_pruned(&mut tx, &pruned_keys)?;
        let deleted = tx
            .execute("DELETE FROM certs WHERE serial = ANY($1)", &[&serials])
            .map_err(pg("prune certificates"))?;
        if deleted != serials.len() as u64 {
            // The rows are locked by this transaction: anything else is a broken invariant.
            return Err(Error::Corrupt(format!(
                "pruning removed {deleted} certificate rows of the {} it locked",
                serials.len()
            )));
        }
        // A lineage's row (and its lock) goes with its last certificate. Rows another
        // transaction holds (a renewal or a lock in progress) are left alone; a lineage whose
        // last certificates two nodes prune at once may keep its row: harmless, nothing is
        // left to renew from it.
        tx.execute(
            "DELETE FROM lineages WHERE lineage IN (SELECT l.lineage FROM lineages l \
             WHERE l.lineage = ANY($1) \
             AND NOT EXISTS (SELECT 1 FROM certs c WHERE c.lineage = l.lineage) \
             FOR UPDATE SKIP LOCKED)",
            &[&lineages],
        )
        .map_err(pg("prune lineages"))?;
        // Told at commit, like every change (the followers drop their answers).
        for serial in &serials {
            notify(
                &mut tx,
                self.listener.origin(),
                &Change::Pruned(serial.clone()),
            )?;
        }
        tx.commit().map_err(pg("prune certificates"))?;
        Ok(PrunedCerts {
            serials,
            ocsp_responses,
        })
    }

    fn prune_tokens(&self, before: DateTime<Utc>, limit: usize) -> Result<usize> {
        if limit == 0 {
            return Ok(0);
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // `TokenRecord::finished_at` on the columns (the use column is the truth about use).
        let n = self
            .conn()?
            .execute(
                "DELETE FROM tokens WHERE hash IN (SELECT hash FROM tokens \
                 WHERE least(coalesce(used_at_ns, expires_at_ns), expires_at_ns) < $1 \
                 ORDER BY hash LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&nanos_clamped(before), &limit],
            )
            .map_err(pg("prune tokens"))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

impl PgStore {
    /// Testing hook: overwrite a raw audit record (to prove tampering is detected).
    #[doc(hidden)]
    pub fn tamper_audit_for_test(
        &self,
        seq: u64,
        f: impl FnOnce(&mut serde_json::Value),
    ) -> Result<()> {
        let mut c = self.conn()?;
        let row = c
            .query_opt(
                "SELECT event FROM audit_events WHERE seq = $1",
                &[&seq_col(seq)],
            )
            .map_err(pg("audit"))?
            .ok_or(Error::AuditChain {
                seq,
                reason: "missing".into(),
            })?;
        let mut json: serde_json::Value = dec("audit", row.get::<_, &[u8]>(0))?;
        f(&mut json);
        c.execute(
            "UPDATE audit_events SET event = $2 WHERE seq = $1",
            &[&seq_col(seq), &enc(&json)?],
        )
        .map_err(pg("audit"))?;
        Ok(())
    }

    /// How many statements the session of a one-session store ([`PgStore::open_with_pool_size`]
    /// with 1) has prepared: a test that statements are prepared once per session.
    #[doc(hidden)]
    pub fn prepared_statements_for_test(&self) -> Result<i64> {
        Ok(self
            .read_conn()?
            .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
            .map_err(pg("prepared statements"))?
            .get(0))
    }

    /// Testing hook: record a schema version beyond this binary's, as a newer binary would.
    #[doc(hidden)]
    pub fn bump_schema_version_for_test(&self) -> Result<()> {
        self.conn()?
            .execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&(SCHEMA_VERSION + 1)],
            )
            .map_err(pg("schema version"))?;
        Ok(())
    }
}

// --- CRL shards (README "CRLs"): the shard index and per-scope CRL numbers ---

/// The `revoked.shard` column of a certificate: the shard its CRL distribution point names
/// (window ends are far below `i64::MAX`; one that is not is filed under no shard).
pub(super) fn shard_column(cert_der: &[u8]) -> Option<i64> {
    crate::x509::crl_shard_of(cert_der).and_then(|s| i64::try_from(s.0).ok())
}

impl super::CrlShards for PgStore {
    fn for_each_revoked_in_shard(
        &self,
        shard: crate::x509::CrlShard,
        f: &mut dyn FnMut(RevokedEntry) -> Result<()>,
    ) -> Result<()> {
        let Ok(shard) = i64::try_from(shard.0) else {
            return Ok(());
        };
        let mut last: Vec<u8> = Vec::new();
        loop {
            let rows = self
                .read_conn()?
                .query(
                    "SELECT serial, entry FROM revoked WHERE shard = $1 AND serial > $2 \
                     ORDER BY serial LIMIT $3",
                    &[&shard, &last, &BATCH],
                )
                .map_err(pg("scan CRL shard"))?;
            for r in &rows {
                f(dec("revocation", r.get::<_, &[u8]>(1))?)?;
            }
            match rows.last() {
                Some(r) if rows.len() as i64 == BATCH => last = r.get(0),
                _ => return Ok(()),
            }
        }
    }

    fn next_crl_number_in(&self, scope: &str) -> Result<u64> {
        let n: i64 = self
            .conn()?
            .query_one(
                "INSERT INTO crl_numbers (scope, n) \
                 VALUES ($1, COALESCE((SELECT number FROM crls WHERE scope = $1), 0) + 1) \
                 ON CONFLICT (scope) DO UPDATE SET n = GREATEST(crl_numbers.n, \
                 COALESCE((SELECT number FROM crls WHERE scope = $1), 0)) + 1 RETURNING n",
                &[&scope],
            )
            .map_err(pg("next CRL number"))?
            .get(0);
        u64::try_from(n).map_err(|_| Error::Corrupt(format!("CRL number {n}")))
    }

    fn archived_crl_scopes(&self, prefix: &str) -> Result<Vec<String>> {
        let rows = self
            .read_conn()?
            .query(
                "SELECT scope FROM crls WHERE left(scope, length($1)) = $1 ORDER BY scope",
                &[&prefix],
            )
            .map_err(pg("list CRL scopes"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Certificate counters ([`CertCounts`]; DESIGN "Inventory at scale").
//
// `cert_counts` holds, per (profile, notAfter UTC day, revoked), `COUNT_SLOTS` rows whose sum is
// the count. A certificate's slot comes from its serial (random), so concurrent issuance from
// every node spreads over the slots instead of queueing on one row lock, and the insert, the
// revocation and the prune of one certificate all move the same slot (a slot never goes
// negative; a pruned day's rows fall to zero and are deleted). Each counter moves in the same
// transaction (for an insert, the same statement) as the write it counts. Rows are locked in
// (profile, day, revoked, slot) order by every statement that locks several, so two writers
// never deadlock on them.

/// Rows per counter key.
const COUNT_SLOTS: u8 = 16;

/// The slot of a certificate's counter: from the last octet of its (random) serial.
fn count_slot(serial: &[u8]) -> i16 {
    i16::from(serial.last().copied().unwrap_or(0) % COUNT_SLOTS)
}

/// One counter row's key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct CountKey {
    profile: String,
    day: i32,
    revoked: bool,
    slot: i16,
}

impl CountKey {
    fn of(rec: &CertRecord) -> CountKey {
        CountKey {
            profile: rec.profile.clone(),
            day: super::count_day(rec.not_after),
            revoked: rec.is_revoked(),
            slot: count_slot(&rec.serial),
        }
    }
}

/// In the revoking transaction: the certificate `rec` (now revoked) moves from valid to revoked.
fn count_revocation(tx: &mut impl Db, rec: &CertRecord) -> Result<()> {
    tx.execute(
        "INSERT INTO cert_counts (profile, day, revoked, slot, n) \
         VALUES ($1, $2, false, $3, -1), ($1, $2, true, $3, 1) \
         ON CONFLICT (profile, day, revoked, slot) DO UPDATE SET n = cert_counts.n + excluded.n",
        &[
            &rec.profile,
            &super::count_day(rec.not_after),
            &count_slot(&rec.serial),
        ],
    )
    .map_err(pg("count revocation"))?;
    Ok(())
}

/// In the pruning transaction: take the pruned certificates off their counters (`keys`: how
/// many per key), and delete the rows that fall to zero.
fn count_pruned(tx: &mut impl Db, keys: &std::collections::BTreeMap<CountKey, i64>) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let profiles: Vec<&str> = keys.keys().map(|k| k.profile.as_str()).collect();
    let days: Vec<i32> = keys.keys().map(|k| k.day).collect();
    let revoked: Vec<bool> = keys.keys().map(|k| k.revoked).collect();
    let slots: Vec<i16> = keys.keys().map(|k| k.slot).collect();
    let minus: Vec<i64> = keys.values().map(|n| -n).collect();
    tx.execute(
        "INSERT INTO cert_counts (profile, day, revoked, slot, n) \
         SELECT * FROM unnest($1::text[], $2::integer[], $3::boolean[], $4::smallint[], \
         $5::bigint[]) AS k ORDER BY 1, 2, 3, 4 \
         ON CONFLICT (profile, day, revoked, slot) DO UPDATE SET n = cert_counts.n + excluded.n",
        &[&profiles, &days, &revoked, &slots, &minus],
    )
    .map_err(pg("count pruned certificates"))?;
    tx.execute(
        "DELETE FROM cert_counts WHERE n = 0 AND (profile, day, revoked, slot) IN \
         (SELECT * FROM unnest($1::text[], $2::integer[], $3::boolean[], $4::smallint[]))",
        &[&profiles, &days, &revoked, &slots],
    )
    .map_err(pg("count pruned certificates"))?;
    Ok(())
}

/// One query over the counter rows (a few per profile and notAfter day, however many
/// certificates): their sums.
impl CertCounts for PgStore {
    fn cert_counts(&self) -> Result<Vec<CertCount>> {
        cert_counts_in(&mut *self.read_conn()?)
    }
}

/// The counters summed, read on `c` (a session, or an import's transaction).
pub(super) fn cert_counts_in(c: &mut impl Db) -> Result<Vec<CertCount>> {
    {
        c.query(
            "SELECT profile, day, revoked, sum(n)::bigint FROM cert_counts \
                 GROUP BY profile, day, revoked HAVING sum(n) <> 0 \
                 ORDER BY profile, day, revoked",
            &[],
        )
        .map_err(pg("read certificate counters"))?
        .iter()
        .map(|r| {
            let n: i64 = r.get(3);
            Ok(CertCount {
                profile: r.get(0),
                not_after_day: super::count_date(r.get(1))?,
                revoked: r.get(2),
                count: u64::try_from(n)
                    .map_err(|_| Error::Corrupt(format!("certificate counter below zero ({n})")))?,
            })
        })
        .collect()
    }
}
