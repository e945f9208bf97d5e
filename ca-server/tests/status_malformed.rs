//! Bad OCSP requests against the running status listener, one row per class: each gets the
//! OCSP `malformedRequest` response or a 4xx, and the listener keeps answering.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod status_support;

use axum::body::Bytes;
use base64::Engine;
use ca_core::ocsp::x509_ocsp::{self, ext::Nonce, OcspRequest, Request, TbsRequest};
use ca_core::ocsp::{HashAlg, OcspIssuer};
use der::asn1::OctetString;
use der::Encode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use status_support::fixture::TestCa;
use status_support::{start, Options};
use x509_cert::ext::Extension;

/// DER of OCSPResponse { responseStatus malformedRequest(1) } (RFC 6960 4.2.1).
const MALFORMED: &[u8] = &[0x30, 0x03, 0x0a, 0x01, 0x01];
/// ... unauthorized(6).
const UNAUTHORIZED: &[u8] = &[0x30, 0x03, 0x0a, 0x01, 0x06];

#[derive(Debug)]
enum Expect {
    /// 200 with the malformedRequest response.
    Malformed,
    /// 200 with the unauthorized response.
    Unauthorized,
    /// 200 with a signed (successful) response.
    Successful,
    /// This HTTP status, whatever the body.
    Http(u16),
}

enum Send {
    Post {
        content_type: Option<&'static str>,
        body: Vec<u8>,
    },
    Get(String),
}

/// OCSPRequest shapes without x509-cert's serial length check, to send what it would refuse.
#[derive(der::Sequence)]
struct RawCertId {
    hash_algorithm: x509_cert::spki::AlgorithmIdentifierOwned,
    issuer_name_hash: OctetString,
    issuer_key_hash: OctetString,
    serial_number: der::asn1::Int,
}
#[derive(der::Sequence)]
struct RawRequest {
    req_cert: RawCertId,
}
#[derive(der::Sequence)]
struct RawTbs {
    request_list: Vec<RawRequest>,
}
#[derive(der::Sequence)]
struct RawOcspRequest {
    tbs_request: RawTbs,
}

fn request(certs: Vec<x509_ocsp::CertId>, extensions: Option<Vec<Extension>>) -> Vec<u8> {
    OcspRequest {
        tbs_request: TbsRequest {
            version: Default::default(),
            requestor_name: None,
            request_list: certs
                .into_iter()
                .map(|c| Request {
                    req_cert: c,
                    single_request_extensions: None,
                })
                .collect(),
            request_extensions: extensions,
        },
        optional_signature: None,
    }
    .to_der()
    .unwrap()
}

fn nonce_ext(len: usize) -> Extension {
    Extension {
        extn_id: const_oid_nonce(),
        critical: false,
        extn_value: OctetString::new(Nonce::new(vec![7u8; len]).unwrap().to_der().unwrap())
            .unwrap(),
    }
}

fn const_oid_nonce() -> der::asn1::ObjectIdentifier {
    der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2")
}

fn post(body: Vec<u8>) -> Send {
    Send::Post {
        content_type: Some("application/ocsp-request"),
        body,
    }
}

fn get_b64(der: &[u8]) -> Send {
    Send::Get(
        base64::engine::general_purpose::STANDARD
            .encode(der)
            .replace('/', "%2F")
            .replace('+', "%2B")
            .replace('=', "%3D"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_malformed_request_or_4xx() {
    let ca = TestCa::new("Test Issuing CA");
    let leaf = ca.issue_leaf("leaf");
    let l = start(&ca, Options::default()).await;
    let issuer = OcspIssuer::from_cert_der(&ca.cert_der).unwrap();
    let good = request(
        vec![issuer.cert_id(HashAlg::Sha1, &leaf.record.serial).unwrap()],
        None,
    );
    let many: Vec<_> = (1..=17u8)
        .map(|i| issuer.cert_id(HashAlg::Sha1, &[i]).unwrap())
        .collect();
    let sha512_unissued = issuer.cert_id(HashAlg::Sha512, &[0x42; 16]).unwrap();
    let mut md5 = issuer.cert_id(HashAlg::Sha1, &leaf.record.serial).unwrap();
    md5.hash_algorithm.oid = der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.2.5");
    let critical = Extension {
        extn_id: der::asn1::ObjectIdentifier::new_unwrap("1.2.3.4"),
        critical: true,
        extn_value: OctetString::new(vec![5, 0]).unwrap(),
    };
    let long_serial = {
        let id = issuer.cert_id(HashAlg::Sha1, &[1]).unwrap();
        RawOcspRequest {
            tbs_request: RawTbs {
                request_list: vec![RawRequest {
                    req_cert: RawCertId {
                        hash_algorithm: id.hash_algorithm,
                        issuer_name_hash: id.issuer_name_hash,
                        issuer_key_hash: id.issuer_key_hash,
                        serial_number: der::asn1::Int::new(&[0x11; 25]).unwrap(),
                    },
                }],
            },
        }
        .to_der()
        .unwrap()
    };

    let rows: Vec<(&str, Send, Expect)> = vec![
        (
            "control: good request, POST",
            post(good.clone()),
            Expect::Successful,
        ),
        (
            "control: good request, GET",
            get_b64(&good),
            Expect::Successful,
        ),
        (
            "control: SHA-512 CertID, unissued serial",
            post(request(vec![sha512_unissued], None)),
            Expect::Successful,
        ),
        (
            "garbage",
            post(b"hello, responder".to_vec()),
            Expect::Malformed,
        ),
        ("empty body", post(vec![]), Expect::Malformed),
        (
            "truncated DER",
            post(good[..good.len() / 2].to_vec()),
            Expect::Malformed,
        ),
        (
            "trailing bytes",
            post([good.clone(), vec![0]].concat()),
            Expect::Malformed,
        ),
        (
            "wrong outer tag",
            post([vec![0x31], good[1..].to_vec()].concat()),
            Expect::Malformed,
        ),
        (
            "absurd length",
            post(vec![0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x30]),
            Expect::Malformed,
        ),
        (
            "serial longer than RFC 5280 allows",
            post(long_serial),
            Expect::Malformed,
        ),
        (
            "empty requestList",
            post(request(vec![], None)),
            Expect::Malformed,
        ),
        (
            "too many CertIDs",
            post(request(many, None)),
            Expect::Malformed,
        ),
        (
            "nonce over 32 bytes",
            post(request(
                vec![issuer.cert_id(HashAlg::Sha1, &leaf.record.serial).unwrap()],
                Some(vec![nonce_ext(33)]),
            )),
            Expect::Malformed,
        ),
        (
            "empty nonce",
            post(request(
                vec![issuer.cert_id(HashAlg::Sha1, &leaf.record.serial).unwrap()],
                Some(vec![Extension {
                    extn_id: const_oid_nonce(),
                    critical: false,
                    extn_value: OctetString::new(vec![0x04, 0x00]).unwrap(),
                }]),
            )),
            Expect::Malformed,
        ),
        (
            "unknown critical extension",
            post(request(
                vec![issuer.cert_id(HashAlg::Sha1, &leaf.record.serial).unwrap()],
                Some(vec![critical]),
            )),
            Expect::Malformed,
        ),
        (
            "unsupported CertID hash (MD5)",
            post(request(vec![md5], None)),
            Expect::Unauthorized,
        ),
        (
            "oversized body",
            post(vec![0x30; 64 * 1024]),
            Expect::Http(413),
        ),
        (
            "wrong content type",
            Send::Post {
                content_type: Some("text/plain"),
                body: good.clone(),
            },
            Expect::Http(415),
        ),
        (
            "no content type",
            Send::Post {
                content_type: None,
                body: good.clone(),
            },
            Expect::Http(415),
        ),
        (
            "bad base64 in GET",
            Send::Get("!!!notbase64***".into()),
            Expect::Malformed,
        ),
        (
            "base64 of garbage in GET",
            Send::Get("aGVsbG8gd29ybGQ%3D".into()),
            Expect::Malformed,
        ),
        (
            "truncated base64 in GET",
            Send::Get("M".into()),
            Expect::Malformed,
        ),
        (
            "bad percent-encoding in GET",
            Send::Get("%ZZ%C3%28".into()),
            Expect::Malformed,
        ),
        (
            "oversized GET",
            Send::Get("A".repeat(40 * 1024)),
            Expect::Http(414),
        ),
        (
            "GET without a request",
            Send::Get(String::new()),
            Expect::Http(405),
        ),
    ];

    // A fresh connection per row: a refusal sent before the body was read (413, 415) ends the
    // connection, and a pooled client could pick it up for the next row just as it closes.
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Full<Bytes>>();
    let mut failures = Vec::new();
    for (name, send, expect) in rows {
        let req = match send {
            Send::Post { content_type, body } => {
                let mut b = http::Request::post(l.url("/ocsp"));
                if let Some(ct) = content_type {
                    b = b.header("content-type", ct);
                }
                b.body(Full::new(Bytes::from(body))).unwrap()
            }
            Send::Get(path) => http::Request::get(l.url(&format!("/ocsp/{path}")))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        };
        let resp = client
            .request(req)
            .await
            .unwrap_or_else(|e| panic!("{name}: connection failed: {e}"));
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let ok = match expect {
            Expect::Malformed => {
                status == 200 && ct == "application/ocsp-response" && body.as_ref() == MALFORMED
            }
            Expect::Unauthorized => status == 200 && body.as_ref() == UNAUTHORIZED,
            Expect::Successful => {
                status == 200
                    && ca_core::ocsp::parse_response(&body)
                        .map(|p| p.status == ca_core::ocsp::OcspResponseStatus::Successful)
                        .unwrap_or(false)
            }
            Expect::Http(code) => status == code,
        };
        if !ok {
            failures.push(format!(
                "{name}: expected {expect:?}, got HTTP {status} {ct} {:02x?}",
                &body[..body.len().min(16)]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Still alive and answering after all of that.
    let (ok, out) = status_support::openssl_ocsp(
        &l,
        &ca.cert_pem,
        &leaf.cert_pem,
        &ca.cert_pem,
        &["-no_nonce"],
    )
    .await;
    assert!(ok && out.contains(": good"), "{out}");
    l.stop().await;
}
