//! `ca-agent`: enroll, renew, run the renewal daemon, show status.
#![forbid(unsafe_code)]

use anyhow::{bail, Context};
use ca_agent::agent::{Agent, EnrollRequest, Outcome};
use ca_agent::certs::Identity;
use ca_agent::config::{CertConfig, Config};
use ca_agent::state::CertState;
use ca_core::signer::KeyAlgorithm;
use clap::{CommandFactory, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ca-agent",
    version = cli_support::version!(),
    about = "Certificate agent: enroll, renew, install, reload"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enroll once with a one-time token: pin the CA root, generate a key locally, get and
    /// install the certificate.
    Enroll(Box<EnrollArgs>),
    /// Run the renewal daemon (SIGHUP re-reads the config, SIGTERM stops).
    Run {
        /// Config file.
        #[arg(
            long,
            env = "CA_AGENT_CONFIG",
            default_value = "/etc/ca-agent/agent.toml"
        )]
        config: PathBuf,
    },
    /// One renewal pass over every certificate, then exit (0 when nothing failed, including when
    /// nothing was due).
    Renew {
        /// Config file.
        #[arg(
            long,
            env = "CA_AGENT_CONFIG",
            default_value = "/etc/ca-agent/agent.toml"
        )]
        config: PathBuf,
        /// Renew now, even if not due (ignores backoff).
        #[arg(long)]
        force: bool,
        /// Only this certificate.
        #[arg(long)]
        name: Option<String>,
    },
    /// Show each certificate's identity, serial, expiry, next renewal and last error (exit 1 when
    /// any certificate needs attention).
    Status {
        /// Config file.
        #[arg(
            long,
            env = "CA_AGENT_CONFIG",
            default_value = "/etc/ca-agent/agent.toml"
        )]
        config: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script to stdout.
    ///
    /// Example: ca-agent completions bash > /etc/bash_completion.d/ca-agent
    #[command(verbatim_doc_comment)]
    Completions(cli_support::generate::CompletionsArgs),
    /// Write the man pages (ca-agent.1, ca-agent-enroll.1, ...) into DIR.
    #[command(hide = true)]
    Manpages(cli_support::generate::ManpagesArgs),
}

#[derive(clap::Args)]
struct EnrollArgs {
    /// Take server, fingerprint, paths, modes and key type from this config...
    #[arg(long)]
    config: Option<PathBuf>,
    /// ...for the certificate with this name (default: the only one).
    #[arg(long)]
    name: Option<String>,
    /// CA URL, e.g. https://ca.internal:8443.
    #[arg(long)]
    server: Option<String>,
    /// SHA-256 fingerprint of the CA root (hex, colons allowed).
    #[arg(long)]
    fingerprint: Option<String>,
    /// The one-time token (prefer --token-file or CA_AGENT_TOKEN: not in shell history).
    /// Taken as the token whatever its first character (tokens of older servers were base64url
    /// and could start with '-').
    #[arg(
        long,
        env = "CA_AGENT_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    token: Option<String>,
    /// File holding the token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Certificate path.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Private key path.
    #[arg(long)]
    key: Option<PathBuf>,
    /// CA chain path.
    #[arg(long)]
    chain: Option<PathBuf>,
    /// Leaf + intermediates path.
    #[arg(long)]
    fullchain: Option<PathBuf>,
    /// Key type: p256, p384, ed25519, rsa2048.
    #[arg(long)]
    key_type: Option<String>,
    /// Common name to request (and require in the answer).
    #[arg(long)]
    cn: Option<String>,
    /// SAN to request (and require), e.g. dns:web.svc or ip:10.0.0.1; repeatable.
    #[arg(long)]
    san: Vec<String>,
    /// Replace an existing certificate (it is kept as .prev).
    #[arg(long)]
    force: bool,
    /// Run the config's reload actions (and probe) after installing.
    #[arg(long)]
    reload: bool,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Generated from the CLI definition: no logging, no runtime.
    let generated = match &cli.cmd {
        Cmd::Completions(args) => Some(
            args.write(Cli::command(), &mut std::io::stdout())
                .map_err(anyhow::Error::from),
        ),
        Cmd::Manpages(args) => Some(
            args.write(Cli::command())
                .map(|pages| {
                    for page in pages {
                        println!("{}", page.display());
                    }
                })
                .map_err(anyhow::Error::from),
        ),
        _ => None,
    };
    if let Some(result) = generated {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Run { config } => {
            ca_agent::daemon::run(&config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Renew {
            config,
            force,
            name,
        } => renew(&config, force, name.as_deref()).await,
        Cmd::Status { config, json } => {
            let cfg = Config::load(&config)?;
            let list = ca_agent::status::collect(&cfg);
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", ca_agent::status::render(&list));
            }
            Ok(if list.iter().all(|s| s.condition.is_healthy()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Enroll(args) => enroll(*args).await,
        // Handled in main, before the runtime starts.
        Cmd::Completions(_) | Cmd::Manpages(_) => Ok(ExitCode::SUCCESS),
    }
}

async fn renew(config: &Path, force: bool, name: Option<&str>) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let agent = Agent::new(cfg.clone())?;
    let mut failed = 0;
    let mut matched = 0;
    for c in &cfg.certificates {
        if name.is_some_and(|n| n != c.name) {
            continue;
        }
        matched += 1;
        let report = agent.cycle(c, force).await;
        match report.outcome {
            Outcome::NotDue => println!("{}: not due (next check {})", c.name, report.next_wake),
            Outcome::Renewed { serial } => println!("{}: renewed, serial {serial}", c.name),
            Outcome::Failed(e) => {
                failed += 1;
                println!("{}: FAILED: {e}", c.name);
            }
        }
    }
    if matched == 0 {
        bail!(
            "no certificate named {:?} in {}",
            name.unwrap_or(""),
            config.display()
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn read_token(args: &EnrollArgs) -> anyhow::Result<String> {
    let token = match (&args.token_file, &args.token) {
        (Some(f), _) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the token file {}", f.display()))?,
        (None, Some(t)) => t.clone(),
        (None, None) => bail!("no token: give --token-file FILE, set CA_AGENT_TOKEN, or --token"),
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the token is empty");
    }
    Ok(token)
}

async fn enroll(mut args: EnrollArgs) -> anyhow::Result<ExitCode> {
    let token = read_token(&args)?;
    // Paths on the command line are relative to the current directory (the config file's
    // must be absolute: the daemon runs elsewhere).
    for p in [
        &mut args.cert,
        &mut args.key,
        &mut args.chain,
        &mut args.fullchain,
    ]
    .into_iter()
    .flatten()
    {
        if p.is_relative() {
            *p = std::path::absolute(&*p)
                .with_context(|| format!("cannot make {} absolute", p.display()))?;
        }
    }
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => {
            let (Some(server), Some(fp), Some(cert), Some(key)) =
                (&args.server, &args.fingerprint, &args.cert, &args.key)
            else {
                bail!("without --config, --server, --fingerprint, --cert and --key are required");
            };
            let name = cert
                .file_stem()
                .map(|s| {
                    s.to_string_lossy()
                        .chars()
                        .map(|c| {
                            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                                c
                            } else {
                                '_'
                            }
                        })
                        .collect::<String>()
                })
                .unwrap_or_else(|| "cert".into());
            let dir = key.parent().unwrap_or(Path::new("/")).join(".ca-agent");
            let mut entry = toml::Table::new();
            entry.insert("name".into(), name.into());
            entry.insert("cert".into(), cert.display().to_string().into());
            entry.insert("key".into(), key.display().to_string().into());
            let mut text = toml::Table::new();
            text.insert("server".into(), server.clone().into());
            text.insert("root_fingerprint".into(), fp.clone().into());
            text.insert("state_dir".into(), dir.display().to_string().into());
            text.insert(
                "certificate".into(),
                toml::Value::Array(vec![toml::Value::Table(entry)]),
            );
            Config::parse(&text.to_string())?
        }
    };
    if let Some(s) = &args.server {
        cfg.server = s.clone();
    }
    if let Some(f) = &args.fingerprint {
        cfg.root_fingerprint = f.clone();
    }
    let idx = match &args.name {
        Some(n) => cfg
            .certificates
            .iter()
            .position(|c| &c.name == n)
            .with_context(|| format!("no certificate named {n:?} in the config"))?,
        None if cfg.certificates.len() == 1 => 0,
        None => bail!("the config has several certificates: say which with --name"),
    };
    {
        let c: &mut CertConfig = &mut cfg.certificates[idx];
        if let Some(p) = &args.cert {
            c.cert = p.clone();
        }
        if let Some(p) = &args.key {
            c.key = p.clone();
        }
        if args.chain.is_some() {
            c.chain = args.chain.clone();
        }
        if args.fullchain.is_some() {
            c.fullchain = args.fullchain.clone();
        }
        if let Some(k) = &args.key_type {
            c.key_type = k
                .parse::<KeyAlgorithm>()
                .map_err(|e| anyhow::anyhow!("--key-type {k:?}: {e}"))?;
        }
    }
    cfg.validate()?;
    let c = cfg.certificates[idx].clone();
    match ca_agent::install::read_current(&c) {
        // A planted link is never replaced blindly, even with --force: the operator looks first.
        Err(e @ ca_agent::Error::UnsafeLink { .. }) => bail!("{e}"),
        Ok(Some(d)) if !args.force => bail!(
            "a certificate is already installed at {} (serial {}, expires {}); use --force to \
             replace it (the current pair is kept as .prev)",
            c.cert.display(),
            d.cert.serial,
            d.cert.not_after
        ),
        Err(e) if !args.force => bail!("{e}; use --force to replace the pair"),
        _ => {}
    }
    let sans = args
        .san
        .iter()
        .map(|s| s.parse())
        .collect::<Result<Vec<_>, _>>()
        .context("--san")?;
    let req = EnrollRequest {
        identity: Identity::new(args.cn.clone(), sans),
        key_type: Some(c.key_type),
    };
    let agent = Agent::new(cfg.clone())?;
    let mut st = CertState::load(&cfg.state_dir, &c.name).unwrap_or_default();
    st.name = c.name.clone();
    let result = agent.enroll(&c, &mut st, &token, &req, args.reload).await;
    if let Err(e) = st.save(&cfg.state_dir) {
        tracing::warn!(error = %e, "cannot write the state file");
    }
    let serial = result?;
    let disk = ca_agent::install::read_current(&c)?
        .context("the certificate was installed but cannot be read back")?;
    println!(
        "enrolled {}: serial {serial}, identity [{}], expires {}\n  cert: {}\n  key:  {}",
        c.name,
        disk.cert.identity,
        disk.cert.not_after,
        c.cert.display(),
        c.key.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_of(args: &[&str]) -> Option<String> {
        let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.cmd {
            Cmd::Enroll(a) => a.token,
            _ => panic!("not enroll"),
        }
    }

    /// base64url tokens start with '-' one time in 64 (and with "--" one in 4096): the value
    /// after --token is the token, wherever it sits on the line.
    #[test]
    fn a_token_starting_with_a_hyphen_is_a_value_not_a_flag() {
        for tok in ["-abcDEF_123", "--abcDEF_123", "-", "-h", "--force"] {
            assert_eq!(
                token_of(&["ca-agent", "enroll", "--token", tok, "--force"]).as_deref(),
                Some(tok)
            );
            assert_eq!(
                token_of(&["ca-agent", "enroll", "--force", "--token", tok]).as_deref(),
                Some(tok)
            );
        }
        // Other options keep working around it.
        let cli = Cli::try_parse_from([
            "ca-agent", "enroll", "--token", "-x", "--cn", "a.test", "--force",
        ])
        .unwrap();
        let Cmd::Enroll(a) = cli.cmd else {
            panic!("not enroll")
        };
        assert_eq!(a.cn.as_deref(), Some("a.test"));
        assert!(a.force);
    }
}
