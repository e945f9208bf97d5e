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
    /// The loopback port it listens on (kept across [`PgServer::stop`] / [`PgServer::resume`]).
    port: u16,
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

    fn start() -> Result<(Self, u16), Error> {
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
        let mut cluster = Cluster {
            bin,
            data,
            run_as,
            port: 0,
            _dir: dir,
        };
        run(
            cluster
                .command("initdb")
                .arg("-D")
                .arg(&cluster.data)
                .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-locale"])
                .arg("--no-sync"),
            "initdb",
        )?;
        // Loopback TCP only, trusted; no other way in.
        let hba = "host all all 127.0.0.1/32 trust\n";
        std::fs::write(cluster.data.join("pg_hba.conf"), hba)
            .map_err(|e| err(format!("pg_hba.conf: {e}")))?;
        let mut last = None;
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| err(format!("free port: {e}")))?
                .port();
            cluster.port = port;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok((cluster, port)),
                // Most likely the port was taken in between: try another.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| err("pg_ctl start failed")))
    }
}

impl Cluster {
    /// `pg_ctl start` on [`Cluster::port`], waiting until it accepts connections.
    fn pg_ctl_start(&self) -> Result<(), Error> {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} \
             -c max_connections=200 -c shared_buffers=32MB",
            self.port,
            self._dir.path().display()
        );
        run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "-t", "60", "-o", &opts, "-l"])
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

    /// A throwaway cluster of the test's own, whatever `CA_TEST_DATABASE_URL` says: for tests
    /// that stop and start the server ([`PgServer::stop`], [`PgServer::resume`]).
    pub fn own_cluster() -> Result<PgServer, Error> {
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

    /// Stop the cluster (`pg_ctl stop -m fast`: connections are closed, new ones refused)
    /// until [`PgServer::resume`]. Only for a server of the test's own
    /// ([`PgServer::own_cluster`]): other tests share [`PgServer::shared`]. Refused for the
    /// server `CA_TEST_DATABASE_URL` names (it is not the test's to stop).
    pub fn stop(&self) -> Result<(), Error> {
        let c = self.owned_cluster("stop")?;
        run(
            c.command("pg_ctl")
                .arg("-D")
                .arg(&c.data)
                .args(["-w", "-t", "60", "-m", "fast", "stop"]),
            "pg_ctl stop",
        )
    }

    /// Start the cluster again after [`PgServer::stop`], on the same port, with its data.
    pub fn resume(&self) -> Result<(), Error> {
        self.owned_cluster("start")?.pg_ctl_start()
    }

    fn owned_cluster(&self, what: &str) -> Result<&Cluster, Error> {
        self.cluster.as_ref().ok_or_else(|| {
            err(format!(
                "cannot {what} the server {DATABASE_URL_ENV} names: only a throwaway cluster"
            ))
        })
    }

    /// Whether this is a throwaway cluster (not `CA_TEST_DATABASE_URL`).
    pub fn is_throwaway(&self) -> bool {
        self.cluster.is_some()
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
