//! The pooled database session: a `postgres` client with its own prepared statements, and
//! the pool's check that a session may still write.
//!
//! Every statement the store runs is prepared once per session and kept ([`StmtCache`]): a
//! statement then costs one round trip (bind and execute) instead of two (prepare, then
//! bind and execute), and the server parses it once per session instead of once per call.
//!
//! The pool checks a session before lending it ([`ReadWriteManager::is_valid`]: the session
//! must still be writable, so a restarted server, a promoted standby's old primary or a
//! primary made read-only is noticed and the session replaced). The check is a round trip, so
//! a session checked less than [`RECHECK`] ago is lent without one, unless a statement on it
//! has failed since with an error that says the database may be unavailable
//! ([`super::is_unavailable`]): then the next checkout checks again.

use super::is_unavailable;
use r2d2_postgres::postgres::types::ToSql;
use r2d2_postgres::postgres::{self, GenericClient, IsolationLevel, Row, Statement};
use r2d2_postgres::{r2d2, PostgresConnectionManager};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a successful writability check of a session stands.
pub(super) const RECHECK: Duration = Duration::from_secs(1);

/// Prepared statements kept per session at most; past it the cache starts again (the store's
/// statements are a fixed set well below it; the bound only guards against a caller that
/// builds statements from values).
const MAX_STATEMENTS: usize = 256;

pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// What a session remembers besides its client.
#[derive(Default)]
pub(crate) struct SessionState {
    statements: HashMap<Box<str>, Statement>,
    /// When the session was last found writable; `None` after an error that may mean the
    /// database is gone, read-only or restarted.
    checked_at: Option<Instant>,
    /// The session's `synchronous_commit` (`on` from [`SessionSetup`]).
    synchronous_commit: bool,
}

impl SessionState {
    fn statement<C: GenericClient>(
        &mut self,
        c: &mut C,
        sql: &str,
    ) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = c.prepare(sql)?;
        if self.statements.len() >= MAX_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.into(), s.clone());
        Ok(s)
    }

    /// Note a failed statement: a possibly unavailable database has the session checked at
    /// its next checkout; a schema changed under a prepared statement (a newer node
    /// migrated) drops the prepared statements.
    fn saw(&mut self, e: &postgres::Error) {
        if is_unavailable(e) {
            self.checked_at = None;
        }
        if let Some(code) = e.code() {
            // feature_not_supported ("cached plan must not change result type"),
            // invalid_sql_statement_name (a prepared statement the server no longer has).
            if matches!(code.code(), "0A000" | "26000") {
                self.statements.clear();
            }
        }
    }
}

/// A statement the store runs: SQL text (prepared once per session and kept) or a statement
/// prepared by the caller.
pub(crate) trait Sql {
    fn prepared<C: GenericClient>(
        &self,
        c: &mut C,
        state: &mut SessionState,
    ) -> Result<Statement, postgres::Error>;
}

impl Sql for str {
    fn prepared<C: GenericClient>(
        &self,
        c: &mut C,
        state: &mut SessionState,
    ) -> Result<Statement, postgres::Error> {
        state.statement(c, self)
    }
}

impl Sql for String {
    fn prepared<C: GenericClient>(
        &self,
        c: &mut C,
        state: &mut SessionState,
    ) -> Result<Statement, postgres::Error> {
        state.statement(c, self)
    }
}

impl Sql for Statement {
    fn prepared<C: GenericClient>(
        &self,
        _: &mut C,
        _: &mut SessionState,
    ) -> Result<Statement, postgres::Error> {
        Ok(self.clone())
    }
}

/// Where the store's statements run: a pooled session ([`PgConn`]) or a transaction on one
/// ([`Tx`]). The methods are the `postgres` client's, with statements kept per session.
pub(crate) trait Db {
    fn execute<S: Sql + ?Sized>(
        &mut self,
        sql: &S,
        params: Params<'_>,
    ) -> Result<u64, postgres::Error>;
    fn query<S: Sql + ?Sized>(
        &mut self,
        sql: &S,
        params: Params<'_>,
    ) -> Result<Vec<Row>, postgres::Error>;
    fn query_opt<S: Sql + ?Sized>(
        &mut self,
        sql: &S,
        params: Params<'_>,
    ) -> Result<Option<Row>, postgres::Error>;
    fn query_one<S: Sql + ?Sized>(
        &mut self,
        sql: &S,
        params: Params<'_>,
    ) -> Result<Row, postgres::Error>;
    /// Run `sql` (one or more statements, no parameters) with the simple query protocol.
    fn batch_execute(&mut self, sql: &str) -> Result<(), postgres::Error>;
    /// Prepare `sql` for the caller to keep (not kept by the session).
    fn prepare(&mut self, sql: &str) -> Result<Statement, postgres::Error>;
}

/// Implements [`Db`] for a type with a `GenericClient` (`$client`) and a `SessionState`
/// (`$state`).
macro_rules! impl_db {
    ($ty:ty, $client:ident, $state:ident) => {
        impl Db for $ty {
            fn execute<S: Sql + ?Sized>(
                &mut self,
                sql: &S,
                params: Params<'_>,
            ) -> Result<u64, postgres::Error> {
                let r = sql
                    .prepared(&mut self.$client, &mut *self.$state)
                    .and_then(|s| self.$client.execute(&s, params));
                self.noted(r)
            }
            fn query<S: Sql + ?Sized>(
                &mut self,
                sql: &S,
                params: Params<'_>,
            ) -> Result<Vec<Row>, postgres::Error> {
                let r = sql
                    .prepared(&mut self.$client, &mut *self.$state)
                    .and_then(|s| self.$client.query(&s, params));
                self.noted(r)
            }
            fn query_opt<S: Sql + ?Sized>(
                &mut self,
                sql: &S,
                params: Params<'_>,
            ) -> Result<Option<Row>, postgres::Error> {
                let r = sql
                    .prepared(&mut self.$client, &mut *self.$state)
                    .and_then(|s| self.$client.query_opt(&s, params));
                self.noted(r)
            }
            fn query_one<S: Sql + ?Sized>(
                &mut self,
                sql: &S,
                params: Params<'_>,
            ) -> Result<Row, postgres::Error> {
                let r = sql
                    .prepared(&mut self.$client, &mut *self.$state)
                    .and_then(|s| self.$client.query_one(&s, params));
                self.noted(r)
            }
            fn batch_execute(&mut self, sql: &str) -> Result<(), postgres::Error> {
                let r = self.$client.batch_execute(sql);
                self.noted(r)
            }
            fn prepare(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
                let r = self.$client.prepare(sql);
                self.noted(r)
            }
        }

        impl $ty {
            fn noted<T>(&mut self, r: Result<T, postgres::Error>) -> Result<T, postgres::Error> {
                if let Err(e) = &r {
                    self.$state.saw(e);
                }
                r
            }
        }
    };
}

/// A pooled session.
pub(super) struct PgConn {
    client: postgres::Client,
    state: Box<SessionState>,
}

impl_db!(PgConn, client, state);

impl PgConn {
    /// Set the session's `synchronous_commit` to `on` (commits return once durable) or `off`
    /// (commits return once applied; durable at the WAL writer's next flush or any later
    /// durable commit's, see [`super::PgStore`]'s deferrals). A round trip only when it
    /// changes.
    pub(super) fn set_synchronous_commit(&mut self, on: bool) -> Result<(), postgres::Error> {
        if self.state.synchronous_commit != on {
            self.batch_execute(if on {
                "SET synchronous_commit = on"
            } else {
                "SET synchronous_commit = off"
            })?;
            self.state.synchronous_commit = on;
        }
        Ok(())
    }

    /// Begin a transaction (read-write, the session's isolation level).
    pub(super) fn transaction(&mut self) -> Result<Tx<'_>, postgres::Error> {
        self.transaction_with(None, false)
    }

    /// Begin a transaction with `isolation` (the session's default if `None`), read-only if
    /// `read_only`.
    pub(super) fn transaction_with(
        &mut self,
        isolation: Option<IsolationLevel>,
        read_only: bool,
    ) -> Result<Tx<'_>, postgres::Error> {
        let mut b = self.client.build_transaction().read_only(read_only);
        if let Some(level) = isolation {
            b = b.isolation_level(level);
        }
        match b.start() {
            Ok(tx) => Ok(Tx {
                tx,
                state: &mut self.state,
            }),
            Err(e) => {
                self.state.saw(&e);
                Err(e)
            }
        }
    }
}

/// A transaction on a pooled session; rolled back when dropped without [`Tx::commit`].
pub(super) struct Tx<'a> {
    tx: postgres::Transaction<'a>,
    state: &'a mut SessionState,
}

impl_db!(Tx<'_>, tx, state);

impl Tx<'_> {
    pub(super) fn commit(self) -> Result<(), postgres::Error> {
        let Tx { tx, state } = self;
        let r = tx.commit();
        if let Err(e) = &r {
            state.saw(e);
        }
        r
    }
}

/// r2d2_postgres's manager, with a stricter check of a pooled session before it is lent: the
/// session must still be writable (`SHOW transaction_read_only` is `off`), in the one round
/// trip r2d2_postgres spends on an empty query, and at most once per [`RECHECK`] while the
/// session's statements succeed. A session that is closed (the server restarted or failed
/// over), or whose server became read-only (a standby, a fenced old primary), is dropped and
/// replaced by a new one; new sessions go to a writable host of the URL when it says
/// `target_session_attrs=read-write`.
#[derive(Debug)]
pub(super) struct ReadWriteManager(pub(super) PostgresConnectionManager<postgres::NoTls>);

/// Why a pooled session was refused: a client error, or a session that no longer accepts
/// writes.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error(transparent)]
    Pg(#[from] postgres::Error),
    #[error("the database session is read-only (a standby, or a primary made read-only)")]
    ReadOnly,
}

impl r2d2::ManageConnection for ReadWriteManager {
    type Connection = PgConn;
    type Error = ConnError;

    fn connect(&self) -> Result<PgConn, ConnError> {
        Ok(PgConn {
            client: self.0.connect()?,
            state: Box::default(),
        })
    }

    fn is_valid(&self, conn: &mut PgConn) -> Result<(), ConnError> {
        if conn
            .state
            .checked_at
            .is_some_and(|at| at.elapsed() < RECHECK)
        {
            return Ok(());
        }
        let read_only = conn
            .client
            .simple_query("SHOW transaction_read_only")?
            .into_iter()
            .any(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("on"),
                _ => false,
            });
        if read_only {
            return Err(ConnError::ReadOnly);
        }
        conn.state.checked_at = Some(Instant::now());
        Ok(())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.client.is_closed()
    }
}

/// Every pooled session starts committing durably, whatever the server's default.
#[derive(Debug)]
pub(super) struct SessionSetup;

impl r2d2::CustomizeConnection<PgConn, ConnError> for SessionSetup {
    fn on_acquire(&self, conn: &mut PgConn) -> Result<(), ConnError> {
        conn.client.batch_execute("SET synchronous_commit = on")?;
        conn.state.synchronous_commit = true;
        Ok(())
    }
}
