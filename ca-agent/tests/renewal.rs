//! The daemon on its own, against a real `ca-server dev` with a 3-minute profile: it renews at
//! least twice (new key and serial each time, reload each time, fresh OCSP staple), keeps the
//! working certificate and backs off while the CA is down, renews once it is back, re-reads its
//! config on SIGHUP and stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn disk_pair(dir: &std::path::Path) -> Option<(String, String)> {
    let tls = dir.join("tls");
    let cert = std::fs::read(tls.join("svc.crt")).ok()?;
    let key = std::fs::read_to_string(tls.join("svc.key")).ok()?;
    let info = ca_agent::certs::CertInfo::from_pem(&cert, "t").ok()?;
    let k = ca_agent::keys::PrivateKey::from_pem(&key).ok()?;
    assert!(
        info.matches_key(&k),
        "key and certificate on disk must match"
    );
    Some((info.serial, hex::encode(k.public_key_raw())))
}

#[test]
fn daemon_renews_on_its_own_and_rides_out_a_ca_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ca = Ca::start(&tmp.path().join("ca"));
    let dir = tmp.path().join("agent");
    let reloads = dir.join("reloads.log");
    let staple = dir.join("tls").join("svc.ocsp");
    let cfg = agent_config(
        &dir,
        &ca,
        "retry_min = \"1s\"\nretry_max = \"4s\"\ncheck_interval = \"20s\"\n",
        &format!(
            "renew_at = 0.25\njitter = 0.05\nocsp_staple = \"{}\"\n\
             [[certificate.reload]]\ncommand = \"echo $CA_AGENT_SERIAL >> {}\"\ntimeout = \"5s\"\n",
            staple.display(),
            reloads.display()
        ),
    );
    let out = enroll(&cfg, &ca, "svc.test", "short");
    assert!(out.status.success(), "{}", text(&out));
    let (first_serial, first_key) = disk_pair(&dir).unwrap();

    let log = dir.join("agent.log");
    let mut agent = Proc::spawn(
        "ca-agent",
        &agent_bin(),
        &["run", "--config", cfg.to_str().unwrap()],
        &[("RUST_LOG", "info,ca_agent=debug".into())],
        &log,
    );

    // Watch the pair on disk until two renewals happened on their own.
    let mut seen: Vec<(String, String, Instant)> =
        vec![(first_serial.clone(), first_key, Instant::now())];
    let start = Instant::now();
    while seen.len() < 3 {
        assert!(agent.is_running(), "agent died:\n{}", agent.log_text());
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "no two renewals within 240s; seen {seen:?}\n{}",
            agent.log_text()
        );
        if let Some((s, k)) = disk_pair(&dir) {
            if seen.last().unwrap().0 != s {
                seen.push((s, k, Instant::now()));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let serials: BTreeSet<_> = seen.iter().map(|s| s.0.clone()).collect();
    let keys: BTreeSet<_> = seen.iter().map(|s| s.1.clone()).collect();
    assert_eq!(serials.len(), 3, "a new serial each time");
    assert_eq!(keys.len(), 3, "a new key each time");
    // A reload ran for each renewal, with the new serial.
    let reloaded = wait_for("reload log", Duration::from_secs(20), || {
        let t = std::fs::read_to_string(&reloads).unwrap_or_default();
        let lines: Vec<String> = t.lines().map(normalize).collect();
        (lines.len() >= 2).then_some(lines)
    });
    assert_eq!(reloaded[0], seen[1].0);
    assert_eq!(reloaded[1], seen[2].0);
    // The `.prev` pair is the one before.
    let prev = openssl_serial(&dir.join("tls").join("svc.crt.prev"));
    assert_eq!(prev, seen[1].0);
    // OCSP staple for the current certificate, checked by openssl.
    let st = state(&dir);
    assert_eq!(st["staple"]["status"], "good", "{st}");
    let chain = dir.join("tls").join("chain.pem");
    let issuer = tmp.path().join("issuer.pem");
    let chain_text = std::fs::read_to_string(&chain).unwrap();
    let end = chain_text.find("-----END CERTIFICATE-----").unwrap() + 25;
    std::fs::write(&issuer, &chain_text[..end]).unwrap();
    let o = std::process::Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-respin"])
        .arg(&staple)
        .arg("-issuer")
        .arg(&issuer)
        .arg("-cert")
        .arg(dir.join("tls").join("svc.crt"))
        .arg("-CAfile")
        .arg(ca.root())
        .arg("-verify_other")
        .arg(&chain)
        .output()
        .unwrap();
    let ocsp_out = String::from_utf8_lossy(&o.stdout);
    assert!(ocsp_out.contains(": good"), "openssl ocsp: {}", text(&o));

    // Renewal latency, from the agent's log: "renewing" to "new certificate installed".
    let latencies = latencies(&agent.log_text());
    eprintln!("renewal latencies (request + verify + install + reload): {latencies:?}");
    for w in seen.windows(2) {
        eprintln!(
            "serial {} -> {} after {:.1}s",
            w[0].0,
            w[1].0,
            (w[1].2 - w[0].2).as_secs_f64()
        );
    }

    // CA outage: stop it right after a renewal; the next one comes due while it is down.
    let before_outage = disk_pair(&dir).unwrap();
    ca.stop();
    let outage_start = Instant::now();
    let st = wait_for("three failed attempts", Duration::from_secs(150), || {
        let st = state(&dir);
        (st["consecutive_failures"].as_u64().unwrap_or(0) >= 3).then_some(st)
    });
    assert_eq!(st["condition"], "renewal_failing", "{st}");
    assert!(
        st["last_error"].as_str().unwrap().contains("cannot reach"),
        "{st}"
    );
    // The working certificate is kept, untouched.
    assert_eq!(disk_pair(&dir).unwrap(), before_outage);
    let status = status_json(&cfg);
    assert_eq!(status[0]["condition"], "renewal_failing");
    assert!(status[0]["retry_at"].is_string());
    // Backoff: attempts are spaced out (1s, 2s, 4s with jitter), not a busy loop.
    let attempts = agent.log_text().matches("attempt failed").count();
    let elapsed = outage_start.elapsed().as_secs();
    eprintln!("{attempts} failed attempts during {elapsed}s of outage");
    assert!(
        attempts <= 3 + elapsed as usize / 2,
        "too many attempts: {attempts} in {elapsed}s"
    );

    ca.restart();
    let back = Instant::now();
    let after = wait_for(
        "renewal after the CA is back",
        Duration::from_secs(60),
        || disk_pair(&dir).filter(|p| p.0 != before_outage.0),
    );
    eprintln!(
        "renewed {:.1}s after the CA came back",
        back.elapsed().as_secs_f64()
    );
    assert_ne!(after.1, before_outage.1);
    let st = wait_for("state ok", Duration::from_secs(20), || {
        let st = state(&dir);
        (st["condition"] == "ok" && st["consecutive_failures"] == 0).then_some(st)
    });
    assert_eq!(st["serial"], after.0.as_str());

    // SIGHUP re-reads the config; a broken config is refused and the running one kept.
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        good.replace("check_interval = \"20s\"", "check_interval = \"30s\""),
    )
    .unwrap();
    agent.signal("HUP");
    wait_for("config re-read", Duration::from_secs(20), || {
        agent
            .log_text()
            .contains("configuration re-read")
            .then_some(())
    });
    std::fs::write(&cfg, "this is not toml [").unwrap();
    agent.signal("HUP");
    wait_for("bad config refused", Duration::from_secs(20), || {
        agent
            .log_text()
            .contains("new configuration refused")
            .then_some(())
    });
    assert!(agent.is_running());
    std::fs::write(&cfg, good).unwrap();

    // SIGTERM stops it cleanly.
    let t = Instant::now();
    let status = agent.stop(Duration::from_secs(30)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("ca-agent stopped"));
    let (s, _) = disk_pair(&dir).unwrap();
    assert!(openssl_pair_matches(
        &dir.join("tls/svc.crt"),
        &dir.join("tls/svc.key")
    ));
    eprintln!("final serial {s}");
}

/// Seconds between each "renewing" log line and the next "new certificate installed".
fn latencies(log: &str) -> Vec<f64> {
    let ts = |l: &str| {
        l.split_whitespace()
            .next()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let mut out = Vec::new();
    let mut start = None;
    for l in log.lines() {
        if l.contains(" renewing") {
            start = ts(l);
        } else if l.contains("new certificate installed") {
            if let (Some(s), Some(e)) = (start.take(), ts(l)) {
                out.push((e - s).num_milliseconds() as f64 / 1000.0);
            }
        }
    }
    out
}
