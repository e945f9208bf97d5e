//! The one write path into the answer cache: sign, persist, serve. The presigner, the
//! refresher and live signing all install answers through [`Installer`], a view borrowed from
//! the responder's parts (it owns nothing).
//!
//! Invariant: an answer is persisted before it is served (a restart never serves less than a
//! client has seen, and the bounded cache can drop any answer: it is read back from the
//! store). A group response is kept under every serial it covers.

use super::super::serial_magnitude;
use super::answer::{AnswerKind, OcspAnswer};
use super::cache::AnswerCache;
use super::follow::FollowCtx;
use super::key::Signing;
use super::live::UnknownAnswers;
use crate::error::{Error, Result};
use crate::revocation::CertStatus;
use crate::store::{CertRecord, Store, StoredOcspResponse};
use std::sync::Arc;

/// Whether a response must be durable when [`Installer::install`] returns.
#[derive(Clone, Copy, Debug)]
pub(super) enum Persist {
    Durable,
    /// Written, made durable by a later flush ([`OcspResponseStore::put_ocsp_response_lazy`](crate::store::OcspResponseStore::put_ocsp_response_lazy)).
    Lazy,
    /// Not written here: the caller persisted it (a group response, kept under every member
    /// in one write), or it was read from the store.
    MemoryOnly,
}

/// The parts signing and installing an answer touches.
#[derive(Clone, Copy)]
pub(super) struct Installer<'a> {
    pub(super) signing: &'a Signing,
    pub(super) cache: &'a AnswerCache,
    pub(super) unknown: &'a UnknownAnswers,
    pub(super) store: &'a dyn Store,
}

impl<'a> Installer<'a> {
    /// The same parts, as following other nodes and reading answers back use them.
    pub(super) fn follow_ctx(&self) -> FollowCtx<'a> {
        FollowCtx {
            signing: self.signing,
            cache: self.cache,
            unknown: self.unknown,
            store: self.store,
        }
    }

    /// Sign, persist durably, then serve (the caller holds the serial's sign lock).
    pub(super) fn sign_and_install(&self, serial: &[u8], status: &CertStatus) -> Result<()> {
        self.sign_and_install_as(serial, status, Persist::Durable)
    }

    /// [`Installer::sign_and_install`], persisted as `persist` says (the refresh pass writes
    /// lazily and flushes once at its end).
    pub(super) fn sign_and_install_as(
        &self,
        serial: &[u8],
        status: &CertStatus,
        persist: Persist,
    ) -> Result<()> {
        let serial = serial_magnitude(serial);
        let answer = self.signing.sign_canonical(&[serial], status)?;
        self.install(serial, answer, persist)
    }

    /// One response (status good) for every certificate of `recs` that has none yet; returns
    /// how many it covered. Holds the sign locks of all their serials. Kept under every serial
    /// it covers (one write, without waiting for a flush), so that each member's answer can be
    /// read back from the store alone.
    pub(super) fn sign_group(&self, recs: &[&CertRecord]) -> Result<usize> {
        let _guards = self
            .cache
            .sign_locks(recs.iter().map(|r| serial_magnitude(&r.serial)));
        let mut serials: Vec<&[u8]> = Vec::with_capacity(recs.len());
        for r in recs {
            let serial = serial_magnitude(&r.serial);
            if self.cache.get(serial).is_none() && !serials.contains(&serial) {
                serials.push(serial);
            }
        }
        if serials.is_empty() {
            return Ok(0);
        }
        let answer = self.signing.sign_canonical(&serials, &CertStatus::Good)?;
        let (Some(this_update), Some(next_update)) = (answer.this_update(), answer.next_update())
        else {
            return Err(Error::Corrupt("signed OCSP answer without validity".into()));
        };
        let stored: Vec<StoredOcspResponse> = serials
            .iter()
            .map(|serial| StoredOcspResponse {
                serial: serial.to_vec(),
                der: answer.der.clone(),
                this_update,
                next_update,
            })
            .collect();
        self.store.put_ocsp_responses_lazy(&stored)?;
        for serial in &serials {
            self.install(serial, answer.clone(), Persist::MemoryOnly)?;
        }
        Ok(serials.len())
    }

    /// `serial` gets an answer of its own, replacing `old`. If `old` is a group response kept
    /// under `serial` (issuance groups are kept once, under their first serial), keep it under
    /// every other member still answered by it, unless that member has a record already: the
    /// members keep a persisted answer (restarts, other nodes, stateless responders).
    fn keep_group_for_others(&self, serial: &[u8], old: &OcspAnswer) -> Result<()> {
        let Ok(parsed) = super::super::build::parse_response(&old.der) else {
            return Ok(());
        };
        let mut others: Vec<&[u8]> = Vec::new();
        for single in parsed.singles() {
            let s = serial_magnitude(single.cert_id.serial_number.as_bytes());
            if s != serial
                && !others.contains(&s)
                && self.signing.issuer().matches(&single.cert_id).is_some()
            {
                others.push(s);
            }
        }
        if others.is_empty() {
            return Ok(());
        }
        match self.store.get_ocsp_response(serial)? {
            Some(kept) if kept.der == old.der => {}
            // Kept under another member (or not at all): nothing is lost by replacing it.
            _ => return Ok(()),
        }
        let (Some(this_update), Some(next_update)) = (old.this_update(), old.next_update()) else {
            return Ok(());
        };
        for member in others {
            if self.cache.get(member).is_some_and(|a| a.der == old.der) {
                self.store
                    .put_ocsp_response_if_absent(&StoredOcspResponse {
                        serial: member.to_vec(),
                        der: old.der.clone(),
                        this_update,
                        next_update,
                    })?;
            }
        }
        Ok(())
    }

    /// Persist `answer` as the response for `serial` (magnitude), then serve it, and forget
    /// any `unknown` signed for the serial before (the caller holds the serial's sign lock).
    pub(super) fn install(
        &self,
        serial: &[u8],
        answer: Arc<OcspAnswer>,
        persist: Persist,
    ) -> Result<()> {
        let (this_update, next_update) = match &answer.kind {
            AnswerKind::Signed {
                this_update,
                next_update,
                ..
            } => (*this_update, *next_update),
            AnswerKind::Error(_) => {
                return Err(Error::Corrupt("signed OCSP answer without validity".into()))
            }
        };
        let stored = || StoredOcspResponse {
            serial: serial.to_vec(),
            der: answer.der.clone(),
            this_update,
            next_update,
        };
        if !matches!(persist, Persist::MemoryOnly) {
            if let Some(old) = self.cache.get(serial).filter(|o| o.der != answer.der) {
                self.keep_group_for_others(serial, &old)?;
            }
        }
        match persist {
            Persist::Durable => self.store.put_ocsp_response(&stored())?,
            Persist::Lazy => self.store.put_ocsp_response_lazy(&stored())?,
            Persist::MemoryOnly => {}
        }
        self.cache.insert(serial, answer);
        self.unknown.forget(serial);
        Ok(())
    }
}
