//! The paths of the HTTP API: the router, the handlers (audit and metrics name the route), the
//! admin CLI, the agent and the tests use these, and `docs/API.md` lists the same paths (a test
//! in ca-server checks that every route served here is documented there).

/// HTTPS: the issuing chain and the root's SHA-256 (`GET`, anonymous).
pub const CHAIN: &str = "/v1/chain";
/// HTTPS: enrollment with a one-time token and a CSR (`POST`, anonymous).
pub const ENROLL: &str = "/v1/enroll";
/// HTTPS: renewal over mTLS with the current certificate (`POST`).
pub const RENEW: &str = "/v1/renew";
/// HTTPS: create enrollment tokens (`POST`, admin).
pub const ADMIN_TOKENS: &str = "/v1/admin/tokens";
/// HTTPS: revoke a certificate or a lineage (`POST`, admin).
pub const ADMIN_REVOKE: &str = "/v1/admin/revoke";
/// HTTPS: list and search certificates (`GET`, admin).
pub const ADMIN_CERTS: &str = "/v1/admin/certs";
/// HTTPS: certificate counts by status, profile and expiry, from the store's counters (`GET`,
/// admin).
pub const ADMIN_CERT_COUNTS: &str = "/v1/admin/certs/counts";
/// HTTPS: read the audit log (`GET`, admin).
pub const ADMIN_AUDIT: &str = "/v1/admin/audit";
/// HTTPS: verify the audit log (`GET`, admin).
pub const ADMIN_AUDIT_VERIFY: &str = "/v1/admin/audit/verify";
/// HTTPS: sign an audit checkpoint now (`POST`, admin).
pub const ADMIN_AUDIT_CHECKPOINT: &str = "/v1/admin/audit/checkpoint";
/// HTTPS: export the audit log for auditors (`GET`, admin).
pub const ADMIN_AUDIT_EXPORT: &str = "/v1/admin/audit/export";
/// HTTPS: EST (RFC 7030) CA certificates (`GET`, anonymous).
pub const EST_CACERTS: &str = "/.well-known/est/cacerts";
/// HTTPS: EST enrollment with a one-time token (`POST`).
pub const EST_SIMPLEENROLL: &str = "/.well-known/est/simpleenroll";
/// HTTPS: EST re-enrollment over mTLS (`POST`).
pub const EST_SIMPLEREENROLL: &str = "/.well-known/est/simplereenroll";
/// Both listeners: liveness (`GET`).
pub const HEALTHZ: &str = "/healthz";
/// Both listeners: readiness, HSM and store reachable (`GET`).
pub const READYZ: &str = "/readyz";
/// Both listeners: Prometheus metrics (`GET`).
pub const METRICS: &str = "/metrics";

/// Every route of the HTTPS listener, in the order `docs/API.md` lists them.
pub const API: &[&str] = &[
    CHAIN,
    ENROLL,
    RENEW,
    ADMIN_TOKENS,
    ADMIN_REVOKE,
    ADMIN_CERTS,
    ADMIN_CERT_COUNTS,
    ADMIN_AUDIT,
    ADMIN_AUDIT_VERIFY,
    ADMIN_AUDIT_CHECKPOINT,
    ADMIN_AUDIT_EXPORT,
    EST_CACERTS,
    EST_SIMPLEENROLL,
    EST_SIMPLEREENROLL,
];

/// Plain HTTP (status listener): OCSP, `POST` here and `GET` under `/ocsp/{base64 request}`.
pub const OCSP: &str = "/ocsp";
/// Plain HTTP: the issuing CA's CRL (DER).
pub const CRL: &str = "/crl";
/// Plain HTTP: the issuing CA's certificate (DER), for AIA caIssuers.
pub const CA_CERT: &str = "/ca.crt";
/// Plain HTTP: the root CRL made by the CRL ceremony (DER), when configured.
pub const ROOT_CRL: &str = "/root.crl";

/// Every route of the plain-HTTP status listener besides the health routes.
pub const STATUS: &[&str] = &[OCSP, CRL, CA_CERT, ROOT_CRL];

#[cfg(test)]
mod tests {
    /// docs/API.md, the contract, lists every route served (one source: these constants; the
    /// document is checked against them).
    #[test]
    fn api_md_lists_every_route() {
        let doc = include_str!("../../docs/API.md");
        for route in super::API.iter().chain(super::STATUS).chain(&[
            super::HEALTHZ,
            super::READYZ,
            super::METRICS,
        ]) {
            // "GET /v1/admin/certs?identity=...", "GET /ocsp/{base64}", "GET /crl`"
            let listed = ['`', '/', '?', ','].iter().any(|end| {
                ["GET", "POST"]
                    .iter()
                    .any(|method| doc.contains(&format!("{method} {route}{end}")))
            });
            assert!(listed, "docs/API.md does not list {route}");
        }
    }
}
