//! `ceremony --version` names the git commit; `ceremony completions SHELL` and `ceremony manpages --dir
//! DIR` are generated from the clap definition (README "Shell completions and man pages").
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ceremony");

#[test]
fn version_names_the_git_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    cli_support::check::version_line(
        &line,
        "ceremony",
        env!("CARGO_PKG_VERSION"),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
    .unwrap();
}

#[test]
fn bash_completes_the_real_subcommands() {
    cli_support::check::completion_scripts(Path::new(BIN), "ceremony").unwrap();
    let got = cli_support::check::bash_complete(Path::new(BIN), &["ceremony", ""]).unwrap();
    for want in ["run", "verify-transcript", "dev", "completions"] {
        assert!(got.iter().any(|g| g == want), "{want} not in {got:?}");
    }
    let got =
        cli_support::check::bash_complete(Path::new(BIN), &["ceremony", "run", "--"]).unwrap();
    for want in ["--dry-run", "--yes-i-am-rehearsing", "--share"] {
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
            "ceremony",
            "ceremony-run",
            "ceremony-verify-transcript",
            "ceremony-dev",
            "ceremony-completions",
        ],
    )
    .unwrap();
    assert!(!names.iter().any(|n| n.ends_with("-manpages")), "{names:?}");
}
