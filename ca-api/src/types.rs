//! Wire types of the HTTPS API (docs/API.md): the JSON bodies the server answers and accepts,
//! used as they are by the server, the agent, the admin CLI and the tests. Field names are the
//! contract: renaming one breaks deployed agents.

use serde::{Deserialize, Serialize};

/// `GET /v1/chain`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChainResponse {
    /// Issuing CA then root, PEM.
    pub chain_pem: String,
    /// SHA-256 of the root certificate (DER), lowercase hex.
    pub root_fingerprint: String,
}

/// `POST /v1/enroll`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The one-time token.
    pub token: String,
    /// PEM CSR.
    pub csr: String,
}

/// `POST /v1/renew`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PEM CSR for the new key.
    pub csr: String,
}

/// An issued certificate (`Issued` in docs/API.md).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssuedResponse {
    /// Leaf PEM.
    pub certificate: String,
    /// Issuing CA then root, PEM.
    pub chain: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
}

/// `POST /v1/admin/tokens`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreateRequest {
    /// The commonName the certificate will carry.
    #[serde(default)]
    pub common_name: Option<String>,
    /// SANs the holder may ask for (`dns:`, `uri:`, `ip:`, `email:`).
    #[serde(default)]
    pub sans: Vec<String>,
    /// Profile (default `client`).
    #[serde(default)]
    pub profile: Option<String>,
    /// Lifetime such as `1h` (default from the config, 1h).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// Answer to `POST /v1/admin/tokens`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenCreateResponse {
    /// The secret, shown once.
    pub token: String,
    /// Public id (audit, listing).
    pub id: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// `POST /v1/admin/revoke`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Serial, hex (colons allowed).
    pub serial: String,
    /// RFC 5280 reason name (default `unspecified`).
    #[serde(default)]
    pub reason: Option<String>,
    /// Revoke every certificate of the serial's lineage and lock the lineage.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lineage: bool,
}

/// Answer to `POST /v1/admin/revoke`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RevokeResponse {
    /// Serial, lowercase hex.
    pub serial: String,
    /// RFC 3339.
    pub revoked_at: String,
    /// RFC 5280 reason name.
    pub reason: String,
    /// The certificate's lineage (serial of its generation 1, hex).
    #[serde(default)]
    pub lineage: String,
    /// Other certificates of the lineage revoked with it (keyCompromise revokes the later
    /// generations; `lineage` revokes all).
    #[serde(default)]
    pub also_revoked: Vec<String>,
    /// Whether the lineage is now locked: none of its generations can renew or re-enroll.
    #[serde(default)]
    pub lineage_locked: bool,
}

/// One certificate in `GET /v1/admin/certs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertSummary {
    /// Serial, lowercase hex.
    pub serial: String,
    /// Identity (CN, else first SAN).
    pub identity: String,
    /// Subject DN.
    pub subject: String,
    /// SANs, typed.
    pub sans: Vec<String>,
    /// The profile the certificate was issued under (`_admin`, `_server-tls` for the CA's own).
    pub profile: String,
    /// `valid`, `revoked` or `expired`.
    pub status: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// RFC 3339.
    pub issued_at: String,
    /// RFC 3339, when revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// Reason, when revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<String>,
    /// `token:<id>`, `renewal:<serial>` or `admin:<actor>`.
    pub requester: String,
    /// Lineage: the serial (hex) of the first certificate of the enrollment it descends from.
    #[serde(default)]
    pub lineage: String,
    /// Generation within the lineage (1 = the enrollment's certificate).
    #[serde(default)]
    pub generation: u32,
    /// The certificate (PEM), when asked for with `pem=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
}

/// Answer to `GET /v1/admin/certs`: one page of a listing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertsResponse {
    /// Matching certificates, in the listing's order.
    pub certs: Vec<CertSummary>,
    /// Present when more certificates match: pass it as `cursor` (same filters) for the next
    /// page. Opaque (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The query of `GET /v1/admin/certs` as a client sends it: filters, page size, cursor
/// ([`CertsQuery::to_query`]; [`crate::ApiClient::list_certs`] sends it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertsQuery {
    /// Only this identity.
    pub identity: Option<String>,
    /// `valid`, `revoked` or `expired`.
    pub status: Option<String>,
    /// Unexpired certificates expiring within this span (`24h`).
    pub expiring_within: Option<String>,
    /// Only the lineage of this serial (hex).
    pub lineage: Option<String>,
    /// Page size (the server's default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page, with the same filters.
    pub cursor: Option<String>,
    /// Include each certificate's PEM.
    pub pem: bool,
}

impl CertsQuery {
    /// The query string (without `?`), values percent-encoded (RFC 3986 unreserved kept).
    pub fn to_query(&self) -> String {
        fn enc(s: &str) -> String {
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        }
        let mut q = Vec::new();
        if let Some(l) = self.limit {
            q.push(format!("limit={l}"));
        }
        for (k, v) in [
            ("identity", &self.identity),
            ("status", &self.status),
            ("expiring_within", &self.expiring_within),
            ("lineage", &self.lineage),
            ("cursor", &self.cursor),
        ] {
            if let Some(v) = v {
                q.push(format!("{k}={}", enc(v)));
            }
        }
        if self.pem {
            q.push("pem=true".into());
        }
        q.join("&")
    }
}

/// Certificates not revoked and revoked (a count in [`CertCountsResponse`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    /// Not revoked (expired certificates not yet pruned included).
    pub valid: u64,
    /// Revoked.
    pub revoked: u64,
}

/// Certificates not revoked, by the UTC date of their notAfter against today's UTC date
/// (whole days: see docs/API.md). The `within_*` bands are cumulative.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryCounts {
    /// notAfter on a date before today: expired.
    pub expired: u64,
    /// notAfter today or tomorrow: every certificate expiring in the next 24 hours (and those
    /// of today that expired already).
    pub within_24h: u64,
    /// notAfter from today to 7 days on.
    pub within_7d: u64,
    /// notAfter from today to 30 days on.
    pub within_30d: u64,
    /// notAfter more than 30 days on.
    pub later: u64,
}

/// Answer to `GET /v1/admin/certs/counts`: counts from the store's counters (no certificate
/// is read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertCountsResponse {
    /// When the counts were read (RFC 3339).
    pub as_of: String,
    /// The UTC date the expiry bands are counted from (`YYYY-MM-DD`).
    pub today: String,
    /// Every stored certificate.
    pub total: StatusCounts,
    /// Per profile.
    pub by_profile: std::collections::BTreeMap<String, StatusCounts>,
    /// Certificates not revoked, by expiry.
    pub expiry: ExpiryCounts,
}

/// Answer to `GET /v1/admin/audit`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditResponse {
    /// Events in sequence order.
    pub events: Vec<ca_core::audit::AuditEvent>,
}

/// Answer to `GET /v1/admin/audit/verify`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditVerifyResponse {
    /// Always true (a broken chain is the error `audit_tampered`).
    pub ok: bool,
    /// Number of events checked.
    pub events: u64,
    /// Checkpoints checked.
    #[serde(default)]
    pub checkpoints: u64,
    /// Whether checkpoint signatures were checked (an audit key is configured).
    #[serde(default)]
    pub signatures_checked: bool,
    /// SHA-256 of the audit public key.
    #[serde(default)]
    pub audit_key_sha256: Option<String>,
    /// The last checkpoint.
    #[serde(default)]
    pub last_checkpoint: Option<ca_core::audit::Checkpoint>,
    /// Events after the last checkpoint (not yet covered by a signature).
    #[serde(default)]
    pub unsigned_tail: u64,
    /// Events archived and truncated below the log's start (`audit truncate`; 0: the log
    /// starts at event 1).
    #[serde(default)]
    pub archived_events: u64,
    /// The signed checkpoint the log starts from after a truncation (its first event links
    /// to it; its signature was checked with the audit key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<ca_core::audit::Checkpoint>,
}

/// Answer to `POST /v1/admin/audit/checkpoint`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointResponse {
    /// The checkpoint signed.
    pub checkpoint: ca_core::audit::Checkpoint,
    /// SHA-256 of the audit public key.
    pub audit_key_sha256: String,
}
