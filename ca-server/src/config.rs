//! The server configuration file (TOML), strict: unknown keys are errors, and every error
//! names the key that is wrong.
//!
//! ```toml
//! data_dir = "/var/lib/ca"
//!
//! [listen]
//! api = "0.0.0.0:8443"
//! status = "0.0.0.0:8080"
//!
//! [hsm]
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token_label = "online"
//! pin = { file = "/etc/ca/hsm.pin" }      # or { env = "CA_HSM_PIN" }
//! issuing_key = "issuing-ca"
//!
//! [ca]
//! certificate = "/etc/ca/intermediate.pem"
//! chain = "/etc/ca/root.pem"                # certificates above the issuing CA, root last
//!
//! [tls]
//! names = ["dns:ca.example.com"]
//!
//! [store]                                   # default: kind = "sled" in data_dir/store
//! kind = "postgres"
//! url = { env = "CA_DATABASE_URL" }         # or { file = "/etc/ca/database.url" }
//!
//! [retention]                               # the defaults
//! certificates = "90d"                      # kept this long after notAfter
//! tokens = "7d"                             # kept this long after use or expiry
//!
//! [profiles.client]
//! validity = "24h"
//! names = { dns = [".svc.example.com"] }
//! ```

use ca_core::issuance::IssuerUrls;
use ca_core::profile::{Profiles, Span};
use ca_core::signer::pkcs11::PinSource;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or type error, or an unknown key.
    #[error("config file {path}: at `{key}`: {message}")]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// Key path (`limits.enroll.burst`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value is syntactically fine but not acceptable.
    #[error("config: `{key}`: {message}")]
    Invalid {
        /// Key path.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Directory for the sled store (`DATA/store`, when `[store]` is sled) and the audit
    /// public key.
    pub data_dir: PathBuf,
    /// Listener addresses.
    #[serde(default)]
    pub listen: Listen,
    /// The HSM holding the issuing key.
    pub hsm: HsmSection,
    /// Issuing CA certificate and chain.
    pub ca: CaSection,
    /// URLs written into certificates (AIA, CRL DP).
    #[serde(default)]
    pub urls: IssuerUrls,
    /// The server's own TLS certificate.
    #[serde(default)]
    pub tls: TlsSection,
    /// Administrator certificates.
    #[serde(default)]
    pub admin: AdminSection,
    /// Enrollment tokens.
    #[serde(default)]
    pub tokens: TokenSection,
    /// Renewal lineages.
    #[serde(default)]
    pub renewal: RenewalSection,
    /// Rate, body and time limits.
    #[serde(default)]
    pub limits: Limits,
    /// Log format and filter (`[log]`).
    #[serde(default)]
    pub log: LogSection,
    /// OCSP responder settings (status listener).
    #[serde(default)]
    pub ocsp: OcspSection,
    /// CRL settings (status listener).
    #[serde(default)]
    pub crl: CrlSection,
    /// The audit log's signed checkpoints.
    #[serde(default)]
    pub audit: AuditSection,
    /// Where certificates, tokens, revocations and the audit log are kept (`[store]`).
    #[serde(default)]
    pub store: StoreSection,
    /// How long expired certificates and finished tokens are kept (`[retention]`).
    #[serde(default)]
    pub retention: RetentionSection,
    /// Certificate profiles agents can enroll under. Names starting with `_` are reserved for
    /// the server's internal profiles (`_admin`, `_server-tls`).
    pub profiles: Profiles,
}

/// Listener addresses.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// HTTPS API (default 127.0.0.1:8443).
    #[serde(default = "default_api")]
    pub api: SocketAddr,
    /// Plain-HTTP status listener (default 127.0.0.1:8080).
    #[serde(default = "default_status")]
    pub status: SocketAddr,
}

fn default_api() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_status() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            api: default_api(),
            status: default_status(),
        }
    }
}

/// `[hsm]`: the PKCS#11 module, token, PIN source and issuing key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmSection {
    /// PKCS#11 module. Required (`validate` refuses a configuration without it): no silent
    /// fallback to SoftHSM2. `ca-server dev` writes the SoftHSM2 module it provisioned with.
    #[serde(default)]
    pub module: Option<PathBuf>,
    /// Token label.
    pub token_label: String,
    /// PIN source: `{ env = "VAR" }` or `{ file = "/path" }`; never the PIN itself.
    pub pin: PinSource,
    /// Label of the issuing CA key.
    #[serde(default = "default_issuing_key")]
    pub issuing_key: String,
    /// Signing session pool size (default: cores, at least 2).
    #[serde(default)]
    pub sessions: Option<usize>,
    /// SoftHSM configuration file of the token. SoftHSM reads it from `SOFTHSM2_CONF` when the
    /// module loads: `serve` and `dev` restart themselves with it in their environment when
    /// `SOFTHSM2_CONF` names another file, and never set their own environment.
    #[serde(default)]
    pub softhsm_conf: Option<PathBuf>,
    /// After the token refused the PIN, try the same PIN again once per this interval (never
    /// while the token reports that the next wrong PIN locks it), so that a node whose token's
    /// PIN was restored recovers without a restart; `"0s"`: never (README "HSM logins").
    /// Default `"0s"`: a token that locks after a few wrong PINs and does not say so could be
    /// locked by hourly retries, so retrying is the operator's choice.
    #[serde(default = "HsmSection::default_refused_pin_retry")]
    pub refused_pin_retry: Span,
}

fn default_issuing_key() -> String {
    "issuing-ca".into()
}

impl HsmSection {
    /// The default of [`HsmSection::refused_pin_retry`]: never.
    pub fn default_refused_pin_retry() -> Span {
        Span(chrono::Duration::zero())
    }

    /// [`HsmSection::refused_pin_retry`] as the token takes it (`None`: never).
    pub fn refused_pin_retry(&self) -> Option<std::time::Duration> {
        self.refused_pin_retry
            .0
            .to_std()
            .ok()
            .filter(|d| !d.is_zero())
    }
}

/// Issuing CA certificate and chain.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSection {
    /// The issuing CA certificate (PEM).
    pub certificate: PathBuf,
    /// The certificates above it (PEM, intermediates then root; root last).
    pub chain: PathBuf,
}

/// The server's TLS certificate, issued by the CA itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Names in the server certificate (`dns:ca.example.com`, `ip:127.0.0.1`).
    #[serde(default = "default_tls_names")]
    pub names: Vec<String>,
    /// Lifetime of the server certificate (default 7d); renewed at 2/3 of it.
    #[serde(default = "default_tls_validity")]
    pub validity: Span,
}

fn default_tls_names() -> Vec<String> {
    vec!["dns:localhost".into(), "ip:127.0.0.1".into()]
}
fn default_tls_validity() -> Span {
    Span(chrono::Duration::days(7))
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            names: default_tls_names(),
            validity: default_tls_validity(),
        }
    }
}

/// Renewal lineages (README "Renewal lineage").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalSection {
    /// Lock a lineage when a generation that has already renewed tries to renew again: two
    /// holders of one key (a clone) renewing in turn (default true). The attempt is refused
    /// and audited either way.
    #[serde(default = "yes")]
    pub lock_on_superseded: bool,
}

fn yes() -> bool {
    true
}

impl Default for RenewalSection {
    fn default() -> Self {
        RenewalSection {
            lock_on_superseded: true,
        }
    }
}

/// Administrator certificates (profile `_admin`, role in a `urn:ca:role:` URI SAN).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Lifetime of admin certificates (default 90d).
    #[serde(default = "default_admin_validity")]
    pub validity: Span,
}

fn default_admin_validity() -> Span {
    Span(chrono::Duration::days(90))
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            validity: default_admin_validity(),
        }
    }
}

/// Enrollment tokens.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    /// Lifetime when the request names none (default 1h).
    #[serde(default = "default_token_ttl")]
    pub default_ttl: Span,
    /// Longest lifetime an operator may ask for (default 7d).
    #[serde(default = "default_token_max_ttl")]
    pub max_ttl: Span,
}

fn default_token_ttl() -> Span {
    Span(chrono::Duration::hours(1))
}
fn default_token_max_ttl() -> Span {
    Span(chrono::Duration::days(7))
}

impl Default for TokenSection {
    fn default() -> Self {
        TokenSection {
            default_ttl: default_token_ttl(),
            max_ttl: default_token_max_ttl(),
        }
    }
}

/// A token bucket: `per_second` refill, `burst` capacity.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: u32,
    /// Bucket size.
    pub burst: u32,
}

/// Protection limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body (default 64 KiB).
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// Time a request may take (default 30s).
    #[serde(default = "default_timeout")]
    pub request_timeout: Span,
    /// Time a TLS handshake may take (default 10s).
    #[serde(default = "default_handshake")]
    pub handshake_timeout: Span,
    /// Enrollment (and EST simpleenroll) per client IP.
    #[serde(default = "default_enroll_rate")]
    pub enroll: Rate,
    /// Renewal (and EST simplereenroll) per client certificate.
    #[serde(default = "default_renew_rate")]
    pub renew: Rate,
    /// Admin routes per admin certificate (or IP when none).
    #[serde(default = "default_admin_rate")]
    pub admin: Rate,
    /// Time a client has to send a request's headers once its connection is ready (TLS done)
    /// (default 10s). HTTP/1.1: every request's, so it also ends an idle keep-alive
    /// connection; HTTP/2: the first request's.
    #[serde(default = "default_header_read")]
    pub header_read_timeout: Span,
    /// A connection with no request in progress for this long is closed (default 60s).
    #[serde(default = "default_idle")]
    pub idle_timeout: Span,
    /// Most open connections to the API, handshakes included (default 4096); more are
    /// closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most open connections to the API from one client address (an IPv6 /64 counts as one
    /// address) (default 256).
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Most concurrent HTTP/2 streams per connection (default 100).
    #[serde(default = "default_http2_max_streams")]
    pub http2_max_streams: u32,
    /// HTTP/2 keep-alive: PING an idle connection this often (default 20s) ...
    #[serde(default = "default_http2_keep_alive_interval")]
    pub http2_keep_alive_interval: Span,
    /// ... and close it when the PING is not answered within this (default 10s).
    #[serde(default = "default_http2_keep_alive_timeout")]
    pub http2_keep_alive_timeout: Span,
    /// Unauthenticated failures (bad tokens, failed client-certificate handshakes, admin
    /// calls without a valid certificate, anonymous 413s) are counted and summarised in the
    /// audit log at most once per kind per interval (default 60s), and at shutdown.
    #[serde(default = "default_unauthenticated_summary")]
    pub unauthenticated_summary_interval: Span,
    /// The same connection limits for the plain-HTTP status listener (OCSP, CRL).
    #[serde(default)]
    pub status: StatusLimits,
}

/// Connection limits of the plain-HTTP status listener (`[limits.status]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusLimits {
    /// Time to send a request's headers (default 5s); see `limits.header_read_timeout`.
    #[serde(default = "default_status_header_read")]
    pub header_read_timeout: Span,
    /// Idle connections are closed after this (default 30s).
    #[serde(default = "default_status_idle")]
    pub idle_timeout: Span,
    /// Time one request may take, its body included (default 10s).
    #[serde(default = "default_status_request")]
    pub request_timeout: Span,
    /// Most open connections (default 8192).
    #[serde(default = "default_status_max_connections")]
    pub max_connections: usize,
    /// Most open connections from one client address (default 256).
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Most concurrent HTTP/2 streams per connection (default 100).
    #[serde(default = "default_http2_max_streams")]
    pub http2_max_streams: u32,
}

fn default_header_read() -> Span {
    Span(chrono::Duration::seconds(10))
}
fn default_idle() -> Span {
    Span(chrono::Duration::seconds(60))
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_connections_per_ip() -> usize {
    256
}
fn default_http2_max_streams() -> u32 {
    100
}
fn default_http2_keep_alive_interval() -> Span {
    Span(chrono::Duration::seconds(20))
}
fn default_http2_keep_alive_timeout() -> Span {
    Span(chrono::Duration::seconds(10))
}
fn default_unauthenticated_summary() -> Span {
    Span(chrono::Duration::seconds(60))
}
fn default_status_header_read() -> Span {
    Span(chrono::Duration::seconds(5))
}
fn default_status_idle() -> Span {
    Span(chrono::Duration::seconds(30))
}
fn default_status_request() -> Span {
    Span(chrono::Duration::seconds(10))
}
fn default_status_max_connections() -> usize {
    8192
}

impl Default for StatusLimits {
    fn default() -> Self {
        StatusLimits {
            header_read_timeout: default_status_header_read(),
            idle_timeout: default_status_idle(),
            request_timeout: default_status_request(),
            max_connections: default_status_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            http2_max_streams: default_http2_max_streams(),
        }
    }
}

fn default_body() -> usize {
    64 * 1024
}
fn default_timeout() -> Span {
    Span(chrono::Duration::seconds(30))
}
fn default_handshake() -> Span {
    Span(chrono::Duration::seconds(10))
}
fn default_enroll_rate() -> Rate {
    Rate {
        per_second: 100,
        burst: 200,
    }
}
fn default_renew_rate() -> Rate {
    Rate {
        per_second: 2,
        burst: 10,
    }
}
fn default_admin_rate() -> Rate {
    Rate {
        per_second: 20,
        burst: 50,
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_body(),
            request_timeout: default_timeout(),
            handshake_timeout: default_handshake(),
            enroll: default_enroll_rate(),
            renew: default_renew_rate(),
            admin: default_admin_rate(),
            header_read_timeout: default_header_read(),
            idle_timeout: default_idle(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            http2_max_streams: default_http2_max_streams(),
            http2_keep_alive_interval: default_http2_keep_alive_interval(),
            http2_keep_alive_timeout: default_http2_keep_alive_timeout(),
            unauthenticated_summary_interval: default_unauthenticated_summary(),
            status: StatusLimits::default(),
        }
    }
}

impl Limits {
    /// Check the connection limits; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let within = |key: &str, s: &Span, max_secs: i64| {
            if s.0 <= chrono::Duration::zero() {
                Err(invalid(key, "must be positive"))
            } else if s.0 > chrono::Duration::seconds(max_secs) {
                Err(invalid(key, format!("at most {max_secs}s")))
            } else {
                Ok(())
            }
        };
        within("limits.header_read_timeout", &self.header_read_timeout, 60)?;
        within("limits.idle_timeout", &self.idle_timeout, 3600)?;
        within(
            "limits.http2_keep_alive_interval",
            &self.http2_keep_alive_interval,
            3600,
        )?;
        within(
            "limits.http2_keep_alive_timeout",
            &self.http2_keep_alive_timeout,
            300,
        )?;
        within(
            "limits.unauthenticated_summary_interval",
            &self.unauthenticated_summary_interval,
            3600,
        )?;
        within(
            "limits.status.header_read_timeout",
            &self.status.header_read_timeout,
            60,
        )?;
        within(
            "limits.status.idle_timeout",
            &self.status.idle_timeout,
            3600,
        )?;
        within(
            "limits.status.request_timeout",
            &self.status.request_timeout,
            300,
        )?;
        for (key, max, per_ip) in [
            ("limits", self.max_connections, self.max_connections_per_ip),
            (
                "limits.status",
                self.status.max_connections,
                self.status.max_connections_per_ip,
            ),
        ] {
            if !(1..=1_000_000).contains(&max) {
                return Err(invalid(
                    &format!("{key}.max_connections"),
                    "must be between 1 and 1000000",
                ));
            }
            if per_ip == 0 || per_ip > max {
                return Err(invalid(
                    &format!("{key}.max_connections_per_ip"),
                    format!("must be between 1 and {key}.max_connections ({max})"),
                ));
            }
        }
        for (key, n) in [
            ("limits.http2_max_streams", self.http2_max_streams),
            (
                "limits.status.http2_max_streams",
                self.status.http2_max_streams,
            ),
        ] {
            if !(1..=10_000).contains(&n) {
                return Err(invalid(key, "must be between 1 and 10000"));
            }
        }
        Ok(())
    }
}

/// `[log]`: log format and filter.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// JSON lines instead of human-readable text.
    #[serde(default)]
    pub json: bool,
    /// `tracing` filter (default `info`; `RUST_LOG` wins).
    #[serde(default)]
    pub level: Option<String>,
}

/// OCSP responder settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcspSection {
    /// HSM key label of the delegated OCSP signer (default: sign with the issuing key).
    #[serde(default)]
    pub signer_key: Option<String>,
    /// Its certificate (PEM), issued by the issuing CA with id-kp-OCSPSigning.
    #[serde(default)]
    pub signer_cert: Option<PathBuf>,
    /// Validity of pre-signed responses (default 24h; re-signed at half of it).
    #[serde(default)]
    pub validity: Option<Span>,
    /// Cap on `Cache-Control: max-age` of OCSP responses and the CRL (default 60s).
    #[serde(default)]
    pub max_age: Option<Span>,
    /// Pre-signed responses about other issuers (e.g. the root-signed response about the
    /// intermediate), DER files.
    #[serde(default)]
    pub external_responses: Vec<PathBuf>,
    /// Most certificates one response signed at issuance covers (default 8, at most 64; 1
    /// signs one response per certificate). See README "OCSP responses signed at issuance".
    #[serde(default)]
    pub issuance_batch_max: Option<usize>,
    /// Milliseconds the issuance signer gathers certificates before signing their response
    /// (default 5, at most 100). Issuance never waits for it.
    #[serde(default)]
    pub issuance_batch_window_ms: Option<u64>,
    /// Bound in bytes of the OCSP request memo (default 8 MiB; 0 turns it off). See README
    /// "Bounded resources".
    #[serde(default)]
    pub memo_max_bytes: Option<usize>,
    /// Most pre-signed answers kept in memory (default 200 000; 1 to 50 000 000). The others
    /// are read back from the store, without a signature, when asked about. See README "OCSP
    /// answer cache".
    #[serde(default)]
    pub cache_max_entries: Option<usize>,
    /// Bound in bytes of those answers (default 64 MiB; 4096 bytes to 64 GiB): a slot per serial
    /// and each group response once. With requests spread over a large fleet this is the bound
    /// that holds memory. See README "OCSP answer cache".
    #[serde(default)]
    pub cache_max_bytes: Option<usize>,
    /// Stateless responders (`ca-server ocsp`) only: time between full re-reads of the store,
    /// the safety net behind its change feed (default 5m; 10s to 24h). `serve` ignores it.
    #[serde(default)]
    pub stateless_reload_interval: Option<Span>,
}

impl OcspSection {
    /// The responder settings this section gives (defaults for what it leaves out).
    pub fn responder_config(&self) -> ca_core::ocsp::ResponderConfig {
        let mut c = ca_core::ocsp::ResponderConfig::default();
        if let Some(v) = self.validity {
            c.validity = v.0;
            c.refresh_before = v.0 / 2;
        }
        if let Some(n) = self.issuance_batch_max {
            c.issuance_batch_max = n;
        }
        if let Some(ms) = self.issuance_batch_window_ms {
            c.issuance_batch_window = std::time::Duration::from_millis(ms);
        }
        if let Some(n) = self.memo_max_bytes {
            c.memo_max_bytes = n;
        }
        if let Some(n) = self.cache_max_entries {
            c.cache_max_entries = n;
        }
        if let Some(n) = self.cache_max_bytes {
            c.cache_max_bytes = n;
        }
        c
    }
}

/// `[crl]`: CRL validity and the root CRL file to serve.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlSection {
    /// Interval between thisUpdate and nextUpdate (default 24h; rebuilt at half of it).
    #[serde(default)]
    pub validity: Option<Span>,
    /// The root CRL from the key ceremony (DER or PEM), served at `/root.crl`.
    #[serde(default)]
    pub root_crl: Option<PathBuf>,
    /// CRL shards (README "CRLs"): the width of the notAfter window one shard covers, e.g.
    /// `"6h"` (whole minutes, at least 10m). Unset: no shards, certificates name the full CRL.
    #[serde(default)]
    pub shard_width: Option<Span>,
    /// With shards: the least time between two rebuilds of the full CRL after revocations
    /// (default 5m; the shards list a revocation at the next pass).
    #[serde(default)]
    pub full_interval: Option<Span>,
}

impl CrlSection {
    /// `full_interval` when set, else 5 minutes.
    pub fn full_interval(&self) -> chrono::Duration {
        self.full_interval
            .map_or_else(|| chrono::Duration::minutes(5), |s| s.0)
    }
}

/// Signed checkpoints of the audit log (README "Audit log").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// HSM label of the audit checkpoint key, in the `[hsm]` token (made by the key ceremony's
    /// `audit_key_label`; never the issuing key). Unset: no checkpoints, and `audit verify`
    /// checks the hash chain only. When set, the server refuses to start without the key.
    #[serde(default)]
    pub key: Option<String>,
    /// Time between periodic checkpoints (default 5m; 10s to 24h). The server also signs one
    /// at shutdown and on demand (`ca-server audit checkpoint`).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: Span,
    /// Where the server writes the audit public key (PEM) for auditors (default
    /// `DATA_DIR/audit-checkpoint.pub.pem`).
    #[serde(default)]
    pub public_key: Option<PathBuf>,
}

fn default_checkpoint_interval() -> Span {
    Span(chrono::Duration::minutes(5))
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            key: None,
            checkpoint_interval: default_checkpoint_interval(),
            public_key: None,
        }
    }
}

impl AuditSection {
    /// Where the audit public key is written for auditors.
    pub fn public_key_path(&self, data_dir: &Path) -> PathBuf {
        self.public_key
            .clone()
            .unwrap_or_else(|| data_dir.join("audit-checkpoint.pub.pem"))
    }
}

/// `[store]`: the embedded sled store in `DATA_DIR/store` (default), or PostgreSQL.
///
/// ```toml
/// [store]
/// kind = "postgres"
/// url = { env = "CA_DATABASE_URL" }   # or { file = "/etc/ca/database.url" }
/// pool_size = 16
/// ```
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `sled` (default) or `postgres`.
    #[serde(default)]
    pub kind: StoreKind,
    /// PostgreSQL connection string (libpq URL or key=value), read from an environment
    /// variable or a file; never written in the configuration (it may hold a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<UrlSource>,
    /// PostgreSQL connection pool size (default: the store's own default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<u32>,
}

/// Which store the server runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded sled store in `DATA_DIR/store`: one process.
    #[default]
    Sled,
    /// A PostgreSQL database, shared by several nodes.
    Postgres,
}

/// Where the database URL is read from: `{ env = "VAR" }` or `{ file = "/path" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum UrlFrom {
    /// An environment variable holding the URL.
    Env(String),
    /// A file holding the URL (trailing newline ignored); should be mode 0600.
    File(PathBuf),
}

/// `store.url`: a [`UrlFrom`]; a literal string is refused with an error naming the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct UrlSource(pub UrlFrom);

impl<'de> Deserialize<'de> for UrlSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UrlSource;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("{ env = \"VAR\" } or { file = \"/path\" }")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Err(E::custom(
                    "a literal database URL is refused (it may hold a password): use \
                     { env = \"VAR\" } or { file = \"/path\" }",
                ))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                UrlFrom::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(UrlSource)
            }
        }
        d.deserialize_any(V)
    }
}

impl UrlSource {
    /// Read the URL. Errors name the source, never the URL.
    pub fn read(&self) -> Result<zeroize::Zeroizing<String>, ConfigError> {
        match &self.0 {
            UrlFrom::Env(name) => std::env::var(name)
                .map(zeroize::Zeroizing::new)
                .map_err(|_| {
                    invalid(
                        "store.url",
                        format!("environment variable {name} is not set or not UTF-8"),
                    )
                }),
            UrlFrom::File(path) => {
                let s = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    invalid("store.url", format!("cannot read {}: {e}", path.display()))
                })?);
                let trimmed = s.trim_end_matches(['\r', '\n']);
                if trimmed.is_empty() {
                    return Err(invalid("store.url", format!("{} is empty", path.display())));
                }
                Ok(zeroize::Zeroizing::new(trimmed.to_string()))
            }
        }
    }
}

impl StoreSection {
    fn validate(&self) -> Result<(), ConfigError> {
        match self.kind {
            StoreKind::Sled => {
                if self.url.is_some() {
                    return Err(invalid("store.url", "only for kind = \"postgres\""));
                }
                if self.pool_size.is_some() {
                    return Err(invalid("store.pool_size", "only for kind = \"postgres\""));
                }
            }
            StoreKind::Postgres => {
                match &self.url {
                    None => {
                        return Err(invalid(
                            "store.url",
                            "required for kind = \"postgres\": { env = \"VAR\" } or { file = \"/path\" }",
                        ))
                    }
                    Some(UrlSource(UrlFrom::Env(v))) if v.is_empty() => {
                        return Err(invalid("store.url.env", "must not be empty"));
                    }
                    Some(_) => {}
                }
                if let Some(n) = self.pool_size {
                    if n == 0 || n > 1024 {
                        return Err(invalid("store.pool_size", "must be between 1 and 1024"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// `[retention]`: pruning of expired certificates and finished enrollment tokens (README
/// "Retention"). A revoked certificate is kept while the CRL must list it, whatever
/// `certificates` says.
///
/// ```toml
/// [retention]
/// enabled = true
/// certificates = "90d"   # after notAfter
/// tokens = "7d"          # after use, or expiry when never used
/// batch = 1000           # records per batch (one transaction each)
/// interval = "10m"       # between passes
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// Run the periodic pruning task (default true). Off: nothing is ever pruned by the
    /// server (`ca-server store prune` still can).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long a certificate's record is kept after its notAfter (default 90d; 0s to 36500d).
    #[serde(default = "default_cert_retention")]
    pub certificates: Span,
    /// How long a token's record is kept after its use, or its expiry when it was never used
    /// (default 7d; 0s to 36500d).
    #[serde(default = "default_token_retention")]
    pub tokens: Span,
    /// Records removed per batch, each batch its own transaction (default 1000; 1 to 100000).
    #[serde(default = "default_prune_batch")]
    pub batch: usize,
    /// Time between pruning passes (default 10m; 10s to 24h).
    #[serde(default = "default_prune_interval")]
    pub interval: Span,
}

fn default_true() -> bool {
    true
}
fn default_cert_retention() -> Span {
    Span(chrono::Duration::days(90))
}
fn default_token_retention() -> Span {
    Span(chrono::Duration::days(7))
}
fn default_prune_batch() -> usize {
    1000
}
fn default_prune_interval() -> Span {
    Span(chrono::Duration::minutes(10))
}

impl Default for RetentionSection {
    fn default() -> Self {
        RetentionSection {
            enabled: true,
            certificates: default_cert_retention(),
            tokens: default_token_retention(),
            batch: default_prune_batch(),
            interval: default_prune_interval(),
        }
    }
}

/// The longest retention accepted (100 years): a cutoff is the clock minus it.
const RETENTION_CEILING_DAYS: i64 = 36_500;
/// Most `[ocsp] cache_max_bytes`.
pub(crate) const MAX_CACHE_BYTES: usize = 64 << 30;
/// The error of a `[ocsp] cache_max_bytes` out of range.
pub(crate) const CACHE_BYTES_RANGE: &str = "between 4096 and 68719476736 (64 GiB)";

impl RetentionSection {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, span) in [
            ("retention.certificates", &self.certificates),
            ("retention.tokens", &self.tokens),
        ] {
            if span.0 < chrono::Duration::zero() {
                return Err(invalid(key, "must not be negative"));
            }
            if span.0 > chrono::Duration::days(RETENTION_CEILING_DAYS) {
                return Err(invalid(key, "at most 36500d"));
            }
        }
        if self.batch == 0 || self.batch > 100_000 {
            return Err(invalid("retention.batch", "must be between 1 and 100000"));
        }
        let i = self.interval.0;
        if i < chrono::Duration::seconds(10) || i > chrono::Duration::hours(24) {
            return Err(invalid("retention.interval", "must be between 10s and 24h"));
        }
        Ok(())
    }
}

impl ServerConfig {
    /// Read, parse and validate a configuration file. Relative paths are resolved against the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { key, message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                key,
                message,
            },
            other => other,
        })?;
        if let Some(base) = path.parent() {
            cfg.resolve_paths(base);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parse TOML text (no validation, no path resolution).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::Parse {
                path: PathBuf::new(),
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message: inner.message().to_string(),
            }
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        fix(&mut self.ca.certificate);
        fix(&mut self.ca.chain);
        if let PinSource::File(p) = &mut self.hsm.pin {
            fix(p);
        }
        if let Some(p) = &mut self.hsm.softhsm_conf {
            fix(p);
        }
        if let Some(p) = &mut self.ocsp.signer_cert {
            fix(p);
        }
        for p in &mut self.ocsp.external_responses {
            fix(p);
        }
        if let Some(p) = &mut self.crl.root_crl {
            fix(p);
        }
        if let Some(p) = &mut self.audit.public_key {
            fix(p);
        }
        if let Some(UrlSource(UrlFrom::File(p))) = &mut self.store.url {
            fix(p);
        }
    }

    /// Check values; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.hsm.module.is_none() {
            return Err(invalid(
                "hsm.module",
                "required: the path of the HSM's PKCS#11 library (for SoftHSM2, e.g. \
                 /usr/lib/softhsm/libsofthsm2.so); there is no default",
            ));
        }
        for name in self.profiles.0.keys() {
            if name.starts_with('_') {
                return Err(invalid(
                    &format!("profiles.{name}"),
                    "profile names starting with `_` are reserved for the server",
                ));
            }
        }
        self.profiles.validate().map_err(|e| match e {
            ca_core::Error::Config { path, reason } => invalid(&path, reason),
            other => invalid("profiles", other.to_string()),
        })?;
        if self.tls.names.is_empty() {
            return Err(invalid("tls.names", "at least one name is needed"));
        }
        for (i, n) in self.tls.names.iter().enumerate() {
            n.parse::<ca_core::profile::San>()
                .map_err(|e| invalid(&format!("tls.names[{i}]"), e.to_string()))?;
        }
        let pos = |key: &str, s: &Span| {
            if s.0 <= chrono::Duration::zero() {
                Err(invalid(key, "must be positive"))
            } else {
                Ok(())
            }
        };
        pos("tls.validity", &self.tls.validity)?;
        pos("admin.validity", &self.admin.validity)?;
        pos("tokens.default_ttl", &self.tokens.default_ttl)?;
        pos("tokens.max_ttl", &self.tokens.max_ttl)?;
        pos("limits.request_timeout", &self.limits.request_timeout)?;
        pos("limits.handshake_timeout", &self.limits.handshake_timeout)?;
        self.limits.validate()?;
        if self.tls.validity.0 > chrono::Duration::days(398) {
            return Err(invalid("tls.validity", "at most 398d"));
        }
        if self.admin.validity.0 > chrono::Duration::days(398) {
            return Err(invalid("admin.validity", "at most 398d"));
        }
        if self.tokens.max_ttl.0.num_seconds() > crate::duration::TOKEN_TTL_CEILING {
            return Err(invalid("tokens.max_ttl", "at most 365d"));
        }
        if self.tokens.default_ttl.0 > self.tokens.max_ttl.0 {
            return Err(invalid("tokens.default_ttl", "longer than tokens.max_ttl"));
        }
        if self.limits.max_body_bytes < 1024 {
            return Err(invalid("limits.max_body_bytes", "at least 1024"));
        }
        for (key, r) in [
            ("limits.enroll", self.limits.enroll),
            ("limits.renew", self.limits.renew),
            ("limits.admin", self.limits.admin),
        ] {
            if r.per_second == 0 {
                return Err(invalid(&format!("{key}.per_second"), "must be at least 1"));
            }
            if r.burst == 0 {
                return Err(invalid(&format!("{key}.burst"), "must be at least 1"));
            }
        }
        if let Some(v) = &self.ocsp.max_age {
            pos("ocsp.max_age", v)?;
        }
        if let Some(v) = &self.crl.validity {
            pos("crl.validity", v)?;
        }
        if let Some(v) = &self.crl.full_interval {
            pos("crl.full_interval", v)?;
        }
        if self.crl.shard_width.is_some() && self.urls.crl.is_none() {
            return Err(invalid(
                "crl.shard_width",
                "CRL shards are published under urls.crl: set it too",
            ));
        }
        if self
            .ocsp
            .memo_max_bytes
            .is_some_and(|n| n > 1024 * 1024 * 1024)
        {
            return Err(invalid("ocsp.memo_max_bytes", "at most 1 GiB"));
        }
        if self
            .ocsp
            .cache_max_entries
            .is_some_and(|n| !(1..=50_000_000).contains(&n))
        {
            return Err(invalid("ocsp.cache_max_entries", "between 1 and 50000000"));
        }
        if self
            .ocsp
            .cache_max_bytes
            .is_some_and(|n| !(ca_core::ocsp::MIN_CACHE_MAX_BYTES..=MAX_CACHE_BYTES).contains(&n))
        {
            return Err(invalid("ocsp.cache_max_bytes", CACHE_BYTES_RANGE));
        }
        self.ocsp
            .responder_config()
            .validate()
            .map_err(|e| match e {
                ca_core::Error::Config { path, reason } => {
                    // The file gives the window in milliseconds.
                    let path = match path.as_str() {
                        "ocsp.issuance_batch_window" => "ocsp.issuance_batch_window_ms",
                        p => p,
                    };
                    invalid(path, reason)
                }
                other => invalid("ocsp", other.to_string()),
            })?;

        let interval = self.audit.checkpoint_interval.0;
        if interval < chrono::Duration::seconds(10) || interval > chrono::Duration::hours(24) {
            return Err(invalid(
                "audit.checkpoint_interval",
                "must be between 10s and 24h",
            ));
        }
        if let Some(key) = &self.audit.key {
            if key.is_empty() {
                return Err(invalid("audit.key", "must not be empty"));
            }
            if *key == self.hsm.issuing_key || self.ocsp.signer_key.as_deref() == Some(key) {
                return Err(invalid(
                    "audit.key",
                    "must be a key of its own: checkpoints are never signed with the issuing or OCSP key",
                ));
            }
        }

        if self.ocsp.signer_key.is_some() != self.ocsp.signer_cert.is_some() {
            return Err(invalid(
                "ocsp.signer_cert",
                "ocsp.signer_key and ocsp.signer_cert go together",
            ));
        }
        self.store.validate()?;
        self.retention.validate()?;
        Ok(())
    }

    /// Serialise (for `ca-server dev`, which writes the config it uses).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| invalid("(serialise)", e.to_string()))
    }
}

#[cfg(test)]
mod tests;
