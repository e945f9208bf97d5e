use super::*;

fn answer(status: u16, headers: &[(header::HeaderName, &str)], body: &[u8]) -> RawResponse {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        map.insert(k.clone(), v.parse().unwrap());
    }
    RawResponse {
        url: "https://x/v1/renew".into(),
        status: StatusCode::from_u16(status).unwrap(),
        headers: map,
        body: Bytes::copy_from_slice(body),
    }
}

#[test]
fn api_errors_keep_code_and_retry_after() {
    let e = answer(
        429,
        &[(header::RETRY_AFTER, "7")],
        br#"{"code":"rate_limited","message":"slow down"}"#,
    )
    .error();
    assert_eq!(e.code(), Some("rate_limited"));
    assert_eq!(e.api_code(), Some(Code::RateLimited));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    let e = answer(403, &[], br#"{"code":"cert_revoked","message":"revoked"}"#).error();
    assert_eq!(e.api_code(), Some(Code::CertRevoked));
    assert_eq!(e.retry_after(), None);
    // Not an API error body (a proxy's page): the status stands in for the code.
    let e = answer(502, &[], b"<html>bad gateway</html>").error();
    assert_eq!(e.code(), Some("http_502"));
    assert_eq!(e.api_code(), None);
    assert!(e.to_string().contains("bad gateway"), "{e}");
    // A code a newer server may send stays readable.
    let e = answer(400, &[], br#"{"code":"brand_new","message":"m"}"#).error();
    assert_eq!((e.code(), e.api_code()), (Some("brand_new"), None));
}

#[test]
fn success_answers_decode_or_say_what_was_wrong() {
    let ok = answer(200, &[], br#"{"chain_pem":"x","root_fingerprint":"ab"}"#);
    let chain: ChainResponse = ok.json().unwrap();
    assert_eq!(chain.root_fingerprint, "ab");
    let bad = answer(200, &[], b"not json")
        .json::<ChainResponse>()
        .unwrap_err();
    assert!(matches!(bad, ClientError::BadAnswer { .. }), "{bad}");
    let refused = answer(404, &[], br#"{"code":"not_found","message":"no"}"#)
        .json::<ChainResponse>()
        .unwrap_err();
    assert_eq!(refused.api_code(), Some(Code::NotFound));
}

#[test]
fn urls_split() {
    let t = parse_url("http://127.0.0.1:8080/ocsp").unwrap();
    assert_eq!(
        (t.scheme.as_str(), t.host.as_str(), t.port, t.path.as_str()),
        ("http", "127.0.0.1", 8080, "/ocsp")
    );
    let t = parse_url("https://[::1]/").unwrap();
    assert_eq!(
        (t.host.as_str(), t.port, t.authority.as_str()),
        ("::1", 443, "[::1]")
    );
    assert!(matches!(
        ApiClient::pinned("http://ca.test:8443", "00"),
        Err(ClientError::Setup(_))
    ));
    assert!(matches!(
        ApiClient::new("https://ca.test:8443", b"no pem here", None),
        Err(ClientError::Setup(_))
    ));
}

/// A verifier refusal survives rustls and tokio-rustls as the reason, and only a refusal is
/// read as one.
#[test]
fn refusals_are_told_apart_from_other_handshake_failures() {
    let wrapped = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        refuse("no caServerIdentity".into()),
    );
    assert_eq!(refusal(&wrapped).as_deref(), Some("no caServerIdentity"));
    let other = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
    );
    assert_eq!(refusal(&other), None);
    assert_eq!(refusal(&std::io::Error::other("reset")), None);
}
