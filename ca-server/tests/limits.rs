//! Limits against a running server (real SoftHSM, sled, TLS on loopback): durations from
//! requests and flags are range-checked (never a panic), and an oversized body gets a 413 the
//! client actually receives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ca_core::store::prelude::*;
use ca_server::api::types::*;
use common::*;
use http::Method;
use std::path::Path;

struct Row {
    class: &'static str,
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
    /// Words the message must contain (the field and the range).
    says: &'static [&'static str],
}

fn token_body(ttl: &str) -> Vec<u8> {
    serde_json::to_vec(&TokenCreateRequest {
        common_name: Some("range.test".into()),
        ttl: Some(ttl.into()),
        ..Default::default()
    })
    .unwrap()
}

/// Attack: durations that overflow the clock arithmetic (`now + span`: chrono panics) or make
/// no sense. One row per class, each a clear 400 naming the field and the range; the server
/// keeps serving and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_out_of_range_are_400_out_of_range_never_a_panic() {
    let mut srv = TestServer::start().await;
    let certs = |q: &str| format!("/v1/admin/certs?expiring_within={q}");
    let get = |class, q: &str, status, code, says| Row {
        class,
        method: Method::GET,
        path: certs(q),
        body: None,
        status,
        code,
        says,
    };
    let post = |class, ttl: &str, status, code, says| Row {
        class,
        method: Method::POST,
        path: "/v1/admin/tokens".into(),
        body: Some(token_body(ttl)),
        status,
        code,
        says,
    };
    const EW: &[&str] = &["expiring_within", "1s", "36500d"];
    const TTL: &[&str] = &["ttl", "1s", "7d"];
    let rows = vec![
        get(
            "expiring_within: more days than chrono holds",
            "99999999999d",
            400,
            "out_of_range",
            EW,
        ),
        get(
            "expiring_within: fits chrono, overflows now + span",
            "100000000d",
            400,
            "out_of_range",
            EW,
        ),
        get(
            "expiring_within: more digits than u128",
            &"9".repeat(60).add_unit('s'),
            400,
            "out_of_range",
            EW,
        ),
        get(
            "expiring_within: exponent notation",
            "1e30s",
            400,
            "out_of_range",
            EW,
        ),
        get("expiring_within: negative", "-1d", 400, "out_of_range", EW),
        get("expiring_within: zero", "0s", 400, "out_of_range", EW),
        get(
            "expiring_within: not a duration",
            "soon",
            400,
            "bad_request",
            &["expiring_within", "30s"],
        ),
        post("ttl: exponent notation", "1e30s", 400, "out_of_range", TTL),
        post(
            "ttl: overflows now + ttl",
            "100000000d",
            400,
            "out_of_range",
            TTL,
        ),
        post(
            "ttl: more days than chrono holds",
            "99999999999d",
            400,
            "out_of_range",
            TTL,
        ),
        post("ttl: over tokens.max_ttl", "8d", 400, "out_of_range", TTL),
        post("ttl: zero", "0s", 400, "out_of_range", TTL),
        post("ttl: negative", "-5m", 400, "out_of_range", TTL),
        post("ttl: fraction", "1.5h", 400, "bad_request", &["ttl", "90d"]),
    ];
    let so = srv.client(Some(&srv.so));
    let tokens_before = srv.pki.store.list_tokens().unwrap().len();
    for r in &rows {
        let body = r.body.clone().map(|b| ("application/json", b));
        let resp = so
            .raw(r.method.clone(), &r.path, body, &[])
            .await
            .unwrap_or_else(|e| panic!("row {:?}: no answer: {e}", r.class));
        let err = resp.error();
        assert_eq!(
            (resp.status.as_u16(), err.code().unwrap_or("(none)")),
            (r.status, r.code),
            "row {:?}: {err}",
            r.class
        );
        let msg = err.to_string();
        for w in r.says {
            assert!(msg.contains(w), "row {:?}: {msg:?} lacks {w:?}", r.class);
        }
    }
    assert_eq!(srv.pki.store.list_tokens().unwrap().len(), tokens_before);
    // In range still works.
    let ok = so.raw(Method::GET, &certs("48h"), None, &[]).await.unwrap();
    assert_eq!(ok.status.as_u16(), 200);
    let ok = so
        .raw(
            Method::POST,
            "/v1/admin/tokens",
            Some(("application/json", token_body("7d"))),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(ok.status.as_u16(), 200);
    srv.stop().await;
}

trait AddUnit {
    fn add_unit(self, u: char) -> String;
}
impl AddUnit for String {
    fn add_unit(mut self, u: char) -> String {
        self.push(u);
        self
    }
}

/// The admin CLI refuses out-of-range flags before it connects, naming the flag and the range.
#[test]
fn cli_refuses_out_of_range_duration_flags() {
    let bin = env!("CARGO_BIN_EXE_ca-server");
    let conn = [
        "--root",
        "/nonexistent",
        "--cert",
        "/nonexistent",
        "--key",
        "/nonexistent",
    ];
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["token", "create", "--cn", "x", "--ttl", "1e30s"],
            "--ttl",
            "365d",
        ),
        (
            &["token", "create", "--cn", "x", "--ttl", "99999999999d"],
            "--ttl",
            "365d",
        ),
        (
            &["token", "create", "--cn", "x", "--ttl", "0s"],
            "--ttl",
            "365d",
        ),
        (
            &["certs", "list", "--expiring-within", "99999999999d"],
            "--expiring-within",
            "36500d",
        ),
        (
            &["certs", "list", "--expiring-within", "-1d"],
            "--expiring-within",
            "36500d",
        ),
        (
            &["certs", "list", "--expiring-within", "1.5h"],
            "--expiring-within",
            "30s",
        ),
    ];
    for (args, flag, says) in cases {
        let out = std::process::Command::new(bin)
            .args(*args)
            .args(conn)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag) && err.contains(says), "{args:?}: {err}");
        // Refused before reading the (missing) credentials.
        assert!(!err.contains("nonexistent"), "{args:?}: {err}");
    }
}

async fn curl(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Upload `file` to `url` with curl; returns the status and the JSON error code received.
async fn upload(
    url: &str,
    root: &Path,
    file: &Path,
    content_type: &str,
    extra: &[&str],
) -> (String, String, String) {
    let mut args = vec![
        "-sS",
        "--max-time",
        "60",
        "--cacert",
        root.to_str().unwrap(),
        "-H",
        // No `Expect: 100-continue`: the body is on its way before any answer.
        "Expect:",
        "-w",
        "\n%{http_code} %{http_version}",
        "--data-binary",
    ];
    let at = format!("@{}", file.display());
    args.push(&at);
    let ct = format!("Content-Type: {content_type}");
    args.extend(["-H", &ct]);
    args.extend(extra);
    args.push(url);
    let (_, out, err) = curl(&args).await;
    let (body, tail) = out.rsplit_once('\n').unwrap_or(("", &out));
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(String::from))
        .unwrap_or_default();
    (tail.to_string(), code, err)
}

/// Attack/robustness: an 8 MB upload to the enrollment routes. The client must receive the
/// 413 with its JSON error, not a connection reset halfway through its upload; over HTTP/1.1
/// with a Content-Length, chunked, and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_uploads_get_a_413_the_client_receives() {
    let mut srv = TestServer::start().await;
    let root = srv.pki.root_pem_path();
    let big = srv.tmp().join("big.bin");
    std::fs::write(&big, vec![b'x'; 8 * 1024 * 1024]).unwrap();
    let routes = [
        ("/v1/enroll", "application/json"),
        ("/.well-known/est/simpleenroll", "application/pkcs10"),
        ("/v1/renew", "application/json"),
    ];
    let audit_before = srv.audit_count();
    for (path, ct) in routes {
        let url = format!("{}{path}", srv.url);
        for (how, extra) in [
            ("HTTP/1.1 Content-Length", &["--http1.1"][..]),
            (
                "HTTP/1.1 chunked",
                &["--http1.1", "-H", "Transfer-Encoding: chunked"][..],
            ),
            ("HTTP/2", &["--http2"][..]),
        ] {
            for attempt in 0..3 {
                let (status, code, err) = upload(&url, &root, &big, ct, extra).await;
                assert!(
                    status.starts_with("413 ") && code == "payload_too_large",
                    "{path} {how} attempt {attempt}: status {status:?} code {code:?} curl: {err}"
                );
                if how == "HTTP/2" {
                    assert!(status.ends_with(" 2"), "{status}");
                }
            }
        }
    }
    // Anonymous refusals: counted for the audit summary, not appended one by one.
    assert_eq!(
        srv.audit_count(),
        audit_before,
        "anonymous 413s audited one by one"
    );
    assert!(
        srv.state().unauthenticated.pending() >= 27,
        "refusals not counted"
    );
    // The server still serves.
    let ok = srv
        .anon()
        .raw(Method::GET, "/v1/chain", None, &[])
        .await
        .unwrap();
    assert_eq!(ok.status.as_u16(), 200);
    srv.stop().await;
}
