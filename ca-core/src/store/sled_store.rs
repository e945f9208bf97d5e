//! The sled implementation of [`Store`]. The only module that names sled.
//!
//! sled 0.34 makes writes durable only on `flush()`; every write here ends with a group
//! commit: concurrent writers share one flush (one leader flushes everything written before
//! it started, the others wait for it), so durability costs one fsync per batch, not per write.

use super::{CertFilter, CertRecord, RecordStatus, Store, StoredOcspResponse, TokenRecord};
use crate::audit::{self, AuditEvent, NewAuditEvent};
use crate::error::{Error, Result};
use crate::revocation::{RevocationReason, RevokedEntry};
use chrono::{DateTime, Utc};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::path::Path;
use std::sync::{Condvar, Mutex};

const META_CRL_NUMBER: &[u8] = b"crl_number";
const META_AUDIT_HEAD: &[u8] = b"audit_head";

#[derive(Default)]
struct CommitState {
    requested: u64,
    done: u64,
    flushing: bool,
}

/// Certificates, tokens, revocations and the audit log in a sled database on disk.
pub struct SledStore {
    db: sled::Db,
    certs: sled::Tree,
    by_identity: sled::Tree,
    by_expiry: sled::Tree,
    revoked: sled::Tree,
    tokens: sled::Tree,
    audit: sled::Tree,
    meta: sled::Tree,
    ocsp: sled::Tree,
    audit_lock: Mutex<()>,
    commit: Mutex<CommitState>,
    committed: Condvar,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Corrupt(format!("cannot encode record: {e}")))
}

fn dec<T: serde::de::DeserializeOwned>(what: &str, b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| Error::Corrupt(format!("{what} record: {e}")))
}

fn identity_key(identity: &str, serial: &[u8]) -> Vec<u8> {
    let mut k = identity.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(serial);
    k
}

fn expiry_key(not_after: DateTime<Utc>, serial: &[u8]) -> Vec<u8> {
    let mut k = (not_after.timestamp().max(0) as u64).to_be_bytes().to_vec();
    k.extend_from_slice(serial);
    k
}

fn tx_err(op: &'static str, e: TransactionError<Error>) -> Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => Error::store(op, e),
    }
}

impl SledStore {
    /// Open (or create) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        // sled releases its file lock from a background thread shortly after the previous
        // handle is dropped (e.g. a restart in the same process): retry briefly on that only.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match sled::Config::new().path(dir).open() {
                Ok(db) => break db,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(Error::store("open", e)),
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(|e| Error::store("open tree", e));
        Ok(SledStore {
            certs: tree("certs")?,
            by_identity: tree("by_identity")?,
            by_expiry: tree("by_expiry")?,
            revoked: tree("revoked")?,
            tokens: tree("tokens")?,
            audit: tree("audit")?,
            meta: tree("meta")?,
            ocsp: tree("ocsp")?,
            db,
            audit_lock: Mutex::new(()),
            commit: Mutex::new(CommitState::default()),
            committed: Condvar::new(),
        })
    }

    /// Make every write completed before this call durable (group commit).
    fn durable(&self) -> Result<()> {
        let lock = || self.commit.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = lock();
        st.requested += 1;
        let mine = st.requested;
        loop {
            if st.done >= mine {
                return Ok(());
            }
            if st.flushing {
                st = self.committed.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.flushing = true;
            let target = st.requested;
            drop(st);
            let r = self.db.flush();
            st = lock();
            st.flushing = false;
            if r.is_ok() {
                st.done = st.done.max(target);
            }
            self.committed.notify_all();
            r.map_err(|e| Error::store("flush", e))?;
        }
    }

    fn decode_cert(&self, v: &[u8]) -> Result<CertRecord> {
        dec("certificate", v)
    }
}

impl Store for SledStore {
    fn insert_cert(&self, rec: &CertRecord) -> Result<bool> {
        let value = enc(rec)?;
        let ik = identity_key(&rec.identity, &rec.serial);
        let ek = expiry_key(rec.not_after, &rec.serial);
        let inserted = (&self.certs, &self.by_identity, &self.by_expiry)
            .transaction(|(certs, ident, exp)| {
                if certs.get(&rec.serial)?.is_some() {
                    return Ok(false);
                }
                certs.insert(rec.serial.as_slice(), value.as_slice())?;
                ident.insert(ik.as_slice(), &[])?;
                exp.insert(ek.as_slice(), &[])?;
                Ok::<_, ConflictableTransactionError<Error>>(true)
            })
            .map_err(|e| tx_err("insert certificate", e))?;
        if inserted {
            self.durable()?;
        }
        Ok(inserted)
    }

    fn serial_exists(&self, serial: &[u8]) -> Result<bool> {
        self.certs
            .contains_key(serial)
            .map_err(|e| Error::store("lookup serial", e))
    }

    fn get_cert(&self, serial: &[u8]) -> Result<Option<CertRecord>> {
        match self
            .certs
            .get(serial)
            .map_err(|e| Error::store("get certificate", e))?
        {
            Some(v) => Ok(Some(self.decode_cert(&v)?)),
            None => Ok(None),
        }
    }

    fn list_certs(&self, filter: &CertFilter) -> Result<Vec<CertRecord>> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut consider = |rec: CertRecord| {
            let keep = filter.identity.as_ref().is_none_or(|i| &rec.identity == i)
                && filter.revoked.is_none_or(|r| rec.is_revoked() == r)
                && filter.expiring_before.is_none_or(|t| rec.not_after < t)
                && filter.valid_at.is_none_or(|t| rec.not_after > t);
            if keep {
                out.push(rec);
            }
            out.len() >= limit
        };
        if let Some(identity) = &filter.identity {
            let mut prefix = identity.as_bytes().to_vec();
            prefix.push(0);
            for kv in self.by_identity.scan_prefix(&prefix) {
                let (k, _) = kv.map_err(|e| Error::store("scan identity index", e))?;
                if let Some(rec) = self.get_cert(&k[prefix.len()..])? {
                    if consider(rec) {
                        break;
                    }
                }
            }
        } else if let Some(before) = filter.expiring_before {
            let end = (before.timestamp().max(0) as u64).to_be_bytes();
            for kv in self.by_expiry.range(..end.to_vec()) {
                let (k, _) = kv.map_err(|e| Error::store("scan expiry index", e))?;
                if let Some(rec) = self.get_cert(&k[8..])? {
                    if consider(rec) {
                        break;
                    }
                }
            }
        } else {
            for kv in self.certs.iter() {
                let (_, v) = kv.map_err(|e| Error::store("scan certificates", e))?;
                if consider(self.decode_cert(&v)?) {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn for_each_cert(&self, f: &mut dyn FnMut(CertRecord) -> Result<()>) -> Result<()> {
        for kv in self.certs.iter() {
            let (_, v) = kv.map_err(|e| Error::store("scan certificates", e))?;
            f(self.decode_cert(&v)?)?;
        }
        Ok(())
    }

    fn revoke(
        &self,
        serial: &[u8],
        at: DateTime<Utc>,
        reason: RevocationReason,
    ) -> Result<CertRecord> {
        let rec = (&self.certs, &self.revoked)
            .transaction(|(certs, revoked)| {
                let abort = |e| ConflictableTransactionError::Abort(e);
                let v = certs
                    .get(serial)?
                    .ok_or_else(|| abort(Error::CertNotFound(hex::encode(serial))))?;
                let mut rec: CertRecord = dec("certificate", &v).map_err(abort)?;
                let at = match &rec.status {
                    RecordStatus::Valid => at,
                    // RFC 5280 5.3.1: a revocation may be changed to keyCompromise, keeping the
                    // original revocation date.
                    RecordStatus::Revoked {
                        at: first,
                        reason: old,
                    } if reason == RevocationReason::KeyCompromise
                        && *old != RevocationReason::KeyCompromise =>
                    {
                        *first
                    }
                    RecordStatus::Revoked { reason: old, .. } => {
                        return Err(abort(Error::AlreadyRevoked {
                            serial: hex::encode(serial),
                            reason: *old,
                        }))
                    }
                };
                rec.status = RecordStatus::Revoked { at, reason };
                let entry = RevokedEntry {
                    serial: serial.to_vec(),
                    revoked_at: at,
                    reason,
                };
                certs.insert(serial, enc(&rec).map_err(abort)?)?;
                revoked.insert(serial, enc(&entry).map_err(abort)?)?;
                Ok(rec)
            })
            .map_err(|e| tx_err("revoke", e))?;
        self.durable()?;
        Ok(rec)
    }

    fn for_each_revoked(&self, f: &mut dyn FnMut(RevokedEntry) -> Result<()>) -> Result<()> {
        for kv in self.revoked.iter() {
            let (_, v) = kv.map_err(|e| Error::store("scan revocations", e))?;
            f(dec("revocation", &v)?)?;
        }
        Ok(())
    }

    fn next_crl_number(&self) -> Result<u64> {
        let v = self
            .meta
            .update_and_fetch(META_CRL_NUMBER, |old| {
                let n = old
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Some((n + 1).to_be_bytes().to_vec())
            })
            .map_err(|e| Error::store("next CRL number", e))?
            .ok_or_else(|| Error::Corrupt("CRL number vanished".into()))?;
        self.durable()?;
        let b = <[u8; 8]>::try_from(v.as_ref()).map_err(|_| Error::Corrupt("CRL number".into()))?;
        Ok(u64::from_be_bytes(b))
    }

    fn insert_token(&self, tok: &TokenRecord) -> Result<()> {
        let old = self
            .tokens
            .compare_and_swap(tok.hash.as_bytes(), None as Option<&[u8]>, Some(enc(tok)?))
            .map_err(|e| Error::store("insert token", e))?;
        if old.is_err() {
            return Err(Error::Corrupt("enrollment token hash collision".into()));
        }
        self.durable()
    }

    fn consume_token(&self, hash: &str, now: DateTime<Utc>) -> Result<TokenRecord> {
        loop {
            let current = self
                .tokens
                .get(hash.as_bytes())
                .map_err(|e| Error::store("get token", e))?;
            let Some(current) = current else {
                return Err(Error::TokenRejected("unknown token"));
            };
            let mut tok: TokenRecord = dec("token", &current)?;
            if tok.used_at.is_some() {
                return Err(Error::TokenRejected("token already used"));
            }
            if now >= tok.expires_at {
                return Err(Error::TokenRejected("token expired"));
            }
            tok.used_at = Some(now);
            let swapped = self
                .tokens
                .compare_and_swap(hash.as_bytes(), Some(current), Some(enc(&tok)?))
                .map_err(|e| Error::store("consume token", e))?;
            if swapped.is_ok() {
                self.durable()?;
                return Ok(tok);
            }
            // Lost a race: re-read; the winner has marked it used.
        }
    }

    fn get_token(&self, hash: &str) -> Result<Option<TokenRecord>> {
        match self
            .tokens
            .get(hash.as_bytes())
            .map_err(|e| Error::store("get token", e))?
        {
            Some(v) => Ok(Some(dec("token", &v)?)),
            None => Ok(None),
        }
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.tokens
            .iter()
            .map(|kv| {
                let (_, v) = kv.map_err(|e| Error::store("scan tokens", e))?;
                dec("token", &v)
            })
            .collect()
    }

    fn put_ocsp_response(&self, resp: &StoredOcspResponse) -> Result<()> {
        self.ocsp
            .insert(resp.serial.as_slice(), enc(resp)?)
            .map_err(|e| Error::store("put OCSP response", e))?;
        self.durable()
    }

    fn for_each_ocsp_response(
        &self,
        f: &mut dyn FnMut(StoredOcspResponse) -> Result<()>,
    ) -> Result<()> {
        for kv in self.ocsp.iter() {
            let (_, v) = kv.map_err(|e| Error::store("scan OCSP responses", e))?;
            f(dec("OCSP response", &v)?)?;
        }
        Ok(())
    }

    fn append_audit(&self, ev: NewAuditEvent) -> Result<AuditEvent> {
        let _serial = self.audit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (prev_seq, prev_hash) = match self
            .meta
            .get(META_AUDIT_HEAD)
            .map_err(|e| Error::store("audit head", e))?
        {
            Some(v) => dec::<(u64, String)>("audit head", &v)?,
            None => (0, audit::GENESIS.to_string()),
        };
        let sealed = audit::seal(prev_seq, &prev_hash, crate::clock::truncate(Utc::now()), ev)?;
        let value = enc(&sealed)?;
        let head = enc(&(sealed.seq, sealed.hash.clone()))?;
        (&self.audit, &self.meta)
            .transaction(|(audit, meta)| {
                audit.insert(&sealed.seq.to_be_bytes(), value.as_slice())?;
                meta.insert(META_AUDIT_HEAD, head.as_slice())?;
                Ok::<_, ConflictableTransactionError<Error>>(())
            })
            .map_err(|e| tx_err("append audit", e))?;
        self.durable()?;
        Ok(sealed)
    }

    fn audit_events(&self, from: u64, limit: usize) -> Result<Vec<AuditEvent>> {
        self.audit
            .range(from.to_be_bytes()..)
            .take(limit)
            .map(|kv| {
                let (_, v) = kv.map_err(|e| Error::store("scan audit", e))?;
                dec("audit", &v)
            })
            .collect()
    }

    fn verify_audit(&self) -> Result<u64> {
        let mut events = Vec::new();
        for kv in self.audit.iter() {
            let (_, v) = kv.map_err(|e| Error::store("scan audit", e))?;
            events.push(dec::<AuditEvent>("audit", &v)?);
        }
        let n = audit::verify_chain(events)?;
        // The head must point at the last event: truncating the log is tampering too.
        if let Some(v) = self
            .meta
            .get(META_AUDIT_HEAD)
            .map_err(|e| Error::store("audit head", e))?
        {
            let (seq, _) = dec::<(u64, String)>("audit head", &v)?;
            if seq != n {
                return Err(Error::AuditChain {
                    seq: n + 1,
                    reason: format!("log ends at {n} but head says {seq} (events removed)"),
                });
            }
        }
        Ok(n)
    }

    fn health(&self) -> Result<()> {
        self.meta
            .get(b"health")
            .map(|_| ())
            .map_err(|e| Error::store("health", e))
    }
}

impl SledStore {
    /// Testing hook: overwrite a raw audit record (to prove tampering is detected).
    #[doc(hidden)]
    pub fn tamper_audit_for_test(
        &self,
        seq: u64,
        f: impl FnOnce(&mut serde_json::Value),
    ) -> Result<()> {
        let v = self
            .audit
            .get(seq.to_be_bytes())
            .map_err(|e| Error::store("audit", e))?
            .ok_or(Error::AuditChain {
                seq,
                reason: "missing".into(),
            })?;
        let mut json: serde_json::Value = dec("audit", &v)?;
        f(&mut json);
        self.audit
            .insert(seq.to_be_bytes(), enc(&json)?)
            .map_err(|e| Error::store("audit", e))?;
        Ok(())
    }
}
