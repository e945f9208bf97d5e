//! Attacks on the CA's identity and on name policy, run against real servers on loopback (real
//! SoftHSM issuing key, sled store, rustls):
//!
//! - an impostor holding an ordinary server certificate from this CA for the CA's own host
//!   name answers in its place: the agent (`ca-agent enroll`) and the admin CLI
//!   (`ca-server token create`, and the library client) send it nothing;
//! - the CA's own names are refused at token creation and at issuance;
//! - names outside a profile's policy (the commonName, URIs read differently from their
//!   string prefix, wildcard forms) are refused at token creation and at enrollment;
//! - CSRs from JDK keytool and OpenSSL with harmless extension requests enroll.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ca_core::issuance::IssueContext;
use ca_core::profile::{NamePolicy, Profile};
use ca_core::store::{prelude::*, IdentityBinding, TokenRecord};
use ca_core::x509::pem_encode;
use ca_server::api::types::*;
use common::{csr, Identity, Options, TestServer};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// What reached the impostor: completed TLS handshakes and HTTP requests.
#[derive(Default, Debug)]
struct Seen {
    handshakes: usize,
    requests: Vec<String>,
}

/// An impostor on 127.0.0.1 presenting `chain`/`key` and answering with the real CA's own
/// routes (so whatever reaches it would be answered exactly as the CA would).
async fn impostor(
    srv: &TestServer,
    chain: Vec<Vec<u8>>,
    key_der: Vec<u8>,
) -> (String, Arc<Mutex<Seen>>) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let verifier = Arc::new(
        ca_server::tls::ClientVerifier::new(
            &srv.state().ca.full_chain(),
            &ca_server::tls::provider(),
        )
        .unwrap(),
    );
    let cfg = ca_server::tls::server_config(
        ca_server::tls::provider(),
        verifier,
        chain.into_iter().map(CertificateDer::from).collect(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let router = ca_server::api::router(srv.state().clone());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, addr)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            let seen = s.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                seen.lock().unwrap().handshakes += 1;
                let svc =
                    tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                        seen.lock().unwrap().requests.push(format!(
                            "{} {}",
                            req.method(),
                            req.uri()
                        ));
                        req.extensions_mut()
                            .insert(ca_server::auth::Peer { addr, cert: None });
                        router.clone().oneshot(req)
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(
                    hyper_util::rt::TokioIo::new(tls),
                    hyper_util::service::TowerToHyperService::new(svc),
                )
                .await;
            });
        }
    });
    (url, seen)
}

/// The `ca-agent` binary of this target directory (built if missing).
fn agent_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CA_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let bin = dir.join("ca-agent");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "ca-agent"])
            .env("CARGO_TARGET_DIR", dir.parent().unwrap())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(st.success(), "cargo build -p ca-agent failed");
    }
    bin
}

fn write(dir: &Path, name: &str, data: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn text(o: &std::process::Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `ca-agent enroll` against `url` with the pinned root; returns the process output.
fn agent_enroll(
    dir: &Path,
    url: &str,
    root_der: &[u8],
    token: &str,
    cn: &str,
) -> std::process::Output {
    let bin = agent_bin();
    Command::new("timeout")
        .args(["-s", "KILL", "120"])
        .arg(bin)
        .args(["enroll", "--server", url, "--fingerprint"])
        .arg(ca_core::signer::sha256_hex(root_der))
        .args(["--token", token, "--cn", cn, "--cert"])
        .arg(dir.join("svc.crt"))
        .arg("--key")
        .arg(dir.join("svc.key"))
        .arg("--chain")
        .arg(dir.join("chain.pem"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// The attack of issue 13 section 2: a subscriber holds a valid server certificate of this CA
/// for the CA's own name (127.0.0.1, localhost) and answers in the CA's place. The agent and
/// the admin CLI refuse it during the handshake: no request, so no token and no admin action,
/// reaches it. Without the caServerIdentity check both send their request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_with_a_certificate_for_the_ca_name_receives_nothing() {
    let mut srv = TestServer::start().await;
    let work = srv.tmp().join("impostor");
    std::fs::create_dir_all(&work).unwrap();

    // The impostor's certificate: an ordinary `server` certificate for the CA's names, issued
    // by the same issuing key. (The running CA refuses these names now, so it is issued
    // through a CA without reserved names, as a CA before this control, or one whose profile
    // allows `.example.com` for `ca.example.com`, would have.)
    let pki = &srv.pki;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let req = ca_core::csr::parse_der(params.serialize_request(&key).unwrap().der()).unwrap();
    let binding = IdentityBinding {
        common_name: None,
        sans: vec!["dns:localhost".into(), "ip:127.0.0.1".into()],
    };
    let fake = pki
        .ca
        .prepare(
            &req,
            IssueContext::Admin {
                profile: "server",
                actor: "attacker",
                binding: Some(&binding),
            },
        )
        .unwrap()
        .issue()
        .unwrap();
    assert!(!ca_core::ca_identity::has_ca_server_identity(
        &fake.record.der
    ));
    let (url, seen) = impostor(
        &srv,
        // As the real server does: leaf, issuing CA, root.
        std::iter::once(fake.record.der.clone())
            .chain(fake.chain.iter().cloned())
            .collect(),
        key.serialize_der(),
    )
    .await;

    // openssl agrees the impostor's chain is valid for the name under the pinned root: only
    // the mark tells it apart.
    let root = write(&work, "root.pem", &srv.root_pem);
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(url.trim_start_matches("https://"))
        .args([
            "-verify_hostname",
            "localhost",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(&root)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Verify return code: 0 (ok)"),
        "{}",
        text(&out)
    );
    let before = seen.lock().unwrap().handshakes;

    // 1. The agent, with a real token, pinned to the real root.
    let token = srv.token("svc.test", &["dns:svc.test"], "client").await;
    let agent_dir = work.join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let root_der = srv.pki.root_der.clone();
    let (u, t, d) = (url.clone(), token.clone(), agent_dir.clone());
    let out = tokio::task::spawn_blocking(move || agent_enroll(&d, &u, &root_der, &t, "svc.test"))
        .await
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("caServerIdentity") && err.contains("no credential was sent"),
        "{}",
        text(&out)
    );
    assert!(!agent_dir.join("svc.crt").exists());

    // 2. The admin CLI (binary), with an operator certificate.
    let cert = write(&work, "op.crt", &srv.operator.cert);
    let op_key = write(&work, "op.key", &srv.operator.key);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ca-server"))
        .args([
            "token",
            "create",
            "--cn",
            "stolen.test",
            "--profile",
            "client",
        ])
        .env("CA_URL", &url)
        .env("CA_ROOT", &root)
        .env("CA_ADMIN_CERT", &cert)
        .env("CA_ADMIN_KEY", &op_key)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("caServerIdentity"),
        "{}",
        text(&out)
    );

    // 3. The admin client library (what the CLI uses), for every kind of request.
    let client = ca_server::client::ApiClient::new(
        &url,
        srv.root_pem.as_bytes(),
        Some((srv.operator.cert.as_bytes(), srv.operator.key.as_bytes())),
    )
    .unwrap();
    let e = client
        .post_json::<_, TokenCreateResponse>(
            "/v1/admin/tokens",
            &TokenCreateRequest {
                common_name: Some("stolen.test".into()),
                sans: vec![],
                profile: None,
                ttl: None,
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("caServerIdentity"), "{e}");
    let (_, good_csr) = csr("svc.test", &["dns:svc.test"]);
    let e = ca_server::client::ApiClient::new(&url, srv.root_pem.as_bytes(), None)
        .unwrap()
        .post_json::<_, IssuedResponse>(
            "/v1/enroll",
            &EnrollRequest {
                token: token.clone(),
                csr: good_csr,
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("caServerIdentity"), "{e}");

    // The impostor completed no handshake and received no request, so no token bytes.
    {
        let seen_now = seen.lock().unwrap();
        assert_eq!(seen_now.handshakes, before, "{seen_now:?}");
        assert!(seen_now.requests.is_empty(), "{seen_now:?}");
    }

    // The real CA, same clients: the token was never spent.
    let agent_dir = work.join("agent-real");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let root_der = srv.pki.root_der.clone();
    let (u, d) = (srv.url.clone(), agent_dir.clone());
    let out =
        tokio::task::spawn_blocking(move || agent_enroll(&d, &u, &root_der, &token, "svc.test"))
            .await
            .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let served = std::fs::read_to_string(agent_dir.join("svc.crt")).unwrap();
    assert!(served.contains("BEGIN CERTIFICATE"));
    srv.stop().await;
}

/// The server's own certificate carries the mark, and the server issues it again at every
/// start (a data directory from before the mark gets a marked certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_certificate_carries_the_mark() {
    let mut srv = TestServer::start().await;
    let served = served_leaf(&srv.url).await;
    assert!(ca_core::ca_identity::has_ca_server_identity(&served));
    let rec = srv
        .pki
        .store
        .get_cert(&hex::decode(common::serial_of(&pem_encode("CERTIFICATE", &served))).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(rec.profile, "_server-tls");
    srv.stop().await;
}

/// The leaf a TLS server presents (any certificate accepted: this only reads it).
async fn served_leaf(url: &str) -> Vec<u8> {
    let addr = url.trim_start_matches("https://").to_string();
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &addr])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = text.find("-----BEGIN CERTIFICATE-----").unwrap();
    let end = text.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    der::pem::decode_vec(&text.as_bytes()[start..end])
        .unwrap()
        .1
}

fn with_svc_profiles() -> Options {
    let mut opts = Options::default();
    opts.profiles.0.insert(
        "svc".into(),
        Profile::client(NamePolicy {
            dns: vec![".svc.example.com".into()],
            uri: vec!["spiffe://example.com/ns".into()],
            common_name: true,
            max_sans: 10,
            ..Default::default()
        }),
    );
    opts
}

async fn create_token(
    srv: &TestServer,
    who: &Identity,
    cn: Option<&str>,
    sans: &[&str],
    profile: &str,
) -> Result<String, ca_server::client::ClientError> {
    srv.client(Some(who))
        .post_json::<_, TokenCreateResponse>(
            "/v1/admin/tokens",
            &TokenCreateRequest {
                common_name: cn.map(str::to_string),
                sans: sans.iter().map(|s| s.to_string()).collect(),
                profile: Some(profile.into()),
                ttl: None,
            },
        )
        .await
        .map(|r| r.token)
}

/// A token as one created before a name became reserved or a policy was tightened would be
/// (written to the store directly, bypassing token creation).
fn plant_token(srv: &TestServer, secret: &str, cn: Option<&str>, sans: &[&str], profile: &str) {
    let now = chrono::Utc::now();
    srv.pki
        .store
        .insert_token(&TokenRecord {
            id: format!("tok_{secret}"),
            hash: ca_server::service::token_hash(secret),
            identity: IdentityBinding {
                common_name: cn.map(str::to_string),
                sans: sans.iter().map(|s| s.to_string()).collect(),
            },
            profile: profile.into(),
            created_at: now,
            expires_at: now + chrono::Duration::hours(1),
            created_by: "test".into(),
            used_at: None,
        })
        .unwrap();
}

async fn enroll_err(srv: &TestServer, token: &str, cn: &str, sans: &[&str]) -> (u16, String) {
    let (_, csr) = csr(cn, sans);
    match srv
        .anon()
        .post_json::<_, IssuedResponse>(
            "/v1/enroll",
            &EnrollRequest {
                token: token.into(),
                csr,
            },
        )
        .await
    {
        Ok(_) => panic!("enrollment with {cn} {sans:?} succeeded"),
        Err(ca_server::client::ClientError::Api { status, code, .. }) => (status.as_u16(), code),
        Err(e) => panic!("{e}"),
    }
}

/// The CA's own names (its TLS names `ca.test` and 10.255.0.1 here; loopback names are never reserved) are refused at token
/// creation, even by a security officer, and at enrollment with a token that binds them;
/// the refused token stays unused and nothing is issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_names_are_refused_at_token_creation_and_issuance() {
    let mut srv = TestServer::with(with_svc_profiles()).await;
    let rows: &[(&str, Option<&str>, &[&str], &str)] = &[
        (
            "reserved DNS SAN",
            Some("svc.test"),
            &["dns:svc.test", "dns:ca.test"],
            "server",
        ),
        ("reserved DNS, other case", None, &["dns:CA.Test"], "mtls"),
        (
            "reserved IP SAN",
            Some("svc.test"),
            &["ip:10.255.0.1"],
            "client",
        ),
        ("reserved name as CN", Some("ca.test"), &[], "server"),
        ("reserved IP as CN", Some("10.255.0.1"), &[], "client"),
    ];
    let certs = srv.cert_count();
    for (what, cn, sans, profile) in rows {
        for who in [&srv.operator, &srv.so] {
            match create_token(&srv, who, *cn, sans, profile).await {
                Err(e) => assert_eq!(e.code(), Some("name_reserved"), "{what}: {e}"),
                Ok(_) => panic!("{what}: token created"),
            }
        }
    }
    // A token that binds a reserved name (made before the name was reserved) does not get it.
    plant_token(&srv, "planted-reserved", None, &["ip:10.255.0.1"], "server");
    assert_eq!(
        enroll_err(&srv, "planted-reserved", "", &["ip:10.255.0.1"]).await,
        (403, "name_reserved".into())
    );
    plant_token(&srv, "planted-cn", Some("ca.test"), &[], "server");
    assert_eq!(
        enroll_err(&srv, "planted-cn", "ca.test", &[]).await,
        (403, "name_reserved".into())
    );
    // Loopback names name every host: a local service may have them.
    create_token(
        &srv,
        &srv.operator,
        Some("svc.test"),
        &["dns:svc.test", "ip:127.0.0.1"],
        "server",
    )
    .await
    .expect("loopback names are not reserved");
    let tokens = srv.pki.store.list_tokens().unwrap();
    assert!(tokens.iter().all(|t| t.used_at.is_none()));
    assert_eq!(srv.cert_count(), certs, "nothing issued");
    srv.stop().await;
}

/// Names outside a profile's policy: the CN like any SAN, URIs read another way than their
/// string prefix, wildcard forms. Refused at token creation and at enrollment (with tokens
/// planted as if created before the policy was tightened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_the_policy_are_refused_through_the_server() {
    let mut srv = TestServer::with(with_svc_profiles()).await;
    let certs = srv.cert_count();
    let rows: &[(&str, Option<&str>, &[&str], &str)] = &[
        (
            "CN outside the policy",
            Some("payments.bank.example"),
            &[],
            "name_not_allowed",
        ),
        (
            "CN outside the policy beside an allowed SAN",
            Some("payments.bank.example"),
            &["dns:pay.svc.example.com"],
            "name_not_allowed",
        ),
        (
            "URI: longer authority",
            None,
            &["uri:spiffe://example.com.evil/ns/a"],
            "name_not_allowed",
        ),
        (
            "URI: userinfo",
            None,
            &["uri:spiffe://example.com@evil.test/ns"],
            "name_not_allowed",
        ),
        (
            "URI: not a segment",
            None,
            &["uri:spiffe://example.com/nsevil"],
            "name_not_allowed",
        ),
        (
            "URI: dot segment",
            None,
            &["uri:spiffe://example.com/ns/../admin"],
            "name_not_allowed",
        ),
        (
            "URI: encoded slash",
            None,
            &["uri:spiffe://example.com/ns%2f..%2fadmin"],
            "name_not_allowed",
        ),
        ("wildcard DNS", None, &["dns:*"], "name_not_allowed"),
        (
            "wildcard DNS below",
            None,
            &["dns:*.svc.example.com"],
            "name_not_allowed",
        ),
    ];
    for (what, cn, sans, code) in rows {
        match create_token(&srv, &srv.operator, *cn, sans, "svc").await {
            Err(e) => assert_eq!(e.code(), Some(*code), "{what}: {e}"),
            Ok(_) => panic!("{what}: token created"),
        }
    }
    // `dns:*` is refused even where the profile allows any name (the dev-like `short`).
    for profile in ["client", "short"] {
        let e = create_token(&srv, &srv.operator, None, &["dns:*"], profile)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("name_not_allowed"), "{e}");
    }
    // Enrollment: the CN is checked against the policy, not only against the token.
    plant_token(
        &srv,
        "planted-cn",
        Some("payments.bank.example"),
        &["dns:pay.svc.example.com"],
        "svc",
    );
    assert_eq!(
        enroll_err(
            &srv,
            "planted-cn",
            "payments.bank.example",
            &["dns:pay.svc.example.com"]
        )
        .await,
        (403, "name_not_allowed".into())
    );
    plant_token(
        &srv,
        "planted-uri",
        None,
        &["uri:spiffe://example.com/nsevil"],
        "svc",
    );
    assert_eq!(
        enroll_err(
            &srv,
            "planted-uri",
            "",
            &["uri:spiffe://example.com/nsevil"]
        )
        .await,
        (403, "name_not_allowed".into())
    );
    assert_eq!(srv.cert_count(), certs, "nothing issued");
    // What the policy allows still works: a CN-only token gets its CN as a SAN.
    let token = create_token(&srv, &srv.operator, Some("pay.svc.example.com"), &[], "svc")
        .await
        .unwrap();
    let (_, issued) = srv.enroll(&token, "pay.svc.example.com", &[]).await;
    let der = der::pem::decode_vec(issued.certificate.as_bytes())
        .unwrap()
        .1;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", san.value.general_names),
        "[DNSName(\"pay.svc.example.com\")]"
    );
    let token = create_token(
        &srv,
        &srv.operator,
        None,
        &["uri:spiffe://example.com/ns/web"],
        "svc",
    )
    .await
    .unwrap();
    srv.enroll(&token, "", &["uri:spiffe://example.com/ns/web"])
        .await;
    srv.stop().await;
}

/// CSRs as JDK keytool and OpenSSL make them, with the extension requests those tools add
/// (subjectKeyIdentifier, keyUsage, extendedKeyUsage, basicConstraints CA:FALSE), enroll
/// through the running server; the certificate carries the CA's own key identifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrs_from_keytool_and_openssl_enroll() {
    let mut srv = TestServer::start().await;
    let dir = srv.tmp().join("tools");
    std::fs::create_dir_all(&dir).unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{:?}: {}", cmd, text(&out));
    };
    let mut csrs: Vec<(&str, String, String)> = Vec::new();
    for (alg, extra) in [
        ("EC", vec!["-groupname", "secp256r1"]),
        ("RSA", vec!["-keysize", "2048"]),
    ] {
        let ks = dir.join(format!("{alg}.p12"));
        let name = format!("kt-{}.test", alg.to_ascii_lowercase());
        run(Command::new("keytool")
            .args(["-genkeypair", "-keystore"])
            .arg(&ks)
            .args([
                "-storetype",
                "PKCS12",
                "-storepass",
                "changeit",
                "-alias",
                "svc",
            ])
            .args(["-keyalg", alg])
            .args(&extra)
            .args(["-dname", &format!("CN={name}, OU=Payments, O=Example")])
            .args(["-validity", "1"]));
        let out = dir.join(format!("{alg}.csr"));
        run(Command::new("keytool")
            .args(["-certreq", "-keystore"])
            .arg(&ks)
            .args(["-storepass", "changeit", "-alias", "svc", "-file"])
            .arg(&out)
            .args(["-ext", &format!("san=dns:{name}")])
            .args(["-ext", "ku=digitalSignature"])
            .args(["-ext", "eku=clientAuth"]));
        let pem = std::fs::read_to_string(&out).unwrap();
        // keytool asks for its own subjectKeyIdentifier: the point of this test.
        let csr_der = der::pem::decode_vec(pem.trim().as_bytes()).unwrap().1;
        let parsed = ca_core::csr::parse_der(&csr_der).unwrap();
        assert!(
            parsed.ignored_extensions.contains(&"2.5.29.14".to_string()),
            "{alg}: {parsed:?}"
        );
        csrs.push(("keytool", name, pem));
    }
    let out = dir.join("openssl.csr");
    run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-keyout",
            "/dev/null",
            "-subj",
            "/CN=ossl.test/O=Example",
            "-out",
        ])
        .arg(&out)
        .args(["-addext", "subjectKeyIdentifier=hash"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "keyUsage=critical,digitalSignature"])
        .args(["-addext", "subjectAltName=DNS:ossl.test"]));
    csrs.push((
        "openssl",
        "ossl.test".into(),
        std::fs::read_to_string(&out).unwrap(),
    ));

    for (tool, name, csr_pem) in csrs {
        let token = srv.token(&name, &[&format!("dns:{name}")], "client").await;
        let issued: IssuedResponse = srv
            .anon()
            .post_json(
                "/v1/enroll",
                &EnrollRequest {
                    token,
                    csr: csr_pem,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{tool} {name}: {e}"));
        let der = der::pem::decode_vec(issued.certificate.as_bytes())
            .unwrap()
            .1;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ski = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "2.5.29.14")
            .unwrap();
        assert!(ski.value.ends_with(
            &ca_core::x509::key_identifier(cert.tbs_certificate.subject_pki.raw).unwrap()
        ));
        // Subject attributes other than the CN are not copied.
        assert_eq!(cert.subject().to_string(), format!("CN={name}"), "{tool}");
    }
    srv.stop().await;
}
