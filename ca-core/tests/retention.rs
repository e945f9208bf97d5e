//! Retention and the OCSP responder (README "Retention"): a response signed at issuance for a
//! group of certificates is stored once, under the group's first serial. Pruning that
//! certificate removes the record; the responder stores the response again under every member
//! whose answer it still is, so a restart loads their answers without signing, and a member
//! whose answer changed since (revoked) keeps its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ocsp_fixture;

use ca_core::clock::SystemClock;
use ca_core::ocsp::{Responder, ResponderConfig, ResponderKey};
use ca_core::revocation::{CertStatus, RevocationReason};
use ca_core::store::{prelude::*, CertCutoff, StoredOcspResponse};
use chrono::{Duration, Utc};
use ocsp_fixture::TestCa;
use std::sync::Arc;

fn stored(ca: &TestCa) -> Vec<StoredOcspResponse> {
    let mut v = Vec::new();
    ca.store
        .for_each_ocsp_response(&mut |r| {
            v.push(r);
            Ok(())
        })
        .unwrap();
    v
}

#[test]
fn pruning_a_group_s_first_certificate_keeps_the_members_persisted_answers() {
    let ca = TestCa::new("Retention Root");
    // The first certificate expires a second before the others (notAfter has whole seconds),
    // so a prune with a limit of one takes exactly it.
    let first = ca.issue_leaf_with("first", false);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let members: Vec<_> = (0..3)
        .map(|i| ca.issue_leaf_with(&format!("member{i}"), false))
        .collect();
    assert!(first.record.not_after < members[0].record.not_after);
    let config = ResponderConfig {
        issuance_batch_max: 8,
        ..ResponderConfig::default()
    };
    let key = ResponderKey::ca(ca.signer_dyn());
    let r = Responder::new(
        &ca.cert_der,
        key.clone(),
        ca.store.clone(),
        Arc::new(SystemClock),
        config.clone(),
    )
    .unwrap();
    let tickets: Vec<_> = std::iter::once(&first)
        .chain(&members)
        .map(|l| r.enqueue_issued(&l.record))
        .collect();
    for t in tickets {
        r.await_issued(t).unwrap();
    }
    let rows = stored(&ca);
    assert_eq!(rows.len(), 4, "one group response, read under each member");
    assert!(rows.iter().all(|r| r.der == rows[0].der), "one signature");
    let group_der = rows[0].der.clone();
    // A member revoked since has its own response.
    ca_core::authority::revoke(
        ca.store.as_ref(),
        &r,
        &members[2].record.serial,
        RevocationReason::Superseded,
        Utc::now(),
        "test",
    )
    .unwrap();

    let pruned = ca
        .store
        .prune_expired_certs(
            &CertCutoff {
                expired_before: first.record.not_after + Duration::seconds(1),
                revoked_listed_before: None,
            },
            1,
        )
        .unwrap();
    assert_eq!(pruned.serials, vec![first.record.serial.clone()]);
    // The members link to the group's one copy, which stays: nothing to keep again.
    assert!(
        pruned.ocsp_responses.is_empty(),
        "{:?}",
        pruned.ocsp_responses
    );
    for serial in &pruned.serials {
        r.forget_pruned(serial);
    }
    assert!(r.cached(&first.record.serial).is_none());
    let rows = stored(&ca);
    let row = |serial: &[u8]| rows.iter().find(|r| r.serial == serial).cloned();
    assert!(row(&first.record.serial).is_none());
    for m in &members[..2] {
        assert_eq!(
            row(&m.record.serial).unwrap().der,
            group_der,
            "the two members still answered by the group response"
        );
    }
    assert_ne!(
        row(&members[2].record.serial).unwrap().der,
        group_der,
        "the revoked member keeps its own response"
    );

    // A restart signs nothing: every remaining certificate has its persisted answer, each with
    // its own status.
    let r2 = Responder::new(
        &ca.cert_der,
        key,
        ca.store.clone(),
        Arc::new(SystemClock),
        config,
    )
    .unwrap();
    let stats = r2.load().unwrap();
    assert_eq!(stats.signed, 0, "{stats:?}");
    for m in &members[..2] {
        assert_eq!(
            r2.cached(&m.record.serial).unwrap().cert_status(),
            Some(&CertStatus::Good)
        );
    }
    assert!(matches!(
        r2.cached(&members[2].record.serial).unwrap().cert_status(),
        Some(CertStatus::Revoked { .. })
    ));
}
