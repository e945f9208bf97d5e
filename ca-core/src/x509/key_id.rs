//! Subject and authority key identifiers.

use crate::error::Result;
use der::Decode;

/// The key identifier of a public key (`spki_der`: a DER SubjectPublicKeyInfo): the leftmost
/// 160 bits of the SHA-256 hash of the subjectPublicKey BIT STRING value, without tag, length
/// and unused-bits octet (RFC 7093 2, method 1). RFC 5280 4.2.1.2 accepts any method that
/// yields unique values; this is one that other CAs and linters recognise (rcgen's default
/// hashes the whole SubjectPublicKeyInfo, which matches no published method).
///
/// A certificate's subjectKeyIdentifier is this value of its own key; the
/// authorityKeyIdentifier of what it signs repeats it (RFC 5280 4.2.1.1).
pub fn key_identifier(spki_der: &[u8]) -> Result<Vec<u8>> {
    use sha2::Digest;
    let spki = spki::SubjectPublicKeyInfoRef::from_der(spki_der)?;
    let digest = sha2::Sha256::digest(spki.subject_public_key.raw_bytes());
    Ok(digest[..20].to_vec())
}
