//! `ca-agent --version` names the git commit; `ca-agent completions SHELL` and `ca-agent manpages --dir
//! DIR` are generated from the clap definition (README "Shell completions and man pages").
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ca-agent");

#[test]
fn version_names_the_git_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    cli_support::check::version_line(
        &line,
        "ca-agent",
        env!("CARGO_PKG_VERSION"),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
    .unwrap();
}

#[test]
fn bash_completes_the_real_subcommands() {
    cli_support::check::completion_scripts(Path::new(BIN), "ca-agent").unwrap();
    let got = cli_support::check::bash_complete(Path::new(BIN), &["ca-agent", ""]).unwrap();
    for want in ["enroll", "run", "renew", "status", "completions"] {
        assert!(got.iter().any(|g| g == want), "{want} not in {got:?}");
    }
    // A subcommand's flags (clap issue 6421: none completed for a hyphenated binary name).
    let got =
        cli_support::check::bash_complete(Path::new(BIN), &["ca-agent", "enroll", "--"]).unwrap();
    for want in [
        "--config",
        "--server",
        "--fingerprint",
        "--token-file",
        "--cert",
        "--key",
    ] {
        assert!(got.iter().any(|g| g == want), "{want} not in {got:?}");
    }
}

#[test]
fn one_man_page_per_command_and_each_renders() {
    let dir = tempfile::tempdir().unwrap();
    let names = cli_support::check::man_pages(
        Path::new(BIN),
        dir.path(),
        &[
            "ca-agent",
            "ca-agent-enroll",
            "ca-agent-run",
            "ca-agent-renew",
            "ca-agent-status",
            "ca-agent-completions",
        ],
    )
    .unwrap();
    assert!(!names.iter().any(|n| n.ends_with("-manpages")), "{names:?}");
}
