//! Transcripts are pinned to their history: a transcript edited and signed again with a
//! stranger's key (hashes and links recomputed, so it verifies on its own) is refused by
//! `ceremony verify-transcript`, with or without `--expect-signer`, and by the next ceremony.
//! Attacks: a root CRL number rolled back, an intermediate added to the record, and every kind
//! re-signed in turn.

mod common;

use ca_core::signer::{sha256_hex, KeyAlgorithm, Signer};
use ceremonies::config::Kind;
use ceremonies::history::History;
use ceremonies::transcript::{verify_bytes, verify_file, Recorder, Transcript};
use ceremonies::Error;
use common::{set, Workspace};
use std::path::Path;
use std::process::{Command, Output};

/// A fresh P-256 key held by the attacker, in software.
#[derive(Debug)]
struct Stranger {
    pair: rcgen::KeyPair,
    spki: Vec<u8>,
}

impl Stranger {
    fn new() -> Stranger {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&pair);
        Stranger { pair, spki }
    }
    fn fingerprint(&self) -> String {
        sha256_hex(&self.spki)
    }
}

impl Signer for Stranger {
    fn algorithm(&self) -> KeyAlgorithm {
        KeyAlgorithm::P256
    }
    fn spki_der(&self) -> &[u8] {
        &self.spki
    }
    fn public_key_bits(&self) -> &[u8] {
        rcgen::PublicKeyData::der_bytes(&self.pair)
    }
    fn sign(&self, msg: &[u8]) -> ca_core::Result<Vec<u8>> {
        Ok(rcgen::SigningKey::sign(&self.pair, msg).unwrap())
    }
}

/// `original` with `edit` applied, its entry hashes and links recomputed, signed by `stranger`
/// under the original's token and key label: only the signer (and the edit) differ, and the
/// forgery verifies on its own.
fn forge(
    original: &Transcript,
    stranger: &Stranger,
    edit: impl FnOnce(&mut Transcript),
) -> Vec<u8> {
    let mut t = original.clone();
    edit(&mut t);
    let mut rec = Recorder::new(&t.ceremony_id);
    for e in &t.entries {
        let pairs = |m: &std::collections::BTreeMap<String, String>| -> Vec<(String, String)> {
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let (i, o) = (pairs(&e.inputs), pairs(&e.outputs));
        let i: Vec<(&str, String)> = i.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let o: Vec<(&str, String)> = o.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        rec.record(
            e.time,
            &e.step,
            e.officer.as_deref(),
            e.token.as_ref(),
            &i,
            &o,
        );
    }
    t.entries = rec.into_entries();
    let (token, label) = (t.signature.token.clone(), t.signature.key_label.clone());
    t.sign(stranger, token, &label).unwrap();
    let bytes = t.canonical_bytes();
    let back = verify_bytes(&bytes, None).expect("the forgery is self-consistent");
    assert_eq!(back.signature.spki_sha256, stranger.fingerprint());
    bytes
}

fn verify_cli(path: &Path, expect: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ceremony"));
    c.arg("verify-transcript").arg(path);
    if let Some(e) = expect {
        c.args(["--expect-signer", e]);
    }
    c.output().unwrap()
}

fn out_text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// verify-transcript refuses `path` without --expect-signer, with the stranger's key as the
/// expected signer, and with the genuine root.
fn cli_refuses(path: &Path, stranger: &Stranger, root_pem: &Path) {
    let fp = stranger.fingerprint();
    for expect in [None, Some(fp.as_str()), Some(root_pem.to_str().unwrap())] {
        let out = verify_cli(path, expect);
        assert!(
            !out.status.success(),
            "verify-transcript {} --expect-signer {expect:?} accepted a forgery:\n{}",
            path.display(),
            out_text(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&fp), "{expect:?}: {}", out_text(&out));
    }
}

#[test]
fn a_root_crl_number_rolled_back_under_a_stranger_signature_is_refused() {
    let ws = Workspace::new();
    let stranger = Stranger::new();
    ws.root_and_key();
    ws.done("crl.toml");
    ws.derive("crl.toml", "crl2.toml", |t| set(t, "crl.crl", "root2.crl"));
    let crl2 = ws.done("crl2.toml");
    let genuine = std::fs::read(&crl2.transcript).unwrap();
    let t = verify_file(&crl2.transcript, None).unwrap();
    assert_eq!(t.facts.crl.as_ref().unwrap().number, 2);

    // The genuine transcript verifies, pinned by the root ceremony.
    let out = verify_cli(&crl2.transcript, None);
    assert!(out.status.success(), "{}", out_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pinned by 001-root.json"),
        "{}",
        out_text(&out)
    );

    // The attacker rewrites the latest CRL transcript to say number 1 and signs it again.
    let forged = forge(&t, &stranger, |t| {
        t.facts.crl.as_mut().unwrap().number = 1;
        for e in &mut t.entries {
            if e.step == "crl-signed" {
                e.inputs.insert("crl_number".into(), "1".into());
            }
        }
    });
    std::fs::write(&crl2.transcript, &forged).unwrap();
    cli_refuses(&crl2.transcript, &stranger, &ws.path("root.pem"));

    // The next CRL ceremony would take 1 as the highest number and publish number 2 again; it
    // refuses the history before the HSM is touched.
    ws.derive("crl.toml", "crl3.toml", |t| set(t, "crl.crl", "root3.crl"));
    for dry_run in [true, false] {
        match ws.run_with("crl3.toml", Vec::new(), dry_run) {
            Err(Error::History { reason, .. }) => assert!(
                reason.contains("004-crl.json")
                    && reason.contains(&stranger.fingerprint())
                    && reason.contains("001-root.json"),
                "{reason}"
            ),
            other => panic!("dry run {dry_run}: the next ceremony accepted the history: {other:?}"),
        }
    }
    assert!(!ws.path("root3.crl").exists());

    // With the genuine transcript back, the next CRL is number 3.
    std::fs::write(&crl2.transcript, &genuine).unwrap();
    ws.done("crl3.toml");
    let h = History::load(&ws.path("transcripts")).unwrap();
    assert_eq!(
        h.records
            .last()
            .unwrap()
            .transcript
            .facts
            .crl
            .as_ref()
            .unwrap()
            .number,
        3
    );
}

#[test]
fn an_intermediate_added_under_a_stranger_signature_is_refused() {
    let ws = Workspace::new();
    let stranger = Stranger::new();
    ws.root_and_key();
    let inter = ws.done("intermediate.toml");
    let t = verify_file(&inter.transcript, None).unwrap();
    let head = sha256_hex(&std::fs::read(&inter.transcript).unwrap());

    // A record of an intermediate the root never signed (or the cover story for one it did),
    // appended to the history with correct links.
    let forged = forge(&t, &stranger, |t| {
        t.ceremony_id = hex::encode([7u8; 16]);
        t.previous_transcript_sha256 = Some(head.clone());
        t.name = "Shadow issuing CA".into();
        for c in &mut t.facts.certificates {
            c.subject = "CN=Shadow Issuing CA".into();
            c.serial = "5ad0".into();
            c.sha256 = "ab".repeat(32);
        }
    });
    let path = ws.path("transcripts/004-intermediate.json");
    std::fs::write(&path, &forged).unwrap();
    cli_refuses(&path, &stranger, &ws.path("root.pem"));
    // The genuine transcripts before it are refused too: the history they belong to is not
    // whole any more.
    assert!(!verify_cli(&inter.transcript, None).status.success());

    // The next ceremony (the OCSP signer, which trusts the recorded intermediate) refuses.
    match ws.run("ocsp-signer.toml") {
        Err(Error::History { reason, .. }) => assert!(
            reason.contains("004-intermediate.json") && reason.contains(&stranger.fingerprint()),
            "{reason}"
        ),
        other => panic!("the next ceremony accepted the history: {other:?}"),
    }
    assert!(!ws.path("ocsp-signer.pem").exists());
    std::fs::remove_file(&path).unwrap();
    ws.done("ocsp-signer.toml");
}

#[test]
fn every_kind_is_pinned_to_the_key_its_history_records() {
    let ws = Workspace::new();
    let stranger = Stranger::new();
    for c in [
        "root.toml",
        "key.toml",
        "intermediate.toml",
        "ocsp-signer.toml",
        "crl.toml",
        "ocsp-response.toml",
    ] {
        ws.done(c);
    }
    let history = History::load(&ws.path("transcripts")).unwrap();
    assert_eq!(history.records.len(), 6);
    let root_key = history.records[0].transcript.signature.spki_sha256.clone();
    let issuing_key = history.records[1].transcript.signature.spki_sha256.clone();
    for (i, r) in history.records.iter().enumerate() {
        let t = &r.transcript;
        let want = match t.kind {
            Kind::Key | Kind::OcspSigner => &issuing_key,
            _ => &root_key,
        };
        assert_eq!(&t.signature.spki_sha256, want, "{:?}", t.kind);

        // A directory holding the genuine transcripts before this one, and this one re-signed
        // by the stranger (content unchanged, so only the signer differs).
        let dir = ws.path(&format!("forged-{i}"));
        let tdir = dir.join("transcripts");
        std::fs::create_dir_all(&tdir).unwrap();
        for earlier in &history.records[..i] {
            std::fs::copy(&earlier.path, tdir.join(earlier.path.file_name().unwrap())).unwrap();
        }
        let name = r.path.file_name().unwrap();
        // Control: with the genuine transcript the prefix is a valid history.
        std::fs::copy(&r.path, tdir.join(name)).unwrap();
        History::load(&tdir).unwrap_or_else(|e| panic!("{:?} genuine: {e}", t.kind));
        let path = tdir.join(name);
        std::fs::write(&path, forge(t, &stranger, |_| {})).unwrap();
        match History::load(&tdir) {
            Err(Error::History { reason, .. }) => assert!(
                reason.contains(&stranger.fingerprint()) && reason.contains(want.as_str()),
                "{:?}: {reason}",
                t.kind
            ),
            other => panic!(
                "{:?}: a re-signed transcript was accepted: {:?}",
                t.kind,
                other.map(|h| h.records.len())
            ),
        }
        cli_refuses(&path, &stranger, &ws.path("root.pem"));
    }
}

/// A transcript handed out alone (an auditor's copy): `root` and `key` are pinned by themselves;
/// the others need --expect-signer, and a stranger's signature is refused with the real root.
#[test]
fn a_transcript_alone_needs_its_anchor() {
    let ws = Workspace::new();
    let stranger = Stranger::new();
    let root = ws.done("root.toml");
    ws.done("key.toml");
    let crl = ws.done("crl.toml");
    let alone = ws.path("auditor");
    std::fs::create_dir_all(&alone).unwrap();
    let copy = |from: &Path| {
        let to = alone.join(from.file_name().unwrap());
        for e in std::fs::read_dir(&alone).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        std::fs::copy(from, &to).unwrap();
        to
    };
    let root_pem = ws.path("root.pem");
    let root_pem = root_pem.to_str().unwrap();

    let r = copy(&root.transcript);
    assert!(verify_cli(&r, None).status.success());
    assert!(verify_cli(&r, Some(root_pem)).status.success());
    assert!(!verify_cli(&r, Some(&stranger.fingerprint()))
        .status
        .success());

    let c = copy(&crl.transcript);
    let out = verify_cli(&c, None);
    assert!(!out.status.success(), "{}", out_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--expect-signer"),
        "{}",
        out_text(&out)
    );
    let out = verify_cli(&c, Some(root_pem));
    assert!(out.status.success(), "{}", out_text(&out));

    let t = verify_file(&crl.transcript, None).unwrap();
    std::fs::write(&c, forge(&t, &stranger, |_| {})).unwrap();
    assert!(!verify_cli(&c, Some(root_pem)).status.success());
    assert!(!verify_cli(&c, None).status.success());
}
