//! The issuance presigner: certificates just issued wait in a queue for their first response;
//! whoever comes first (the `ocsp-issuance` thread, a caller of `await_issued`, or an OCSP
//! request about one of them) signs one response for the whole group queued (RFC 6960
//! 4.2.2.3, RFC 5019 2.2.1 allow the extra SingleResponses).
//!
//! Invariants:
//! - At most one group is signed at a time (`in_flight`), groups finish in ticket order, and
//!   a ticket below `done` is finished (signed, or failed and put on the refresher's backlog).
//! - A request about a certificate still queued waits for its group instead of being answered
//!   `unknown` ([`Presigner::await_queued`]).
//! - A certificate that already has an answer when its group is signed (revoked meanwhile)
//!   keeps it ([`super::install::Installer::sign_group`] skips it).

use super::super::serial_magnitude;
use super::install::Installer;
use super::refresh::Refresher;
use crate::error::{Error, Result};
use crate::store::CertRecord;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A certificate queued by [`super::Responder::enqueue_issued`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "pass it to `await_issued`, or drop it when the issuance signer runs"]
pub struct IssuedTicket(u64);

/// What the responses pre-signed at issuance have cost so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IssuanceSigningStats {
    /// Responses signed.
    pub signatures: u64,
    /// Certificates covered by them.
    pub certificates: u64,
}

#[derive(Default)]
struct Queue {
    /// (ticket, certificate), in ticket order.
    pending: VecDeque<(u64, CertRecord)>,
    next_ticket: u64,
    /// Every ticket below this one is finished (batches complete in ticket order).
    done: u64,
    /// The group a leader is signing, (ticket, serial magnitude); empty when nobody is.
    in_flight: Vec<(u64, Vec<u8>)>,
    /// Tickets someone waits for in [`Presigner::await_ticket`].
    awaiting: HashSet<u64>,
    /// Awaited tickets whose group failed, with the error message.
    failed: HashMap<u64, String>,
    stats: IssuanceSigningStats,
    /// [`Presigner::stop`] was called: the signer thread signs what is queued and ends.
    stopping: bool,
}

/// The queue of certificates waiting for their response pre-signed at issuance.
pub(super) struct Presigner {
    queue: Mutex<Queue>,
    /// A group finished (signed or failed).
    done: Condvar,
    /// A certificate was queued, or [`Presigner::stop`] was called.
    arrival: Condvar,
    batch_max: usize,
}

fn wait<'a, T>(c: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    c.wait(g).unwrap_or_else(|p| p.into_inner())
}
fn wait_timeout<'a, T>(c: &Condvar, g: MutexGuard<'a, T>, d: Duration) -> MutexGuard<'a, T> {
    c.wait_timeout(g, d).unwrap_or_else(|p| p.into_inner()).0
}

impl Presigner {
    pub(super) fn new(batch_max: usize) -> Self {
        Presigner {
            queue: Mutex::new(Queue::default()),
            done: Condvar::new(),
            arrival: Condvar::new(),
            batch_max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `rec`; cheap, signs nothing.
    pub(super) fn enqueue(&self, rec: &CertRecord) -> IssuedTicket {
        let mut q = self.lock();
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.pending.push_back((ticket, rec.clone()));
        self.arrival.notify_one();
        IssuedTicket(ticket)
    }

    /// Wait until `ticket` is finished, leading its group if nobody is signing.
    pub(super) fn await_ticket(
        &self,
        ticket: IssuedTicket,
        inst: &Installer<'_>,
        backlog: &Refresher,
    ) -> Result<()> {
        let ticket = ticket.0;
        let mut q = self.lock();
        q.awaiting.insert(ticket);
        loop {
            if q.done > ticket {
                q.awaiting.remove(&ticket);
                return match q.failed.remove(&ticket) {
                    None => Ok(()),
                    Some(msg) => Err(Error::OcspPresign(msg)),
                };
            }
            if !q.in_flight.is_empty() {
                q = wait(&self.done, q);
                continue;
            }
            q = self.lead_group(q, inst, backlog);
        }
    }

    /// Wait up to `idle` for a first certificate, then up to `window` for the group to fill,
    /// then sign it.
    pub(super) fn sign_next_group(
        &self,
        window: Duration,
        idle: Duration,
        inst: &Installer<'_>,
        backlog: &Refresher,
    ) {
        let mut q = self.lock();
        if q.pending.is_empty() && !q.stopping {
            q = wait_timeout(&self.arrival, q, idle);
        }
        if q.pending.is_empty() {
            return;
        }
        let deadline = Instant::now() + window;
        while q.pending.len() < self.batch_max && !q.stopping {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            q = wait_timeout(&self.arrival, q, left);
        }
        while !q.in_flight.is_empty() {
            q = wait(&self.done, q);
        }
        if !q.pending.is_empty() {
            drop(self.lead_group(q, inst, backlog));
        }
    }

    /// Whether the signer thread should end: stopping, and nothing left queued.
    pub(super) fn finished(&self) -> bool {
        let q = self.lock();
        q.stopping && q.pending.is_empty()
    }

    pub(super) fn stop(&self) {
        self.lock().stopping = true;
        self.arrival.notify_all();
        self.done.notify_all();
    }

    /// If `serial` (magnitude) is queued for its first response, or its group is being
    /// signed, wait for it (signing its group if nobody is); whether it was.
    pub(super) fn await_queued(
        &self,
        serial: &[u8],
        inst: &Installer<'_>,
        backlog: &Refresher,
    ) -> bool {
        let ticket = {
            let q = self.lock();
            q.in_flight
                .iter()
                .find(|(_, s)| s.as_slice() == serial)
                .map(|(t, _)| IssuedTicket(*t))
                .or_else(|| {
                    q.pending
                        .iter()
                        .find(|(_, r)| serial_magnitude(&r.serial) == serial)
                        .map(|(t, _)| IssuedTicket(*t))
                })
        };
        match ticket {
            Some(t) => {
                let _ = self.await_ticket(t, inst, backlog);
                true
            }
            None => false,
        }
    }

    /// Take the next group off the queue (the caller checked that nobody else is signing and
    /// that something is queued), sign it without holding the queue lock, record the outcome,
    /// wake the waiters. A group that fails goes on the refresher's backlog.
    fn lead_group<'q>(
        &'q self,
        mut q: MutexGuard<'q, Queue>,
        inst: &Installer<'_>,
        backlog: &Refresher,
    ) -> MutexGuard<'q, Queue> {
        let take = q.pending.len().min(self.batch_max);
        let batch: Vec<(u64, CertRecord)> = q.pending.drain(..take).collect();
        q.in_flight = batch
            .iter()
            .map(|(t, r)| (*t, serial_magnitude(&r.serial).to_vec()))
            .collect();
        drop(q);
        let recs: Vec<&CertRecord> = batch.iter().map(|(_, r)| r).collect();
        let result = inst.sign_group(&recs);
        if result.is_err() {
            // Signed by the next refresh pass (or live, when asked for before that).
            backlog.add(recs.iter().map(|r| serial_magnitude(&r.serial)));
        }
        let mut q = self.lock();
        q.in_flight.clear();
        if let Some((last, _)) = batch.last() {
            q.done = q.done.max(last + 1);
        }
        match result {
            Ok(signed) => {
                if signed > 0 {
                    q.stats.signatures += 1;
                    q.stats.certificates += signed as u64;
                }
            }
            Err(e) => {
                tracing::error!(certificates = batch.len(), error = %e, "signing OCSP responses at issuance failed; the next refresh pass signs them (or a request for one before that)");
                let msg = e.to_string();
                for (t, _) in &batch {
                    if q.awaiting.contains(t) {
                        q.failed.insert(*t, msg.clone());
                    }
                }
            }
        }
        self.done.notify_all();
        q
    }

    pub(super) fn stats(&self) -> IssuanceSigningStats {
        self.lock().stats
    }
}
