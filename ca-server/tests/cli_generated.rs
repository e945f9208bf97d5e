//! `ca-server --version` names the git commit; `ca-server completions SHELL` and `ca-server manpages --dir
//! DIR` are generated from the clap definition (README "Shell completions and man pages").
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ca-server");

#[test]
fn version_names_the_git_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    cli_support::check::version_line(
        &line,
        "ca-server",
        env!("CARGO_PKG_VERSION"),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
    .unwrap();
}

#[test]
fn bash_completes_the_real_subcommands() {
    cli_support::check::completion_scripts(Path::new(BIN), "ca-server").unwrap();
    let got = cli_support::check::bash_complete(Path::new(BIN), &["ca-server", ""]).unwrap();
    for want in ["serve", "ocsp", "dev", "token", "revoke", "completions"] {
        assert!(got.iter().any(|g| g == want), "{want} not in {got:?}");
    }
    // Nested subcommands, their flags, and the shells of `completions`.
    let got =
        cli_support::check::bash_complete(Path::new(BIN), &["ca-server", "token", ""]).unwrap();
    assert!(got.iter().any(|g| g == "create"), "{got:?}");
    let got =
        cli_support::check::bash_complete(Path::new(BIN), &["ca-server", "token", "create", "--"])
            .unwrap();
    for want in ["--cn", "--san", "--profile", "--ttl", "--url", "--root"] {
        assert!(got.iter().any(|g| g == want), "{want} not in {got:?}");
    }
    let got = cli_support::check::bash_complete(Path::new(BIN), &["ca-server", "completions", ""])
        .unwrap();
    for want in ["bash", "zsh", "fish", "elvish", "powershell"] {
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
            "ca-server",
            "ca-server-serve",
            "ca-server-ocsp",
            "ca-server-dev",
            "ca-server-token-create",
            "ca-server-revoke",
            "ca-server-certs-list",
            "ca-server-audit-verify-export",
            "ca-server-admin-cert-create",
            "ca-server-store-copy",
            "ca-server-completions",
        ],
    )
    .unwrap();
    assert!(!names.iter().any(|n| n.ends_with("-manpages")), "{names:?}");
}
