//! Retention (README "Retention"): a periodic task of its own that prunes expired
//! certificates and finished enrollment tokens from the store, in bounded batches, so storage
//! follows the live fleet. Not part of the status maintenance loop: a long pruning pass never
//! delays OCSP re-signing or a CRL rebuild.
//!
//! One pass ([`Pruner::run_pass`]) computes its cutoffs from the clock, then calls
//! [`Retention::prune_expired_certs`](ca_core::store::Retention::prune_expired_certs) and
//! [`Retention::prune_tokens`](ca_core::store::Retention::prune_tokens) batch after batch
//! until a batch comes back short, checking for shutdown between batches. A revoked
//! certificate is kept while the CRL must list it: its notAfter and its revocation date must
//! both lie before the thisUpdate of the latest CRL in the store's archive, the one every node
//! serves (less a margin for a revocation committed while that CRL was built), and before now
//! minus the CRL validity (a node still serving the previous CRL serves one built after them
//! too). Each pass that pruned something appends
//! one audit event (`retention.prune`, with the counts and the cutoffs) and counts
//! `ca_pruned_total{kind}`. The audit log itself is never pruned.

use crate::config::RetentionSection;
use crate::metrics::Metrics;
use ca_core::audit::NewAuditEvent;
use ca_core::clock::Clock;
use ca_core::ocsp::Responder;
use ca_core::store::{CertCutoff, Store, FULL_CRL};
use chrono::{DateTime, Duration, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

type Labels = Vec<(String, String)>;

/// A revocation is stamped before it is committed: a CRL whose build started within this much
/// after a revocation date may have missed it, so it does not count as having listed it.
const CRL_BUILD_MARGIN: Duration = Duration::minutes(1);

/// What one pass pruned, and the cutoffs it used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Certificates removed.
    pub certificates: usize,
    /// Enrollment tokens removed.
    pub tokens: usize,
    /// Stored group OCSP responses stored again under a member still in the store.
    pub ocsp_kept: usize,
    /// Group OCSP responses no member links to any more, removed
    /// ([`ca_core::store::OcspResponseStore::sweep_ocsp_groups`]).
    pub ocsp_groups: usize,
    /// The certificate cutoff ([`CertCutoff`]) this pass used.
    pub cutoff: Option<CertCutoff>,
    /// Tokens that finished before this were pruned.
    pub tokens_before: Option<DateTime<Utc>>,
}

/// The pruning task's state: the store (whose CRL archive tells which revoked certificates a
/// published CRL listed), the clock, the `[retention]` settings and, on a node with a status
/// listener, the OCSP responder (whose answers for pruned certificates are dropped).
pub struct Pruner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: RetentionSection,
    crl_validity: Duration,
    responder: Option<Arc<Responder>>,
    pruned: Family<Labels, Counter>,
}

impl std::fmt::Debug for Pruner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pruner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Pruner {
    /// A pruner over `store` with these settings; registers `ca_pruned_total{kind}` in
    /// `metrics`. `crl_validity` is the CRLs' validity (`crl.validity`, default 24h).
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: RetentionSection,
        crl_validity: Duration,
        metrics: &Metrics,
    ) -> Self {
        let pruned = Family::<Labels, Counter>::default();
        metrics.register(
            "ca_pruned",
            "Records pruned past their retention, by kind (certificate, token)",
            pruned.clone(),
        );
        Pruner {
            store,
            clock,
            config,
            crl_validity,
            responder: None,
            pruned,
        }
    }

    /// The node's OCSP responder.
    pub fn with_responder(mut self, responder: Arc<Responder>) -> Self {
        self.responder = Some(responder);
        self
    }

    /// The settings.
    pub fn config(&self) -> &RetentionSection {
        &self.config
    }

    /// Which certificates may go at `now` (blocking: reads the CRL archive). With no CRL
    /// archived yet, no revoked certificate goes.
    pub fn cutoff(&self, now: DateTime<Utc>) -> ca_core::Result<CertCutoff> {
        let listed = self
            .store
            .latest_crl(FULL_CRL)?
            .map(|crl| (crl.this_update - CRL_BUILD_MARGIN).min(now - self.crl_validity));
        Ok(CertCutoff {
            expired_before: now - self.config.certificates.0,
            revoked_listed_before: listed,
        })
    }

    fn count(&self, kind: &str, n: usize) {
        if n > 0 {
            self.pruned
                .get_or_create(&vec![("kind".into(), kind.into())])
                .inc_by(n as u64);
        }
    }

    /// One pruning pass (blocking: call it from `spawn_blocking`). `stop` is asked between
    /// batches; a pass stopped early reports what it did. What was pruned before an error is
    /// audited and counted all the same, then the error is returned.
    pub fn run_pass(&self, stop: &dyn Fn() -> bool) -> ca_core::Result<PassReport> {
        let now = self.clock.now();
        let cutoff = self.cutoff(now)?;
        let tokens_before = now - self.config.tokens.0;
        let mut report = PassReport {
            cutoff: Some(cutoff),
            tokens_before: Some(tokens_before),
            ..PassReport::default()
        };
        let batch = self.config.batch.max(1);
        let result = (|| -> ca_core::Result<()> {
            while !stop() {
                let pruned = self.store.prune_expired_certs(&cutoff, batch)?;
                let n = pruned.serials.len();
                if let Some(responder) = &self.responder {
                    for stored in &pruned.ocsp_responses {
                        match responder.keep_group_response(stored, &pruned.serials) {
                            Ok(k) => report.ocsp_kept += k,
                            Err(e) => {
                                tracing::warn!(error = %e, "keeping a group OCSP response for its remaining members failed; they are signed again when asked")
                            }
                        }
                    }
                    for serial in &pruned.serials {
                        responder.forget_pruned(serial);
                    }
                }
                self.count("certificate", n);
                report.certificates += n;
                if n < batch {
                    break;
                }
            }
            while !stop() {
                let n = self.store.prune_tokens(tokens_before, batch)?;
                self.count("token", n);
                report.tokens += n;
                if n < batch {
                    break;
                }
            }
            // Groups every member of which was re-signed on its own or pruned. Only groups
            // older than a few minutes: one being written has its links a moment later.
            if !stop() {
                report.ocsp_groups = self
                    .store
                    .sweep_ocsp_groups(now - chrono::Duration::minutes(10))?;
                self.count("ocsp_group", report.ocsp_groups);
            }
            Ok(())
        })();
        if report.certificates + report.tokens > 0 {
            tracing::info!(
                certificates = report.certificates,
                tokens = report.tokens,
                expired_before = %cutoff.expired_before,
                revoked_listed_before = ?cutoff.revoked_listed_before,
                "retention: pruned expired records"
            );
            let event = NewAuditEvent::ok("ca-server", "retention.prune", "store").with_detail(
                serde_json::json!({
                    "certificates": report.certificates,
                    "tokens": report.tokens,
                    "certificates_expired_before": cutoff.expired_before.to_rfc3339(),
                    "revoked_listed_before": cutoff.revoked_listed_before.map(|t| t.to_rfc3339()),
                    "tokens_finished_before": tokens_before.to_rfc3339(),
                }),
            );
            if let Err(e) = self.store.append_audit(event) {
                tracing::error!(error = %e, "auditing a retention pass failed");
            }
        }
        result.map(|()| report)
    }

    /// Run a pass every `interval` (the first one `interval` after start, off the start-up
    /// path) until `shutdown` turns true; a pass in progress stops after its current batch.
    pub fn spawn(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let every = self
            .config
            .interval
            .0
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(600));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.changed() => return,
                }
                if *shutdown.borrow() {
                    return;
                }
                let me = self.clone();
                let rx = shutdown.clone();
                let job = tokio::task::spawn_blocking(move || me.run_pass(&|| *rx.borrow())).await;
                match job {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "retention pass failed; retrying at the next one")
                    }
                    Err(e) => tracing::error!(error = %e, "retention pass panicked"),
                }
            }
        })
    }
}

/// `ca-server store prune`.
#[derive(Debug, Clone, clap::Args)]
pub struct PruneArgs {
    /// The server configuration: its `[store]` and `[retention]`.
    #[arg(long, short, value_name = "FILE")]
    pub config: std::path::PathBuf,
    /// Count what a pass would prune; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `store prune` did or would do.
#[derive(Debug, serde::Serialize)]
struct PruneSummary {
    dry_run: bool,
    certificates: usize,
    tokens: usize,
    certificates_expired_before: DateTime<Utc>,
    tokens_finished_before: DateTime<Utc>,
}

/// Run `ca-server store prune`.
pub async fn run_command(args: PruneArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let cfg = crate::config::ServerConfig::load(&args.config)?;
    let dry_run = args.dry_run;
    let summary = tokio::task::spawn_blocking(move || -> anyhow::Result<PruneSummary> {
        let store = crate::server::open_store(&cfg)?;
        let crl_validity = cfg
            .crl
            .validity
            .map_or_else(|| ca_core::crl::CrlConfig::default().validity, |v| v.0);
        let pruner = Pruner::new(
            store.clone(),
            Arc::new(ca_core::clock::SystemClock),
            cfg.retention.clone(),
            crl_validity,
            &Metrics::new(),
        );
        let now = pruner.clock.now();
        let cutoff = pruner.cutoff(now)?;
        let tokens_before = now - pruner.config.tokens.0;
        let (certificates, tokens) = if dry_run {
            let mut certs = 0;
            store.for_each_cert(&mut |rec| {
                certs += usize::from(cutoff.allows(&rec));
                Ok(())
            })?;
            let tokens = store
                .list_tokens()?
                .iter()
                .filter(|t| t.finished_at() < tokens_before)
                .count();
            (certs, tokens)
        } else {
            let report = pruner.run_pass(&|| false)?;
            (report.certificates, report.tokens)
        };
        store.flush().context("flushing the store")?;
        Ok(PruneSummary {
            dry_run,
            certificates,
            tokens,
            certificates_expired_before: cutoff.expired_before,
            tokens_finished_before: tokens_before,
        })
    })
    .await
    .context("the prune pass")??;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "{} {} certificates (expired before {}) and {} tokens (finished before {})",
            if summary.dry_run {
                "would prune"
            } else {
                "pruned"
            },
            summary.certificates,
            summary.certificates_expired_before.to_rfc3339(),
            summary.tokens,
            summary.tokens_finished_before.to_rfc3339(),
        );
    }
    Ok(())
}
