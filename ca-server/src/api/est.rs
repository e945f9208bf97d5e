//! EST (RFC 7030): `cacerts`, `simpleenroll` (token as HTTP Basic password or Bearer),
//! `simplereenroll` (mTLS). Requests are base64 DER PKCS#10 (`application/pkcs10`, RFC 7030
//! 4.2.1); responses are base64 DER PKCS#7 certs-only (`application/pkcs7-mime;
//! smime-type=certs-only`, RFC 7030 4.1.3 and 4.2.3), built with the `cms` crate.

use super::enroll::{enroll_with_token, renew_with_cert, renewing_cert};
use super::{body, content_type, peer_of};
use crate::auth::Peer;
use crate::error::{ApiError, ApiResult, Code};
use crate::ratelimit::Class;
use crate::service::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine;
use ca_core::csr::CsrRequest;
use der::{Decode, Encode};
use std::sync::Arc;

const PKCS7_CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";

/// A degenerate SignedData (certs-only, RFC 5652 5.1 / RFC 7030 4.1.3), DER.
pub fn certs_only_der(certs: &[Vec<u8>]) -> ApiResult<Vec<u8>> {
    let parsed = certs
        .iter()
        .map(|c| x509_cert::Certificate::from_der(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::internal)?;
    let ci = cms::content_info::ContentInfo::try_from(parsed).map_err(ApiError::internal)?;
    ci.to_der().map_err(ApiError::internal)
}

/// Base64 with MIME line breaks (RFC 2045 6.8: at most 76 characters per line).
fn base64_mime(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2);
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

fn pkcs7_response(certs: &[Vec<u8>]) -> ApiResult<Response> {
    let der = certs_only_der(certs)?;
    let mut resp = base64_mime(&der).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PKCS7_CERTS_ONLY),
    );
    h.insert(
        "content-transfer-encoding",
        HeaderValue::from_static("base64"),
    );
    Ok(resp)
}

/// Decode an EST PKCS#10 body: base64 (whitespace tolerated) of DER.
fn parse_csr(headers: &HeaderMap, b: Result<Bytes, BytesRejection>) -> ApiResult<CsrRequest> {
    let bytes = body(b)?;
    content_type(headers, &["application/pkcs10"])?;
    let cleaned: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&cleaned)
        .map_err(|e| ApiError::new(Code::MalformedCsr, format!("body is not base64: {e}")))?;
    Ok(ca_core::csr::parse_der(&der)?)
}

/// The token from `Authorization: Basic` (the password) or `Bearer`.
fn token_from(headers: &HeaderMap) -> ApiResult<String> {
    let challenge = |msg: &str| {
        let mut e = ApiError::new(Code::TokenRejected, msg);
        e.www_authenticate = Some("Basic realm=\"est\"");
        e
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            challenge("EST enrollment needs the token as HTTP Basic password or Bearer")
        })?;
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or_else(|| challenge("malformed Authorization header"))?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(rest.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .map_err(|_| challenge("malformed Basic credentials"))?;
        let text =
            String::from_utf8(decoded).map_err(|_| challenge("malformed Basic credentials"))?;
        let (_, password) = text
            .split_once(':')
            .ok_or_else(|| challenge("malformed Basic credentials"))?;
        return Ok(password.to_string());
    }
    Err(challenge(
        "unsupported Authorization scheme (use Basic or Bearer)",
    ))
}

/// `GET /.well-known/est/cacerts`: the issuing CA and the root.
pub async fn cacerts(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    pkcs7_response(&state.ca.full_chain())
}

/// `POST /.well-known/est/simpleenroll`.
pub async fn simpleenroll(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    const ROUTE: &str = ca_api::routes::EST_SIMPLEENROLL;
    let peer = peer_of(peer);
    state.limits.check(Class::Enroll, &peer.ip_key())?;
    let token = match token_from(&headers) {
        Ok(t) => t,
        Err(e) => {
            // No token: nobody identified.
            state.unauthenticated_failure(crate::unauth::Kind::Enroll, &peer, ROUTE, &e);
            return Err(e);
        }
    };
    let csr = parse_csr(&headers, b);
    let o = enroll_with_token(&state, &peer, ROUTE, &token, csr).await?;
    pkcs7_response(std::slice::from_ref(&o.issued.record.der))
}

/// `POST /.well-known/est/simplereenroll`.
pub async fn simplereenroll(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    const ROUTE: &str = ca_api::routes::EST_SIMPLEREENROLL;
    let peer = peer_of(peer);
    let previous = renewing_cert(&state, &peer, ROUTE).await?;
    let csr = parse_csr(&headers, b);
    let o = renew_with_cert(&state, &peer, ROUTE, previous, csr).await?;
    pkcs7_response(std::slice::from_ref(&o.issued.record.der))
}
