//! Ceremony configuration files: the strict TOML schema, parsed with field paths in every error.
//!
//! A configuration is reviewed before the ceremony day and checked in full by
//! [`crate::plan::Plan::from_config`] before anything touches the HSM. Relative paths are
//! relative to the directory holding the configuration file.
//!
//! ```toml
//! kind = "intermediate"
//! name = "Example issuing CA 2025"
//! transcripts = "transcripts"
//!
//! [[officers]]
//! name = "Alice Adams"
//! share = "shares/alice.share"
//!
//! [root_token]
//! label = "root"
//! key_label = "root-ca"
//!
//! [intermediate]
//! root_certificate = "root.pem"
//! public_key = "issuing-ca.pub.pem"
//! subject = { common_name = "Example Issuing CA", organization = "Example Corp" }
//! validity = { days = 1825 }
//! crl_urls = ["http://127.0.0.1:8080/root.crl"]
//! certificate = "intermediate.pem"
//! ```

use crate::error::Error;
use ca_core::signer::pkcs11::PinSource;
use ca_core::signer::KeyAlgorithm;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};

/// The ceremony kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Generate the root key in the offline token, set a quorum PIN, self-sign the root.
    Root,
    /// Generate the issuing key in the online token and export its public key.
    Key,
    /// Sign the issuing CA certificate with the root key.
    Intermediate,
    /// Issue the delegated OCSP signing certificate with the issuing key.
    OcspSigner,
    /// Sign the root CRL.
    Crl,
    /// Sign an OCSP response about the intermediate with the root key.
    OcspResponse,
}

impl Kind {
    /// The name used in configs and file names.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Root => "root",
            Kind::Key => "key",
            Kind::Intermediate => "intermediate",
            Kind::OcspSigner => "ocsp-signer",
            Kind::Crl => "crl",
            Kind::OcspResponse => "ocsp-response",
        }
    }

    /// The section of the configuration that describes this kind's work.
    pub fn section(self) -> &'static str {
        match self {
            Kind::OcspSigner => "ocsp_signer",
            Kind::OcspResponse => "ocsp_response",
            k => k.name(),
        }
    }

    /// Whether the ceremony uses the root key (and so the quorum PIN of the root token).
    pub fn uses_root_token(self) -> bool {
        matches!(
            self,
            Kind::Root | Kind::Intermediate | Kind::Crl | Kind::OcspResponse
        )
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn default_transcripts() -> PathBuf {
    PathBuf::from("transcripts")
}

/// A ceremony configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which ceremony.
    pub kind: Kind,
    /// Human title, e.g. "Example Corp root key ceremony 2025".
    pub name: String,
    /// Directory of transcripts: this ceremony's is added there, earlier ones are its history
    /// (CRL numbers, the quorum's share set, the previous transcript's hash).
    #[serde(default = "default_transcripts")]
    pub transcripts: PathBuf,
    /// The officer who operates the HSM (default: the first officer).
    #[serde(default)]
    pub operator: Option<String>,
    /// The officers present; each confirms the plan by typing their name.
    pub officers: Vec<Officer>,
    /// Quorum for the root token's PIN (root ceremony only).
    #[serde(default)]
    pub quorum: Option<Quorum>,
    /// The offline token holding the root key.
    #[serde(default)]
    pub root_token: Option<RootToken>,
    /// The online token holding the issuing and OCSP keys.
    #[serde(default)]
    pub online_token: Option<OnlineToken>,
    /// `kind = "root"`.
    #[serde(default)]
    pub root: Option<RootSpec>,
    /// `kind = "key"`.
    #[serde(default)]
    pub key: Option<KeySpec>,
    /// `kind = "intermediate"`.
    #[serde(default)]
    pub intermediate: Option<IntermediateSpec>,
    /// `kind = "ocsp-signer"`.
    #[serde(default)]
    pub ocsp_signer: Option<OcspSignerSpec>,
    /// `kind = "crl"`.
    #[serde(default)]
    pub crl: Option<CrlSpec>,
    /// `kind = "ocsp-response"`.
    #[serde(default)]
    pub ocsp_response: Option<OcspResponseSpec>,
}

/// An officer taking part in the ceremony.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Officer {
    /// Full name; typed by the officer to confirm.
    pub name: String,
    /// PIN share file: written for this officer in a root ceremony, read from them in later
    /// ceremonies that use the root key. Omit for a witness without a share.
    #[serde(default)]
    pub share: Option<PathBuf>,
}

/// Shamir quorum for the root token PIN.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quorum {
    /// Shares needed to reassemble the PIN (m); the number of shares (n) is the number of
    /// officers with a `share` path.
    pub threshold: u8,
}

/// The offline token with the root key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootToken {
    /// PKCS#11 module (default: `$PKCS11_MODULE` or SoftHSM2).
    #[serde(default)]
    pub module: Option<PathBuf>,
    /// Token label.
    pub label: String,
    /// Root key label.
    pub key_label: String,
    /// Security officer PIN (root ceremony only, to set the quorum user PIN):
    /// `{ file = "..." }` or `{ env = "VAR" }`.
    #[serde(default)]
    pub so_pin: Option<PinSource>,
}

/// The online token with the issuing and OCSP keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineToken {
    /// PKCS#11 module (default: `$PKCS11_MODULE` or SoftHSM2).
    #[serde(default)]
    pub module: Option<PathBuf>,
    /// Token label.
    pub label: String,
    /// User PIN source: `{ file = "..." }` or `{ env = "VAR" }` (the CA server's PIN).
    pub pin: PinSource,
}

/// A distinguished name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// commonName (CN); required.
    pub common_name: String,
    /// organizationName (O).
    #[serde(default)]
    pub organization: Option<String>,
    /// organizationalUnitName (OU).
    #[serde(default)]
    pub organizational_unit: Option<String>,
    /// C (two letters)
    #[serde(default)]
    pub country: Option<String>,
    /// stateOrProvinceName (ST).
    #[serde(default)]
    pub state: Option<String>,
    /// localityName (L).
    #[serde(default)]
    pub locality: Option<String>,
}

/// Certificate validity: `not_before` (default: the ceremony's start) and exactly one of
/// `not_after`, `days`, `hours`. Times are RFC 3339 (`"2025-01-01T00:00:00Z"`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validity {
    /// Start of validity.
    #[serde(default, deserialize_with = "de_opt_time")]
    pub not_before: Option<DateTime<Utc>>,
    /// End of validity.
    #[serde(default, deserialize_with = "de_opt_time")]
    pub not_after: Option<DateTime<Utc>>,
    /// Lifetime in days.
    #[serde(default)]
    pub days: Option<u32>,
    /// Lifetime in hours.
    #[serde(default)]
    pub hours: Option<u32>,
}

/// A period after the ceremony's start: exactly one of `days`, `hours`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    /// Period in days.
    #[serde(default)]
    pub days: Option<u32>,
    /// Period in hours.
    #[serde(default)]
    pub hours: Option<u32>,
}

/// `[root]`: the root key and self-signed certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootSpec {
    /// Key algorithm.
    pub algorithm: KeyAlgorithm,
    /// Subject (and issuer) name.
    pub subject: Subject,
    /// Validity of the root certificate.
    pub validity: Validity,
    /// Output: root certificate (PEM).
    pub certificate: PathBuf,
}

/// `[key]`: the issuing key in the online token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Key label in the online token.
    pub key_label: String,
    /// Key algorithm.
    pub algorithm: KeyAlgorithm,
    /// Output: the public key (PEM SubjectPublicKeyInfo).
    pub public_key: PathBuf,
    /// Label of the audit checkpoint key to generate beside the issuing key (optional): the
    /// CA server signs its audit checkpoints with it (`[audit] key`), never with the issuing
    /// key. Must differ from `key_label`.
    #[serde(default)]
    pub audit_key_label: Option<String>,
    /// Algorithm of the audit checkpoint key (default: `algorithm`).
    #[serde(default)]
    pub audit_algorithm: Option<KeyAlgorithm>,
    /// Output: the audit checkpoint public key (PEM), for auditors (with `audit_key_label`).
    #[serde(default)]
    pub audit_public_key: Option<PathBuf>,
}

/// Name constraints for the intermediate (RFC 5280 4.2.1.10).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameConstraintsSpec {
    /// Permitted DNS subtrees (`example.com` also covers its subdomains).
    #[serde(default)]
    pub permitted_dns: Vec<String>,
    /// Excluded DNS subtrees.
    #[serde(default)]
    pub excluded_dns: Vec<String>,
    /// Permitted IP ranges, CIDR (`10.0.0.0/8`).
    #[serde(default)]
    pub permitted_ip: Vec<String>,
    /// Excluded IP ranges, CIDR.
    #[serde(default)]
    pub excluded_ip: Vec<String>,
    /// Permitted email subtrees (`example.com`, `@example.com` style per RFC 5280).
    #[serde(default)]
    pub permitted_email: Vec<String>,
}

/// `[intermediate]`: the issuing CA certificate, signed by the root.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntermediateSpec {
    /// Input: root certificate (PEM).
    pub root_certificate: PathBuf,
    /// Input: the issuing key's public key (PEM, from the `key` ceremony).
    pub public_key: PathBuf,
    /// Subject name of the issuing CA certificate.
    pub subject: Subject,
    /// Validity; must lie within the root's.
    pub validity: Validity,
    /// CRL distribution points: where the root CRL is published.
    pub crl_urls: Vec<String>,
    /// OCSP URLs for the intermediate's status (authority information access).
    #[serde(default)]
    pub ocsp_urls: Vec<String>,
    /// Where the root certificate is published (authority information access caIssuers).
    #[serde(default)]
    pub ca_issuers_urls: Vec<String>,
    /// Optional name constraints.
    #[serde(default)]
    pub name_constraints: Option<NameConstraintsSpec>,
    /// Optional extended key usages the intermediate may issue for (`serverAuth`,
    /// `clientAuth`, `ocspSigning`); none by default.
    #[serde(default)]
    pub extended_key_usage: Vec<String>,
    /// Output: intermediate certificate (PEM).
    pub certificate: PathBuf,
    /// Output: chain file, intermediate then root (PEM).
    #[serde(default)]
    pub chain: Option<PathBuf>,
}

/// `[ocsp_signer]`: the delegated OCSP signing certificate (RFC 6960 4.2.2.2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcspSignerSpec {
    /// Input: the issuing CA certificate (PEM).
    pub issuer_certificate: PathBuf,
    /// Label of the issuing key in the online token.
    pub issuing_key_label: String,
    /// Label of the OCSP signing key to generate in the online token.
    pub key_label: String,
    /// Key algorithm of the OCSP signing key.
    pub algorithm: KeyAlgorithm,
    /// Subject name of the OCSP signer certificate.
    pub subject: Subject,
    /// Validity: short (at most 366 days), within the issuer's.
    pub validity: Validity,
    /// Output: OCSP signer certificate (PEM).
    pub certificate: PathBuf,
}

/// One revoked certificate in the root CRL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedSpec {
    /// Serial number, hex (colons allowed).
    pub serial: String,
    /// Reason (`keyCompromise`, `cACompromise`, `superseded`, `cessationOfOperation`, ...).
    #[serde(default)]
    pub reason: Option<String>,
    /// Revocation time (default: the ceremony's start).
    #[serde(default, deserialize_with = "de_opt_time")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// `[crl]`: the root CRL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlSpec {
    /// Input: root certificate (PEM).
    pub root_certificate: PathBuf,
    /// nextUpdate after thisUpdate (the ceremony's start).
    pub next_update: Period,
    /// Revoked intermediates.
    #[serde(default)]
    pub revoked: Vec<RevokedSpec>,
    /// Output: the CRL (DER).
    pub crl: PathBuf,
}

/// Status to state in the OCSP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusSpec {
    /// Not revoked.
    Good,
    /// Revoked (give `reason` and optionally `revoked_at`).
    Revoked,
}

/// `[ocsp_response]`: an OCSP response about the intermediate, signed by the root key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcspResponseSpec {
    /// Input: root certificate (PEM).
    pub root_certificate: PathBuf,
    /// Input: the intermediate certificate (PEM) the response is about.
    pub certificate: PathBuf,
    /// `good` or `revoked`.
    pub status: StatusSpec,
    /// Revocation reason (status `revoked`).
    #[serde(default)]
    pub reason: Option<String>,
    /// Revocation time (status `revoked`; default: the ceremony's start).
    #[serde(default, deserialize_with = "de_opt_time")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Validity interval, thisUpdate to nextUpdate inclusive (at most 365 days: CA/B Forum BR
    /// 4.9.10, twelve months); nextUpdate is thisUpdate + validity - 1 second.
    pub validity: Period,
    /// Output: the OCSP response (DER).
    pub response: PathBuf,
}

/// Accept RFC 3339 strings and TOML's native datetimes (which must carry an offset).
fn de_opt_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Toml(toml::value::Datetime),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Text(s) => s,
        Raw::Toml(t) => t.to_string(),
    };
    DateTime::parse_from_rfc3339(&text)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not an RFC 3339 time with offset ({e})"
            ))
        })
}

impl Config {
    /// Read and parse a configuration file. Unknown fields and type errors are reported with
    /// their field path.
    pub fn load(file: &Path) -> Result<(Config, String), Error> {
        let text = std::fs::read_to_string(file).map_err(|source| Error::Read {
            what: "ceremony configuration",
            path: file.to_path_buf(),
            source,
        })?;
        let config = Self::parse(file, &text)?;
        Ok((config, text))
    }

    /// Parse configuration text (`file` is used in errors only).
    pub fn parse(file: &Path, text: &str) -> Result<Config, Error> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = match e.path().to_string() {
                p if p == "." => "(top level)".to_string(),
                p => p,
            };
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| {
                    format!(
                        " (line {})",
                        text[..s.start.min(text.len())].matches('\n').count() + 1
                    )
                })
                .unwrap_or_default();
            Error::Config {
                file: file.to_path_buf(),
                path,
                reason: format!("{}{line}", inner.message()),
            }
        })
    }
}
