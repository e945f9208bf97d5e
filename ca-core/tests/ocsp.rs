//! OCSP responses signed through a real SoftHSM token, checked with the openssl CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ocsp_fixture;

use ca_core::clock::{Clock, FixedClock, SystemClock};
use ca_core::ocsp::{
    parse_response, sign_response, AnswerKind, Lookup, Responder, ResponderConfig, ResponderKey,
};
use ca_core::revocation::{CertStatus, RevocationReason};
use ca_core::signer::Signer;
use ca_core::store::prelude::*;
use chrono::{Duration, Utc};
use ocsp_fixture::{openssl, run, TestCa};
use std::path::Path;
use std::sync::Arc;
use testkit::Faults;

/// `openssl ocsp -respin` status check (see CRATES.md: no -reqin with -cert).
fn openssl_status(resp: &Path, ca: &TestCa, cert: &Path, extra: &[&str]) -> String {
    let (ok, out) = run(openssl()
        .args(["ocsp", "-no_nonce", "-respin"])
        .arg(resp)
        .args(extra)
        .arg("-issuer")
        .arg(&ca.cert_pem)
        .arg("-cert")
        .arg(cert)
        .arg("-CAfile")
        .arg(&ca.cert_pem));
    assert!(ok, "openssl ocsp failed: {out}");
    assert!(out.contains("Response verify OK"), "{out}");
    out
}

fn write(path: &Path, der: &[u8]) {
    std::fs::write(path, der).unwrap();
}

#[test]
fn sign_response_with_ca_key_verifies_in_openssl() {
    let ca = TestCa::new("Test Root");
    let good = ca.issue_leaf("good");
    let revoked = ca.issue_leaf("revoked");
    let now = Utc::now();
    let at = ca_core::clock::truncate(now - Duration::minutes(5));
    let der = sign_response(
        ca.signer.as_ref(),
        None,
        &ca.cert_der,
        &[
            (good.record.serial.clone(), CertStatus::Good),
            (
                revoked.record.serial.clone(),
                CertStatus::Revoked {
                    at,
                    reason: RevocationReason::KeyCompromise,
                },
            ),
        ],
        now,
        now + Duration::hours(1),
        Some(b"0123456789abcdef"),
    )
    .unwrap();
    let p = ca.path("resp.der");
    write(&p, &der);
    let out = openssl_status(&p, &ca, &good.cert_pem, &[]);
    assert!(
        out.contains(&format!("{}: good", good.cert_pem.display())),
        "{out}"
    );
    let out = openssl_status(&p, &ca, &revoked.cert_pem, &[]);
    assert!(out.contains(": revoked"), "{out}");
    assert!(out.contains("Reason: keyCompromise"), "{out}");

    let parsed = parse_response(&der).unwrap();
    assert_eq!(parsed.singles().len(), 2);
    assert!(parsed.basic.as_ref().unwrap().certs.is_none());
    parsed.verify_signature(ca.signer.spki_der()).unwrap();
    assert_eq!(
        parsed.basic.unwrap().nonce().unwrap().0.as_bytes(),
        b"0123456789abcdef"
    );
}

#[test]
fn sign_response_with_delegated_responder_embeds_its_certificate() {
    let ca = TestCa::new("Test Root");
    let leaf = ca.issue_leaf("leaf");
    let (rsigner, rcert, _rpem) = ca.ocsp_responder("ocsp");
    let now = Utc::now();
    let der = sign_response(
        rsigner.as_ref(),
        Some(&rcert),
        &ca.cert_der,
        &[(leaf.record.serial.clone(), CertStatus::Good)],
        now,
        now + Duration::hours(1),
        None,
    )
    .unwrap();
    let p = ca.path("resp.der");
    write(&p, &der);
    let out = openssl_status(&p, &ca, &leaf.cert_pem, &[]);
    assert!(out.contains(": good"), "{out}");
    let parsed = parse_response(&der).unwrap();
    assert_eq!(
        parsed.basic.as_ref().unwrap().certs.as_ref().unwrap().len(),
        1
    );

    // A key that is neither the issuer's nor backed by a responder certificate is refused.
    assert!(sign_response(
        rsigner.as_ref(),
        None,
        &ca.cert_der,
        &[(leaf.record.serial.clone(), CertStatus::Good)],
        now,
        now + Duration::hours(1),
        None
    )
    .is_err());
    // A nonce over 32 bytes is refused (RFC 8954).
    assert!(sign_response(
        ca.signer.as_ref(),
        None,
        &ca.cert_der,
        &[(leaf.record.serial.clone(), CertStatus::Good)],
        now,
        now + Duration::hours(1),
        Some(&[7u8; 33])
    )
    .is_err());
}

/// Build an OCSP request with openssl (SHA-1 CertID by default, or `-sha256`).
fn openssl_request(ca: &TestCa, certs: &[&Path], name: &str, extra: &[&str]) -> Vec<u8> {
    let out = ca.path(name);
    let mut cmd = openssl();
    cmd.arg("ocsp").args(extra).arg("-issuer").arg(&ca.cert_pem);
    for c in certs {
        cmd.arg("-cert").arg(c);
    }
    cmd.arg("-reqout").arg(&out);
    let (ok, text) = run(&mut cmd);
    assert!(ok, "{text}");
    std::fs::read(out).unwrap()
}

fn responder(
    ca: &TestCa,
    key: ResponderKey,
    clock: Arc<dyn Clock>,
    config: ResponderConfig,
) -> Responder {
    Responder::new(&ca.cert_der, key, ca.store.clone(), clock, config).unwrap()
}

/// What a server's start does: load, then (in the background, right after) the first pass
/// signs what loading put on the re-sign backlog. The load's stats, and how many that pass
/// signed.
fn start(r: &Responder) -> (ca_core::ocsp::LoadStats, usize) {
    let stats = r.load().unwrap();
    let signed = r.refresh_backlog().unwrap().refreshed;
    (stats, signed)
}

#[test]
fn responder_presigns_at_issuance_and_resigns_at_revocation() {
    let ca = TestCa::new("Test Root");
    let leaf = ca.issue_leaf_with("leaf", true);
    let other = ca.issue_leaf_with("other", false);
    let (rsigner, rcert, _) = ca.ocsp_responder("ocsp");
    let r = responder(
        &ca,
        ResponderKey::delegated(rsigner, &rcert).unwrap(),
        Arc::new(SystemClock),
        ResponderConfig::default(),
    );
    let (stats, signed) = start(&r);
    assert_eq!(
        (stats.signed, stats.queued, signed),
        (0, 2, 2),
        "both stored certificates queued at load and signed by the first pass: {stats:?}"
    );
    let before = ca.store.get_cert(&leaf.record.serial).unwrap().unwrap();

    for (alg, name) in [(&[][..], "sha1"), (&["-sha256"][..], "sha256")] {
        let req = openssl_request(
            &ca,
            &[&leaf.cert_pem],
            &format!("req-{name}.der"),
            &[&["-no_nonce"][..], alg].concat(),
        );
        let Lookup::Ready(a) = r.lookup(&req) else {
            panic!("{name}: pre-signed answer expected")
        };
        let p = ca.path(&format!("resp-{name}.der"));
        write(&p, &a.der);
        let out = openssl_status(&p, &ca, &leaf.cert_pem, alg);
        assert!(out.contains(": good"), "{name}: {out}");
    }

    let rec = ca_core::authority::revoke(
        ca.store.as_ref(),
        &r,
        &before.serial,
        RevocationReason::Superseded,
        Utc::now(),
        "test",
    )
    .unwrap();
    assert!(rec.is_revoked());
    let req = openssl_request(&ca, &[&leaf.cert_pem], "req2.der", &["-no_nonce"]);
    // The very bytes answered `good` before (the responder memoises request -> serial, never
    // the status).
    assert_eq!(req, std::fs::read(ca.path("req-sha1.der")).unwrap());
    let Lookup::Ready(a) = r.lookup(&req) else {
        panic!("pre-signed answer expected after revocation")
    };
    assert!(matches!(
        a.cert_status(),
        Some(CertStatus::Revoked {
            reason: RevocationReason::Superseded,
            ..
        })
    ));
    let p = ca.path("resp2.der");
    write(&p, &a.der);
    let out = openssl_status(&p, &ca, &leaf.cert_pem, &[]);
    assert!(
        out.contains(": revoked") && out.contains("Reason: superseded"),
        "{out}"
    );

    // Clear errors for unknown and already-revoked serials.
    let e = ca_core::authority::revoke(
        ca.store.as_ref(),
        &r,
        &[1, 2, 3],
        RevocationReason::KeyCompromise,
        Utc::now(),
        "test",
    )
    .unwrap_err();
    assert!(matches!(e, ca_core::Error::CertNotFound(_)), "{e}");
    let e = ca_core::authority::revoke(
        ca.store.as_ref(),
        &r,
        &before.serial,
        RevocationReason::Superseded,
        Utc::now(),
        "test",
    )
    .unwrap_err();
    assert!(matches!(e, ca_core::Error::AlreadyRevoked { .. }), "{e}");
    // ... but a change to keyCompromise is allowed (RFC 5280 5.3.1) and re-signed at once.
    ca_core::authority::revoke(
        ca.store.as_ref(),
        &r,
        &before.serial,
        RevocationReason::KeyCompromise,
        Utc::now(),
        "test",
    )
    .unwrap();
    assert!(matches!(
        r.cached(&before.serial).unwrap().cert_status(),
        Some(CertStatus::Revoked {
            reason: RevocationReason::KeyCompromise,
            ..
        })
    ));

    // The other certificate is untouched.
    assert_eq!(
        r.cached(&other.record.serial).unwrap().cert_status(),
        Some(&CertStatus::Good)
    );

    // removeFromCRL belongs to delta CRLs only (RFC 5280 5.3.1): refused, nothing changes, and
    // the refusal is audited.
    let audit_before = ca.store.audit_events(0, usize::MAX).unwrap().len();
    let e = ca_core::authority::revoke(
        ca.store.as_ref(),
        &r,
        &other.record.serial,
        RevocationReason::RemoveFromCrl,
        Utc::now(),
        "test",
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            ca_core::Error::ReasonNotAllowed(RevocationReason::RemoveFromCrl, _)
        ),
        "{e}"
    );
    assert_eq!(
        ca.store
            .get_cert(&other.record.serial)
            .unwrap()
            .unwrap()
            .cert_status(),
        CertStatus::Good
    );
    assert_eq!(
        r.cached(&other.record.serial).unwrap().cert_status(),
        Some(&CertStatus::Good)
    );
    let events = ca.store.audit_events(0, usize::MAX).unwrap();
    assert_eq!(events.len(), audit_before + 1);
    assert_eq!(events.last().unwrap().event.result, "reason_not_allowed");
    // The store refuses it too, for callers that go around `revoke`; and the reasons an
    // end-entity certificate must not carry (certificateHold, CA/B Forum BR 7.2.2; the
    // CA-only cACompromise and aACompromise), one row each.
    for reason in [
        RevocationReason::RemoveFromCrl,
        RevocationReason::CertificateHold,
        RevocationReason::CaCompromise,
        RevocationReason::AaCompromise,
    ] {
        assert!(
            matches!(
                ca.store.revoke(&other.record.serial, Utc::now(), reason),
                Err(ca_core::Error::ReasonNotAllowed(r, _)) if r == reason
            ),
            "{reason}"
        );
        assert!(
            matches!(
                ca_core::authority::revoke(
                    ca.store.as_ref(),
                    &r,
                    &other.record.serial,
                    reason,
                    Utc::now(),
                    "test",
                ),
                Err(ca_core::Error::ReasonNotAllowed(r, _)) if r == reason
            ),
            "{reason}"
        );
        assert!(!ca_core::revocation::reason_allowed(reason));
    }
    assert_eq!(
        ca.store
            .get_cert(&other.record.serial)
            .unwrap()
            .unwrap()
            .cert_status(),
        CertStatus::Good
    );
    for reason in RevocationReason::ALL {
        let refused = matches!(
            reason,
            RevocationReason::RemoveFromCrl
                | RevocationReason::CertificateHold
                | RevocationReason::CaCompromise
                | RevocationReason::AaCompromise
        );
        assert_eq!(
            ca_core::revocation::reason_allowed(reason),
            !refused,
            "{reason}"
        );
    }
}

#[test]
fn responses_signed_at_issuance_are_grouped_and_answer_every_certificate() {
    let ca = TestCa::new("Test Root");
    let leaves: Vec<_> = (0..12)
        .map(|i| ca.issue_leaf_with(&format!("group{i}"), i % 2 == 0))
        .collect();
    let (rsigner, rcert, _) = ca.ocsp_responder("ocsp");
    let key = ResponderKey::delegated(rsigner, &rcert).unwrap();
    let config = ResponderConfig {
        issuance_batch_max: 8,
        ..ResponderConfig::default()
    };
    let r = Arc::new(responder(
        &ca,
        key.clone(),
        Arc::new(SystemClock),
        config.clone(),
    ));
    // All twelve queued before anyone waits: the first to wait signs eight, the next four.
    let tickets: Vec<_> = leaves.iter().map(|l| r.enqueue_issued(&l.record)).collect();
    // A revocation that lands between queueing and signing keeps its own response.
    let revoked = &leaves[5];
    ca_core::authority::revoke(
        ca.store.as_ref(),
        r.as_ref(),
        &revoked.record.serial,
        RevocationReason::KeyCompromise,
        Utc::now(),
        "test",
    )
    .unwrap();
    let waiters: Vec<_> = tickets
        .into_iter()
        .rev()
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || r.await_issued(t))
        })
        .collect();
    for w in waiters {
        w.join().unwrap().unwrap();
    }
    let stats = r.issuance_signing_stats();
    assert_eq!(
        (stats.signatures, stats.certificates),
        (2, 11),
        "two signatures; the revoked certificate was skipped"
    );

    let mut sizes = std::collections::BTreeSet::new();
    for (i, leaf) in leaves.iter().enumerate() {
        let req = openssl_request(&ca, &[&leaf.cert_pem], &format!("g{i}.req"), &["-no_nonce"]);
        let Lookup::Ready(a) = r.lookup(&req) else {
            panic!("leaf {i}: pre-signed answer expected")
        };
        let p = ca.path(&format!("g{i}.resp"));
        write(&p, &a.der);
        let out = openssl_status(&p, &ca, &leaf.cert_pem, &[]);
        let singles = parse_response(&a.der).unwrap().singles().len();
        if i == 5 {
            assert!(out.contains(": revoked"), "leaf {i}: {out}");
            assert_eq!(singles, 2, "the revocation's own response");
        } else {
            assert!(out.contains(": good"), "leaf {i}: {out}");
            sizes.insert(singles);
        }
    }
    // SHA-1 and SHA-256 CertIDs for each certificate of the group: 7 (8 minus the revoked
    // one) and 4 certificates.
    assert_eq!(sizes.into_iter().collect::<Vec<_>>(), vec![8, 14]);

    // Every leaf answered from memory, revoked exactly for these.
    let check_statuses = |r: &Responder, revoked: &[usize]| {
        for (i, leaf) in leaves.iter().enumerate() {
            let status = r
                .cached(&leaf.record.serial)
                .unwrap()
                .cert_status()
                .cloned();
            if revoked.contains(&i) {
                assert!(
                    matches!(status, Some(CertStatus::Revoked { .. })),
                    "leaf {i}: {status:?}"
                );
            } else {
                assert_eq!(status, Some(CertStatus::Good), "leaf {i}");
            }
        }
    };

    // Persisted once per group, under its first serial: a restart loads all twelve without
    // signing, each with its own status.
    let r2 = responder(&ca, key.clone(), Arc::new(SystemClock), config.clone());
    let stats = r2.load().unwrap();
    assert_eq!(
        (stats.loaded, stats.signed, stats.discarded),
        (12, 0, 0),
        "{stats:?}"
    );
    check_statuses(&r2, &[5]);
    drop(r2);

    // Revocations after the groups were signed: leaf 9's own record beats the group record of
    // leaves 8-11 (stored under leaf 8); revoking leaf 0 replaces the record that held the
    // first group, which is first kept under each of its other members: a restart signs
    // nothing.
    for i in [9, 0] {
        ca_core::authority::revoke(
            ca.store.as_ref(),
            r.as_ref(),
            &leaves[i].record.serial,
            RevocationReason::Superseded,
            Utc::now(),
            "test",
        )
        .unwrap();
    }
    drop(r);
    let r = responder(&ca, key.clone(), Arc::new(SystemClock), config);
    let stats = r.load().unwrap();
    assert_eq!(
        (stats.loaded, stats.signed, stats.discarded),
        (12, 0, 0),
        "own records for 0, 5, 9 and the first group's members; the second group for 8, 10, 11: {stats:?}"
    );
    check_statuses(&r, &[0, 5, 9]);

    // One certificate per response when grouping is off.
    let more: Vec<_> = (0..3)
        .map(|i| ca.issue_leaf(&format!("single{i}")))
        .collect();
    let r = responder(
        &ca,
        key,
        Arc::new(SystemClock),
        ResponderConfig {
            issuance_batch_max: 1,
            ..ResponderConfig::default()
        },
    );
    let tickets: Vec<_> = more.iter().map(|l| r.enqueue_issued(&l.record)).collect();
    for t in tickets {
        r.await_issued(t).unwrap();
    }
    let stats = r.issuance_signing_stats();
    assert_eq!((stats.signatures, stats.certificates), (3, 3));
    for l in &more {
        let a = r.cached(&l.record.serial).unwrap();
        assert_eq!(parse_response(&a.der).unwrap().singles().len(), 2);
    }

    for bad in [0, 65] {
        let e = Responder::new(
            &ca.cert_der,
            ResponderKey::ca(ca.signer_dyn()),
            ca.store.clone(),
            Arc::new(SystemClock),
            ResponderConfig {
                issuance_batch_max: bad,
                ..ResponderConfig::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("ocsp.issuance_batch_max"), "{e}");
    }
}

#[test]
fn issuance_signer_groups_queued_certificates_and_requests_wait_for_queued_ones() {
    let ca = TestCa::new("Test Root");
    let leaves: Vec<_> = (0..20).map(|i| ca.issue_leaf(&format!("bg{i}"))).collect();
    let key = ResponderKey::ca(ca.signer_dyn());

    // No signer thread: an OCSP request about a queued certificate signs its whole group.
    let r = responder(
        &ca,
        key.clone(),
        Arc::new(SystemClock),
        ResponderConfig::default(),
    );
    for l in &leaves[..3] {
        let _ = r.enqueue_issued(&l.record);
    }
    assert!(
        r.cached(&leaves[1].record.serial).is_none(),
        "queued, not signed yet"
    );
    let req = openssl_request(&ca, &[&leaves[1].cert_pem], "bg1.req", &["-no_nonce"]);
    let a = match r.lookup(&req) {
        Lookup::Ready(a) => a,
        Lookup::Live(live) => r.answer_live(live),
    };
    let p = ca.path("bg1.resp");
    write(&p, &a.der);
    assert!(openssl_status(&p, &ca, &leaves[1].cert_pem, &[]).contains(": good"));
    let stats = r.issuance_signing_stats();
    assert_eq!(
        (stats.signatures, stats.certificates),
        (1, 3),
        "one signature, whole group"
    );
    assert!(r.cached(&leaves[2].record.serial).is_some());

    // With the signer thread: certificates queued within the window share a response, and
    // nobody has to wait for it.
    let r = Arc::new(responder(
        &ca,
        key,
        Arc::new(SystemClock),
        ResponderConfig::default(),
    ));
    let thread = r.start_issuance_signer().unwrap();
    for l in &leaves[3..] {
        let _ = r.enqueue_issued(&l.record);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while r.issuance_signing_stats().certificates < 17 {
        assert!(
            std::time::Instant::now() < deadline,
            "signer did not sign the queue"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let stats = r.issuance_signing_stats();
    assert_eq!(stats.certificates, 17);
    assert!(
        (3..=5).contains(&stats.signatures),
        "17 certificates queued at once in groups of at most 8: {stats:?}"
    );
    for l in &leaves[3..] {
        let a = r.cached(&l.record.serial).unwrap();
        assert_eq!(a.cert_status(), Some(&CertStatus::Good));
        let singles = parse_response(&a.der).unwrap().singles().len();
        assert!((2..=16).contains(&singles), "{singles}");
    }
    // The thread ends once the responder is gone.
    drop(r);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        thread.join().unwrap();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .expect("issuance signer thread still running after the responder was dropped");
}

/// A signer that waits for a go-ahead before each signature (to hold a group mid-signature).
#[derive(Debug)]
struct GatedSigner {
    inner: Arc<dyn Signer>,
    started: std::sync::mpsc::SyncSender<()>,
    go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Signer for GatedSigner {
    fn algorithm(&self) -> ca_core::signer::KeyAlgorithm {
        self.inner.algorithm()
    }
    fn spki_der(&self) -> &[u8] {
        self.inner.spki_der()
    }
    fn public_key_bits(&self) -> &[u8] {
        self.inner.public_key_bits()
    }
    fn sign(&self, msg: &[u8]) -> ca_core::Result<Vec<u8>> {
        let _ = self.started.send(());
        let _ = self.go.lock().unwrap().recv();
        self.inner.sign(msg)
    }
}

#[test]
fn a_request_about_a_certificate_whose_group_is_being_signed_waits_for_it() {
    let ca = TestCa::new("Test Root");
    let leaves: Vec<_> = (0..3).map(|i| ca.issue_leaf(&format!("fl{i}"))).collect();
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(4);
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let signer = Arc::new(GatedSigner {
        inner: ca.signer_dyn(),
        started: started_tx,
        go: std::sync::Mutex::new(go_rx),
    });
    // No live signing at all: a request that is not served from the group gets `unauthorized`.
    let config = ResponderConfig {
        live_signing_rate: 0,
        live_signing_burst: 0,
        ..ResponderConfig::default()
    };
    let r = Arc::new(responder(
        &ca,
        ResponderKey::ca(signer),
        Arc::new(SystemClock),
        config,
    ));
    let tickets: Vec<_> = leaves.iter().map(|l| r.enqueue_issued(&l.record)).collect();
    let leader = {
        let (r, t) = (r.clone(), tickets[0]);
        std::thread::spawn(move || r.await_issued(t))
    };
    started_rx.recv().unwrap(); // the group of three is now being signed
    let req = openssl_request(&ca, &[&leaves[2].cert_pem], "fl2.req", &["-no_nonce"]);
    let Lookup::Live(live) = r.lookup(&req) else {
        panic!("nothing signed yet: the request must take the live path")
    };
    let asker = {
        let r = r.clone();
        std::thread::spawn(move || r.answer_live(live))
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        !asker.is_finished(),
        "the request waits for the group being signed"
    );
    go_tx.send(()).unwrap();
    leader.join().unwrap().unwrap();
    let a = asker.join().unwrap();
    assert_eq!(a.cert_status(), Some(&CertStatus::Good));
    let p = ca.path("fl2.resp");
    write(&p, &a.der);
    assert!(openssl_status(&p, &ca, &leaves[2].cert_pem, &[]).contains(": good"));
    let stats = r.issuance_signing_stats();
    assert_eq!((stats.signatures, stats.certificates), (1, 3));
    for t in &tickets[1..] {
        r.await_issued(*t).unwrap();
    }
}

#[test]
fn restart_reloads_stored_responses_without_resigning() {
    let ca = TestCa::new("Test Root");
    for i in 0..5 {
        ca.issue_leaf(&format!("leaf{i}"));
    }
    let key = ResponderKey::ca(ca.signer_dyn());
    let r = responder(
        &ca,
        key.clone(),
        Arc::new(SystemClock),
        ResponderConfig::default(),
    );
    let (stats, signed) = start(&r);
    assert_eq!((stats.queued, signed), (5, 5), "{stats:?}");
    drop(r);
    let r = responder(
        &ca,
        key.clone(),
        Arc::new(SystemClock),
        ResponderConfig::default(),
    );
    let stats = r.load().unwrap();
    assert_eq!(
        (stats.loaded, stats.signed, stats.discarded),
        (5, 0, 0),
        "{stats:?}"
    );

    // A revocation the responder did not see (e.g. a crash between store and OCSP) is caught
    // at start: the stored status disagrees with the store.
    let mut serial = None;
    ca.store
        .for_each_cert(&mut |rec| {
            serial.get_or_insert(rec.serial);
            Ok(())
        })
        .unwrap();
    let serial = serial.unwrap();
    ca.store
        .revoke(
            &serial,
            ca_core::clock::truncate(Utc::now()),
            RevocationReason::CessationOfOperation,
        )
        .unwrap();
    let r = responder(&ca, key, Arc::new(SystemClock), ResponderConfig::default());
    let stats = r.load().unwrap();
    // The contradicted stored answer is never served: signed again instead.
    assert_eq!((stats.loaded, stats.signed), (4, 1), "{stats:?}");
    assert!(matches!(
        r.cached(&serial).unwrap().cert_status(),
        Some(CertStatus::Revoked { .. })
    ));
}

#[test]
fn refresh_resigns_before_staleness_with_injected_clock() {
    let ca = TestCa::new("Test Root");
    let leaf = ca.issue_leaf("leaf");
    let t0 = Utc::now();
    let clock = Arc::new(FixedClock::new(t0));
    let config = ResponderConfig {
        validity: Duration::hours(4),
        refresh_before: Duration::hours(2),
        ..Default::default()
    };
    let r = responder(
        &ca,
        ResponderKey::ca(ca.signer_dyn()),
        clock.clone(),
        config,
    );
    start(&r);
    let first = r.cached(&leaf.record.serial).unwrap();
    clock.set(t0 + Duration::hours(1));
    assert_eq!(r.refresh_due().unwrap().refreshed, 0, "not due yet");
    clock.set(t0 + Duration::hours(2) + Duration::seconds(1));
    assert_eq!(r.refresh_due().unwrap().refreshed, 1);
    let second = r.cached(&leaf.record.serial).unwrap();
    assert!(second.next_update().unwrap() > first.next_update().unwrap());
    let AnswerKind::Signed { this_update, .. } = second.kind else {
        panic!()
    };
    assert_eq!(
        this_update,
        ca_core::clock::truncate(t0 + Duration::hours(2) + Duration::seconds(1))
    );
    // Persisted: a restart serves the refreshed response.
    let mut stored = Vec::new();
    ca.store
        .for_each_ocsp_response(&mut |s| {
            stored.push(s);
            Ok(())
        })
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].der, second.der);
}

#[test]
fn unknown_serials_are_signed_lazily_cached_and_rate_limited() {
    let ca = TestCa::new("Test Root");
    let _leaf = ca.issue_leaf("leaf");
    let config = ResponderConfig {
        live_signing_rate: 1,
        live_signing_burst: 2,
        ..Default::default()
    };
    let r = responder(
        &ca,
        ResponderKey::ca(ca.signer_dyn()),
        Arc::new(SystemClock),
        config,
    );
    r.load().unwrap();
    let ghosts: Vec<_> = (0..3)
        .map(|i| ca.unissued_leaf(&format!("ghost{i}")))
        .collect();
    let req0 = openssl_request(&ca, &[&ghosts[0]], "g0.der", &["-no_nonce"]);
    let Lookup::Live(live) = r.lookup(&req0) else {
        panic!("unknown serial needs a live signature")
    };
    let a = r.answer_live(live);
    assert_eq!(a.cert_status(), Some(&CertStatus::Unknown));
    let p = ca.path("g0-resp.der");
    write(&p, &a.der);
    let out = openssl_status(&p, &ca, &ghosts[0], &[]);
    assert!(out.contains(": unknown"), "{out}");
    // Cached now: no second signature.
    assert!(matches!(r.lookup(&req0), Lookup::Ready(_)));
    // Budget: burst 2, so the second new serial is signed, the third gets `unauthorized`.
    let req1 = openssl_request(&ca, &[&ghosts[1]], "g1.der", &["-no_nonce"]);
    assert_eq!(r.respond(&req1).cert_status(), Some(&CertStatus::Unknown));
    let req2 = openssl_request(&ca, &[&ghosts[2]], "g2.der", &["-no_nonce"]);
    let a = r.respond(&req2);
    assert_eq!(
        a.kind,
        AnswerKind::Error(x509_ocsp::OcspResponseStatus::Unauthorized)
    );
}

#[test]
fn several_cert_ids_and_nonce_echo_are_signed_live() {
    let ca = TestCa::new("Test Root");
    let a = ca.issue_leaf("a");
    let b = ca.issue_leaf("b");
    let config = ResponderConfig {
        echo_nonce: true,
        ..Default::default()
    };
    let r = responder(
        &ca,
        ResponderKey::ca(ca.signer_dyn()),
        Arc::new(SystemClock),
        config,
    );
    r.load().unwrap();
    ca_core::authority::revoke(
        ca.store.as_ref(),
        &r,
        &b.record.serial,
        RevocationReason::AffiliationChanged,
        Utc::now(),
        "t",
    )
    .unwrap();
    // Two certificates and a nonce: one live response, nonce echoed, verified by openssl
    // (-reqin/-respin alone checks the nonce, CRATES.md).
    let req = openssl_request(&ca, &[&a.cert_pem, &b.cert_pem], "multi.der", &[]);
    let answer = r.respond(&req);
    let resp = ca.path("multi-resp.der");
    write(&resp, &answer.der);
    let (ok, out) = run(openssl()
        .args(["ocsp", "-reqin"])
        .arg(ca.path("multi.der"))
        .arg("-respin")
        .arg(&resp)
        .arg("-CAfile")
        .arg(&ca.cert_pem)
        .arg("-VAfile")
        .arg(&ca.cert_pem));
    assert!(
        ok && out.contains("Response verify OK") && !out.contains("nonce"),
        "{out}"
    );
    let (ok, out) = run(openssl()
        .args(["ocsp", "-no_nonce", "-respin"])
        .arg(&resp)
        .arg("-issuer")
        .arg(&ca.cert_pem)
        .arg("-cert")
        .arg(&a.cert_pem)
        .arg("-cert")
        .arg(&b.cert_pem)
        .arg("-CAfile")
        .arg(&ca.cert_pem));
    assert!(
        ok && out.contains("a.pem: good")
            && out.contains("b.pem: revoked")
            && out.contains("affiliationChanged"),
        "{out}"
    );
}

#[test]
fn other_issuers_get_unauthorized_and_loaded_files_are_served() {
    let root = TestCa::new("Test Root");
    let inter = root.intermediate("Test Issuing CA");
    let leaf = inter.issue_leaf("leaf");
    let r = responder(
        &inter,
        ResponderKey::ca(inter.signer_dyn()),
        Arc::new(SystemClock),
        ResponderConfig::default(),
    );
    start(&r);
    // The intermediate's own status is the root's business: unauthorized until a file is loaded.
    let inter_pem = inter.cert_pem.clone();
    let req = openssl_request(&root, &[&inter_pem], "inter-req.der", &["-no_nonce"]);
    let Lookup::Ready(a) = r.lookup(&req) else {
        panic!()
    };
    assert_eq!(
        a.kind,
        AnswerKind::Error(x509_ocsp::OcspResponseStatus::Unauthorized)
    );

    let now = Utc::now();
    let inter_serial = x509_parser_serial(&inter.cert_der);
    let der = sign_response(
        root.signer.as_ref(),
        None,
        &root.cert_der,
        &[(inter_serial, CertStatus::Good)],
        now,
        now + Duration::days(7),
        None,
    )
    .unwrap();
    let file = inter.path("intermediate.ocsp.der");
    write(&file, &der);
    // Wrong signer certificate: refused at load (fail closed).
    assert!(r
        .add_external(ca_core::ocsp::ExternalResponse {
            path: file.clone(),
            signer_cert_der: inter.cert_der.clone()
        })
        .is_err());
    assert_eq!(
        r.add_external(ca_core::ocsp::ExternalResponse {
            path: file.clone(),
            signer_cert_der: root.cert_der.clone()
        })
        .unwrap(),
        1
    );
    let Lookup::Ready(a) = r.lookup(&req) else {
        panic!()
    };
    assert_eq!(a.der, der);
    let p = inter.path("inter-resp.der");
    write(&p, &a.der);
    let out = openssl_status(&p, &root, &inter_pem, &[]);
    assert!(out.contains(": good"), "{out}");

    // The leaf is still answered from the responder's own cache.
    let req = openssl_request(&inter, &[&leaf.cert_pem], "leaf-req.der", &["-no_nonce"]);
    assert!(
        matches!(r.lookup(&req), Lookup::Ready(a) if a.cert_status() == Some(&CertStatus::Good))
    );
}

fn x509_parser_serial(der: &[u8]) -> Vec<u8> {
    use der::Decode;
    let c = x509_cert::Certificate::from_der(der).unwrap();
    c.tbs_certificate.serial_number.as_bytes().to_vec()
}

#[test]
fn responses_the_hsm_failed_to_sign_at_issuance_are_signed_by_the_next_refresh_pass() {
    let ca = TestCa::new("Test Root");
    let r = responder(
        &ca,
        ResponderKey::ca(ca.signer_dyn()),
        Arc::new(SystemClock),
        ResponderConfig::default(),
    );
    assert_eq!(r.load().unwrap().signed, 0);
    let a = ca.issue_leaf("issued-during-outage-a");
    let b = ca.issue_leaf("issued-during-outage-b");
    let c = ca.issue_leaf("issued-during-outage-c");

    // The HSM refuses the CA's login: the group signed at issuance fails.
    ca.token.inject_login_refusal().unwrap();
    let _a = r.enqueue_issued(&a.record);
    let _b = r.enqueue_issued(&b.record);
    let _c = r.enqueue_issued(&c.record);
    r.sign_issued_group(
        std::time::Duration::from_millis(5),
        std::time::Duration::from_millis(5),
    );
    for leaf in [&a, &b, &c] {
        assert!(r.cached(&leaf.record.serial).is_none());
    }
    assert_eq!(r.resign_backlog(), 3);
    // A pass during the outage changes nothing.
    let stats = r.refresh_due().unwrap();
    assert_eq!((stats.refreshed, stats.failed), (0, 3));
    assert_eq!(r.resign_backlog(), 3);

    // Back: the next pass signs both, with the status the store holds (one revoked meanwhile).
    ca.token.end_login_refusal().unwrap();
    // The token refused the PIN: the CA does not try it again by itself (a real HSM would
    // lock it); the operator who restored the token's PIN says so.
    ca.signer.token().retry_login();
    let at = ca_core::clock::truncate(Utc::now() - Duration::minutes(1));
    ca.store
        .revoke(&b.record.serial, at, RevocationReason::Superseded)
        .unwrap();
    let stats = r.refresh_due().unwrap();
    assert_eq!((stats.refreshed, stats.failed), (3, 0));
    assert_eq!(r.resign_backlog(), 0);
    // The two still good share one response (as at issuance), the revoked one has its own.
    for leaf in [&a, &c] {
        let answer = r.cached(&leaf.record.serial).unwrap();
        assert!(matches!(answer.cert_status(), Some(CertStatus::Good)));
        assert_eq!(parse_response(&answer.der).unwrap().singles().len(), 4);
    }
    assert!(matches!(
        r.cached(&b.record.serial).unwrap().cert_status(),
        Some(CertStatus::Revoked {
            reason: RevocationReason::Superseded,
            ..
        })
    ));
}

/// Shutdown: `stop_issuance_signer` makes the thread sign what is still queued and end, so it
/// can be joined before the PKCS#11 module is finalized (a thread left signing while the
/// process exits died of SIGSEGV inside SoftHSM).
#[test]
fn stopped_issuance_signer_signs_its_queue_and_ends() {
    let ca = TestCa::new("Test Root");
    let leaves: Vec<_> = (0..3)
        .map(|i| ca.issue_leaf(&format!("stop-{i}")))
        .collect();
    let config = ResponderConfig {
        // Long enough that nothing would be signed before the stop without it.
        issuance_batch_window: std::time::Duration::from_millis(100),
        ..ResponderConfig::default()
    };
    let r = Arc::new(responder(
        &ca,
        ResponderKey::ca(ca.signer_dyn()),
        Arc::new(SystemClock),
        config,
    ));
    let thread = r.start_issuance_signer().unwrap();
    for l in &leaves {
        let _ = r.enqueue_issued(&l.record);
    }
    r.stop_issuance_signer();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        thread.join().unwrap();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .expect("issuance signer thread still running after stop_issuance_signer");
    for l in &leaves {
        assert_eq!(
            r.cached(&l.record.serial).unwrap().cert_status(),
            Some(&CertStatus::Good),
            "a queued certificate was left unsigned at the stop"
        );
    }
    // The responder itself lives on: the thread ended because it was told to.
    assert_eq!(Arc::strong_count(&r), 1);
}

/// RFC 6960 4.2.2.2: no response outlives the delegated responder certificate. With an
/// injected clock near its notAfter (the fixture's certificate is valid 60 days): responses
/// end at the notAfter and are not re-signed in a loop; past it nothing is signed, and a
/// responder refuses to start with it.
#[test]
fn responses_end_with_the_responder_certificate_and_none_are_signed_after_it() {
    let ca = TestCa::new("Test Root");
    // A record that outlives the responder certificate (the responder only needs its serial
    // and status).
    let mut long = ca.issue_leaf("leaf").record;
    long.serial = (0..16).map(|_| rand::random::<u8>() & 0x7f).collect();
    long.serial[0] |= 0x01;
    long.not_after += Duration::days(90);
    assert!(ca.store.insert_cert(&long).unwrap());
    let ghost = ca.unissued_leaf("ghost");
    let (signer, cert_der, _) = ca.ocsp_responder("ocsp-short");
    let key = ResponderKey::delegated(signer, &cert_der).unwrap();
    let (_, not_after) = key.cert_serial_and_expiry().unwrap();
    let config = ResponderConfig {
        validity: Duration::hours(24),
        refresh_before: Duration::hours(12),
        ..Default::default()
    };
    let clock = Arc::new(FixedClock::new(not_after - Duration::hours(3)));
    let r = responder(&ca, key.clone(), clock.clone(), config.clone());
    start(&r);
    let a = r.cached(&long.serial).unwrap();
    assert_eq!(a.next_update(), Some(not_after));
    // Due by the usual rule, but re-signing cannot extend it: left alone.
    clock.set(not_after - Duration::hours(2));
    assert_eq!(r.refresh_due().unwrap().refreshed, 0);
    assert_eq!(r.cached(&long.serial).unwrap().der, a.der);
    // Past the notAfter: nothing is signed (a fresh request gets tryLater), the status says so.
    clock.set(not_after + Duration::seconds(1));
    let stats = r.refresh_due().unwrap();
    assert_eq!((stats.refreshed, stats.dropped), (0, 0));
    let req = openssl_request(&ca, &[&ghost], "after-expiry", &["-no_nonce"]);
    let answer = r.respond(&req);
    assert_eq!(
        answer.kind,
        AnswerKind::Error(ca_core::ocsp::OcspResponseStatus::TryLater)
    );
    let status = r.signer_cert_status().unwrap();
    assert_eq!(status.not_after, not_after);
    // A restart with it is refused, naming the certificate.
    let e = Responder::new(&ca.cert_der, key, ca.store.clone(), clock, config).unwrap_err();
    assert!(
        matches!(e, ca_core::Error::OcspSignerUnusable { .. }),
        "{e}"
    );
}

/// Following another node through the store (issue 16): a node serves a response another node
/// stored only if its own key signed it and it is not a rollback. The attacker here holds
/// write access to the store (one stolen database credential) and stores a tampered response,
/// a response signed by another key, and an old `good` response for a revoked certificate.
#[test]
fn a_follower_takes_only_what_its_own_key_signed_and_never_rolls_back() {
    let ca = TestCa::new("Test Root");
    let leaves: Vec<_> = (0..3).map(|i| ca.issue_leaf(&format!("leaf{i}"))).collect();
    let serial = |i: usize| leaves[i].record.serial.clone();
    let key = ResponderKey::ca(ca.signer_dyn());
    // One response per certificate, so each can be attacked on its own.
    let cfg = || ResponderConfig {
        issuance_batch_max: 1,
        ..Default::default()
    };
    let a = responder(&ca, key.clone(), Arc::new(SystemClock), cfg());
    start(&a);
    let b = responder(&ca, key.clone(), Arc::new(SystemClock), cfg());
    start(&b);
    let served = |r: &Responder, i: usize| r.cached(&serial(i)).map(|a| a.der.clone());

    // 1. A tampered signature: refused, the answer served before stays.
    let mut forged = ca.store.get_ocsp_response(&serial(0)).unwrap().unwrap();
    let before = served(&b, 0);
    let last = forged.der.len() - 1;
    forged.der[last] ^= 0x55;
    ca.store.put_ocsp_response(&forged).unwrap();
    let s = b.follow_stored(&serial(0)).unwrap();
    assert_eq!((s.taken, s.refused), (0, 1), "{s:?}");
    assert_eq!(served(&b, 0), before);

    // 2. Validly signed, but by another key (a delegated responder this node does not use).
    let (other, other_cert, _) = ca.ocsp_responder("other-node");
    let c = responder(
        &ca,
        ResponderKey::delegated(other, &other_cert).unwrap(),
        Arc::new(SystemClock),
        cfg(),
    );
    start(&c); // stores its own responses for every certificate
    let s = b.follow_stored(&serial(1)).unwrap();
    assert_eq!((s.taken, s.refused), (0, 1), "{s:?}");

    // 3. A revocation on node A: B withdraws its `good` answer at the feed's word, then takes
    //    A's `revoked` answer.
    let old_good = ca.store.get_ocsp_response(&serial(2)).unwrap().unwrap();
    let good_by_a = {
        let mut g = old_good.clone();
        g.der = served(&a, 2).unwrap();
        g
    };
    ca_core::authority::revoke(
        ca.store.as_ref(),
        &a,
        &serial(2),
        RevocationReason::KeyCompromise,
        Utc::now(),
        "test",
    )
    .unwrap();
    assert_eq!(b.follow_revoked(&serial(2)).withdrawn, 1);
    assert!(
        b.cached(&serial(2)).is_none(),
        "no good answer after the revocation"
    );
    let s = b.follow_stored(&serial(2)).unwrap();
    assert_eq!(s.taken, 1, "{s:?}");
    let revoked = |r: &Responder| {
        matches!(
            r.cached(&serial(2)).and_then(|a| a.cert_status().cloned()),
            Some(CertStatus::Revoked { .. })
        )
    };
    assert!(revoked(&b));

    // 4. The old `good` response replayed into the store (validly signed by the right key):
    //    never taken over a revocation, nor by a node that only heard of the revocation.
    ca.store.put_ocsp_response(&good_by_a).unwrap();
    let s = b.follow_stored(&serial(2)).unwrap();
    assert_eq!((s.taken, s.refused), (0, 1), "{s:?}");
    assert!(revoked(&b));
    let d = responder(&ca, key, Arc::new(SystemClock), cfg());
    d.follow_revoked(&serial(2));
    let s = d.follow_stored(&serial(2)).unwrap();
    assert_eq!((s.taken, s.refused), (0, 1), "{s:?}");
    assert!(d.cached(&serial(2)).is_none());
}

/// Revoking the certificate an issuance group's response was kept under (the group used to
/// be stored once, under its first serial) overwrote the group's record: the other members
/// lost their persisted answer (signed again at the next start; `tryLater` from stateless
/// responders meanwhile). The group is now kept under every member, and every other member
/// keeps a persisted, valid answer.
#[test]
fn revoking_the_certificate_a_group_is_kept_under_keeps_a_persisted_answer_for_the_others() {
    let ca = TestCa::new("Test Root");
    let leaves: Vec<_> = (0..6)
        .map(|i| ca.issue_leaf(&format!("member{i}")))
        .collect();
    let key = ResponderKey::ca(ca.signer_dyn());
    let config = ResponderConfig {
        issuance_batch_max: 8,
        ..ResponderConfig::default()
    };
    let r = Arc::new(responder(
        &ca,
        key.clone(),
        Arc::new(SystemClock),
        config.clone(),
    ));
    let tickets: Vec<_> = leaves.iter().map(|l| r.enqueue_issued(&l.record)).collect();
    for t in tickets {
        r.await_issued(t).unwrap();
    }
    assert_eq!(r.issuance_signing_stats().signatures, 1, "one group");
    let kept_under: Vec<_> = leaves
        .iter()
        .filter(|l| {
            ca.store
                .get_ocsp_response(&l.record.serial)
                .unwrap()
                .is_some()
        })
        .collect();
    assert_eq!(kept_under.len(), leaves.len(), "kept under every member");
    let first = kept_under[0].record.serial.clone();
    ca_core::authority::revoke(
        ca.store.as_ref(),
        r.as_ref(),
        &first,
        RevocationReason::KeyCompromise,
        Utc::now(),
        "test",
    )
    .unwrap();
    for leaf in leaves.iter().filter(|l| l.record.serial != first) {
        let stored = ca
            .store
            .get_ocsp_response(&leaf.record.serial)
            .unwrap()
            .expect("a persisted answer for every other member");
        assert_eq!(stored.der, r.cached(&leaf.record.serial).unwrap().der);
    }
    // A restart signs nothing: every answer is persisted and current.
    let again = responder(&ca, key, Arc::new(SystemClock), config);
    assert_eq!(again.load().unwrap().signed, 0);
    assert!(matches!(
        again.cached(&first).unwrap().cert_status(),
        Some(CertStatus::Revoked { .. })
    ));
}

/// Start-up serves before it re-signs (issue 17's first finding: after an outage longer than
/// the refresh margin every response was due, and a 500k store re-signed them one at a time,
/// 202 s, before either listener accepted a connection): responses that are due but valid are
/// served and left to the refresh pass; expired or missing ones go on the backlog, which the
/// first pass signs in groups; only a status the store contradicts is signed at load.
#[test]
fn start_signs_nothing_that_can_wait_and_the_first_pass_signs_in_groups() {
    let ca = TestCa::new("Test Root");
    let leaves: Vec<_> = (0..20)
        .map(|i| ca.issue_leaf(&format!("leaf{i}")))
        .collect();
    let t0 = Utc::now();
    let clock = Arc::new(FixedClock::new(t0));
    let config = ResponderConfig {
        validity: Duration::hours(4),
        refresh_before: Duration::hours(2),
        ..Default::default()
    };
    let key = ResponderKey::ca(ca.signer_dyn());
    let (_, signed) = start(&responder(&ca, key.clone(), clock.clone(), config.clone()));
    assert_eq!(signed, 20);

    // Every response due (3 h of the 4 left behind), none expired: nothing signed at load,
    // every certificate answered from the store.
    clock.set(t0 + Duration::hours(3));
    let r = responder(&ca, key.clone(), clock.clone(), config.clone());
    let stats = r.load().unwrap();
    assert_eq!((stats.signed, stats.queued), (0, 0), "{stats:?}");
    for l in &leaves {
        let a = r.cached(&l.record.serial).unwrap();
        assert!(a.next_update().unwrap() > clock.now(), "served while valid");
    }
    assert_eq!(
        r.refresh_due().unwrap().refreshed,
        20,
        "the pass re-signs them"
    );

    // Every response expired: queued at load, not served, signed by the first pass in groups.
    clock.set(t0 + Duration::hours(9));
    let r = responder(&ca, key, clock.clone(), config);
    let stats = r.load().unwrap();
    assert_eq!((stats.signed, stats.queued), (0, 20), "{stats:?}");
    let now = clock.now();
    assert!(leaves.iter().all(|l| r
        .cached(&l.record.serial)
        .is_none_or(|a| a.next_update().is_some_and(|n| n <= now))));
    assert_eq!(r.refresh_backlog().unwrap().refreshed, 20);
    let mut distinct = std::collections::HashSet::new();
    for l in &leaves {
        let a = r.cached(&l.record.serial).unwrap();
        assert!(a.next_update().unwrap() > now);
        distinct.insert(a.der.clone());
    }
    assert!(
        distinct.len() <= 20_usize.div_ceil(ResponderConfig::default().issuance_batch_max),
        "signed one by one: {} responses",
        distinct.len()
    );
}
