//! Sharded CRLs on a running server (README "CRLs"): with `[crl] shard_width`, the certificates
//! the server issues name their shard in their CRL distribution point, the status listener
//! serves each shard at `/crl/shard/{id}` with the full CRL's caching headers, a revocation
//! reaches its shard's CRL without a full CRL rebuild, and `openssl verify -crl_check` with the
//! shard fetched over HTTP (by curl) refuses the revoked certificate and accepts the good one.

use ca_core::clock::SystemClock;
use ca_core::crl::{crl_shard_of, CrlShard};
use ca_core::issuance::IssuerUrls;
use ca_core::profile::Span;
use ca_core::revocation::RevocationReason;
use ca_core::signer::KeyAlgorithm;
use ca_core::store::Store;
use ca_server::auth::Role;
use ca_server::config::{Limits, TokenSection};
use ca_server::metrics::Metrics;
use ca_server::server::{self, ServerParts};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::pki::{test_profiles, TestPki};
use tokio::net::TcpListener;

/// `curl -s -D headers -o body url`: (status line and headers, body).
fn curl(url: &str, dir: &Path, name: &str) -> (String, Vec<u8>) {
    let headers = dir.join(format!("{name}.headers"));
    let body = dir.join(format!("{name}.body"));
    let o = Command::new("curl")
        .args(["-s", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .arg(url)
        .output()
        .unwrap();
    assert!(o.status.success(), "curl {url}: {o:?}");
    (
        std::fs::read_to_string(&headers).unwrap(),
        std::fs::read(&body).unwrap_or_default(),
    )
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn verify(issuing: &Path, crl: &Path, cert: &Path) -> (bool, String) {
    let o = Command::new("openssl")
        .args(["verify", "-partial_chain", "-crl_check", "-CAfile"])
        .arg(issuing)
        .arg("-CRLfile")
        .arg(crl)
        .arg(cert)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn crl_number(der: &[u8], issuing_der: &[u8]) -> u64 {
    ca_core::x509::check_crl(issuing_der, der).unwrap().number
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_its_shard_crl_over_http_without_a_full_crl_rebuild() {
    let pki = tokio::task::spawn_blocking(|| {
        TestPki::with(
            KeyAlgorithm::P256,
            test_profiles(),
            IssuerUrls::default(),
            Arc::new(SystemClock),
        )
        .unwrap()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let parts = ServerParts {
        signer: pki.issuing_signer.clone(),
        issuing_der: pki.issuing_der.clone(),
        chain_der: vec![pki.root_der.clone()],
        profiles: test_profiles(),
        urls: IssuerUrls {
            crl: Some("http://ca.test/crl".into()),
            ..IssuerUrls::default()
        },
        store: pki.store.clone() as Arc<dyn Store>,
        clock: Arc::new(SystemClock),
        tls_names: vec!["dns:localhost".into(), "ip:127.0.0.1".into()],
        tls_validity: Span(chrono::Duration::days(1)),
        admin_validity: Span(chrono::Duration::days(2)),
        limits: Limits::default(),
        tokens: TokenSection::default(),
        renewal: Default::default(),
        metrics: Arc::new(Metrics::new()),
        audit: None,
    };
    let crl = ca_server::config::CrlSection {
        shard_width: Some(Span(chrono::Duration::hours(1))),
        // Long: the full CRL must not be rebuilt for the revocation below.
        full_interval: Some(Span(chrono::Duration::hours(1))),
        ..Default::default()
    };
    let assembled = server::ServerBuilder::new(parts)
        .with_status(ca_server::config::OcspSection::default(), crl)
        .assemble()
        .await
        .expect("server assembles");
    let state = assembled.state.clone();
    let mut certs = Vec::new();
    for name in ["shard-good", "shard-bad"] {
        let (pem, _) = ca_server::dev::issue_admin_cert(&state, name, Role::Auditor, "test")
            .await
            .unwrap();
        let der = ca_core::x509::pem_decode(pem.as_bytes(), "CERTIFICATE").unwrap();
        certs.push((
            write(dir.path(), &format!("{name}.pem"), pem.as_bytes()),
            der,
        ));
    }
    let (good_pem, good_der) = &certs[0];
    let (bad_pem, bad_der) = &certs[1];
    let shard = crl_shard_of(good_der).expect("the certificate names a shard");
    assert_eq!(
        crl_shard_of(bad_der),
        Some(shard),
        "issued in the same second"
    );
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let status = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = assembled
        .start(api, Some(status))
        .await
        .expect("server starts");
    let base = format!("http://{}", running.status_addr.unwrap());
    let issuing = write(
        dir.path(),
        "issuing.pem",
        ca_core::x509::pem_encode("CERTIFICATE", &pki.issuing_der).as_bytes(),
    );
    let shard_url = format!("{base}/crl/shard/{shard}");

    // The shard is published before any revocation, with the full CRL's caching headers.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let (h, body) = curl(&shard_url, dir.path(), "first");
        if h.starts_with("HTTP/1.1 200") {
            break (h, body);
        }
        assert!(Instant::now() < deadline, "shard never published: {h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        header(&first.0, "content-type"),
        Some("application/pkix-crl")
    );
    let n0 = crl_number(&first.1, &pki.issuing_der);
    assert_eq!(
        header(&first.0, "etag"),
        Some(format!("\"crl-{n0}\"").as_str())
    );
    let cc = header(&first.0, "cache-control").unwrap();
    assert!(cc.contains("max-age="), "{cc}");
    assert!(header(&first.0, "expires").is_some() && header(&first.0, "last-modified").is_some());
    let (full_h, full_body) = curl(&format!("{base}/crl"), dir.path(), "full0");
    assert!(full_h.starts_with("HTTP/1.1 200"), "{full_h}");
    let full0 = crl_number(&full_body, &pki.issuing_der);

    let (_, parsed) = x509_parser::parse_x509_certificate(bad_der).unwrap();
    let raw = parsed.raw_serial();
    let serial = raw[raw.iter().take_while(|b| **b == 0).count()..].to_vec();
    let authority = state.authority.clone();
    tokio::task::spawn_blocking(move || {
        authority
            .revoke_certificate(&serial, RevocationReason::KeyCompromise, "test")
            .unwrap()
    })
    .await
    .unwrap();

    // The shard's CRL lists it soon (the revocation wakes the CRL task).
    let deadline = Instant::now() + Duration::from_secs(20);
    let crl = loop {
        let (h, body) = curl(&shard_url, dir.path(), "after");
        if h.starts_with("HTTP/1.1 200") && crl_number(&body, &pki.issuing_der) > n0 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the revocation never reached its shard"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let crl_path = write(dir.path(), "shard.crl", &crl);
    let crl_pem = write(
        dir.path(),
        "shard.crl.pem",
        ca_core::x509::pem_encode("X509 CRL", &std::fs::read(&crl_path).unwrap()).as_bytes(),
    );
    let (ok, out) = verify(&issuing, &crl_pem, good_pem);
    assert!(ok && out.contains(": OK"), "{out}");
    let (ok, out) = verify(&issuing, &crl_pem, bad_pem);
    assert!(!ok && out.contains("certificate revoked"), "{out}");

    // The full CRL was not rebuilt for it (`full_interval`): the shard carries it, and so does
    // the delta CRL, which openssl applies to the full CRL.
    let (_, full_body) = curl(&format!("{base}/crl"), dir.path(), "full1");
    assert_eq!(crl_number(&full_body, &pki.issuing_der), full0);
    let full_pem = write(
        dir.path(),
        "full.crl.pem",
        ca_core::x509::pem_encode("X509 CRL", &full_body).as_bytes(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let delta = loop {
        let (h, body) = curl(&format!("{base}/crl/delta"), dir.path(), "delta");
        if h.starts_with("HTTP/1.1 200")
            && ca_core::x509::check_crl(&pki.issuing_der, &body)
                .unwrap()
                .entries
                == 1
        {
            assert_eq!(header(&h, "content-type"), Some("application/pkix-crl"));
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the revocation never reached the delta CRL: {h}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let delta_pem = write(
        dir.path(),
        "delta.crl.pem",
        ca_core::x509::pem_encode("X509 CRL", &delta).as_bytes(),
    );
    let o = Command::new("openssl")
        .args([
            "verify",
            "-partial_chain",
            "-crl_check",
            "-use_deltas",
            "-CAfile",
        ])
        .arg(&issuing)
        .arg("-CRLfile")
        .arg(&full_pem)
        .arg("-CRLfile")
        .arg(&delta_pem)
        .arg(bad_pem)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && out.contains("certificate revoked"),
        "{out}"
    );
    let (ok, out) = verify(&issuing, &full_pem, bad_pem);
    assert!(ok, "the full CRL alone does not list it yet: {out}");

    // Unknown and malformed shard ids.
    let (h, _) = curl(
        &format!("{base}/crl/shard/{}", CrlShard(shard.0 + 7)),
        dir.path(),
        "x",
    );
    assert!(h.starts_with("HTTP/1.1 404"), "{h}");
    let (h, _) = curl(&format!("{base}/crl/shard/0{}", shard.0), dir.path(), "y");
    assert!(h.starts_with("HTTP/1.1 404"), "{h}");

    running.shutdown().await;
}
