//! The API client of the admin CLI and the tests: the one client of the contract crate,
//! [`ca_api::client`] (root file or pinned root, caServerIdentity check, mTLS).

pub use ca_api::client::*;
