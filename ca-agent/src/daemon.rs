//! `ca-agent run`: the renewal daemon. SIGHUP re-reads the config, SIGTERM/SIGINT stop it
//! cleanly (after the certificate being worked on, if any, is finished).

use crate::agent::{Agent, Outcome};
use crate::config::Config;
use crate::error::{Error, Result};
use chrono::Utc;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

/// Run until SIGTERM/SIGINT.
pub async fn run(config_path: &Path) -> Result<()> {
    let mut agent = Agent::new(Config::load(config_path)?)?;
    let sig_err = |e: std::io::Error| Error::io("install signal handler", config_path, e);
    let mut hup = signal(SignalKind::hangup()).map_err(sig_err)?;
    let mut term = signal(SignalKind::terminate()).map_err(sig_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(sig_err)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_notify = Arc::new(Notify::new());
    let reload = Arc::new(AtomicBool::new(false));
    let reload_notify = Arc::new(Notify::new());
    {
        let (stop, stop_notify, reload, reload_notify) = (
            stop.clone(),
            stop_notify.clone(),
            reload.clone(),
            reload_notify.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => { stop.store(true, Ordering::SeqCst); stop_notify.notify_one(); }
                    _ = int.recv() => { stop.store(true, Ordering::SeqCst); stop_notify.notify_one(); }
                    _ = hup.recv() => { reload.store(true, Ordering::SeqCst); reload_notify.notify_one(); }
                }
            }
        });
    }
    tracing::info!(
        config = %config_path.display(),
        certificates = agent.config().certificates.len(),
        server = %agent.config().server,
        "ca-agent running"
    );
    loop {
        if reload.swap(false, Ordering::SeqCst) {
            match Config::load(config_path).and_then(Agent::new) {
                Ok(a) => {
                    agent = a;
                    tracing::info!(
                        certificates = agent.config().certificates.len(),
                        "configuration re-read (SIGHUP)"
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: new configuration refused; keeping the running one")
                }
            }
        }
        let mut next = Utc::now() + agent.config().check_interval.0;
        for c in agent.config().certificates.clone() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let report = agent.cycle(&c, false).await;
            match &report.outcome {
                Outcome::Renewed { serial } => {
                    tracing::info!(cert = %c.name, serial = %serial, "renewed")
                }
                Outcome::NotDue | Outcome::Failed(_) => {}
            }
            tracing::debug!(cert = %c.name, next = %report.next_wake, "next check");
            next = next.min(report.next_wake);
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop_notify.notified() => {}
            _ = reload_notify.notified() => {}
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    tracing::info!("ca-agent stopped");
    Ok(())
}
