//! The PostgreSQL store's sessions, on throwaway clusters ([`testkit::pg`]): statements
//! prepared once per session, and deferred writes (the issuance path's unit of work, committed
//! with `synchronous_commit = off`) made durable before the deferral ends, tested by crashing
//! the server (`pg_ctl stop -m immediate`) right after it.

use ca_core::audit::NewAuditEvent;
use ca_core::store::{
    AuditLog, CertRecord, CertStore, Durability, PgStore, RecordStatus, Requester,
};
use chrono::{Duration, Utc};
use testkit::pg::{PgNode, PgServer};

fn record(serial: u8) -> CertRecord {
    let now = ca_core::clock::truncate(Utc::now());
    CertRecord {
        serial: vec![0x22, serial],
        subject: "CN=s.test".into(),
        sans: vec!["dns:s.test".into()],
        identity: "s.test".into(),
        profile: "client".into(),
        not_before: now,
        not_after: now + Duration::hours(1),
        issued_at: now,
        requester: Requester::Token("t".into()),
        spki_sha256: "00".into(),
        der: vec![0x30, 0x00],
        status: RecordStatus::Valid,
        lineage: vec![0x22, serial],
        generation: 1,
    }
}

#[test]
fn a_session_prepares_each_statement_once() {
    let server = PgServer::shared().unwrap();
    let db = server.fresh_database().unwrap();
    // One session, so every call below runs on it.
    let s = PgStore::open_with_pool_size(db.url(), 1).unwrap();
    for i in 0..3 {
        assert!(s.insert_cert(&record(i)).unwrap());
    }
    let _ = s.get_cert(&[0x22, 0]).unwrap();
    let before = s.prepared_statements_for_test().unwrap();
    for i in 3..50 {
        assert!(s.insert_cert(&record(i)).unwrap());
        assert!(s.get_cert(&[0x22, i]).unwrap().is_some());
    }
    assert_eq!(
        s.prepared_statements_for_test().unwrap(),
        before,
        "the same statements were prepared again"
    );
    assert!(before >= 2, "statements are not kept: {before}");
}

/// A server of its own whose WAL writer waits 10 s between flushes, so a write committed
/// with `synchronous_commit = off` is lost by a crash soon after it unless something flushed
/// it.
fn slow_wal_writer() -> (PgNode, String) {
    let node = PgNode::start().unwrap();
    node.alter_system("wal_writer_delay", "10s").unwrap();
    let url = node.create_database("ca").unwrap();
    (node, url)
}

fn crash_and_restart(node: &PgNode) {
    node.stop("immediate").unwrap();
    node.start_again().unwrap();
}

#[test]
fn a_deferred_write_survives_a_crash_right_after_the_deferral_ends() {
    let (node, url) = slow_wal_writer();
    let s = PgStore::open(&url).unwrap();
    s.begin_deferred();
    assert!(s.insert_cert(&record(1)).unwrap());
    s.end_deferred().unwrap();
    drop(s);
    crash_and_restart(&node);
    let s = PgStore::open(&url).unwrap();
    assert!(
        s.get_cert(&[0x22, 1]).unwrap().is_some(),
        "an acknowledged write was lost"
    );
}

#[test]
fn an_audit_append_after_deferred_writes_makes_them_durable() {
    let (node, url) = slow_wal_writer();
    let s = PgStore::open(&url).unwrap();
    s.begin_deferred();
    assert!(s.insert_cert(&record(2)).unwrap());
    s.append_audit(NewAuditEvent::ok("t", "issue", "2"))
        .unwrap();
    s.end_deferred().unwrap();
    drop(s);
    crash_and_restart(&node);
    let s = PgStore::open(&url).unwrap();
    assert!(s.get_cert(&[0x22, 2]).unwrap().is_some(), "write lost");
    assert_eq!(s.verify_audit().unwrap(), 1);
}

#[test]
fn a_deferral_whose_flush_fails_reports_it() {
    let (node, url) = slow_wal_writer();
    let s = PgStore::open(&url).unwrap();
    s.begin_deferred();
    assert!(s.insert_cert(&record(1)).unwrap());
    node.stop("immediate").unwrap();
    let err = s.end_deferred().unwrap_err();
    assert!(err.is_store_unavailable(), "{err}");
}

/// A stateless responder opens the store as a reader: it never migrates, so a schema older
/// than the binary (or none) is refused with what to do, and nothing is created.
#[test]
fn a_reader_never_migrates_and_refuses_a_schema_it_does_not_know() {
    let server = PgServer::shared().unwrap();
    let db = server.fresh_database().unwrap();
    let err = PgStore::open_reader(db.url(), 1).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("version 0") && msg.contains("never migrates"),
        "{msg}"
    );
    // Nothing was created by the refused reader: a node then migrates from scratch.
    drop(PgStore::open(db.url()).unwrap());
    assert!(PgStore::open_reader(db.url(), 1).is_ok());
    // A schema newer than the binary is refused too.
    db.execute("INSERT INTO schema_version (version) VALUES (1000)")
        .unwrap();
    let msg = format!("{:#}", PgStore::open_reader(db.url(), 1).unwrap_err());
    assert!(msg.contains("newer than this binary knows"), "{msg}");
}
