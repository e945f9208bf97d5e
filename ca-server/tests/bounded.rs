//! Bounded resources on both listeners, as attacks against a running server (real SoftHSM,
//! sled, sockets on loopback): clients that never finish their headers are cut off, connection
//! caps refuse the excess while the connections already open (and OCSP) keep working, unique
//! OCSP requests cannot grow the request memo, and anonymous failures cannot grow the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ca_core::ocsp::x509_ocsp::{self, OcspRequest, Request, TbsRequest};
use ca_core::ocsp::{HashAlg, OcspIssuer};
use ca_core::profile::Span;
use ca_core::store::prelude::*;
use ca_server::api::types::*;
use common::*;
use der::asn1::OctetString;
use der::Encode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use x509_cert::ext::Extension;

fn secs(n: i64) -> Span {
    Span(chrono::Duration::seconds(n))
}

/// Connect to `to` from the loopback address `from` (127.0.0.x: a second client host).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((from, 0))).unwrap();
    s.connect(to).await.unwrap()
}

/// Read until the peer closes; how long that took. Panics after `max`.
async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, max: Duration, what: &str) -> Duration {
    let t = closed_within_inner(s, max, what).await;
    eprintln!("{what}: cut off after {t:?}");
    t
}

async fn closed_within_inner<S: AsyncRead + Unpin>(
    s: &mut S,
    max: Duration,
    what: &str,
) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let r = tokio::time::timeout(max, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(r.is_ok(), "{what}: still open after {max:?}");
    start.elapsed()
}

/// One HTTP/1.1 request on a kept-alive connection: (status, body).
async fn http1<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if let Some((ct, b)) = body {
        req.push_str(&format!(
            "Content-Type: {ct}\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    if let Some((_, b)) = body {
        out.extend_from_slice(b);
    }
    s.write_all(&out).await?;
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((status, body))
}

/// DER OCSPRequest for these CertIDs with these request extensions.
fn ocsp_request(cert_id: x509_ocsp::CertId, extensions: Option<Vec<Extension>>) -> Vec<u8> {
    OcspRequest {
        tbs_request: TbsRequest {
            version: Default::default(),
            requestor_name: None,
            request_list: vec![Request {
                req_cert: cert_id,
                single_request_extensions: None,
            }],
            request_extensions: extensions,
        },
        optional_signature: None,
    }
    .to_der()
    .unwrap()
}

/// Whether an OCSP response body says `successful` (RFC 6960 4.2.1: the first field).
fn ocsp_successful(body: &[u8]) -> bool {
    body.windows(3).take(6).any(|w| w == [0x0a, 0x01, 0x00])
}

async fn ocsp_post<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, der: &[u8]) -> bool {
    match http1(s, "POST", "/ocsp", Some(("application/ocsp-request", der))).await {
        Ok((200, body)) => ocsp_successful(&body),
        _ => false,
    }
}

/// A TLS client trusting the test root, offering `alpn`, optionally with a client identity.
fn tls_connector(
    srv: &TestServer,
    alpn: &[&[u8]],
    id: Option<&Identity>,
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut srv.root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(ca_server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match id {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let certs = rustls_pemfile::certs(&mut id.cert.as_bytes())
                .map(|c| c.unwrap())
                .collect();
            let key = rustls_pemfile::private_key(&mut id.key.as_bytes())
                .unwrap()
                .unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

fn server_name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("localhost").unwrap()
}

/// The HTTP/2 client preface, an empty SETTINGS frame, and a HEADERS frame for stream 1 that
/// announces more header blocks (no END_HEADERS) which never come.
fn h2_unfinished_headers() -> Vec<u8> {
    let mut v = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    v.extend_from_slice(&[0, 0, 0, 0x04, 0, 0, 0, 0, 0]);
    v.extend_from_slice(&[0, 0, 1, 0x01, 0x01, 0, 0, 0, 1, 0x82]);
    v
}

async fn metrics_text(srv: &TestServer) -> String {
    let addr: SocketAddr = srv
        .status_url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut s = connect_from([127, 0, 0, 9], addr).await;
    let (status, body) = http1(&mut s, "GET", "/metrics", None).await.unwrap();
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

fn metric(text: &str, line_prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

fn status_addr(srv: &TestServer) -> SocketAddr {
    srv.status_url
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

fn api_addr(srv: &TestServer) -> SocketAddr {
    srv.url.trim_start_matches("https://").parse().unwrap()
}

/// Attack (slowloris) on the plain-HTTP status listener: a client that connects and sends
/// nothing, one that trickles header bytes forever, one that opens HTTP/2 (prior knowledge)
/// and never finishes its HEADERS. Each is cut off within `limits.status.header_read_timeout`
/// (1 s here) plus a small grace; an honest client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_listener_cuts_off_clients_that_never_finish_their_headers() {
    let mut opts = Options {
        status: true,
        ..Default::default()
    };
    opts.limits.status.header_read_timeout = secs(1);
    let mut srv = TestServer::with(opts).await;
    let addr = status_addr(&srv);

    let mut silent = TcpStream::connect(addr).await.unwrap();
    let t = closed_within(&mut silent, Duration::from_secs(5), "silent client").await;
    assert!(t < Duration::from_millis(2500), "silent client held {t:?}");

    // Trickle: one header byte every 200 ms, so bytes keep arriving but headers never end.
    let trickle = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = trickle.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(b"GET /crl HTTP/1.1\r\nHost: x\r\n").await;
        for _ in 0..100 {
            if wr.write_all(b"X").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let t = closed_within(&mut rd, Duration::from_secs(5), "trickling client").await;
    assert!(
        t < Duration::from_millis(2500),
        "trickling client held {t:?}"
    );
    writer.abort();

    let mut h2 = TcpStream::connect(addr).await.unwrap();
    h2.write_all(&h2_unfinished_headers()).await.unwrap();
    let t = closed_within(&mut h2, Duration::from_secs(6), "HTTP/2 client").await;
    assert!(t < Duration::from_millis(3500), "HTTP/2 client held {t:?}");

    // An honest client is served.
    let mut ok = TcpStream::connect(addr).await.unwrap();
    let (status, _) = http1(&mut ok, "GET", "/crl", None).await.unwrap();
    assert_eq!(status, 200);
    let m = metrics_text(&srv).await;
    assert!(
        metric(
            &m,
            "ca_connections_closed_total{listener=\"status\",reason=\"header_timeout\"}"
        ) >= 3,
        "{m}"
    );
    srv.stop().await;
}

/// Attack (slowloris) on the HTTPS API: a client that never starts the TLS handshake, one that
/// completes it and sends nothing, one that completes it (HTTP/1.1) and never finishes its
/// headers, one that completes it with HTTP/2
/// and never finishes its HEADERS. Each is cut off within `limits.handshake_timeout` /
/// `limits.header_read_timeout` (1 s here) plus a small grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_cuts_off_clients_that_never_finish_the_handshake_or_their_headers() {
    let mut opts = Options {
        status: true,
        ..Default::default()
    };
    opts.limits.header_read_timeout = secs(1);
    opts.limits.handshake_timeout = secs(1);
    let mut srv = TestServer::with(opts).await;
    let addr = api_addr(&srv);

    let mut no_tls = TcpStream::connect(addr).await.unwrap();
    let t = closed_within(&mut no_tls, Duration::from_secs(5), "no handshake").await;
    assert!(t < Duration::from_millis(2500), "no handshake held {t:?}");

    let h1 = tls_connector(&srv, &[b"http/1.1"], None);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = h1.connect(server_name(), tcp).await.expect("TLS handshake");
    let t = closed_within(&mut tls, Duration::from_secs(5), "TLS, then nothing").await;
    assert!(
        t < Duration::from_millis(2500),
        "silent TLS client held {t:?}"
    );

    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = h1.connect(server_name(), tcp).await.expect("TLS handshake");
    tls.write_all(b"GET /v1/chain HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let t = closed_within(&mut tls, Duration::from_secs(5), "TLS, HTTP/1.1").await;
    assert!(
        t < Duration::from_millis(2500),
        "HTTP/1.1 client held {t:?}"
    );

    let h2 = tls_connector(&srv, &[b"h2"], None);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = h2.connect(server_name(), tcp).await.expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(&h2_unfinished_headers()).await.unwrap();
    let t = closed_within(&mut tls, Duration::from_secs(6), "TLS, HTTP/2").await;
    assert!(t < Duration::from_millis(3500), "HTTP/2 client held {t:?}");

    let chain = srv
        .anon()
        .raw(http::Method::GET, "/v1/chain", None, &[])
        .await
        .unwrap();
    assert_eq!(chain.status.as_u16(), 200);
    let m = metrics_text(&srv).await;
    assert!(
        metric(
            &m,
            "ca_connections_closed_total{listener=\"api\",reason=\"handshake_timeout\"}"
        ) >= 1,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "ca_connections_closed_total{listener=\"api\",reason=\"header_timeout\"}"
        ) >= 3,
        "{m}"
    );
    srv.stop().await;
}

/// An HTTP/2 connection (prior knowledge, on the status listener) that served a request and
/// then sits idle, answering the server's PINGs, is shut down after `idle_timeout` (2 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_after_the_idle_timeout() {
    use http_body_util::{BodyExt, Empty};
    let mut opts = Options {
        status: true,
        ..Default::default()
    };
    opts.limits.status.idle_timeout = secs(2);
    opts.limits.http2_keep_alive_interval = secs(1);
    let mut srv = TestServer::with(opts).await;
    let tcp = TcpStream::connect(status_addr(&srv)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("/crl")
        .header("host", "localhost")
        .body(Empty::<axum::body::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await.unwrap();
    let start = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(6), conn).await;
    let t = start.elapsed();
    eprintln!("idle HTTP/2 connection closed after {t:?}");
    assert!(r.is_ok(), "idle HTTP/2 connection still open after 6 s");
    assert!(t >= Duration::from_millis(1500), "closed too early: {t:?}");
    let m = metrics_text(&srv).await;
    assert!(
        metric(
            &m,
            "ca_connections_closed_total{listener=\"status\",reason=\"idle\"}"
        ) >= 1,
        "{m}"
    );
    srv.stop().await;
}

/// Whether the server closed a fresh connection at once (a request on it gets no answer).
async fn refused_at_once<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> bool {
    let r = tokio::time::timeout(Duration::from_secs(2), http1(s, "GET", "/crl", None)).await;
    matches!(r, Ok(Err(_)))
}

/// Attack: one client address opens connections until the listener has none left. With
/// `max_connections_per_ip = 4` on the status listener, the fifth connection from 127.0.0.1 is
/// closed at once while the first four keep answering OCSP, and a client from 127.0.0.2 still
/// gets answers; with `max_connections = 6`, the seventh connection (from anywhere) is refused
/// until one closes. The API refuses a fourth TLS connection from one address with
/// `max_connections_per_ip = 3`, and serves another address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_refuse_the_excess_while_ocsp_keeps_answering() {
    let mut opts = Options {
        status: true,
        ..Default::default()
    };
    opts.limits.status.max_connections = 6;
    opts.limits.status.max_connections_per_ip = 4;
    opts.limits.status.header_read_timeout = secs(30);
    opts.limits.max_connections_per_ip = 3;
    opts.limits.header_read_timeout = secs(30);
    let mut srv = TestServer::with(opts).await;
    let token = srv.token("cap.test", &["dns:cap.test"], "client").await;
    let (_, issued) = srv.enroll(&token, "cap.test", &["dns:cap.test"]).await;
    let issuer = OcspIssuer::from_cert_der(&srv.pki.issuing_der).unwrap();
    let serial = hex::decode(&issued.serial).unwrap();
    let req = ocsp_request(issuer.cert_id(HashAlg::Sha1, &serial).unwrap(), None);
    let addr = status_addr(&srv);

    let mut first = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from([127, 0, 0, 1], addr).await;
        assert!(ocsp_post(&mut s, &req).await);
        first.push(s);
    }
    let mut fifth = connect_from([127, 0, 0, 1], addr).await;
    assert!(
        refused_at_once(&mut fifth).await,
        "5th connection from one address served"
    );
    for s in &mut first {
        assert!(
            ocsp_post(s, &req).await,
            "an admitted connection stopped answering"
        );
    }
    let mut other = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from([127, 0, 0, 2], addr).await;
        assert!(ocsp_post(&mut s, &req).await, "second address refused");
        other.push(s);
    }
    // Six open: the global cap refuses a third address too...
    let mut seventh = connect_from([127, 0, 0, 3], addr).await;
    assert!(refused_at_once(&mut seventh).await, "7th connection served");
    // ... until one closes.
    drop(first.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from([127, 0, 0, 3], addr).await;
    assert!(ocsp_post(&mut again, &req).await, "slot not given back");
    drop(again);
    drop(other);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The API: three TLS connections from one address, the fourth refused.
    let api = api_addr(&srv);
    let conn = tls_connector(&srv, &[b"http/1.1"], None);
    let mut open = Vec::new();
    for _ in 0..3 {
        let tcp = connect_from([127, 0, 0, 1], api).await;
        let mut tls = conn.connect(server_name(), tcp).await.unwrap();
        let (status, _) = http1(&mut tls, "GET", "/v1/chain", None).await.unwrap();
        assert_eq!(status, 200);
        open.push(tls);
    }
    let tcp = connect_from([127, 0, 0, 1], api).await;
    assert!(
        conn.connect(server_name(), tcp).await.is_err(),
        "4th TLS connection from one address accepted"
    );
    for tls in &mut open {
        let (status, _) = http1(tls, "GET", "/v1/chain", None).await.unwrap();
        assert_eq!(status, 200);
    }
    let tcp = connect_from([127, 0, 0, 2], api).await;
    let mut tls = conn.connect(server_name(), tcp).await.unwrap();
    let (status, _) = http1(&mut tls, "GET", "/v1/chain", None).await.unwrap();
    assert_eq!(status, 200);

    let m = metrics_text(&srv).await;
    for (line, at_least) in [
        (
            "ca_connections_refused_total{listener=\"status\",cap=\"per_ip\"}",
            1,
        ),
        (
            "ca_connections_refused_total{listener=\"status\",cap=\"global\"}",
            1,
        ),
        (
            "ca_connections_refused_total{listener=\"api\",cap=\"per_ip\"}",
            1,
        ),
    ] {
        assert!(metric(&m, line) >= at_least, "{line}\n{m}");
    }
    srv.stop().await;
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Attack: 100 000 distinct OCSP requests, over 4 kept-alive connections to the running status
/// listener: requests about a real certificate padded with a unique non-critical extension
/// (4 KiB), requests with unique nonces, requests about unique never-issued serials, and the
/// other encodings of the real CertID. The request memo stays within its bound (and admits only
/// the few canonical requests), and the process RSS stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_ocsp_requests_cannot_grow_the_request_memo() {
    const TOTAL: usize = 100_000;
    const CONNECTIONS: usize = 4;
    let mut srv = TestServer::with(Options {
        status: true,
        ..Default::default()
    })
    .await;
    let mut serials = Vec::new();
    for i in 0..3 {
        let cn = format!("memo{i}.test");
        let token = srv.token(&cn, &[], "client").await;
        let (_, issued) = srv.enroll(&token, &cn, &[]).await;
        serials.push(hex::decode(&issued.serial).unwrap());
    }
    let issuer = Arc::new(OcspIssuer::from_cert_der(&srv.pki.issuing_der).unwrap());
    let addr = status_addr(&srv);
    // Warm up (allocator arenas, connection buffers) before the first measurement.
    let mut warm = TcpStream::connect(addr).await.unwrap();
    for s in &serials {
        let req = ocsp_request(issuer.cert_id(HashAlg::Sha1, s).unwrap(), None);
        for _ in 0..50 {
            assert!(ocsp_post(&mut warm, &req).await);
        }
    }
    let rss_before = rss_kib();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let issuer = issuer.clone();
        let serials = serials.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut answered = 0usize;
            for i in (c..TOTAL).step_by(CONNECTIONS) {
                let serial = &serials[i % serials.len()];
                let n = (i as u64).to_be_bytes();
                let der = match i % 5 {
                    // Padded with a unique non-critical extension.
                    0..=2 => {
                        let mut pad = vec![0x55u8; 4096];
                        pad[..8].copy_from_slice(&n);
                        let ext = Extension {
                            extn_id: der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.99999.1"),
                            critical: false,
                            extn_value: OctetString::new(pad).unwrap(),
                        };
                        ocsp_request(
                            issuer.cert_id(HashAlg::Sha1, serial).unwrap(),
                            Some(vec![ext]),
                        )
                    }
                    // A unique nonce.
                    3 if i % 2 == 0 => {
                        let nonce = Extension {
                            extn_id: der::asn1::ObjectIdentifier::new_unwrap(
                                "1.3.6.1.5.5.7.48.1.2",
                            ),
                            critical: false,
                            extn_value: OctetString::new(
                                OctetString::new(n.to_vec()).unwrap().to_der().unwrap(),
                            )
                            .unwrap(),
                        };
                        ocsp_request(
                            issuer.cert_id(HashAlg::Sha256, serial).unwrap(),
                            Some(vec![nonce]),
                        )
                    }
                    // A unique serial this CA never issued.
                    3 => {
                        let mut unissued = vec![0x7f, 0x11];
                        unissued.extend_from_slice(&n);
                        ocsp_request(issuer.cert_id(HashAlg::Sha1, &unissued).unwrap(), None)
                    }
                    // The other encodings of the real CertIDs (SHA-256; parameters absent).
                    _ => {
                        let alg = if i % 2 == 0 {
                            HashAlg::Sha256
                        } else {
                            HashAlg::Sha1
                        };
                        let mut id = issuer.cert_id(alg, serial).unwrap();
                        if i % 3 == 0 {
                            id.hash_algorithm.parameters = None;
                        }
                        ocsp_request(id, None)
                    }
                };
                let (status, body) = http1(
                    &mut s,
                    "POST",
                    "/ocsp",
                    Some(("application/ocsp-request", &der)),
                )
                .await
                .unwrap();
                assert_eq!(status, 200);
                if ocsp_successful(&body) {
                    answered += 1;
                }
            }
            answered
        }));
    }
    let mut answered = 0;
    for t in tasks {
        answered += t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let rss_after = rss_kib();
    let m = metrics_text(&srv).await;
    let memo_bytes = metric(&m, "ca_ocsp_memo_bytes ");
    let memo_entries = metric(&m, "ca_ocsp_memo_entries ");
    eprintln!(
        "{TOTAL} requests over {CONNECTIONS} connections in {elapsed:?} ({answered} successful); \
         RSS {rss_before} KiB -> {rss_after} KiB; memo {memo_entries} entries, {memo_bytes} bytes"
    );
    // Everything about the real certificates was answered (nonces are ignored; the unissued
    // serials get `unauthorized` once the live-signing budget is spent).
    assert!(answered >= TOTAL * 4 / 5, "{answered}");
    // Only canonical requests about the 3 certificates: SHA-1/SHA-256, parameters NULL/absent.
    assert!(memo_entries <= 3 * 4, "{memo_entries} memo entries");
    assert!(memo_bytes <= 8 * 1024 * 1024, "{memo_bytes}");
    // The answer cache reports its bound and its hit rate.
    assert_eq!(metric(&m, "ca_ocsp_cache_max_entries "), 200_000);
    assert!(metric(&m, "ca_ocsp_cache_entries ") <= 200_000);
    assert_eq!(metric(&m, "ca_ocsp_cache_max_bytes "), 64 << 20);
    let bytes = metric(&m, "ca_ocsp_cache_bytes ");
    assert!(bytes > 0 && bytes <= 64 << 20, "{bytes}");
    assert!(metric(&m, "ca_ocsp_cache_hits_total ") > 0, "{m}");
    for name in ["misses", "store_reads", "evictions"] {
        assert!(
            m.contains(&format!("\nca_ocsp_cache_{name}_total ")),
            "{name}: {m}"
        );
    }
    assert!(
        rss_after.saturating_sub(rss_before) < 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    srv.stop().await;
}

/// Attack: anonymous traffic trying to grow the audit log. 500 enrollments with bad tokens and
/// 500 TLS handshakes with a client certificate from a foreign CA append no event each: they
/// are counted and summarised (one `auth.fail.summary` per kind per interval, 2 s here, with
/// the counts and the source address), while a real enrollment still has its own event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_failures_are_summarised_not_one_event_each() {
    const N: usize = 500;
    let mut opts = Options {
        status: true,
        ..Default::default()
    };
    opts.limits.unauthenticated_summary_interval = secs(2);
    opts.limits.enroll.per_second = 10_000;
    opts.limits.enroll.burst = 10_000;
    let mut srv = TestServer::with(opts).await;
    // A client certificate from a CA of our own making.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["intruder.test".to_string()]).unwrap();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let foreign = Identity {
        cert: leaf.pem(),
        key: leaf_key.serialize_pem(),
    };

    let before = srv.audit_count();
    let start = Instant::now();
    let (_, c) = csr("anon.test", &[]);
    let anon = srv.anon();
    for i in 0..N {
        let err = anon
            .post_json::<_, IssuedResponse>(
                "/v1/enroll",
                &EnrollRequest {
                    token: format!("{i:064x}"),
                    csr: c.clone(),
                },
            )
            .await
            .expect_err("bad token");
        assert!(err.to_string().contains("token_rejected"), "{err}");
    }
    let bad = tls_connector(&srv, &[b"http/1.1"], Some(&foreign));
    let api = api_addr(&srv);
    for _ in 0..N {
        let tcp = TcpStream::connect(api).await.unwrap();
        // TLS 1.3: the refusal may arrive after the client considers the handshake done.
        if let Ok(mut tls) = bad.connect(server_name(), tcp).await {
            assert!(http1(&mut tls, "GET", "/v1/chain", None).await.is_err());
        }
    }
    let elapsed = start.elapsed();
    // A real enrollment has its own event.
    let token = srv.token("real.test", &[], "client").await;
    let (_, issued) = srv.enroll(&token, "real.test", &[]).await;
    let events = srv
        .pki
        .store
        .audit_events(before as u64 + 1, 100_000)
        .unwrap();
    assert!(events.iter().any(|e| e.event.action == "enroll"
        && e.event.result == "ok"
        && e.event.object == issued.serial));
    assert!(
        !events.iter().any(|e| e.event.action == "auth.fail"
            || e.event.action == "enroll" && e.event.result != "ok"),
        "anonymous failures audited one by one"
    );

    // The summaries arrive after the interval: their counts add up, at most one per kind per
    // interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (enroll, tls, summaries) = loop {
        let events = srv
            .pki
            .store
            .audit_events(before as u64 + 1, 100_000)
            .unwrap();
        let summaries: Vec<_> = events
            .into_iter()
            .filter(|e| e.event.action == "auth.fail.summary")
            .collect();
        let count = |kind: &str| -> u64 {
            summaries
                .iter()
                .filter(|e| e.event.object == kind)
                .map(|e| e.event.detail["count"].as_u64().unwrap())
                .sum()
        };
        let (enroll, tls) = (count("enroll"), count("tls_client_cert"));
        if (enroll, tls) == (N as u64, N as u64) || Instant::now() > deadline {
            break (enroll, tls, summaries);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((enroll, tls), (N as u64, N as u64), "{summaries:#?}");
    let windows = elapsed.as_secs() / 2 + 3;
    assert!(
        summaries.len() as u64 <= 2 * windows,
        "{} summaries over {elapsed:?}",
        summaries.len()
    );
    let e = summaries
        .iter()
        .find(|e| e.event.object == "enroll")
        .unwrap();
    assert_eq!(e.event.detail["top_addresses"][0]["address"], "127.0.0.1");
    assert!(e.event.detail["codes"]["token_rejected"].as_u64().unwrap() > 0);
    let all = srv.audit_count() - before;
    eprintln!(
        "{} anonymous failures in {elapsed:?} -> {} summary events ({all} events in all)",
        2 * N,
        summaries.len()
    );
    let m = metrics_text(&srv).await;
    assert_eq!(
        metric(&m, "ca_audit_events_suppressed_total{kind=\"enroll\"}"),
        N as u64
    );
    assert_eq!(
        metric(
            &m,
            "ca_unauthenticated_failures_total{kind=\"tls_client_cert\"}"
        ),
        N as u64
    );
    assert_eq!(
        srv.pki.store.verify_audit().unwrap() as usize,
        srv.audit_count()
    );
    srv.stop().await;
}
