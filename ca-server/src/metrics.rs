//! Prometheus metrics (text exposition format) for both listeners.
//!
//! One [`Metrics`] value per server holds the registry; the status listener (OCSP, CRL) shares
//! it: it counts OCSP answers with [`Metrics::ocsp_request`] and may register its own metrics
//! with [`Metrics::register`].

use ca_core::signer::{KeyAlgorithm, Signer};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};
use std::sync::{Arc, RwLock};
use std::time::Instant;

type Labels = Vec<(String, String)>;

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: RwLock<Registry>,
    issued: Family<Labels, Counter>,
    renewed: Family<Labels, Counter>,
    revoked: Family<Labels, Counter>,
    failures: Family<Labels, Counter>,
    ocsp: Family<Labels, Counter>,
    tokens: Counter,
    hsm_sign: Histogram,
    superseded: Counter,
    lineage_locks: Family<Labels, Counter>,
    conn_refused: Family<Labels, Counter>,
    conn_closed: Family<Labels, Counter>,
    conn_open: Family<Labels, Gauge>,
    unauthenticated: Family<Labels, Counter>,
    audit_suppressed: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with the CA's metrics registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let issued = Family::<Labels, Counter>::default();
        let renewed = Family::<Labels, Counter>::default();
        let revoked = Family::<Labels, Counter>::default();
        let failures = Family::<Labels, Counter>::default();
        let ocsp = Family::<Labels, Counter>::default();
        let tokens = Counter::default();
        let superseded = Counter::default();
        let lineage_locks = Family::<Labels, Counter>::default();
        registry.register(
            "ca_renewals_superseded",
            "Renewal attempts by a certificate that had already renewed (a sign of a cloned key)",
            superseded.clone(),
        );
        registry.register(
            "ca_lineages_locked",
            "Lineages locked, by reason (key_compromise, lineage_revoked, superseded_renewal)",
            lineage_locks.clone(),
        );
        // 0.25 ms .. ~4 s: SoftHSM signs in well under a millisecond, network HSMs in tens.
        let hsm_sign = Histogram::new(exponential_buckets(0.00025, 2.0, 15));
        registry.register(
            "ca_certificates_issued",
            "Certificates issued by enrollment (token, EST) or by the server itself, by profile",
            issued.clone(),
        );
        registry.register(
            "ca_certificates_renewed",
            "Certificates issued by renewal over mTLS, by profile",
            renewed.clone(),
        );
        registry.register(
            "ca_certificates_revoked",
            "Certificates revoked, by reason",
            revoked.clone(),
        );
        registry.register(
            "ca_api_failures",
            "Refused or failed API requests, by error code",
            failures.clone(),
        );
        registry.register(
            "ca_ocsp_requests",
            "OCSP requests answered, by status (good, revoked, unknown, malformed, unauthorized)",
            ocsp.clone(),
        );
        registry.register(
            "ca_enrollment_tokens_created",
            "Enrollment tokens created",
            tokens.clone(),
        );
        registry.register(
            "ca_hsm_sign_seconds",
            "Latency of one HSM signing operation",
            hsm_sign.clone(),
        );
        let conn_refused = Family::<Labels, Counter>::default();
        let conn_closed = Family::<Labels, Counter>::default();
        let conn_open = Family::<Labels, Gauge>::default();
        let unauthenticated = Family::<Labels, Counter>::default();
        let audit_suppressed = Family::<Labels, Counter>::default();
        registry.register(
            "ca_connections_refused",
            "Connections closed at accept, by listener (api, status) and cap (global, per_ip)",
            conn_refused.clone(),
        );
        registry.register(
            "ca_connections_closed",
            "Connections closed by a limit, by listener and reason (handshake_timeout, \
             header_timeout, idle, request_timeout)",
            conn_closed.clone(),
        );
        registry.register(
            "ca_connections_open",
            "Open connections, by listener",
            conn_open.clone(),
        );
        registry.register(
            "ca_unauthenticated_failures",
            "Refusals of callers no certificate or token of this CA identifies, by kind",
            unauthenticated.clone(),
        );
        registry.register(
            "ca_audit_events_suppressed",
            "Unauthenticated failures counted in an audit summary instead of an event each, by kind",
            audit_suppressed.clone(),
        );
        Metrics {
            conn_refused,
            conn_closed,
            conn_open,
            unauthenticated,
            audit_suppressed,
            registry: RwLock::new(registry),
            issued,
            renewed,
            revoked,
            failures,
            ocsp,
            tokens,
            hsm_sign,
            superseded,
            lineage_locks,
        }
    }

    /// Register a further metric (e.g. from the status listener).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .register(name, help, metric);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.read().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }

    /// A certificate was issued (enrollment or the server's own).
    pub fn issued(&self, profile: &str) {
        self.issued
            .get_or_create(&vec![("profile".into(), profile.into())])
            .inc();
    }

    /// A certificate was renewed.
    pub fn renewed(&self, profile: &str) {
        self.renewed
            .get_or_create(&vec![("profile".into(), profile.into())])
            .inc();
    }

    /// A certificate was revoked.
    pub fn revoked(&self, reason: &str) {
        self.revoked
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }

    /// A superseded generation tried to renew.
    pub fn renewal_superseded(&self) {
        self.superseded.inc();
    }

    /// A lineage was locked.
    pub fn lineage_locked(&self, reason: &str) {
        self.lineage_locks
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }

    /// A request failed with this error code.
    pub fn failure(&self, code: &str) {
        self.failures
            .get_or_create(&vec![("code".into(), code.into())])
            .inc();
    }

    /// An OCSP request was answered with this status.
    pub fn ocsp_request(&self, status: &str) {
        self.ocsp
            .get_or_create(&vec![("status".into(), status.into())])
            .inc();
    }

    /// An enrollment token was created.
    pub fn token_created(&self) {
        self.tokens.inc();
    }

    /// A connection was closed at accept by a cap (`global`, `per_ip`).
    pub fn connection_refused(&self, listener: &str, cap: &str) {
        self.conn_refused
            .get_or_create(&vec![
                ("listener".into(), listener.into()),
                ("cap".into(), cap.into()),
            ])
            .inc();
    }

    /// A connection was closed by a limit (`handshake_timeout`, `header_timeout`, `idle`,
    /// `request_timeout`).
    pub fn connection_closed(&self, listener: &str, reason: &str) {
        self.conn_closed
            .get_or_create(&vec![
                ("listener".into(), listener.into()),
                ("reason".into(), reason.into()),
            ])
            .inc();
    }

    /// The open-connections gauge of a listener.
    pub fn connections_open(&self, listener: &str) -> Gauge {
        self.conn_open
            .get_or_create(&vec![("listener".into(), listener.into())])
            .clone()
    }

    /// An unauthenticated failure of this kind, summarised in the audit log.
    pub fn unauthenticated_failure(&self, kind: &str) {
        let labels = vec![("kind".into(), kind.into())];
        self.unauthenticated.get_or_create(&labels).inc();
        self.audit_suppressed.get_or_create(&labels).inc();
    }

    /// Record one HSM signing latency.
    pub fn observe_sign(&self, seconds: f64) {
        self.hsm_sign.observe(seconds);
    }
}

/// A [`Signer`] that times every signature into the HSM latency histogram.
#[derive(Debug)]
pub struct TimedSigner {
    inner: Arc<dyn Signer>,
    metrics: Arc<Metrics>,
}

impl TimedSigner {
    /// Wrap a signer.
    pub fn new(inner: Arc<dyn Signer>, metrics: Arc<Metrics>) -> Self {
        TimedSigner { inner, metrics }
    }
}

impl Signer for TimedSigner {
    fn algorithm(&self) -> KeyAlgorithm {
        self.inner.algorithm()
    }
    fn spki_der(&self) -> &[u8] {
        self.inner.spki_der()
    }
    fn public_key_bits(&self) -> &[u8] {
        self.inner.public_key_bits()
    }
    fn sign(&self, msg: &[u8]) -> ca_core::Result<Vec<u8>> {
        let start = Instant::now();
        let r = self.inner.sign(msg);
        self.metrics.observe_sign(start.elapsed().as_secs_f64());
        r
    }
}

/// A counter read from the OCSP responder at each scrape: responses signed at issuance, or
/// the certificates they covered (their ratio is the mean group size).
#[derive(Debug)]
pub struct PresignCounter {
    responder: Arc<ca_core::ocsp::Responder>,
    certificates: bool,
}

impl PresignCounter {
    /// Register both counters for `responder`.
    pub fn register(metrics: &Metrics, responder: &Arc<ca_core::ocsp::Responder>) {
        metrics.register(
            "ca_ocsp_issuance_signatures",
            "OCSP responses signed at issuance (one may cover several certificates)",
            PresignCounter {
                responder: responder.clone(),
                certificates: false,
            },
        );
        metrics.register(
            "ca_ocsp_issuance_certificates",
            "Certificates covered by the OCSP responses signed at issuance",
            PresignCounter {
                responder: responder.clone(),
                certificates: true,
            },
        );
    }
}

impl prometheus_client::encoding::EncodeMetric for PresignCounter {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let s = self.responder.issuance_signing_stats();
        let v = if self.certificates {
            s.certificates
        } else {
            s.signatures
        };
        encoder.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&v, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Counter
    }
}

/// A gauge read at each scrape from the revocation machinery: serials whose OCSP response an
/// HSM failure left unsigned (`ca_ocsp_resign_backlog`), and whether the served CRL is known to
/// miss a revocation (`ca_crl_stale`, 0 or 1). Both go back to 0 once the HSM signs again
/// (the next maintenance pass). Alert on either staying above 0.
#[derive(Debug)]
pub enum RevocationGauge {
    /// `ca_ocsp_resign_backlog`.
    ResignBacklog(Arc<ca_core::ocsp::Responder>),
    /// `ca_crl_stale`.
    CrlStale(Arc<ca_core::crl::CrlPublisher>),
}

impl RevocationGauge {
    /// Register both gauges.
    pub fn register(
        metrics: &Metrics,
        responder: &Arc<ca_core::ocsp::Responder>,
        crls: &Arc<ca_core::crl::CrlPublisher>,
    ) {
        metrics.register(
            "ca_ocsp_resign_backlog",
            "Certificates issued or revoked whose OCSP response the HSM has not signed yet",
            RevocationGauge::ResignBacklog(responder.clone()),
        );
        metrics.register(
            "ca_crl_stale",
            "1 while the served CRL is known to miss a revocation (its rebuild failed), else 0",
            RevocationGauge::CrlStale(crls.clone()),
        );
    }
}

impl prometheus_client::encoding::EncodeMetric for RevocationGauge {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let v = match self {
            RevocationGauge::ResignBacklog(r) => r.resign_backlog() as i64,
            RevocationGauge::CrlStale(c) => i64::from(c.is_stale()),
        };
        encoder.encode_gauge(&v)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}

/// Gauges of the delegated OCSP responder certificate (registered only when one is
/// configured): alert when the expiry drops below 30 days (README "Rotating the OCSP
/// responder certificate") or the certificate is revoked.
#[derive(Clone)]
pub enum OcspSignerGauge {
    /// `ca_ocsp_signer_cert_expiry_seconds`: seconds until its notAfter (negative once
    /// expired).
    ExpirySeconds(
        Arc<ca_core::ocsp::Responder>,
        Arc<dyn ca_core::clock::Clock>,
    ),
    /// `ca_ocsp_signer_cert_revoked`: 1 once it is revoked (nothing is signed with it), else 0.
    Revoked(Arc<ca_core::ocsp::Responder>),
}

impl std::fmt::Debug for OcspSignerGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OcspSignerGauge::ExpirySeconds(..) => "OcspSignerGauge::ExpirySeconds",
            OcspSignerGauge::Revoked(_) => "OcspSignerGauge::Revoked",
        })
    }
}

impl OcspSignerGauge {
    /// Register both gauges if `responder` signs with a delegated certificate.
    pub fn register(
        metrics: &Metrics,
        responder: &Arc<ca_core::ocsp::Responder>,
        clock: Arc<dyn ca_core::clock::Clock>,
    ) {
        if responder.signer_cert_status().is_none() {
            return;
        }
        metrics.register(
            "ca_ocsp_signer_cert_expiry_seconds",
            "Seconds until the delegated OCSP responder certificate expires (no OCSP response outlives it; rotate it before 30 days are left)",
            OcspSignerGauge::ExpirySeconds(responder.clone(), clock),
        );
        metrics.register(
            "ca_ocsp_signer_cert_revoked",
            "1 once the delegated OCSP responder certificate is revoked (nothing is signed with it any more), else 0",
            OcspSignerGauge::Revoked(responder.clone()),
        );
    }
}

impl prometheus_client::encoding::EncodeMetric for OcspSignerGauge {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let v = match self {
            OcspSignerGauge::ExpirySeconds(r, clock) => r
                .signer_cert_status()
                .map_or(0, |s| (s.not_after - clock.now()).num_seconds()),
            OcspSignerGauge::Revoked(r) => {
                i64::from(r.signer_cert_status().is_some_and(|s| s.revoked.is_some()))
            }
        };
        encoder.encode_gauge(&v)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}

/// The OCSP request memo's size, read at each scrape: `ca_ocsp_memo_bytes` and
/// `ca_ocsp_memo_entries` (gauges, bounded by `ocsp.memo_max_bytes`), and
/// `ca_ocsp_memo_evictions` (counter).
#[derive(Debug)]
pub struct MemoMetric {
    responder: Arc<ca_core::ocsp::Responder>,
    what: MemoField,
}

#[derive(Clone, Copy, Debug)]
enum MemoField {
    Bytes,
    Entries,
    Evictions,
}

impl MemoMetric {
    /// Register the three metrics for `responder`.
    pub fn register(metrics: &Metrics, responder: &Arc<ca_core::ocsp::Responder>) {
        for (name, help, what) in [
            (
                "ca_ocsp_memo_bytes",
                "Bytes held by the OCSP request memo (bounded by ocsp.memo_max_bytes)",
                MemoField::Bytes,
            ),
            (
                "ca_ocsp_memo_entries",
                "Requests remembered by the OCSP request memo",
                MemoField::Entries,
            ),
            (
                "ca_ocsp_memo_evictions",
                "Entries evicted from the OCSP request memo to stay under its bound",
                MemoField::Evictions,
            ),
        ] {
            metrics.register(
                name,
                help,
                MemoMetric {
                    responder: responder.clone(),
                    what,
                },
            );
        }
    }
}

impl prometheus_client::encoding::EncodeMetric for MemoMetric {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let s = self.responder.memo_stats();
        match self.what {
            MemoField::Bytes => encoder.encode_gauge(&(s.bytes as i64)),
            MemoField::Entries => encoder.encode_gauge(&(s.entries as i64)),
            MemoField::Evictions => encoder
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                    &s.evictions,
                    None,
                ),
        }
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        match self.what {
            MemoField::Evictions => prometheus_client::metrics::MetricType::Counter,
            _ => prometheus_client::metrics::MetricType::Gauge,
        }
    }
}

/// The OCSP answer cache, read at each scrape: `ca_ocsp_cache_entries` and
/// `ca_ocsp_cache_max_entries`, `ca_ocsp_cache_bytes` and `ca_ocsp_cache_max_bytes` (gauges),
/// `ca_ocsp_cache_hits`, `ca_ocsp_cache_misses`,
/// `ca_ocsp_cache_store_reads` and `ca_ocsp_cache_evictions` (counters), `ca_ocsp_cache_loaded`
/// (gauge, 1 once the background load has finished). The hit rate is
/// hits / (hits + misses); misses answered without a signature are the store reads.
#[derive(Debug)]
pub struct AnswerCacheMetric {
    responder: Arc<ca_core::ocsp::Responder>,
    what: CacheField,
}

#[derive(Clone, Copy, Debug)]
enum CacheField {
    Entries,
    MaxEntries,
    Bytes,
    MaxBytes,
    Hits,
    Misses,
    StoreReads,
    Evictions,
    Loaded,
}

impl AnswerCacheMetric {
    /// Register the nine metrics for `responder`.
    pub fn register(metrics: &Metrics, responder: &Arc<ca_core::ocsp::Responder>) {
        for (name, help, what) in [
            (
                "ca_ocsp_cache_entries",
                "Pre-signed OCSP answers in memory",
                CacheField::Entries,
            ),
            (
                "ca_ocsp_cache_max_entries",
                "Bound on the OCSP answers in memory (ocsp.cache_max_entries)",
                CacheField::MaxEntries,
            ),
            (
                "ca_ocsp_cache_bytes",
                "Bytes the OCSP answers in memory hold (each group response counted once)",
                CacheField::Bytes,
            ),
            (
                "ca_ocsp_cache_max_bytes",
                "Bound on the bytes of the OCSP answers in memory (ocsp.cache_max_bytes)",
                CacheField::MaxBytes,
            ),
            (
                "ca_ocsp_cache_hits",
                "OCSP requests answered from memory",
                CacheField::Hits,
            ),
            (
                "ca_ocsp_cache_misses",
                "OCSP requests about this CA's certificates with no fresh answer in memory",
                CacheField::Misses,
            ),
            (
                "ca_ocsp_cache_store_reads",
                "OCSP cache misses answered from the stored response, without a signature",
                CacheField::StoreReads,
            ),
            (
                "ca_ocsp_cache_evictions",
                "OCSP answers evicted from memory to stay under the bound",
                CacheField::Evictions,
            ),
            (
                "ca_ocsp_cache_loaded",
                "1 once the stored OCSP answers have been loaded after start (in the background)",
                CacheField::Loaded,
            ),
        ] {
            metrics.register(
                name,
                help,
                AnswerCacheMetric {
                    responder: responder.clone(),
                    what,
                },
            );
        }
    }
}

impl prometheus_client::encoding::EncodeMetric for AnswerCacheMetric {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let s = self.responder.cache_stats();
        let counter = |encoder: &mut prometheus_client::encoding::MetricEncoder, v: u64| {
            encoder.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&v, None)
        };
        match self.what {
            CacheField::Entries => encoder.encode_gauge(&(s.entries as i64)),
            CacheField::MaxEntries => encoder.encode_gauge(&(s.max_entries as i64)),
            CacheField::Bytes => encoder.encode_gauge(&(s.bytes as i64)),
            CacheField::MaxBytes => encoder.encode_gauge(&(s.max_bytes as i64)),
            CacheField::Hits => counter(&mut encoder, s.hits),
            CacheField::Misses => counter(&mut encoder, s.misses),
            CacheField::StoreReads => counter(&mut encoder, s.store_reads),
            CacheField::Evictions => counter(&mut encoder, s.evictions),
            CacheField::Loaded => encoder.encode_gauge(&i64::from(s.loaded)),
        }
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        match self.what {
            CacheField::Entries
            | CacheField::MaxEntries
            | CacheField::Bytes
            | CacheField::MaxBytes
            | CacheField::Loaded => prometheus_client::metrics::MetricType::Gauge,
            _ => prometheus_client::metrics::MetricType::Counter,
        }
    }
}
