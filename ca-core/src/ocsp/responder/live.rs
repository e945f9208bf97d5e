//! Live signing: the few requests the caches cannot answer (unknown serials, several CertIDs,
//! CertIDs hashed with SHA-384/512, nonce echo), signed on request within a rate limit, and
//! the bounded cache of signed `unknown` answers.
//!
//! # Nonce policy (RFC 8954)
//!
//! This is the one place the policy is written out; the README and the crate docs point here.
//!
//! - Pre-signed responses carry no nonce: RFC 5019 2.2.1 lets a responder ignore the nonce,
//!   and clients that need freshness use `thisUpdate`/`nextUpdate`.
//! - A request whose nonce is empty or longer than 32 bytes is `malformedRequest` (RFC 8954
//!   2.1; checked when the request is parsed, `ocsp/request.rs`).
//! - With [`super::ResponderConfig::echo_nonce`] (off by default) a request that carries a
//!   valid nonce is signed live and the nonce echoed ([`LiveSigner::nonce_to_echo`]), within
//!   the live-signing rate; such an answer is not cacheable (`AnswerKind::Signed::cacheable`).
//!   Above the rate the pre-signed response (without nonce) is returned instead.
//!
//! # Rate limit
//!
//! A token bucket ([`super::ResponderConfig::live_signing_rate`], `live_signing_burst`). Over
//! the limit an unknown serial gets `unauthorized` (RFC 5019 2.2.3), which costs nothing; a
//! nonce is ignored in favour of the pre-signed response; other requests get `tryLater`.
//!
//! Invariant: at most `unknown_cache_size` signed `unknown` answers are kept (oldest dropped
//! first), and one is forgotten as soon as a real answer for its serial is installed.

use super::super::build::{nonce_extension, single};
use super::super::request::{ParsedRequest, RequestedCert};
use super::super::serial_magnitude;
use super::answer::{AnswerKind, ErrorAnswers, OcspAnswer};
use super::follow::Follower;
use super::install::Installer;
use super::key::PRESIGNED_ALGS;
use super::presign::Presigner;
use super::refresh::Refresher;
use super::ResponderConfig;
use crate::revocation::CertStatus;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use x509_ocsp::SingleResponse;

struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Default)]
struct Unknown {
    map: HashMap<Vec<u8>, Arc<OcspAnswer>>,
    order: VecDeque<Vec<u8>>,
}

/// Signed `unknown` answers for serials this CA never issued, bounded, oldest dropped first.
pub(super) struct UnknownAnswers {
    inner: RwLock<Unknown>,
    max: usize,
}

impl UnknownAnswers {
    fn new(max: usize) -> Self {
        UnknownAnswers {
            inner: RwLock::new(Unknown::default()),
            max,
        }
    }

    /// The `unknown` signed for `serial` (magnitude), if still fresh.
    #[inline]
    pub(super) fn get_fresh(&self, serial: &[u8], now: DateTime<Utc>) -> Option<Arc<OcspAnswer>> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .get(serial)
            .filter(|a| a.fresh(now))
            .cloned()
    }

    fn insert(&self, serial: &[u8], answer: Arc<OcspAnswer>) {
        let mut u = self.inner.write().unwrap_or_else(|p| p.into_inner());
        while u.map.len() >= self.max.max(1) {
            let Some(old) = u.order.pop_front() else {
                break;
            };
            u.map.remove(&old);
        }
        if self.max > 0 {
            u.order.push_back(serial.to_vec());
            u.map.insert(serial.to_vec(), answer);
        }
    }

    /// Drop the `unknown` of `serial`: a real answer was installed for it.
    pub(super) fn forget(&self, serial: &[u8]) {
        let mut u = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if u.map.remove(serial).is_some() {
            u.order.retain(|k| k != serial);
        }
    }

    /// Drop the answers that are no longer fresh.
    pub(super) fn prune(&self, now: DateTime<Utc>) {
        let mut u = self.inner.write().unwrap_or_else(|p| p.into_inner());
        u.map.retain(|_, a| a.fresh(now));
        let Unknown { map, order } = &mut *u;
        order.retain(|k| map.contains_key(k));
    }
}

/// The live-signing budget, the nonce policy and the `unknown` cache.
pub(super) struct LiveSigner {
    bucket: Mutex<Bucket>,
    rate: u32,
    burst: u32,
    echo_nonce: bool,
    pub(super) unknown: UnknownAnswers,
}

/// What answering live borrows from the other parts.
pub(super) struct LiveCtx<'a> {
    pub(super) inst: Installer<'a>,
    pub(super) presigner: &'a Presigner,
    pub(super) backlog: &'a Refresher,
    pub(super) follower: &'a Follower,
    pub(super) errors: &'a ErrorAnswers,
}

impl LiveSigner {
    pub(super) fn new(config: &ResponderConfig) -> Self {
        LiveSigner {
            bucket: Mutex::new(Bucket {
                tokens: f64::from(config.live_signing_burst),
                last: Instant::now(),
            }),
            rate: config.live_signing_rate,
            burst: config.live_signing_burst,
            echo_nonce: config.echo_nonce,
            unknown: UnknownAnswers::new(config.unknown_cache_size),
        }
    }

    /// The nonce to echo in the answer to `parsed`: its nonce when echoing is on, else none
    /// (the nonce policy above).
    #[inline]
    pub(super) fn nonce_to_echo<'p>(&self, parsed: &'p ParsedRequest) -> Option<&'p [u8]> {
        if self.echo_nonce {
            parsed.nonce.as_deref()
        } else {
            None
        }
    }

    /// Answer a request that needs a signature or a store read (blocking: HSM, store).
    pub(super) fn answer(&self, parsed: &ParsedRequest, cx: &LiveCtx<'_>) -> Arc<OcspAnswer> {
        let inst = &cx.inst;
        let errors = cx.errors;
        let now = inst.signing.now();
        let nonce = self.nonce_to_echo(parsed);
        let issuer = inst.signing.issuer();
        if parsed
            .certs
            .iter()
            .any(|rc| issuer.matches(&rc.cert_id).is_none())
        {
            return errors.unauthorized.clone();
        }
        let [rc] = parsed.certs.as_slice() else {
            if !self.take_token() {
                return errors.try_later.clone();
            }
            return self.sign_exact(&parsed.certs, nonce, now, cx);
        };
        let serial = serial_magnitude(&rc.serial);
        let mut cached = inst.cache.get_fresh(serial, now);
        // A certificate just issued whose response is still queued: wait for it.
        if cached.is_none() && cx.presigner.await_queued(serial, inst, cx.backlog) {
            cached = inst.cache.get_fresh(serial, now);
        }
        let canonical = rc.hash_alg.is_some_and(|a| PRESIGNED_ALGS.contains(&a));
        // Not in memory (the cache is bounded, and starts empty): the stored response, read
        // back and checked, without a signature.
        if cached.is_none() && canonical {
            cached = cx.follower.read_back(serial, now, &inst.follow_ctx());
            inst.cache.count_miss(cached.is_some());
        }
        if nonce.is_none() && canonical {
            if let Some(a) = cached {
                return a;
            }
        }
        if !self.take_token() {
            return match cached {
                Some(a) if canonical => a,
                // A certificate of this CA whose stored answer could not be served (none
                // yet, expired, or its status out of date): `tryLater`, and the next refresh
                // pass signs it; only a serial this CA never issued gets `unauthorized`
                // (RFC 5019 2.2.3).
                _ if canonical && matches!(inst.store.get_cert(&rc.serial), Ok(Some(_))) => {
                    cx.backlog.add(std::iter::once(serial));
                    errors.try_later.clone()
                }
                _ => errors.unauthorized.clone(),
            };
        }
        if nonce.is_some() || !canonical {
            return self.sign_exact(&parsed.certs, nonce, now, cx);
        }
        // A cache miss on a SHA-1/SHA-256 CertID: a certificate this process has not signed
        // for yet (issued elsewhere, expired and dropped) or a serial never issued.
        let _g = inst.cache.sign_lock(serial);
        match inst.store.get_cert(&rc.serial) {
            Ok(Some(rec)) => match inst.sign_and_install(&rec.serial, &rec.cert_status()) {
                Ok(()) => inst
                    .cache
                    .get(serial)
                    .unwrap_or_else(|| errors.internal_error.clone()),
                Err(e) => {
                    tracing::error!(error = %e, "signing OCSP response failed");
                    errors.try_later.clone()
                }
            },
            Ok(None) => match inst
                .signing
                .sign_canonical(&[rc.serial.as_slice()], &CertStatus::Unknown)
            {
                Ok(a) => {
                    self.unknown.insert(&rc.serial, a.clone());
                    a
                }
                Err(e) => {
                    tracing::error!(error = %e, "signing OCSP unknown response failed");
                    errors.try_later.clone()
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "store lookup for OCSP failed");
                errors.internal_error.clone()
            }
        }
    }

    /// Sign a response for exactly these CertIDs, echoed as sent, with the nonce if given.
    fn sign_exact(
        &self,
        certs: &[RequestedCert],
        nonce: Option<&[u8]>,
        now: DateTime<Utc>,
        cx: &LiveCtx<'_>,
    ) -> Arc<OcspAnswer> {
        let (inst, errors) = (&cx.inst, cx.errors);
        let next = match inst.signing.next_update_at(now) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "live OCSP signing refused");
                return errors.try_later.clone();
            }
        };
        let mut singles: Vec<SingleResponse> = Vec::with_capacity(certs.len());
        let mut first_status = None;
        for rc in certs {
            let status = match inst
                .cache
                .get(serial_magnitude(&rc.serial))
                .and_then(|a| a.cert_status().cloned())
            {
                Some(s) => s,
                None => match inst.store.get_cert(&rc.serial) {
                    Ok(Some(rec)) => rec.cert_status(),
                    Ok(None) => CertStatus::Unknown,
                    Err(e) => {
                        tracing::error!(error = %e, "store lookup for OCSP failed");
                        return errors.internal_error.clone();
                    }
                },
            };
            match single(rc.cert_id.clone(), &status, now, next) {
                Ok(s) => singles.push(s),
                Err(_) => return errors.internal_error.clone(),
            }
            first_status.get_or_insert(status);
        }
        let ext = match nonce.map(nonce_extension).transpose() {
            Ok(e) => e.map(|e| vec![e]),
            Err(_) => return errors.malformed.clone(),
        };
        match inst.signing.sign(singles, now, ext) {
            Ok(der) => Arc::new(OcspAnswer::new(
                der,
                AnswerKind::Signed {
                    status: first_status.unwrap_or(CertStatus::Unknown),
                    produced_at: now,
                    this_update: now,
                    next_update: next,
                    cacheable: nonce.is_none(),
                },
            )),
            Err(e) => {
                tracing::error!(error = %e, "live OCSP signing failed");
                errors.try_later.clone()
            }
        }
    }

    fn take_token(&self) -> bool {
        let rate = f64::from(self.rate);
        if rate <= 0.0 {
            return false;
        }
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let burst = f64::from(self.burst);
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
