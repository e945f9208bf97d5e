//! Shared fixture: a real server (SoftHSM issuing key, sled store, rustls on an ephemeral
//! 127.0.0.1 port) over `testkit::pki::TestPki`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use ca_core::clock::{Clock, SystemClock};
use ca_core::issuance::IssuerUrls;
use ca_core::profile::{Profiles, Span};
use ca_core::signer::KeyAlgorithm;
use ca_core::store::prelude::*;
use ca_core::store::Store;
use ca_server::api::types::*;
use ca_server::auth::Role;
use ca_server::client::ApiClient;
use ca_server::config::{Limits, TokenSection};
use ca_server::metrics::Metrics;
use ca_server::server::{self, Running, ServerParts};
use std::path::PathBuf;
use std::sync::Arc;
use testkit::pki::{test_profiles, TestPki};
use tokio::net::TcpListener;

/// PEM certificate + key.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cert: String,
    pub key: String,
}

pub struct TestServer {
    pub pki: TestPki,
    pub running: Option<Running>,
    pub url: String,
    pub status_url: String,
    pub root_pem: String,
    pub so: Identity,
    pub operator: Identity,
    pub auditor: Identity,
    /// The delegated OCSP responder certificate (DER), when `Options::ocsp_signer_valid_for`.
    pub ocsp_signer_der: Option<Vec<u8>>,
}

pub struct Options {
    /// Attach the status listener (OCSP responder, CRL) as in production.
    pub status: bool,
    /// Lifetime of the server's own TLS certificate.
    pub tls_validity: Span,
    pub limits: Limits,
    pub profiles: Profiles,
    pub clock: Arc<dyn Clock>,
    pub renewal: ca_server::config::RenewalSection,
    /// Sign OCSP with a delegated responder (key in the token, certificate issued by the
    /// issuing CA, configured through `[ocsp] signer_key`/`signer_cert`) valid for this long.
    pub ocsp_signer_valid_for: Option<chrono::Duration>,
}

impl Default for Options {
    fn default() -> Self {
        let mut profiles = test_profiles();
        // A profile whose certificates expire after 2 seconds (expiry tests).
        let mut short = profiles.0["client"].clone();
        short.validity = Span(chrono::Duration::seconds(2));
        short.backdate = Span(chrono::Duration::zero());
        profiles.0.insert("short".into(), short);
        let mut limits = Limits::default();
        limits.renew.per_second = 100;
        limits.renew.burst = 100;
        limits.admin.per_second = 100;
        limits.admin.burst = 200;
        Options {
            status: false,
            tls_validity: Span(chrono::Duration::days(1)),
            limits,
            profiles,
            clock: Arc::new(SystemClock),
            renewal: Default::default(),
            ocsp_signer_valid_for: None,
        }
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(Options::default()).await
    }

    pub async fn with(opts: Options) -> Self {
        let clock = opts.clock.clone();
        let pki = tokio::task::spawn_blocking(move || {
            TestPki::with(
                KeyAlgorithm::P256,
                test_profiles(),
                IssuerUrls::default(),
                clock,
            )
            .expect("test PKI")
        })
        .await
        .unwrap();
        let parts = ServerParts {
            signer: pki.issuing_signer.clone(),
            issuing_der: pki.issuing_der.clone(),
            chain_der: vec![pki.root_der.clone()],
            profiles: opts.profiles,
            urls: IssuerUrls::default(),
            store: pki.store.clone() as Arc<dyn Store>,
            clock: opts.clock,
            // Loopback names are never reserved; ca.test and 10.255.0.1 stand for the CA's
            // public endpoint names.
            tls_names: vec![
                "dns:localhost".into(),
                "ip:127.0.0.1".into(),
                "dns:ca.test".into(),
                "ip:10.255.0.1".into(),
            ],
            tls_validity: opts.tls_validity,
            admin_validity: Span(chrono::Duration::days(30)),
            limits: opts.limits,
            tokens: TokenSection::default(),
            renewal: opts.renewal,
            metrics: Arc::new(Metrics::new()),
            audit: None,
        };
        let mut ocsp = ca_server::config::OcspSection::default();
        let mut ocsp_signer_der = None;
        if let Some(valid_for) = opts.ocsp_signer_valid_for {
            let (_, der) = pki
                .ocsp_responder_valid_for("ocsp-signer", KeyAlgorithm::P256, valid_for)
                .unwrap();
            let path = pki.dir.path().join("ocsp-signer.pem");
            std::fs::write(&path, ca_core::x509::pem_encode("CERTIFICATE", &der)).unwrap();
            ocsp.signer_key = Some("ocsp-signer".into());
            ocsp.signer_cert = Some(path);
            ocsp_signer_der = Some(der);
        }
        let mut builder = server::ServerBuilder::new(parts);
        if opts.status {
            builder = builder.with_status(ocsp, ca_server::config::CrlSection::default());
        }
        let assembled = builder.assemble().await.expect("server assembles");
        let state = assembled.state.clone();
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let status = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mk = |role| {
            let state = state.clone();
            async move {
                let (cert, key) = ca_server::dev::issue_admin_cert(
                    &state,
                    &format!("test-{}", Role::name(role)),
                    role,
                    "test",
                )
                .await
                .unwrap();
                Identity { cert, key }
            }
        };
        let so = mk(Role::SecurityOfficer).await;
        let operator = mk(Role::Operator).await;
        let auditor = mk(Role::Auditor).await;
        let running = assembled
            .start(api, Some(status))
            .await
            .expect("server starts");
        let url = format!("https://{}", running.api_addr);
        let status_url = format!("http://{}", running.status_addr.unwrap());
        let root_pem = ca_core::x509::pem_encode("CERTIFICATE", &pki.root_der);
        TestServer {
            pki,
            running: Some(running),
            url,
            status_url,
            root_pem,
            so,
            operator,
            auditor,
            ocsp_signer_der,
        }
    }

    pub fn state(&self) -> &Arc<ca_server::service::AppState> {
        &self.running.as_ref().unwrap().state
    }

    pub fn client(&self, id: Option<&Identity>) -> ApiClient {
        ApiClient::new(
            &self.url,
            self.root_pem.as_bytes(),
            id.map(|i| (i.cert.as_bytes(), i.key.as_bytes())),
        )
        .unwrap()
    }

    pub fn anon(&self) -> ApiClient {
        self.client(None)
    }

    pub async fn token(&self, cn: &str, sans: &[&str], profile: &str) -> String {
        let resp: TokenCreateResponse = self
            .client(Some(&self.operator))
            .post_json(
                "/v1/admin/tokens",
                &TokenCreateRequest {
                    common_name: Some(cn.into()),
                    sans: sans.iter().map(|s| s.to_string()).collect(),
                    profile: Some(profile.into()),
                    ttl: None,
                },
            )
            .await
            .expect("token create");
        resp.token
    }

    /// Enroll with a fresh P-256 key; returns the identity and the response.
    pub async fn enroll(&self, token: &str, cn: &str, sans: &[&str]) -> (Identity, IssuedResponse) {
        let (key, csr) = csr(cn, sans);
        let issued: IssuedResponse = self
            .anon()
            .post_json(
                "/v1/enroll",
                &EnrollRequest {
                    token: token.into(),
                    csr,
                },
            )
            .await
            .expect("enroll");
        (
            Identity {
                cert: issued.certificate.clone(),
                key,
            },
            issued,
        )
    }

    pub fn tmp(&self) -> PathBuf {
        self.pki.dir.path().to_path_buf()
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub fn audit_count(&self) -> usize {
        self.pki.store.audit_events(1, usize::MAX).unwrap().len()
    }

    pub fn cert_count(&self) -> usize {
        self.pki
            .store
            .list_certs(&ca_core::store::CertFilter::default())
            .unwrap()
            .len()
    }
}

/// A fresh P-256 key (PEM) and a CSR (PEM) for `cn` and `sans` (`dns:`/`uri:`/`ip:` prefixes).
pub fn csr(cn: &str, sans: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    (key.serialize_pem(), csr_with_key(&key, cn, sans))
}

pub fn csr_with_key(key: &rcgen::KeyPair, cn: &str, sans: &[&str]) -> String {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if !cn.is_empty() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
    }
    params.subject_alt_names = sans
        .iter()
        .map(|s| {
            let (kind, v) = s.split_once(':').unwrap_or(("dns", s));
            match kind {
                "dns" => rcgen::SanType::DnsName(v.to_string().try_into().unwrap()),
                "uri" => rcgen::SanType::URI(v.to_string().try_into().unwrap()),
                "ip" => rcgen::SanType::IpAddress(v.parse().unwrap()),
                _ => panic!("san kind {kind}"),
            }
        })
        .collect();
    params.serialize_request(key).unwrap().pem().unwrap()
}

pub fn serial_of(pem: &str) -> String {
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    hex::encode(cert.tbs_certificate.raw_serial())
}

/// A P-256 test PKI on its own SoftHSM token and a fresh database on the shared throwaway
/// PostgreSQL cluster (started by the first caller), made off the async executor.
pub async fn pki_and_database() -> (TestPki, testkit::pg::TestDatabase) {
    tokio::task::spawn_blocking(|| {
        let pki = TestPki::new(KeyAlgorithm::P256).expect("test PKI");
        let server = testkit::pg::PgServer::shared().expect("PostgreSQL");
        let db = server.fresh_database().expect("database");
        (pki, db)
    })
    .await
    .unwrap()
}
