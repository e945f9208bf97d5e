//! Revocation vocabulary shared by the store, CRL building and OCSP: RFC 5280 reason codes
//! and the ones this CA refuses, revoked entries and certificate status. The revocation
//! workflow (store, OCSP, CRL, audit) is the authority's ([`crate::authority`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// CRLReason (RFC 5280 5.3.1). Value 7 is unused by the RFC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RevocationReason {
    /// unspecified (0). RFC 5280 5.3.1: SHOULD be expressed by omitting the reason code in CRLs.
    Unspecified,
    /// keyCompromise (1)
    KeyCompromise,
    /// cACompromise (2)
    CaCompromise,
    /// affiliationChanged (3)
    AffiliationChanged,
    /// superseded (4)
    Superseded,
    /// cessationOfOperation (5)
    CessationOfOperation,
    /// certificateHold (6)
    CertificateHold,
    /// removeFromCRL (8)
    RemoveFromCrl,
    /// privilegeWithdrawn (9)
    PrivilegeWithdrawn,
    /// aACompromise (10)
    AaCompromise,
}

impl RevocationReason {
    /// The RFC 5280 numeric code.
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::CaCompromise => 2,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
            RevocationReason::CertificateHold => 6,
            RevocationReason::RemoveFromCrl => 8,
            RevocationReason::PrivilegeWithdrawn => 9,
            RevocationReason::AaCompromise => 10,
        }
    }

    /// From the RFC 5280 numeric code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// All reasons.
    pub const ALL: [RevocationReason; 10] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::CertificateHold,
        RevocationReason::RemoveFromCrl,
        RevocationReason::PrivilegeWithdrawn,
        RevocationReason::AaCompromise,
    ];

    /// The RFC 5280 name (`keyCompromise`, ...), also accepted by `FromStr`.
    pub fn name(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::CaCompromise => "cACompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
            RevocationReason::CertificateHold => "certificateHold",
            RevocationReason::RemoveFromCrl => "removeFromCRL",
            RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
            RevocationReason::AaCompromise => "aACompromise",
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RevocationReason {
    type Err = String;
    /// Accepts the RFC name in any case, with or without dashes/underscores
    /// (`keyCompromise`, `key-compromise`, `key_compromise`), or the numeric code.
    fn from_str(s: &str) -> Result<Self, String> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        if let Ok(code) = norm.parse::<u8>() {
            return Self::from_code(code).ok_or_else(|| format!("unknown reason code {code}"));
        }
        Self::ALL
            .into_iter()
            .find(|r| r.name().to_ascii_lowercase() == norm)
            .ok_or_else(|| format!("unknown revocation reason {s:?} (e.g. keyCompromise, superseded, cessationOfOperation)"))
    }
}

/// One revoked certificate, as CRLs and OCSP need it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedEntry {
    /// Serial number (big-endian magnitude, as in the certificate).
    pub serial: Vec<u8>,
    /// Revocation time (whole seconds).
    pub revoked_at: DateTime<Utc>,
    /// RFC 5280 5.3.1 reason code.
    pub reason: RevocationReason,
}

/// What the CA knows about a serial number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CertStatus {
    /// Issued by this CA and not revoked.
    Good,
    /// Issued by this CA and revoked.
    Revoked {
        /// Revocation time (whole seconds).
        at: DateTime<Utc>,
        /// RFC 5280 5.3.1 reason code.
        reason: RevocationReason,
    },
    /// Never issued by this CA.
    Unknown,
}

/// Refuse reasons a revocation of a certificate in this CA's store cannot carry. Every
/// certificate the store holds is an end-entity certificate (subscribers, administrators, the
/// server's TLS certificate, the delegated OCSP responder): the CA certificates are revoked
/// by the root in a ceremony (root CRL, root-signed OCSP response), never here. Refused:
///
/// - removeFromCRL (8): it "may only appear in delta CRLs and indicates that a certificate is
///   to be removed from a CRL" (RFC 5280 5.3.1); this CA publishes complete CRLs only and
///   never un-revokes, so it would make the CRL non-conforming and the OCSP answer
///   meaningless.
/// - certificateHold (6): the CA/Browser Forum Baseline Requirements, 7.2.2 (CRL reason
///   codes), say certificateHold MUST NOT be used; a hold is also undone with removeFromCRL,
///   which is refused above.
/// - cACompromise (2) and aACompromise (10): they state that a CA's or an attribute
///   authority's key is compromised (RFC 5280 5.3.1), which an end-entity certificate is
///   not; BR 7.2.2 lists the reasons a subscriber certificate may carry, and neither is one.
///   For a compromised subscriber key use keyCompromise.
pub fn check_reason(reason: RevocationReason) -> crate::Result<()> {
    let why = match reason {
        RevocationReason::RemoveFromCrl => {
            "removeFromCRL only appears in delta CRLs (RFC 5280 5.3.1), and a revocation is never undone"
        }
        RevocationReason::CertificateHold => {
            "certificateHold must not be used (CA/B Forum BR 7.2.2): a revocation is permanent; use a final reason"
        }
        RevocationReason::CaCompromise | RevocationReason::AaCompromise => {
            "the reason is for CA and attribute-authority certificates only (RFC 5280 5.3.1, BR 7.2.2); this is an end-entity certificate: use keyCompromise if its key is compromised"
        }
        _ => return Ok(()),
    };
    Err(crate::Error::ReasonNotAllowed(reason, why))
}

/// Whether [`check_reason`] accepts `reason` for the end-entity certificates of this CA.
pub fn reason_allowed(reason: RevocationReason) -> bool {
    check_reason(reason).is_ok()
}
