//! The status listener's maintenance: a revocation reaches the CRL while a long OCSP
//! re-signing pass is running, instead of waiting for it (issue 17's second finding: a
//! revocation made during a pass re-signing 152k responses reached the CRL after 62 s).

mod status_support;

use ca_core::ocsp::ResponderConfig;
use ca_core::revocation::RevocationReason;
use ca_core::store::{CertRecord, CertStore, OcspResponseStore, RecordStatus, Requester};
use ca_server::status::StatusConfig;
use chrono::{Duration, Utc};
use status_support::fixture::TestCa;
use status_support::{start, Options};
use std::time::Instant;

/// Certificates whose responses the pass re-signs: enough for a pass of seconds on SoftHSM.
const CERTS: u16 = 6000;

fn record(i: u16) -> CertRecord {
    let now = ca_core::clock::truncate(Utc::now());
    let serial = [0x33, (i >> 8) as u8, i as u8].to_vec();
    CertRecord {
        serial: serial.clone(),
        subject: format!("CN=m{i}.test"),
        sans: vec![format!("dns:m{i}.test")],
        identity: format!("m{i}.test"),
        profile: "client".into(),
        not_before: now,
        not_after: now + Duration::hours(2),
        issued_at: now,
        requester: Requester::Token("t".into()),
        spki_sha256: "00".into(),
        der: vec![0x30, 0x00],
        status: RecordStatus::Valid,
        lineage: serial,
        generation: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_the_crl_while_a_long_ocsp_refresh_pass_runs() {
    let ca = TestCa::new("Maintenance Test CA");
    for i in 0..CERTS {
        assert!(ca.store.insert_cert(&record(i)).unwrap());
    }
    // Every response is due one second after it is signed, and a pass starts every 300 ms:
    // the maintenance task re-signs all of them, pass after pass.
    let validity = Duration::seconds(600);
    let opts = Options {
        responder: ResponderConfig {
            validity,
            refresh_before: validity - Duration::seconds(1),
            ..Default::default()
        },
        http: StatusConfig {
            maintenance_interval: std::time::Duration::from_millis(300),
            ..Default::default()
        },
        ..Default::default()
    };
    // Building the state signs every response once.
    let l = start(&ca, opts).await;
    let built = Utc::now();
    let horizon = built + validity;
    // Responses re-signed since the state was built end after `horizon`.
    let resigned = || {
        let mut n = 0u32;
        ca.store
            .for_each_ocsp_response(&mut |r| {
                n += u32::from(r.next_update > horizon);
                Ok(())
            })
            .unwrap();
        n
    };
    // Revoke early in a re-signing pass.
    let waited = Instant::now();
    loop {
        let n = resigned();
        if n > 0 && n < u32::from(CERTS) / 4 {
            break;
        }
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(30),
            "no re-signing pass was seen starting ({n} re-signed)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let number = l.state.crls().current().unwrap().number;
    let revoked_at = Instant::now();
    l.state
        .revoke(
            record(CERTS / 2).serial,
            RevocationReason::KeyCompromise,
            ca_core::clock::truncate(Utc::now()),
            "test".into(),
        )
        .await
        .unwrap();
    while l.state.crls().current().unwrap().number == number {
        assert!(
            revoked_at.elapsed() < std::time::Duration::from_secs(30),
            "the CRL was never rebuilt after the revocation"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let crl_after = revoked_at.elapsed();
    let resigned = resigned();
    eprintln!(
        "CRL rebuilt {crl_after:?} after the revocation; {resigned} of {CERTS} responses re-signed by then"
    );
    assert!(
        u32::from(CERTS) > resigned,
        "the CRL was rebuilt only after the OCSP re-signing pass had finished ({crl_after:?})"
    );
    assert!(
        crl_after < std::time::Duration::from_secs(1),
        "the revocation waited {crl_after:?} for the CRL (behind the OCSP re-signing pass)"
    );
    l.stop().await;
}
