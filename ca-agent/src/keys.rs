//! Local key generation, key loading and certificate signing requests.
//!
//! Keys are made on the host and never leave it: P-256, P-384 and Ed25519 with ring, RSA 2048
//! with the `rsa` crate (ring cannot generate RSA keys; it signs with them). Every key is written
//! as PKCS#8 PEM. The PKCS#10 request (RFC 2986) is built with x509-cert and signed with ring.

use crate::certs::Identity;
use crate::error::{Error, Result};
use ca_core::profile::San;
use ca_core::signer::KeyAlgorithm;
use der::asn1::{BitString, Ia5String, OctetString, SetOfVec, Utf8StringRef};
use der::oid::AssociatedOid;
use der::{Any, Decode, Encode};
use ring::rand::SystemRandom;
use ring::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use x509_cert::attr::{Attribute, AttributeTypeAndValue};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::Extension;
use x509_cert::name::{RdnSequence, RelativeDistinguishedName};
use x509_cert::request::{CertReq, CertReqInfo, ExtensionReq, Version};
use x509_cert::spki::SubjectPublicKeyInfoOwned;

/// A ring key pair of one of the kinds the agent makes.
enum Pair {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// A private key held in memory, with its PKCS#8 PEM encoding.
pub struct PrivateKey {
    alg: KeyAlgorithm,
    pair: Pair,
    pem: String,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("PrivateKey")
            .field("public_key", &hex::encode(self.public_key_raw()))
            .finish_non_exhaustive()
    }
}

fn ecdsa_signing(alg: KeyAlgorithm) -> Option<&'static sig::EcdsaSigningAlgorithm> {
    match alg {
        KeyAlgorithm::P256 => Some(&sig::ECDSA_P256_SHA256_ASN1_SIGNING),
        KeyAlgorithm::P384 => Some(&sig::ECDSA_P384_SHA384_ASN1_SIGNING),
        _ => None,
    }
}

impl PrivateKey {
    /// Generate a fresh key of `alg`.
    pub fn generate(alg: KeyAlgorithm) -> Result<PrivateKey> {
        let failed = |e: &dyn std::fmt::Display| {
            Error::Key(format!("cannot generate a {} key: {e}", alg.name()))
        };
        let rng = SystemRandom::new();
        let pkcs8: Vec<u8> = match alg {
            KeyAlgorithm::P256 | KeyAlgorithm::P384 => {
                let signing = ecdsa_signing(alg).ok_or_else(|| failed(&"no curve"))?;
                EcdsaKeyPair::generate_pkcs8(signing, &rng)
                    .map_err(|e| failed(&e))?
                    .as_ref()
                    .to_vec()
            }
            KeyAlgorithm::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|e| failed(&e))?
                .as_ref()
                .to_vec(),
            KeyAlgorithm::Rsa2048 => {
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
                    .map_err(|e| Error::Key(format!("cannot generate an RSA 2048 key: {e}")))?;
                key.to_pkcs8_der()
                    .map_err(|e| Error::Key(format!("cannot encode the RSA key: {e}")))?
                    .as_bytes()
                    .to_vec()
            }
            other => {
                return Err(Error::Key(format!(
                    "the agent does not generate {} keys; use p256, p384, ed25519 or rsa2048",
                    other.name()
                )))
            }
        };
        let (alg, pair) = parse_pkcs8(&pkcs8)
            .map_err(|e| Error::Key(format!("ring refused the new {} key: {e}", alg.name())))?;
        let pem = der::pem::encode_string("PRIVATE KEY", der::pem::LineEnding::LF, &pkcs8)
            .map_err(|e| Error::Key(format!("cannot encode the key: {e}")))?;
        Ok(PrivateKey { alg, pair, pem })
    }

    /// Parse a PKCS#8 PEM private key (as written by the agent).
    pub fn from_pem(pem: &str) -> Result<PrivateKey> {
        let bad = |e: &dyn std::fmt::Display| {
            Error::Key(format!("cannot parse the private key (PKCS#8 PEM): {e}"))
        };
        let (label, der) = der::pem::decode_vec(pem.trim().as_bytes()).map_err(|e| bad(&e))?;
        if label != "PRIVATE KEY" {
            return Err(bad(&format!("a {label} block, not PRIVATE KEY")));
        }
        let (alg, pair) = parse_pkcs8(&der).map_err(|e| bad(&e))?;
        Ok(PrivateKey {
            alg,
            pair,
            pem: pem.to_string(),
        })
    }

    /// Whether this is a key of `alg` (a pending key kept across a configuration change may
    /// not be).
    pub fn is(&self, alg: KeyAlgorithm) -> bool {
        self.alg == alg
    }

    /// The PKCS#8 PEM encoding.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The subjectPublicKey contents (`04||X||Y`, RSAPublicKey DER, or 32 Ed25519 bytes): what
    /// a certificate for this key carries.
    pub fn public_key_raw(&self) -> &[u8] {
        match &self.pair {
            Pair::Ecdsa(k) => k.public_key().as_ref(),
            Pair::Ed25519(k) => k.public_key().as_ref(),
            Pair::Rsa(k) => k.public_key().as_ref(),
        }
    }

    /// SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> Vec<u8> {
        // The algorithm and key come from ring's own parse, so the encoding cannot fail.
        ca_core::signer::spki_der(self.alg, self.public_key_raw()).unwrap_or_default()
    }

    /// Sign `msg` with the algorithm certificates for this key use (ECDSA with the curve's
    /// hash, Ed25519, RSA PKCS#1 v1.5 with SHA-256), in the X.509 encoding.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let rng = SystemRandom::new();
        let failed = |e: ring::error::Unspecified| Error::Key(format!("cannot sign the CSR: {e}"));
        match &self.pair {
            Pair::Ecdsa(k) => Ok(k.sign(&rng, msg).map_err(failed)?.as_ref().to_vec()),
            Pair::Ed25519(k) => Ok(k.sign(msg).as_ref().to_vec()),
            Pair::Rsa(k) => {
                let mut out = vec![0; k.public().modulus_len()];
                k.sign(&sig::RSA_PKCS1_SHA256, &rng, msg, &mut out)
                    .map_err(failed)?;
                Ok(out)
            }
        }
    }

    /// A PEM PKCS#10 request for `identity` (an empty identity leaves the names to the CA, as the
    /// enrollment token binds them).
    pub fn csr_pem(&self, identity: &Identity) -> Result<String> {
        let build = |e: der::Error| Error::Key(format!("cannot build the CSR: {e}"));
        let mut subject = RdnSequence::default();
        if let Some(cn) = &identity.common_name {
            let atv = AttributeTypeAndValue {
                oid: der::oid::db::rfc4519::CN,
                value: Any::encode_from(&Utf8StringRef::new(cn).map_err(build)?).map_err(build)?,
            };
            subject.0.push(RelativeDistinguishedName(
                SetOfVec::try_from(vec![atv]).map_err(build)?,
            ));
        }
        let mut attributes = SetOfVec::<Attribute>::new();
        if !identity.sans.is_empty() {
            let names = identity
                .sans
                .iter()
                .map(general_name)
                .collect::<Result<Vec<_>>>()?;
            let san = Extension {
                extn_id: SubjectAltName::OID,
                // RFC 5280 4.2.1.6: critical when the subject is empty.
                critical: subject.0.is_empty(),
                extn_value: OctetString::new(SubjectAltName(names).to_der().map_err(build)?)
                    .map_err(build)?,
            };
            attributes
                .insert(Attribute::try_from(ExtensionReq(vec![san])).map_err(build)?)
                .map_err(build)?;
        }
        let info = CertReqInfo {
            version: Version::V1,
            subject,
            public_key: SubjectPublicKeyInfoOwned::from_der(&self.spki_der()).map_err(build)?,
            attributes,
        };
        let signature = self.sign(&info.to_der().map_err(build)?)?;
        let req = CertReq {
            info,
            algorithm: self.alg.signature_algorithm_id(),
            signature: BitString::from_bytes(&signature).map_err(build)?,
        };
        let der = req.to_der().map_err(build)?;
        der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, &der)
            .map_err(|e| Error::Key(format!("cannot encode the CSR: {e}")))
    }
}

/// Read a PKCS#8 key with ring, finding its algorithm: ring checks the algorithm identifier
/// and the curve, so exactly one parser accepts a key.
fn parse_pkcs8(der: &[u8]) -> std::result::Result<(KeyAlgorithm, Pair), String> {
    let rng = SystemRandom::new();
    for alg in [KeyAlgorithm::P256, KeyAlgorithm::P384] {
        if let Some(signing) = ecdsa_signing(alg) {
            if let Ok(k) = EcdsaKeyPair::from_pkcs8(signing, der, &rng) {
                return Ok((alg, Pair::Ecdsa(k)));
            }
        }
    }
    if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
        return Ok((KeyAlgorithm::Ed25519, Pair::Ed25519(k)));
    }
    match RsaKeyPair::from_pkcs8(der) {
        Ok(k) => {
            let alg = match k.public().modulus_len() * 8 {
                0..=2048 => KeyAlgorithm::Rsa2048,
                2049..=3072 => KeyAlgorithm::Rsa3072,
                _ => KeyAlgorithm::Rsa4096,
            };
            Ok((alg, Pair::Rsa(k)))
        }
        Err(e) => Err(format!(
            "not a P-256, P-384, Ed25519 or RSA key ring accepts ({e})"
        )),
    }
}

fn general_name(san: &San) -> Result<GeneralName> {
    let ia5 =
        |s: &str| Ia5String::new(s).map_err(|_| Error::Key(format!("name {san} is not ASCII")));
    Ok(match san {
        San::Dns(v) => GeneralName::DnsName(ia5(v)?),
        San::Uri(v) => GeneralName::UniformResourceIdentifier(ia5(v)?),
        San::Email(v) => GeneralName::Rfc822Name(ia5(v)?),
        San::Ip(v) => {
            let bytes = match v {
                std::net::IpAddr::V4(a) => a.octets().to_vec(),
                std::net::IpAddr::V6(a) => a.octets().to_vec(),
            };
            GeneralName::IpAddress(
                OctetString::new(bytes).map_err(|e| Error::Key(format!("name {san}: {e}")))?,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_type_generates_reloads_and_makes_a_csr() {
        let ident = Identity {
            common_name: Some("web.svc".into()),
            sans: vec![
                "dns:web.svc".parse().unwrap(),
                "ip:10.0.0.1".parse().unwrap(),
            ],
        };
        for alg in [
            KeyAlgorithm::P256,
            KeyAlgorithm::P384,
            KeyAlgorithm::Ed25519,
            KeyAlgorithm::Rsa2048,
        ] {
            let k = PrivateKey::generate(alg).unwrap();
            assert!(k.pem().starts_with("-----BEGIN PRIVATE KEY-----"));
            let again = PrivateKey::from_pem(k.pem()).unwrap();
            assert_eq!(again.public_key_raw(), k.public_key_raw(), "{alg:?}");
            let csr = k.csr_pem(&ident).unwrap();
            // The CA's own parser accepts it (signature = proof of possession).
            let parsed = ca_core::csr::parse_pem_or_der(csr.as_bytes()).unwrap();
            assert_eq!(parsed.public_key.algorithm(), alg);
            assert_eq!(parsed.common_name.as_deref(), Some("web.svc"));
            assert_eq!(parsed.sans.len(), 2);
        }
    }

    /// Without a commonName the subject is empty and the SAN extension critical (RFC 5280
    /// 4.2.1.6); without names at all the CSR carries no extension request. The CA's parser and
    /// openssl accept both.
    #[test]
    fn csrs_without_a_common_name_or_without_names() {
        let k = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
        assert!(k.is(KeyAlgorithm::P256) && !k.is(KeyAlgorithm::P384));
        let sans_only = Identity {
            common_name: None,
            sans: vec![
                "dns:api.svc".parse().unwrap(),
                "uri:spiffe://example.test/api".parse().unwrap(),
                "email:ops@example.test".parse().unwrap(),
                "ip:::1".parse().unwrap(),
            ],
        };
        for (ident, sans) in [(sans_only, 4), (Identity::default(), 0)] {
            let csr = k.csr_pem(&ident).unwrap();
            let parsed = ca_core::csr::parse_pem_or_der(csr.as_bytes()).unwrap();
            assert_eq!(parsed.common_name, None);
            assert_eq!(parsed.sans.len(), sans);
            let der = der::pem::decode_vec(csr.as_bytes()).unwrap().1;
            let req = CertReq::from_der(&der).unwrap();
            assert_eq!(req.info.attributes.len(), usize::from(sans > 0));
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("req.pem");
            std::fs::write(&path, &csr).unwrap();
            let out = std::process::Command::new("openssl")
                .args(["req", "-verify", "-noout", "-in"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn rsa_larger_than_2048_is_refused_with_a_clear_error() {
        let e = PrivateKey::generate(KeyAlgorithm::Rsa4096).unwrap_err();
        assert!(e.to_string().contains("rsa2048"), "{e}");
    }
}
