//! OCSP (RFC 6960) for the issuing CA, profiled for high volume as RFC 5019 describes.
//!
//! - [`parse_request`] turns untrusted request bytes into a [`ParsedRequest`] (typed CertIDs,
//!   nonce) or an [`OcspRequestError`] that maps to `malformedRequest`.
//! - [`sign_response`] builds and signs one BasicOCSPResponse; the key ceremony uses it for the
//!   root-signed response about the intermediate.
//! - [`Responder`] keeps one pre-signed response per issued certificate in memory, keyed by
//!   (issuer key hash, serial); it signs at issuance ([`Responder::on_issued`]), at revocation
//!   ([`Responder::on_revoked`]) and before a response goes stale ([`Responder::refresh_due`]),
//!   persists what it signs through [`crate::store::OcspResponseStore::put_ocsp_response`] and reloads it on
//!   start. Answering a request ([`Responder::lookup`]) performs no HSM operation and no I/O.
//! - [`StatelessResponder`] holds no key: it answers from the responses the signing nodes
//!   stored, each verified against the issuing CA (or a delegated responder it certified)
//!   before it is served, and follows the store's change feed (`ca-server ocsp`).
//!
//! # Response profile
//!
//! - `responderID` is `byKey`: the SHA-1 hash of the responder's public key (RFC 6960 4.2.1).
//! - Signed by a delegated OCSP-signing certificate (id-kp-OCSPSigning, id-pkix-ocsp-nocheck,
//!   issued by the CA; RFC 6960 4.2.2.2), which is then included in `certs`, or by the CA key.
//! - Each pre-signed response carries two SingleResponses for the same certificate, one with a
//!   SHA-1 CertID (what RFC 5019 2.1.1 clients, OpenSSL and nginx send) and one with SHA-256
//!   (RFC 9919). One HSM signature serves both; RFC 6960 4.2.2.3 allows the extra
//!   SingleResponse for pre-generated responses.
//! - Revoked: `revocationTime` and `revocationReason`, except that `unspecified` is expressed by
//!   omitting the reason (as RFC 5280 5.3.1 asks for CRLs).
//! - Serials this CA never issued get a signed `unknown` (RFC 6960 2.2), signed lazily at most at
//!   the live-signing rate and cached with a bound; when that budget is spent the answer is
//!   `unauthorized` (RFC 5019 2.2.3), which costs nothing.
//! - Requests about another issuer get `unauthorized` (RFC 6960 2.3), unless a response for that
//!   CertID was loaded from a file ([`ExternalResponse`]; the intermediate's status signed by the
//!   root in a key ceremony).
//! - Undecodable requests, more than [`ResponderConfig::max_certs_per_request`] CertIDs, or a
//!   nonce outside 1..=32 bytes get `malformedRequest` (RFC 6960 2.3, RFC 8954 2.1).
//!
//! # Nonce policy (RFC 8954)
//!
//! Written out once, in the module documentation of `ocsp/responder/live.rs`, beside the code
//! that applies it (switch: [`ResponderConfig::echo_nonce`]).
//!
//! # Parts of the responder
//!
//! [`Responder`] is a facade over parts split by the state they own (answer cache, issuance
//! presigner, external response files, live signing, refresher); `ocsp/responder/mod.rs`
//! lists them. HTTP concerns (entity tags, `Cache-Control`) belong to the status server.

mod build;
mod request;
mod responder;
mod signer_cert;

pub use build::{parse_response, sign_response, ParsedResponse};
pub use request::{parse_request, OcspRequestError, ParsedRequest, RequestedCert};
pub use responder::{
    AnswerKind, ArchivedCrl, CacheStats, ExternalResponse, FollowStats, IssuanceSigningStats,
    IssuedTicket, LiveRequest, LoadStats, Lookup, MemoStats, OcspAnswer, RefreshStats, Responder,
    ResponderConfig, ResponderKey, SignerCertStatus, StatelessConfig, StatelessResponder,
    StatelessStats, TransportCache, CACHE_ANSWER_BYTES, CACHE_SLOT_BYTES, DEFAULT_CACHE_MAX_BYTES,
    MIN_CACHE_MAX_BYTES,
};
pub use signer_cert::register_signer_cert;
/// The x509-ocsp crate whose types ([`x509_ocsp::CertId`], ...) appear in this API.
pub use x509_ocsp;
pub use x509_ocsp::OcspResponseStatus;

use crate::error::{Error, Result};
use const_oid::db::rfc5912;
use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use sha2::Digest;
use x509_cert::Certificate;

/// Longest validity interval of an OCSP response about a CA certificate (the root-signed
/// response about the intermediate, ceremony kind `ocsp-response`): twelve months, CA/B Forum
/// Baseline Requirements 4.9.10 ("For the status of Subordinate CA Certificates: ... at least
/// every twelve months"), taken as 365 days, which no twelve months are shorter than. The
/// interval is counted as BR 4.9.10 counts it ("the difference in time between the thisUpdate
/// and nextUpdate field, inclusive"): see [`validity_interval`].
pub const MAX_CA_RESPONSE_VALIDITY_DAYS: i64 = 365;

/// The validity interval of an OCSP response as CA/B Forum BR 4.9.10 counts it: nextUpdate -
/// thisUpdate, inclusive of both ends, so one second more than the difference.
pub fn validity_interval(
    this_update: chrono::DateTime<chrono::Utc>,
    next_update: chrono::DateTime<chrono::Utc>,
) -> chrono::Duration {
    next_update - this_update + chrono::Duration::seconds(1)
}

/// Profile name under which the delegated OCSP responder certificate is recorded in the store
/// ([`register_signer_cert`]): listed and revoked like any certificate this CA issued, never
/// issued through the API.
pub const OCSP_SIGNER_PROFILE: &str = "_ocsp-signer";

/// Hash algorithms accepted in a CertID (RFC 6960 4.1.1). SHA-1 is what RFC 5019 clients send;
/// SHA-256 is what RFC 9919 recommends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// SHA-1 (1.3.14.3.2.26)
    Sha1,
    /// SHA-256
    Sha256,
    /// SHA-384
    Sha384,
    /// SHA-512
    Sha512,
}

impl HashAlg {
    /// All supported algorithms.
    pub const ALL: [HashAlg; 4] = [
        HashAlg::Sha1,
        HashAlg::Sha256,
        HashAlg::Sha384,
        HashAlg::Sha512,
    ];

    /// The algorithm's object identifier.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            HashAlg::Sha1 => rfc5912::ID_SHA_1,
            HashAlg::Sha256 => rfc5912::ID_SHA_256,
            HashAlg::Sha384 => rfc5912::ID_SHA_384,
            HashAlg::Sha512 => rfc5912::ID_SHA_512,
        }
    }

    /// The algorithm with this identifier, if supported.
    pub fn from_oid(oid: &ObjectIdentifier) -> Option<HashAlg> {
        Self::ALL.into_iter().find(|a| a.oid() == *oid)
    }

    /// Hash `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => sha1::Sha1::digest(data).to_vec(),
            HashAlg::Sha256 => sha2::Sha256::digest(data).to_vec(),
            HashAlg::Sha384 => sha2::Sha384::digest(data).to_vec(),
            HashAlg::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    fn index(self) -> usize {
        match self {
            HashAlg::Sha1 => 0,
            HashAlg::Sha256 => 1,
            HashAlg::Sha384 => 2,
            HashAlg::Sha512 => 3,
        }
    }
}

/// The CA whose certificates a responder answers for: its certificate and the
/// issuerNameHash/issuerKeyHash values of a CertID under every supported hash algorithm
/// (RFC 6960 4.1.1: the hash of the DER issuer name, and of the issuer's subjectPublicKey BIT
/// STRING contents).
#[derive(Clone, Debug)]
pub struct OcspIssuer {
    cert_der: Vec<u8>,
    spki_der: Vec<u8>,
    key_bits: Vec<u8>,
    /// (name hash, key hash), indexed by [`HashAlg::index`].
    hashes: [(Vec<u8>, Vec<u8>); 4],
}

impl OcspIssuer {
    /// Take the issuer from its DER certificate.
    pub fn from_cert_der(cert_der: &[u8]) -> Result<Self> {
        let cert = Certificate::from_der(cert_der)
            .map_err(|e| Error::Issuer(format!("cannot parse issuer certificate: {e}")))?;
        let name = cert.tbs_certificate.subject.to_der()?;
        let spki_der = cert.tbs_certificate.subject_public_key_info.to_der()?;
        let key = cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes();
        let hashes = HashAlg::ALL.map(|a| (a.digest(&name), a.digest(key)));
        Ok(OcspIssuer {
            cert_der: cert_der.to_vec(),
            spki_der,
            key_bits: key.to_vec(),
            hashes,
        })
    }

    /// The issuer certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The issuer's SubjectPublicKeyInfo (DER).
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The issuer's subjectPublicKey contents.
    pub fn public_key_bits(&self) -> &[u8] {
        &self.key_bits
    }

    /// SHA-1 hash of the issuer's public key: the "issuer key hash" half of the responder's
    /// cache key.
    pub fn key_hash_sha1(&self) -> &[u8] {
        &self.hashes[0].1
    }

    /// Name and key hash under `alg`.
    pub fn hashes(&self, alg: HashAlg) -> (&[u8], &[u8]) {
        let (n, k) = &self.hashes[alg.index()];
        (n, k)
    }

    /// Whether a CertID names this issuer: recompute both hashes with the CertID's algorithm
    /// and compare them (the AlgorithmIdentifier parameters, NULL or absent, are not compared).
    pub fn matches(&self, cert_id: &x509_ocsp::CertId) -> Option<HashAlg> {
        let alg = HashAlg::from_oid(&cert_id.hash_algorithm.oid)?;
        let (n, k) = self.hashes(alg);
        (cert_id.issuer_name_hash.as_bytes() == n && cert_id.issuer_key_hash.as_bytes() == k)
            .then_some(alg)
    }

    /// The CertID of `serial` (big-endian magnitude) under `alg`. The hash AlgorithmIdentifier
    /// carries an explicit NULL, as OpenSSL and most clients send it.
    pub fn cert_id(&self, alg: HashAlg, serial: &[u8]) -> Result<x509_ocsp::CertId> {
        let (n, k) = self.hashes(alg);
        Ok(x509_ocsp::CertId {
            hash_algorithm: spki::AlgorithmIdentifierOwned {
                oid: alg.oid(),
                parameters: Some(der::asn1::Null.into()),
            },
            issuer_name_hash: der::asn1::OctetString::new(n)?,
            issuer_key_hash: der::asn1::OctetString::new(k)?,
            serial_number: x509_cert::serial_number::SerialNumber::new(serial_magnitude(serial))?,
        })
    }
}

/// A serial number as an unsigned big-endian magnitude without leading zero bytes (at least
/// one byte). Certificates encode positive serials with a leading 0x00 when the high bit is
/// set; stores and requests may or may not carry it, so keys are normalised with this.
pub fn serial_magnitude(serial: &[u8]) -> &[u8] {
    let start = serial
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(serial.len().saturating_sub(1));
    &serial[start.min(serial.len())..]
}

#[cfg(test)]
mod tests;
