//! `POST /v1/enroll` (one-time token) and `POST /v1/renew` (mTLS).

use super::types::{EnrollRequest, IssuedResponse, RenewRequest};
use super::{json, peer_of};
use crate::auth::{self, cert_actor, Peer};
use crate::error::{ApiError, ApiResult, Code};
use crate::ratelimit::Class;
use crate::service::{token_hash, AppState, Outcome, Request};
use crate::unauth::Kind;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use ca_core::audit::NewAuditEvent;
use ca_core::csr::CsrRequest;
use ca_core::store::CertRecord;
use std::sync::Arc;

/// The `Issued` JSON of an outcome.
pub fn issued_response(o: &Outcome) -> IssuedResponse {
    let rec = &o.issued.record;
    IssuedResponse {
        certificate: o.issued.cert_pem(),
        chain: o.issued.chain_pem(),
        serial: rec.serial_hex(),
        not_before: rec.not_before.to_rfc3339(),
        not_after: rec.not_after.to_rfc3339(),
    }
}

/// Enroll with a token: shared by `/v1/enroll` and EST simpleenroll. Audits either way.
pub(crate) async fn enroll_with_token(
    state: &Arc<AppState>,
    peer: &Peer,
    route: &str,
    token: &str,
    csr: ApiResult<CsrRequest>,
) -> ApiResult<Outcome> {
    // A refusal before the token was looked at, or of the token itself, identifies nobody.
    let token_checked = csr.is_ok();
    let result = match csr {
        Ok(csr) => {
            let (route, peer_ip) = (route.to_string(), peer.addr.ip().to_string());
            // The success event is appended with the issuance (one store flush for both).
            let audit = move |o: &Outcome| {
                let rec = &o.issued.record;
                let token_id = o.token.as_ref().map(|t| t.id.clone()).unwrap_or_default();
                NewAuditEvent::ok(format!("token:{token_id}"), "enroll", rec.serial_hex())
                    .with_detail(serde_json::json!({
                        "route": route,
                        "identity": rec.identity,
                        "sans": rec.sans,
                        "profile": rec.profile,
                        "token_id": token_id,
                        "lineage": rec.lineage_hex(),
                        "generation": rec.generation,
                        "peer": peer_ip,
                    }))
            };
            let req = Request::Enrollment {
                token_hash: token_hash(token),
            };
            state.issue_audited(csr, req, audit).await
        }
        Err(e) => Err(e),
    };
    match &result {
        Ok(o) => {
            let rec = &o.issued.record;
            let token_id = o.token.as_ref().map(|t| t.id.as_str()).unwrap_or_default();
            state.metrics.issued(&rec.profile);
            tracing::info!(serial = %rec.serial_hex(), identity = %rec.identity, %token_id, "enrolled");
        }
        Err(e) if !token_checked || e.code == Code::TokenRejected => {
            state.unauthenticated_failure(Kind::Enroll, peer, route, e);
        }
        Err(e) => {
            state
                .audit(
                    NewAuditEvent::failed(peer.ip_key(), "enroll", route, e.code.as_str())
                        .with_detail(serde_json::json!({ "message": e.message })),
                )
                .await;
        }
    }
    result
}

/// Renew with the current certificate: shared by `/v1/renew` and EST simplereenroll.
pub(crate) async fn renew_with_cert(
    state: &Arc<AppState>,
    peer: &Peer,
    route: &str,
    previous: CertRecord,
    csr: ApiResult<CsrRequest>,
) -> ApiResult<Outcome> {
    let actor = cert_actor(&previous);
    let result = match csr {
        Ok(csr) => {
            let (actor, route) = (actor.clone(), route.to_string());
            let (previous_hex, peer_ip) = (previous.serial_hex(), peer.addr.ip().to_string());
            // The success event is appended with the issuance (one store flush for both).
            let audit = move |o: &Outcome| {
                let rec = &o.issued.record;
                NewAuditEvent::ok(actor, "renew", rec.serial_hex()).with_detail(serde_json::json!({
                    "route": route,
                    "previous": previous_hex,
                    "identity": rec.identity,
                    "profile": rec.profile,
                    "lineage": rec.lineage_hex(),
                    "generation": rec.generation,
                    "peer": peer_ip,
                }))
            };
            state
                .issue_audited(csr, Request::Renewal(previous.clone()), audit)
                .await
        }
        Err(e) => Err(e),
    };
    match &result {
        Ok(o) => {
            let rec = &o.issued.record;
            state.metrics.renewed(&rec.profile);
            tracing::info!(serial = %rec.serial_hex(), previous = %previous.serial_hex(), "renewed");
        }
        Err(e) => {
            state
                .audit(
                    NewAuditEvent::failed(actor, "renew", route, e.code.as_str())
                        .with_detail(serde_json::json!({ "message": e.message })),
                )
                .await;
        }
    }
    result
}

/// Authenticate the renewing certificate (audited on refusal) after the rate limit.
pub(crate) async fn renewing_cert(
    state: &Arc<AppState>,
    peer: &Peer,
    route: &str,
) -> ApiResult<CertRecord> {
    match auth::check_client_cert(state, peer).await {
        Ok(r) => {
            // Keyed by lineage (the identity), not by serial: each renewal would otherwise
            // start a fresh bucket.
            state
                .limits
                .check(Class::Renew, &format!("lineage:{}", r.lineage_hex()))?;
            Ok(r)
        }
        Err(e) => {
            state.limits.check(Class::Renew, &peer.ip_key())?;
            auth::audit_cert_refusal(state, peer, Kind::Renew, route, &e).await;
            Err(e)
        }
    }
}

/// `POST /v1/enroll`.
pub async fn enroll(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<IssuedResponse>> {
    let peer = peer_of(peer);
    state.limits.check(Class::Enroll, &peer.ip_key())?;
    let req: EnrollRequest = match json(&headers, body) {
        Ok(r) => r,
        Err(e) => {
            // Before the token was looked at: nobody identified.
            state.unauthenticated_failure(Kind::Enroll, &peer, ca_api::routes::ENROLL, &e);
            return Err(e);
        }
    };
    let csr = ca_core::csr::parse_pem_or_der(req.csr.as_bytes()).map_err(ApiError::from);
    let o = enroll_with_token(&state, &peer, ca_api::routes::ENROLL, &req.token, csr).await?;
    Ok(Json(issued_response(&o)))
}

/// `POST /v1/renew`.
pub async fn renew(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<IssuedResponse>> {
    let peer = peer_of(peer);
    let previous = renewing_cert(&state, &peer, ca_api::routes::RENEW).await?;
    let req: RenewRequest = match json(&headers, body) {
        Ok(r) => r,
        Err(e) => {
            audit_refusal(&state, &peer, "renew", ca_api::routes::RENEW, &e).await;
            return Err(e);
        }
    };
    let csr = ca_core::csr::parse_pem_or_der(req.csr.as_bytes()).map_err(ApiError::from);
    let o = renew_with_cert(&state, &peer, ca_api::routes::RENEW, previous, csr).await?;
    Ok(Json(issued_response(&o)))
}

/// Audit a request refused before it reached the CA (bad body, wrong type).
pub(crate) async fn audit_refusal(
    state: &Arc<AppState>,
    peer: &Peer,
    action: &str,
    route: &str,
    e: &ApiError,
) {
    state
        .audit(
            NewAuditEvent::failed(peer.ip_key(), action, route, e.code.as_str())
                .with_detail(serde_json::json!({ "message": e.message })),
        )
        .await;
}
