//! The audit log's start after a truncation, as a store contract on sled (real disk) and
//! PostgreSQL (throwaway cluster, [`testkit::pg`]): a log truncated below a signed checkpoint
//! verifies from that checkpoint and says how many events were archived below it, across a
//! reopen; the store refuses a start that does not match its log; an interrupted truncation
//! verifies and resumes; appends go on during a truncation (PostgreSQL: from another node).
//! And the attacks of someone who can write the store: deleting or rewriting kept events,
//! moving the start to a checkpoint the audit key did not sign, or deleting events without a
//! start: each is found by `verify_audit_log`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ca_core::audit::{AuditKey, Checkpoint, NewAuditEvent};
use ca_core::signer::{KeyAlgorithm, Signer};
#[cfg(feature = "postgres")]
use ca_core::store::PgStore;
use ca_core::store::{prelude::*, SledStore};
use ca_core::Error;
use chrono::Utc;
use std::sync::Arc;

/// A P-256 key in memory standing in for the HSM's audit checkpoint key (the signatures are
/// real ECDSA; only where the key lives differs).
#[derive(Debug)]
struct SoftKey {
    key: rcgen::KeyPair,
    spki: Vec<u8>,
}

impl SoftKey {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        SoftKey { key, spki }
    }
    fn public(&self) -> AuditKey {
        AuditKey::from_spki_der(&self.spki).unwrap()
    }
    fn checkpoint(&self, s: &dyn Store, seq: u64) -> Checkpoint {
        let ev = s.audit_events(seq, 1).unwrap().remove(0);
        assert_eq!(ev.seq, seq);
        Checkpoint::sign(self, seq, &ev.hash, Utc::now()).unwrap()
    }
}

impl Signer for SoftKey {
    fn algorithm(&self) -> KeyAlgorithm {
        KeyAlgorithm::P256
    }
    fn spki_der(&self) -> &[u8] {
        &self.spki
    }
    fn public_key_bits(&self) -> &[u8] {
        rcgen::PublicKeyData::der_bytes(&self.key)
    }
    fn sign(&self, msg: &[u8]) -> ca_core::Result<Vec<u8>> {
        Ok(rcgen::SigningKey::sign(&self.key, msg).unwrap())
    }
}

enum Place {
    Sled(tempfile::TempDir),
    #[cfg(feature = "postgres")]
    Pg(testkit::pg::TestDatabase),
}

#[derive(Clone)]
enum Opened {
    Sled(Arc<SledStore>),
    #[cfg(feature = "postgres")]
    Pg(Arc<PgStore>),
}

impl Place {
    fn sled() -> Place {
        Place::Sled(tempfile::tempdir().unwrap())
    }
    #[cfg(feature = "postgres")]
    fn pg() -> Place {
        Place::Pg(
            testkit::pg::PgServer::shared()
                .unwrap()
                .fresh_database()
                .unwrap(),
        )
    }
    fn open(&self) -> Opened {
        match self {
            Place::Sled(dir) => Opened::Sled(Arc::new(SledStore::open(dir.path()).unwrap())),
            #[cfg(feature = "postgres")]
            Place::Pg(db) => Opened::Pg(Arc::new(PgStore::open(db.url()).unwrap())),
        }
    }
}

impl Opened {
    fn tamper(&self, seq: u64, f: impl FnOnce(&mut serde_json::Value)) {
        match self {
            Opened::Sled(s) => s.tamper_audit_for_test(seq, f).unwrap(),
            #[cfg(feature = "postgres")]
            Opened::Pg(s) => s.tamper_audit_for_test(seq, f).unwrap(),
        }
    }
    fn delete_event(&self, seq: u64) {
        match self {
            Opened::Sled(s) => s.delete_audit_event_for_test(seq).unwrap(),
            #[cfg(feature = "postgres")]
            Opened::Pg(s) => s.delete_audit_event_for_test(seq).unwrap(),
        }
    }
}

impl std::ops::Deref for Opened {
    type Target = dyn Store;
    fn deref(&self) -> &(dyn Store + 'static) {
        match self {
            Opened::Sled(s) => s.as_ref(),
            #[cfg(feature = "postgres")]
            Opened::Pg(s) => s.as_ref(),
        }
    }
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod on_sled {
            $(#[test]
            fn $name() {
                super::$name(super::Place::sled())
            })*
        }
        #[cfg(feature = "postgres")]
        mod on_postgres {
            $(#[test]
            fn $name() {
                super::$name(super::Place::pg())
            })*
        }
    };
}

contract!(
    a_truncated_log_verifies_from_its_signed_start_across_reopen,
    the_store_refuses_a_start_that_does_not_match_its_log,
    an_interrupted_truncation_verifies_and_resumes,
    attacks_on_a_truncated_log_are_detected,
    deleting_events_without_a_start_is_detected,
);

fn append(s: &dyn Store, n: u64) {
    for i in 0..n {
        s.append_audit(NewAuditEvent::ok("alice", "issue", format!("serial-{i}")))
            .unwrap();
    }
}

/// Truncate fully below `cp` (what `ca-server audit truncate` drives).
fn truncate(s: &dyn Store, cp: &Checkpoint, batch: usize) -> usize {
    s.set_audit_start(cp).unwrap();
    let mut total = 0;
    loop {
        let n = s.delete_audit_below_start(batch).unwrap();
        if n == 0 {
            return total;
        }
        assert!(n <= batch, "a batch is bounded: {n} > {batch}");
        total += n;
    }
}

fn chain_error(r: ca_core::Result<ca_core::audit::AuditReport>) -> String {
    match r {
        Err(e @ Error::AuditChain { .. }) => e.to_string(),
        other => panic!("expected an audit chain error, got {other:?}"),
    }
}

fn a_truncated_log_verifies_from_its_signed_start_across_reopen(place: Place) {
    let key = SoftKey::new();
    let cp10;
    {
        let s = place.open();
        append(&*s, 20);
        let cp5 = key.checkpoint(&*s, 5);
        s.put_audit_checkpoint(&cp5).unwrap();
        cp10 = key.checkpoint(&*s, 10);
        s.put_audit_checkpoint(&cp10).unwrap();
        let cp20 = key.checkpoint(&*s, 20);
        s.put_audit_checkpoint(&cp20).unwrap();
        assert_eq!(s.audit_start().unwrap(), None);
        // 10 events and the checkpoint at 5 go, in batches of 3.
        assert_eq!(truncate(&*s, &cp10, 3), 11);
        let r = s.verify_audit_log(Some(&key.public())).unwrap();
        assert_eq!((r.events, r.first_seq, r.last_seq), (10, 11, 20));
        assert_eq!(r.archived_events, 10);
        assert_eq!(r.start.as_ref(), Some(&cp10));
        assert_eq!(r.last_checkpoint.as_ref(), Some(&cp20));
        // The log goes on.
        append(&*s, 3);
        assert_eq!(s.audit_head().unwrap().unwrap().0, 23);
    }
    // Durable: the start, the deletions and the appends after.
    let s = place.open();
    assert_eq!(s.audit_start().unwrap(), Some(cp10.clone()));
    assert_eq!(s.audit_iter(1).next().unwrap().unwrap().seq, 11);
    assert_eq!(
        s.audit_checkpoints(0).next().unwrap().unwrap().seq,
        10,
        "checkpoints below the start are deleted, the start's own kept"
    );
    let r = s.verify_audit_log(Some(&key.public())).unwrap();
    assert_eq!(
        (r.events, r.archived_events, r.unsigned_tail()),
        (13, 10, 3)
    );
    assert_eq!(s.verify_audit().unwrap(), 13);
    // Truncating again, further: the start moves forward only.
    let cp23 = key.checkpoint(&*s, 23);
    s.put_audit_checkpoint(&cp23).unwrap();
    truncate(&*s, &cp23, 100);
    let r = s.verify_audit_log(Some(&key.public())).unwrap();
    assert_eq!((r.events, r.archived_events), (0, 23));
    append(&*s, 1);
    assert_eq!(s.verify_audit_log(Some(&key.public())).unwrap().events, 1);
}

fn the_store_refuses_a_start_that_does_not_match_its_log(place: Place) {
    let key = SoftKey::new();
    let s = place.open();
    append(&*s, 6);
    let good = key.checkpoint(&*s, 4);
    let mut other_hash = good.clone();
    other_hash.head_hash = s.audit_events(3, 1).unwrap()[0].hash.clone();
    let beyond = Checkpoint {
        seq: 9,
        ..good.clone()
    };
    let empty = Checkpoint::sign(&key, 0, ca_core::audit::GENESIS, Utc::now()).unwrap();
    for (bad, why) in [
        (&other_hash, "not the checkpoint's"),
        (&beyond, "before the checkpoint's sequence"),
        (&empty, "empty log"),
    ] {
        let e = s.set_audit_start(bad).unwrap_err();
        assert!(
            matches!(e, Error::AuditChain { .. }) && e.to_string().contains(why),
            "{e}"
        );
        assert_eq!(s.audit_start().unwrap(), None, "nothing changed");
        assert_eq!(s.delete_audit_below_start(100).unwrap(), 0);
    }
    assert_eq!(s.verify_audit().unwrap(), 6);
    truncate(&*s, &good, 10);
    // Back, or to an event already deleted: refused; the same start again: accepted.
    let e = s.set_audit_start(&key.checkpoint(&*s, 5)).map(|_| ());
    assert!(e.is_ok(), "forward is fine: {e:?}");
    let back = Checkpoint {
        seq: 4,
        ..good.clone()
    };
    let e = s.set_audit_start(&back).unwrap_err();
    assert!(e.to_string().contains("cannot move back"), "{e}");
}

fn an_interrupted_truncation_verifies_and_resumes(place: Place) {
    let key = SoftKey::new();
    let s = place.open();
    append(&*s, 12);
    let cp = key.checkpoint(&*s, 8);
    s.put_audit_checkpoint(&cp).unwrap();
    s.set_audit_start(&cp).unwrap();
    assert_eq!(s.delete_audit_below_start(3).unwrap(), 3);
    drop(s);
    // "Crash": reopened with events 4..=8 still below the start.
    let s = place.open();
    let r = s.verify_audit_log(Some(&key.public())).unwrap();
    assert_eq!((r.events, r.archived_events), (4, 8));
    // Resumed with the same start: accepted, and finishes.
    s.set_audit_start(&cp).unwrap();
    assert_eq!(truncate(&*s, &cp, 2), 5);
    assert_eq!(s.audit_iter(1).next().unwrap().unwrap().seq, 9);
    assert_eq!(s.verify_audit_log(Some(&key.public())).unwrap().events, 4);
}

fn attacks_on_a_truncated_log_are_detected(place: Place) {
    let key = SoftKey::new();
    let s = place.open();
    append(&*s, 10);
    let cp = key.checkpoint(&*s, 4);
    s.put_audit_checkpoint(&cp).unwrap();
    truncate(&*s, &cp, 100);
    assert_eq!(s.verify_audit_log(Some(&key.public())).unwrap().events, 6);

    // The start moved to a checkpoint the audit key did not sign (Mallory's own key, and a
    // checkpoint naming the audit key with a forged signature): refused with the key.
    let mallory = SoftKey::new();
    let forged = mallory.checkpoint(&*s, 6);
    s.set_audit_start(&forged).unwrap(); // the store holds no key: an attacker can write it
    let e = chain_error(s.verify_audit_log(Some(&key.public())));
    assert!(e.contains("not the audit key"), "{e}");
    // (Without the key only the chain is checked: the anchor's signature cannot be.)
    let mut forged_sig = key.checkpoint(&*s, 7);
    forged_sig.signature = mallory.checkpoint(&*s, 7).signature;
    s.set_audit_start(&forged_sig).unwrap();
    let e = chain_error(s.verify_audit_log(Some(&key.public())));
    assert!(e.contains("does not verify with the audit key"), "{e}");
    drop(s);

    // A fresh truncated log for each attack on its events.
    let fresh = |n| {
        let p = match &place {
            Place::Sled(_) => Place::sled(),
            #[cfg(feature = "postgres")]
            Place::Pg(_) => Place::pg(),
        };
        let s = p.open();
        append(&*s, 10);
        let cp = key.checkpoint(&*s, n);
        s.put_audit_checkpoint(&cp).unwrap();
        truncate(&*s, &cp, 100);
        (p, s)
    };
    // A kept event deleted: the first one, and one in the middle.
    for victim in [5, 7] {
        let (_p, s) = fresh(4);
        s.delete_event(victim);
        let e = chain_error(s.verify_audit_log(Some(&key.public())));
        assert!(e.contains(&format!("expected sequence {victim}")), "{e}");
    }
    // A kept event rewritten, its hash recomputed: the next link breaks; the first kept
    // event rewritten: its link to the signed start breaks.
    for victim in [5, 7] {
        let (_p, s) = fresh(4);
        s.tamper(victim, |v| {
            v["actor"] = "mallory".into();
            let ev: ca_core::audit::AuditEvent = serde_json::from_value(v.clone()).unwrap();
            v["hash"] = ca_core::audit::event_hash(ev.seq, &ev.time, &ev.event, &ev.prev_hash)
                .unwrap()
                .into();
        });
        chain_error(s.verify_audit_log(Some(&key.public())));
    }
    {
        let (_p, s) = fresh(4);
        s.tamper(5, |v| v["prev_hash"] = "00".repeat(32).into());
        let e = chain_error(s.verify_audit_log(Some(&key.public())));
        assert!(e.contains("previous-hash link broken"), "{e}");
    }
}

fn deleting_events_without_a_start_is_detected(place: Place) {
    let s = place.open();
    append(&*s, 6);
    // Truncated without `audit truncate`: no start recorded.
    for seq in 1..=3 {
        s.delete_event(seq);
    }
    let e = chain_error(s.verify_audit_log(None));
    assert!(e.contains("expected sequence 1"), "{e}");
}

/// Two nodes on one database: one truncates in small batches while the other appends; the
/// chain stays one and verifies from the start.
#[cfg(feature = "postgres")]
#[test]
fn postgres_appends_from_another_node_during_a_truncation_keep_one_chain() {
    let place = Place::pg();
    let key = SoftKey::new();
    let a = place.open();
    let b = place.open();
    append(&*a, 300);
    let cp = key.checkpoint(&*a, 250);
    a.put_audit_checkpoint(&cp).unwrap();
    let writer = {
        let b = b.clone();
        std::thread::spawn(move || {
            for i in 0..200 {
                b.append_audit(NewAuditEvent::ok("bob", "issue", format!("b-{i}")))
                    .unwrap();
            }
        })
    };
    let deleted = truncate(&*a, &cp, 7);
    writer.join().unwrap();
    assert_eq!(deleted, 250);
    for s in [&a, &b] {
        let r = s.verify_audit_log(Some(&key.public())).unwrap();
        assert_eq!((r.events, r.archived_events, r.last_seq), (250, 250, 500));
    }
}
