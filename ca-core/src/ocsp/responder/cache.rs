//! The answer cache: pre-signed answers by serial, in memory, bounded in entries and in bytes;
//! the per-serial sign locks that order writes to it; and the request memo in front of it.
//!
//! The cache holds at most [`super::ResponderConfig::cache_max_entries`] answers and about
//! [`super::ResponderConfig::cache_max_bytes`] bytes (memory does not grow with the number of
//! certificates). The bytes are what the cache keeps alive: [`CACHE_SLOT_BYTES`] per serial,
//! and each answer's DER plus [`CACHE_ANSWER_BYTES`] once, however many serials share it (the
//! members of a group share one 2-3 KB response). The entry bound alone did not bound memory:
//! 200,000 answers asked about at random hold a different group each, about 600 MB at a
//! million certificates (BENCHMARKS "Memory at a million certificates"). Past either bound the
//! shard evicts an answer not asked about since the clock hand last passed it (CLOCK, "second
//! chance": each slot has a referenced bit that a lookup sets and the hand clears), so answers
//! asked about often stay
//! while the rest of the fleet streams through. Every answer it holds is also in the store
//! (persisted before it is served, `install.rs`), so an evicted or never-loaded answer is read
//! back from the store on the next request about it, without a signature (`Follower::read_back`).
//!
//! (Before, the victim was the hash table's first occupied slot: the slot a recent insertion
//! had just reused, so a hot set smaller than the cache evicted itself, 61% misses for 100
//! certificates in a 2,000-answer cache.)
//!
//! Invariants:
//! - A lookup takes one shard read lock (plus the memo's read lock), clones one `Arc` and sets
//!   the slot's referenced bit if it is clear (an atomic, no write lock): no allocation, no
//!   HSM operation, no I/O.
//! - Every write of a serial's answer (sign, persist, insert, withdraw) happens under that
//!   serial's sign lock, so a re-signing at revocation cannot be overtaken by an older
//!   status; locks for several serials are taken in index order ([`AnswerCache::sign_locks`]).
//! - The memo maps request bytes to a serial only, never to a status: the answer always comes
//!   from this cache (or the unknown cache), so a re-signing is visible at once.

use super::super::build::{from_gtime, from_ocsp_status, parse_response, ParsedResponse};
use super::super::{serial_magnitude, OcspIssuer};
use super::answer::{AnswerKind, OcspAnswer};
use super::intern::Interner;
use super::memo::{canonical_request, Memo, MemoStats};
use crate::error::Result;
use crate::store::{Store, StoredOcspResponse};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use x509_ocsp::ResponderId;

const SHARDS: usize = 16;
const SIGN_LOCKS: usize = 64;
/// What a serial's slot costs in [`CacheStats::bytes`]: the slot in the ring, its index entry
/// and the serial's copy.
pub const CACHE_SLOT_BYTES: usize = 144;
/// What an answer costs in [`CacheStats::bytes`] besides its DER: the `OcspAnswer`, its `Arc`
/// and the transport's formatted headers.
pub const CACHE_ANSWER_BYTES: usize = 384;
/// Most answers one insertion evicts to get back under the byte bound (evicting a member of a
/// group that other slots still hold frees only its slot).
const EVICT_PER_INSERT: usize = 8;

type Shard = RwLock<Slots>;

/// One answer in a shard.
struct Slot {
    serial: Arc<[u8]>,
    answer: Arc<OcspAnswer>,
    /// Asked about since the clock hand last passed (set under the read lock).
    referenced: AtomicBool,
}

/// A shard: its answers in a ring of slots that the clock hand walks, and an index by serial.
#[derive(Default)]
struct Slots {
    index: HashMap<Arc<[u8]>, usize>,
    ring: Vec<Slot>,
    hand: usize,
}

impl Slots {
    fn slot(&self, serial: &[u8]) -> Option<&Slot> {
        self.index.get(serial).and_then(|&i| self.ring.get(i))
    }

    /// The slot the hand stops at: the first one not referenced since the hand last passed,
    /// clearing the bits it passes (at most one turn: then every bit is clear).
    fn victim(&mut self) -> Option<usize> {
        let n = self.ring.len();
        for _ in 0..=n {
            let i = self.hand % n.max(1);
            self.hand = (i + 1) % n.max(1);
            let slot = self.ring.get_mut(i)?;
            if !std::mem::replace(slot.referenced.get_mut(), false) {
                return Some(i);
            }
        }
        None
    }

    fn remove(&mut self, serial: &[u8]) -> Option<Slot> {
        let i = *self.index.get(serial)?;
        self.remove_at(i)
    }

    /// Take out the slot at ring position `i` (the last slot moves into its place).
    fn remove_at(&mut self, i: usize) -> Option<Slot> {
        if i >= self.ring.len() {
            return None;
        }
        let slot = self.ring.swap_remove(i);
        self.index.remove(&slot.serial);
        if let Some(moved) = self.ring.get(i) {
            if let Some(j) = self.index.get_mut(&moved.serial) {
                *j = i;
            }
        }
        if self.hand >= self.ring.len() {
            self.hand = 0;
        }
        Some(slot)
    }
}

/// How the answer cache is doing, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answers in memory.
    pub entries: usize,
    /// The bound on `entries` ([`super::ResponderConfig::cache_max_entries`]).
    pub max_entries: usize,
    /// What the answers in memory cost (see the module docs).
    pub bytes: usize,
    /// The bound on `bytes` ([`super::ResponderConfig::cache_max_bytes`]).
    pub max_bytes: usize,
    /// Requests answered from memory.
    pub hits: u64,
    /// Requests about a certificate of this CA with no fresh answer in memory.
    pub misses: u64,
    /// Misses answered from a response read back from the store (no signature).
    pub store_reads: u64,
    /// Answers evicted to stay under the bound.
    pub evictions: u64,
    /// The stored answers have been loaded once since start (`Responder::load`).
    pub loaded: bool,
}

/// Serial (magnitude) -> pre-signed answer, in shards, with the sign locks and request memo.
pub(super) struct AnswerCache {
    shards: Vec<Shard>,
    /// Most answers per shard (the configured bound spread over the shards).
    shard_max: usize,
    /// The bound on `bytes`.
    max_bytes: usize,
    /// What the answers held cost ([`CacheStats::bytes`]).
    bytes: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    store_reads: AtomicU64,
    evictions: AtomicU64,
    /// Set by an eviction: the cache no longer holds every stored answer.
    evicted: AtomicBool,
    /// Set once loading took every stored answer (it stops at the bound). Until then, and
    /// after an eviction, the refresh pass finds due responses in the store.
    complete: AtomicBool,
    /// Set once a load has finished ([`CacheStats::loaded`]).
    loaded: AtomicBool,
    sign_locks: Vec<Mutex<()>>,
    /// Request DER -> serial, for requests already decoded once (RFC 5019 clients send the
    /// same bytes again and again). Bounded in bytes ([`super::memo`]).
    memo: Memo,
    /// One copy of each stored response read back, shared by its group's answers.
    interner: Interner,
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
    pub(super) fn new(memo_max_bytes: usize, max_entries: usize, max_bytes: usize) -> Self {
        AnswerCache {
            shards: (0..SHARDS).map(|_| RwLock::new(Slots::default())).collect(),
            shard_max: max_entries.div_ceil(SHARDS).max(1),
            max_bytes,
            bytes: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            store_reads: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            complete: AtomicBool::new(false),
            loaded: AtomicBool::new(false),
            sign_locks: (0..SIGN_LOCKS).map(|_| Mutex::new(())).collect(),
            memo: Memo::new(memo_max_bytes),
            interner: Interner::default(),
        }
    }

    #[inline]
    fn shard(&self, serial: &[u8]) -> &Shard {
        &self.shards[bucket_index(serial, SHARDS)]
    }

    /// Number of serials with an answer.
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).ring.len()).sum()
    }

    /// The answer for `serial` (magnitude), fresh or not.
    pub(super) fn get(&self, serial: &[u8]) -> Option<Arc<OcspAnswer>> {
        read(self.shard(serial))
            .slot(serial)
            .map(|s| s.answer.clone())
    }

    /// The answer for `serial` (magnitude) if it is still fresh at `now`; marks it asked
    /// about (it survives the clock hand's next pass).
    #[inline]
    pub(super) fn get_fresh(&self, serial: &[u8], now: DateTime<Utc>) -> Option<Arc<OcspAnswer>> {
        let shard = read(self.shard(serial));
        let slot = shard.slot(serial).filter(|s| s.answer.fresh(now))?;
        // Written only when clear: a hot answer's cache line is not dirtied by every hit.
        if !slot.referenced.load(Ordering::Relaxed) {
            slot.referenced.store(true, Ordering::Relaxed);
        }
        Some(slot.answer.clone())
    }

    /// Serve `answer` for `serial` from now on (the caller holds the serial's sign lock). At
    /// either bound, the shard's clock hand evicts answers not asked about since its last pass
    /// (they are in the store: see the module docs). A new answer starts unreferenced: unless
    /// it is asked about again before the hand comes round, it is the next one to go.
    pub(super) fn insert(&self, serial: &[u8], answer: Arc<OcspAnswer>) {
        let mut shard = write(self.shard(serial));
        self.charge(&answer);
        let held = shard.index.get(serial).copied();
        if let Some(slot) = held.and_then(|i| shard.ring.get_mut(i)) {
            let old = std::mem::replace(&mut slot.answer, answer);
            self.uncharge(&old);
        } else {
            if shard.ring.len() >= self.shard_max {
                let Some(i) = shard.victim() else {
                    self.uncharge(&answer);
                    return;
                };
                self.evict(&mut shard, i);
            }
            let slot = Slot {
                serial: Arc::from(serial),
                answer,
                referenced: AtomicBool::new(false),
            };
            let i = shard.ring.len();
            shard.index.insert(slot.serial.clone(), i);
            shard.ring.push(slot);
        }
        self.evict_over_bytes(&mut shard, serial);
        drop(shard);
        // Still over (this shard holds little): the other shards, one lock at a time.
        let own = bucket_index(serial, SHARDS);
        for k in 1..SHARDS {
            if self.bytes.load(Ordering::Relaxed) <= self.max_bytes {
                break;
            }
            self.evict_over_bytes(&mut write(&self.shards[(own + k) % SHARDS]), serial);
        }
    }

    /// Count `answer` as held by one more slot ([`CacheStats::bytes`]).
    fn charge(&self, answer: &OcspAnswer) {
        let first = answer.cache_slots.take();
        self.bytes
            .fetch_add(slot_cost(answer, first), Ordering::Relaxed);
    }

    /// Count `answer` as held by one slot less.
    fn uncharge(&self, answer: &OcspAnswer) {
        let last = answer.cache_slots.release();
        self.bytes
            .fetch_sub(slot_cost(answer, last), Ordering::Relaxed);
    }

    /// Evict the slot at ring position `i` of `shard`.
    fn evict(&self, shard: &mut Slots, i: usize) {
        if let Some(old) = shard.remove_at(i) {
            self.uncharge(&old.answer);
            self.evictions.fetch_add(1, Ordering::Relaxed);
            self.evicted.store(true, Ordering::Relaxed);
        }
    }

    /// Past the byte bound, evict up to [`EVICT_PER_INSERT`] answers of `shard`, never the one
    /// for `kept` (just inserted). Insertions are spread over the shards, so evicting from the
    /// inserting shard keeps every shard near its share; `insert` goes on to the others only
    /// when that is not enough (a small cache).
    fn evict_over_bytes(&self, shard: &mut Slots, kept: &[u8]) {
        for _ in 0..EVICT_PER_INSERT {
            if self.bytes.load(Ordering::Relaxed) <= self.max_bytes {
                return;
            }
            let Some(mut i) = shard.victim() else {
                return;
            };
            if shard.ring.get(i).is_some_and(|s| &*s.serial == kept) {
                // The hand stopped at the new answer: the next unreferenced one goes instead.
                match shard.victim() {
                    Some(j) if j != i => i = j,
                    _ => return,
                }
            }
            self.evict(shard, i);
        }
    }

    /// Count a request answered from memory ([`CacheStats::hits`]).
    #[inline]
    pub(super) fn count_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a miss ([`CacheStats::misses`]) and whether the store answered it.
    pub(super) fn count_miss(&self, from_store: bool) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        if from_store {
            self.store_reads.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.len(),
            max_entries: self.shard_max * SHARDS,
            bytes: self.bytes.load(Ordering::Relaxed),
            max_bytes: self.max_bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            store_reads: self.store_reads.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            loaded: self.loaded.load(Ordering::Relaxed),
        }
    }

    /// Whether some stored answers may not be in memory: not loaded (yet, or past the
    /// bound), or evicted.
    pub(super) fn is_partial(&self) -> bool {
        !self.complete.load(Ordering::Relaxed) || self.evicted.load(Ordering::Relaxed)
    }

    /// A load has finished.
    pub(super) fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Relaxed);
    }

    /// Loading took every stored answer into memory.
    pub(super) fn mark_complete(&self) {
        self.complete.store(true, Ordering::Relaxed);
    }

    /// The most answers it holds.
    pub(super) fn max_entries(&self) -> usize {
        self.shard_max * SHARDS
    }

    /// Withdraw the answer for `serial` (the caller holds the serial's sign lock).
    pub(super) fn remove(&self, serial: &[u8]) {
        if let Some(old) = write(self.shard(serial)).remove(serial) {
            self.uncharge(&old.answer);
        }
    }

    /// The serials whose answer `due` selects.
    pub(super) fn select(&self, due: impl Fn(&OcspAnswer) -> bool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for shard in &self.shards {
            for slot in read(shard).ring.iter() {
                if due(&slot.answer) {
                    out.push(slot.serial.to_vec());
                }
            }
        }
        out
    }

    /// The sign lock of `serial` (magnitude).
    pub(super) fn sign_lock(&self, serial: &[u8]) -> MutexGuard<'_, ()> {
        lock(&self.sign_locks[bucket_index(serial, SIGN_LOCKS)])
    }

    /// The sign lock of `serial` if nobody holds it (a signing in progress holds it for an
    /// HSM round trip: callers on the async executor do not wait for it).
    pub(super) fn try_sign_lock(&self, serial: &[u8]) -> Option<MutexGuard<'_, ()>> {
        match self.sign_locks[bucket_index(serial, SIGN_LOCKS)].try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
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

    /// Where answers built from stored bytes come from ([`super::intern`]).
    pub(super) fn interner(&self) -> &Interner {
        &self.interner
    }

    pub(super) fn memo_stats(&self) -> MemoStats {
        self.memo.stats()
    }

    /// Read the stored responses that the key with `own_key_hash` signed for `issuer`, up to
    /// the cache's bound, into a map that serves nothing yet (`Responder::load` checks each
    /// against the certificate's status before it serves it).
    ///
    /// If every stored answer fits, each record's whole response is decoded and every serial
    /// it covers staged (stores written before group responses were kept under every member
    /// have a group's record under its first serial only); a record stored under a serial is
    /// the latest written for it, so it wins over a group response stored under another
    /// serial; between two group responses the later thisUpdate wins.
    ///
    /// If they do not fit, the scan starts again and stops at the bound: the load costs the
    /// bound, not the store (at a million certificates it read every record and resolved every
    /// group, 14 s of CPU, to keep 200,000). It stages whole groups (each group's bytes are
    /// decoded once and shared by its members: staging members one by one, in key order, kept
    /// a copy of most groups for one or two members each); a member staged from its group
    /// before its own record was read is marked as such (`Staged::own`), and
    /// `Responder::load` drops it instead of signing if its status disagrees with its record
    /// (its own record may hold a newer answer). Serials past the bound are read back when
    /// asked about.
    pub(super) fn stage_stored(
        &self,
        store: &dyn Store,
        issuer: &OcspIssuer,
        own_key_hash: &[u8],
    ) -> Result<Staged> {
        match self.stage_every_answer(store, issuer, own_key_hash)? {
            Some(staged) => Ok(staged),
            None => self.stage_up_to_the_bound(store, issuer, own_key_hash),
        }
    }

    /// [`AnswerCache::stage_stored`] when everything fits; `None` as soon as it does not.
    fn stage_every_answer(
        &self,
        store: &dyn Store,
        issuer: &OcspIssuer,
        own_key_hash: &[u8],
    ) -> Result<Option<Staged>> {
        let mut staged = Staged::default();
        let max = self.max_entries();
        let mut cost = StagedCost::default();
        let mut own_records = HashSet::new();
        let mut over = false;
        let scan = store.for_each_ocsp_response(&mut |stored| {
            let Some(answers) = check_stored(&stored, issuer, own_key_hash, &self.interner) else {
                staged.discarded += 1;
                return Ok(());
            };
            let own = serial_magnitude(&stored.serial).to_vec();
            for (serial, answer) in answers {
                let replace = if serial == own {
                    own_records.insert(serial.clone())
                } else {
                    !own_records.contains(&serial)
                        && staged
                            .answers
                            .get(&serial)
                            .is_none_or(|old| old.this_update() < answer.this_update())
                };
                if replace {
                    cost.add(&answer);
                    staged.answers.insert(serial, answer);
                }
            }
            // (A replaced answer stays counted: the cost errs on the side of not fitting.)
            if staged.answers.len() > max || cost.bytes > self.max_bytes {
                over = true;
                return Err(stop_scan());
            }
            Ok(())
        });
        match scan {
            Ok(()) => Ok(Some(staged)),
            Err(_) if over => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`AnswerCache::stage_stored`] when not everything fits.
    fn stage_up_to_the_bound(
        &self,
        store: &dyn Store,
        issuer: &OcspIssuer,
        own_key_hash: &[u8],
    ) -> Result<Staged> {
        let mut staged = Staged {
            skipped: true,
            ..Staged::default()
        };
        let max = self.max_entries();
        let mut cost = StagedCost::default();
        let mut full = false;
        let scan = store.for_each_ocsp_response(&mut |stored| {
            if staged.answers.len() >= max || cost.bytes >= self.max_bytes {
                full = true;
                return Err(stop_scan());
            }
            let own = serial_magnitude(&stored.serial);
            // Staged already from its group's bytes, and its own record holds those bytes:
            // nothing to decode.
            if staged.answers.get(own).is_some_and(|a| a.der == stored.der) {
                staged.own.insert(own.to_vec());
                return Ok(());
            }
            let Some(answers) = check_stored(&stored, issuer, own_key_hash, &self.interner) else {
                staged.discarded += 1;
                return Ok(());
            };
            for (serial, answer) in answers {
                if serial == own {
                    staged.own.insert(serial.clone());
                    cost.add(&answer);
                    staged.answers.insert(serial, answer);
                } else if !staged.answers.contains_key(&serial) && staged.answers.len() < max {
                    cost.add(&answer);
                    staged.answers.insert(serial, answer);
                }
            }
            Ok(())
        });
        match scan {
            Err(e) if !full => Err(e),
            _ => Ok(staged),
        }
    }
}

/// What one more slot holding `answer` costs ([`CacheStats::bytes`]): the slot, plus the
/// answer itself when it is the first slot to hold it (`whole`).
fn slot_cost(answer: &OcspAnswer, whole: bool) -> usize {
    CACHE_SLOT_BYTES
        + if whole {
            answer.der.len() + CACHE_ANSWER_BYTES
        } else {
            0
        }
}

/// What staged answers will cost in the cache ([`CacheStats::bytes`]): a slot each, and each
/// answer's bytes once.
#[derive(Default)]
struct StagedCost {
    bytes: usize,
    /// The answers counted, by address (each kept alive here, so no address is reused).
    counted: HashMap<*const OcspAnswer, Arc<OcspAnswer>>,
}

impl StagedCost {
    fn add(&mut self, answer: &Arc<OcspAnswer>) {
        let first = !self.counted.contains_key(&Arc::as_ptr(answer));
        if first {
            self.counted.insert(Arc::as_ptr(answer), answer.clone());
        }
        self.bytes += slot_cost(answer, first);
    }
}

/// What a scan's visitor returns to end the scan early (`for_each_ocsp_response` has no other
/// way to stop); the caller knows it asked and drops the error.
fn stop_scan() -> crate::error::Error {
    crate::error::Error::Corrupt("scan stopped at the cache's bound".into())
}

/// Stored answers read at start, not served yet ([`AnswerCache::stage_stored`]).
#[derive(Default)]
pub(super) struct Staged {
    pub(super) answers: HashMap<Vec<u8>, Arc<OcspAnswer>>,
    /// Records not ours (other key or issuer, undecodable).
    pub(super) discarded: usize,
    /// Stopped at the cache's bound: some stored answers were left in the store.
    pub(super) skipped: bool,
    /// When `skipped`: the staged serials whose answer came from their own record (the
    /// others came from a group response read under another member).
    pub(super) own: HashSet<Vec<u8>>,
}

/// The answers a stored response gives: one per serial of `issuer` it covers (a response
/// signed at issuance for a group is stored once, under its first serial). `None` if it is not
/// ours (other key, undecodable) or does not cover its own serial.
pub(super) fn check_stored(
    stored: &StoredOcspResponse,
    issuer: &OcspIssuer,
    own_key_hash: &[u8],
    interner: &Interner,
) -> Option<Vec<(Vec<u8>, Arc<OcspAnswer>)>> {
    let parsed = parse_response(&stored.der).ok()?;
    let basic = parsed.basic.as_ref()?;
    match &basic.tbs_response_data.responder_id {
        ResponderId::ByKey(h) if h.as_bytes() == own_key_hash => {}
        _ => return None,
    }
    stored_answers(&parsed, stored, issuer, interner)
}

/// The answers of a decoded stored response (see [`check_stored`]), whoever signed it: the
/// caller has checked the signer. `None` if it does not cover its own serial.
pub(super) fn stored_answers(
    parsed: &ParsedResponse,
    stored: &StoredOcspResponse,
    issuer: &OcspIssuer,
    interner: &Interner,
) -> Option<Vec<(Vec<u8>, Arc<OcspAnswer>)>> {
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
            None => interner.answer(
                &stored.der,
                AnswerKind::Signed {
                    status,
                    produced_at,
                    this_update,
                    next_update,
                    cacheable: true,
                },
            ),
        };
        answers.push((serial.to_vec(), answer));
    }
    answers.iter().any(|(s, _)| s == own).then_some(answers)
}
