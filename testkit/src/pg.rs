//! A throwaway PostgreSQL server for tests.
//!
//! [`PgServer::shared`] starts one cluster per test process with the distribution's `initdb`
//! and `pg_ctl` in a temporary directory: listening on 127.0.0.1 on a free ephemeral port, its
//! unix socket inside that directory, trust authentication for loopback TCP only, run as the
//! `postgres` system user when the tests run as root. Tests running at the same time share it;
//! it is stopped (`pg_ctl stop -m immediate`) and removed when the last of them drops its
//! handle. [`PgServer::fresh_database`] gives each test its own empty database.
//!
//! With `CA_TEST_DATABASE_URL` set (a URL of a role allowed to create databases), no cluster
//! is started: the fresh databases are created on that server and dropped afterwards.
//!
//! ```no_run
//! let server = testkit::pg::PgServer::shared()?;
//! let db = server.fresh_database()?;
//! let _url: &str = db.url();
//! # Ok::<(), testkit::Error>(())
//! ```

use crate::Error;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// The environment variable naming an existing server to test against instead.
pub const DATABASE_URL_ENV: &str = "CA_TEST_DATABASE_URL";

/// The role the throwaway cluster is created with.
const SUPERUSER: &str = "ca_test";

static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());
static NEXT_DB: AtomicU64 = AtomicU64::new(1);

/// A PostgreSQL server for tests: a throwaway cluster, or the one `CA_TEST_DATABASE_URL` names.
#[derive(Debug)]
pub struct PgServer {
    /// URL of the server's administrative database (`postgres`).
    admin_url: String,
    cluster: Option<Cluster>,
}

#[derive(Debug)]
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    run_as: Option<String>,
    /// The server options of `pg_ctl start` (port, socket directory), kept for restarts.
    opts: String,
    /// Removed after the server is stopped (field order: dropped last).
    _dir: tempfile::TempDir,
}

fn err(msg: impl Into<String>) -> Error {
    Error::Postgres(msg.into())
}

/// The directory holding `initdb` and `pg_ctl`: on PATH, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn find_bin_dir() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.is_file() && dir.join("pg_ctl").is_file() {
                // /usr/local/bin/initdb may be a link into the versioned directory.
                let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
                return Ok(real.parent().map_or(dir, Path::to_path_buf));
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).ok_or_else(|| {
        err(
            "PostgreSQL is not installed (no initdb/pg_ctl on PATH or under \
             /usr/lib/postgresql/*/bin): run `scripts/deps.sh test`, or set \
             CA_TEST_DATABASE_URL to a server to test against",
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(cmd: &mut Command, what: &str) -> Result<(), Error> {
    let out = cmd
        .output()
        .map_err(|e| err(format!("{what}: cannot run: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

impl Cluster {
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut c = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        // A working directory the server's user can enter.
        c.current_dir(self._dir.path());
        c
    }

    /// An empty directory for a cluster, owned by the user that will run it.
    fn new_dir() -> Result<Self, Error> {
        let bin = find_bin_dir()?;
        let run_as = is_root().then(|| "postgres".to_string());
        let dir = tempfile::Builder::new()
            .prefix("ca-pg-")
            .tempdir()
            .map_err(|e| err(format!("temporary directory: {e}")))?;
        if let Some(user) = &run_as {
            // Owned by the unprivileged user that runs the server.
            run(
                Command::new("chown").arg(user).arg(dir.path()),
                "chown of the cluster directory",
            )?;
        }
        let data = dir.path().join("data");
        Ok(Cluster {
            bin,
            data,
            run_as,
            opts: String::new(),
            _dir: dir,
        })
    }

    fn start() -> Result<(Self, u16), Error> {
        let mut cluster = Self::new_dir()?;
        run(
            cluster
                .command("initdb")
                .arg("-D")
                .arg(&cluster.data)
                .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-locale"])
                .arg("--no-sync"),
            "initdb",
        )?;
        // Loopback TCP only, trusted; no other way in. Replication too, for a standby
        // ([`PgNode::standby_of`]).
        let hba = "host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n";
        std::fs::write(cluster.data.join("pg_hba.conf"), hba)
            .map_err(|e| err(format!("pg_hba.conf: {e}")))?;
        let port = cluster.start_on_free_port()?;
        Ok((cluster, port))
    }

    /// Start the server on a free loopback port (a few tries: a port may be taken in between).
    fn start_on_free_port(&mut self) -> Result<u16, Error> {
        let mut last = None;
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| err(format!("free port: {e}")))?
                .port();
            self.opts = format!(
                "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} \
                 -c max_connections=200 -c shared_buffers=32MB",
                self._dir.path().display()
            );
            match self.pg_start() {
                Ok(()) => return Ok(port),
                // Most likely the port was taken in between: try another.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| err("pg_ctl start failed")))
    }

    /// `pg_ctl start` with the options of the first start (same port), waiting until it
    /// accepts connections.
    fn pg_start(&self) -> Result<(), Error> {
        run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "-t", "60", "-o", &self.opts, "-l"])
                .arg(self._dir.path().join("server.log"))
                .arg("start"),
            "pg_ctl start",
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

impl PgServer {
    /// The server of this test process: the one `CA_TEST_DATABASE_URL` names, else a
    /// throwaway cluster shared by the tests that hold it, started if none runs.
    pub fn shared() -> Result<Arc<PgServer>, Error> {
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = shared.upgrade() {
            return Ok(s);
        }
        let server = Arc::new(Self::start()?);
        *shared = Arc::downgrade(&server);
        Ok(server)
    }

    /// A server of its own (a fresh cluster, or `CA_TEST_DATABASE_URL`).
    pub fn start() -> Result<PgServer, Error> {
        if let Ok(url) = std::env::var(DATABASE_URL_ENV) {
            if !url.is_empty() {
                return Ok(PgServer {
                    admin_url: url,
                    cluster: None,
                });
            }
        }
        let (cluster, port) = Cluster::start()?;
        Ok(PgServer {
            admin_url: format!("postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"),
            cluster: Some(cluster),
        })
    }

    /// The URL of the server's administrative database.
    pub fn url(&self) -> &str {
        &self.admin_url
    }

    /// Create an empty database for one test; it is dropped with the returned handle.
    pub fn fresh_database(self: &Arc<Self>) -> Result<TestDatabase, Error> {
        let name = format!(
            "ca_test_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let mut client = postgres::Client::connect(&self.admin_url, postgres::NoTls)
            .map_err(|e| err(format!("connect to {}: {e}", self.redacted())))?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(|e| err(format!("create database {name}: {e}")))?;
        let url = with_database(&self.admin_url, &name)?;
        Ok(TestDatabase {
            server: self.clone(),
            name,
            url,
        })
    }

    /// The admin URL without a password, for messages.
    fn redacted(&self) -> String {
        match self.admin_url.split_once('@') {
            Some((_, host)) => format!("postgresql://…@{host}"),
            None => self.admin_url.clone(),
        }
    }

    /// Whether this is a throwaway cluster (not `CA_TEST_DATABASE_URL`).
    pub fn is_throwaway(&self) -> bool {
        self.cluster.is_some()
    }
}

/// A PostgreSQL server of its own that a test stops, starts, promotes or replicates: always a
/// throwaway cluster (never `CA_TEST_DATABASE_URL`, which a test must not stop), stopped and
/// removed on drop.
#[derive(Debug)]
pub struct PgNode {
    cluster: Cluster,
    port: u16,
}

impl PgNode {
    /// A new cluster, started, that accepts replication connections from loopback.
    pub fn start() -> Result<PgNode, Error> {
        let (cluster, port) = Cluster::start()?;
        Ok(PgNode { cluster, port })
    }

    /// A streaming standby of `primary`: `pg_basebackup -R` (a base backup that writes the
    /// standby's `primary_conninfo` and `standby.signal`) into a directory of its own, started
    /// on a port of its own. Read-only until [`PgNode::promote`]d.
    pub fn standby_of(primary: &PgNode) -> Result<PgNode, Error> {
        let mut cluster = Cluster::new_dir()?;
        run(
            cluster
                .command("pg_basebackup")
                .arg("-D")
                .arg(&cluster.data)
                .args(["-R", "-X", "stream", "-c", "fast", "-h", "127.0.0.1"])
                .args(["-p", &primary.port.to_string(), "-U", SUPERUSER]),
            "pg_basebackup",
        )?;
        let port = cluster.start_on_free_port()?;
        Ok(PgNode { cluster, port })
    }

    /// The loopback port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` for a (multi-host) URL.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The URL of database `name` on this server alone.
    pub fn url(&self, name: &str) -> String {
        format!("postgresql://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Create an empty database `name` (on a primary; a standby receives it by replication).
    pub fn create_database(&self, name: &str) -> Result<String, Error> {
        let mut client = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .map_err(|e| err(format!("connect to 127.0.0.1:{}: {e}", self.port)))?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(|e| err(format!("create database {name}: {e}")))?;
        Ok(self.url(name))
    }

    /// `pg_ctl stop -m MODE`: `fast` (sessions terminated, SQLSTATE 57P01, a clean
    /// shutdown), `immediate` (no shutdown checkpoint: crash recovery at the next start).
    pub fn stop(&self, mode: &str) -> Result<(), Error> {
        run(
            self.cluster
                .command("pg_ctl")
                .arg("-D")
                .arg(&self.cluster.data)
                .args(["-w", "-t", "60", "-m", mode, "stop"]),
            "pg_ctl stop",
        )
    }

    /// Start it again after [`PgNode::stop`], on the same port.
    pub fn start_again(&self) -> Result<(), Error> {
        self.cluster.pg_start()
    }

    /// `pg_ctl promote -w`: a standby becomes a primary (read-write) and leaves recovery.
    pub fn promote(&self) -> Result<(), Error> {
        run(
            self.cluster
                .command("pg_ctl")
                .arg("-D")
                .arg(&self.cluster.data)
                .args(["-w", "-t", "60", "promote"]),
            "pg_ctl promote",
        )
    }

    /// `ALTER SYSTEM SET name = 'value'` and a configuration reload (e.g.
    /// `synchronous_standby_names` on a primary: commits wait for the standby).
    pub fn alter_system(&self, name: &str, value: &str) -> Result<(), Error> {
        let mut client = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .map_err(|e| err(format!("connect to 127.0.0.1:{}: {e}", self.port)))?;
        // Two statements: ALTER SYSTEM cannot run inside the implicit transaction of a batch.
        client
            .batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'"))
            .and_then(|()| client.batch_execute("SELECT pg_reload_conf()"))
            .map_err(|e| err(format!("ALTER SYSTEM SET {name}: {e:?}")))
    }

    /// Whether the server is in recovery (a standby): `SELECT pg_is_in_recovery()`.
    pub fn in_recovery(&self) -> Result<bool, Error> {
        let mut client = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .map_err(|e| err(format!("connect to 127.0.0.1:{}: {e}", self.port)))?;
        client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .map(|r| r.get(0))
            .map_err(|e| err(format!("pg_is_in_recovery: {e}")))
    }
}

/// `url` with its database replaced by `name` (URL form only).
fn with_database(url: &str, name: &str) -> Result<String, Error> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| err(format!("{DATABASE_URL_ENV} must be a postgresql:// URL")))?;
    let (authority, query) = match rest.split_once('/') {
        Some((a, path)) => (a, path.split_once('?').map(|(_, q)| q)),
        None => match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        },
    };
    Ok(match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    })
}

/// An empty database of its own for one test, dropped (with its connections) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    server: Arc<PgServer>,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Run SQL statements in this database (a test that sets up a state no binary would,
    /// e.g. a schema version from the future).
    pub fn execute(&self, sql: &str) -> Result<(), Error> {
        let mut c = postgres::Client::connect(&self.url, postgres::NoTls)
            .map_err(|e| err(format!("connect to {}: {e}", self.name)))?;
        c.batch_execute(sql)
            .map_err(|e| err(format!("in database {}: {e}", self.name)))
    }

    /// The connection URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A URL of this database for a new role that may only read it (`SELECT` on the tables
    /// that exist now, no other privilege), on a throwaway cluster (trust authentication
    /// there); `None` on `CA_TEST_DATABASE_URL`, where a test must not create roles.
    pub fn reader_url(&self) -> Result<Option<String>, Error> {
        if !self.server.is_throwaway() {
            return Ok(None);
        }
        let role = format!("{}_reader", self.name);
        self.execute(&format!(
            "CREATE ROLE {role} LOGIN; \
             GRANT CONNECT ON DATABASE {db} TO {role}; \
             GRANT USAGE ON SCHEMA public TO {role}; \
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
            db = self.name
        ))?;
        let (scheme, rest) = self
            .url
            .split_once("://")
            .ok_or_else(|| err("database URL without a scheme"))?;
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        Ok(Some(format!("{scheme}://{role}@{host}")))
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // A throwaway cluster goes away as a whole; on an external server clean up.
        if self.server.is_throwaway() {
            return;
        }
        if let Ok(mut c) = postgres::Client::connect(&self.server.admin_url, postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_the_database_replaced() {
        assert_eq!(
            with_database("postgresql://u@h:5/postgres", "d").unwrap(),
            "postgresql://u@h:5/d"
        );
        assert_eq!(
            with_database("postgres://u:p@h/x?sslmode=disable", "d").unwrap(),
            "postgres://u:p@h/d?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h", "d").unwrap(),
            "postgres://h/d"
        );
        assert!(with_database("host=h", "d").is_err());
    }

    #[test]
    fn a_fresh_database_answers_and_databases_are_separate() {
        let server = PgServer::shared().unwrap();
        let a = server.fresh_database().unwrap();
        let b = server.fresh_database().unwrap();
        assert_ne!(a.url(), b.url());
        let mut c = postgres::Client::connect(a.url(), postgres::NoTls).unwrap();
        c.batch_execute("CREATE TABLE t (x int)").unwrap();
        let mut d = postgres::Client::connect(b.url(), postgres::NoTls).unwrap();
        assert!(d.batch_execute("SELECT * FROM t").is_err());
        let row = c.query_one("SELECT current_database()", &[]).unwrap();
        assert_eq!(row.get::<_, String>(0), a.name());
    }
}
