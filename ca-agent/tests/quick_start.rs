//! The quick start as a newcomer runs it: `ca-server dev` (here the one built next to
//! `ca-agent`, as `scripts/dev.sh` builds both into target/release), then, in a NEW shell with a
//! bare PATH, exactly the commands it printed: `. dev.env`, `ca-server token create`,
//! `ca-agent enroll`. They only work if `dev.env` puts the binaries on PATH and the printed
//! lines are right (issue 18: they failed with "command not found").
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn the_printed_next_steps_work_in_a_new_shell() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ca-data");
    let server = server_bin();
    let bin_dir = server.parent().unwrap().to_path_buf();
    let mut dev = Proc::spawn(
        "ca-server dev",
        &server,
        &[
            "dev",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--status-listen",
            "127.0.0.1:0",
        ],
        &[("RUST_LOG", "warn".into())],
        &tmp.path().join("dev.log"),
    );
    let printed = wait_for("ca-server dev ready", Duration::from_secs(180), || {
        if !dev.is_running() {
            panic!("ca-server dev exited:\n{}", dev.log_text());
        }
        let log = dev.log_text();
        let (_, rest) = log.split_once("In another shell:\n")?;
        rest.contains("ca-agent enroll").then(|| rest.to_string())
    });
    let steps: Vec<&str> = printed
        .lines()
        .map_while(|l| l.strip_prefix("  "))
        .collect();
    assert_eq!(steps.len(), 3, "{printed}");
    assert!(steps[0].starts_with(". "), "{printed}");
    if !bin_dir.join("ca-agent").exists() {
        // CA_SERVER_BIN elsewhere: the note says how to get the agent.
        assert!(printed.contains("no ca-agent in"), "{printed}");
        return;
    }
    let env = std::fs::read_to_string(data.join("dev.env")).unwrap();
    assert!(
        env.contains(&format!("export PATH={}:\"$PATH\"", bin_dir.display())),
        "{env}"
    );

    // A new shell: nothing of this process's environment, the system PATH only.
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let script = format!(
        "set -e\n{}\ncommand -v ca-server\ncommand -v ca-agent\n",
        steps.join("\n")
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .current_dir(&work)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}\n{}", text(&out));
    // Both found where dev.env said, not elsewhere on the system PATH.
    let found = String::from_utf8_lossy(&out.stdout);
    for bin in ["ca-server", "ca-agent"] {
        let want = bin_dir.join(bin).display().to_string();
        assert!(found.lines().any(|l| l == want), "{want} not in {found}");
    }
    let (cert, key) = (work.join("web1.crt"), work.join("web1.key"));
    assert!(openssl_pair_matches(&cert, &key), "{}", text(&out));
    dev.stop(Duration::from_secs(30));
}
