//! Segregation of duties against a running server (real SoftHSM, sled, TLS on loopback): who
//! may revoke administrator and server certificates, the last security officer, and the
//! break-glass recovery when none is left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ca_core::store::{prelude::*, CertFilter};
use ca_server::api::types::*;
use ca_server::auth::Role;
use ca_server::client::{ApiClient, ClientError};
use common::*;

async fn revoke(client: &ApiClient, serial: &str) -> Result<RevokeResponse, ClientError> {
    client
        .post_json(
            "/v1/admin/revoke",
            &RevokeRequest {
                serial: serial.into(),
                reason: Some("cessationOfOperation".into()),
                lineage: false,
            },
        )
        .await
}

fn server_tls_serial(srv: &TestServer) -> String {
    srv.pki
        .store
        .list_certs(&CertFilter::default())
        .unwrap()
        .into_iter()
        .find(|r| r.profile == ca_server::service::SERVER_TLS_PROFILE)
        .unwrap()
        .serial_hex()
}

fn is_revoked(srv: &TestServer, serial_hex: &str) -> bool {
    srv.pki
        .store
        .get_cert(&hex::decode(serial_hex).unwrap())
        .unwrap()
        .unwrap()
        .is_revoked()
}

/// The last audit event for `object` with `action`.
fn last_event(srv: &TestServer, action: &str, object: &str) -> ca_core::audit::AuditEvent {
    srv.pki
        .store
        .audit_events(1, usize::MAX)
        .unwrap()
        .into_iter()
        .rev()
        .find(|e| e.event.action == action && e.event.object == object)
        .unwrap_or_else(|| panic!("no {action} event for {object}"))
}

/// A new administrator certificate through the API (token for `_admin`, then enrollment),
/// made by `by` (a security officer).
async fn new_admin(srv: &TestServer, by: &Identity, name: &str, role: Role) -> Identity {
    let (issued, key) = ca_server::cli::create_admin_cert(
        &srv.client(Some(by)),
        &srv.pki.root_pem_path(),
        name,
        role,
    )
    .await
    .unwrap();
    Identity {
        cert: issued.certificate,
        key,
    }
}

/// Attack: an operator (who may revoke subscriber certificates) revokes the security officers'
/// and auditors' certificates, or the server's own TLS certificate, to lock the officers out or
/// take the CA down. Refused with `forbidden` and audited; a security officer may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_cannot_revoke_administrator_or_server_certificates() {
    let mut srv = TestServer::start().await;
    let op = srv.client(Some(&srv.operator));
    let tls = server_tls_serial(&srv);
    let targets = [
        ("security officer", serial_of(&srv.so.cert)),
        ("auditor", serial_of(&srv.auditor.cert)),
        ("operator (itself)", serial_of(&srv.operator.cert)),
        ("server TLS", tls.clone()),
    ];
    for (what, serial) in &targets {
        let err = revoke(&op, serial)
            .await
            .expect_err(&format!("operator revoked the {what} certificate"));
        assert_eq!(err.code(), Some("forbidden"), "{what}: {err}");
        assert!(err.to_string().contains("security officer"), "{err}");
        assert!(!is_revoked(&srv, serial), "{what}");
        let ev = last_event(&srv, "revoke", serial);
        assert_eq!(ev.event.result, "forbidden", "{what}: {ev:?}");
        assert!(ev.event.actor.contains("test-operator"), "{ev:?}");
    }
    // The operator still revokes subscriber certificates.
    let token = srv.token("leaf.test", &[], "client").await;
    let (_, leaf) = srv.enroll(&token, "leaf.test", &[]).await;
    revoke(&op, &leaf.serial).await.unwrap();
    // A security officer may revoke the auditor and the operator.
    let so = srv.client(Some(&srv.so));
    revoke(&so, &serial_of(&srv.auditor.cert)).await.unwrap();
    revoke(&so, &serial_of(&srv.operator.cert)).await.unwrap();
    assert_eq!(
        last_event(&srv, "revoke", &serial_of(&srv.operator.cert))
            .event
            .result,
        "ok"
    );
    srv.stop().await;
}

/// Attack: the last security officer's certificate is revoked (by mistake, by the officer, or
/// by a stolen officer key to deny recovery), leaving nobody who can mint administrators.
/// Refused with `last_security_officer` and audited, whoever asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_security_officer_certificate_is_never_revoked() {
    let mut srv = TestServer::start().await;
    let so_serial = serial_of(&srv.so.cert);
    let so = srv.client(Some(&srv.so));
    let err = revoke(&so, &so_serial)
        .await
        .expect_err("the last officer revoked itself");
    assert_eq!(err.code(), Some("last_security_officer"), "{err}");
    assert!(
        matches!(&err, ClientError::Api { status, .. } if status.as_u16() == 409),
        "{err}"
    );
    assert!(!is_revoked(&srv, &so_serial));
    assert_eq!(
        last_event(&srv, "revoke", &so_serial).event.result,
        "last_security_officer"
    );
    // With a second officer, either may go, but not both.
    let so2 = new_admin(&srv, &srv.so, "second-officer", Role::SecurityOfficer).await;
    let so2_serial = serial_of(&so2.cert);
    revoke(&so, &so_serial).await.unwrap();
    let c2 = srv.client(Some(&so2));
    let err = revoke(&c2, &so2_serial).await.expect_err("no officer left");
    assert_eq!(err.code(), Some("last_security_officer"), "{err}");
    assert!(!is_revoked(&srv, &so2_serial));
    srv.stop().await;
}

/// Race: two officers revoke each other's certificates at the same moment, again and again.
/// Each check alone sees the other officer still valid; only serialising check and revocation
/// keeps one officer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officers_revoking_each_other_concurrently_leave_one() {
    let mut srv = TestServer::start().await;
    // A store with many certificates, as in production: the officer check scans them, which
    // widens the window between check and revocation that the race needs.
    let template = srv
        .pki
        .store
        .get_cert(&hex::decode(serial_of(&srv.operator.cert)).unwrap())
        .unwrap()
        .unwrap();
    let store = srv.pki.store.clone();
    tokio::task::spawn_blocking(move || {
        ca_core::store::deferred(store.as_ref(), || {
            for i in 0u32..20_000 {
                let mut r = template.clone();
                r.serial = [&[0x7f][..], &i.to_be_bytes()[..], &[1; 11][..]].concat();
                r.profile = "client".into();
                r.identity = format!("filler-{i}.test");
                assert!(store.insert_cert(&r)?);
            }
            Ok::<_, ca_core::Error>(())
        })
    })
    .await
    .unwrap()
    .unwrap();
    let mut survivor = srv.so.clone();
    for round in 0..8 {
        let other = new_admin(
            &srv,
            &survivor,
            &format!("officer-{round}"),
            Role::SecurityOfficer,
        )
        .await;
        let (a, b) = (survivor.clone(), other.clone());
        let (sa, sb) = (serial_of(&a.cert), serial_of(&b.cert));
        // Several requests per side, all in flight together, to make the check-then-revoke
        // windows overlap.
        let mut tasks = Vec::new();
        for _ in 0..4 {
            for (who, target) in [(&a, &sb), (&b, &sa)] {
                let c = srv.client(Some(who));
                let target = target.clone();
                tasks.push(tokio::spawn(async move { revoke(&c, &target).await }));
            }
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let valid: Vec<bool> = [&sa, &sb].iter().map(|s| !is_revoked(&srv, s)).collect();
        assert_eq!(
            valid.iter().filter(|v| **v).count(),
            1,
            "round {round}: {results:?}"
        );
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(
                        e.code(),
                        Some("last_security_officer" | "cert_revoked" | "already_revoked")
                    ),
                    "round {round}: {e}"
                );
            }
        }
        survivor = if valid[0] { a } else { b };
    }
    srv.stop().await;
}
