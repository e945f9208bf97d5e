//! Core of the internal certificate authority.
//!
//! No network code lives here. The pieces:
//!
//! - [`signer`]: the [`signer::Signer`] abstraction and its PKCS#11 implementation (keys stay in
//!   the HSM), plus software signature verification.
//! - [`ca_identity`]: the CA's own identity: reserved endpoint names, and the extended key
//!   usage that marks the CA server's TLS certificate.
//! - [`profile`]: certificate profiles (validity, key usage, names) as configuration data.
//! - [`csr`]: parsing and vetting PKCS#10 requests (proof of possession, weak keys, extensions).
//! - [`issuance`]: the issuing CA; `prepare()` checks a request, `issue()` signs, verifies and
//!   stores it.
//! - [`authority`]: the registration authority: token redemption, renewal policy (lineage
//!   rules) and the revocation workflow (store, OCSP, CRL, audit).
//! - [`store`]: the storage traits ([`store::CertStore`], [`store::TokenStore`],
//!   [`store::AuditLog`], ...; [`store::Store`] is all of them) and their sled implementation.
//! - [`audit`]: hash-chained audit events.
//! - [`x509`]: serial numbers, PEM, key identifiers, validity windows, and the rcgen adapter
//!   for [`signer::Signer`].
//!
//! ```no_run
//! use ca_core::signer::pkcs11::{HsmConfig, PinSource};
//! let token = HsmConfig::new("ca-token", PinSource::Env("CA_HSM_PIN".into())).open()?;
//! let signer = token.signer("issuing-ca")?;
//! # Ok::<(), ca_core::Error>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod audit;
#[cfg(feature = "issue")]
pub mod authority;
pub mod ca_identity;
pub mod clock;
#[cfg(feature = "issue")]
pub mod crl;
pub mod csr;
pub mod error;
#[cfg(feature = "issue")]
pub mod issuance;
#[cfg(feature = "store")]
pub mod ocsp;
pub mod profile;
pub mod revocation;
pub mod signer;
#[cfg(feature = "store")]
pub mod store;
pub mod x509;

pub use error::{Error, Result};

// The names most callers need, by role; everything else is reached through its module.
pub use audit::{AuditEvent, NewAuditEvent};
pub use profile::{Profile, Profiles};
pub use revocation::RevocationReason;
pub use signer::{KeyAlgorithm, Signer};

#[cfg(feature = "hsm")]
pub use signer::pkcs11::{HsmConfig, PinSource, Pkcs11Signer, Token};

#[cfg(feature = "store")]
pub use ocsp::{Responder, ResponderConfig};
#[cfg(feature = "store")]
pub use store::{CertRecord, SledStore, Store};

#[cfg(feature = "issue")]
pub use authority::Authority;
#[cfg(feature = "issue")]
pub use crl::{issue_crl, CrlPublisher, CrlRequest};
#[cfg(feature = "issue")]
pub use issuance::{Ca, IssueContext, Issued, IssuerUrls, Prepared};
