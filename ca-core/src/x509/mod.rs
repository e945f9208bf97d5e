//! X.509 building blocks shared by issuance, the ceremonies, the server and the agent: one home
//! each for serial numbers, PEM, key identifiers and validity windows, and the one adapter that
//! lets rcgen sign with a [`crate::signer::Signer`].
//!
//! Plain der / x509-cert / sha2 code, except the rcgen adapter ([`RcgenKey`], [`key_id_method`]),
//! which sits in a submodule of its own so that it can be compiled only where certificates are
//! signed (the agent needs PEM and validity, not rcgen).
//!
//! ```
//! let serial = ca_core::x509::random_serial();
//! assert_eq!(serial.len(), ca_core::x509::SERIAL_LEN);
//! let pem = ca_core::x509::pem_encode("CERTIFICATE", &[0x30, 0x00]);
//! assert_eq!(ca_core::x509::pem_decode(pem.as_bytes(), "CERTIFICATE")?, [0x30, 0x00]);
//! # Ok::<(), ca_core::Error>(())
//! ```

mod crl_check;
mod crl_shard;
pub(crate) mod der_walk;
mod key_id;
mod pem;
#[cfg(feature = "issue")]
mod rcgen_key;
mod serial;
mod validity;

#[cfg(all(test, feature = "issue"))]
mod tests;

pub use crl_check::{check_crl, CheckedCrl};
pub use crl_shard::{
    crl_idp_uri, crl_is_delta, crl_shard_of, crl_shard_of_url, CrlShard, SHARD_PATH,
};
pub use key_id::key_identifier;
pub use pem::{pem_decode, pem_decode_all, pem_encode, PemError};
#[cfg(feature = "issue")]
pub use rcgen_key::{key_id_method, RcgenKey};
pub use serial::{random_serial, SERIAL_LEN};
pub use validity::{issuance_window, time, validity};
