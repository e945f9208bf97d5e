//! Local key generation, key loading and certificate signing requests.
//!
//! Keys are made on the host and never leave it: P-256, P-384 and Ed25519 with ring (through
//! rcgen), RSA 2048 with the `rsa` crate (ring cannot generate RSA keys). Every key is written as
//! PKCS#8 PEM.

use crate::certs::Identity;
use crate::error::{Error, Result};
use ca_core::profile::San;
use ca_core::signer::KeyAlgorithm;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData, SanType};

/// A private key held in memory, with its PKCS#8 PEM encoding.
pub struct PrivateKey {
    pair: KeyPair,
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

impl PrivateKey {
    /// Generate a fresh key of `alg`.
    pub fn generate(alg: KeyAlgorithm) -> Result<PrivateKey> {
        let pair = match alg {
            KeyAlgorithm::P256 | KeyAlgorithm::P384 | KeyAlgorithm::Ed25519 => {
                KeyPair::generate_for(alg.rcgen())
                    .map_err(|e| Error::Key(format!("cannot generate a {} key: {e}", alg.name())))?
            }
            KeyAlgorithm::Rsa2048 => {
                use rsa::pkcs8::{EncodePrivateKey, LineEnding};
                let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
                    .map_err(|e| Error::Key(format!("cannot generate an RSA 2048 key: {e}")))?;
                let pem = key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| Error::Key(format!("cannot encode the RSA key: {e}")))?;
                KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)
                    .map_err(|e| Error::Key(format!("ring refused the RSA key: {e}")))?
            }
            other => {
                return Err(Error::Key(format!(
                    "the agent does not generate {} keys; use p256, p384, ed25519 or rsa2048",
                    other.name()
                )))
            }
        };
        let pem = pair.serialize_pem();
        Ok(PrivateKey { pair, pem })
    }

    /// Parse a PKCS#8 PEM private key (as written by the agent).
    pub fn from_pem(pem: &str) -> Result<PrivateKey> {
        let pair = KeyPair::from_pem(pem)
            .map_err(|e| Error::Key(format!("cannot parse the private key (PKCS#8 PEM): {e}")))?;
        Ok(PrivateKey {
            pair,
            pem: pem.to_string(),
        })
    }

    /// Whether this is a key of `alg` (a pending key kept across a configuration change may
    /// not be).
    pub fn is(&self, alg: KeyAlgorithm) -> bool {
        let want = match alg {
            KeyAlgorithm::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
            KeyAlgorithm::Rsa2048 => {
                return self.pair.algorithm() == &rcgen::PKCS_RSA_SHA256
                    && self.pair.der_bytes().len() < 300
            }
            _ => return false,
        };
        self.pair.algorithm() == want
    }

    /// The PKCS#8 PEM encoding.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The subjectPublicKey contents (`04||X||Y`, RSAPublicKey DER, or 32 Ed25519 bytes): what
    /// a certificate for this key carries.
    pub fn public_key_raw(&self) -> &[u8] {
        self.pair.der_bytes()
    }

    /// SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> Vec<u8> {
        self.pair.subject_public_key_info()
    }

    /// A PEM PKCS#10 request for `identity` (an empty identity leaves the names to the CA, as the
    /// enrollment token binds them).
    pub fn csr_pem(&self, identity: &Identity) -> Result<String> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = &identity.common_name {
            params
                .distinguished_name
                .push(DnType::CommonName, cn.as_str());
        }
        params.subject_alt_names = identity
            .sans
            .iter()
            .map(san_to_rcgen)
            .collect::<Result<_>>()?;
        let csr = params
            .serialize_request(&self.pair)
            .map_err(|e| Error::Key(format!("cannot build the CSR: {e}")))?;
        csr.pem()
            .map_err(|e| Error::Key(format!("cannot encode the CSR: {e}")))
    }
}

fn san_to_rcgen(san: &San) -> Result<SanType> {
    let ia5 = |s: &str| {
        rcgen::string::Ia5String::try_from(s.to_string())
            .map_err(|_| Error::Key(format!("name {san} is not ASCII")))
    };
    Ok(match san {
        San::Dns(v) => SanType::DnsName(ia5(v)?),
        San::Uri(v) => SanType::URI(ia5(v)?),
        San::Email(v) => SanType::Rfc822Name(ia5(v)?),
        San::Ip(v) => SanType::IpAddress(*v),
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

    #[test]
    fn rsa_larger_than_2048_is_refused_with_a_clear_error() {
        let e = PrivateKey::generate(KeyAlgorithm::Rsa4096).unwrap_err();
        assert!(e.to_string().contains("rsa2048"), "{e}");
    }
}
