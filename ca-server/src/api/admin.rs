//! Admin routes (mTLS with an `_admin` certificate whose role allows the route): enrollment
//! tokens, revocation, certificate search, audit log.

use super::types::*;
use super::{json, peer_of};
use crate::auth::{self, Peer, Permission, Role};
use crate::error::{ApiError, ApiResult, Code};
use crate::ratelimit::Class;
use crate::service::{token_hash, AppState, ADMIN_PROFILE, SERVER_TLS_PROFILE};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use ca_core::audit::NewAuditEvent;
use ca_core::profile::San;
use ca_core::revocation::RevocationReason;
use ca_core::store::{
    CertCount, CertCursor, CertFilter, CertRecord, IdentityBinding, RecordStatus, Requester,
    TokenRecord,
};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Authenticate an admin for a route, after the admin rate limit.
async fn admin(
    state: &Arc<AppState>,
    peer: &Peer,
    perm: Permission,
    route: &str,
) -> ApiResult<auth::Admin> {
    let key = match peer.cert.as_ref().and_then(|c| auth::cert_serial(c)) {
        Some(s) => format!("cert:{}", hex::encode(s)),
        None => peer.ip_key(),
    };
    state.limits.check(Class::Admin, &key)?;
    auth::require(state, peer, perm, route).await
}

/// A fresh token secret (256 bits as 64 lowercase hex digits) and a public id.
///
/// Hex, not base64url: a base64url secret starts with `-` one time in 64, and a command line
/// then takes `--token -abc...` for an option; hex has no `-`, `_` or any character a shell
/// treats specially, so a token can be pasted anywhere. Tokens are stored by hash, so tokens
/// issued in the old form stay valid.
fn new_token() -> (String, String) {
    use rand::RngCore;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let mut id = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut id);
    (hex::encode(secret), format!("tok_{}", hex::encode(id)))
}

/// `POST /v1/admin/tokens`.
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<TokenCreateResponse>> {
    const ROUTE: &str = ca_api::routes::ADMIN_TOKENS;
    let peer = peer_of(peer);
    let admin = admin(&state, &peer, Permission::CreateToken, ROUTE).await?;
    let result = create_token_checked(&state, &peer, &admin, &headers, body).await;
    if let Err(e) = &result {
        state
            .audit(
                NewAuditEvent::failed(admin.actor(), "token.create", ROUTE, e.code.as_str())
                    .with_detail(serde_json::json!({ "message": e.message })),
            )
            .await;
    }
    result.map(Json)
}

async fn create_token_checked(
    state: &Arc<AppState>,
    peer: &Peer,
    admin: &auth::Admin,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<TokenCreateResponse> {
    const ROUTE: &str = ca_api::routes::ADMIN_TOKENS;
    let req: TokenCreateRequest = json(headers, body)?;
    let profile_name = req.profile.clone().unwrap_or_else(|| "client".into());
    if profile_name == SERVER_TLS_PROFILE {
        return Err(ApiError::bad_request(format!(
            "profile {profile_name:?} is internal to the server"
        )));
    }
    if profile_name == ADMIN_PROFILE
        && !admin
            .roles
            .iter()
            .any(|r| r.allows(Permission::CreateAdminToken))
    {
        let e = ApiError::new(
            Code::Forbidden,
            "only a security officer may create tokens for administrator certificates",
        );
        auth::audit_auth_failure(state, peer, admin.actor(), ROUTE, &e).await;
        return Err(e);
    }
    state
        .ca
        .profiles()
        .get(&profile_name)
        .map_err(|_| ApiError::bad_request(format!("unknown profile {profile_name:?}")))?;
    let ttl = match &req.ttl {
        Some(t) => {
            crate::duration::parse(
                "ttl",
                t,
                crate::duration::Range::up_to(state.settings.token_max_ttl),
            )?
            .0
        }
        None => state.settings.token_default_ttl,
    };
    let parsed: Vec<San> = req
        .sans
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(ApiError::from)?;
    let sans: Vec<String> = parsed.iter().map(San::to_string).collect();
    if let Some(cn) = &req.common_name {
        if cn.is_empty() || cn.chars().count() > 64 || cn.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "common_name must be 1-64 printable characters",
            ));
        }
    }
    if req.common_name.is_none() && sans.is_empty() {
        return Err(ApiError::bad_request(
            "a token must bind a common_name or at least one SAN",
        ));
    }
    // The same checks issuance makes (name policy, the commonName included; names reserved
    // for the CA's own endpoints): a token that could never be redeemed is not created.
    state
        .ca
        .check_identity(&profile_name, req.common_name.as_deref(), &parsed)
        .map_err(ApiError::from)?;
    if profile_name == ADMIN_PROFILE {
        let roles: Vec<Role> = sans
            .iter()
            .filter_map(|s| s.strip_prefix("uri:"))
            .filter_map(|u| u.strip_prefix(auth::ROLE_URI_PREFIX))
            .map(|r| {
                Role::parse(r).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "unknown role {r:?} (security-officer, operator, auditor)"
                    ))
                })
            })
            .collect::<ApiResult<_>>()?;
        if roles.is_empty() || req.common_name.is_none() {
            return Err(ApiError::bad_request(
                "an administrator token needs a common_name and a role SAN such as uri:urn:ca:role:operator",
            ));
        }
    }
    let (secret, id) = new_token();
    let now = state.clock.now();
    let record = TokenRecord {
        id: id.clone(),
        hash: token_hash(&secret),
        identity: IdentityBinding {
            common_name: req.common_name.clone(),
            sans: sans.clone(),
        },
        profile: profile_name.clone(),
        created_at: now,
        expires_at: now + ttl,
        created_by: admin.actor(),
        used_at: None,
    };
    let store = state.store.clone();
    let rec = record.clone();
    tokio::task::spawn_blocking(move || store.insert_token(&rec))
        .await
        .map_err(ApiError::internal)??;
    state.metrics.token_created();
    state
        .audit(
            NewAuditEvent::ok(admin.actor(), "token.create", &id).with_detail(serde_json::json!({
                "profile": profile_name,
                "common_name": req.common_name,
                "sans": sans,
                "expires_at": record.expires_at.to_rfc3339(),
            })),
        )
        .await;
    tracing::info!(token_id = %id, profile = %record.profile, "enrollment token created");
    Ok(TokenCreateResponse {
        token: secret,
        id,
        expires_at: record.expires_at.to_rfc3339(),
    })
}

/// Parse a serial given as hex, with or without colons or a `0x` prefix.
pub fn parse_serial(s: &str) -> ApiResult<Vec<u8>> {
    let clean: String = s
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let bytes = hex::decode(&clean)
        .map_err(|_| ApiError::bad_request(format!("serial {s:?} is not hex")))?;
    if bytes.is_empty() || bytes.len() > 20 {
        return Err(ApiError::bad_request(format!(
            "serial {s:?} must be 1 to 20 bytes (RFC 5280 4.1.2.2)"
        )));
    }
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    Ok(bytes[first..].to_vec())
}

/// `POST /v1/admin/revoke`.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<RevokeResponse>> {
    const ROUTE: &str = ca_api::routes::ADMIN_REVOKE;
    let peer = peer_of(peer);
    let admin = admin(&state, &peer, Permission::Revoke, ROUTE).await?;
    let parsed = json::<RevokeRequest>(&headers, body).and_then(|req| {
        let serial = parse_serial(&req.serial)?;
        let reason = match &req.reason {
            Some(r) => r
                .parse::<RevocationReason>()
                .map_err(ApiError::bad_request)?,
            None => RevocationReason::Unspecified,
        };
        Ok((serial, reason, req.lineage))
    });
    let (serial, reason, whole_lineage) = match parsed {
        Ok(v) => v,
        Err(e) => {
            state
                .audit(
                    NewAuditEvent::failed(admin.actor(), "revoke", ROUTE, e.code.as_str())
                        .with_detail(serde_json::json!({ "message": e.message })),
                )
                .await;
            return Err(e);
        }
    };
    let serial_hex = hex::encode(&serial);
    // Segregation of duties first (refusals audited); the authority records, publishes
    // (OCSP, CRL) and audits each revocation; keyCompromise and `lineage` also lock the
    // lineage and revoke its other generations.
    let done = state
        .revoke(
            admin.roles.clone(),
            serial,
            reason,
            admin.actor(),
            whole_lineage,
        )
        .await?;
    let rec = &done.record;
    let (at, reason) = match &rec.status {
        RecordStatus::Revoked { at, reason } => (*at, *reason),
        RecordStatus::Valid => (state.clock.now(), reason),
    };
    if !whole_lineage {
        // The named certificate; a lineage's certificates are counted as they are revoked.
        state.metrics.revoked(reason.name());
    }
    tracing::info!(serial = %serial_hex, reason = %reason, also = done.also_revoked.len(), "revoked");
    Ok(Json(RevokeResponse {
        serial: serial_hex,
        revoked_at: at.to_rfc3339(),
        reason: reason.name().to_string(),
        lineage: rec.lineage_hex(),
        also_revoked: done.also_revoked,
        lineage_locked: done.lineage_locked,
    }))
}

/// Query of `GET /v1/admin/certs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertsParams {
    /// Only this identity.
    pub identity: Option<String>,
    /// `valid`, `revoked` or `expired`.
    pub status: Option<String>,
    /// Unexpired certificates whose notAfter is within this span (`24h`).
    pub expiring_within: Option<String>,
    /// Only this lineage: the serial (hex) of any of its certificates.
    pub lineage: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page (same filters).
    pub cursor: Option<String>,
    /// Include each certificate's PEM.
    #[serde(default)]
    pub pem: bool,
}

impl CertsParams {
    /// What a cursor is bound to: the filters as sent (a cursor of one listing is refused in
    /// another, whose order or rows differ). Not a secret: a cursor is only a position, and
    /// any position is one the caller may list from anyway.
    fn filter_digest(&self) -> [u8; 8] {
        use sha2::Digest;
        let canon = serde_json::json!([
            "certs-v1",
            self.identity.as_deref().filter(|s| !s.is_empty()),
            self.status
                .as_deref()
                .filter(|s| !s.is_empty() && *s != "all"),
            self.expiring_within.as_deref(),
            self.lineage.as_deref().filter(|s| !s.is_empty()),
        ]);
        let h = sha2::Sha256::digest(canon.to_string().as_bytes());
        let mut out = [0u8; 8];
        out.copy_from_slice(&h[..8]);
        out
    }

    /// The opaque `next_cursor` (base64url): the filter digest, then the store's cursor.
    fn encode_cursor(&self, c: &CertCursor) -> String {
        use base64::Engine;
        let mut b = self.filter_digest().to_vec();
        b.extend_from_slice(&c.to_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    /// The store's cursor from `cursor`, refused (`bad_cursor`) unless this server handed it
    /// out for these filters.
    fn decode_cursor(&self) -> ApiResult<Option<CertCursor>> {
        use base64::Engine;
        let Some(text) = self.cursor.as_deref().filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let bad = |why: &str| {
            ApiError::new(
                Code::BadCursor,
                format!(
                    "cursor: {why}; pass the next_cursor of the previous page with the same \
                     filters, or list again without a cursor"
                ),
            )
        };
        if text.len() > 128 {
            return Err(bad("too long to be a cursor"));
        }
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| bad("not base64url"))?;
        let (digest, rest) = b
            .split_at_checked(8)
            .ok_or_else(|| bad("too short to be a cursor"))?;
        if digest != self.filter_digest() {
            return Err(bad("it belongs to a listing with other filters"));
        }
        CertCursor::from_bytes(rest).map(Some).map_err(|e| match e {
            ca_core::Error::BadCursor(why) => bad(&why),
            other => ApiError::internal(other),
        })
    }
}

/// Summary of a record as of `now`.
pub fn summary(rec: &CertRecord, now: chrono::DateTime<chrono::Utc>) -> CertSummary {
    let (status, revoked_at, reason) = match &rec.status {
        RecordStatus::Revoked { at, reason } => (
            "revoked",
            Some(at.to_rfc3339()),
            Some(reason.name().to_string()),
        ),
        RecordStatus::Valid if rec.not_after <= now => ("expired", None, None),
        RecordStatus::Valid => ("valid", None, None),
    };
    CertSummary {
        serial: rec.serial_hex(),
        identity: rec.identity.clone(),
        subject: rec.subject.clone(),
        sans: rec.sans.clone(),
        profile: rec.profile.clone(),
        status: status.into(),
        not_before: rec.not_before.to_rfc3339(),
        not_after: rec.not_after.to_rfc3339(),
        issued_at: rec.issued_at.to_rfc3339(),
        revoked_at,
        revocation_reason: reason,
        requester: match &rec.requester {
            Requester::Token(id) => format!("token:{id}"),
            Requester::Renewal(s) => format!("renewal:{s}"),
            Requester::Admin(a) => format!("admin:{a}"),
        },
        lineage: rec.lineage_hex(),
        generation: rec.generation,
        pem: None,
    }
}

fn query<T: serde::de::DeserializeOwned + Default>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<T> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(format!("query parameters: {}", e.body_text())))
}

/// `GET /v1/admin/certs`.
pub async fn list_certs(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    q: Result<Query<CertsParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<CertsResponse>> {
    let peer = peer_of(peer);
    admin(
        &state,
        &peer,
        Permission::ReadCerts,
        ca_api::routes::ADMIN_CERTS,
    )
    .await?;
    let q = query(q)?;
    let now = state.clock.now();
    let page = q.limit.unwrap_or(100).clamp(1, 1000);
    let mut filter = CertFilter {
        identity: q.identity.clone().filter(|s| !s.is_empty()),
        ..CertFilter::default()
    };
    match q.status.as_deref() {
        None | Some("") | Some("all") => {}
        Some("valid") => {
            filter.revoked = Some(false);
            filter.valid_at = Some(now);
        }
        Some("revoked") => filter.revoked = Some(true),
        Some("expired") => {
            filter.revoked = Some(false);
            filter.expiring_before = Some(now + chrono::Duration::seconds(1));
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "status {other:?}: expected valid, revoked or expired"
            )))
        }
    }
    if let Some(w) = &q.expiring_within {
        let span = crate::duration::parse("expiring_within", w, crate::duration::EXPIRING_WITHIN)?;
        filter.valid_at = Some(now);
        filter.expiring_before = Some(now + span.0);
    }
    // One more than the page: whether another page follows.
    filter.limit = Some(page + 1);
    filter.after = q.decode_cursor()?;
    let lineage_of = match q.lineage.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(parse_serial(s)?),
        None => None,
    };
    let store = state.store.clone();
    let (filter, mut recs) = tokio::task::spawn_blocking(move || {
        // `--lineage` takes the serial of any generation: its lineage is looked up.
        if let Some(serial) = lineage_of {
            let rec = store
                .get_cert(&serial)?
                .ok_or_else(|| ca_core::Error::CertNotFound(hex::encode(&serial)))?;
            filter.lineage = Some(rec.lineage);
        }
        let recs = store.list_certs(&filter)?;
        Ok::<_, ca_core::Error>((filter, recs))
    })
    .await
    .map_err(ApiError::internal)??;
    let next_cursor = if recs.len() > page {
        recs.truncate(page);
        recs.last()
            .map(|last| q.encode_cursor(&CertCursor::after(&filter, last)))
    } else {
        None
    };
    Ok(Json(CertsResponse {
        certs: recs
            .iter()
            .map(|r| {
                let mut s = summary(r, now);
                if q.pem {
                    s.pem = Some(ca_core::x509::pem_encode("CERTIFICATE", &r.der));
                }
                s
            })
            .collect(),
        next_cursor,
    }))
}

/// `GET /v1/admin/audit?from=&limit=`.
pub async fn audit_show(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    q: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<AuditResponse>> {
    let peer = peer_of(peer);
    admin(
        &state,
        &peer,
        Permission::ReadAudit,
        ca_api::routes::ADMIN_AUDIT,
    )
    .await?;
    let q = query(q)?;
    let num = |k: &str, default: u64| -> ApiResult<u64> {
        match q.get(k).map(String::as_str) {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| ApiError::bad_request(format!("{k}={v:?} is not a number"))),
        }
    };
    for k in q.keys() {
        if k != "from" && k != "limit" {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {k:?}"
            )));
        }
    }
    let from = num("from", 1)?;
    let limit = num("limit", 100)?.clamp(1, 1000) as usize;
    let store = state.store.clone();
    let events = tokio::task::spawn_blocking(move || store.audit_events(from, limit))
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(AuditResponse { events }))
}

/// `GET /v1/admin/audit/verify`.
pub async fn audit_verify(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
) -> ApiResult<Json<AuditVerifyResponse>> {
    let peer = peer_of(peer);
    let admin = admin(
        &state,
        &peer,
        Permission::ReadAudit,
        ca_api::routes::ADMIN_AUDIT_VERIFY,
    )
    .await?;
    let store = state.store.clone();
    let key = state.checkpointer.as_ref().map(|c| c.key().clone());
    let r = tokio::task::spawn_blocking(move || store.verify_audit_log(key.as_ref()))
        .await
        .map_err(ApiError::internal)?;
    match r {
        Ok(r) => Ok(Json(AuditVerifyResponse {
            ok: true,
            events: r.events,
            checkpoints: r.checkpoints,
            signatures_checked: r.signatures_checked,
            audit_key_sha256: r.audit_key_sha256.clone(),
            unsigned_tail: r.unsigned_tail(),
            last_checkpoint: r.last_checkpoint,
            archived_events: r.archived_events,
            start: r.start,
        })),
        Err(e) => {
            tracing::error!(error = %e, "audit log verification failed");
            let err = ApiError::new(Code::AuditTampered, e.to_string());
            // Record that the check failed (appending continues the chain from its head).
            state
                .audit(NewAuditEvent::failed(
                    admin.actor(),
                    "audit.verify",
                    ca_api::routes::ADMIN_AUDIT_VERIFY,
                    err.code.as_str(),
                ))
                .await;
            Err(err)
        }
    }
}

fn checkpointer(state: &AppState) -> ApiResult<Arc<crate::audit_log::Checkpointer>> {
    state.checkpointer.clone().ok_or_else(|| {
        ApiError::new(
            Code::NotFound,
            "no audit checkpoint key is configured ([audit] key): this server signs no checkpoints",
        )
    })
}

/// `POST /v1/admin/audit/checkpoint`: sign a checkpoint of the current head now.
pub async fn audit_checkpoint(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
) -> ApiResult<Json<CheckpointResponse>> {
    const ROUTE: &str = ca_api::routes::ADMIN_AUDIT_CHECKPOINT;
    let peer = peer_of(peer);
    let admin = admin(&state, &peer, Permission::ReadAudit, ROUTE).await?;
    let c = checkpointer(&state)?;
    match c.checkpoint_async(true).await {
        Ok(Some(cp)) => {
            tracing::info!(actor = %admin.actor(), seq = cp.seq, "audit checkpoint on demand");
            Ok(Json(CheckpointResponse {
                checkpoint: cp,
                audit_key_sha256: c.key().sha256().to_string(),
            }))
        }
        Ok(None) => Err(ApiError::internal("no checkpoint was signed")),
        Err(e) => {
            let err = ApiError::from(e);
            if err.code == Code::AuditTampered {
                tracing::error!(error = %err.message, "audit checkpoint refused");
                state
                    .audit(NewAuditEvent::failed(
                        admin.actor(),
                        "audit.checkpoint",
                        ROUTE,
                        err.code.as_str(),
                    ))
                    .await;
            }
            Err(err)
        }
    }
}

/// `GET /v1/admin/audit/export?since=SEQ`: JSON lines (header, anchor checkpoint, events,
/// checkpoints, end), streamed. A checkpoint of the head is signed first (when an audit key is
/// configured) and the export ends at it.
pub async fn audit_export(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    q: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::response::Response> {
    const ROUTE: &str = ca_api::routes::ADMIN_AUDIT_EXPORT;
    let peer = peer_of(peer);
    admin(&state, &peer, Permission::ReadAudit, ROUTE).await?;
    let q = query(q)?;
    for k in q.keys() {
        if k != "since" {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {k:?}"
            )));
        }
    }
    let since: u64 = match q.get("since").map(String::as_str) {
        None | Some("") => 1,
        Some(v) => v
            .parse()
            .map_err(|_| ApiError::bad_request(format!("since={v:?} is not a number")))?,
    };
    let (until, key) = match &state.checkpointer {
        Some(c) => {
            let until = match c.checkpoint_async(false).await? {
                Some(cp) => cp.seq,
                None => {
                    let store = state.store.clone();
                    tokio::task::spawn_blocking(move || store.audit_checkpoint_before(u64::MAX))
                        .await
                        .map_err(|e| ca_core::Error::Store {
                            op: "audit checkpoint task",
                            source: Box::new(e),
                        })??
                        .map(|cp| cp.seq)
                        .unwrap_or(0)
                }
            };
            (Some(until), Some(c.key().clone()))
        }
        None => (None, None),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let store = state.store.clone();
    let now = state.clock.now();
    tokio::task::spawn_blocking(move || {
        let mut send = |chunk: Vec<u8>| {
            tx.blocking_send(chunk)
                .map_err(|_| ca_core::Error::Corrupt("the client went away".into()))
        };
        if let Err(e) = crate::audit_log::write_export(
            store.as_ref(),
            since,
            until,
            key.as_ref(),
            now,
            &mut send,
        ) {
            // The export then has no end line: the verifier reports it cut short.
            tracing::error!(error = %e, "audit export failed");
        }
    });
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(axum::body::Body::new(ChunkBody(rx)))
        .map_err(ApiError::internal)
}

/// A response body fed by a channel of chunks (the blocking export writer).
struct ChunkBody(tokio::sync::mpsc::Receiver<Vec<u8>>);

impl hyper::body::Body for ChunkBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|c| Ok(hyper::body::Frame::data(Bytes::from(c)))))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_secrets_never_start_with_a_dash_and_are_hex() {
        let mut ids = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let (secret, id) = super::new_token();
            assert!(!secret.starts_with('-'), "{secret}");
            assert_eq!(secret.len(), 64);
            assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");
            assert!(ids.insert(id));
        }
    }
}

/// `GET /v1/admin/certs/counts`: the store's counters summed (a few rows per profile and
/// notAfter day, whatever the number of certificates: no certificate is read).
pub async fn cert_counts(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
) -> ApiResult<Json<CertCountsResponse>> {
    let peer = peer_of(peer);
    admin(
        &state,
        &peer,
        Permission::ReadCerts,
        ca_api::routes::ADMIN_CERT_COUNTS,
    )
    .await?;
    let store = state.store.clone();
    let rows = tokio::task::spawn_blocking(move || store.cert_counts())
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(count_summary(&rows, state.clock.now())))
}

/// Sum the counter rows as of `now`: totals, per profile, and the expiry bands of the
/// certificates not revoked, by whole UTC days (docs/API.md).
pub fn count_summary(rows: &[CertCount], now: chrono::DateTime<chrono::Utc>) -> CertCountsResponse {
    let today = now.date_naive();
    let mut out = CertCountsResponse {
        as_of: now.to_rfc3339(),
        today: today.to_string(),
        ..CertCountsResponse::default()
    };
    for row in rows {
        let profile = out.by_profile.entry(row.profile.clone()).or_default();
        if row.revoked {
            out.total.revoked += row.count;
            profile.revoked += row.count;
            continue;
        }
        out.total.valid += row.count;
        profile.valid += row.count;
        let days = (row.not_after_day - today).num_days();
        let e = &mut out.expiry;
        match days {
            d if d < 0 => e.expired += row.count,
            d if d > 30 => e.later += row.count,
            d => {
                e.within_30d += row.count;
                if d <= 7 {
                    e.within_7d += row.count;
                }
                if d <= 1 {
                    e.within_24h += row.count;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod count_tests {
    use super::count_summary;
    use ca_core::store::CertCount;
    use chrono::{NaiveDate, TimeZone, Utc};

    #[test]
    fn counter_rows_sum_into_totals_profiles_and_cumulative_expiry_bands() {
        let now = Utc.with_ymd_and_hms(2026, 12, 5, 23, 30, 0).unwrap();
        let day =
            |d: i64| NaiveDate::from_ymd_opt(2026, 12, 5).unwrap() + chrono::Duration::days(d);
        let row = |p: &str, d: i64, revoked: bool, count: u64| CertCount {
            profile: p.into(),
            not_after_day: day(d),
            revoked,
            count,
        };
        let rows = [
            row("client", -1, false, 1),
            row("client", 0, false, 2),
            row("client", 1, false, 4),
            row("client", 2, false, 8),
            row("server", 7, false, 16),
            row("server", 8, false, 32),
            row("server", 30, false, 64),
            row("server", 31, false, 128),
            row("server", 3, true, 256),
        ];
        let s = count_summary(&rows, now);
        assert_eq!(s.today, "2026-12-05");
        assert_eq!((s.total.valid, s.total.revoked), (255, 256));
        assert_eq!(s.by_profile["client"].valid, 15);
        assert_eq!(s.by_profile["server"].valid, 240);
        assert_eq!(s.by_profile["server"].revoked, 256);
        assert_eq!(s.expiry.expired, 1);
        assert_eq!(s.expiry.within_24h, 2 + 4);
        assert_eq!(s.expiry.within_7d, 2 + 4 + 8 + 16);
        assert_eq!(s.expiry.within_30d, 2 + 4 + 8 + 16 + 32 + 64);
        assert_eq!(s.expiry.later, 128);
    }
}
