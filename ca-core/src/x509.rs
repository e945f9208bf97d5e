//! X.509 encoding helpers that need neither the HSM, the store nor rcgen (the light part of
//! ca-core, linked by the agent).

/// PEM-encode DER with a label (RFC 7468: 64-character lines, LF).
pub fn pem(label: &str, der: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der).unwrap_or_default()
}
