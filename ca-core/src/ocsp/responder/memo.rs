//! The request memo: request bytes already decoded once -> the serial they ask about, so that
//! the RFC 5019 clients that send the same bytes again and again skip the DER decoding.
//!
//! It holds no status (answers always come from the responder's caches) and cannot be grown by
//! a client: the responder admits only the canonical encoding of a single CertID request (no
//! extensions, no nonce, no requestor name, no signature: [`canonical_request`]) about a
//! certificate it holds a pre-signed response for, so the entries are at most a few per
//! certificate; and the memo is bounded in bytes ([`Memo::max_bytes`]), oldest entries evicted
//! first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

/// Bookkeeping charged per entry on top of its key and value (hash-table slot, queue slot,
/// two allocations).
const ENTRY_OVERHEAD: usize = 96;

/// Sizes of the memo, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoStats {
    /// Number of responses held.
    pub entries: usize,
    /// Bytes charged (keys, values, bookkeeping).
    pub bytes: usize,
    /// The bound on `bytes`.
    pub max_bytes: usize,
    /// Entries evicted to stay under the bound, since start.
    pub evictions: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Arc<[u8]>, Box<[u8]>>,
    order: VecDeque<Arc<[u8]>>,
    bytes: usize,
    evictions: u64,
}

/// A byte-bounded map from request bytes to serial, oldest evicted first.
pub(super) struct Memo {
    inner: RwLock<Inner>,
    max_bytes: usize,
}

fn cost(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

impl Memo {
    pub(super) fn new(max_bytes: usize) -> Self {
        Memo {
            inner: RwLock::new(Inner::default()),
            max_bytes,
        }
    }

    /// The bound in bytes (0 disables the memo).
    pub(super) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// `f` of the value remembered for `key`, under the read lock (no copy).
    pub(super) fn with<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.map.get(key).map(|v| f(v))
    }

    #[cfg(test)]
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.with(key, |v| v.to_vec())
    }

    /// Remember `key -> value`, evicting the oldest entries to stay under the bound.
    pub(super) fn insert(&self, key: &[u8], value: &[u8]) {
        let c = cost(key, value);
        if c > self.max_bytes {
            return;
        }
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if inner.map.contains_key(key) {
            return;
        }
        while inner.bytes + c > self.max_bytes {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(v) = inner.map.remove(&old) {
                inner.bytes -= cost(&old, &v);
                inner.evictions += 1;
            }
        }
        let key: Arc<[u8]> = Arc::from(key);
        inner.order.push_back(key.clone());
        inner.map.insert(key, Box::from(value));
        inner.bytes += c;
    }

    pub(super) fn stats(&self) -> MemoStats {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        MemoStats {
            entries: inner.map.len(),
            bytes: inner.bytes,
            max_bytes: self.max_bytes,
            evictions: inner.evictions,
        }
    }
}

/// Whether `der` is exactly the DER of the plainest request for `cert_id`: version 1, one
/// CertID, no requestor name, no extensions (nonce or other), no signature. Any padding, or
/// anything the memo would have to tell apart, makes it false.
pub(super) fn canonical_request(der: &[u8], cert_id: &x509_ocsp::CertId) -> bool {
    use der::Encode;
    let req = x509_ocsp::OcspRequest {
        tbs_request: x509_ocsp::TbsRequest {
            version: x509_ocsp::Version::V1,
            requestor_name: None,
            request_list: vec![x509_ocsp::Request {
                req_cert: cert_id.clone(),
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    };
    req.to_der().is_ok_and(|d| d == der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_bytes_oldest_evicted() {
        let m = Memo::new(10 * (cost(&[0; 100], &[0; 20])));
        for i in 0..1000u32 {
            let mut k = vec![0u8; 100];
            k[..4].copy_from_slice(&i.to_be_bytes());
            m.insert(&k, &[1; 20]);
            assert!(m.stats().bytes <= m.max_bytes());
        }
        let s = m.stats();
        assert_eq!(s.entries, 10);
        assert_eq!(s.evictions, 990);
        let mut newest = vec![0u8; 100];
        newest[..4].copy_from_slice(&999u32.to_be_bytes());
        assert_eq!(m.get(&newest), Some(vec![1; 20]));
        assert_eq!(m.get(&[0; 100]), None);
        // An entry larger than the whole bound is not kept; a zero bound keeps nothing.
        m.insert(&[7; 10_000], &[1]);
        assert_eq!(m.get(&[7; 10_000]), None);
        let off = Memo::new(0);
        off.insert(&[1], &[1]);
        assert_eq!(off.stats().entries, 0);
    }
}
