//! Group commit of audit appends on PostgreSQL. An append locks the one `audit_head` row until
//! its transaction has committed, and commits are durable (`synchronous_commit = on`), so
//! appends one at a time cost one WAL flush each, in series, across every node: the CA's
//! issuance rate would be one over the flush latency. Instead, the appends waiting in this
//! process go in one transaction: the first caller (the leader) writes everything queued so
//! far, in order, under one lock of the head row and one durable commit, then hands every
//! caller its sealed event. Nothing changes for a caller: its append returns after the commit
//! that made its event durable (DESIGN invariant 2), in chain order, and the chain is one
//! across nodes (the head row lock is still taken, once per group).

use crate::audit::{AuditEvent, NewAuditEvent};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

/// Events written in one transaction at most.
const GROUP_MAX: usize = 256;

#[derive(Default)]
struct State {
    next_ticket: u64,
    queue: Vec<(u64, NewAuditEvent)>,
    leader: bool,
    done: HashMap<u64, Result<AuditEvent>>,
}

/// The queue of appends waiting for a group, and its leader.
#[derive(Default)]
pub(super) struct AuditBatch {
    state: Mutex<State>,
    written: Condvar,
}

impl std::fmt::Debug for AuditBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditBatch").finish_non_exhaustive()
    }
}

/// The same failure for every event of a failed group (the error type is not `Clone`): the
/// kind that matters to callers is kept (the chain refused, the store unavailable).
fn same_failure(e: &Error) -> Error {
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct GroupFailed(String);
    match e {
        Error::AuditChain { seq, reason } => Error::AuditChain {
            seq: *seq,
            reason: reason.clone(),
        },
        e if e.is_store_unavailable() => Error::StoreUnavailable {
            op: "append audit",
            source: Box::new(GroupFailed(e.to_string())),
        },
        e => Error::Store {
            op: "append audit",
            source: Box::new(GroupFailed(e.to_string())),
        },
    }
}

impl AuditBatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append `ev` through `write` (which appends a group in order, in one transaction), as
    /// part of the next group; returns once that group has committed.
    pub(super) fn append(
        &self,
        ev: NewAuditEvent,
        write: impl Fn(Vec<NewAuditEvent>) -> Result<Vec<AuditEvent>>,
    ) -> Result<AuditEvent> {
        let mut st = self.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push((ticket, ev));
        loop {
            if let Some(r) = st.done.remove(&ticket) {
                return r;
            }
            if st.leader {
                st = self.written.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Lead a group: everything queued so far (this caller's event among it, or in an
            // earlier group already).
            st.leader = true;
            let take = st.queue.len().min(GROUP_MAX);
            let group: Vec<(u64, NewAuditEvent)> = st.queue.drain(..take).collect();
            drop(st);
            let (tickets, events): (Vec<u64>, Vec<NewAuditEvent>) = group.into_iter().unzip();
            let n = events.len();
            // A panic in `write` must not leave followers waiting forever.
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(events)))
                .unwrap_or_else(|_| Err(Error::Corrupt("the audit append panicked".into())));
            st = self.lock();
            match written {
                Ok(sealed) if sealed.len() == n => {
                    for (t, e) in tickets.into_iter().zip(sealed) {
                        st.done.insert(t, Ok(e));
                    }
                }
                Ok(_) => {
                    for t in tickets {
                        st.done
                            .insert(t, Err(Error::Corrupt("audit group written partly".into())));
                    }
                }
                Err(e) => {
                    for t in tickets {
                        st.done.insert(t, Err(same_failure(&e)));
                    }
                }
            }
            st.leader = false;
            self.written.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_appends_are_written_in_groups_and_each_gets_its_own_event() {
        let batch = AuditBatch::default();
        let groups = Mutex::new(Vec::new());
        let seq = Mutex::new(0u64);
        let write = |events: Vec<NewAuditEvent>| -> Result<Vec<AuditEvent>> {
            std::thread::sleep(std::time::Duration::from_millis(5));
            groups.lock().unwrap().push(events.len());
            let mut s = seq.lock().unwrap();
            Ok(events
                .into_iter()
                .map(|ev| {
                    *s += 1;
                    crate::audit::seal(*s - 1, "x", chrono::Utc::now(), ev).unwrap()
                })
                .collect())
        };
        let got: Vec<(String, u64)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..32)
                .map(|i| {
                    let (batch, write) = (&batch, &write);
                    scope.spawn(move || {
                        let e = batch
                            .append(NewAuditEvent::ok("t", "a", format!("{i}")), write)
                            .unwrap();
                        (e.event.object.clone(), e.seq)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut seqs: Vec<u64> = got.iter().map(|(_, s)| *s).collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=32).collect::<Vec<_>>(),
            "each caller its own event"
        );
        let groups = groups.into_inner().unwrap();
        assert_eq!(groups.iter().sum::<usize>(), 32);
        assert!(groups.len() < 32, "grouped: {groups:?}");
    }

    #[test]
    fn a_failed_group_fails_every_caller_in_it_with_the_same_kind() {
        let batch = AuditBatch::default();
        let r = batch.append(NewAuditEvent::ok("t", "a", "o"), |_| {
            Err(Error::AuditChain {
                seq: 7,
                reason: "head missing".into(),
            })
        });
        assert!(matches!(r, Err(Error::AuditChain { seq: 7, .. })));
        // The batcher is usable afterwards.
        let r = batch.append(NewAuditEvent::ok("t", "a", "o"), |evs| {
            Ok(evs
                .into_iter()
                .map(|ev| crate::audit::seal(0, "x", chrono::Utc::now(), ev).unwrap())
                .collect())
        });
        assert!(r.is_ok());
    }
}
