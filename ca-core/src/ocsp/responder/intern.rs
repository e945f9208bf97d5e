//! One copy in memory of each stored response, however many answers come from it.
//!
//! A response signed at issuance covers a group of certificates and is stored once for all of
//! them (2.8 KB for a group of eight). Answers read back from the store (at start, or on a
//! cache miss) were each built with their own copy of those bytes: 200,000 answers held about
//! 560 MB at a million certificates (`BENCHMARKS.md`, "Growth to a million"). The interner
//! hands out the answer already in memory for the same bytes and the same answer kind, so
//! the members of a group share one.
//!
//! It holds weak references only: an answer lives as long as a cache slot (or a request)
//! holds it. Entries whose answer is gone are dropped when the table has doubled since the
//! last sweep, so it stays within a small multiple of the live answers.

use super::answer::{AnswerKind, OcspAnswer};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, Weak};

const SHARDS: usize = 16;

#[derive(Default)]
struct Shard {
    answers: HashMap<u64, Weak<OcspAnswer>>,
    /// Sweep the dead entries once the table holds this many.
    sweep_at: usize,
}

/// DER bytes (and kind) -> the shared answer.
pub(super) struct Interner {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl Interner {
    /// The answer in memory with these bytes and this kind, or a new one (then the one
    /// returned for them from now on).
    pub(super) fn answer(&self, der: &[u8], kind: AnswerKind) -> Arc<OcspAnswer> {
        let mut h = self.hasher.build_hasher();
        h.write(der);
        let key = h.finish();
        let mut shard = self.shards[(key % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(live) = shard.answers.get(&key).and_then(Weak::upgrade) {
            if live.der == der && live.kind == kind {
                return live;
            }
        }
        let answer = Arc::new(OcspAnswer::new(der.to_vec(), kind));
        shard.answers.insert(key, Arc::downgrade(&answer));
        if shard.answers.len() >= shard.sweep_at {
            shard.answers.retain(|_, a| a.strong_count() > 0);
            shard.sweep_at = (shard.answers.len() * 2).max(1024);
        }
        answer
    }

    /// Entries in the table (live or not yet swept), for tests.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).answers.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::CertStatus;

    fn good(at: i64) -> AnswerKind {
        let t = chrono::DateTime::from_timestamp(at, 0).unwrap();
        AnswerKind::Signed {
            status: CertStatus::Good,
            produced_at: t,
            this_update: t,
            next_update: t + chrono::Duration::hours(1),
            cacheable: true,
        }
    }

    #[test]
    fn the_same_bytes_and_kind_share_one_answer() {
        let i = Interner::default();
        let a = i.answer(&[1; 2800], good(1));
        let b = i.answer(&[1; 2800], good(1));
        assert!(Arc::ptr_eq(&a, &b));
        // Other bytes, or the same bytes answering differently: an answer of their own.
        let c = i.answer(&[2; 2800], good(1));
        let d = i.answer(&[1; 2800], good(2));
        assert!(!Arc::ptr_eq(&a, &c) && !Arc::ptr_eq(&a, &d));
        assert_eq!(d.kind, good(2));
    }

    #[test]
    fn answers_nobody_holds_are_swept() {
        let i = Interner::default();
        for n in 0..20_000u32 {
            drop(i.answer(&n.to_be_bytes(), good(1)));
        }
        // Each shard sweeps at 1,024 entries: never much more than that per shard.
        assert!(i.len() <= SHARDS * 1024, "{} entries kept", i.len());
        let kept = i.answer(&[9; 8], good(1));
        assert!(Arc::ptr_eq(&kept, &i.answer(&[9; 8], good(1))));
    }
}
