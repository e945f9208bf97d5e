//! The `ca-server` command line: `serve`, `ocsp` (the stateless OCSP responder), `dev`, and
//! the admin client commands (`token create`, `revoke`, `certs list`, `audit
//! show|verify|checkpoint|export`, `admin-cert create`) that talk to the HTTPS API with an
//! administrator certificate (flags, or the variables of `dev.env`); `audit verify-export` and
//! `store prune` work offline, and `store copy` (sled to PostgreSQL, [`crate::store_copy`]) on
//! a stopped server's store.

use crate::api::types::*;
use crate::client::{ApiClient, ClientError};
use crate::config::ServerConfig;
use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The internal CA server and its admin client.
#[derive(Debug, Parser)]
#[command(
    name = "ca-server",
    version = cli_support::version!(),
    about,
    propagate_version = true
)]
pub struct Cli {
    /// Log as JSON lines (default: human-readable).
    #[arg(long, global = true, env = "CA_LOG_JSON")]
    pub log_json: bool,
    /// What to run.
    #[command(subcommand)]
    pub cmd: Command,
}

/// The `ca-server` subcommands: the server itself, and the admin client.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the CA from a configuration file.
    Serve {
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Stateless OCSP responder: serve /ocsp, /crl and /ca.crt from the PostgreSQL store the
    /// signing nodes write, following its changes, with no HSM (the configuration's [hsm] is
    /// ignored). README "Stateless OCSP responders".
    Ocsp {
        /// The TOML configuration (the same file format as `serve`).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Development CA: on an empty DIR, rehearse the key ceremonies on SoftHSM, write a config
    /// and an admin certificate, then serve; on an existing DIR, reuse it. Writes DIR/dev.env.
    Dev {
        /// Data directory.
        #[arg(long, default_value = "ca-data")]
        data: PathBuf,
        /// HTTPS listener address (port 0: any free port; the bound address goes to dev.env).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Status (OCSP/CRL) listener address.
        #[arg(long)]
        status_listen: Option<SocketAddr>,
    },
    /// Enrollment tokens.
    Token {
        /// Token commands.
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Revoke a certificate.
    Revoke(RevokeArgs),
    /// Issued certificates.
    Certs {
        /// Certificate commands.
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// The audit log.
    Audit {
        /// Audit commands.
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Administrator certificates (security officer only).
    AdminCert {
        /// Admin certificate commands.
        #[command(subcommand)]
        cmd: AdminCertCmd,
    },
    /// The store itself.
    Store {
        /// Store commands.
        #[command(subcommand)]
        cmd: StoreCmd,
    },
    /// Check a configuration file and exit.
    CheckConfig {
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print a shell completion script to stdout (README "Shell completions and man pages").
    ///
    /// Example: ca-server completions bash > /etc/bash_completion.d/ca-server
    #[command(verbatim_doc_comment)]
    Completions(cli_support::generate::CompletionsArgs),
    /// Write the man pages (ca-server.1, ca-server-token-create.1, ...) into DIR.
    #[command(hide = true)]
    Manpages(cli_support::generate::ManpagesArgs),
}

/// How the admin client reaches the API.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// API base URL.
    #[arg(long, env = "CA_URL", default_value = "https://127.0.0.1:8443")]
    pub url: String,
    /// Root certificate to verify the server with (PEM; required).
    #[arg(long, env = "CA_ROOT")]
    pub root: Option<PathBuf>,
    /// Admin certificate (PEM; required).
    #[arg(long, env = "CA_ADMIN_CERT")]
    pub cert: Option<PathBuf>,
    /// Admin private key (PEM; required).
    #[arg(long, env = "CA_ADMIN_KEY")]
    pub key: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Conn {
    /// Build the client.
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        let read = |p: &Option<PathBuf>, what: &str| {
            let p = p
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("the {what} is required"))?;
            std::fs::read(p).with_context(|| format!("reading the {what} {}", p.display()))
        };
        let root = read(&self.root, "root certificate (--root / CA_ROOT)")?;
        let cert = read(&self.cert, "admin certificate (--cert / CA_ADMIN_CERT)")?;
        let key = read(&self.key, "admin key (--key / CA_ADMIN_KEY)")?;
        Ok(ApiClient::new(&self.url, &root, Some((&cert, &key)))?)
    }

    /// The root certificate path (`--root` / `CA_ROOT`).
    pub fn root_path(&self) -> anyhow::Result<&Path> {
        self.root
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("the root certificate (--root / CA_ROOT) is required"))
    }
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a one-time enrollment token bound to an identity and a profile.
    Create {
        /// Subject commonName the certificate will carry.
        #[arg(long)]
        cn: Option<String>,
        /// A SAN the holder may request (repeatable): dns:NAME, uri:URI, ip:ADDR, email:ADDR.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Profile the certificate is issued under.
        #[arg(long, default_value = "client")]
        profile: String,
        /// Lifetime (e.g. 30m, 1h, 2d; 1s to 365d, and at most the server's tokens.max_ttl;
        /// default from the server, 1h).
        #[arg(long, allow_hyphen_values = true, value_parser = crate::duration::flag("--ttl", crate::duration::TOKEN_TTL_FLAG))]
        ttl: Option<String>,
        /// How to reach the API (URL, root, admin certificate and key).
        #[command(flatten)]
        conn: Conn,
    },
}

/// `revoke` arguments.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Serial number (hex).
    pub serial: String,
    /// RFC 5280 reason: unspecified, keyCompromise, superseded, cessationOfOperation, ...
    /// keyCompromise also revokes every later generation of the certificate's lineage (its
    /// renewals) and locks the lineage.
    #[arg(long, default_value = "unspecified")]
    pub reason: String,
    /// Revoke the whole lineage of SERIAL (every generation renewed from the same enrollment)
    /// for REASON, and lock it: no generation can renew or re-enroll any more.
    #[arg(long)]
    pub lineage: bool,
    /// How to reach the API (URL, root, admin certificate and key).
    #[command(flatten)]
    pub conn: Conn,
}

/// `certs` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// List or search certificates, one page at a time (a keyset cursor: every certificate
    /// stored for the whole listing is listed exactly once). Prints the command for the next
    /// page when more match; `--all` follows them all.
    List {
        /// Which certificates.
        #[command(flatten)]
        filters: CertsFilterArgs,
        /// Page size (1 to 1000; default 100, or 1000 with --all).
        #[arg(long)]
        limit: Option<usize>,
        /// Continue a listing: the cursor printed after its previous page (same filters).
        #[arg(long, conflicts_with = "all")]
        cursor: Option<String>,
        /// Every page: follow the cursor to the end (with --json, one JSON object per line).
        #[arg(long)]
        all: bool,
        /// How to reach the API (URL, root, admin certificate and key).
        #[command(flatten)]
        conn: Conn,
    },
    /// Export every matching certificate as JSON lines (NDJSON, one certificate per line,
    /// the fields of `certs list --json`), page by page in constant memory; with --pem each
    /// line carries the certificate's PEM. --json is the only format (accepted for clarity).
    Export {
        /// Which certificates (default: all).
        #[command(flatten)]
        filters: CertsFilterArgs,
        /// Include each certificate (PEM) in its line.
        #[arg(long)]
        pem: bool,
        /// Write to this file (must not exist; written as FILE.partial and renamed once
        /// complete) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// How to reach the API (URL, root, admin certificate and key).
        #[command(flatten)]
        conn: Conn,
    },
    /// Count certificates by status, by profile and by expiry (expired; notAfter within 24
    /// hours, 7 or 30 days; later), from counters the store keeps with every issuance,
    /// revocation and prune: the answer costs the same with a thousand or a million
    /// certificates. Expiry is counted by the UTC date of notAfter (docs/API.md). A table by
    /// default; --json prints the API's answer.
    Counts {
        /// How to reach the API (URL, root, admin certificate and key).
        #[command(flatten)]
        conn: Conn,
    },
}

/// The filters of `certs list` and `certs export`.
#[derive(Debug, Clone, Args)]
pub struct CertsFilterArgs {
    /// Only this identity (CN, else first SAN).
    #[arg(long)]
    identity: Option<String>,
    /// valid, revoked or expired.
    #[arg(long)]
    status: Option<String>,
    /// Unexpired certificates that expire within this span (e.g. 24h; 1s to 36500d).
    #[arg(long, allow_hyphen_values = true, value_parser = crate::duration::flag("--expiring-within", crate::duration::EXPIRING_WITHIN))]
    expiring_within: Option<String>,
    /// Only the lineage of this serial (hex): every generation renewed from the same
    /// enrollment, oldest first.
    #[arg(long, value_name = "SERIAL")]
    lineage: Option<String>,
}

impl CertsFilterArgs {
    fn query(self) -> ca_api::types::CertsQuery {
        ca_api::types::CertsQuery {
            identity: self.identity,
            status: self.status,
            expiring_within: self.expiring_within,
            lineage: self.lineage,
            ..Default::default()
        }
    }
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Show audit events.
    Show {
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// How to reach the API (URL, root, admin certificate and key).
        #[command(flatten)]
        conn: Conn,
    },
    /// Verify the whole log (exit 1 if it was tampered with): the hash chain, the head, and
    /// every signed checkpoint (signature, hash of the event at its sequence, and that the log
    /// still reaches it). On the server by default; with --config, here, on the store of that
    /// configuration (PostgreSQL: beside the running nodes; sled: with the server stopped, its
    /// store is locked while it runs). Either way the log is read in pages, in constant
    /// memory; on a terminal, progress goes to standard error every second.
    Verify {
        /// Verify here, on the store of this server configuration, instead of on the server.
        #[arg(long, short, conflicts_with = "archive")]
        config: Option<PathBuf>,
        /// Verify an archive file (`audit archive`) offline instead, with --public-key alone:
        /// its chain, every checkpoint's signature, and that it ends at its last checkpoint.
        #[arg(long, requires = "public_key")]
        archive: Option<PathBuf>,
        /// With --config: the audit public key (PEM) to check checkpoint signatures with
        /// (default: the file the server writes, `[audit] public_key`, when `[audit] key` is
        /// set). With --archive: required.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// How to reach the API (URL, root, admin certificate and key).
        #[command(flatten)]
        conn: Conn,
    },
    /// Sign a checkpoint of the log's current head now (audit checkpoint key, `[audit] key`).
    Checkpoint {
        /// How to reach the API (URL, root, admin certificate and key).
        #[command(flatten)]
        conn: Conn,
    },
    /// Export events and checkpoints as JSON lines for off-box storage. The server signs a
    /// checkpoint first; the export ends at it and starts after the last checkpoint before
    /// --since (its anchor). Check it anywhere with `audit verify-export`.
    Export {
        /// First sequence number wanted (rounded down to the anchor checkpoint).
        #[arg(long, default_value_t = 1)]
        since: u64,
        /// Output file (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// How to reach the API (URL, root, admin certificate and key).
        #[command(flatten)]
        conn: Conn,
    },
    /// Archive the log, from its start through a signed checkpoint, into a file (an export,
    /// JSON lines: README "Archiving and truncating the audit log"), here, on the store of a
    /// server configuration (sled: with the server stopped). Written to a temporary file,
    /// synced, verified with the audit public key, then renamed; never over an existing file.
    Archive {
        /// The server configuration whose store is archived.
        #[arg(long, short)]
        config: PathBuf,
        /// The archive file to write (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// End at the signed checkpoint of this sequence (default: the latest checkpoint).
        #[arg(long)]
        through_checkpoint: Option<u64>,
        /// The audit public key (PEM) (default: `[audit] public_key` of the configuration).
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete the events up to and including the signed checkpoint of sequence N from the
    /// store, once ARCHIVE verifies, holds that checkpoint and matches the store; the log then
    /// starts at that checkpoint and `audit verify` checks it from there. Deletes in batches,
    /// each durable: run the same command again to finish an interrupted truncation. sled:
    /// with the server stopped; PostgreSQL: beside running nodes.
    Truncate {
        /// The server configuration whose store is truncated.
        #[arg(long, short)]
        config: PathBuf,
        /// Sequence number of the signed checkpoint the log will start from.
        #[arg(long)]
        below_checkpoint: u64,
        /// The archive holding the events being deleted (`audit archive`).
        #[arg(long)]
        archive: PathBuf,
        /// The audit public key (PEM) (default: `[audit] public_key` of the configuration).
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Records deleted per durable batch.
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify an export offline, with the audit public key alone (no server, HSM or store):
    /// chain links, checkpoint signatures, and that the export ends at its last checkpoint.
    /// Exit 1 if it does not verify.
    VerifyExport {
        /// The export (JSON lines).
        file: PathBuf,
        /// The audit public key (PEM): from the key ceremony, or the file the server writes
        /// (`[audit] public_key`).
        #[arg(long)]
        public_key: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// One retention pass now (README "Retention"): prune the certificates expired longer
    /// than `[retention] certificates` ago and the tokens finished longer than `tokens` ago,
    /// in batches of `batch`, with one audit event; a revoked certificate only once the
    /// archived CRL has listed it after its expiry. On sled, stop the server first
    /// (its store is locked while it runs); on PostgreSQL it may run beside the nodes.
    ///
    /// Example: ca-server store prune --config /etc/ca/ca.toml --dry-run
    #[command(verbatim_doc_comment)]
    Prune(crate::retention::PruneArgs),
    /// Move a sled store (`ca-server dev` or a single node) to an empty PostgreSQL database,
    /// in one transaction: certificates (revocation state, lineage, generation), revocations,
    /// lineage locks, tokens (used and unused), OCSP responses, the CRL number and the audit
    /// log (events, head, signed checkpoints), unchanged.
    ///
    /// Stop the server first (its store is locked while it runs). The target must be empty
    /// (a new database; the schema is created if missing); a non-empty one is refused and
    /// left unchanged. Before committing, the copy compares the rows per kind and verifies
    /// the audit chain and checkpoints on PostgreSQL; any failure rolls it all back. Then set
    /// `[store] kind = "postgres"` in the configuration and start the server.
    ///
    /// Examples:
    ///   CA_DATABASE_URL=postgresql://ca:PASSWORD@db/ca \
    ///     ca-server store copy --from /var/lib/ca --to-env CA_DATABASE_URL \
    ///       --audit-key /var/lib/ca/audit-checkpoint.pub.pem
    ///   ca-server store copy --from /var/lib/ca --config /etc/ca/ca.toml
    #[command(verbatim_doc_comment)]
    Copy(crate::store_copy::CopyArgs),
}

/// `admin-cert` subcommands.
#[derive(Debug, Subcommand)]
pub enum AdminCertCmd {
    /// Create an administrator certificate: a token for profile `_admin` with the role, then
    /// an enrollment with a key generated here. Writes NAME.crt and NAME.key into --out.
    ///
    /// Online (default): through the API, with a security officer's certificate.
    ///
    /// Break-glass (--offline --config FILE): when no security officer is left (certificates
    /// revoked or expired, keys lost). Run on the CA host, as the user that runs the server,
    /// with the server STOPPED (the store is locked while it runs; the command refuses then).
    /// It opens the HSM (PIN from the configuration) and the store directly, issues through
    /// the normal path (profile _admin, same checks), records `admin_cert.create` (mode
    /// break-glass, OS user, host) in the audit log, and writes NAME.crt and NAME.key (0600).
    /// Then start the server again.
    #[command(verbatim_doc_comment)]
    Create {
        /// Role: security-officer, operator or auditor.
        #[arg(long)]
        role: String,
        /// Name (commonName) of the administrator.
        #[arg(long)]
        name: String,
        /// Output directory.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Break-glass: issue offline from the HSM and store of --config (server stopped).
        #[arg(long, requires = "config")]
        offline: bool,
        /// The server's TOML configuration (with --offline).
        #[arg(long, short, requires = "offline")]
        config: Option<PathBuf>,
        /// Connection (online only).
        #[command(flatten)]
        conn: Conn,
    },
}

/// Print rows as an aligned table.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    table_with(&column_widths(headers, rows), Some(headers), rows)
}

/// Column widths for `headers` and `rows`.
fn column_widths(headers: &[&str], rows: &[Vec<String>]) -> Vec<usize> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    widths
}

/// Rows aligned to `widths` (a longer cell pushes its line's next columns), with a header
/// line when given: one page of a listing printed page by page.
fn table_with(widths: &[usize], headers: Option<&[&str]>, rows: &[Vec<String>]) -> String {
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = String::new();
    if let Some(h) = headers {
        out.push_str(&line(&h.iter().map(|h| h.to_string()).collect::<Vec<_>>()));
        out.push('\n');
    }
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Set up tracing: `RUST_LOG` wins, else `level` (default info); JSON lines with `json`.
pub fn init_logging(json: bool, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Run a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Command::Serve { config } => {
            let cfg = ServerConfig::load(&config)?;
            if let Some(conf) = &cfg.hsm.softhsm_conf {
                crate::server::reexec_for_softhsm(conf)?;
            }
            init_logging(cli.log_json || cfg.log.json, cfg.log.level.as_deref());
            // Before startup: a signal during startup stops the server once it has started.
            let mut signal =
                crate::server::ShutdownSignal::install().context("listening for SIGINT/SIGTERM")?;
            // Waits for the store and the HSM when they are away at start, serving the
            // status listener meanwhile (README "Starting without the database or the HSM").
            let status = tokio::net::TcpListener::bind(cfg.listen.status)
                .await
                .with_context(|| format!("binding listen.status {}", cfg.listen.status))?;
            let Some(running) = crate::server::start_staged(&cfg, status, signal.recv()).await?
            else {
                return Ok(());
            };
            println!(
                "ca-server listening: API https://{} status http://{}",
                running.api_addr,
                running
                    .status_addr
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            );
            running.wait_for(&mut signal).await?;
            Ok(())
        }
        Command::Ocsp { config } => {
            let cfg = crate::ocsp_node::OcspNodeConfig::load(&config)?;
            init_logging(cli.log_json || cfg.log.json, cfg.log.level.as_deref());
            let mut signal =
                crate::server::ShutdownSignal::install().context("listening for SIGINT/SIGTERM")?;
            let listener = tokio::net::TcpListener::bind(cfg.listen)
                .await
                .with_context(|| format!("binding listen.status {}", cfg.listen))?;
            let running = crate::ocsp_node::start(&cfg, listener).await?;
            println!("ca-server ocsp listening: http://{}", running.addr);
            running.wait_for(&mut signal).await;
            Ok(())
        }
        Command::Store {
            cmd: StoreCmd::Prune(args),
        } => {
            init_logging(cli.log_json, Some("warn"));
            crate::retention::run_command(args).await
        }
        Command::Store {
            cmd: StoreCmd::Copy(args),
        } => {
            init_logging(cli.log_json, Some("warn"));
            crate::store_copy::run(args).await
        }
        Command::CheckConfig { config } => {
            ServerConfig::load(&config)?;
            println!("{}: OK", config.display());
            Ok(())
        }
        Command::Completions(args) => Ok(args.write(Cli::command(), &mut std::io::stdout())?),
        Command::Manpages(args) => {
            for page in args.write(Cli::command())? {
                println!("{}", page.display());
            }
            Ok(())
        }
        Command::Dev {
            data,
            listen,
            status_listen,
        } => {
            init_logging(cli.log_json, None);
            crate::dev::run(crate::dev::DevOptions {
                data,
                listen,
                status_listen,
            })
            .await
        }
        Command::Token {
            cmd:
                TokenCmd::Create {
                    cn,
                    sans,
                    profile,
                    ttl,
                    conn,
                },
        } => {
            let client = conn.client()?;
            let req = TokenCreateRequest {
                common_name: cn,
                sans,
                profile: Some(profile),
                ttl,
            };
            let resp: TokenCreateResponse =
                client.post_json(ca_api::routes::ADMIN_TOKENS, &req).await?;
            if conn.json {
                print_json(&resp)
            } else {
                println!("{}", resp.token);
                eprintln!(
                    "token id {} expires at {} (shown once; single use)",
                    resp.id, resp.expires_at
                );
                Ok(())
            }
        }
        Command::Revoke(args) => {
            let client = args.conn.client()?;
            let req = RevokeRequest {
                serial: args.serial,
                reason: Some(args.reason),
                lineage: args.lineage,
            };
            let resp: RevokeResponse = client.post_json(ca_api::routes::ADMIN_REVOKE, &req).await?;
            if args.conn.json {
                print_json(&resp)
            } else {
                println!(
                    "revoked {} at {} ({})",
                    resp.serial, resp.revoked_at, resp.reason
                );
                for s in &resp.also_revoked {
                    println!("revoked {s} with its lineage ({})", resp.reason);
                }
                if resp.lineage_locked {
                    println!(
                        "lineage {} locked: none of its certificates can renew; the host needs a new enrollment token",
                        resp.lineage
                    );
                }
                Ok(())
            }
        }
        Command::Certs {
            cmd:
                CertsCmd::List {
                    filters,
                    limit,
                    cursor,
                    all,
                    conn,
                },
        } => {
            let client = conn.client()?;
            let mut q = filters.query();
            q.limit = Some(limit.unwrap_or(if all { 1000 } else { 100 }));
            q.cursor = cursor;
            let headers = [
                "SERIAL",
                "IDENTITY",
                "PROFILE",
                "STATUS",
                "GEN",
                "NOT AFTER",
                "LINEAGE",
            ];
            let mut widths: Option<Vec<usize>> = None;
            loop {
                let resp = client.list_certs(&q).await?;
                if conn.json && !all {
                    return print_json(&resp);
                }
                if conn.json {
                    let mut out = std::io::stdout().lock();
                    for c in &resp.certs {
                        write_json_line(&mut out, c)?;
                    }
                } else {
                    let rows: Vec<Vec<String>> = resp.certs.iter().map(cert_row).collect();
                    // The first page sets the columns; later pages keep them (--all).
                    let first = widths.is_none();
                    let w = widths.get_or_insert_with(|| column_widths(&headers, &rows));
                    print!("{}", table_with(w, first.then_some(&headers[..]), &rows));
                }
                match resp.next_cursor {
                    Some(next) if all => q.cursor = Some(next),
                    Some(next) => {
                        eprintln!(
                            "more certificates match: the next page is --cursor {next} (same \
                             filters), or list them all with --all"
                        );
                        return Ok(());
                    }
                    None => return Ok(()),
                }
            }
        }
        Command::Certs {
            cmd: CertsCmd::Counts { conn },
        } => {
            let resp = conn.client()?.cert_counts().await?;
            if conn.json {
                return print_json(&resp);
            }
            print!("{}", counts_table(&resp));
            Ok(())
        }
        Command::Certs {
            cmd:
                CertsCmd::Export {
                    filters,
                    pem,
                    out,
                    conn,
                },
        } => {
            let client = conn.client()?;
            let mut q = filters.query();
            q.limit = Some(1000);
            q.pem = pem;
            let (mut w, tmp): (Box<dyn std::io::Write>, Option<PathBuf>) = match &out {
                Some(out) => {
                    if out.exists() {
                        anyhow::bail!("{} exists; refusing to overwrite", out.display());
                    }
                    let tmp = out.with_extension("partial");
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&tmp)
                        .with_context(|| format!("creating {}", tmp.display()))?;
                    (Box::new(std::io::BufWriter::new(f)), Some(tmp))
                }
                None => (Box::new(std::io::BufWriter::new(std::io::stdout())), None),
            };
            let mut n: u64 = 0;
            let result: anyhow::Result<()> = async {
                loop {
                    let resp = client.list_certs(&q).await?;
                    for c in &resp.certs {
                        write_json_line(&mut w, c)?;
                        n += 1;
                    }
                    match resp.next_cursor {
                        Some(next) => q.cursor = Some(next),
                        None => break,
                    }
                }
                w.flush()?;
                Ok(())
            }
            .await;
            drop(w);
            match (result, out, tmp) {
                (Err(e), _, Some(tmp)) => {
                    let _ = std::fs::remove_file(&tmp);
                    Err(e.context("the export is incomplete; nothing was kept"))
                }
                (Err(e), _, None) => Err(e.context("the export is incomplete")),
                (Ok(()), Some(out), Some(tmp)) => {
                    std::fs::File::open(&tmp)?.sync_all()?;
                    std::fs::rename(&tmp, &out)?;
                    eprintln!("exported {n} certificates to {}", out.display());
                    Ok(())
                }
                (Ok(()), _, _) => Ok(()),
            }
        }
        Command::Audit {
            cmd: AuditCmd::Show { from, limit, conn },
        } => {
            let client = conn.client()?;
            let resp: AuditResponse = client
                .get_json(&format!(
                    "{}?from={from}&limit={limit}",
                    ca_api::routes::ADMIN_AUDIT
                ))
                .await?;
            if conn.json {
                return print_json(&resp);
            }
            let rows: Vec<Vec<String>> = resp
                .events
                .iter()
                .map(|e| {
                    vec![
                        e.seq.to_string(),
                        e.time.to_rfc3339(),
                        e.event.actor.clone(),
                        e.event.action.clone(),
                        e.event.object.clone(),
                        e.event.result.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["SEQ", "TIME", "ACTOR", "ACTION", "OBJECT", "RESULT"],
                    &rows
                )
            );
            Ok(())
        }
        Command::Audit {
            cmd:
                AuditCmd::Verify {
                    archive: Some(archive),
                    public_key: Some(public_key),
                    conn,
                    ..
                },
        } => {
            let key = read_audit_key(&public_key)?;
            match crate::audit_log::verify_archive(&archive, &key) {
                Ok(s) => {
                    if conn.json {
                        return print_json(&s);
                    }
                    print_archive_ok(&s, &key);
                    Ok(())
                }
                Err(e) => {
                    if conn.json {
                        print_json(&serde_json::json!({
                            "ok": false, "code": e.code(), "error": e.to_string(),
                        }))?;
                    }
                    Err(anyhow::anyhow!(
                        "audit archive verification FAILED [{}]: {e}",
                        e.code()
                    ))
                }
            }
        }
        Command::Audit {
            cmd:
                AuditCmd::Archive {
                    config,
                    out,
                    through_checkpoint,
                    public_key,
                    json,
                },
        } => {
            init_logging(cli.log_json, Some("warn"));
            let r = archive_here(&config, &out, through_checkpoint, public_key.as_deref()).await?;
            match r {
                Ok(s) => {
                    if json {
                        return print_json(&s);
                    }
                    println!(
                        "archived events {}..={} ({} events, {} checkpoints) to {} ({} bytes, sha256 {})\n\
                         ends at the checkpoint of sequence {} head {} signed at {}\n\
                         verify anywhere with: ca-server audit verify --archive {} --public-key AUDIT_PUBLIC_KEY.pem\n\
                         then, once it is stored safely: ca-server audit truncate --config CONFIG --below-checkpoint {} --archive {}",
                        s.first_seq,
                        s.through.seq,
                        s.events,
                        s.checkpoints,
                        s.out.display(),
                        s.bytes,
                        s.sha256,
                        s.through.seq,
                        s.through.head_hash,
                        s.through.time.to_rfc3339(),
                        s.out.display(),
                        s.through.seq,
                        s.out.display(),
                    );
                    Ok(())
                }
                Err(e) => archive_failed("audit archive", json, &e),
            }
        }
        Command::Audit {
            cmd:
                AuditCmd::Truncate {
                    config,
                    below_checkpoint,
                    archive,
                    public_key,
                    batch,
                    json,
                },
        } => {
            init_logging(cli.log_json, Some("warn"));
            let r = truncate_here(
                &config,
                below_checkpoint,
                &archive,
                public_key.as_deref(),
                batch,
            )
            .await?;
            match r {
                Ok(s) => {
                    if json {
                        return print_json(&s);
                    }
                    println!(
                        "{}: the log now starts after the checkpoint of sequence {} signed at {} \
                         ({} events archived below it in {}, sha256 {}); {} records deleted\n\
                         check it with: ca-server audit verify",
                        if s.resumed {
                            "truncation finished"
                        } else {
                            "truncated"
                        },
                        s.start.seq,
                        s.start.time.to_rfc3339(),
                        s.archived_events,
                        archive.display(),
                        s.archive_sha256,
                        s.deleted,
                    );
                    Ok(())
                }
                Err(e) => archive_failed("audit truncate", json, &e),
            }
        }
        Command::Audit {
            cmd: AuditCmd::Verify {
                archive: Some(_), ..
            },
        } => Err(anyhow::anyhow!("audit verify --archive needs --public-key")),
        Command::Audit {
            cmd:
                AuditCmd::Verify {
                    config: Some(config),
                    public_key,
                    conn,
                    ..
                },
        } => {
            init_logging(cli.log_json, Some("warn"));
            let r = verify_audit_here(&config, public_key.as_deref()).await;
            match r {
                Ok(r) => print_audit_verify(
                    &r,
                    conn.json,
                    "no audit public key (set [audit] key, or pass --public-key)",
                ),
                Err(e) => {
                    if conn.json {
                        print_json(&serde_json::json!({ "ok": false, "error": format!("{e:#}") }))?;
                    }
                    Err(e)
                }
            }
        }
        Command::Audit {
            cmd: AuditCmd::Verify {
                config: None, conn, ..
            },
        } => {
            let client = conn.client()?;
            let r = with_ticker(
                "verifying the audit log on the server",
                client.get_json::<AuditVerifyResponse>(ca_api::routes::ADMIN_AUDIT_VERIFY),
            )
            .await;
            match r {
                Ok(r) => print_audit_verify(&r, conn.json, "no audit checkpoint key on the server"),
                Err(e @ ClientError::Api { .. }) if e.code() == Some("audit_tampered") => {
                    if conn.json {
                        print_json(&serde_json::json!({ "ok": false, "error": e.to_string() }))?;
                    }
                    Err(anyhow::anyhow!("audit log verification FAILED: {e}"))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Audit {
            cmd: AuditCmd::Checkpoint { conn },
        } => {
            let client = conn.client()?;
            let r: CheckpointResponse = client
                .post_json(
                    ca_api::routes::ADMIN_AUDIT_CHECKPOINT,
                    &serde_json::json!({}),
                )
                .await?;
            if conn.json {
                return print_json(&r);
            }
            println!(
                "checkpoint signed: sequence {} head {} at {} (audit key {})",
                r.checkpoint.seq,
                r.checkpoint.head_hash,
                r.checkpoint.time.to_rfc3339(),
                r.audit_key_sha256
            );
            Ok(())
        }
        Command::Audit {
            cmd: AuditCmd::Export { since, out, conn },
        } => {
            let client = conn.client()?;
            if out.exists() {
                anyhow::bail!("{} exists; refusing to overwrite", out.display());
            }
            let tmp = out.with_extension("partial");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            let r = client
                .download(
                    &format!("{}?since={since}", ca_api::routes::ADMIN_AUDIT_EXPORT),
                    &mut file,
                )
                .await;
            let bytes = match r {
                Ok(n) => n,
                Err(e) => {
                    drop(file);
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e.into());
                }
            };
            file.sync_all()?;
            drop(file);
            // Check the end line is there (a cut connection leaves none).
            let last = last_line(&tmp).unwrap_or_default();
            let end: crate::audit_log::ExportLine = serde_json::from_str(&last).map_err(|_| {
                anyhow::anyhow!(
                    "the export from the server is incomplete (no end line); kept as {}",
                    tmp.display()
                )
            })?;
            let crate::audit_log::ExportLine::End(end) = end else {
                anyhow::bail!(
                    "the export from the server is incomplete (no end line); kept as {}",
                    tmp.display()
                );
            };
            std::fs::rename(&tmp, &out)?;
            if conn.json {
                return print_json(&serde_json::json!({
                    "file": out, "bytes": bytes, "events": end.events,
                    "checkpoints": end.checkpoints, "last_seq": end.last_seq,
                }));
            }
            println!(
                "exported {} events and {} checkpoints (up to sequence {}) to {} ({bytes} bytes)\nverify anywhere with: ca-server audit verify-export {} --public-key AUDIT_PUBLIC_KEY.pem",
                end.events,
                end.checkpoints,
                end.last_seq,
                out.display(),
                out.display()
            );
            Ok(())
        }
        Command::Audit {
            cmd:
                AuditCmd::VerifyExport {
                    file,
                    public_key,
                    json,
                },
        } => {
            let pem = std::fs::read_to_string(&public_key).with_context(|| {
                format!("reading the audit public key {}", public_key.display())
            })?;
            let key = ca_core::audit::AuditKey::from_pem(&pem)
                .with_context(|| format!("the audit public key {}", public_key.display()))?;
            let f = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            match crate::audit_log::verify_export(std::io::BufReader::new(f), &key) {
                Ok(s) => {
                    if json {
                        return print_json(&s);
                    }
                    let cp = s.report.last_checkpoint.as_ref();
                    println!(
                        "export OK: events {}..={} ({} events), {} checkpoints, signatures verified with audit key {}\nends at the checkpoint of sequence {} head {} signed at {}",
                        s.report.first_seq,
                        s.report.last_seq,
                        s.report.events,
                        s.report.checkpoints,
                        key.sha256(),
                        cp.map(|c| c.seq).unwrap_or(0),
                        cp.map(|c| c.head_hash.as_str()).unwrap_or(""),
                        cp.map(|c| c.time.to_rfc3339()).unwrap_or_default()
                    );
                    Ok(())
                }
                Err(e) => {
                    if json {
                        print_json(&serde_json::json!({ "ok": false, "error": e.to_string() }))?;
                    }
                    Err(anyhow::anyhow!(
                        "audit export verification FAILED: {}: {e}",
                        file.display()
                    ))
                }
            }
        }
        Command::AdminCert {
            cmd:
                AdminCertCmd::Create {
                    role,
                    name,
                    out,
                    offline,
                    config,
                    conn,
                },
        } => {
            let role = crate::auth::Role::parse(&role).ok_or_else(|| {
                anyhow::anyhow!("unknown role {role:?} (security-officer, operator, auditor)")
            })?;
            if let (true, Some(config)) = (offline, config) {
                init_logging(cli.log_json, Some("warn"));
                let m = crate::breakglass::create(&config, role, &name, &out).await?;
                return if conn.json {
                    print_json(&m)
                } else {
                    println!(
                        "BREAK-GLASS: administrator {name} ({}) serial {} until {}\n  certificate {}\n  key         {}\n  valid security-officer certificates before: {}\nRecorded in the audit log (admin_cert.create, mode break-glass). Start the server again.",
                        m.role,
                        m.serial,
                        m.not_after,
                        m.certificate.display(),
                        m.key.display(),
                        m.security_officers_before
                    );
                    Ok(())
                };
            }
            let client = conn.client()?;
            let (cert, key) = create_admin_cert(&client, conn.root_path()?, &name, role).await?;
            std::fs::create_dir_all(&out)?;
            let key_path = out.join(format!("{name}.key"));
            let cert_path = out.join(format!("{name}.crt"));
            if key_path.exists() || cert_path.exists() {
                anyhow::bail!(
                    "{} or {} exists; refusing to overwrite",
                    key_path.display(),
                    cert_path.display()
                );
            }
            crate::dev::write_atomic(&key_path, key.as_bytes(), 0o600)?;
            crate::dev::write_atomic(&cert_path, cert.certificate.as_bytes(), 0o644)?;
            if conn.json {
                print_json(&serde_json::json!({
                    "serial": cert.serial, "role": role.name(),
                    "certificate": cert_path, "key": key_path, "not_after": cert.not_after,
                }))
            } else {
                println!(
                    "administrator {name} ({}) serial {} until {}\n  certificate {}\n  key         {}",
                    role.name(),
                    cert.serial,
                    cert.not_after,
                    cert_path.display(),
                    key_path.display()
                );
                Ok(())
            }
        }
    }
}

/// The table of `certs counts`: per profile, the totals, then the expiry bands.
fn counts_table(c: &CertCountsResponse) -> String {
    let mut rows: Vec<Vec<String>> = c
        .by_profile
        .iter()
        .map(|(p, n)| vec![p.clone(), n.valid.to_string(), n.revoked.to_string()])
        .collect();
    rows.push(vec![
        "(all)".into(),
        c.total.valid.to_string(),
        c.total.revoked.to_string(),
    ]);
    let e = &c.expiry;
    let bands: Vec<Vec<String>> = [
        ("expired", e.expired),
        ("within 24h", e.within_24h),
        ("within 7d", e.within_7d),
        ("within 30d", e.within_30d),
        ("later", e.later),
    ]
    .iter()
    .map(|(k, n)| vec![k.to_string(), n.to_string()])
    .collect();
    format!(
        "{}\nnot revoked, by notAfter (UTC days from {}):\n{}",
        table(&["PROFILE", "VALID", "REVOKED"], &rows),
        c.today,
        table(&["EXPIRY", "CERTIFICATES"], &bands)
    )
}

/// One table row of `certs list`.
fn cert_row(c: &CertSummary) -> Vec<String> {
    vec![
        c.serial.clone(),
        c.identity.clone(),
        c.profile.clone(),
        c.status.clone(),
        c.generation.to_string(),
        c.not_after.clone(),
        c.lineage.clone(),
    ]
}

/// `v` as one line of JSON (NDJSON).
fn write_json_line<T: serde::Serialize>(w: &mut dyn std::io::Write, v: &T) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *w, v)?;
    w.write_all(b"\n")?;
    Ok(())
}

/// Print an audit verification's result (the server's answer, or the same built here);
/// `no_key` says why signatures were not checked.
fn print_audit_verify(r: &AuditVerifyResponse, json: bool, no_key: &str) -> anyhow::Result<()> {
    if json {
        return print_json(r);
    }
    println!("audit log OK: {} events, hash chain intact", r.events);
    if let Some(start) = &r.start {
        println!(
            "{} events archived below the start: the log starts after the checkpoint of sequence {} signed at {}{}",
            r.archived_events,
            start.seq,
            start.time.to_rfc3339(),
            if r.signatures_checked {
                " (its signature verified)"
            } else {
                " (its signature NOT checked)"
            }
        );
    }
    match (&r.last_checkpoint, r.signatures_checked) {
        (Some(cp), true) => println!(
            "{} checkpoints, signatures verified with audit key {}; last: sequence {} signed at {}; {} events since",
            r.checkpoints,
            r.audit_key_sha256.as_deref().unwrap_or("?"),
            cp.seq,
            cp.time.to_rfc3339(),
            r.unsigned_tail
        ),
        (_, false) => println!(
            "WARNING: {no_key}: signatures not checked ({} checkpoints)",
            r.checkpoints
        ),
        (None, true) => println!("no checkpoint yet"),
    }
    Ok(())
}

/// Read an audit public key (PEM).
fn read_audit_key(path: &Path) -> anyhow::Result<ca_core::audit::AuditKey> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("reading the audit public key {}", path.display()))?;
    ca_core::audit::AuditKey::from_pem(&pem)
        .with_context(|| format!("the audit public key {}", path.display()))
}

/// Print a verified archive's summary.
fn print_archive_ok(s: &crate::audit_log::ExportSummary, key: &ca_core::audit::AuditKey) {
    let cp = s.report.last_checkpoint.as_ref();
    println!(
        "archive OK: events {}..={} ({} events), {} checkpoints, signatures verified with audit key {}\nends at the checkpoint of sequence {} head {} signed at {}",
        s.report.first_seq,
        s.report.last_seq,
        s.report.events,
        s.report.checkpoints,
        key.sha256(),
        cp.map(|c| c.seq).unwrap_or(0),
        cp.map(|c| c.head_hash.as_str()).unwrap_or(""),
        cp.map(|c| c.time.to_rfc3339()).unwrap_or_default()
    );
}

/// Report a refused archive or truncation: JSON with its code (with --json), and the error.
fn archive_failed(
    what: &str,
    json: bool,
    e: &crate::audit_log::ArchiveError,
) -> anyhow::Result<()> {
    if json {
        print_json(&serde_json::json!({
            "ok": false, "code": e.code(), "error": e.to_string(),
        }))?;
    }
    Err(anyhow::anyhow!("{what} refused [{}]: {e}", e.code()))
}

/// The audit public key of a configuration: `--public-key`, else the file the server writes
/// (`[audit] public_key`) when `[audit] key` is set and the file exists.
fn config_audit_key(
    cfg: &ServerConfig,
    public_key: Option<&Path>,
) -> anyhow::Result<Option<ca_core::audit::AuditKey>> {
    let path = match public_key {
        Some(p) => Some(p.to_path_buf()),
        None if cfg.audit.key.is_some() => {
            let p = cfg.audit.public_key_path(&cfg.data_dir);
            p.exists().then_some(p)
        }
        None => None,
    };
    path.as_deref().map(read_audit_key).transpose()
}

/// `audit archive`: archive the store of a configuration, here.
async fn archive_here(
    config: &Path,
    out: &Path,
    through: Option<u64>,
    public_key: Option<&Path>,
) -> anyhow::Result<Result<crate::audit_log::ArchiveSummary, crate::audit_log::ArchiveError>> {
    let cfg = ServerConfig::load(config)?;
    let Some(key) = config_audit_key(&cfg, public_key)? else {
        return Ok(Err(crate::audit_log::ArchiveError::NoAuditKey));
    };
    let out = out.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let store = crate::server::open_store(&cfg).context(
            "opening the store (sled: stop the server first; PostgreSQL: beside running nodes)",
        )?;
        Ok(crate::audit_log::archive(
            store.as_ref(),
            through,
            &key,
            ca_core::clock::truncate(chrono::Utc::now()),
            &out,
        ))
    })
    .await
    .context("the archive task")?
}

/// `audit truncate`: truncate the store of a configuration below an archived checkpoint,
/// here, with progress on standard error when it is a terminal.
async fn truncate_here(
    config: &Path,
    below: u64,
    archive: &Path,
    public_key: Option<&Path>,
    batch: usize,
) -> anyhow::Result<Result<crate::audit_log::TruncateSummary, crate::audit_log::ArchiveError>> {
    use std::io::IsTerminal;
    let cfg = ServerConfig::load(config)?;
    let Some(key) = config_audit_key(&cfg, public_key)? else {
        return Ok(Err(crate::audit_log::ArchiveError::NoAuditKey));
    };
    let archive = archive.to_path_buf();
    let tty = std::io::stderr().is_terminal();
    tokio::task::spawn_blocking(move || {
        let store = crate::server::open_store(&cfg).context(
            "opening the store (sled: stop the server first; PostgreSQL: beside running nodes)",
        )?;
        let (os_user, host) = crate::breakglass::operator_identity();
        let mut progress = Progress::new(tty, "audit truncate");
        let r = crate::audit_log::truncate(
            store.as_ref(),
            below,
            &archive,
            &key,
            &format!("audit-truncate: {os_user}@{host}"),
            batch,
            &mut |n| progress.tick(|| format!("{n} records deleted")),
        );
        progress.finish();
        store.flush().context("flushing the store")?;
        Ok(r)
    })
    .await
    .context("the truncate task")?
}

/// `audit verify --config`: verify the store of a configuration here, streaming, with
/// progress on standard error when it is a terminal.
async fn verify_audit_here(
    config: &Path,
    public_key: Option<&Path>,
) -> anyhow::Result<AuditVerifyResponse> {
    use std::io::IsTerminal;
    let cfg = ServerConfig::load(config)?;
    let key_path = match public_key {
        Some(p) => Some(p.to_path_buf()),
        None if cfg.audit.key.is_some() => {
            let p = cfg.audit.public_key_path(&cfg.data_dir);
            p.exists().then_some(p)
        }
        None => None,
    };
    let key = match &key_path {
        Some(p) => {
            let pem = std::fs::read_to_string(p)
                .with_context(|| format!("reading the audit public key {}", p.display()))?;
            Some(
                ca_core::audit::AuditKey::from_pem(&pem)
                    .with_context(|| format!("the audit public key {}", p.display()))?,
            )
        }
        None => None,
    };
    let tty = std::io::stderr().is_terminal();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let store = crate::server::open_store(&cfg).context(
            "opening the store (sled: stop the server first, or verify on the server without \
             --config)",
        )?;
        let mut progress = Progress::new(tty, "audit verify");
        let r = store.verify_audit_log_with_progress(key.as_ref(), &mut |p| {
            progress.tick(|| match p.head {
                Some(h) if h > 0 => format!(
                    "{} events checked (sequence {} of {h}, {}%)",
                    p.events,
                    p.seq,
                    p.seq.saturating_mul(100) / h
                ),
                _ => format!("{} events checked", p.events),
            })
        });
        progress.finish();
        r.map_err(|e| match e {
            e @ ca_core::Error::AuditChain { .. } => {
                anyhow::anyhow!("audit log verification FAILED: {e}")
            }
            e => anyhow::Error::new(e).context("verifying the audit log"),
        })
    })
    .await
    .context("the verification task")??;
    Ok(AuditVerifyResponse {
        ok: true,
        events: report.events,
        checkpoints: report.checkpoints,
        signatures_checked: report.signatures_checked,
        audit_key_sha256: report.audit_key_sha256.clone(),
        unsigned_tail: report.unsigned_tail(),
        last_checkpoint: report.last_checkpoint,
        archived_events: report.archived_events,
        start: report.start,
    })
}

/// A progress line on standard error, rewritten at most once a second, only on a terminal.
struct Progress {
    on: bool,
    what: &'static str,
    calls: u64,
    last: std::time::Instant,
    shown: bool,
}

impl Progress {
    fn new(on: bool, what: &'static str) -> Self {
        Progress {
            on,
            what,
            calls: 0,
            last: std::time::Instant::now(),
            shown: false,
        }
    }

    /// Called per item; reads the clock every 1024 calls and shows `line()` once a second.
    fn tick(&mut self, line: impl FnOnce() -> String) {
        self.calls += 1;
        if !self.on || self.calls & 1023 != 0 {
            return;
        }
        if self.last.elapsed() >= std::time::Duration::from_secs(1) {
            self.last = std::time::Instant::now();
            self.shown = true;
            eprint!("\r\x1b[K{}: {}", self.what, line());
        }
    }

    /// Clear the progress line.
    fn finish(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            self.shown = false;
        }
    }
}

/// Await `f`, showing on a terminal (standard error) how long it has run, once a second.
async fn with_ticker<F: std::future::Future>(what: &'static str, f: F) -> F::Output {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return f.await;
    }
    let start = std::time::Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.tick().await;
    tokio::pin!(f);
    let mut shown = false;
    let out = loop {
        tokio::select! {
            out = &mut f => break out,
            _ = tick.tick() => {
                shown = true;
                eprint!("\r\x1b[K{what}: {} s", start.elapsed().as_secs());
            }
        }
    };
    if shown {
        eprint!("\r\x1b[K");
    }
    out
}

/// The last line of a file, read from its end (an export can be large).
fn last_line(path: &Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    let text = String::from_utf8_lossy(&tail);
    Ok(text.lines().last().unwrap_or_default().to_string())
}

/// Create an administrator certificate through the API: a `_admin` token carrying the role,
/// then an enrollment with a fresh P-256 key. Returns the issued certificate and the key PEM.
pub async fn create_admin_cert(
    client: &ApiClient,
    root: &Path,
    name: &str,
    role: crate::auth::Role,
) -> anyhow::Result<(IssuedResponse, String)> {
    let tok: TokenCreateResponse = client
        .post_json(
            ca_api::routes::ADMIN_TOKENS,
            &TokenCreateRequest {
                common_name: Some(name.into()),
                sans: vec![role.san()],
                profile: Some(crate::service::ADMIN_PROFILE.into()),
                ttl: Some("10m".into()),
            },
        )
        .await?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let csr = params.serialize_request(&key)?.pem()?;
    let root_pem = std::fs::read(root)?;
    let anon = ApiClient::new(client.url(), &root_pem, None)?;
    let issued: IssuedResponse = anon
        .post_json(
            ca_api::routes::ENROLL,
            &EnrollRequest {
                token: tok.token,
                csr,
            },
        )
        .await?;
    Ok((issued, key.serialize_pem()))
}
