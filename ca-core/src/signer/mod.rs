//! Signing keys: the [`Signer`] abstraction, its PKCS#11 implementation, and signature checks.
//!
//! Every signature the CA produces goes through a [`Signer`]; the private key never leaves it.
//! [`verify`] checks a signature with a public key in software (ring), which is how issuance
//! proves a certificate is good before returning it.

pub mod deferred;
#[cfg(feature = "hsm")]
pub mod pkcs11;

use crate::error::{Error, Result};
use const_oid::db::{rfc5912, rfc8410};
use der::{asn1::BitString, Decode, Encode};
use serde::{Deserialize, Serialize};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use std::fmt;
use std::str::FromStr;

/// Key algorithms the CA can hold and the agent can request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256.
    P256,
    /// ECDSA on P-384 with SHA-384.
    P384,
    /// RSA 2048, PKCS#1 v1.5 with SHA-256.
    Rsa2048,
    /// RSA 3072, PKCS#1 v1.5 with SHA-256.
    Rsa3072,
    /// RSA 4096, PKCS#1 v1.5 with SHA-256.
    Rsa4096,
    /// Ed25519 (PureEdDSA).
    Ed25519,
}

impl KeyAlgorithm {
    /// All algorithms, for tables and `--help`.
    pub const ALL: [KeyAlgorithm; 6] = [
        KeyAlgorithm::P256,
        KeyAlgorithm::P384,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
        KeyAlgorithm::Ed25519,
    ];

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::P256 => "p256",
            KeyAlgorithm::P384 => "p384",
            KeyAlgorithm::Rsa2048 => "rsa2048",
            KeyAlgorithm::Rsa3072 => "rsa3072",
            KeyAlgorithm::Rsa4096 => "rsa4096",
            KeyAlgorithm::Ed25519 => "ed25519",
        }
    }

    /// RSA modulus size, for RSA algorithms.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            KeyAlgorithm::Rsa2048 => Some(2048),
            KeyAlgorithm::Rsa3072 => Some(3072),
            KeyAlgorithm::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    /// The rcgen signature algorithm this key signs with.
    #[cfg(feature = "issue")]
    pub fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                &rcgen::PKCS_RSA_SHA256
            }
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// The X.509 signatureAlgorithm identifier (RFC 5758, RFC 4055, RFC 8410). RSA carries an
    /// explicit NULL parameter (RFC 4055 5); ECDSA and Ed25519 carry none.
    pub fn signature_algorithm_id(self) -> AlgorithmIdentifierOwned {
        match self {
            KeyAlgorithm::P256 => AlgorithmIdentifierOwned {
                oid: rfc5912::ECDSA_WITH_SHA_256,
                parameters: None,
            },
            KeyAlgorithm::P384 => AlgorithmIdentifierOwned {
                oid: rfc5912::ECDSA_WITH_SHA_384,
                parameters: None,
            },
            KeyAlgorithm::Ed25519 => AlgorithmIdentifierOwned {
                oid: rfc8410::ID_ED_25519,
                parameters: None,
            },
            _ => AlgorithmIdentifierOwned {
                oid: rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
                parameters: Some(der::asn1::Null.into()),
            },
        }
    }

    /// The ring verification algorithm for this key's signatures.
    fn ring_verify(self) -> &'static dyn ring::signature::VerificationAlgorithm {
        match self {
            KeyAlgorithm::P256 => &ring::signature::ECDSA_P256_SHA256_ASN1,
            KeyAlgorithm::P384 => &ring::signature::ECDSA_P384_SHA384_ASN1,
            KeyAlgorithm::Ed25519 => &ring::signature::ED25519,
            _ => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        }
    }

    /// Determine the algorithm of a SubjectPublicKeyInfo, refusing weak or unknown keys:
    /// RSA below 2048 bits or above 8192, curves other than P-256/P-384, other key types.
    pub fn from_spki(spki_der: &[u8]) -> Result<KeyAlgorithm> {
        let spki = SubjectPublicKeyInfoOwned::from_der(spki_der)
            .map_err(|e| Error::WeakKey(format!("cannot parse public key: {e}")))?;
        let oid = spki.algorithm.oid;
        if oid == rfc5912::ID_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok())
                .ok_or_else(|| Error::WeakKey("EC key without a named curve".into()))?;
            if curve == rfc5912::SECP_256_R_1 {
                Ok(KeyAlgorithm::P256)
            } else if curve == rfc5912::SECP_384_R_1 {
                Ok(KeyAlgorithm::P384)
            } else {
                Err(Error::WeakKey(format!(
                    "EC curve {curve} is not allowed (use P-256 or P-384)"
                )))
            }
        } else if oid == rfc5912::RSA_ENCRYPTION {
            let bits = rsa_modulus_bits(spki.subject_public_key.raw_bytes())?;
            match bits {
                0..=2047 => Err(Error::WeakKey(format!(
                    "RSA key of {bits} bits is too small (minimum 2048)"
                ))),
                2048..=3071 => Ok(KeyAlgorithm::Rsa2048),
                3072..=4095 => Ok(KeyAlgorithm::Rsa3072),
                4096..=8192 => Ok(KeyAlgorithm::Rsa4096),
                _ => Err(Error::WeakKey(format!(
                    "RSA key of {bits} bits is too large (maximum 8192)"
                ))),
            }
        } else if oid == rfc8410::ID_ED_25519 {
            Ok(KeyAlgorithm::Ed25519)
        } else {
            Err(Error::WeakKey(format!(
                "public key algorithm {oid} is not supported"
            )))
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        KeyAlgorithm::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::UnsupportedAlgorithm(format!(
                    "{s:?} (expected one of p256, p384, rsa2048, rsa3072, rsa4096, ed25519)"
                ))
            })
    }
}

/// RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER } (RFC 8017 A.1.1)
#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    modulus: der::asn1::UintRef<'a>,
    public_exponent: der::asn1::UintRef<'a>,
}

fn rsa_modulus_bits(rsa_public_key_der: &[u8]) -> Result<usize> {
    let key = RsaPublicKey::from_der(rsa_public_key_der)
        .map_err(|e| Error::WeakKey(format!("cannot parse RSA public key: {e}")))?;
    let m = key.modulus.as_bytes();
    let first = m.first().copied().unwrap_or(0);
    Ok(m.len() * 8 - first.leading_zeros() as usize)
}

/// Encode an RSA public key from its modulus and exponent (big-endian magnitudes).
pub(crate) fn rsa_public_key_der(modulus: &[u8], exponent: &[u8]) -> Result<Vec<u8>> {
    Ok(RsaPublicKey {
        modulus: der::asn1::UintRef::new(modulus)?,
        public_exponent: der::asn1::UintRef::new(exponent)?,
    }
    .to_der()?)
}

/// ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } (RFC 5480 2.2.3 / RFC 3279 2.2.3)
#[cfg(feature = "hsm")]
#[derive(der::Sequence)]
struct EcdsaSigValue<'a> {
    r: der::asn1::UintRef<'a>,
    s: der::asn1::UintRef<'a>,
}

/// Convert a raw PKCS#11 ECDSA signature (r || s) to the DER form X.509 uses.
#[cfg(feature = "hsm")]
pub(crate) fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return Err(Error::HsmData {
            what: "ECDSA signature (r||s)",
        });
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    Ok(EcdsaSigValue {
        r: der::asn1::UintRef::new(r)?,
        s: der::asn1::UintRef::new(s)?,
    }
    .to_der()?)
}

/// Build a SubjectPublicKeyInfo from the algorithm and the subjectPublicKey contents.
pub fn spki_der(alg: KeyAlgorithm, public_key_bits: &[u8]) -> Result<Vec<u8>> {
    let algorithm = match alg {
        KeyAlgorithm::P256 => AlgorithmIdentifierOwned {
            oid: rfc5912::ID_EC_PUBLIC_KEY,
            parameters: Some((&rfc5912::SECP_256_R_1).into()),
        },
        KeyAlgorithm::P384 => AlgorithmIdentifierOwned {
            oid: rfc5912::ID_EC_PUBLIC_KEY,
            parameters: Some((&rfc5912::SECP_384_R_1).into()),
        },
        KeyAlgorithm::Ed25519 => AlgorithmIdentifierOwned {
            oid: rfc8410::ID_ED_25519,
            parameters: None,
        },
        _ => AlgorithmIdentifierOwned {
            oid: rfc5912::RSA_ENCRYPTION,
            parameters: Some(der::asn1::Null.into()),
        },
    };
    Ok(SubjectPublicKeyInfoOwned {
        algorithm,
        subject_public_key: BitString::from_bytes(public_key_bits)?,
    }
    .to_der()?)
}

/// Verify `signature` (X.509 encoding) over `msg` with the key in `spki_der`.
pub fn verify(spki_der: &[u8], msg: &[u8], signature: &[u8]) -> Result<()> {
    let alg = KeyAlgorithm::from_spki(spki_der)?;
    let spki = SubjectPublicKeyInfoOwned::from_der(spki_der)?;
    verify_raw(alg, spki.subject_public_key.raw_bytes(), msg, signature)
}

/// Verify a signature of `signer`'s key with the algorithm and key bits it already holds
/// (no SubjectPublicKeyInfo parsing): the check after every signature the CA makes.
pub fn verify_own(signer: &dyn Signer, msg: &[u8], signature: &[u8]) -> Result<()> {
    verify_raw(signer.algorithm(), signer.public_key_bits(), msg, signature)
}

fn verify_raw(alg: KeyAlgorithm, key_bits: &[u8], msg: &[u8], signature: &[u8]) -> Result<()> {
    ring::signature::UnparsedPublicKey::new(alg.ring_verify(), key_bits)
        .verify(msg, signature)
        .map_err(|_| Error::SignatureCheckFailed)
}

/// A private key that signs without revealing itself (an HSM key, in production).
pub trait Signer: Send + Sync + fmt::Debug {
    /// The key's algorithm.
    fn algorithm(&self) -> KeyAlgorithm;
    /// The public key as a DER SubjectPublicKeyInfo.
    fn spki_der(&self) -> &[u8];
    /// The subjectPublicKey contents: `04||X||Y` for EC, RSAPublicKey DER for RSA, 32 bytes for
    /// Ed25519.
    fn public_key_bits(&self) -> &[u8];
    /// Sign `msg` (the whole to-be-signed data; hashing happens inside) and return the
    /// signature in its X.509 encoding (DER ECDSA-Sig-Value for ECDSA).
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>>;
}

/// A public key taken from a SubjectPublicKeyInfo, for rcgen to put into a certificate.
#[derive(Debug, Clone)]
pub struct PublicKey {
    alg: KeyAlgorithm,
    spki: Vec<u8>,
    #[cfg_attr(
        not(feature = "issue"),
        allow(dead_code, reason = "read by rcgen only")
    )]
    bits: Vec<u8>,
}

impl PublicKey {
    /// Parse (and vet) a SubjectPublicKeyInfo, and re-encode it canonically: the key is never
    /// copied as it came. The algorithm parameters are those RFC 3279 2.3.1 (RSA: NULL; an
    /// absent NULL is repaired), RFC 5480 2.1.1 (EC: namedCurve only; explicit curve
    /// parameters are refused) and RFC 8410 3 (Ed25519: absent) prescribe; the key itself is
    /// re-encoded from its parsed parts (RSA modulus and exponent as minimal INTEGERs; EC as
    /// an uncompressed point of the curve's size; Ed25519 as 32 octets). So two encodings of
    /// one key are the same [`PublicKey`], and key-reuse checks compare the canonical form.
    pub fn from_spki(spki_der: &[u8]) -> Result<Self> {
        let alg = KeyAlgorithm::from_spki(spki_der)?;
        let spki = SubjectPublicKeyInfoOwned::from_der(spki_der)?;
        let weak = |r: &str| Error::WeakKey(r.to_string());
        let raw = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| weak("subjectPublicKey has unused bits"))?;
        let params = spki.algorithm.parameters.as_ref();
        let bits = match alg {
            KeyAlgorithm::P256 | KeyAlgorithm::P384 => {
                // from_spki already required a namedCurve OID as the parameters.
                let len = if alg == KeyAlgorithm::P256 { 65 } else { 97 };
                if raw.len() != len || raw[0] != 0x04 {
                    return Err(weak(
                        "EC public key must be an uncompressed point of the curve's size (RFC 5480 2.2)",
                    ));
                }
                raw.to_vec()
            }
            KeyAlgorithm::Ed25519 => {
                if params.is_some() {
                    return Err(weak("Ed25519 key with parameters (RFC 8410 3: absent)"));
                }
                if raw.len() != 32 {
                    return Err(weak("Ed25519 public key must be 32 octets (RFC 8410 4)"));
                }
                raw.to_vec()
            }
            _ => {
                use der::Tagged;
                if params.is_some_and(|p| p.tag() != der::Tag::Null || !p.value().is_empty()) {
                    return Err(weak("RSA key parameters must be NULL (RFC 3279 2.3.1)"));
                }
                let key = RsaPublicKey::from_der(raw)
                    .map_err(|e| weak(&format!("cannot parse RSA public key: {e}")))?;
                rsa_public_key_der(key.modulus.as_bytes(), key.public_exponent.as_bytes())?
            }
        };
        Ok(PublicKey {
            alg,
            spki: self::spki_der(alg, &bits)?,
            bits,
        })
    }
    /// The key algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.alg
    }
    /// The SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }
}

#[cfg(feature = "issue")]
impl rcgen::PublicKeyData for PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.bits
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg.rcgen()
    }
}

/// SHA-256 fingerprint, lowercase hex without separators.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
