//! Wire types of the HTTPS API: they live in the contract crate, [`ca_api::types`], shared with
//! the agent, the admin CLI and the tests.

pub use ca_api::types::*;
