//! The bounded OCSP answer cache (README "OCSP answer cache"): memory follows
//! `cache_max_entries`, not the number of certificates; answers not in memory are read back
//! from the store without a signature, checked against the certificate's status; the refresh
//! pass finds due responses in the store. Real SoftHSM token, real sled store, openssl.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ocsp_fixture;

use ca_core::clock::{Clock, FixedClock, SystemClock};
use ca_core::ocsp::{Responder, ResponderConfig, ResponderKey};
use ca_core::revocation::{CertStatus, RevocationReason};
use ca_core::store::prelude::*;
use chrono::{Duration, Utc};
use ocsp_fixture::{openssl, run, Leaf, TestCa};
use std::sync::Arc;
use testkit::Faults;

const LEAVES: usize = 40;
/// 16 shards of one answer each: far fewer than the certificates.
const SMALL: usize = 16;

fn request(ca: &TestCa, leaf: &Leaf, name: &str) -> Vec<u8> {
    let out = ca.path(name);
    let (ok, text) = run(openssl()
        .args(["ocsp", "-no_nonce", "-issuer"])
        .arg(&ca.cert_pem)
        .arg("-cert")
        .arg(&leaf.cert_pem)
        .arg("-reqout")
        .arg(&out));
    assert!(ok, "{text}");
    std::fs::read(out).unwrap()
}

/// `LEAVES` certificates issued by `ca`.
fn issue_leaves(ca: &TestCa) -> Vec<Leaf> {
    (0..LEAVES)
        .map(|i| ca.issue_leaf(&format!("leaf{i}")))
        .collect()
}

/// An openssl OCSP request for each of `leaves`.
fn requests_for(ca: &TestCa, leaves: &[Leaf]) -> Vec<Vec<u8>> {
    leaves
        .iter()
        .enumerate()
        .map(|(i, l)| request(ca, l, &format!("req{i}.der")))
        .collect()
}

/// The stored response of `leaf` (its group's, when signed in a group).
fn stored_der(ca: &TestCa, leaf: &Leaf) -> Vec<u8> {
    ca.store
        .get_ocsp_response(&leaf.record.serial)
        .unwrap()
        .unwrap()
        .der
}

fn responder(ca: &TestCa, clock: Arc<dyn Clock>, config: ResponderConfig) -> Responder {
    Responder::new(
        &ca.cert_der,
        ResponderKey::ca(ca.signer_dyn()),
        ca.store.clone(),
        clock,
        config,
    )
    .unwrap()
}

fn small() -> ResponderConfig {
    ResponderConfig {
        cache_max_entries: SMALL,
        ..Default::default()
    }
}

/// Sign every certificate's response the way a running CA does: in issuance groups.
fn sign_all(ca: &TestCa, leaves: &[Leaf]) {
    let r = Arc::new(responder(ca, Arc::new(SystemClock), Default::default()));
    let tickets: Vec<_> = leaves.iter().map(|l| r.enqueue_issued(&l.record)).collect();
    for t in tickets {
        r.await_issued(t).unwrap();
    }
}

fn status_of(r: &Responder, req: &[u8]) -> CertStatus {
    let a = r.respond(req);
    a.cert_status()
        .cloned()
        .unwrap_or_else(|| panic!("not a signed answer: {a:?}"))
}

#[test]
fn a_small_cache_answers_every_certificate_from_the_store_without_the_hsm() {
    let ca = TestCa::new("Test Root");
    let leaves = issue_leaves(&ca);
    sign_all(&ca, &leaves);
    // A group response is kept under every serial it covers, so each can be read alone.
    let mut distinct = std::collections::HashSet::new();
    for l in &leaves {
        let kept = ca.store.get_ocsp_response(&l.record.serial).unwrap();
        distinct.insert(kept.expect("every member has a stored response").der);
    }
    assert!(
        distinct.len() < LEAVES,
        "signed in groups: {}",
        distinct.len()
    );
    let requests = requests_for(&ca, &leaves);

    let r = responder(&ca, Arc::new(SystemClock), small());
    r.load().unwrap();
    assert!(r.cache_stats().entries <= SMALL, "{:?}", r.cache_stats());
    // The HSM refuses every signature from here on: whatever is answered comes from the store.
    ca.token.inject_login_refusal().unwrap();
    for (l, req) in leaves.iter().zip(&requests) {
        assert_eq!(
            status_of(&r, req),
            CertStatus::Good,
            "{}",
            hex::encode(&l.record.serial)
        );
    }
    // Twice round: what the first round read back was evicted again by the others.
    for req in &requests {
        assert_eq!(status_of(&r, req), CertStatus::Good);
    }
    ca.token.end_login_refusal().unwrap();
    ca.signer.token().retry_login();
    let stats = r.cache_stats();
    assert!(stats.entries <= SMALL, "{stats:?}");
    assert!(stats.evictions > 0, "{stats:?}");
    assert!(
        stats.store_reads >= (2 * LEAVES - SMALL) as u64,
        "misses answered from the store: {stats:?}"
    );
    assert_eq!(stats.hits + stats.misses, 2 * LEAVES as u64, "{stats:?}");

    // An answer read back verifies in openssl like any other.
    let der = r.respond(&requests[7]).der.clone();
    let path = ca.path("resp7.der");
    std::fs::write(&path, &der).unwrap();
    let (ok, out) = run(openssl()
        .args(["ocsp", "-no_nonce", "-respin"])
        .arg(&path)
        .arg("-issuer")
        .arg(&ca.cert_pem)
        .arg("-cert")
        .arg(&leaves[7].cert_pem)
        .arg("-CAfile")
        .arg(&ca.cert_pem));
    assert!(ok && out.contains("Response verify OK"), "{out}");
    assert!(out.contains(": good"), "{out}");
}

/// The attack: a crash between a revocation's commit and its OCSP re-signing (or a store
/// write that rolls the response back) leaves a validly signed `good` response stored for a
/// revoked certificate. Read back on a miss, it must not be served.
#[test]
fn a_stored_good_answer_for_a_revoked_certificate_is_not_read_back() {
    let ca = TestCa::new("Test Root");
    let leaves = issue_leaves(&ca);
    sign_all(&ca, &leaves);
    let victim = &leaves[3];
    // Revoked in the store only: the stored response still says good.
    ca.store
        .revoke(
            &victim.record.serial,
            Utc::now(),
            RevocationReason::KeyCompromise,
        )
        .unwrap();
    let kept = ca
        .store
        .get_ocsp_response(&victim.record.serial)
        .unwrap()
        .unwrap();
    let req = request(&ca, victim, "victim.der");
    let r = responder(&ca, Arc::new(SystemClock), small());
    r.load().unwrap();
    // Fill the cache with others, so the victim's answer is read back from the store.
    for (i, l) in leaves.iter().enumerate().skip(10).take(SMALL * 2) {
        let other = request(&ca, l, &format!("o{i}.der"));
        assert_eq!(status_of(&r, &other), CertStatus::Good);
    }
    match status_of(&r, &req) {
        CertStatus::Revoked { reason, .. } => assert_eq!(reason, RevocationReason::KeyCompromise),
        s => panic!("stored `good` served for a revoked certificate: {s:?}"),
    }
    assert_ne!(
        ca.store
            .get_ocsp_response(&victim.record.serial)
            .unwrap()
            .unwrap()
            .der,
        kept.der,
        "the revoked answer replaced the stale one in the store"
    );
}

/// With answers outside memory, the refresh pass finds what is due in the store: every
/// certificate is re-signed, not only the ones the cache happens to hold.
#[test]
fn the_refresh_pass_re_signs_answers_that_are_not_in_memory() {
    let ca = TestCa::new("Test Root");
    let leaves = issue_leaves(&ca);
    let t0 = Utc::now();
    let clock = Arc::new(FixedClock::new(t0));
    let config = ResponderConfig {
        validity: Duration::hours(4),
        refresh_before: Duration::hours(2),
        cache_max_entries: SMALL,
        ..Default::default()
    };
    let first = responder(&ca, clock.clone(), config.clone());
    first.load().unwrap();
    first.refresh_backlog().unwrap();
    assert!(first.cache_stats().entries <= SMALL);
    for l in &leaves {
        assert!(ca
            .store
            .get_ocsp_response(&l.record.serial)
            .unwrap()
            .is_some());
    }

    clock.set(t0 + Duration::hours(3));
    let r = responder(&ca, clock.clone(), config);
    r.load().unwrap();
    assert!(r.cache_stats().entries <= SMALL);
    let stats = r.refresh_due().unwrap();
    assert_eq!(stats.refreshed, LEAVES, "{stats:?}");
    let now = clock.now();
    for l in &leaves {
        let kept = ca
            .store
            .get_ocsp_response(&l.record.serial)
            .unwrap()
            .unwrap();
        assert!(
            kept.next_update > now + Duration::hours(3),
            "{}",
            hex::encode(&l.record.serial)
        );
    }
}

/// Over the live-signing budget, a certificate of this CA whose stored answer cannot be served
/// gets `tryLater` (not `unauthorized`, which says "not ours", and never its stale `good`),
/// and goes on the re-sign backlog, which the next pass signs.
#[test]
fn over_the_budget_a_known_certificate_gets_try_later_and_the_backlog_signs_it() {
    let ca = TestCa::new("Test Root");
    let leaves: Vec<Leaf> = (0..4).map(|i| ca.issue_leaf(&format!("leaf{i}"))).collect();
    sign_all(&ca, &leaves);
    let victim = &leaves[1];
    ca.store
        .revoke(
            &victim.record.serial,
            Utc::now(),
            RevocationReason::KeyCompromise,
        )
        .unwrap();
    let req = request(&ca, victim, "victim.der");
    let r = responder(
        &ca,
        Arc::new(SystemClock),
        ResponderConfig {
            live_signing_rate: 0,
            ..small()
        },
    );
    let a = r.respond(&req);
    assert!(a.cert_status().is_none(), "not a status: {a:?}");
    let body = ca_core::ocsp::parse_response(&a.der).unwrap();
    assert_eq!(
        body.status,
        x509_ocsp::OcspResponseStatus::TryLater,
        "{body:?}"
    );
    assert_eq!(r.resign_backlog(), 1);
    assert_eq!(r.refresh_backlog().unwrap().refreshed, 1);
    assert!(matches!(status_of(&r, &req), CertStatus::Revoked { .. }));
}

/// A request for `leaf` under `alg`, encoded like a client sends it (no nonce).
fn request_for(ca: &TestCa, leaf: &Leaf, alg: ca_core::ocsp::HashAlg) -> Vec<u8> {
    use der::Encode;
    use x509_ocsp::{OcspRequest, Request, TbsRequest, Version};
    let issuer = ca_core::ocsp::OcspIssuer::from_cert_der(&ca.cert_der).unwrap();
    OcspRequest {
        tbs_request: TbsRequest {
            version: Version::V1,
            requestor_name: None,
            request_list: vec![Request {
                req_cert: issuer.cert_id(alg, &leaf.record.serial).unwrap(),
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    }
    .to_der()
    .unwrap()
}

/// The hot set of a fleet (a few certificates asked about all the time) stays in memory while
/// the rest streams through a cache far smaller than the fleet: an answer asked about since the
/// clock hand last passed is not evicted. (The table's first occupied slot was the victim
/// before: the slot a recent insertion had reused, so the hot answers evicted each other.)
#[test]
fn hot_answers_survive_eviction_pressure() {
    const CACHE: usize = 64; // 4 answers per shard
    const COLD: usize = 96;
    let ca = TestCa::new("Test Root");
    let leaves: Vec<Leaf> = (0..COLD + 3)
        .map(|i| ca.issue_leaf(&format!("leaf{i}")))
        .collect();
    sign_all(&ca, &leaves);
    let (hot, cold) = leaves.split_at(3);
    let alg = ca_core::ocsp::HashAlg::Sha1;
    let hot_reqs: Vec<Vec<u8>> = hot.iter().map(|l| request_for(&ca, l, alg)).collect();
    let r = responder(
        &ca,
        Arc::new(SystemClock),
        ResponderConfig {
            cache_max_entries: CACHE,
            ..Default::default()
        },
    );
    let hot_hit = |r: &Responder, what: &str| {
        for (h, req) in hot_reqs.iter().enumerate() {
            let hits = r.cache_stats().hits;
            assert_eq!(status_of(r, req), CertStatus::Good);
            assert_eq!(
                r.cache_stats().hits,
                hits + 1,
                "{what}: hot answer {h} was evicted"
            );
        }
    };
    // Nothing loaded: every first request is a miss read back from the store. The cold
    // certificates fill the cache first, as the rest of a fleet does.
    ca.token.inject_login_refusal().unwrap();
    for l in cold {
        assert_eq!(status_of(&r, &request_for(&ca, l, alg)), CertStatus::Good);
    }
    assert!(r.cache_stats().evictions > 0, "{:?}", r.cache_stats());
    // The hot set alone: read back once, then in memory.
    for req in &hot_reqs {
        assert_eq!(status_of(&r, req), CertStatus::Good);
    }
    for round in 0..10 {
        hot_hit(&r, &format!("hot round {round}"));
    }
    let before = r.cache_stats();
    // Each cold certificate once (a miss, an insertion, past the bound an eviction), the hot
    // ones between them, three times round.
    for round in 0..3 {
        for (i, l) in cold.iter().enumerate() {
            assert_eq!(
                status_of(&r, &request_for(&ca, l, alg)),
                CertStatus::Good,
                "round {round}, cold {i}"
            );
            hot_hit(&r, &format!("round {round}, after cold {i}"));
        }
    }
    ca.token.end_login_refusal().unwrap();
    ca.signer.token().retry_login();
    let after = r.cache_stats();
    let asked = (3 * COLD * (hot.len() + 1)) as u64;
    assert_eq!(
        (after.hits + after.misses) - (before.hits + before.misses),
        asked,
        "{after:?}"
    );
    assert!(after.evictions > before.evictions, "{after:?}");
    assert!(after.entries <= CACHE, "{after:?}");
    assert_eq!(after.store_reads, after.misses, "{after:?}");
}

/// Misses answered from the store carry exactly what the stored response says for that serial
/// (status, revocation time and reason, thisUpdate, the group's earliest nextUpdate) under
/// either CertID hash, for members of issuance groups and for re-signed revocations alike,
/// with the HSM refusing every signature; and the bytes served are the stored ones.
#[test]
fn misses_read_back_from_the_store_answer_what_the_stored_response_says() {
    use ca_core::ocsp::HashAlg;
    let ca = TestCa::new("Test Root");
    let leaves: Vec<Leaf> = (0..24)
        .map(|i| ca.issue_leaf(&format!("leaf{i}")))
        .collect();
    sign_all(&ca, &leaves);
    // Revoked the way the CA does it: store, then the responder re-signs and persists.
    let signer = responder(&ca, Arc::new(SystemClock), Default::default());
    let reasons = [
        RevocationReason::KeyCompromise,
        RevocationReason::Superseded,
        RevocationReason::Unspecified,
    ];
    for (i, reason) in reasons.iter().enumerate() {
        let rec = ca
            .store
            .revoke(&leaves[i * 5].record.serial, Utc::now(), *reason)
            .unwrap();
        signer.on_revoked(&rec).unwrap();
    }
    drop(signer);

    let r = responder(&ca, Arc::new(SystemClock), small());
    ca.token.inject_login_refusal().unwrap();
    for round in 0..2 {
        for (i, l) in leaves.iter().enumerate() {
            for alg in [HashAlg::Sha1, HashAlg::Sha256] {
                let a = r.respond(&request_for(&ca, l, alg));
                let rec = ca.store.get_cert(&l.record.serial).unwrap().unwrap();
                let stored = ca
                    .store
                    .get_ocsp_response(&l.record.serial)
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    a.der, stored.der,
                    "round {round}, leaf {i}: the stored bytes"
                );
                // What the full decoder reads in those bytes for this serial.
                let parsed = ca_core::ocsp::parse_response(&stored.der).unwrap();
                let single = parsed
                    .singles()
                    .iter()
                    .find(|s| {
                        ca_core::ocsp::serial_magnitude(s.cert_id.serial_number.as_bytes())
                            == ca_core::ocsp::serial_magnitude(&l.record.serial)
                    })
                    .unwrap();
                let this_update = chrono::DateTime::from_timestamp(
                    single.this_update.0.to_unix_duration().as_secs() as i64,
                    0,
                )
                .unwrap();
                let status = a.cert_status().cloned().unwrap();
                match (&status, rec.cert_status()) {
                    (CertStatus::Good, CertStatus::Good) => {}
                    (
                        CertStatus::Revoked { at, reason },
                        CertStatus::Revoked {
                            at: at2,
                            reason: reason2,
                        },
                    ) => {
                        assert_eq!(at.timestamp(), at2.timestamp());
                        assert_eq!(*reason, reason2);
                    }
                    (s, want) => panic!("leaf {i}: {s:?}, the store says {want:?}"),
                }
                assert_eq!(a.this_update(), Some(this_update), "leaf {i}");
                assert_eq!(a.next_update(), parsed.next_update(), "leaf {i}");
            }
        }
    }
    ca.token.end_login_refusal().unwrap();
    ca.signer.token().retry_login();
    let stats = r.cache_stats();
    assert!(stats.evictions > 0, "{stats:?}");
    assert_eq!(stats.store_reads, stats.misses, "{stats:?}");
}

/// The attack: a response signed by another key (here a delegated responder's, valid for this
/// issuer) stored under a serial, for a responder signing with the CA key. Read back on a
/// miss, it must not be served: the responder signs its own answer instead.
#[test]
fn a_stored_response_signed_by_another_key_is_not_read_back() {
    let ca = TestCa::new("Test Root");
    let leaves: Vec<Leaf> = (0..4).map(|i| ca.issue_leaf(&format!("leaf{i}"))).collect();
    let (rsigner, rcert, _) = ca.ocsp_responder("other-responder");
    let other = Arc::new(
        Responder::new(
            &ca.cert_der,
            ResponderKey::delegated(rsigner, &rcert).unwrap(),
            ca.store.clone(),
            Arc::new(SystemClock),
            Default::default(),
        )
        .unwrap(),
    );
    let tickets: Vec<_> = leaves
        .iter()
        .map(|l| other.enqueue_issued(&l.record))
        .collect();
    for t in tickets {
        other.await_issued(t).unwrap();
    }
    drop(other);
    let foreign = ca
        .store
        .get_ocsp_response(&leaves[2].record.serial)
        .unwrap()
        .unwrap();
    let r = responder(&ca, Arc::new(SystemClock), small());
    let a = r.respond(&request_for(&ca, &leaves[2], ca_core::ocsp::HashAlg::Sha1));
    assert_eq!(a.cert_status(), Some(&CertStatus::Good), "{a:?}");
    assert_ne!(a.der, foreign.der, "another key's response was served");
    assert_eq!(r.cache_stats().store_reads, 0, "{:?}", r.cache_stats());
}

/// Memory at a million certificates (issue 17): a response signed for a group is stored once
/// for its members; answers built from it, read back on a miss or loaded at start, share one
/// copy of its bytes instead of one copy per member (2.8 KB each for a group of eight).
#[test]
fn answers_read_back_from_one_group_response_share_its_bytes() {
    let ca = TestCa::new("Test Root");
    let leaves = issue_leaves(&ca);
    sign_all(&ca, &leaves);
    let groups: std::collections::HashSet<Vec<u8>> =
        leaves.iter().map(|l| stored_der(&ca, l)).collect();
    assert!(
        groups.len() < LEAVES / 2,
        "signed in groups: {}",
        groups.len()
    );
    let requests = requests_for(&ca, &leaves);
    let copies = |r: &Responder| -> std::collections::HashSet<usize> {
        requests
            .iter()
            .map(|req| {
                let a = r.respond(req);
                assert_eq!(a.cert_status(), Some(&CertStatus::Good));
                a.der.as_ptr() as usize
            })
            .collect()
    };

    // Nothing loaded: every first request reads its member's response back from the store.
    let cold = responder(&ca, Arc::new(SystemClock), Default::default());
    assert_eq!(copies(&cold).len(), groups.len());
    let stats = cold.cache_stats();
    assert_eq!(stats.store_reads, LEAVES as u64, "{stats:?}");

    // Loaded at start: the same.
    let loaded = responder(&ca, Arc::new(SystemClock), Default::default());
    loaded.load().unwrap();
    assert_eq!(copies(&loaded).len(), groups.len());
    assert_eq!(loaded.cache_stats().store_reads, 0);
}

/// Start-up at a million certificates (issue 17): when the stored answers do not fit, the load
/// stages one answer per stored record up to the bound and checks those against their
/// records alone; it no longer reads every record, resolves every group and scans every
/// certificate (14 s of CPU at 1M to keep 200,000). What it stages is still checked: every
/// certificate here was revoked in the store only (its stored response still says good), and
/// none is ever answered good, whether loaded (signed again at load) or read back.
#[test]
fn a_load_past_the_bound_stops_there_and_serves_nothing_stale() {
    let ca = TestCa::new("Test Root");
    let leaves = issue_leaves(&ca);
    sign_all(&ca, &leaves);
    let requests = requests_for(&ca, &leaves);
    for l in &leaves {
        ca.store
            .revoke(&l.record.serial, Utc::now(), RevocationReason::Superseded)
            .unwrap();
    }
    let r = responder(&ca, Arc::new(SystemClock), small());
    let stats = r.load().unwrap();
    assert!(
        stats.loaded + stats.signed <= SMALL && stats.signed > 0,
        "staged up to the bound ({SMALL}), each checked: {stats:?}"
    );
    assert_eq!(stats.loaded, 0, "a stale good was loaded: {stats:?}");
    assert_eq!(stats.queued, 0, "{stats:?}");
    for (l, req) in leaves.iter().zip(&requests) {
        match status_of(&r, req) {
            CertStatus::Revoked { reason, .. } => assert_eq!(reason, RevocationReason::Superseded),
            s => panic!("{}: {s:?}", hex::encode(&l.record.serial)),
        }
    }
}

/// Issue 17, item 1: the byte bound. Requests spread over the fleet keep a whole group
/// response alive for each answer held; under the entry bound alone, 200,000 such answers held
/// about 600 MB at a million certificates. The cache counts each group response once, however
/// many members share it (and counts it again when a revocation gives a member an answer of
/// its own), and stays under `cache_max_bytes` whatever the order of the requests, answering
/// every certificate from the store without the HSM.
#[test]
fn the_byte_bound_holds_however_the_requests_spread() {
    use ca_core::ocsp::{CACHE_ANSWER_BYTES, CACHE_SLOT_BYTES};
    let ca = TestCa::new("Test Root");
    let leaves = issue_leaves(&ca);
    sign_all(&ca, &leaves);
    let requests = requests_for(&ca, &leaves);
    let mut groups: std::collections::HashMap<Vec<u8>, usize> = Default::default();
    for l in &leaves {
        *groups.entry(stored_der(&ca, l)).or_default() += 1;
    }
    let cost = |der_len: usize| der_len + CACHE_ANSWER_BYTES;

    // Everything in memory: a slot per serial, each group response once.
    let all = responder(&ca, Arc::new(SystemClock), Default::default());
    for req in &requests {
        assert_eq!(status_of(&all, req), CertStatus::Good);
    }
    let expected = LEAVES * CACHE_SLOT_BYTES + groups.keys().map(|d| cost(d.len())).sum::<usize>();
    assert_eq!(all.cache_stats().bytes, expected, "{} groups", groups.len());
    // A revoked member gets an answer of its own; its group's stays, held by the others.
    let (shared, _) = groups
        .iter()
        .find(|(_, n)| **n > 1)
        .expect("a group of several");
    let member = leaves
        .iter()
        .find(|l| stored_der(&ca, l) == *shared)
        .unwrap();
    ca.store
        .revoke(
            &member.record.serial,
            Utc::now(),
            RevocationReason::KeyCompromise,
        )
        .unwrap();
    let revoked = ca.store.get_cert(&member.record.serial).unwrap().unwrap();
    all.on_revoked(&revoked).unwrap();
    let own = all.cached(&member.record.serial).unwrap();
    assert!(
        matches!(own.cert_status(), Some(CertStatus::Revoked { .. })),
        "{:?}",
        own.kind
    );
    assert_eq!(all.cache_stats().bytes, expected + cost(own.der.len()));

    // Bounded to a third of that: loaded up to the bound, and never over it.
    let largest = groups.keys().map(|d| cost(d.len())).max().unwrap();
    let bound = (expected / 3).max(largest + CACHE_SLOT_BYTES);
    let r = responder(
        &ca,
        Arc::new(SystemClock),
        ResponderConfig {
            cache_max_bytes: bound,
            ..Default::default()
        },
    );
    let loaded = r.load().unwrap();
    let stats = r.cache_stats();
    assert!(
        loaded.loaded > 0 && stats.bytes <= bound,
        "{loaded:?} {stats:?}"
    );
    ca.token.inject_login_refusal().unwrap();
    // One member of each group in turn: every answer read back keeps another group alive.
    let order: Vec<usize> = (0..LEAVES).map(|i| (i * 7) % LEAVES).collect();
    for _round in 0..2 {
        for &i in &order {
            let status = status_of(&r, &requests[i]);
            let right = if leaves[i].record.serial == member.record.serial {
                matches!(status, CertStatus::Revoked { .. })
            } else {
                status == CertStatus::Good
            };
            assert!(
                right,
                "{}: {status:?}",
                hex::encode(&leaves[i].record.serial)
            );
            let stats = r.cache_stats();
            assert!(stats.bytes <= bound, "over the bound ({bound}): {stats:?}");
        }
    }
    ca.token.end_login_refusal().unwrap();
    ca.signer.token().retry_login();
    let stats = r.cache_stats();
    assert!(stats.evictions > 0 && stats.store_reads > 0, "{stats:?}");
    assert!(stats.entries < LEAVES, "{stats:?}");
}
