//! Test PKI for the OCSP and CRL tests: a CA whose key is in a fresh SoftHSM token, leaves
//! signed by it with rcgen, records in a real sled store on disk, files for openssl.
//! Shared with ca-server's status tests (`#[path]`), so it uses only crates both have.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use ca_core::clock::to_offset;
use ca_core::signer::pkcs11::Pkcs11Signer;
use ca_core::signer::{KeyAlgorithm, Signer};
use ca_core::store::{prelude::*, CertRecord, RecordStatus, Requester, SledStore};
use ca_core::x509::RcgenKey;
use chrono::{Duration, Utc};
use hsm_sim::TestToken;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

pub struct TestCa {
    pub token: TestToken,
    pub hsm: ca_core::signer::pkcs11::Token,
    pub signer: Arc<Pkcs11Signer>,
    pub cert_der: Vec<u8>,
    pub cert_pem: PathBuf,
    pub dir: tempfile::TempDir,
    pub store: Arc<SledStore>,
    pub store_dir: PathBuf,
    pub name: String,
}

pub struct Leaf {
    pub record: CertRecord,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

fn random_serial(high_bit: bool) -> Vec<u8> {
    let mut s: [u8; 16] = rand::random();
    if high_bit {
        s[0] |= 0x80;
    } else {
        s[0] = (s[0] & 0x7f) | 0x01;
    }
    s.to_vec()
}

pub fn write_pem(path: &Path, label: &str, der: &[u8]) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    std::fs::write(path, s).unwrap();
}

impl TestCa {
    /// A self-signed CA with its P-256 key in a fresh SoftHSM token.
    pub fn new(name: &str) -> TestCa {
        Self::with_alg(name, KeyAlgorithm::P256)
    }

    pub fn with_alg(name: &str, alg: KeyAlgorithm) -> TestCa {
        let token = TestToken::new().unwrap();
        let hsm = token.hsm_config().open().unwrap();
        hsm.generate_key("ca", alg).unwrap();
        let signer = Arc::new(hsm.signer("ca").unwrap());
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Test Bank");
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial(false)));
        let now = Utc::now();
        params.not_before = to_offset(now - Duration::days(1));
        params.not_after = to_offset(now + Duration::days(365));
        let key = RcgenKey::new(signer.as_ref());
        let cert = params.self_signed(&key).unwrap();
        let cert_der = cert.der().to_vec();
        Self::finish(token, hsm, signer, cert_der, name)
    }

    fn finish(
        token: TestToken,
        hsm: ca_core::signer::pkcs11::Token,
        signer: Arc<Pkcs11Signer>,
        cert_der: Vec<u8>,
        name: &str,
    ) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let cert_pem = dir.path().join("ca.pem");
        write_pem(&cert_pem, "CERTIFICATE", &cert_der);
        let store_dir = dir.path().join("store");
        let store = Arc::new(SledStore::open(&store_dir).unwrap());
        TestCa {
            token,
            hsm,
            signer,
            cert_der,
            cert_pem,
            dir,
            store,
            store_dir,
            name: name.to_string(),
        }
    }

    /// An intermediate CA signed by `self`, with its key in the same token (label `label`).
    pub fn intermediate(&self, name: &str) -> TestCa {
        let token = TestToken::new().unwrap();
        let hsm = token.hsm_config().open().unwrap();
        hsm.generate_key("ca", KeyAlgorithm::P256).unwrap();
        let signer = Arc::new(hsm.signer("ca").unwrap());
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Test Bank");
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial(true)));
        params.use_authority_key_identifier_extension = true;
        let now = Utc::now();
        params.not_before = to_offset(now - Duration::days(1));
        params.not_after = to_offset(now + Duration::days(300));
        let pubkey = RcgenKey::new(signer.as_ref());
        let root_key = RcgenKey::new(self.signer.as_ref());
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.clone().into(), &root_key).unwrap();
        let cert = params.signed_by(&pubkey, &issuer).unwrap();
        Self::finish(token, hsm, signer, cert.der().to_vec(), name)
    }

    fn sign(&self, params: &CertificateParams, public: &impl rcgen::PublicKeyData) -> Vec<u8> {
        let key = RcgenKey::new(self.signer.as_ref());
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.clone().into(), &key).unwrap();
        params.signed_by(public, &issuer).unwrap().der().to_vec()
    }

    /// A client/server leaf with a software key, stored as a valid record.
    pub fn issue_leaf(&self, cn: &str) -> Leaf {
        self.issue_leaf_with(cn, rand::random::<bool>())
    }

    pub fn issue_leaf_with(&self, cn: &str, high_bit_serial: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let serial = random_serial(high_bit_serial);
        let mut params = CertificateParams::new(vec![format!("{cn}.test")]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        let now = Utc::now();
        let not_before = ca_core::clock::truncate(now - Duration::hours(1));
        let not_after = ca_core::clock::truncate(now + Duration::days(30));
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        let der = self.sign(&params, &key);
        let record = CertRecord {
            serial: serial.clone(),
            subject: format!("CN={cn}"),
            sans: vec![format!("dns:{cn}.test")],
            identity: cn.to_string(),
            profile: "test".into(),
            not_before,
            not_after,
            issued_at: ca_core::clock::truncate(now),
            requester: Requester::Admin("test".into()),
            spki_sha256: ca_core::signer::sha256_hex(
                &rcgen::PublicKeyData::subject_public_key_info(&key),
            ),
            der: der.clone(),
            status: RecordStatus::Valid,
            lineage: serial.clone(),
            generation: 1,
        };
        assert!(self.store.insert_cert(&record).unwrap());
        let cert_pem = self.dir.path().join(format!("{cn}.pem"));
        let key_pem = self.dir.path().join(format!("{cn}.key"));
        write_pem(&cert_pem, "CERTIFICATE", &der);
        std::fs::write(&key_pem, key.serialize_pem()).unwrap();
        Leaf {
            record,
            cert_pem,
            key_pem,
        }
    }

    /// A leaf signed by this CA but never stored (a serial this CA "never issued").
    pub fn unissued_leaf(&self, cn: &str) -> PathBuf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![format!("{cn}.test")]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from_slice(&random_serial(false)));
        let der = self.sign(&params, &key);
        let path = self.dir.path().join(format!("{cn}.pem"));
        write_pem(&path, "CERTIFICATE", &der);
        path
    }

    /// A delegated OCSP responder certificate (id-kp-OCSPSigning, id-pkix-ocsp-nocheck) whose
    /// key is generated in this CA's token under `label`.
    pub fn ocsp_responder(&self, label: &str) -> (Arc<Pkcs11Signer>, Vec<u8>, PathBuf) {
        self.hsm.generate_key(label, KeyAlgorithm::P256).unwrap();
        let signer = Arc::new(self.hsm.signer(label).unwrap());
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{} OCSP responder", self.name));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
        // id-pkix-ocsp-nocheck (RFC 6960 4.2.2.2.1), value NULL.
        params.custom_extensions = vec![CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5],
            vec![0x05, 0x00],
        )];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial(false)));
        params.use_authority_key_identifier_extension = true;
        let now = Utc::now();
        params.not_before = to_offset(now - Duration::hours(1));
        params.not_after = to_offset(now + Duration::days(60));
        let der = self.sign(&params, &RcgenKey::new(signer.as_ref()));
        let path = self.dir.path().join(format!("{label}.pem"));
        write_pem(&path, "CERTIFICATE", &der);
        (signer, der, path)
    }

    /// Close the sled store and open it again (a restart). Every other handle must be gone.
    pub fn reopen_store(&mut self) {
        let scratch = Arc::new(
            SledStore::open(
                &self
                    .dir
                    .path()
                    .join(format!("scratch-{}", rand::random::<u32>())),
            )
            .unwrap(),
        );
        let old = std::mem::replace(&mut self.store, scratch);
        assert_eq!(Arc::strong_count(&old), 1, "store still in use");
        drop(old);
        self.store = Arc::new(SledStore::open(&self.store_dir).unwrap());
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn signer_dyn(&self) -> Arc<dyn Signer> {
        self.signer.clone()
    }
}

/// Run a command, returning (success, stdout+stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn openssl() -> Command {
    Command::new("openssl")
}
