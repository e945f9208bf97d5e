//! Refusals of callers that nothing of this CA identifies: no client certificate, or one it did
//! not issue (at the handshake or per request), an enrollment token that is unknown, used or
//! expired, a request refused before its token was looked at, an oversized body from an
//! anonymous client. Anyone can cause them at line rate, so they are not one fsynced audit
//! event each: they are counted (`ca_unauthenticated_failures`, `ca_audit_events_suppressed`)
//! and summarised in the audit log, at most one `auth.fail.summary` event per kind per
//! interval (`limits.unauthenticated_summary_interval`) and at shutdown, each with the counts
//! per error code and per route and the busiest source addresses.
//!
//! Refusals of an identified caller (a certificate of this CA that is revoked or expired, an
//! administrator whose role does not allow the route, an enrollment with a valid token that
//! policy refuses) stay one audit event each.

use crate::metrics::Metrics;
use ca_core::audit::NewAuditEvent;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Source addresses counted one by one per kind and interval; the others are counted
/// together (`other_addresses`), so memory stays bounded whatever the traffic.
pub(crate) const TRACKED_ADDRESSES: usize = 4096;
/// Routes counted one by one per kind and interval (the path of a 413 is the client's).
const TRACKED_ROUTES: usize = 32;
/// Longest route kept in a summary (the path of a 413 is the client's).
const MAX_ROUTE_LEN: usize = 128;
/// Source addresses listed in a summary.
pub(crate) const TOP_ADDRESSES: usize = 10;

/// What was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// TLS handshake refused on the client certificate (not issued by this CA, bad chain).
    TlsClientCert,
    /// Admin route without a client certificate of this CA.
    Admin,
    /// Renewal without a client certificate of this CA.
    Renew,
    /// Enrollment with an unknown, used or expired token, or refused before its token was
    /// looked at (body, content type, CSR).
    Enroll,
    /// Body over `limits.max_body_bytes` from a client no certificate identifies.
    PayloadTooLarge,
}

impl Kind {
    /// The name in summaries and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::TlsClientCert => "tls_client_cert",
            Kind::Admin => "admin",
            Kind::Renew => "renew",
            Kind::Enroll => "enroll",
            Kind::PayloadTooLarge => "payload_too_large",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    count: u64,
    codes: BTreeMap<&'static str, u64>,
    routes: BTreeMap<String, u64>,
    other_routes: u64,
    addresses: HashMap<IpAddr, u64>,
    other_addresses: u64,
}

#[derive(Debug)]
struct Window {
    since: DateTime<Utc>,
    kinds: BTreeMap<Kind, Counts>,
}

/// The counts since the last summary.
#[derive(Debug)]
pub struct UnauthFailures {
    window: Mutex<Window>,
    metrics: Arc<Metrics>,
}

impl UnauthFailures {
    /// Empty counts.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        UnauthFailures {
            window: Mutex::new(Window {
                since: Utc::now(),
                kinds: BTreeMap::new(),
            }),
            metrics,
        }
    }

    /// Count one refusal.
    pub fn record(&self, kind: Kind, ip: IpAddr, route: &str, code: &'static str) {
        self.metrics.unauthenticated_failure(kind.as_str());
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let c = w.kinds.entry(kind).or_default();
        c.count += 1;
        *c.codes.entry(code).or_insert(0) += 1;
        let route = truncate(route, MAX_ROUTE_LEN);
        let room = c.routes.len() < TRACKED_ROUTES;
        match c.routes.get_mut(route) {
            Some(n) => *n += 1,
            None if room => {
                c.routes.insert(route.to_string(), 1);
            }
            None => c.other_routes += 1,
        }
        let ip = ip.to_canonical();
        let room = c.addresses.len() < TRACKED_ADDRESSES;
        match c.addresses.get_mut(&ip) {
            Some(n) => *n += 1,
            None if room => {
                c.addresses.insert(ip, 1);
            }
            None => c.other_addresses += 1,
        }
    }

    /// Refusals counted since the last summary.
    pub fn pending(&self) -> u64 {
        let w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.kinds.values().map(|c| c.count).sum()
    }

    /// The summary events of the counts so far (one per kind), and a fresh window.
    pub fn take(&self, now: DateTime<Utc>) -> Vec<NewAuditEvent> {
        let (since, kinds) = {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            let since = std::mem::replace(&mut w.since, now);
            (since, std::mem::take(&mut w.kinds))
        };
        kinds
            .into_iter()
            .filter(|(_, c)| c.count > 0)
            .map(|(kind, c)| summary(kind, c, since, now))
            .collect()
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn summary(kind: Kind, c: Counts, since: DateTime<Utc>, until: DateTime<Utc>) -> NewAuditEvent {
    let distinct = c.addresses.len();
    let mut top: Vec<(IpAddr, u64)> = c.addresses.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(TOP_ADDRESSES);
    let top: Vec<serde_json::Value> = top
        .into_iter()
        .map(|(ip, n)| serde_json::json!({ "address": ip.to_string(), "count": n }))
        .collect();
    NewAuditEvent::failed("anonymous", "auth.fail.summary", kind.as_str(), "summary").with_detail(
        serde_json::json!({
            "kind": kind.as_str(),
            "count": c.count,
            "since": since.to_rfc3339(),
            "until": until.to_rfc3339(),
            "codes": c.codes,
            "routes": c.routes,
            "other_routes": c.other_routes,
            "top_addresses": top,
            "distinct_addresses": distinct,
            "other_addresses": c.other_addresses,
        }),
    )
}

impl crate::service::AppState {
    /// Count an unauthenticated refusal of `peer` (summarised later, not audited now).
    pub fn unauthenticated_failure(
        &self,
        kind: Kind,
        peer: &crate::auth::Peer,
        route: &str,
        e: &crate::error::ApiError,
    ) {
        self.unauthenticated
            .record(kind, peer.addr.ip(), route, e.code.as_str());
    }

    /// Append the summaries of the unauthenticated failures counted so far (one event per
    /// kind; nothing when there were none).
    pub async fn summarise_unauthenticated(&self) {
        for ev in self.unauthenticated.take(self.clock.now()) {
            self.audit(ev).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_bounded_and_summarised_per_kind() {
        let u = UnauthFailures::new(Arc::new(Metrics::new()));
        let busiest = IpAddr::from([192, 0, 2, 1]);
        for _ in 0..5 {
            u.record(Kind::Enroll, busiest, ca_api::routes::ENROLL, "bad_request");
        }
        for i in 0..(TRACKED_ADDRESSES as u32 + 100) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            u.record(Kind::Enroll, ip, &format!("/x/{i}"), "token_rejected");
        }
        u.record(
            Kind::TlsClientCert,
            IpAddr::from([127, 0, 0, 1]),
            "tls-handshake",
            "cert_unknown",
        );
        assert_eq!(u.pending(), TRACKED_ADDRESSES as u64 + 106);
        let events = u.take(Utc::now());
        assert_eq!(events.len(), 2);
        let enroll = &events
            .iter()
            .find(|e| e.object == "enroll")
            .map(|e| e.detail.clone())
            .unwrap_or_default();
        assert_eq!(enroll["count"], TRACKED_ADDRESSES as u64 + 105);
        assert_eq!(enroll["codes"]["bad_request"], 5);
        assert_eq!(enroll["other_addresses"], 101);
        assert_eq!(enroll["top_addresses"][0]["address"], "192.0.2.1");
        assert_eq!(
            enroll["routes"].as_object().map(|m| m.len()),
            Some(TRACKED_ROUTES)
        );
        assert_eq!(
            enroll["top_addresses"].as_array().map(|a| a.len()),
            Some(10)
        );
        assert_eq!(enroll["top_addresses"][0]["count"], 5);
        assert_eq!(u.pending(), 0);
        assert!(u.take(Utc::now()).is_empty());
    }
}
