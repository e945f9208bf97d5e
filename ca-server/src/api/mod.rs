//! The HTTPS API router: enrollment, renewal, admin, EST, health and metrics.
//!
//! Every route answers errors as [`crate::error::ApiError`] JSON. Body size and request time
//! are bounded; failures are counted by code in the metrics.

pub mod admin;
pub mod enroll;
pub mod est;
pub mod types;

use crate::auth::Peer;
use crate::error::{ApiError, ApiResult, Code};
use crate::service::AppState;
use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceBuilder;

/// The HTTPS API (all routes).
pub fn router(state: Arc<AppState>) -> Router {
    let timeout = state.settings.request_timeout;
    let body_limit = state.settings.max_body_bytes;
    Router::new()
        .route(ca_api::routes::CHAIN, get(chain))
        .route(ca_api::routes::ENROLL, post(enroll::enroll))
        .route(ca_api::routes::RENEW, post(enroll::renew))
        .route(ca_api::routes::ADMIN_TOKENS, post(admin::create_token))
        .route(ca_api::routes::ADMIN_REVOKE, post(admin::revoke))
        .route(ca_api::routes::ADMIN_CERTS, get(admin::list_certs))
        .route(ca_api::routes::ADMIN_CERT_COUNTS, get(admin::cert_counts))
        .route(ca_api::routes::ADMIN_AUDIT, get(admin::audit_show))
        .route(ca_api::routes::ADMIN_AUDIT_VERIFY, get(admin::audit_verify))
        .route(
            ca_api::routes::ADMIN_AUDIT_CHECKPOINT,
            post(admin::audit_checkpoint),
        )
        .route(ca_api::routes::ADMIN_AUDIT_EXPORT, get(admin::audit_export))
        .route(ca_api::routes::EST_CACERTS, get(est::cacerts))
        .route(ca_api::routes::EST_SIMPLEENROLL, post(est::simpleenroll))
        .route(
            ca_api::routes::EST_SIMPLEREENROLL,
            post(est::simplereenroll),
        )
        .merge(health_routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_oversized,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    ApiError::new(Code::RequestTimeout, "the request took too long")
                }))
                .timeout(timeout),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// `/healthz`, `/readyz` (an HSM session is logged in, the key is there, the store reads),
/// `/metrics`.
pub fn health_routes() -> Router<Arc<AppState>> {
    liveness_routes().route(ca_api::routes::READYZ, get(readyz))
}

/// `/healthz` and `/metrics`, also served on the status listener (whose `/readyz` is its own:
/// it does not depend on the HSM).
pub fn liveness_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(ca_api::routes::HEALTHZ, get(healthz))
        .route(ca_api::routes::METRICS, get(metrics))
}

/// [`liveness_routes`] as a stand-alone router (for the plain-HTTP status listener).
pub fn liveness_router(state: Arc<AppState>) -> Router {
    liveness_routes().with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(Code::NotFound, "no such route")
}

/// Count failures by code; log each request without bodies (no tokens, no keys).
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status();
    if let Some(code) = resp.extensions().get::<Code>() {
        state.metrics.failure(code.as_str());
        tracing::info!(%method, %path, status = status.as_u16(), code = code.as_str(),
            ms = start.elapsed().as_millis() as u64, "request refused");
    } else {
        tracing::debug!(%method, %path, status = status.as_u16(),
            ms = start.elapsed().as_millis() as u64, "request");
    }
    resp
}

/// Most bytes of an oversized body read and discarded so that the client, still sending,
/// receives the 413 instead of a connection reset: a server that closes a connection with
/// unread data makes the kernel send a TCP reset, which destroys the answer in flight (the
/// reason for nginx's lingering close).
pub const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

/// Refuse a body over `limits.max_body_bytes` before any route reads it, with a `413` the client
/// receives:
///
/// - declared `Content-Length` over the limit and `Expect: 100-continue`: answer at once (the
///   client has not sent the body and will not);
/// - declared over the limit, without it: read and discard the body (up to [`DRAIN_LIMIT`];
///   beyond that, answer at once: the client may then see a reset), then answer;
/// - no declared length (chunked, HTTP/2 without `content-length`): read up to the limit here;
///   past it, drain the rest the same way, then answer.
///
/// HTTP/1.1 answers carry `Connection: close`. Refusals are audited (`request`, rate-limited
/// per client IP so that cheap requests cannot flood the log) and counted.
async fn refuse_oversized(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    use http_body_util::BodyExt;
    let limit = state.settings.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(n) = declared {
        if n <= limit as u64 {
            // hyper holds the body to its declared length; the route's own limit applies.
            return next.run(req).await;
        }
        let expects_continue = req
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let (parts, body) = req.into_parts();
        if !expects_continue && n <= DRAIN_LIMIT {
            drain(body, DRAIN_LIMIT).await;
        }
        return too_large(&state, &parts, limit).await;
    }
    let (parts, mut body) = req.into_parts();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        drain(body, DRAIN_LIMIT.saturating_sub(buf.len() as u64)).await;
                        return too_large(&state, &parts, limit).await;
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Err(e) => {
                return ApiError::bad_request(format!("cannot read the request body: {e}"))
                    .into_response()
            }
        }
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(buf)))
        .await
}

/// Read and discard up to `max` bytes of a body (the client is still sending it).
async fn drain(mut body: axum::body::Body, max: u64) {
    use http_body_util::BodyExt;
    let mut seen = 0u64;
    while seen <= max {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    seen += data.len() as u64;
                }
            }
            Some(Err(_)) | None => return,
        }
    }
}

async fn too_large(state: &Arc<AppState>, parts: &http::request::Parts, limit: usize) -> Response {
    let err = ApiError::new(
        Code::PayloadTooLarge,
        format!("request body over the size limit of {limit} bytes (limits.max_body_bytes)"),
    );
    let peer = peer_of(parts.extensions.get::<Peer>().cloned().map(Extension));
    // A client certificate of this CA identifies the caller: one event (rate-limited per
    // address so that cheap requests cannot flood the log). Anyone else: counted for the
    // next summary (crate::unauth).
    let identified =
        peer.cert.is_some() && crate::auth::check_client_cert(state, &peer).await.is_ok();
    if !identified {
        state.unauthenticated_failure(
            crate::unauth::Kind::PayloadTooLarge,
            &peer,
            parts.uri.path(),
            &err,
        );
    } else if state
        .limits
        .check(
            crate::ratelimit::Class::Admin,
            &format!("too-large:{}", peer.addr.ip()),
        )
        .is_ok()
    {
        state
            .audit(
                ca_core::audit::NewAuditEvent::failed(
                    peer.ip_key(),
                    "request",
                    parts.uri.path(),
                    err.code.as_str(),
                )
                .with_detail(serde_json::json!({ "method": parts.method.as_str() })),
            )
            .await;
    }
    let mut resp = err.into_response();
    if parts.version <= http::Version::HTTP_11 {
        resp.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    resp
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Anonymous: `ready` or `not ready`, nothing else (the reason is in the log and `/metrics`).
/// Cached and single-flight, without a signature ([`AppState::ready`]).
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready().await {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn chain(State(state): State<Arc<AppState>>) -> Json<types::ChainResponse> {
    Json(types::ChainResponse {
        chain_pem: state.chain_pem(),
        root_fingerprint: state.root_fingerprint(),
    })
}

/// The peer of a request; a request that did not come through the TLS listener (tests that
/// call the router directly) is an anonymous local peer.
pub(crate) fn peer_of(peer: Option<Extension<Peer>>) -> Peer {
    peer.map(|Extension(p)| p).unwrap_or(Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        cert: None,
    })
}

/// The body, or `payload_too_large` / `bad_request`.
pub(crate) fn body(b: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    b.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(Code::PayloadTooLarge, "request body over the size limit")
        } else {
            ApiError::bad_request(format!("cannot read the request body: {r}"))
        }
    })
}

/// Refuse a body whose Content-Type is not one of `allowed`.
pub(crate) fn content_type(headers: &HeaderMap, allowed: &[&str]) -> ApiResult<()> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if allowed.iter().any(|a| *a == essence) {
        Ok(())
    } else {
        Err(ApiError::new(
            Code::UnsupportedMediaType,
            format!(
                "Content-Type {:?} is not accepted here; send {}",
                ct,
                allowed.join(" or ")
            ),
        ))
    }
}

/// Parse a JSON body (Content-Type application/json).
pub(crate) fn json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<T> {
    let bytes = body(b)?;
    content_type(headers, &["application/json"])?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("request body is not the expected JSON: {e}")))
}
