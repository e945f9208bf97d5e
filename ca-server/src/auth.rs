//! Who is calling: the client certificate presented at the TLS handshake (a request
//! extension), checked per request against the store; and what an administrator may do.
//!
//! # Roles
//!
//! Administrator certificates are issued under the internal profile `_admin` and carry their
//! role as a URI SAN `urn:ca:role:<role>`, one of `security-officer`, `operator`, `auditor`.
//! A role URI counts only in a certificate of the `_admin` profile, so no enrollment profile
//! can mint an administrator.
//!
//! | permission | security-officer | operator | auditor |
//! |---|---|---|---|
//! | create enrollment tokens | yes | yes | no |
//! | create tokens for admin certificates (`_admin`) | yes | no | no |
//! | revoke subscriber certificates | yes | yes | no |
//! | revoke administrator (`_admin`) and server TLS (`_server-tls`) certificates | yes | no | no |
//! | list certificates | yes | no | yes |
//! | read and verify the audit log | yes | no | yes |
//!
//! Whoever asks, the last valid (unrevoked, unexpired) security-officer certificate is never
//! revoked ([`check_revocation_allowed`]); when none is left, `ca-server admin-cert create
//! --offline` (break-glass, on the CA host) mints one.

use crate::error::{ApiError, ApiResult, Code};
use crate::service::{AppState, ADMIN_PROFILE, SERVER_TLS_PROFILE};
use crate::unauth::Kind;
use ca_core::audit::NewAuditEvent;
use ca_core::store::CertRecord;
use std::net::SocketAddr;
use std::sync::Arc;

/// URI SAN prefix that carries an administrator's role.
pub const ROLE_URI_PREFIX: &str = "urn:ca:role:";

/// The TLS peer of a request (inserted by the HTTPS listener).
#[derive(Clone, Debug)]
pub struct Peer {
    /// Remote address.
    pub addr: SocketAddr,
    /// The client certificate (DER) that passed the handshake, if any.
    pub cert: Option<Arc<Vec<u8>>>,
}

impl Peer {
    /// Rate-limit / audit key when no certificate identifies the caller.
    pub fn ip_key(&self) -> String {
        format!("ip:{}", self.addr.ip())
    }
}

/// Administrator roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything, including minting administrator certificates.
    SecurityOfficer,
    /// Create tokens, revoke.
    Operator,
    /// Read certificates and the audit log.
    Auditor,
}

impl Role {
    /// The role's name in `urn:ca:role:<name>`.
    pub fn name(self) -> &'static str {
        match self {
            Role::SecurityOfficer => "security-officer",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }

    /// Parse a role name.
    pub fn parse(s: &str) -> Option<Role> {
        [Role::SecurityOfficer, Role::Operator, Role::Auditor]
            .into_iter()
            .find(|r| r.name() == s)
    }

    /// The SAN that carries this role (`uri:urn:ca:role:<name>`).
    pub fn san(self) -> String {
        format!("uri:{ROLE_URI_PREFIX}{}", self.name())
    }

    /// Whether the role grants a permission.
    pub fn allows(self, p: Permission) -> bool {
        match self {
            Role::SecurityOfficer => true,
            Role::Operator => matches!(p, Permission::CreateToken | Permission::Revoke),
            Role::Auditor => matches!(p, Permission::ReadCerts | Permission::ReadAudit),
        }
    }
}

/// What an admin route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// `POST /v1/admin/tokens` for enrollment profiles.
    CreateToken,
    /// `POST /v1/admin/tokens` for the `_admin` profile.
    CreateAdminToken,
    /// `POST /v1/admin/revoke`.
    Revoke,
    /// `GET /v1/admin/certs`.
    ReadCerts,
    /// `GET /v1/admin/audit*`.
    ReadAudit,
}

/// Roles carried by a stored certificate record (only `_admin` certificates carry any).
pub fn roles_of(record: &CertRecord) -> Vec<Role> {
    if record.profile != ADMIN_PROFILE {
        return Vec::new();
    }
    record
        .sans
        .iter()
        .filter_map(|s| s.strip_prefix("uri:"))
        .filter_map(|u| u.strip_prefix(ROLE_URI_PREFIX))
        .filter_map(Role::parse)
        .collect()
}

/// Serial (big-endian magnitude) of a DER certificate.
pub fn cert_serial(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.tbs_certificate.raw_serial().to_vec())
}

/// Audit actor for a certificate holder.
pub fn cert_actor(record: &CertRecord) -> String {
    format!("{} (serial {})", record.identity, record.serial_hex())
}

/// The certificate presented must be one this CA issued (same DER as stored), not revoked and
/// not expired by the CA's clock. Refusals are audited and counted by the caller's route. The
/// store is read on the blocking pool (PostgreSQL's client must not run on an async thread).
pub async fn check_client_cert(state: &Arc<AppState>, peer: &Peer) -> ApiResult<CertRecord> {
    let der = peer.cert.as_ref().ok_or_else(|| {
        ApiError::new(
            Code::ClientCertRequired,
            "this route needs a client certificate issued by this CA (mTLS)",
        )
    })?;
    let unknown = || {
        ApiError::new(
            Code::CertUnknown,
            "client certificate was not issued by this CA",
        )
    };
    let serial = cert_serial(der).ok_or_else(unknown)?;
    let serial = strip_sign_byte(&serial);
    let serial = serial.to_vec();
    let store = state.store.clone();
    let record = tokio::task::spawn_blocking(move || store.get_cert(&serial))
        .await
        .map_err(|e| {
            ApiError::from(ca_core::Error::Store {
                op: "certificate lookup task",
                source: Box::new(e),
            })
        })??
        .ok_or_else(unknown)?;
    if record.der.as_slice() != der.as_slice() {
        return Err(unknown());
    }
    if record.is_revoked() {
        return Err(ApiError::new(
            Code::CertRevoked,
            format!("client certificate {} is revoked", record.serial_hex()),
        ));
    }
    let now = state.clock.now();
    if record.not_after <= now {
        return Err(ApiError::new(
            Code::CertExpired,
            format!(
                "client certificate {} expired at {}; enroll again with a new token",
                record.serial_hex(),
                record.not_after.to_rfc3339()
            ),
        ));
    }
    Ok(record)
}

/// DER INTEGERs carry a leading zero byte when the top bit is set; the store keys by magnitude.
fn strip_sign_byte(serial: &[u8]) -> &[u8] {
    match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        s => s,
    }
}

/// Serialises revocations made on an administrator's authority, so that the last-officer rule
/// of [`check_revocation_allowed`] and the revocation it allows are one step: two officers
/// revoking each other's certificates at the same moment cannot leave none. In the process a
/// mutex; on a store several nodes share, also the lease [`REVOCATION_LEASE`] in the store, so
/// that the step is one across nodes.
#[derive(Debug, Default)]
pub struct RevocationLock(std::sync::Mutex<()>);

/// The store lease ([`ca_core::store::Leases`]) held across nodes while an administrator's
/// revocation is checked and stored.
pub const REVOCATION_LEASE: &str = "revocation:admin";

/// How long the lease is held at most if its holder dies mid-revocation.
const REVOCATION_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a revocation waits for another node's before giving up (`store_unavailable`).
const REVOCATION_LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Proof that [`RevocationLock`] is held (and, on a shared store, the lease): released on drop.
pub struct RevocationGuard<'a> {
    _local: std::sync::MutexGuard<'a, ()>,
    shared: Option<(&'a dyn ca_core::store::Store, String)>,
}

impl std::fmt::Debug for RevocationGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationGuard")
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

impl Drop for RevocationGuard<'_> {
    fn drop(&mut self) {
        if let Some((store, holder)) = self.shared.take() {
            if let Err(e) = store.release_lease(REVOCATION_LEASE, &holder) {
                tracing::warn!(error = %e, "releasing the revocation lease failed; it expires by itself");
            }
        }
    }
}

impl RevocationLock {
    /// Wait for the lock, and on a shared store for the lease (blocking: call from the blocking
    /// pool). `store_unavailable` if another node held the lease for longer than 30 s, or the
    /// store cannot be asked.
    pub fn lock<'a>(
        &'a self,
        store: &'a dyn ca_core::store::Store,
    ) -> ApiResult<RevocationGuard<'a>> {
        // A panic while held leaves no partial state behind (the check only reads).
        let local = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !store.is_shared() {
            return Ok(RevocationGuard {
                _local: local,
                shared: None,
            });
        }
        let holder = ca_core::crl::lease_holder_name();
        let deadline = std::time::Instant::now() + REVOCATION_LEASE_WAIT;
        let mut pause = std::time::Duration::from_millis(5);
        while !store.try_lease(REVOCATION_LEASE, &holder, REVOCATION_LEASE_TTL)? {
            if std::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    Code::StoreUnavailable,
                    "another node holds the revocation lock; try again",
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(100));
        }
        Ok(RevocationGuard {
            _local: local,
            shared: Some((store, holder)),
        })
    }
}

/// Whether `rec` is a security-officer certificate that can still authenticate at `now`.
pub fn is_valid_security_officer(rec: &CertRecord, now: chrono::DateTime<chrono::Utc>) -> bool {
    !rec.is_revoked() && rec.not_after > now && roles_of(rec).contains(&Role::SecurityOfficer)
}

/// Segregation of duties for one revocation: may an administrator holding `actor_roles`
/// revoke `target`? Call it for every certificate revoked on an administrator's authority
/// (single revocation, lineage revocation), holding the [`RevocationLock`] (`_held`) until the
/// revocation is stored. Blocking (reads the store).
///
/// - Administrator certificates (`_admin`), the server's TLS certificate (`_server-tls`) and
///   the delegated OCSP responder certificate (`_ocsp-signer`): only a security officer
///   (`forbidden` otherwise), so an operator cannot lock out the officers, take the server's
///   identity down, or stop every node from signing OCSP answers.
/// - The last valid security-officer certificate: nobody (`last_security_officer`), not even
///   its holder; issue another one first, or use break-glass.
pub fn check_revocation_allowed(
    state: &AppState,
    _held: &RevocationGuard<'_>,
    actor_roles: &[Role],
    target: &CertRecord,
) -> ApiResult<()> {
    let what = match target.profile.as_str() {
        ADMIN_PROFILE => Some("an administrator certificate"),
        SERVER_TLS_PROFILE => Some("the server's TLS certificate"),
        ca_core::ocsp::OCSP_SIGNER_PROFILE => Some("the OCSP responder certificate"),
        _ => None,
    };
    if let Some(what) = what {
        if !actor_roles.contains(&Role::SecurityOfficer) {
            return Err(ApiError::new(
                Code::Forbidden,
                format!(
                    "certificate {} is {what}: only a security officer may revoke it",
                    target.serial_hex()
                ),
            ));
        }
    }
    let now = state.clock.now();
    if is_valid_security_officer(target, now) {
        let mut others = 0usize;
        state.store.for_each_cert(&mut |r| {
            if r.serial != target.serial && is_valid_security_officer(&r, now) {
                others += 1;
            }
            Ok(())
        })?;
        if others == 0 {
            return Err(ApiError::new(
                Code::LastSecurityOfficer,
                format!(
                    "certificate {} is the last valid security-officer certificate: issue another \
                     one first (ca-server admin-cert create --role security-officer), then revoke \
                     this one",
                    target.serial_hex()
                ),
            ));
        }
    }
    Ok(())
}

/// An authenticated administrator.
#[derive(Clone, Debug)]
pub struct Admin {
    /// The admin's certificate record.
    pub record: CertRecord,
    /// Its roles.
    pub roles: Vec<Role>,
}

impl Admin {
    /// Audit actor.
    pub fn actor(&self) -> String {
        cert_actor(&self.record)
    }
}

/// Authenticate an administrator and check the permission; refusals are audited.
pub async fn require(
    state: &Arc<AppState>,
    peer: &Peer,
    perm: Permission,
    route: &str,
) -> ApiResult<Admin> {
    let record = match check_client_cert(state, peer).await {
        Ok(r) => r,
        Err(e) => {
            audit_cert_refusal(state, peer, Kind::Admin, route, &e).await;
            return Err(e);
        }
    };
    let roles = roles_of(&record);
    if roles.iter().any(|r| r.allows(perm)) {
        return Ok(Admin { record, roles });
    }
    let held = if roles.is_empty() {
        "no administrator role".to_string()
    } else {
        roles
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let e = ApiError::new(
        Code::Forbidden,
        format!("{route} is not allowed for this certificate ({held})"),
    );
    audit_auth_failure(state, peer, cert_actor(&record), route, &e).await;
    Err(e)
}

/// Whether a refusal by [`check_client_cert`] identifies the caller: a certificate this CA
/// issued, revoked or expired. Otherwise (no certificate, one this CA did not issue) nothing
/// identifies who called.
pub fn identifies_caller(e: &ApiError) -> bool {
    matches!(e.code, Code::CertRevoked | Code::CertExpired)
}

/// Audit a refusal by [`check_client_cert`]: an `auth.fail` event when the certificate
/// identifies the caller, else counted for the next summary ([`crate::unauth`]).
pub async fn audit_cert_refusal(
    state: &Arc<AppState>,
    peer: &Peer,
    kind: Kind,
    route: &str,
    e: &ApiError,
) {
    if identifies_caller(e) {
        audit_auth_failure(state, peer, peer.ip_key(), route, e).await;
    } else {
        state.unauthenticated_failure(kind, peer, route, e);
    }
}

/// Append an `auth.fail` audit event (an identified caller refused).
pub async fn audit_auth_failure(
    state: &Arc<AppState>,
    peer: &Peer,
    actor: String,
    route: &str,
    e: &ApiError,
) {
    state
        .audit(
            NewAuditEvent::failed(actor, "auth.fail", route, e.code.as_str())
                .with_detail(serde_json::json!({ "peer": peer.addr.ip().to_string() })),
        )
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use ca_core::store::{RecordStatus, Requester};

    fn record(profile: &str, sans: &[&str]) -> CertRecord {
        let now = chrono::Utc::now();
        CertRecord {
            serial: vec![1],
            subject: "CN=x".into(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            identity: "x".into(),
            profile: profile.into(),
            not_before: now,
            not_after: now,
            issued_at: now,
            requester: Requester::Admin("t".into()),
            spki_sha256: String::new(),
            der: Vec::new(),
            status: RecordStatus::Valid,
            lineage: vec![1],
            generation: 1,
        }
    }

    #[test]
    fn roles_count_only_in_admin_certificates() {
        let admin = record(ADMIN_PROFILE, &["uri:urn:ca:role:operator"]);
        assert_eq!(roles_of(&admin), vec![Role::Operator]);
        let leaf = record("client", &["uri:urn:ca:role:security-officer"]);
        assert!(roles_of(&leaf).is_empty());
        let unknown = record(ADMIN_PROFILE, &["uri:urn:ca:role:root"]);
        assert!(roles_of(&unknown).is_empty());
    }

    #[test]
    fn permission_matrix() {
        use Permission::*;
        let all = [CreateToken, CreateAdminToken, Revoke, ReadCerts, ReadAudit];
        let allowed = |r: Role| all.iter().filter(|p| r.allows(**p)).count();
        assert_eq!(allowed(Role::SecurityOfficer), 5);
        assert!(Role::Operator.allows(CreateToken) && Role::Operator.allows(Revoke));
        assert_eq!(allowed(Role::Operator), 2);
        assert!(Role::Auditor.allows(ReadCerts) && Role::Auditor.allows(ReadAudit));
        assert_eq!(allowed(Role::Auditor), 2);
        assert_eq!(Role::parse("auditor"), Some(Role::Auditor));
        assert_eq!(Role::Operator.san(), "uri:urn:ca:role:operator");
    }
}
