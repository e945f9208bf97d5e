use super::*;
use crate::config::Config;
use ca_core::signer::KeyAlgorithm;

fn cfg(dir: &Path) -> CertConfig {
    let text = format!(
        "server = \"https://127.0.0.1:1\"\nroot_fingerprint = \"{}\"\n[[certificate]]\nname = \"web\"\n\
         cert = \"{d}/tls/web.crt\"\nkey = \"{d}/tls/web.key\"\nfullchain = \"{d}/tls/full.pem\"\n",
        "00".repeat(32),
        d = dir.display()
    );
    Config::parse(&text).unwrap().certificates.remove(0)
}

/// A self-signed pair for `key` (install does not care who issued it).
fn material(cn: &str) -> (Material, String) {
    let key = PrivateKey::generate(KeyAlgorithm::P256).unwrap();
    let pair = rcgen::KeyPair::from_pem(key.pem()).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![cn.to_string()]).unwrap();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&rand::random::<[u8; 8]>()));
    let cert = params.self_signed(&pair).unwrap();
    let info = CertInfo::parse(cert.der(), "test").unwrap();
    (
        Material {
            key_pem: key.pem().to_string(),
            cert_pem: cert.pem(),
            chain_pem: String::new(),
        },
        info.serial,
    )
}

fn serial_at(path: &Path) -> String {
    CertInfo::from_pem(&fs::read(path).unwrap(), "t")
        .unwrap()
        .serial
}

#[test]
fn install_links_through_current_and_keeps_prev() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let (m1, s1) = material("a.test");
    let i1 = install(&c, &m1).unwrap();
    assert_eq!(i1.previous, None);
    assert!(fs::symlink_metadata(&c.key)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::read_link(&c.key).unwrap(),
        PathBuf::from(".ca-agent/web/current/key.pem")
    );
    let disk = read_current(&c).unwrap().unwrap();
    assert_eq!(disk.cert.serial, s1);
    assert_eq!(
        fs::metadata(&c.key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(&c.cert).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(!with_suffix(&c.key, ".prev").exists());

    let (m2, s2) = material("a.test");
    let i2 = install(&c, &m2).unwrap();
    assert_eq!(i2.previous.as_deref(), Some(i1.version.as_str()));
    assert_eq!(read_current(&c).unwrap().unwrap().cert.serial, s2);
    assert_eq!(serial_at(&with_suffix(&c.cert, ".prev")), s1);
    let prev_key =
        PrivateKey::from_pem(&fs::read_to_string(with_suffix(&c.key, ".prev")).unwrap()).unwrap();
    assert!(
        CertInfo::from_pem(&fs::read(with_suffix(&c.cert, ".prev")).unwrap(), "p")
            .unwrap()
            .matches_key(&prev_key)
    );
    // fullchain starts with the leaf
    assert_eq!(serial_at(c.fullchain.as_ref().unwrap()), s2);
}

#[test]
fn restore_previous_puts_the_old_pair_back() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let (m1, s1) = material("a.test");
    let (m2, s2) = material("a.test");
    let (m3, s3) = material("a.test");
    install(&c, &m1).unwrap();
    install(&c, &m2).unwrap();
    install(&c, &m3).unwrap();
    assert_eq!(read_current(&c).unwrap().unwrap().cert.serial, s3);
    restore_previous(&c).unwrap();
    assert_eq!(read_current(&c).unwrap().unwrap().cert.serial, s2);
    // The older version is the new prev, so a second bad renewal can still be undone.
    assert_eq!(serial_at(&with_suffix(&c.cert, ".prev")), s1);
    assert!(c.store_dir().join("failed-v000003").is_dir());
    restore_previous(&c).unwrap();
    assert_eq!(read_current(&c).unwrap().unwrap().cert.serial, s1);
    assert!(!with_suffix(&c.cert, ".prev").exists());
    assert!(restore_previous(&c).is_err());
    assert_eq!(read_current(&c).unwrap().unwrap().cert.serial, s1);
}

#[test]
fn a_certificate_for_another_key_is_never_installed() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let (m1, s1) = material("a.test");
    install(&c, &m1).unwrap();
    let (m2, _) = material("a.test");
    let (m3, _) = material("a.test");
    let bad = Material {
        key_pem: m2.key_pem,
        cert_pem: m3.cert_pem,
        chain_pem: String::new(),
    };
    assert!(matches!(install(&c, &bad), Err(Error::KeyMismatch { .. })));
    assert_eq!(read_current(&c).unwrap().unwrap().cert.serial, s1);
    // no temp directory left behind
    assert!(fs::read_dir(c.store_dir())
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp-")));
}

#[test]
fn plain_files_are_imported_without_changing_what_readers_see() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let (m1, s1) = material("a.test");
    fs::create_dir_all(c.key.parent().unwrap()).unwrap();
    fs::write(&c.key, &m1.key_pem).unwrap();
    fs::set_permissions(&c.key, fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(&c.cert, &m1.cert_pem).unwrap();
    recover(&c).unwrap();
    assert!(fs::symlink_metadata(&c.key)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(read_current(&c).unwrap().unwrap().cert.serial, s1);
    // the operator's 0640 is not copied: a key is 0600 whatever it replaced
    assert_eq!(
        fs::metadata(&c.key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // An operator replaces both files by hand (mv over the links): imported as a new version.
    let (m2, s2) = material("a.test");
    let tmpk = dir.path().join("k");
    let tmpc = dir.path().join("c");
    fs::write(&tmpk, &m2.key_pem).unwrap();
    fs::write(&tmpc, &m2.cert_pem).unwrap();
    fs::rename(&tmpk, &c.key).unwrap();
    fs::rename(&tmpc, &c.cert).unwrap();
    recover(&c).unwrap();
    assert!(fs::symlink_metadata(&c.cert)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(read_current(&c).unwrap().unwrap().cert.serial, s2);
    assert_eq!(serial_at(&with_suffix(&c.cert, ".prev")), s1);
}

#[test]
fn leftovers_of_a_killed_install_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let (m1, s1) = material("a.test");
    install(&c, &m1).unwrap();
    let store = c.store_dir();
    fs::create_dir(store.join(".tmp-v000002-abc")).unwrap();
    fs::write(store.join(".tmp-v000002-abc").join(KEY), "half").unwrap();
    std::os::unix::fs::symlink("v000001", store.join(".current.ca-agent-tmp-1")).unwrap();
    recover(&c).unwrap();
    assert!(!store.join(".tmp-v000002-abc").exists());
    assert!(fs::symlink_metadata(store.join(".current.ca-agent-tmp-1")).is_err());
    assert_eq!(read_current(&c).unwrap().unwrap().cert.serial, s1);
}

#[test]
fn old_versions_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    for _ in 0..6 {
        install(&c, &material("a.test").0).unwrap();
    }
    let names: Vec<u64> = versions(&c.store_dir())
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec![4, 5, 6]);
}

#[test]
fn mismatched_pair_on_disk_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let (m1, _) = material("a.test");
    let (m2, _) = material("a.test");
    fs::create_dir_all(c.key.parent().unwrap()).unwrap();
    fs::write(&c.key, &m1.key_pem).unwrap();
    fs::write(&c.cert, &m2.cert_pem).unwrap();
    assert!(matches!(read_current(&c), Err(Error::KeyMismatch { .. })));
    // recover does not import a mismatched pair
    recover(&c).unwrap();
    assert!(!fs::symlink_metadata(&c.key)
        .unwrap()
        .file_type()
        .is_symlink());
}

/// Someone who can write the directory plants links out of it: to another service's key and
/// certificate, or a chain link to a secret file next to a pair of their own (an import would
/// copy the "chain" into the store with the certificate's public mode). Nothing is read or
/// copied; links inside the directory are fine.
#[test]
fn links_out_of_the_directory_are_refused_before_anything_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.chain = Some(dir.path().join("tls/chain.pem"));
    let tls = c.key.parent().unwrap().to_path_buf();
    fs::create_dir_all(&tls).unwrap();
    let outside = dir.path().join("other-service");
    fs::create_dir_all(&outside).unwrap();
    let (m, _) = material("other.test");
    fs::write(outside.join("k.pem"), &m.key_pem).unwrap();
    fs::write(outside.join("c.pem"), &m.cert_pem).unwrap();
    fs::write(outside.join("secret"), "root:$6$secret\n").unwrap();

    std::os::unix::fs::symlink(outside.join("k.pem"), &c.key).unwrap();
    std::os::unix::fs::symlink(outside.join("c.pem"), &c.cert).unwrap();
    assert!(matches!(read_current(&c), Err(Error::UnsafeLink { .. })));
    assert!(matches!(recover(&c), Err(Error::UnsafeLink { .. })));
    assert!(!c.store_dir().exists(), "nothing imported");

    // The attacker's own pair as plain files, the chain a link to a secret.
    let (mine, _) = material("mine.test");
    fs::remove_file(&c.key).unwrap();
    fs::remove_file(&c.cert).unwrap();
    fs::write(&c.key, &mine.key_pem).unwrap();
    fs::write(&c.cert, &mine.cert_pem).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), c.chain.as_ref().unwrap()).unwrap();
    let e = recover(&c).unwrap_err();
    assert!(
        matches!(&e, Error::UnsafeLink { path, .. } if path == c.chain.as_ref().unwrap()),
        "{e}"
    );
    assert!(!c.store_dir().exists(), "nothing imported");

    // A link that stays in the directory is the operator's business.
    fs::remove_file(c.chain.as_ref().unwrap()).unwrap();
    fs::rename(&c.key, tls.join("web-2026.key")).unwrap();
    std::os::unix::fs::symlink("web-2026.key", &c.key).unwrap();
    recover(&c).unwrap();
    assert!(read_current(&c).unwrap().is_some());
}

/// The same through the store: `.ca-agent/<name>` replaced by a link to another service's
/// store makes the agent's own links lead there. Refused.
#[test]
fn a_store_replaced_by_a_link_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let (m1, _) = material("a.test");
    install(&c, &m1).unwrap();
    // Another service's store, elsewhere.
    let other = {
        let mut o = cfg(&dir.path().join("other"));
        o.name = "other".into();
        o
    };
    let (m2, _) = material("other.test");
    install(&other, &m2).unwrap();
    let store = c.store_dir();
    fs::rename(&store, dir.path().join("moved-away")).unwrap();
    std::os::unix::fs::symlink(other.store_dir(), &store).unwrap();
    assert!(matches!(read_current(&c), Err(Error::UnsafeLink { .. })));
    assert!(matches!(
        install(&c, &material("a.test").0),
        Err(Error::UnsafeLink { .. })
    ));
    assert_eq!(
        versions(&other.store_dir()).unwrap().len(),
        1,
        "nothing written there"
    );
}
