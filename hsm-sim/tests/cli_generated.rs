//! `hsm-sim --version` names the git commit; `hsm-sim completions SHELL` and `hsm-sim manpages --dir
//! DIR` are generated from the clap definition (README "Shell completions and man pages").
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_hsm-sim");

#[test]
fn version_names_the_git_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    cli_support::check::version_line(
        &line,
        "hsm-sim",
        env!("CARGO_PKG_VERSION"),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
    .unwrap();
}

#[test]
fn bash_completes_the_real_subcommands() {
    cli_support::check::completion_scripts(Path::new(BIN), "hsm-sim").unwrap();
    let got = cli_support::check::bash_complete(Path::new(BIN), &["hsm-sim", ""]).unwrap();
    for want in ["init", "genkey", "completions"] {
        assert!(got.iter().any(|g| g == want), "{want} not in {got:?}");
    }
    let got =
        cli_support::check::bash_complete(Path::new(BIN), &["hsm-sim", "init", "--"]).unwrap();
    for want in ["--dir", "--label", "--pin", "--so-pin"] {
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
            "hsm-sim",
            "hsm-sim-init",
            "hsm-sim-genkey",
            "hsm-sim-completions",
        ],
    )
    .unwrap();
    assert!(!names.iter().any(|n| n.ends_with("-manpages")), "{names:?}");
}
