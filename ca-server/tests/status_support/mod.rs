//! Shared by the status listener tests: the ca-core test PKI, a running listener on an
//! ephemeral loopback port, and nginx under a generated configuration.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../ca-core/tests/ocsp_fixture/mod.rs"]
pub mod fixture;

use ca_core::clock::SystemClock;
use ca_core::crl::CrlConfig;
use ca_core::ocsp::{ExternalResponse, ResponderConfig, ResponderKey};
use ca_server::status::{StatusConfig, StatusSetup, StatusState};
use fixture::TestCa;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use fixture::{openssl, run};

/// A status listener serving on 127.0.0.1:ephemeral until dropped.
pub struct Listener {
    pub addr: SocketAddr,
    pub state: Arc<StatusState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Listener {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub struct Options {
    pub delegated: bool,
    pub responder: ResponderConfig,
    pub external: Vec<ExternalResponse>,
    pub root_crl: Option<PathBuf>,
    pub http: StatusConfig,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            delegated: true,
            responder: ResponderConfig::default(),
            external: vec![],
            root_crl: None,
            http: StatusConfig::default(),
        }
    }
}

/// Build the state for `ca` (blocking work on the blocking pool) and serve it.
pub async fn start(ca: &TestCa, opts: Options) -> Listener {
    serve(build(ca, opts).await).await
}

/// Build the state for `ca` without serving it (no maintenance task runs).
pub async fn build(ca: &TestCa, opts: Options) -> Arc<StatusState> {
    let key = if opts.delegated {
        let (signer, cert, _) = ca.ocsp_responder(&format!("ocsp-{}", rand::random::<u32>()));
        ResponderKey::delegated(signer, &cert).unwrap()
    } else {
        ResponderKey::ca(ca.signer_dyn())
    };
    let setup = StatusSetup {
        issuer_cert_der: ca.cert_der.clone(),
        issuing_signer: ca.signer_dyn(),
        ocsp_key: key,
        store: ca.store.clone(),
        clock: Arc::new(SystemClock),
        responder: opts.responder,
        crl: CrlConfig::default(),
        external_responses: opts.external,
        root_crl: opts.root_crl,
        http: opts.http,
    };
    tokio::task::spawn_blocking(move || StatusState::build(setup))
        .await
        .unwrap()
        .unwrap()
}

/// Serve `state` on 127.0.0.1:ephemeral, its maintenance task alongside.
pub async fn serve(state: Arc<StatusState>) -> Listener {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ca_server::status::serve(
        listener,
        state.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    Listener {
        addr,
        state,
        stop: Some(tx),
        task: Some(task),
    }
}

/// Run a blocking command off the async executor.
pub async fn run_async(mut cmd: Command) -> (bool, String) {
    tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap()
}

/// `openssl ocsp -issuer -cert -url` against the listener; returns (success, output).
pub async fn openssl_ocsp(
    l: &Listener,
    issuer: &Path,
    cert: &Path,
    ca_file: &Path,
    extra: &[&str],
) -> (bool, String) {
    let mut cmd = openssl();
    cmd.arg("ocsp")
        .args(extra)
        .arg("-issuer")
        .arg(issuer)
        .arg("-cert")
        .arg(cert)
        .arg("-url")
        .arg(l.url("/ocsp"));
    cmd.arg("-CAfile").arg(ca_file).args(["-timeout", "10"]);
    run_async(cmd).await
}

/// A free loopback port (bound and released; nginx binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx from /usr/sbin/nginx under a generated configuration, killed when dropped.
pub struct Nginx {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Nginx {
    /// Start nginx with `http_block` inside `http { }`, listening on `port`. Fails the test if
    /// nginx is missing: CI installs it.
    pub fn start(port: u16, http_block: &str) -> Nginx {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is required for this test (apt-get install nginx)");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{http_block}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut n = Nginx { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = n.child.try_wait() {
                panic!("nginx exited with {status}: {}", n.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                n.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl with a client certificate; returns the HTTP status code (0 when the TLS handshake or
/// the connection failed) and the body.
pub async fn curl_client_cert(
    port: u16,
    host: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(ca)
    .arg("--resolve")
    .arg(format!("{host}:{port}:127.0.0.1"))
    .arg("--cert")
    .arg(cert)
    .arg("--key")
    .arg(key)
    .arg(format!("https://{host}:{port}/"));
    let (_, out) = run_async(cmd).await;
    let code = out
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    (code, out)
}
