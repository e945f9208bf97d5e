//! The connection layer of both listeners: caps on open connections (global, per client
//! address), the TLS handshake, header-read, idle and request timeouts, and the HTTP/2 limits
//! (concurrent streams, keep-alive PING, header list size). What a client that never finishes
//! its request, or opens thousands of connections, can hold is bounded here, before any route
//! runs.
//!
//! - A connection over [`ConnLimits::max_connections`], or over
//!   [`ConnLimits::max_per_ip`] from one address (an IPv6 /64 counts as one address), is
//!   closed at accept (`ca_connections_refused`); the connections already open keep working.
//! - The first request's headers must arrive within [`ConnLimits::header_read_timeout`] of
//!   the connection being ready (TLS done): for HTTP/1.1 hyper applies it to every request,
//!   which also ends idle keep-alive connections; for HTTP/2 this layer applies it to the
//!   first request.
//! - A connection with no request in progress for [`ConnLimits::idle_timeout`] is shut down
//!   gracefully (HTTP/2 GOAWAY).
//! - At shutdown every connection is shut down gracefully; [`Gate::drained`] waits for them.

use crate::metrics::Metrics;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Largest HTTP/2 header list accepted (hyper's default is 16 MiB).
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;
/// HTTP/1.1 read buffer, so also the largest request head (hyper's default is about 400 KiB):
/// with thousands of connections, what each may hold matters.
const H1_MAX_BUF: usize = 64 * 1024;
/// Time a connection gets after the idle or header timer started its graceful shutdown (no
/// request is in progress then: this only lets an HTTP/2 GOAWAY go out) before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The limits of one listener.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// `api` or `status`: the metrics label.
    pub listener: &'static str,
    /// Time to complete the TLS handshake (API only).
    pub handshake_timeout: Duration,
    /// Time to send a request's headers once the connection is ready.
    pub header_read_timeout: Duration,
    /// No request in progress for this long: the connection is closed.
    pub idle_timeout: Duration,
    /// Time one request may take (`None`: the router has its own timeout).
    pub request_timeout: Option<Duration>,
    /// Most open connections.
    pub max_connections: usize,
    /// Most open connections from one client address.
    pub max_per_ip: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub http2_max_streams: u32,
    /// HTTP/2 PING interval on idle connections.
    pub http2_keep_alive_interval: Duration,
    /// HTTP/2 PING answer timeout.
    pub http2_keep_alive_timeout: Duration,
}

impl ConnLimits {
    /// The API listener's limits from `[limits]`.
    pub fn api(l: &crate::config::Limits) -> Self {
        ConnLimits {
            listener: "api",
            handshake_timeout: std_dur(&l.handshake_timeout, 10),
            header_read_timeout: std_dur(&l.header_read_timeout, 10),
            idle_timeout: std_dur(&l.idle_timeout, 60),
            request_timeout: None,
            max_connections: l.max_connections.max(1),
            max_per_ip: l.max_connections_per_ip.max(1),
            http2_max_streams: l.http2_max_streams.max(1),
            http2_keep_alive_interval: std_dur(&l.http2_keep_alive_interval, 20),
            http2_keep_alive_timeout: std_dur(&l.http2_keep_alive_timeout, 10),
        }
    }

    /// The status listener's limits from `[limits.status]` (PING settings from `[limits]`).
    pub fn status(l: &crate::config::Limits) -> Self {
        let s = &l.status;
        ConnLimits {
            listener: "status",
            handshake_timeout: Duration::ZERO,
            header_read_timeout: std_dur(&s.header_read_timeout, 5),
            idle_timeout: std_dur(&s.idle_timeout, 30),
            request_timeout: Some(std_dur(&s.request_timeout, 10)),
            max_connections: s.max_connections.max(1),
            max_per_ip: s.max_connections_per_ip.max(1),
            http2_max_streams: s.http2_max_streams.max(1),
            http2_keep_alive_interval: std_dur(&l.http2_keep_alive_interval, 20),
            http2_keep_alive_timeout: std_dur(&l.http2_keep_alive_timeout, 10),
        }
    }

    /// The hyper connection builder with these limits.
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(H1_MAX_BUF);
        b.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.http2_max_streams)
            .keep_alive_interval(self.http2_keep_alive_interval)
            .keep_alive_timeout(self.http2_keep_alive_timeout)
            .max_header_list_size(H2_MAX_HEADER_LIST);
        b
    }
}

fn std_dur(s: &ca_core::profile::Span, default_secs: u64) -> Duration {
    s.0.to_std()
        .ok()
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(default_secs))
}

/// The address a per-IP cap counts: IPv4 (also when mapped into IPv6), or the /64 of an
/// IPv6 address (one subscriber usually holds a whole /64).
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::from(o)
        }
        v4 => v4,
    }
}

/// Admission of connections to one listener: the global cap (a semaphore) and the per-address
/// counts.
#[derive(Debug)]
pub(crate) struct Gate {
    limits: ConnLimits,
    slots: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    metrics: Arc<Metrics>,
    open: Gauge,
}

/// One admitted connection; dropping it gives its slots back.
#[derive(Debug)]
pub(crate) struct Ticket {
    gate: Arc<Gate>,
    ip: IpAddr,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut map = self.gate.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
        self.gate.open.dec();
    }
}

impl Gate {
    /// A gate for a listener with these limits.
    pub(crate) fn new(limits: ConnLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        let open = metrics.connections_open(limits.listener);
        Arc::new(Gate {
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            per_ip: Mutex::new(HashMap::new()),
            limits,
            metrics,
            open,
        })
    }

    /// The connection caps and timeouts this gate admits by.
    pub(crate) fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Admit a connection from `ip`, or refuse it (counted) when a cap is reached.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Ticket> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.metrics
                .connection_refused(self.limits.listener, "global");
            return None;
        };
        let key = ip_key(ip);
        {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(key).or_insert(0);
            if *n >= self.limits.max_per_ip {
                drop(map);
                self.metrics
                    .connection_refused(self.limits.listener, "per_ip");
                return None;
            }
            *n += 1;
        }
        self.open.inc();
        Some(Ticket {
            gate: self.clone(),
            ip: key,
            _slot: slot,
        })
    }

    /// Wait until every admitted connection has ended, at most `grace`; whether they did.
    pub(crate) async fn drained(&self, grace: Duration) -> bool {
        let all = u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX);
        tokio::time::timeout(grace, self.slots.acquire_many(all))
            .await
            .is_ok()
    }
}

/// What one connection is doing: requests in progress, and when the last one started or
/// ended. Requests only update atomics: the connection's timer reads them when it fires (at
/// most once per limit), so a request costs no wake-up and no timer of its own.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    served: AtomicBool,
    /// Milliseconds after `base` of the last request start or end.
    last_ms: AtomicU64,
    base: Instant,
}

/// How often a connection whose request outlives the idle limit is looked at again.
const BUSY_RECHECK: Duration = Duration::from_secs(1);

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            last_ms: AtomicU64::new(0),
            base: Instant::now(),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::AcqRel);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Acquire))
    }

    /// Resolves when the connection has had no request in progress for `idle` (or none at
    /// all for `first`): the reason to close it.
    async fn expired(
        &self,
        first: Duration,
        idle: Duration,
        request_timeout: Option<Duration>,
    ) -> &'static str {
        loop {
            let (limit, reason) = if self.served.load(Ordering::Acquire) {
                (idle, "idle")
            } else {
                (first, "header_timeout")
            };
            let deadline = self.last() + limit;
            if Instant::now() < deadline {
                tokio::time::sleep_until(deadline).await;
                continue;
            }
            if self.in_flight.load(Ordering::Acquire) > 0 {
                // A request in progress: bounded by the request timeout (here, for the
                // listeners whose router has none of its own), else looked at again later.
                if let Some(t) = request_timeout {
                    if Instant::now() >= self.last() + t {
                        return "request_timeout";
                    }
                }
                tokio::time::sleep(BUSY_RECHECK.min(limit)).await;
                continue;
            }
            return reason;
        }
    }
}

/// Counts a request in progress on its connection while alive.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(a: &Arc<Activity>) -> Self {
        a.served.store(true, Ordering::Release);
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        a.touch();
        InFlight(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether a hyper connection error is its header-read timeout.
fn is_header_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Serve one admitted connection (TLS already done, or plain TCP) with `router`, adding
/// `ext` to every request, until it ends, a limit closes it, or `shutdown` fires.
pub(crate) async fn serve_connection<I, X>(
    gate: Arc<Gate>,
    ticket: Ticket,
    io: I,
    router: axum::Router,
    ext: Option<X>,
    addr: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    X: Clone + Send + Sync + 'static,
{
    use tower::ServiceExt;
    let limits = gate.limits.clone();
    let activity = Activity::new();
    let svc = {
        let activity = activity.clone();
        tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            if let Some(ext) = &ext {
                req.extensions_mut().insert(ext.clone());
            }
            // No timer per request: the connection's timer enforces the request timeout
            // (Activity::expired), which keeps the OCSP path as cheap as a bare server.
            let guard = InFlight::start(&activity);
            let fut = router.clone().oneshot(req);
            async move {
                let _guard = guard;
                fut.await
            }
        })
    };
    let builder = limits.builder();
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc));
    let mut conn = std::pin::pin!(conn);
    let mut closing: Option<Instant> = None;
    let result = loop {
        let grace_over = async {
            match closing {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn.as_mut() => break r,
            reason = activity.expired(limits.header_read_timeout, limits.idle_timeout, limits.request_timeout), if closing.is_none() => {
                tracing::debug!(%addr, reason, "closing connection");
                gate.metrics.connection_closed(limits.listener, reason);
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + IDLE_CLOSE_GRACE);
            }
            _ = shutdown.changed(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + crate::server::SHUTDOWN_GRACE);
            }
            _ = grace_over => {
                tracing::debug!(%addr, "connection did not close in time; dropped");
                break Ok(());
            }
        }
    };
    if let Err(e) = result {
        // Counted once: not again when this layer's own timer closed it first.
        if closing.is_none() && is_header_timeout(e.as_ref()) {
            gate.metrics
                .connection_closed(limits.listener, "header_timeout");
        }
        tracing::debug!(%addr, error = %e, "connection ended with an error");
    }
    drop(ticket);
}

/// Accept plain-HTTP connections on `listener` until `shutdown`, then wait (at most
/// [`crate::server::SHUTDOWN_GRACE`]) for the open ones to finish.
pub(crate) async fn serve_plain(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    gate: Arc<Gate>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Some(ticket) = gate.admit(addr.ip()) else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve_connection(
            gate.clone(),
            ticket,
            tcp,
            router.clone(),
            None::<()>,
            addr,
            shutdown.clone(),
        ));
    }
    drop(listener);
    if !gate.drained(crate::server::SHUTDOWN_GRACE).await {
        tracing::warn!(
            listener = gate.limits.listener,
            "in-flight connections did not finish within the grace period"
        );
    }
}
