//! The answer cache: the pre-signed answer of every certificate, by serial, in memory; the
//! per-serial sign locks that order writes to it; and the request memo in front of it.
//!
//! Invariants:
//! - A lookup takes one shard read lock (plus the memo's read lock) and clones one `Arc`: no
//!   allocation, no HSM operation, no I/O.
//! - Every write of a serial's answer (sign, persist, insert, withdraw) happens under that
//!   serial's sign lock, so a re-signing at revocation cannot be overtaken by an older
//!   status; locks for several serials are taken in index order ([`AnswerCache::sign_locks`]).
//! - The memo maps request bytes to a serial only, never to a status: the answer always comes
//!   from this cache (or the unknown cache), so a re-signing is visible at once.

use super::super::build::{from_gtime, from_ocsp_status, parse_response};
use super::super::{serial_magnitude, OcspIssuer};
use super::answer::{AnswerKind, OcspAnswer};
use super::memo::{canonical_request, Memo, MemoStats};
use crate::error::Result;
use crate::store::{Store, StoredOcspResponse};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use x509_ocsp::ResponderId;

const SHARDS: usize = 16;
const SIGN_LOCKS: usize = 64;

type Shard = RwLock<HashMap<Vec<u8>, Arc<OcspAnswer>>>;

/// Serial (magnitude) -> pre-signed answer, in shards, with the sign locks and request memo.
pub(super) struct AnswerCache {
    shards: Vec<Shard>,
    sign_locks: Vec<Mutex<()>>,
    /// Request DER -> serial, for requests already decoded once (RFC 5019 clients send the
    /// same bytes again and again). Bounded in bytes ([`super::memo`]).
    memo: Memo,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

#[inline]
fn bucket_index(serial: &[u8], n: usize) -> usize {
    // Serials are random (DESIGN "Data"), so their last bytes spread evenly.
    let mut h: usize = 0;
    for b in serial.iter().rev().take(4) {
        h = (h << 8) | usize::from(*b);
    }
    h % n
}

impl AnswerCache {
    pub(super) fn new(memo_max_bytes: usize) -> Self {
        AnswerCache {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            sign_locks: (0..SIGN_LOCKS).map(|_| Mutex::new(())).collect(),
            memo: Memo::new(memo_max_bytes),
        }
    }

    #[inline]
    fn shard(&self, serial: &[u8]) -> &Shard {
        &self.shards[bucket_index(serial, SHARDS)]
    }

    /// Number of serials with an answer.
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }

    /// The answer for `serial` (magnitude), fresh or not.
    pub(super) fn get(&self, serial: &[u8]) -> Option<Arc<OcspAnswer>> {
        read(self.shard(serial)).get(serial).cloned()
    }

    /// The answer for `serial` (magnitude) if it is still fresh at `now`.
    #[inline]
    pub(super) fn get_fresh(&self, serial: &[u8], now: DateTime<Utc>) -> Option<Arc<OcspAnswer>> {
        read(self.shard(serial))
            .get(serial)
            .filter(|a| a.fresh(now))
            .cloned()
    }

    /// Serve `answer` for `serial` from now on (the caller holds the serial's sign lock).
    pub(super) fn insert(&self, serial: &[u8], answer: Arc<OcspAnswer>) {
        write(self.shard(serial)).insert(serial.to_vec(), answer);
    }

    /// Withdraw the answer for `serial` (the caller holds the serial's sign lock).
    pub(super) fn remove(&self, serial: &[u8]) {
        write(self.shard(serial)).remove(serial);
    }

    /// The serials whose answer `due` selects.
    pub(super) fn select(&self, due: impl Fn(&OcspAnswer) -> bool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for shard in &self.shards {
            for (serial, a) in read(shard).iter() {
                if due(a) {
                    out.push(serial.clone());
                }
            }
        }
        out
    }

    /// The sign lock of `serial` (magnitude).
    pub(super) fn sign_lock(&self, serial: &[u8]) -> MutexGuard<'_, ()> {
        lock(&self.sign_locks[bucket_index(serial, SIGN_LOCKS)])
    }

    /// The sign locks of all `serials` (magnitudes), taken in index order (no deadlock between
    /// two groups).
    pub(super) fn sign_locks<'a>(
        &self,
        serials: impl Iterator<Item = &'a [u8]>,
    ) -> Vec<MutexGuard<'_, ()>> {
        let mut idx: Vec<usize> = serials.map(|s| bucket_index(s, SIGN_LOCKS)).collect();
        idx.sort_unstable();
        idx.dedup();
        idx.iter().map(|&i| lock(&self.sign_locks[i])).collect()
    }

    /// `answer` of the serial that `request_der` was memoised for, if any.
    #[inline]
    pub(super) fn memo_lookup(
        &self,
        request_der: &[u8],
        answer: impl FnOnce(&[u8]) -> Option<Arc<OcspAnswer>>,
    ) -> Option<Arc<OcspAnswer>> {
        self.memo.with(request_der, answer).flatten()
    }

    /// Memoise `request_der -> serial` if it is the canonical encoding of a request about
    /// `cert_id` (padding, nonces or extensions cannot grow the memo). Only for a serial
    /// answered from memory.
    pub(super) fn memoise(&self, request_der: &[u8], cert_id: &x509_ocsp::CertId, serial: &[u8]) {
        if self.memo.max_bytes() > 0 && canonical_request(request_der, cert_id) {
            self.memo.insert(request_der, serial);
        }
    }

    pub(super) fn memo_stats(&self) -> MemoStats {
        self.memo.stats()
    }

    /// Take the stored responses that the key with `own_key_hash` signed for `issuer`; returns
    /// (loaded, discarded). A record stored under a serial is the latest written for it, so it
    /// wins over a group response stored under another serial; between group responses the
    /// newer wins.
    pub(super) fn load_stored(
        &self,
        store: &dyn Store,
        issuer: &OcspIssuer,
        own_key_hash: &[u8],
    ) -> Result<(usize, usize)> {
        let (mut loaded, mut discarded) = (0, 0);
        let mut own_records = HashSet::new();
        store.for_each_ocsp_response(&mut |stored| {
            let Some(answers) = check_stored(&stored, issuer, own_key_hash) else {
                discarded += 1;
                return Ok(());
            };
            let own = serial_magnitude(&stored.serial).to_vec();
            for (serial, answer) in answers {
                let mut shard = write(self.shard(&serial));
                let replace = if serial == own {
                    own_records.insert(serial.clone())
                } else {
                    !own_records.contains(&serial)
                        && shard
                            .get(&serial)
                            .is_none_or(|old| old.this_update() < answer.this_update())
                };
                if replace && shard.insert(serial, answer).is_none() {
                    loaded += 1;
                }
            }
            Ok(())
        })?;
        Ok((loaded, discarded))
    }
}

/// The answers a stored response gives: one per serial of `issuer` it covers (a response
/// signed at issuance for a group is stored once, under its first serial). `None` if it is not
/// ours (other key, undecodable) or does not cover its own serial.
pub(super) fn check_stored(
    stored: &StoredOcspResponse,
    issuer: &OcspIssuer,
    own_key_hash: &[u8],
) -> Option<Vec<(Vec<u8>, Arc<OcspAnswer>)>> {
    let parsed = parse_response(&stored.der).ok()?;
    let basic = parsed.basic.as_ref()?;
    match &basic.tbs_response_data.responder_id {
        ResponderId::ByKey(h) if h.as_bytes() == own_key_hash => {}
        _ => return None,
    }
    let produced_at = parsed.produced_at()?;
    let next_update = parsed.next_update()?;
    let own = serial_magnitude(&stored.serial);
    let mut answers: Vec<(Vec<u8>, Arc<OcspAnswer>)> = Vec::new();
    for single in parsed.singles() {
        if issuer.matches(&single.cert_id).is_none() {
            continue;
        }
        let serial = serial_magnitude(single.cert_id.serial_number.as_bytes());
        if answers.iter().any(|(s, _)| s == serial) {
            continue;
        }
        let status = from_ocsp_status(&single.cert_status);
        let this_update = from_gtime(&single.this_update);
        // The serials of a group share one answer (same bytes, status and times).
        let shared = answers.iter().map(|(_, a)| a).find(|a| {
            a.this_update() == Some(this_update) && a.cert_status().is_some_and(|s| *s == status)
        });
        let answer = match shared {
            Some(a) => a.clone(),
            None => Arc::new(OcspAnswer::new(
                stored.der.clone(),
                AnswerKind::Signed {
                    status,
                    produced_at,
                    this_update,
                    next_update,
                    cacheable: true,
                },
            )),
        };
        answers.push((serial.to_vec(), answer));
    }
    answers.iter().any(|(s, _)| s == own).then_some(answers)
}
