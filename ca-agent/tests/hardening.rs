//! Agent hardening, as attacks against a real `ca-server dev` (SoftHSM, TLS on loopback):
//!
//! - the private key is 0600 whatever the mode of the file (or link target) it replaces, old
//!   versions and `.prev` included, and a key_mode others can read is refused at config load;
//! - links planted at the configured paths, leading out of the directory (to another
//!   service's key, or /etc/shadow), are neither read, imported nor renewed;
//! - a token that starts with '-' works after `--token`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Every file below `dir`, without following links.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(files(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out
}

/// The key files of every version in the agent's store (`v*/key.pem`, `failed-v*/key.pem`).
fn version_keys(store: &Path) -> Vec<PathBuf> {
    files(store)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "key.pem"))
        .collect()
}

fn renew_force(cfg: &Path) -> std::process::Output {
    run(
        &agent_bin(),
        &["renew", "--force", "--config", cfg.to_str().unwrap()],
        &[],
    )
}

fn assert_all_keys_private(tls: &Path, store: &Path, when: &str) {
    let key = tls.join("svc.key");
    assert_eq!(mode(&key), 0o600, "{when}: {}", key.display());
    let prev = tls.join("svc.key.prev");
    if prev.exists() {
        assert_eq!(mode(&prev), 0o600, "{when}: {}", prev.display());
    }
    let keys = version_keys(store);
    assert!(
        !keys.is_empty(),
        "{when}: no versions in {}",
        store.display()
    );
    for k in keys {
        assert_eq!(mode(&k), 0o600, "{when}: {}", k.display());
    }
}

#[test]
fn the_key_is_private_whatever_it_replaces_and_a_readable_key_mode_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::start(&tmp.path().join("ca"));

    // 1. key_mode = 0640 / 0644 is refused when the config is loaded, naming the field, and
    //    before a token is sent: the same token works afterwards.
    let token = ca.token("svc.test", "mtls");
    for bad in ["0640", "0644", "0604"] {
        let dir = tmp.path().join(format!("bad-{bad}"));
        let cfg = agent_config(&dir, &ca, "", &format!("key_mode = \"{bad}\"\n"));
        let tok = dir.join("token");
        std::fs::write(&tok, &token).unwrap();
        for args in [
            vec!["renew", "--config", cfg.to_str().unwrap()],
            vec![
                "enroll",
                "--config",
                cfg.to_str().unwrap(),
                "--token-file",
                tok.to_str().unwrap(),
            ],
        ] {
            let out = run(&agent_bin(), &args, &[]);
            assert!(!out.status.success(), "{bad} {args:?}: {}", text(&out));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("certificate[0].key_mode") && err.contains(bad),
                "{bad} {args:?}: {}",
                text(&out)
            );
        }
        assert!(!dir.join("tls").join("svc.key").exists());
    }

    // 2. A world-writable file sits at the key path (left by a previous tool): enrolling
    //    replaces it with a 0600 key, not a 0666 one.
    let dir = tmp.path().join("agent");
    let cfg = agent_config(&dir, &ca, "", "");
    let tls = dir.join("tls");
    let store = tls.join(".ca-agent").join("svc");
    std::fs::write(tls.join("svc.key"), "placeholder\n").unwrap();
    chmod(&tls.join("svc.key"), 0o666);
    let tok = dir.join("token");
    std::fs::write(&tok, &token).unwrap();
    let out = run(
        &agent_bin(),
        &[
            "enroll",
            "--config",
            cfg.to_str().unwrap(),
            "--token-file",
            tok.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(openssl_pair_matches(
        &tls.join("svc.crt"),
        &tls.join("svc.key")
    ));
    assert_all_keys_private(&tls, &store, "after enrolling over a 0666 file");

    // 3. Someone loosens the installed key (chmod through the link): the renewed key is 0600,
    //    and the loosened one, now `.prev`, is tightened again.
    chmod(&tls.join("svc.key"), 0o644);
    let out = renew_force(&cfg);
    assert!(out.status.success(), "{}", text(&out));
    assert!(tls.join("svc.key.prev").exists());
    assert_all_keys_private(&tls, &store, "after renewing a 0644 key");

    // 4. An operator replaces the links with plain copies, the key world-readable: the copy
    //    is imported as a 0600 version, and so is every key after the renewal.
    let key_pem = std::fs::read(tls.join("svc.key")).unwrap();
    let cert_pem = std::fs::read(tls.join("svc.crt")).unwrap();
    for (name, data) in [("svc.key", &key_pem), ("svc.crt", &cert_pem)] {
        let p = tls.join(name);
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, data).unwrap();
        chmod(&p, 0o644);
    }
    let serial = openssl_serial(&tls.join("svc.crt"));
    let out = renew_force(&cfg);
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(openssl_serial(&tls.join("svc.crt")), serial);
    assert_eq!(openssl_serial(&tls.join("svc.crt.prev")), serial);
    assert_eq!(std::fs::read(tls.join("svc.key.prev")).unwrap(), key_pem);
    assert_all_keys_private(&tls, &store, "after importing a 0644 plain key");
}

#[test]
fn links_planted_out_of_the_directory_are_neither_read_nor_imported() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::start(&tmp.path().join("ca"));

    // Another service on the host, with its own certificate from the same CA.
    let other = tmp.path().join("other");
    let other_cfg = agent_config(&other, &ca, "", "");
    let out = enroll(&other_cfg, &ca, "other.test", "mtls");
    assert!(out.status.success(), "{}", text(&out));
    let other_key = other.join("tls").join("svc.key");
    let other_cert = other.join("tls").join("svc.crt");
    let other_key_pem = std::fs::read(&other_key).unwrap();
    let other_serial = openssl_serial(&other_cert);

    // The attacker can write to our service's TLS directory and plants links to the other
    // service's pair. Without the check the agent imports that pair into its store (owned and
    // moded for our service) and renews the other service's identity for us.
    let dir = tmp.path().join("agent");
    let cfg = agent_config(&dir, &ca, "", "");
    let tls = dir.join("tls");
    std::os::unix::fs::symlink(&other_key, tls.join("svc.key")).unwrap();
    std::os::unix::fs::symlink(&other_cert, tls.join("svc.crt")).unwrap();
    let out = renew_force(&cfg);
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("symbolic link") && all.contains(other.to_str().unwrap()),
        "{all}"
    );
    assert!(!all.contains("renewed"), "{all}");
    for f in files(&dir) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes
                .windows(other_key_pem.len())
                .any(|w| w == other_key_pem.as_slice()),
            "the other service's key was copied to {}",
            f.display()
        );
    }
    assert!(version_keys(&tls.join(".ca-agent")).is_empty());
    // The planted links are left for the operator to look at; the other pair is untouched.
    assert!(std::fs::symlink_metadata(tls.join("svc.key"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(openssl_serial(&other_cert), other_serial);
    assert_eq!(std::fs::read(&other_key).unwrap(), other_key_pem);
    // status reports it too.
    let st = status_json(&cfg);
    assert!(
        st[0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("symbolic link"),
        "{st}"
    );

    // enroll --force refuses as well, before the token is sent: it still works afterwards.
    let tok = dir.join("token");
    std::fs::write(&tok, ca.token("svc.test", "mtls")).unwrap();
    let enroll_args = [
        "enroll",
        "--force",
        "--config",
        cfg.to_str().unwrap(),
        "--token-file",
        tok.to_str().unwrap(),
    ];
    let out = run(&agent_bin(), &enroll_args, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("symbolic link"),
        "{}",
        text(&out)
    );

    // A link to /etc/shadow is refused as a link, not read and then found unparsable.
    for name in ["svc.key", "svc.crt"] {
        std::fs::remove_file(tls.join(name)).unwrap();
    }
    std::os::unix::fs::symlink("/etc/shadow", tls.join("svc.key")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", tls.join("svc.crt")).unwrap();
    let out = renew_force(&cfg);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("symbolic link") && text(&out).contains("/etc/shadow"),
        "{}",
        text(&out)
    );
    assert!(files(&dir).iter().all(|f| {
        !std::fs::read_to_string(f)
            .unwrap_or_default()
            .contains("root:")
    }));

    // The operator removes the links: the unused token enrolls.
    for name in ["svc.key", "svc.crt"] {
        std::fs::remove_file(tls.join(name)).unwrap();
    }
    let out = run(&agent_bin(), &enroll_args, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(openssl_pair_matches(
        &tls.join("svc.crt"),
        &tls.join("svc.key")
    ));
    assert_ne!(std::fs::read(tls.join("svc.key")).unwrap(), other_key_pem);
}

/// A token that starts with '-'. The server makes hex tokens now, but tokens of older servers
/// (base64url, one in 64 starting with '-') stay valid: this one is planted in the CA's store
/// as such a server would have stored it (by SHA-256), with the CA stopped.
fn hyphen_token(ca: &mut Ca, cn: &str) -> String {
    use ca_core::store::{prelude::*, IdentityBinding, SledStore, TokenRecord};
    let token = "-kq3Vd_legacy-base64url-token-made-by-an-older-server0".to_string();
    ca.stop();
    {
        let store = SledStore::open(&ca.data.join("store")).unwrap();
        let now = chrono::Utc::now();
        store
            .insert_token(&TokenRecord {
                id: "legacy-dash".into(),
                hash: ca_core::signer::sha256_hex(token.as_bytes()),
                identity: IdentityBinding {
                    common_name: Some(cn.into()),
                    sans: vec![format!("dns:{cn}")],
                },
                profile: "mtls".into(),
                created_at: now,
                expires_at: now + chrono::Duration::hours(1),
                created_by: "test (a token of an older server)".into(),
                used_at: None,
            })
            .unwrap();
    }
    ca.restart();
    token
}

#[test]
fn a_token_starting_with_a_hyphen_enrolls() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ca = Ca::start(&tmp.path().join("ca"));
    let token = hyphen_token(&mut ca, "dash.test");
    let tls = tmp.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let cert = tls.join("svc.crt");
    let key = tls.join("svc.key");
    let out = run(
        &agent_bin(),
        &[
            "enroll",
            "--server",
            &ca.url(),
            "--fingerprint",
            &ca.fingerprint(),
            "--token",
            &token,
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "token {token:?}: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("enrolled"));
    assert!(openssl_pair_matches(&cert, &key));
    // The token was redeemed: it is refused now (single use), still parsed as a token.
    let out = run(
        &agent_bin(),
        &[
            "enroll",
            "--force",
            "--server",
            &ca.url(),
            "--fingerprint",
            &ca.fingerprint(),
            "--token",
            &token,
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token_rejected"),
        "{}",
        text(&out)
    );
}
