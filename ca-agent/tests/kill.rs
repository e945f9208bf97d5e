//! Kill the agent (SIGKILL) at random points during install, many rounds: the key and the
//! certificate at the configured paths always match (checked with openssl), and the next run
//! cleans up and carries on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use rand::Rng;
use std::time::{Duration, Instant};

const ROUNDS: usize = 20;
const STEP_DELAY_MS: &str = "60";

fn count(d: &std::path::Path, f: impl Fn(&str) -> bool) -> usize {
    std::fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .filter(|e| f(&e.file_name().to_string_lossy()))
                .count()
        })
        .unwrap_or(0)
}

fn leftovers(store: &std::path::Path, tls: &std::path::Path) -> usize {
    let tmp = |n: &str| n.starts_with(".tmp-") || n.contains(".ca-agent-tmp-");
    count(store, tmp) + count(tls, tmp)
}

/// Where the kill landed, from what it left on disk (before the next run cleans up).
fn classify(store: &std::path::Path, tls: &std::path::Path, changed: bool) -> &'static str {
    if count(store, |n| n.starts_with(".tmp-")) > 0 {
        return "while writing the new version's files";
    }
    if count(store, |n| n.contains(".ca-agent-tmp-")) + count(tls, |n| n.contains(".ca-agent-tmp-"))
        > 0
    {
        return "in the middle of a link swap";
    }
    let current: u64 = std::fs::read_link(store.join("current"))
        .ok()
        .and_then(|t| t.to_string_lossy().trim_start_matches('v').parse().ok())
        .unwrap_or(0);
    let newest = std::fs::read_dir(store)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix('v')
                .and_then(|n| n.parse::<u64>().ok())
        })
        .max()
        .unwrap_or(0);
    if newest > current {
        return "after the new version was complete, before the switch";
    }
    if changed {
        "after the switch"
    } else {
        "before the install began"
    }
}

#[test]
fn killing_the_agent_during_install_never_leaves_a_mismatched_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::start(&tmp.path().join("ca"));
    let dir = tmp.path().join("agent");
    let cfg = agent_config(&dir, &ca, "", "");
    let out = enroll(&cfg, &ca, "svc.test", "mtls");
    assert!(out.status.success(), "{}", text(&out));
    let tls = dir.join("tls");
    let (cert, key, full) = (
        tls.join("svc.crt"),
        tls.join("svc.key"),
        tls.join("fullchain.pem"),
    );
    let store = tls.join(".ca-agent").join("svc");
    let env = [(
        "CA_AGENT_DANGER_INSTALL_STEP_DELAY_MS",
        STEP_DELAY_MS.to_string(),
    )];
    let cfg_s = cfg.to_str().unwrap().to_string();
    let args = ["renew", "--force", "--config", cfg_s.as_str()];

    // One undisturbed pass to learn how long a pass takes with the step delay.
    let t = Instant::now();
    let out = run(&agent_bin(), &args, &env);
    assert!(out.status.success(), "{}", text(&out));
    let full_pass = t.elapsed();
    eprintln!("undisturbed renew pass with {STEP_DELAY_MS}ms per install step: {full_pass:?}");

    let mut rng = rand::thread_rng();
    let (mut interrupted, mut changed, mut unchanged) = (0, 0, 0);
    let mut places = std::collections::BTreeMap::new();
    for round in 0..ROUNDS {
        let before = openssl_serial(&cert);
        let mut p = Proc::spawn(
            "ca-agent",
            &agent_bin(),
            &args,
            &env,
            &dir.join(format!("kill-{round}.log")),
        );
        // Kill anywhere in the pass, weighted towards its second half where the install is.
        let at = full_pass.mul_f64(rng.gen_range(0.15..1.0));
        std::thread::sleep(at);
        if let Some(pid) = p.try_pid() {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
        p.stop(Duration::from_secs(5));
        let after = openssl_serial(&cert);
        let left = leftovers(&store, &tls);
        let place = classify(&store, &tls, after != before);
        if place != "before the install began" && place != "after the switch" {
            interrupted += 1;
        }
        *places.entry(place).or_insert(0) += 1;
        // At rest after the kill: the pair on disk matches, and so does the fullchain's leaf.
        assert!(
            openssl_pair_matches(&cert, &key),
            "round {round}: key and cert mismatch after kill at {at:?}"
        );
        assert_eq!(
            openssl_serial(&full),
            openssl_serial(&cert),
            "round {round}: fullchain"
        );
        if after == before {
            unchanged += 1;
        } else {
            changed += 1;
        }
        eprintln!(
            "round {round}: killed at {:>4}ms {place}, leftovers {left}, serial {}",
            at.as_millis(),
            if after == before { "kept" } else { "new" }
        );
    }
    eprintln!(
        "{ROUNDS} kill rounds: {interrupted} interrupted inside the install, \
         {changed} ended with the new pair, {unchanged} with the old one; pair always matched"
    );
    eprintln!("kill points: {places:?}");
    assert!(
        interrupted >= 3,
        "too few kills landed inside an install ({interrupted}): {places:?}"
    );

    // The next run recovers: leftovers removed, state consistent, renewals work.
    let out = run(&agent_bin(), &args, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(leftovers(&store, &tls), 0);
    assert!(openssl_pair_matches(&cert, &key));
    assert!(openssl_pair_matches(
        &tls.join("svc.crt.prev"),
        &tls.join("svc.key.prev")
    ));
    let st = status_json(&cfg);
    assert_eq!(st[0]["condition"], "ok", "{st}");
}
