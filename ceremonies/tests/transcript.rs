//! Transcripts: verification passes on what the ceremony wrote and fails on any changed byte,
//! on a re-signed copy (when the signer is pinned) and on a broken history.

mod common;

use ceremonies::error::TranscriptFault;
use ceremonies::transcript::{verify_bytes, verify_file, TokenId};
use ceremonies::Error;
use common::Workspace;
use std::process::Command;

#[test]
fn verify_passes_and_every_changed_byte_fails() {
    let ws = Workspace::new();
    let root = ws.done("root.toml");
    let key = ws.done("key.toml");
    let bytes = std::fs::read(&root.transcript).unwrap();
    let root_key =
        ceremonies::transcript::signer_fingerprint(ws.path("root.pem").to_str().unwrap()).unwrap();
    let t = verify_bytes(&bytes, Some(&root_key)).unwrap();
    assert_eq!(t.kind, ceremonies::config::Kind::Root);
    assert!(t.rehearsal);
    assert!(t.entries.iter().any(|e| e.step == "key-generated"
        && e.token
            .as_ref()
            .is_some_and(|tok| tok.label == ws.root_label)));
    assert_eq!(
        t.config_sha256,
        ca_core::signer::sha256_hex(&std::fs::read(ws.path("root.toml")).unwrap())
    );

    // Flip one bit of every byte in turn, of the key ceremony's transcript (the smaller one:
    // thousands of verifications, split over the cores).
    let flipped = std::fs::read(&key.transcript).unwrap();
    verify_bytes(&flipped, None).unwrap();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let faults: std::collections::BTreeSet<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let bytes = &flipped;
                s.spawn(move || {
                    let mut kinds = std::collections::BTreeSet::new();
                    for i in (k..bytes.len()).step_by(threads) {
                        let mut copy = bytes.clone();
                        copy[i] ^= 0x01;
                        match verify_bytes(&copy, None) {
                            Ok(_) => panic!(
                                "byte {i} ({:?}) changed and the transcript still verifies",
                                bytes[i] as char
                            ),
                            Err(f) => kinds.insert(format!("{:?}", std::mem::discriminant(&f))),
                        };
                    }
                    kinds
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        faults.len() >= 3,
        "expected parse, chain and signature failures among the flips: {faults:?}"
    );

    // Whitespace-only edits keep the JSON meaning but not the exact form.
    let text = String::from_utf8(bytes.clone()).unwrap();
    let reindented = text.replacen("\n  \"", "\n\t\"", 1);
    assert_eq!(
        verify_bytes(reindented.as_bytes(), None).unwrap_err(),
        TranscriptFault::NotCanonical
    );
    assert_eq!(
        verify_bytes(format!("{text}\n").as_bytes(), None).unwrap_err(),
        TranscriptFault::NotCanonical
    );

    // The CLI agrees.
    let cli = |path: &std::path::Path, expect: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ceremony"));
        c.arg("verify-transcript").arg(path);
        if let Some(e) = expect {
            c.args(["--expect-signer", e]);
        }
        c.output().unwrap()
    };
    let out = cli(
        &root.transcript,
        Some(ws.path("root.pem").to_str().unwrap()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK: root transcript"));
    let tampered = ws.path("tampered.json");
    std::fs::write(&tampered, text.replacen("Alice Adams", "Alice Adamz", 1)).unwrap();
    let out = cli(&tampered, None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("failed verification"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_transcript_re_signed_with_another_key_fails_when_the_signer_is_pinned() {
    let ws = Workspace::new();
    let root = ws.done("root.toml");
    ws.done("key.toml");
    let mut t = verify_file(&root.transcript, None).unwrap();
    // Someone edits the transcript and signs it again with a key they hold.
    t.name = "A different story".into();
    let mut online = ca_core::signer::pkcs11::HsmConfig::new(
        &ws.online_label,
        ca_core::signer::pkcs11::PinSource::File(ws.online_pin_file.clone()),
    );
    online.module = Some(hsm_sim::module_path().unwrap());
    let signer = online.open().unwrap().signer("issuing-ca").unwrap();
    t.sign(
        &signer,
        TokenId {
            label: ws.root_label.clone(),
            serial: t.signature.token.serial.clone(),
        },
        "root-ca",
    )
    .unwrap();
    let forged = t.canonical_bytes();
    assert!(
        verify_bytes(&forged, None).is_ok(),
        "self-consistent forgery"
    );
    let root_key =
        ceremonies::transcript::signer_fingerprint(ws.path("root.pem").to_str().unwrap()).unwrap();
    assert!(matches!(
        verify_bytes(&forged, Some(&root_key)),
        Err(TranscriptFault::UnexpectedSigner { .. })
    ));
}

#[test]
fn later_ceremonies_refuse_a_tampered_or_broken_history() {
    let ws = Workspace::new();
    let root = ws.done("root.toml");
    let key = ws.done("key.toml");
    let dry = |ws: &Workspace| ws.run_with("intermediate.toml", Vec::new(), true);
    assert!(dry(&ws).is_ok());

    // One changed byte in an earlier transcript.
    let original = std::fs::read(&key.transcript).unwrap();
    let mut changed = original.clone();
    let at = changed.len() / 2;
    changed[at] ^= 0x01;
    std::fs::write(&key.transcript, &changed).unwrap();
    match dry(&ws) {
        Err(Error::History { reason, .. }) => {
            assert!(reason.contains("002-key.json does not verify"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    std::fs::write(&key.transcript, &original).unwrap();
    assert!(dry(&ws).is_ok());

    // A transcript removed from the middle breaks the chain between transcripts.
    let aside = ws.path("001-root.json.aside");
    std::fs::rename(&root.transcript, &aside).unwrap();
    match dry(&ws) {
        Err(Error::History { reason, .. }) => assert!(
            reason.contains("chain of transcripts is broken"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    std::fs::rename(&aside, &root.transcript).unwrap();
    assert!(dry(&ws).is_ok());
}
