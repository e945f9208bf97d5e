//! Real nginx on loopback serving the agent-managed pair: renewal + SIGHUP through the pidfile
//! shows the new serial to a new handshake (openssl s_client) with no failed request (curl loop),
//! and the agent's probe confirms it. A reload action that does nothing is caught by the probe:
//! the previous pair is restored and status reports the failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NGINX: &str = "/usr/sbin/nginx";

fn nginx_conf(dir: &Path, port: u16) -> std::path::PathBuf {
    let d = dir.display();
    for sub in ["tmp", "logs"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/logs/error.log info;\nevents {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
         fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
         server {{\n    listen 127.0.0.2:{port} ssl;\n    ssl_certificate {d}/tls/fullchain.pem;\n\
         ssl_certificate_key {d}/tls/svc.key;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
    );
    let p = dir.join("nginx.conf");
    std::fs::write(&p, conf).unwrap();
    p
}

/// curl in a loop until `stop`: (requests, failures).
fn curl_loop(
    port: u16,
    root: std::path::PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u32, u32, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut total, mut failed, mut errors) = (0, 0, Vec::new());
        let start = Instant::now();
        while !stop.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(120) {
            let out = Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "5",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--cacert",
                ])
                .arg(&root)
                .arg(format!("https://127.0.0.2:{port}/"))
                .output()
                .unwrap();
            total += 1;
            let code = String::from_utf8_lossy(&out.stdout).to_string();
            if !out.status.success() || code != "200" {
                failed += 1;
                errors.push(format!("{code} {}", String::from_utf8_lossy(&out.stderr)));
            }
        }
        (total, failed, errors)
    })
}

#[test]
fn nginx_reload_is_proven_and_an_ineffective_reload_is_rolled_back() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::start(&tmp.path().join("ca"));
    let dir = tmp.path().join("agent");
    let port = free_port();
    let pidfile = dir.join("nginx.pid");
    let probe = format!("[certificate.probe]\naddress = \"127.0.0.2:{port}\"\ntimeout = \"20s\"\n");
    let cfg = agent_config(
        &dir,
        &ca,
        "",
        &format!(
            "[[certificate.reload]]\nsignal = \"HUP\"\npidfile = \"{}\"\n{probe}",
            pidfile.display()
        ),
    );
    // Not localhost or 127.0.0.1: those are the dev CA's own names, reserved (ca_core::ca_identity).
    let out = enroll(&cfg, &ca, "web.test", "mtls");
    assert!(out.status.success(), "{}", text(&out));
    let tls = dir.join("tls");
    let first = openssl_serial(&tls.join("svc.crt"));

    let conf = nginx_conf(&dir, port);
    let mut nginx = Proc::spawn(
        "nginx",
        Path::new(NGINX),
        &[
            "-c",
            conf.to_str().unwrap(),
            "-p",
            dir.to_str().unwrap(),
            "-e",
            dir.join("logs/error.log").to_str().unwrap(),
        ],
        &[],
        &dir.join("logs/nginx.out"),
    );
    wait_for("nginx serving", Duration::from_secs(20), || {
        assert!(
            nginx.is_running(),
            "nginx exited: {}",
            std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default()
        );
        s_client_serial(port, &ca.root()).filter(|_| pidfile.exists())
    });
    assert_eq!(s_client_serial(port, &ca.root()).unwrap(), first);

    // Renewal with SIGHUP via the pidfile, while curl keeps asking.
    let stop = Arc::new(AtomicBool::new(false));
    let curl = curl_loop(port, ca.root(), stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let out = run(
        &agent_bin(),
        &["renew", "--force", "--config", cfg.to_str().unwrap()],
        &[("RUST_LOG", "info".into())],
    );
    let renew_secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", text(&out));
    let second = openssl_serial(&tls.join("svc.crt"));
    assert_ne!(second, first);
    // A new handshake shows the new serial (openssl s_client, independent of the agent).
    assert_eq!(s_client_serial(port, &ca.root()).unwrap(), second);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let (total, failed, errors) = curl.join().unwrap();
    eprintln!("curl during renewal + reload: {total} requests, {failed} failed; renew pass {renew_secs:.2}s");
    assert!(total >= 5, "curl loop ran {total} requests");
    assert_eq!(failed, 0, "failed requests during reload: {errors:?}");
    // The agent's probe confirmed it.
    let log = String::from_utf8_lossy(&out.stderr);
    let probe_line = log
        .lines()
        .find(|l| l.contains("probe: service serves the new certificate"))
        .unwrap_or_else(|| panic!("no probe confirmation in:\n{log}"));
    eprintln!("probe: {probe_line}");
    let st = status_json(&cfg);
    assert_eq!(st[0]["condition"], "ok", "{st}");
    assert_eq!(st[0]["reloads"], 1);

    // A reload action that does nothing: the probe notices, `.prev` is restored.
    let noop = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            &format!("signal = \"HUP\"\npidfile = \"{}\"", pidfile.display()),
            "command = \"true\"",
        )
        .replace("timeout = \"20s\"", "timeout = \"3s\"");
    std::fs::write(&cfg, noop).unwrap();
    let out = run(
        &agent_bin(),
        &["renew", "--force", "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert!(
        !out.status.success(),
        "a reload that did not take effect fails the pass: {}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("did not take effect") && stdout.contains("restored"),
        "{}",
        text(&out)
    );
    // The pair in place is the one nginx serves, the failed one is not installed.
    assert_eq!(openssl_serial(&tls.join("svc.crt")), second);
    assert!(openssl_pair_matches(
        &tls.join("svc.crt"),
        &tls.join("svc.key")
    ));
    assert_eq!(openssl_serial(&tls.join("svc.crt.prev")), first);
    assert_eq!(s_client_serial(port, &ca.root()).unwrap(), second);
    let st = status_json(&cfg);
    assert_eq!(st[0]["condition"], "reload_failed", "{st}");
    assert!(
        st[0]["last_error"].as_str().unwrap().contains("restored"),
        "{st}"
    );
    let human = run(
        &agent_bin(),
        &["status", "--config", cfg.to_str().unwrap()],
        &[],
    );
    assert!(!human.status.success());
    eprintln!(
        "status after an ineffective reload:\n{}",
        String::from_utf8_lossy(&human.stdout)
    );

    nginx.stop(Duration::from_secs(10));
}
