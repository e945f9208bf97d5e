//! Kill the agent (SIGKILL) at random points during install, many rounds: the key and the
//! certificate at the configured paths always match (checked with openssl), and the next run
//! cleans up and carries on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use rand::Rng;
use std::time::{Duration, Instant};

const ROUNDS: usize = 16;
const STEP_DELAY_MS: &str = "25";

fn leftovers(store: &std::path::Path, tls: &std::path::Path) -> usize {
    let count = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().to_string();
                        n.starts_with(".tmp-") || n.contains(".ca-agent-tmp-")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    count(store) + count(tls)
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
    let (cert, key, full) = (tls.join("svc.crt"), tls.join("svc.key"), tls.join("fullchain.pem"));
    let store = tls.join(".ca-agent").join("svc");
    let env = [("CA_AGENT_DANGER_INSTALL_STEP_DELAY_MS", STEP_DELAY_MS.to_string())];
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
        let at = full_pass.mul_f64(rng.gen_range(0.2..1.1));
        std::thread::sleep(at);
        let pid = p.pid();
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        p.stop(Duration::from_secs(5));
        let left = leftovers(&store, &tls);
        if left > 0 {
            interrupted += 1;
        }
        // At rest after the kill: the pair on disk matches, and so does the fullchain's leaf.
        assert!(
            openssl_pair_matches(&cert, &key),
            "round {round}: key and cert mismatch after kill at {at:?}"
        );
        assert_eq!(openssl_serial(&full), openssl_serial(&cert), "round {round}: fullchain");
        let after = openssl_serial(&cert);
        if after == before {
            unchanged += 1;
        } else {
            changed += 1;
        }
        eprintln!(
            "round {round}: killed at {:>4}ms, leftovers {left}, serial {}",
            at.as_millis(),
            if after == before { "kept" } else { "new" }
        );
    }
    eprintln!(
        "{ROUNDS} kill rounds: {interrupted} interrupted mid-install (temp files left), \
         {changed} ended with the new pair, {unchanged} with the old one; pair always matched"
    );
    assert!(interrupted >= 3, "too few kills landed inside an install ({interrupted})");

    // The next run recovers: leftovers removed, state consistent, renewals work.
    let out = run(&agent_bin(), &args, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(leftovers(&store, &tls), 0);
    assert!(openssl_pair_matches(&cert, &key));
    assert!(openssl_pair_matches(&tls.join("svc.crt.prev"), &tls.join("svc.key.prev")));
    let st = status_json(&cfg);
    assert_eq!(st[0]["condition"], "ok", "{st}");
}
