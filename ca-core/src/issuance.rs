//! issuance
