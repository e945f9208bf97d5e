//! Reload actions: a signal to the process named in a pidfile, or a command with a timeout.

use crate::config::{CertConfig, CommandSpec, ReloadConfig};
use crate::error::{Error, Result};
use nix::sys::signal::Signal;
use std::process::Stdio;

/// Parse `HUP`, `SIGHUP`, `usr1`, ... into a signal.
pub fn parse_signal(s: &str) -> std::result::Result<Signal, String> {
    let up = s.trim().to_ascii_uppercase();
    let full = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    full.parse::<Signal>()
        .map_err(|_| format!("{s:?} is not a signal name (HUP, USR1, USR2, ...)"))
}

/// What the actions are told about the new certificate (as environment variables).
#[derive(Clone, Debug)]
pub struct ReloadContext {
    /// `CA_AGENT_SERIAL`.
    pub serial: String,
}

fn describe(a: &ReloadConfig) -> String {
    match (&a.signal, &a.pidfile, &a.command) {
        (Some(s), Some(p), _) => format!("signal {s} to pid in {}", p.display()),
        (_, _, Some(CommandSpec::Shell(s))) => format!("command {s:?}"),
        (_, _, Some(CommandSpec::Argv(a))) => format!("command {a:?}"),
        _ => "(empty action)".into(),
    }
}

/// Run every reload action of `cfg`, in order; stop at the first failure.
pub async fn run_all(cfg: &CertConfig, ctx: &ReloadContext) -> Result<()> {
    for action in &cfg.reload {
        run_one(cfg, action, ctx).await?;
    }
    Ok(())
}

async fn run_one(cfg: &CertConfig, action: &ReloadConfig, ctx: &ReloadContext) -> Result<()> {
    let what = describe(action);
    let fail = |reason: String| Error::Reload {
        action: what.clone(),
        reason,
    };
    match (&action.signal, &action.pidfile, &action.command) {
        (Some(sig), Some(pidfile), _) => {
            let sig = parse_signal(sig).map_err(fail)?;
            let text = std::fs::read_to_string(pidfile)
                .map_err(|e| fail(format!("cannot read {}: {e}", pidfile.display())))?;
            let pid: i32 = text
                .trim()
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| fail(format!("{} does not hold a pid", pidfile.display())))?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                .map_err(|e| fail(format!("kill({pid}, {sig}): {e}")))?;
            tracing::info!(cert = %cfg.name, pid, signal = %sig, "reload signal sent");
            Ok(())
        }
        (_, _, Some(spec)) => {
            let mut cmd = match spec {
                CommandSpec::Shell(s) => {
                    let mut c = tokio::process::Command::new("/bin/sh");
                    c.arg("-c").arg(s);
                    c
                }
                CommandSpec::Argv(a) => {
                    let mut c = tokio::process::Command::new(&a[0]);
                    c.args(&a[1..]);
                    c
                }
            };
            cmd.env("CA_AGENT_NAME", &cfg.name)
                .env("CA_AGENT_CERT", &cfg.cert)
                .env("CA_AGENT_KEY", &cfg.key)
                .env("CA_AGENT_SERIAL", &ctx.serial)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let child = cmd
                .spawn()
                .map_err(|e| fail(format!("cannot start: {e}")))?;
            let timeout = crate::config::std_duration(action.timeout);
            let out = tokio::time::timeout(timeout, child.wait_with_output())
                .await
                .map_err(|_| fail(format!("still running after {timeout:?}; killed")))?
                .map_err(|e| fail(format!("wait: {e}")))?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                return Err(fail(format!(
                    "exited with {}: {}",
                    out.status,
                    stderr.trim().chars().take(500).collect::<String>()
                )));
            }
            tracing::info!(cert = %cfg.name, action = %what, "reload command succeeded");
            Ok(())
        }
        _ => Err(fail("neither signal + pidfile nor command".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg(reload: &str) -> CertConfig {
        let text = format!(
            "server = \"https://127.0.0.1:1\"\nroot_fingerprint = \"{}\"\n[[certificate]]\nname = \"web\"\n\
             cert = \"/tmp/c\"\nkey = \"/tmp/k\"\n{reload}",
            "00".repeat(32)
        );
        Config::parse(&text).unwrap().certificates.remove(0)
    }

    fn ctx() -> ReloadContext {
        ReloadContext {
            serial: "abcd".into(),
        }
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("HUP").unwrap(), Signal::SIGHUP);
        assert_eq!(parse_signal("sigusr1").unwrap(), Signal::SIGUSR1);
        assert!(parse_signal("NOPE").is_err());
    }

    #[tokio::test]
    async fn command_gets_the_serial_and_failures_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let c = cfg(&format!(
            "[[certificate.reload]]\ncommand = \"echo $CA_AGENT_SERIAL > {}\"\n",
            out.display()
        ));
        run_all(&c, &ctx()).await.unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "abcd");

        let c = cfg(
            "[[certificate.reload]]\ncommand = [\"/bin/sh\", \"-c\", \"echo boom >&2; exit 3\"]\n",
        );
        let e = run_all(&c, &ctx()).await.unwrap_err().to_string();
        assert!(e.contains("boom") && e.contains("3"), "{e}");

        let c = cfg("[[certificate.reload]]\ncommand = \"sleep 30\"\ntimeout = \"1s\"\n");
        let t = std::time::Instant::now();
        let e = run_all(&c, &ctx()).await.unwrap_err().to_string();
        assert!(e.contains("killed"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
    }

    #[tokio::test]
    async fn signal_to_pidfile() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfile = dir.path().join("p.pid");
        std::fs::write(&pidfile, format!("{}\n", child.id())).unwrap();
        let c = cfg(&format!(
            "[[certificate.reload]]\nsignal = \"TERM\"\npidfile = \"{}\"\n",
            pidfile.display()
        ));
        run_all(&c, &ctx()).await.unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
        let c = cfg("[[certificate.reload]]\nsignal = \"HUP\"\npidfile = \"/nonexistent/x.pid\"\n");
        assert!(run_all(&c, &ctx()).await.is_err());
    }
}
