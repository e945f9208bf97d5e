//! Load target for `bench/ocsp.sh`: a CA in a throwaway SoftHSM token with many certificates
//! (some revoked) in a sled store, the status listener serving them, and a bare axum handler
//! returning a fixed body of the same size (the framework's ceiling). Writes the files the
//! peers need into DIR (OpenSSL responder index, signer key, request mix, static response),
//! prints `NAME=value` lines, then serves until stdin closes.
//!
//! Usage: `bench_status DIR [CERTS]` (default 2000 certificates, 20% revoked).
//!
//! Also a small load generator, for servers wrk cannot drive (OpenSSL's responder spins
//! forever on wrk's initial probe connection, which it accepts and which closes at once):
//! `bench_status load URL METHOD REQUESTS_FILE CONNECTIONS SECONDS POST_PATH GET_PREFIX`
//! prints a `RESULT rps=.. p50_us=.. p99_us=.. errors=.. non200=..` line like bench/ocsp.lua;
//! and `bench_status requests ISSUER_PEM SERIALS_FILE OUT` writes such a file (GET) for given
//! serials (`bench/scale.sh`).
//! One runtime thread (like `wrk -t1`); keep-alive when the server allows it.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

/// mimalloc, as in the `ca-server` binary: glibc malloc cost 15% of the CPU per certificate.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use ca_core::clock::{to_offset, truncate, SystemClock};
use ca_core::crl::CrlConfig;
use ca_core::ocsp::x509_ocsp::{OcspRequest, Request, TbsRequest};
use ca_core::ocsp::{HashAlg, OcspIssuer, ResponderConfig, ResponderKey};
use ca_core::revocation::RevocationReason;
use ca_core::signer::KeyAlgorithm;
use ca_core::store::{CertRecord, RecordStatus, Requester, SledStore, Store};
use ca_core::x509::{pem_encode, random_serial, RcgenKey};
use ca_server::status::{StatusConfig, StatusSetup, StatusState};
use chrono::{Duration, Utc};
use der::Encode;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

fn openssl_time(t: chrono::DateTime<Utc>) -> String {
    t.format("%y%m%d%H%M%SZ").to_string()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("requests") {
        return requests(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("load") {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(load(&args[1..]));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

/// `bench_status requests ISSUER_CERT SERIALS_FILE OUT` (PEM or DER): a request list for `load` (GET only:
/// `good - PATH` lines) with one SHA-1 CertID request per serial of SERIALS_FILE (hex, one per
/// line), for a scale run against a real server (`bench/scale.sh`).
fn requests(args: &[String]) -> anyhow::Result<()> {
    let [issuer_pem, serials, out] = args else {
        anyhow::bail!("usage: bench_status requests ISSUER_PEM SERIALS_FILE OUT");
    };
    let bytes = std::fs::read(issuer_pem)?;
    // PEM, or DER as the status listener's /ca.crt serves it.
    let pem = rustls_pemfile::certs(&mut &bytes[..]).next();
    let der = match pem {
        Some(c) => c?.to_vec(),
        None => bytes.clone(),
    };
    let issuer = OcspIssuer::from_cert_der(&der)?;
    let mut list = String::new();
    for line in std::fs::read_to_string(serials)?.lines() {
        let serial = hex::decode(line.trim())?;
        let req = OcspRequest {
            tbs_request: TbsRequest {
                version: Default::default(),
                requestor_name: None,
                request_list: vec![Request {
                    req_cert: issuer.cert_id(HashAlg::Sha1, &serial)?,
                    single_request_extensions: None,
                }],
                request_extensions: None,
            },
            optional_signature: None,
        }
        .to_der()?;
        let get = base64::engine::general_purpose::STANDARD
            .encode(&req)
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        let _ = writeln!(list, "good - {get}");
    }
    std::fs::write(out, list)?;
    Ok(())
}

async fn load(args: &[String]) -> anyhow::Result<()> {
    let [url, method, list, conns, secs, post_path, get_prefix] = args else {
        anyhow::bail!("usage: bench_status load URL METHOD REQUESTS_FILE CONNECTIONS SECONDS POST_PATH GET_PREFIX");
    };
    let conns: usize = conns.parse()?;
    let duration = std::time::Duration::from_secs_f64(secs.trim_end_matches('s').parse()?);
    let mut reqs = Vec::new();
    for line in std::fs::read_to_string(list)?.lines() {
        let mut parts = line.split(' ');
        let (_kind, file, get) = (
            parts.next(),
            parts.next().context("file")?,
            parts.next().context("path")?,
        );
        reqs.push(if method == "POST" {
            (
                format!("{url}{post_path}"),
                Some(Bytes::from(std::fs::read(file)?)),
            )
        } else {
            (format!("{url}{get_prefix}{get}"), None)
        });
    }
    let reqs = Arc::new(reqs);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(conns)
        .build_http::<http_body_util::Full<Bytes>>();
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (client, reqs) = (client.clone(), reqs.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut non200) = (Vec::new(), 0u64, 0u64);
            // Connections start spread evenly over the list, so that a request comes back
            // after about the list's length (a scale run's random mix measures the answer
            // cache, not 16 connections asking about the same certificate in a row).
            let mut i = (c * reqs.len() / conns.max(1)).max(c * 7);
            while start.elapsed() < duration {
                i = (i + 1) % reqs.len();
                let (uri, body) = &reqs[i];
                let mut b = axum::http::Request::builder().uri(uri.as_str());
                if body.is_some() {
                    b = b
                        .method("POST")
                        .header(header::CONTENT_TYPE, "application/ocsp-request");
                }
                let Ok(req) = b.body(http_body_util::Full::new(body.clone().unwrap_or_default()))
                else {
                    errors += 1;
                    continue;
                };
                let t = std::time::Instant::now();
                match client.request(req).await {
                    Ok(resp) => {
                        let ok = resp.status() == 200;
                        if http_body_util::BodyExt::collect(resp.into_body())
                            .await
                            .is_err()
                        {
                            errors += 1;
                            continue;
                        }
                        if !ok {
                            non200 += 1;
                        }
                        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                    }
                    Err(_) => errors += 1,
                }
            }
            (lat, errors, non200)
        }));
    }
    let (mut lat, mut errors, mut non200) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, e, n) = t.await?;
        lat.extend(l);
        errors += e;
        non200 += n;
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "RESULT rps={:.0} p50_us={} p99_us={} errors={errors} non200={non200}",
        lat.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}

async fn serve(args: Vec<String>) -> anyhow::Result<()> {
    let mut args = args.into_iter();
    let dir = PathBuf::from(args.next().context("usage: bench_status DIR [CERTS]")?);
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2000);
    std::fs::create_dir_all(dir.join("requests"))?;

    let token = hsm_sim::TestToken::new()?;
    let hsm = token.hsm_config().open()?;
    hsm.generate_key("ca", KeyAlgorithm::P256)?;
    hsm.generate_key("ocsp", KeyAlgorithm::P256)?;
    let ca_signer = Arc::new(hsm.signer("ca")?);
    let ocsp_signer = Arc::new(hsm.signer("ocsp")?);
    let now = Utc::now();

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Bench Issuing CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = to_offset(now - Duration::days(1));
    ca_params.not_after = to_offset(now + Duration::days(365));
    ca_params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    let ca_key = RcgenKey::new(ca_signer.as_ref());
    let ca_der = ca_params.self_signed(&ca_key)?.der().to_vec();
    let issuer = Issuer::from_ca_cert_der(&ca_der.clone().into(), &ca_key)?;
    std::fs::write(dir.join("ca.pem"), pem_encode("CERTIFICATE", &ca_der))?;

    // Delegated responders: ours (key in the HSM), OpenSSL's (software key, it needs a file).
    let responder_params = |cn: &str| -> anyhow::Result<CertificateParams> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
        p.custom_extensions = vec![CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5],
            vec![0x05, 0x00],
        )];
        p.not_before = to_offset(now - Duration::hours(1));
        p.not_after = to_offset(now + Duration::days(30));
        p.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        Ok(p)
    };
    let ours_der = responder_params("Bench OCSP responder")?
        .signed_by(&RcgenKey::new(ocsp_signer.as_ref()), &issuer)?
        .der()
        .to_vec();
    let openssl_key = KeyPair::generate()?;
    let openssl_der = responder_params("OpenSSL OCSP responder")?
        .signed_by(&openssl_key, &issuer)?
        .der()
        .to_vec();
    std::fs::write(
        dir.join("openssl-responder.pem"),
        pem_encode("CERTIFICATE", &openssl_der),
    )?;
    std::fs::write(
        dir.join("openssl-responder.key"),
        openssl_key.serialize_pem(),
    )?;

    // Certificates: one leaf key for all (only the serial matters here), 20% revoked.
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.join("store"))?);
    let leaf_key = KeyPair::generate()?;
    let mut index = String::new();
    let (mut good, mut revoked) = (Vec::new(), Vec::new());
    for i in 0..n {
        let s = random_serial();
        let mut p = CertificateParams::new(vec![format!("host{i}.bench")])?;
        p.distinguished_name
            .push(DnType::CommonName, format!("host{i}"));
        p.serial_number = Some(SerialNumber::from_slice(&s));
        let not_after = truncate(now + Duration::days(30));
        p.not_before = to_offset(now - Duration::hours(1));
        p.not_after = to_offset(not_after);
        let der = p.signed_by(&leaf_key, &issuer)?.der().to_vec();
        let rec = CertRecord {
            serial: s.clone(),
            subject: format!("CN=host{i}"),
            sans: vec![format!("dns:host{i}.bench")],
            identity: format!("host{i}"),
            profile: "bench".into(),
            not_before: truncate(now - Duration::hours(1)),
            not_after,
            issued_at: truncate(now),
            requester: Requester::Admin("bench".into()),
            spki_sha256: ca_core::signer::sha256_hex(
                &rcgen::PublicKeyData::subject_public_key_info(&leaf_key),
            ),
            der,
            status: RecordStatus::Valid,
            lineage: s.clone(),
            generation: 1,
        };
        store.insert_cert(&rec)?;
        let hex = hex::encode_upper(&s);
        if i % 5 == 4 {
            let at = truncate(now - Duration::minutes(5));
            store.revoke(&s, at, RevocationReason::KeyCompromise)?;
            let _ = writeln!(
                index,
                "R\t{}\t{},keyCompromise\t{hex}\tunknown\t/CN=host{i}",
                openssl_time(not_after),
                openssl_time(at)
            );
            revoked.push(s);
        } else {
            let _ = writeln!(
                index,
                "V\t{}\t\t{hex}\tunknown\t/CN=host{i}",
                openssl_time(not_after)
            );
            good.push(s);
        }
    }
    std::fs::write(dir.join("index.txt"), index)?;
    std::fs::write(dir.join("index.txt.attr"), "unique_subject = no\n")?;

    let setup = StatusSetup {
        issuer_cert_der: ca_der.clone(),
        issuing_signer: ca_signer.clone(),
        ocsp_key: ResponderKey::delegated(ocsp_signer.clone(), &ours_der)?,
        store: store.clone(),
        clock: Arc::new(SystemClock),
        responder: ResponderConfig::default(),
        crl: CrlConfig::default(),
        external_responses: vec![],
        root_crl: None,
        http: StatusConfig::default(),
    };
    let t = std::time::Instant::now();
    let state = tokio::task::spawn_blocking(move || StatusState::build(setup)).await??;
    // Serving starts without loading; the first maintenance pass loads the store and signs
    // every certificate's first response (in groups). Done here before the timed runs.
    let s = state.clone();
    tokio::task::spawn_blocking(move || s.maintain_blocking()).await?;
    let presign = t.elapsed();

    // The request mix: 60 good, 20 revoked, 20 unknown, SHA-1 CertIDs as OpenSSL and nginx send.
    let ocsp_issuer = OcspIssuer::from_cert_der(&ca_der)?;
    let mut list = String::new();
    let mix = good
        .iter()
        .take(60)
        .map(|s| ("good", s.clone()))
        .chain(revoked.iter().take(20).map(|s| ("revoked", s.clone())))
        .chain((0..20).map(|_| ("unknown", random_serial())));
    for (i, (kind, s)) in mix.enumerate() {
        let req = OcspRequest {
            tbs_request: TbsRequest {
                version: Default::default(),
                requestor_name: None,
                request_list: vec![Request {
                    req_cert: ocsp_issuer.cert_id(HashAlg::Sha1, &s)?,
                    single_request_extensions: None,
                }],
                request_extensions: None,
            },
            optional_signature: None,
        }
        .to_der()?;
        let file = dir.join("requests").join(format!("{i:03}-{kind}.der"));
        std::fs::write(&file, &req)?;
        let get = base64::engine::general_purpose::STANDARD
            .encode(&req)
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        let _ = writeln!(list, "{kind} {} {get}", file.display());
    }
    std::fs::write(dir.join("requests.txt"), list)?;

    let sample = state
        .responder()
        .cached(&good[0])
        .context("no pre-signed response")?;
    std::fs::write(dir.join("static-response.der"), &sample.der)?;
    let fixed = Bytes::from(sample.der.clone());

    let ours = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ours_port = ours.local_addr()?.port();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut rx1 = stop_rx.clone();
    let server = tokio::spawn(ca_server::status::serve(ours, state.clone(), async move {
        let _ = rx1.changed().await;
    }));

    let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_port = bare.local_addr()?.port();
    let (f1, f2) = (fixed.clone(), fixed.clone());
    let app = Router::new()
        .route(
            "/ocsp",
            post(move |_body: Bytes| async move {
                ([(header::CONTENT_TYPE, "application/ocsp-response")], f1)
            }),
        )
        .route(
            "/ocsp/{*r}",
            get(move || async move { ([(header::CONTENT_TYPE, "application/ocsp-response")], f2) }),
        );
    let mut rx2 = stop_rx.clone();
    let bare_task = tokio::spawn(async move {
        axum::serve(bare, app)
            .with_graceful_shutdown(async move {
                let _ = rx2.changed().await;
            })
            .await
    });

    // Revocation to OCSP visibility, over HTTP, on a certificate outside the request mix.
    let victim = good.last().cloned().context("no certificates")?;
    let get_path = format!(
        "/ocsp/{}",
        base64::engine::general_purpose::STANDARD
            .encode(
                OcspRequest {
                    tbs_request: TbsRequest {
                        version: Default::default(),
                        requestor_name: None,
                        request_list: vec![Request {
                            req_cert: ocsp_issuer.cert_id(HashAlg::Sha1, &victim)?,
                            single_request_extensions: None
                        }],
                        request_extensions: None,
                    },
                    optional_signature: None,
                }
                .to_der()?
            )
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let t0 = std::time::Instant::now();
    state
        .revoke(
            victim,
            RevocationReason::KeyCompromise,
            Utc::now(),
            "bench".into(),
        )
        .await?;
    let acked = t0.elapsed();
    let visible = loop {
        let uri: axum::http::Uri = format!("http://127.0.0.1:{ours_port}{get_path}").parse()?;
        let resp = client.get(uri).await?;
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await?
            .to_bytes();
        let parsed = ca_core::ocsp::parse_response(&body)?;
        if parsed.singles().first().is_some_and(|s| {
            matches!(
                s.cert_status,
                ca_core::ocsp::x509_ocsp::CertStatus::Revoked(_)
            )
        }) {
            break t0.elapsed();
        }
        anyhow::ensure!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "revocation not visible after 5 s"
        );
    };

    let mut out = std::io::stdout().lock();
    writeln!(out, "OURS_PORT={ours_port}")?;
    writeln!(out, "AXUM_PORT={bare_port}")?;
    writeln!(out, "CERTS={n}")?;
    writeln!(out, "PRESIGN_MS={}", presign.as_millis())?;
    writeln!(out, "RESPONSE_BYTES={}", fixed.len())?;
    writeln!(out, "REVOKE_ACK_US={}", acked.as_micros())?;
    writeln!(out, "REVOCATION_VISIBLE_US={}", visible.as_micros())?;
    writeln!(out, "READY=1")?;
    out.flush()?;
    drop(out);

    // Serve until stdin closes.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    let _ = stop_tx.send(true);
    server.await??;
    bare_task.await??;
    drop(token);
    Ok(())
}
