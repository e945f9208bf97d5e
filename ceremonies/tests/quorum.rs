//! Quorum: m of n PIN shares unlock the root token; fewer, damaged or foreign shares are
//! refused before any login to the HSM.

mod common;

use ceremonies::error::QuorumError;
use ceremonies::quorum::{read_share, ShareFile};
use ceremonies::run::Outcome;
use ceremonies::Error;
use common::{set, Workspace};
use std::path::PathBuf;

/// SoftHSM raises CKF_USER_PIN_COUNT_LOW after a failed user login and clears it after a
/// successful one: a refused quorum must leave it down.
fn failed_login_flag(ws: &Workspace) -> bool {
    let module = hsm_sim::module_path().unwrap();
    let ctx = ca_core::signer::pkcs11::open_module(&module).unwrap();
    let slot = ws.root_token("unused").slot().unwrap();
    ctx.get_token_info(slot).unwrap().user_pin_count_low()
}

/// Intermediate ceremony config that takes its shares only from `--share`.
fn shares_from_cli(ws: &Workspace) {
    ws.edit("intermediate.toml", |t| {
        let officers: Vec<toml::Value> = ["Alice Adams", "Bob Brown", "Carol Clark"]
            .iter()
            .map(|n| {
                let mut o = toml::Table::new();
                o.insert("name".into(), (*n).into());
                toml::Value::Table(o)
            })
            .collect();
        set(t, "officers", toml::Value::Array(officers));
    });
}

fn share(ws: &Workspace, officer: &str) -> PathBuf {
    ws.path(&format!("shares/{officer}.share"))
}

fn quorum_err(r: Result<Outcome, Error>) -> QuorumError {
    match r {
        Err(Error::Quorum(q)) => q,
        other => panic!("expected a quorum error, got {other:?}"),
    }
}

#[test]
fn m_of_n_unlock_and_refusals_happen_before_login() {
    let ws = Workspace::new();
    ws.root_and_key();
    shares_from_cli(&ws);

    // The detector works: a wrong PIN raises the flag, a right one clears it.
    assert!(matches!(
        ws.root_token("wrong-pin").public_key("root-ca"),
        Err(ca_core::Error::BadPin { .. })
    ));
    assert!(
        failed_login_flag(&ws),
        "SoftHSM did not flag the failed login; the no-login checks below would prove nothing"
    );
    ws.root_token(&ws.root_pin()).public_key("root-ca").unwrap();
    assert!(!failed_login_flag(&ws));

    // Every pair of the three shares reassembles the PIN (checked without the HSM: dry run).
    for pair in [["alice", "bob"], ["alice", "carol"], ["bob", "carol"]] {
        let shares = pair.iter().map(|o| share(&ws, o)).collect();
        match ws.run_with("intermediate.toml", shares, true) {
            Ok(Outcome::Planned { plan }) => assert!(
                plan.contains("reassemble the PIN") && plan.contains(": checked"),
                "{plan}"
            ),
            other => panic!("{pair:?}: {other:?}"),
        }
    }

    let bob_copy = ws.path("bob-copy.share");
    std::fs::copy(share(&ws, "bob"), &bob_copy).unwrap();
    let before = ws.files();
    let refused: Vec<(&str, Vec<PathBuf>, QuorumError)> = vec![
        ("no share", vec![], QuorumError::NoShares),
        (
            "m-1 shares",
            vec![share(&ws, "carol")],
            QuorumError::NotEnoughShares { have: 1, need: 2 },
        ),
        (
            "one file given twice",
            vec![share(&ws, "carol"), share(&ws, "carol")],
            QuorumError::NotEnoughShares { have: 1, need: 2 },
        ),
        (
            "the same share twice",
            vec![share(&ws, "bob"), bob_copy.clone()],
            QuorumError::DuplicateShare {
                file: bob_copy.display().to_string(),
                other: share(&ws, "bob").display().to_string(),
                index: 2,
            },
        ),
    ];
    for (what, shares, expected) in refused {
        assert_eq!(
            quorum_err(ws.run_with("intermediate.toml", shares, false)),
            expected,
            "{what}"
        );
    }

    // A share with one flipped hex digit: its checksum names it.
    let damaged = ws.path("damaged.share");
    let text = std::fs::read_to_string(share(&ws, "bob")).unwrap();
    let f: ShareFile = serde_json::from_str(&text).unwrap();
    let mut flipped = f.share.clone().into_bytes();
    flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
    std::fs::write(
        &damaged,
        text.replace(&f.share, std::str::from_utf8(&flipped).unwrap()),
    )
    .unwrap();
    match quorum_err(ws.run_with(
        "intermediate.toml",
        vec![share(&ws, "alice"), damaged.clone()],
        false,
    )) {
        QuorumError::CorruptShare { file, .. } => assert_eq!(file, damaged.display().to_string()),
        other => panic!("{other:?}"),
    }
    // Altered with a recomputed checksum: the PIN commitment catches it.
    let mut forged = f.clone();
    forged.share = String::from_utf8(flipped).unwrap();
    forged.checksum = forged.compute_checksum();
    let forged_path = ws.path("forged.share");
    std::fs::write(&forged_path, forged.to_json()).unwrap();
    assert!(
        read_share(&forged_path).is_ok(),
        "the forged share must pass its own checksum for this test to mean anything"
    );
    assert_eq!(
        quorum_err(ws.run_with(
            "intermediate.toml",
            vec![share(&ws, "alice"), forged_path],
            false
        )),
        QuorumError::PinMismatch
    );

    // A share of an officer who is not present.
    ws.derive("intermediate.toml", "intermediate-two.toml", |t| {
        let mut o = toml::Table::new();
        o.insert("name".into(), "Alice Adams".into());
        set(
            t,
            "officers",
            toml::Value::Array(vec![toml::Value::Table(o)]),
        );
    });
    assert!(matches!(
        quorum_err(ws.run_with("intermediate-two.toml", vec![share(&ws, "alice"), share(&ws, "bob")], false)),
        QuorumError::OfficerNotListed { officer, .. } if officer == "Bob Brown"
    ));

    // None of that logged in to the token or wrote anything.
    assert!(
        !failed_login_flag(&ws),
        "a refused quorum reached the HSM login"
    );
    assert_eq!(
        ws.files().len(),
        before.len() + 3,
        "only the test's own share files were added"
    );

    // m of n really unlocks: the ceremony runs with Alice's and Carol's shares.
    match ws
        .run_with(
            "intermediate.toml",
            vec![share(&ws, "alice"), share(&ws, "carol")],
            false,
        )
        .unwrap()
    {
        Outcome::Done(d) => assert!(d.files.iter().any(|f| f.path.ends_with("intermediate.pem"))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn shares_of_another_ceremony_are_refused_before_login() {
    let a = Workspace::new();
    let b = Workspace::new();
    a.root_and_key();
    b.done("root.toml");
    shares_from_cli(&a);

    // Mixed: one share from each ceremony.
    match quorum_err(a.run_with(
        "intermediate.toml",
        vec![share(&a, "alice"), share(&b, "bob")],
        false,
    )) {
        QuorumError::MixedShares {
            expected, found, ..
        } => assert_ne!(expected, found),
        other => panic!("{other:?}"),
    }
    // A full set from the other ceremony: not the share set recorded for this token.
    let a_root = &ceremonies::history::History::load(&a.path("transcripts"))
        .unwrap()
        .records[0]
        .transcript;
    match quorum_err(a.run_with(
        "intermediate.toml",
        vec![share(&b, "alice"), share(&b, "bob")],
        false,
    )) {
        QuorumError::WrongCeremony { expected, .. } => assert_eq!(expected, a_root.ceremony_id),
        other => panic!("{other:?}"),
    }
    assert!(
        !failed_login_flag(&a),
        "foreign shares reached the HSM login"
    );
    assert!(!a.path("intermediate.pem").exists());
}

#[test]
fn shares_for_a_token_whose_serial_differs_are_refused_before_login() {
    let ws = Workspace::new();
    ws.root_and_key();
    // A token label the history knows no root ceremony for: the shares cannot be checked.
    ws.derive("intermediate.toml", "intermediate-other.toml", |t| {
        set(t, "root_token.label", "no-root-ceremony-here")
    });
    let r = ws.run("intermediate-other.toml");
    assert!(matches!(r, Err(Error::History { .. })), "{r:?}");
    // The history and the shares agree, but the token under the label is not the one the
    // shares were made for (e.g. re-initialised): the serial check stops before the login.
    for o in ["alice", "bob"] {
        let p = share(&ws, o);
        let mut f: ShareFile = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f.set.token_serial = "0000000000000000".into();
        f.checksum = f.compute_checksum();
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, f.to_json()).unwrap();
    }
    match ws.run("intermediate.toml") {
        Err(Error::TokenMismatch { expected, .. }) => assert_eq!(expected, "0000000000000000"),
        other => panic!("expected TokenMismatch, got {other:?}"),
    }
    assert!(
        !failed_login_flag(&ws),
        "the serial check let a login through"
    );
}
