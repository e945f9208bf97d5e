//! The CA service: HTTPS API (enrollment, renewal, admin, EST) and the plain-HTTP status
//! listener (OCSP, CRL, issuer certificate).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
