//! The PKCS#11 signer against a real SoftHSM2 token.

use ca_core::signer::{pkcs11::PinSource, verify, KeyAlgorithm, Signer};
use ca_core::Error;
use hsm_sim::TestToken;
use std::sync::Arc;
use testkit::Faults;

#[test]
fn every_algorithm_generates_in_hsm_signs_and_verifies() {
    let t = TestToken::new().unwrap();
    let token = t.hsm_config().open().unwrap();
    for alg in KeyAlgorithm::ALL {
        let label = format!("key-{alg}");
        let spki = token.generate_key(&label, alg).unwrap();
        assert_eq!(KeyAlgorithm::from_spki(&spki).unwrap(), alg);
        let signer = token.signer(&label).unwrap();
        assert_eq!(signer.algorithm(), alg);
        assert_eq!(signer.spki_der(), &spki[..]);
        let sig = signer.sign(b"hello").unwrap();
        verify(&spki, b"hello", &sig).unwrap();
        assert!(
            matches!(
                verify(&spki, b"hellp", &sig),
                Err(Error::SignatureCheckFailed)
            ),
            "{alg}: tampered message verified"
        );
        let p = token.key_protection(&label).unwrap();
        assert!(
            p.sensitive
                && !p.extractable
                && p.always_sensitive
                && p.never_extractable
                && p.persistent,
            "{alg}: {p:?}"
        );
    }
}

#[test]
fn key_generation_refuses_existing_label() {
    let t = TestToken::new().unwrap();
    let token = t.hsm_config().open().unwrap();
    token.generate_key("k", KeyAlgorithm::P256).unwrap();
    assert!(matches!(
        token.generate_key("k", KeyAlgorithm::P384),
        Err(Error::KeyExists { .. })
    ));
}

#[test]
fn typed_errors_for_missing_token_missing_key_and_bad_pin() {
    let t = TestToken::new().unwrap();
    let mut cfg = t.hsm_config();
    cfg.token_label = "no-such-token".into();
    assert!(matches!(
        cfg.open().unwrap().signer("k"),
        Err(Error::TokenNotFound { .. })
    ));

    let token = t.hsm_config().open().unwrap();
    assert!(matches!(
        token.signer("absent"),
        Err(Error::KeyNotFound { .. })
    ));

    let mut cfg = t.hsm_config();
    cfg.pin = PinSource::Value("wrong-pin".to_string().into());
    assert!(matches!(
        cfg.open().unwrap().signer("k"),
        Err(Error::BadPin {
            reason: "incorrect",
            ..
        })
    ));

    let mut cfg = t.hsm_config();
    cfg.pin = PinSource::Env("HSM_SIM_TEST_UNSET_PIN_VAR".into());
    assert!(matches!(
        cfg.open().unwrap().signer("k"),
        Err(Error::PinSource { .. })
    ));
}

#[test]
fn pin_from_file() {
    let t = TestToken::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pin_file = dir.path().join("pin");
    t.write_pin_file(&pin_file).unwrap();
    let mut cfg = t.hsm_config();
    cfg.pin = PinSource::File(pin_file);
    let token = cfg.open().unwrap();
    token.generate_key("k", KeyAlgorithm::P256).unwrap();
    assert!(token.signer("k").unwrap().sign(b"x").is_ok());
}

#[test]
fn concurrent_signing_from_many_threads() {
    let t = TestToken::new().unwrap();
    let mut cfg = t.hsm_config();
    cfg.sessions = 4;
    let token = cfg.open().unwrap();
    let spki = token.generate_key("k", KeyAlgorithm::P256).unwrap();
    let signer = Arc::new(token.signer("k").unwrap());
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let s = signer.clone();
            let spki = spki.clone();
            std::thread::spawn(move || {
                for j in 0..25 {
                    let msg = format!("{i}-{j}");
                    let sig = s.sign(msg.as_bytes()).unwrap();
                    verify(&spki, msg.as_bytes(), &sig).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn signer_recovers_after_hsm_logout_fault() {
    let t = TestToken::new().unwrap();
    let token = t.hsm_config().open().unwrap();
    let spki = token.generate_key("k", KeyAlgorithm::P256).unwrap();
    let signer = token.signer("k").unwrap();
    signer.sign(b"before").unwrap();
    t.inject_logout().unwrap();
    let sig = signer
        .sign(b"after")
        .expect("signer should re-login after the fault");
    verify(&spki, b"after", &sig).unwrap();
}

/// Session (not token) private-key objects with this label: the signer's copies.
fn session_copies(
    session: &cryptoki::session::Session,
    label: &str,
) -> Vec<cryptoki::object::ObjectHandle> {
    use cryptoki::object::{Attribute, ObjectClass};
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Token(false),
        ])
        .unwrap()
}

#[test]
fn signer_signs_with_a_sensitive_session_copy_made_in_the_hsm() {
    use cryptoki::object::{Attribute, AttributeType};
    let t = TestToken::new().unwrap();
    let token = t.hsm_config().open().unwrap();
    let spki = token.generate_key("copied", KeyAlgorithm::P256).unwrap();
    let signer = token.signer("copied").unwrap();
    let sig = signer.sign(b"with the copy").unwrap();
    verify(&spki, b"with the copy", &sig).unwrap();

    // Session objects are visible to every session of the process: the signer's copy is there,
    // and it is as protected as the token key (sensitive, never extractable).
    let session = token.login().unwrap();
    let copies = session_copies(&session, "copied");
    assert!(!copies.is_empty(), "no session copy of the key");
    for c in copies {
        let attrs = session
            .get_attributes(
                c,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                    AttributeType::Value,
                ],
            )
            .unwrap();
        assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
        assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
        assert!(
            attrs.contains(&Attribute::NeverExtractable(true)),
            "{attrs:?}"
        );
        // CKA_VALUE of a sensitive key is not readable: not returned at all.
        assert!(
            !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
            "{attrs:?}"
        );
    }
    // Lookups by label still see the token key only, which stays persistent.
    let p = token.key_protection("copied").unwrap();
    assert!(p.persistent && p.sensitive && !p.extractable, "{p:?}");
}

#[test]
fn a_key_the_token_will_not_copy_is_used_directly() {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, ObjectClass};
    use der::Encode;
    let t = TestToken::new().unwrap();
    let token = t.hsm_config().open().unwrap();
    // A P-256 key pair with CKA_COPYABLE false, made the way a vendor policy would.
    let session = token.login().unwrap();
    let curve = const_oid::db::rfc5912::SECP_256_R_1.to_der().unwrap();
    session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::Verify(true),
                Attribute::EcParams(curve),
                Attribute::Label(b"nocopy".to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Copyable(false),
                Attribute::Label(b"nocopy".to_vec()),
            ],
        )
        .unwrap();
    let key = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"nocopy".to_vec()),
        ])
        .unwrap()[0];
    assert!(
        session
            .copy_object(key, &[Attribute::Token(false)])
            .is_err(),
        "SoftHSM copied a key with CKA_COPYABLE false"
    );

    let signer = token.signer("nocopy").unwrap();
    let sig = signer.sign(b"no copy").unwrap();
    verify(signer.spki_der(), b"no copy", &sig).unwrap();
    let copies = session_copies(&session, "nocopy");
    assert!(copies.is_empty(), "{copies:?}");
}

/// A refused PIN is never tried again by itself (the second refusal is local: no `C_Login`,
/// which a real HSM would count towards locking the PIN); a different PIN from the source is
/// tried at once. Other login failures back off.
#[test]
fn refused_pin_is_not_retried_until_the_pin_source_changes() {
    let t = TestToken::new().unwrap();
    let token = t.hsm_config().open().unwrap();
    token.generate_key("k", KeyAlgorithm::P256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, "wrong-pin\n").unwrap();
    let mut cfg = t.hsm_config();
    cfg.pin = PinSource::File(pin_file.clone());
    let token = cfg.open().unwrap();
    assert!(matches!(
        token.login(),
        Err(Error::BadPin {
            reason: "incorrect",
            ..
        })
    ));
    assert!(token.login_blocked());
    for _ in 0..5 {
        assert!(
            matches!(
                token.login(),
                Err(Error::BadPin {
                    reason: "incorrect; not tried again until the PIN source changes \
                             or hsm.refused_pin_retry has passed",
                    ..
                })
            ),
            "the refused PIN was tried again"
        );
    }
    // The operator fixes the PIN file: tried at once, no backoff.
    std::fs::remove_file(&pin_file).unwrap();
    t.write_pin_file(&pin_file).unwrap();
    let signer = token
        .signer("k")
        .expect("the corrected PIN is tried at once");
    assert!(!token.login_blocked());
    signer.sign(b"after the fix").unwrap();

    // Another cause (the token is not there): the next attempt waits for the backoff.
    let mut cfg = t.hsm_config();
    cfg.token_label = "no-such-token".into();
    let missing = cfg.open().unwrap();
    assert!(matches!(missing.login(), Err(Error::TokenNotFound { .. })));
    assert!(matches!(
        missing.login(),
        Err(Error::LoginBackoff {
            retry_in_secs: 1,
            ..
        })
    ));
}
