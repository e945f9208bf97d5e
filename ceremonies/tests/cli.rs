//! The `ceremony run` command line: officers confirm by typing their names on stdin; without
//! them (and without `--yes-i-am-rehearsing`) nothing happens.

mod common;

use common::Workspace;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn ceremony(ws: &Workspace, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ceremony"))
        .args(args)
        .current_dir(ws.dir.path())
        .env("SOFTHSM2_CONF", common::softhsm_conf())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn officers_confirm_by_typing_their_names() {
    let ws = Workspace::new();
    let untouched = ws.files();

    let dry = ceremony(&ws, &["run", "root.toml", "--dry-run"], None);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        text(&dry).contains("Generate p256 root key \"root-ca\"")
            && text(&dry).contains("nothing was done"),
        "{}",
        text(&dry)
    );

    let wrong = ceremony(
        &ws,
        &["run", "root.toml"],
        Some("Alice Adams\nBob Brwon\nCarol Clark\n"),
    );
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains("officer \"Bob Brown\" did not confirm"),
        "{}",
        text(&wrong)
    );

    let silent = ceremony(&ws, &["run", "root.toml"], None);
    assert!(!silent.status.success());
    assert!(
        text(&silent).contains("--yes-i-am-rehearsing"),
        "{}",
        text(&silent)
    );
    assert_eq!(ws.files(), untouched, "an unconfirmed ceremony wrote files");

    let ok = ceremony(
        &ws,
        &["run", "root.toml"],
        Some("Alice Adams\nBob Brown\nCarol Clark\n"),
    );
    let out = text(&ok);
    assert!(ok.status.success(), "{out}");
    assert!(
        out.contains("confirmed by Carol Clark") && out.contains("SHA-256 fingerprint (DER)"),
        "{out}"
    );
    let t =
        ceremonies::transcript::verify_file(&ws.path("transcripts/001-root.json"), None).unwrap();
    assert!(!t.rehearsal);
    let confirmations: Vec<_> = t
        .entries
        .iter()
        .filter(|e| e.step == "officer-confirmed")
        .collect();
    assert_eq!(confirmations.len(), 3);
    assert!(confirmations
        .iter()
        .all(|e| e.outputs["confirmation"] == "typed their name"));
    let fp = &t.facts.certificates[0].sha256;
    assert!(
        out.contains(fp.as_str()),
        "fingerprint {fp} not printed:\n{out}"
    );
}
