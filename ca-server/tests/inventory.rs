//! Inventory at scale against a running server (real SoftHSM, sled, TLS on loopback): the
//! admin listing pages with a keyset cursor (every certificate exactly once, through the client
//! and through the `ca-server certs` CLI), `certs export --json` streams NDJSON page by page, and
//! a cursor the server did not hand out for the listing is `400 bad_cursor` and changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use ca_core::store::prelude::*;
use ca_server::api::types::*;
use common::*;
use std::collections::BTreeSet;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ca-server");

/// Files and variables for the admin CLI, as the auditor (who may read certificates).
struct Cli {
    vars: Vec<(&'static str, String)>,
}

impl Cli {
    fn new(srv: &TestServer) -> Cli {
        let dir = srv.tmp();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.to_str().unwrap().to_string()
        };
        Cli {
            vars: vec![
                ("CA_URL", srv.url.clone()),
                ("CA_ROOT", write("cli-root.pem", &srv.root_pem)),
                ("CA_ADMIN_CERT", write("cli-auditor.crt", &srv.auditor.cert)),
                ("CA_ADMIN_KEY", write("cli-auditor.key", &srv.auditor.key)),
            ],
        }
    }

    /// Run `ca-server ARGS` (off the async runtime); (success, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let vars = self.vars.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(BIN)
                .args(&args)
                .env_remove("SOFTHSM2_CONF")
                .envs(vars)
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .unwrap()
    }
}

/// Enroll `n` certificates and revoke every third; returns their serials.
async fn issue(srv: &TestServer, n: usize) -> Vec<String> {
    let mut serials = Vec::new();
    for i in 0..n {
        let cn = format!("inv{i}.test");
        let token = srv.token(&cn, &[], "client").await;
        let (_, issued) = srv.enroll(&token, &cn, &[]).await;
        if i % 3 == 0 {
            let _: RevokeResponse = srv
                .client(Some(&srv.operator))
                .post_json(
                    "/v1/admin/revoke",
                    &RevokeRequest {
                        serial: issued.serial.clone(),
                        reason: Some("superseded".into()),
                        lineage: false,
                    },
                )
                .await
                .unwrap();
        }
        serials.push(issued.serial);
    }
    serials
}

/// Every stored certificate: serial (hex) -> DER.
fn stored(srv: &TestServer) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut all = std::collections::BTreeMap::new();
    srv.pki
        .store
        .for_each_cert(&mut |c| {
            all.insert(c.serial_hex(), c.der);
            Ok(())
        })
        .unwrap();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_every_certificate_once_and_export_streams_ndjson() {
    let srv = TestServer::start().await;
    issue(&srv, 14).await;
    let all = stored(&srv);
    // The 14, the three test administrators and the server's TLS certificate.
    assert!(all.len() >= 17, "{}", all.len());
    let want: BTreeSet<String> = all.keys().cloned().collect();

    // The client, pages of 4.
    let client = srv.client(Some(&srv.auditor));
    let mut q = CertsQuery {
        limit: Some(4),
        ..Default::default()
    };
    let (mut listed, mut pages) = (Vec::new(), Vec::new());
    loop {
        let page = client.list_certs(&q).await.unwrap();
        assert!(page.certs.len() <= 4);
        listed.extend(page.certs.iter().map(|c| c.serial.clone()));
        pages.push(page.clone());
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    assert!(pages.len() > 1, "more than one page");
    assert_eq!(listed.len(), want.len(), "no certificate twice");
    assert_eq!(listed.iter().cloned().collect::<BTreeSet<_>>(), want);

    let cli = Cli::new(&srv);
    // One page as JSON: the cursor of the next page is in the answer.
    let (ok, out, err) = cli.run(&["certs", "list", "--limit", "4", "--json"]).await;
    assert!(ok, "{err}");
    let first: CertsResponse = serde_json::from_str(&out).unwrap();
    assert_eq!(first.certs.len(), 4);
    let cursor = first.next_cursor.clone().expect("a next page");
    // As a table, the command for the next page goes to standard error.
    let (ok, out, err) = cli.run(&["certs", "list", "--limit", "4"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 5, "header and 4 rows: {out}");
    assert!(err.contains(&format!("--cursor {cursor}")), "{err}");
    // --cursor continues where the first page ended: the client's second page.
    let (ok, out, err) = cli
        .run(&[
            "certs", "list", "--limit", "4", "--json", "--cursor", &cursor,
        ])
        .await;
    assert!(ok, "{err}");
    let second: CertsResponse = serde_json::from_str(&out).unwrap();
    assert_eq!(
        second.certs.iter().map(|c| &c.serial).collect::<Vec<_>>(),
        pages[1].certs.iter().map(|c| &c.serial).collect::<Vec<_>>()
    );
    // --all follows every cursor: JSON lines, each certificate once.
    let (ok, out, err) = cli
        .run(&["certs", "list", "--all", "--limit", "4", "--json"])
        .await;
    assert!(ok, "{err}");
    let lines: Vec<CertSummary> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), want.len());
    assert_eq!(
        lines
            .iter()
            .map(|c| c.serial.clone())
            .collect::<BTreeSet<_>>(),
        want
    );
    // --all as a table: one header, one row per certificate.
    let (ok, out, err) = cli.run(&["certs", "list", "--all", "--limit", "3"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), want.len() + 1, "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("SERIAL")).count(), 1);

    // Export to a file, with PEM: NDJSON, every certificate once, the PEM its stored DER.
    let file = srv.tmp().join("inventory.ndjson");
    let (ok, _, err) = cli
        .run(&[
            "certs",
            "export",
            "--json",
            "--pem",
            "--out",
            file.to_str().unwrap(),
        ])
        .await;
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("exported {} certificates", want.len())),
        "{err}"
    );
    assert!(!file.with_extension("partial").exists());
    let text = std::fs::read_to_string(&file).unwrap();
    let mut exported = BTreeSet::new();
    for line in text.lines() {
        let c: CertSummary = serde_json::from_str(line).unwrap();
        let der =
            ca_core::x509::pem_decode(c.pem.as_deref().unwrap().as_bytes(), "CERTIFICATE").unwrap();
        assert_eq!(&der, &all[&c.serial], "{}", c.serial);
        assert!(exported.insert(c.serial), "exported twice");
    }
    assert_eq!(exported, want);
    // An existing file is never overwritten.
    let (ok, _, err) = cli
        .run(&["certs", "export", "--out", file.to_str().unwrap()])
        .await;
    assert!(!ok && err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    // To standard output, with a filter: the revoked ones, without PEM.
    let (ok, out, err) = cli
        .run(&["certs", "export", "--json", "--status", "revoked"])
        .await;
    assert!(ok, "{err}");
    let revoked: Vec<CertSummary> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(revoked.len(), 5, "every third of 14");
    assert!(revoked
        .iter()
        .all(|c| c.status == "revoked" && c.pem.is_none()));
}

/// Attack/bad input: cursors the server did not hand out for this listing (garbage, cut,
/// another version, a serial too long, a cursor of another listing's filters) are `400
/// bad_cursor`; nothing is listed, nothing is written, and the real cursor still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cursors_are_400_bad_cursor_and_change_nothing() {
    let srv = TestServer::start().await;
    issue(&srv, 4).await;
    let client = srv.client(Some(&srv.auditor));
    let page = |cursor: Option<String>| CertsQuery {
        limit: Some(2),
        cursor,
        ..Default::default()
    };
    let good = client
        .list_certs(&page(None))
        .await
        .unwrap()
        .next_cursor
        .unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let raw = b64.decode(&good).unwrap();
    let edited = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = raw.clone();
        f(&mut b);
        b64.encode(b)
    };
    let audit_before = srv.audit_count();
    let certs_before = srv.cert_count();
    let cases: Vec<(&str, CertsQuery)> = vec![
        ("not base64url", page(Some("!!not-a-cursor!!".into()))),
        ("padded standard base64", page(Some(format!("{good}=")))),
        ("cut short", page(Some(good[..6].to_string()))),
        ("filter digest only", page(Some(edited(&|b| b.truncate(8))))),
        ("unknown version", page(Some(edited(&|b| b[8] = 9)))),
        ("unknown order", page(Some(edited(&|b| b[9] = 7)))),
        ("no serial", page(Some(edited(&|b| b.truncate(18))))),
        (
            "serial over 20 octets",
            page(Some(edited(&|b| b.extend_from_slice(&[7; 21])))),
        ),
        ("too long to be a cursor", page(Some("A".repeat(400)))),
        (
            "a cursor of the unfiltered listing, with a status filter",
            CertsQuery {
                status: Some("revoked".into()),
                ..page(Some(good.clone()))
            },
        ),
        (
            "a cursor of the unfiltered listing, with an expiry filter",
            CertsQuery {
                expiring_within: Some("30d".into()),
                ..page(Some(good.clone()))
            },
        ),
    ];
    for (what, q) in &cases {
        let err = client.list_certs(q).await.expect_err(what);
        match &err {
            ca_server::client::ClientError::Api {
                status,
                code,
                message,
                ..
            } => {
                assert_eq!(status.as_u16(), 400, "{what}");
                assert_eq!(code, "bad_cursor", "{what}: {message}");
                assert!(message.contains("cursor"), "{what}: {message}");
            }
            other => panic!("{what}: {other}"),
        }
    }
    assert_eq!(srv.audit_count(), audit_before, "nothing written");
    assert_eq!(srv.cert_count(), certs_before);
    // The real cursor still works.
    let next = client.list_certs(&page(Some(good))).await.unwrap();
    assert_eq!(next.certs.len(), 2);
    // The CLI says so and fails.
    let cli = Cli::new(&srv);
    let (ok, _, err) = cli.run(&["certs", "list", "--cursor", "garbage!"]).await;
    assert!(!ok);
    assert!(err.contains("bad_cursor"), "{err}");
}

/// `GET /v1/admin/certs/counts` and `ca-server certs counts` against a running server: the
/// numbers are what the test issued and revoked (and what a scan of the store finds), the CLI
/// prints the same as a table and as JSON, and a caller whose role does not allow reading
/// certificates (an operator, a subscriber's certificate) is refused `403 forbidden`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_come_from_the_counters_and_match_what_was_issued_and_revoked() {
    let srv = TestServer::start().await;
    let auditor = srv.client(Some(&srv.auditor));
    let before = auditor.cert_counts().await.unwrap();
    assert_eq!(before.by_profile.get("client"), None, "{before:?}");
    // 9 client certificates, 3 of them revoked (0, 3, 6), and one revoked twice.
    let serials = issue(&srv, 9).await;
    let again = srv
        .client(Some(&srv.operator))
        .post_json::<_, RevokeResponse>(
            "/v1/admin/revoke",
            &RevokeRequest {
                serial: serials[0].clone(),
                reason: Some("superseded".into()),
                lineage: false,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some("already_revoked"));

    let c = auditor.cert_counts().await.unwrap();
    assert_eq!(
        c.by_profile["client"],
        StatusCounts {
            valid: 6,
            revoked: 3
        }
    );
    // Every stored certificate (the administrators and the server's TLS certificate too), as a
    // scan of the store counts them.
    let mut scan: std::collections::BTreeMap<String, StatusCounts> = Default::default();
    srv.pki
        .store
        .for_each_cert(&mut |r| {
            let e = scan.entry(r.profile.clone()).or_default();
            if r.is_revoked() {
                e.revoked += 1;
            } else {
                e.valid += 1;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(c.by_profile, scan);
    assert_eq!(
        c.total.valid + c.total.revoked,
        scan.values().map(|s| s.valid + s.revoked).sum::<u64>()
    );
    // Every valid certificate falls in one of expired / within 30 days / later; the client
    // profile's certificates are short-lived, so they are within 30 days.
    let e = &c.expiry;
    assert_eq!(e.expired + e.within_30d + e.later, c.total.valid);
    assert!(e.within_24h <= e.within_7d && e.within_7d <= e.within_30d);
    assert!(e.within_30d >= 6, "{e:?}");

    // The CLI: JSON is the API's answer; the table has a row per profile.
    let cli = Cli::new(&srv);
    let (ok, out, err) = cli.run(&["certs", "counts", "--json"]).await;
    assert!(ok, "{err}");
    let mut json: CertCountsResponse = serde_json::from_str(&out).unwrap();
    json.as_of = c.as_of.clone();
    assert_eq!(json, c);
    let (ok, out, err) = cli.run(&["certs", "counts"]).await;
    assert!(ok, "{err}");
    let client_row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("client "))
        .unwrap_or_else(|| panic!("no client row in\n{out}"))
        .split_whitespace()
        .collect();
    assert_eq!(client_row, ["client", "6", "3"], "{out}");
    assert!(out.contains("within 24h"), "{out}");
    let (ok, out, _) = cli.run(&["certs", "counts", "--help"]).await;
    assert!(ok && out.contains("counters"), "{out}");

    // Refused: an operator (may revoke, not read certificates) and a subscriber certificate.
    let err = srv
        .client(Some(&srv.operator))
        .cert_counts()
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.to_string().contains("403")),
        (Some("forbidden"), true),
        "{err}"
    );
    let token = srv.token("subscriber.test", &[], "client").await;
    let (subscriber, _) = srv.enroll(&token, "subscriber.test", &[]).await;
    let err = srv
        .client(Some(&subscriber))
        .cert_counts()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("forbidden"), "{err}");
    // Without a certificate: 401.
    let err = srv.client(None).cert_counts().await.unwrap_err();
    assert_eq!(err.code(), Some("client_cert_required"), "{err}");
}
