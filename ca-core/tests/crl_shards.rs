//! Sharded CRLs (README "CRLs"): certificates issued by the real CA (SoftHSM, sled) name their
//! shard in their CRL distribution point, and the shard CRLs are checked by independent
//! peers: `openssl verify -crl_check` (which matches a CRL's issuing distribution point with
//! the certificate's distribution point, RFC 5280 6.3.3) and pkilint. Also: a revocation
//! rebuilds its shard only; a shard is fixed at issuance whatever the width later; two nodes on
//! one PostgreSQL database number each shard's CRLs strictly upwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ca_core::clock::{Clock, FixedClock};
use ca_core::crl::{crl_shard_of, CrlConfig, CrlPublisher, CrlShard, ShardScheme};
use ca_core::issuance::{Ca, IssueContext, IssuerUrls};
use ca_core::revocation::RevocationReason;
use ca_core::signer::{KeyAlgorithm, Signer};
use ca_core::store::prelude::*;
use ca_core::store::{CertRecord, Store};
use chrono::{Duration, Utc};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use testkit::pki::{test_profiles, TestPki};

const CRL_URL: &str = "http://127.0.0.1:8080/crl";

fn urls() -> IssuerUrls {
    IssuerUrls {
        ocsp: Some("http://127.0.0.1:8080/ocsp".into()),
        ca_issuers: Some("http://127.0.0.1:8080/ca.crt".into()),
        crl: Some(CRL_URL.into()),
    }
}

fn scheme(width_hours: i64) -> ShardScheme {
    ShardScheme::new(CRL_URL, Duration::hours(width_hours), Duration::days(2)).unwrap()
}

/// A PKI whose CA names 1-hour CRL shards, on a clock the test moves.
struct Setup {
    pki: TestPki,
    clock: Arc<FixedClock>,
    ca: Ca,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let clock = Arc::new(FixedClock::new(ca_core::clock::truncate(Utc::now())));
        let pki =
            TestPki::with(KeyAlgorithm::P256, test_profiles(), urls(), clock.clone()).unwrap();
        let ca = Ca::new(
            pki.issuing_signer.clone(),
            pki.issuing_der.clone(),
            vec![pki.root_der.clone()],
            test_profiles(),
            urls(),
            pki.store.clone(),
            clock.clone(),
        )
        .unwrap()
        .with_crl_shards(scheme(1));
        Setup {
            pki,
            clock,
            ca,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn store(&self) -> Arc<dyn Store> {
        self.pki.store.clone()
    }

    fn publisher(&self, store: Arc<dyn Store>, width_hours: i64) -> CrlPublisher {
        let signer: Arc<dyn Signer> = self.pki.issuing_signer.clone();
        CrlPublisher::new(
            store,
            signer,
            self.pki.issuing_der.clone(),
            self.clock.clone(),
            CrlConfig {
                distribution_point: Some(CRL_URL.into()),
                ..CrlConfig::default()
            },
        )
        .unwrap()
        .with_shards(scheme(width_hours), Duration::minutes(5))
    }

    fn issue(&self, name: &str) -> (CertRecord, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![format!("{name}.test")]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).unwrap().der().to_vec();
        let req = ca_core::csr::parse_der(&csr).unwrap();
        let issued = self
            .ca
            .prepare(
                &req,
                IssueContext::Admin {
                    profile: "mtls",
                    actor: "test",
                    binding: None,
                },
            )
            .unwrap()
            .issue()
            .unwrap();
        let path = self.write(&format!("{name}.pem"), issued.cert_pem().as_bytes());
        (issued.record, path)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn write_crl(&self, name: &str, der: &[u8]) -> PathBuf {
        self.write(name, ca_core::x509::pem_encode("X509 CRL", der).as_bytes())
    }

    fn chain(&self) -> (PathBuf, PathBuf) {
        let root = self.write(
            "root.pem",
            ca_core::x509::pem_encode("CERTIFICATE", &self.pki.root_der).as_bytes(),
        );
        let issuing = self.write(
            "issuing.pem",
            ca_core::x509::pem_encode("CERTIFICATE", &self.pki.issuing_der).as_bytes(),
        );
        (root, issuing)
    }

    /// `openssl verify -crl_check` of `cert` with `crl` (for the leaf; the issuing CA is
    /// trusted directly, so only the leaf needs a CRL).
    fn verify(&self, cert: &Path, crl: &Path) -> (bool, String) {
        let (_, issuing) = self.chain();
        let o = Command::new("openssl")
            .args(["verify", "-partial_chain", "-crl_check", "-attime"])
            .arg(self.clock.now().timestamp().to_string())
            .arg("-CAfile")
            .arg(&issuing)
            .arg("-CRLfile")
            .arg(crl)
            .arg(cert)
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }
}

fn revoke(s: &Setup, p: &CrlPublisher, rec: &CertRecord) {
    s.pki
        .store
        .revoke(&rec.serial, s.clock.now(), RevocationReason::KeyCompromise)
        .unwrap();
    p.note_revoked_serial(&rec.serial);
}

fn cdp_uri(rec: &CertRecord) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(&rec.der).unwrap();
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_CRL_DISTRIBUTION_POINTS)
        .unwrap();
    let x509_parser::extensions::ParsedExtension::CRLDistributionPoints(points) =
        ext.parsed_extension()
    else {
        panic!("CRL distribution points do not parse")
    };
    let Some(x509_parser::extensions::DistributionPointName::FullName(names)) =
        &points.points[0].distribution_point
    else {
        panic!("no full name")
    };
    match &names[0] {
        x509_parser::extensions::GeneralName::URI(u) => u.to_string(),
        other => panic!("{other:?}"),
    }
}

/// The shard CRL openssl matches to a certificate by its distribution point: the revoked one is
/// refused, the good one accepted. The attack: a revocation hidden by serving another shard's
/// CRL (valid, signed, not listing it). openssl refuses that CRL for the certificate because
/// its issuing distribution point is not the certificate's distribution point; the same CRL
/// content without an issuing distribution point would have been accepted (shown), which is
/// what the extension prevents.
#[test]
fn openssl_matches_shard_crls_to_certificates_and_refuses_another_shards_crl() {
    let s = Setup::new();
    let p = s.publisher(s.store(), 1);
    let (good, good_pem) = s.issue("good");
    let (bad, bad_pem) = s.issue("bad");
    let shard = crl_shard_of(&good.der).unwrap();
    assert_eq!(
        crl_shard_of(&bad.der),
        Some(shard),
        "issued in the same second"
    );
    assert_eq!(shard, scheme(1).shard_of(good.not_after));
    assert_eq!(cdp_uri(&good), format!("{CRL_URL}/shard/{shard}"));
    // Two hours later: a certificate in another shard.
    s.clock.set(s.clock.now() + Duration::hours(2));
    let (other, other_pem) = s.issue("other");
    let other_shard = crl_shard_of(&other.der).unwrap();
    assert_ne!(other_shard, shard);

    revoke(&s, &p, &bad);
    let pass = p.regenerate_shards_if_due().unwrap();
    assert!(
        pass.built.contains(&shard) && pass.built.contains(&other_shard),
        "{pass:?}"
    );
    let crl = p.shard(shard).unwrap();
    assert_eq!(crl.entries, 1);
    assert_eq!(
        ca_core::x509::crl_idp_uri(&crl.der).as_deref(),
        Some(format!("{CRL_URL}/shard/{shard}").as_str())
    );
    let shard_crl = s.write_crl("shard.crl.pem", &crl.der);
    let (ok, out) = s.verify(&good_pem, &shard_crl);
    assert!(ok && out.contains(": OK"), "{out}");
    let (ok, out) = s.verify(&bad_pem, &shard_crl);
    assert!(!ok && out.contains("certificate revoked"), "{out}");

    // The attack: the other shard's genuine CRL, served for the revoked certificate.
    let other_crl = p.shard(other_shard).unwrap();
    assert_eq!(other_crl.entries, 0);
    let other_crl_path = s.write_crl("other.crl.pem", &other_crl.der);
    let (ok, out) = s.verify(&bad_pem, &other_crl_path);
    assert!(
        !ok && out.contains("different CRL scope"),
        "another shard's CRL was taken as proof of good status: {out}"
    );
    let (ok, out) = s.verify(&other_pem, &other_crl_path);
    assert!(ok, "{out}");
    // Without the issuing distribution point, the same (empty) CRL would hide the revocation.
    let now = s.clock.now();
    let bare = ca_core::crl::issue_crl(
        &s.pki.issuing_der,
        s.pki.issuing_signer.as_ref(),
        &ca_core::crl::CrlRequest {
            number: 1,
            this_update: now,
            next_update: now + Duration::hours(1),
            entries: &[],
            distribution_point: None,
        },
    )
    .unwrap();
    let bare_path = s.write_crl("bare.crl.pem", &bare.der);
    let (ok, out) = s.verify(&bad_pem, &bare_path);
    assert!(
        ok,
        "control: a CRL without IDP covers every certificate: {out}"
    );

    // The full CRL (no issuing distribution point with shards on) lists the revocation and
    // covers every certificate.
    p.regenerate().unwrap();
    let full = p.current().unwrap();
    assert_eq!(ca_core::x509::crl_idp_uri(&full.der), None);
    let full_path = s.write_crl("full.crl.pem", &full.der);
    let (ok, out) = s.verify(&bad_pem, &full_path);
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let (ok, out) = s.verify(&good_pem, &full_path);
    assert!(ok, "{out}");
}

/// A revocation rebuilds its own shard and no other; a pass with nothing dirty or due builds
/// nothing; the shard's number goes up by its own sequence.
#[test]
fn revoking_in_one_shard_rebuilds_only_that_shard() {
    let s = Setup::new();
    let p = s.publisher(s.store(), 1);
    let (a, _) = s.issue("a");
    s.clock.set(s.clock.now() + Duration::hours(3));
    let (b, _) = s.issue("b");
    let (sa, sb) = (crl_shard_of(&a.der).unwrap(), crl_shard_of(&b.der).unwrap());
    assert_ne!(sa, sb);
    let first = p.regenerate_shards_if_due().unwrap();
    assert!(
        first.built.len() > 2,
        "every live shard is built once: {first:?}"
    );
    let before: Vec<(CrlShard, u64)> = p
        .served_shards()
        .into_iter()
        .map(|s| (s, p.shard(s).unwrap().number))
        .collect();
    assert!(p.regenerate_shards_if_due().unwrap().built.is_empty());

    revoke(&s, &p, &b);
    let pass = p.regenerate_shards_if_due().unwrap();
    assert_eq!(pass.built, vec![sb], "only the revoked certificate's shard");
    for (shard, number) in before {
        let now = p.shard(shard).unwrap().number;
        if shard == sb {
            assert_eq!(now, number + 1);
            assert_eq!(p.shard(shard).unwrap().entries, 1);
        } else {
            assert_eq!(now, number, "shard {shard} was rebuilt");
        }
    }
    // The shard index answers for the shard only.
    let mut listed = Vec::new();
    s.pki
        .store
        .for_each_revoked_in_shard(sb, &mut |e| {
            listed.push(e.serial);
            Ok(())
        })
        .unwrap();
    assert_eq!(listed, vec![b.serial.clone()]);
    let mut none = 0;
    s.pki
        .store
        .for_each_revoked_in_shard(sa, &mut |_| {
            none += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(none, 0);
    // A restart serves the archived shard CRLs and signs none of them again.
    for x in p.served_shards() {
        s.pki.store.release_lease(&x.lease(), p.holder()).unwrap();
    }
    let restarted = s.publisher(s.store(), 1);
    let pass = restarted.regenerate_shards_if_due().unwrap();
    assert!(pass.built.is_empty(), "{pass:?}");
    assert_eq!(
        restarted.shard(sb).unwrap().number,
        p.shard(sb).unwrap().number
    );
}

/// The shard is fixed at issuance: after the operator changes the width, a certificate issued
/// before is still listed on the shard its distribution point names, which is still published
/// and refreshed.
#[test]
fn a_certificates_shard_does_not_change_with_the_width() {
    let s = Setup::new();
    let old = s.publisher(s.store(), 1);
    // A certificate whose 1-hour window is not also a 2-hour window (ids of the two widths
    // coincide every other hour).
    let (rec, pem) = loop {
        let (rec, pem) = s.issue("kept");
        if !crl_shard_of(&rec.der).unwrap().0.is_multiple_of(7200) {
            break (rec, pem);
        }
        s.clock.set(s.clock.now() + Duration::hours(1));
    };
    let shard = crl_shard_of(&rec.der).unwrap();
    old.regenerate_shards_if_due().unwrap();
    // The old process is gone (its leases with it: sled keeps them in memory).
    for x in old.served_shards() {
        s.pki.store.release_lease(&x.lease(), old.holder()).unwrap();
    }
    drop(old);
    // Restart with 2-hour shards: new certificates name other shards, this one keeps its own.
    let new = s.publisher(s.store(), 2);
    assert_ne!(scheme(2).shard_of(rec.not_after), shard);
    revoke(&s, &new, &rec);
    let pass = new.regenerate_shards_if_due().unwrap();
    assert!(pass.built.contains(&shard), "{pass:?}");
    let crl = new.shard(shard).unwrap();
    assert_eq!(crl.entries, 1);
    let path = s.write_crl("kept.crl.pem", &crl.der);
    let (ok, out) = s.verify(&pem, &path);
    assert!(!ok && out.contains("certificate revoked"), "{out}");
}

/// pkilint finds nothing in a shard CRL (with an entry and empty) nor in a certificate that
/// names its shard.
#[test]
fn shard_crls_and_certificates_naming_them_have_no_pkilint_findings() {
    use testkit::pkilint::{self, Check};
    let s = Setup::new();
    let p = s.publisher(s.store(), 1);
    let (good, good_pem) = s.issue("lint-good");
    let (bad, _) = s.issue("lint-bad");
    revoke(&s, &p, &bad);
    p.regenerate_shards_if_due().unwrap();
    let shard = crl_shard_of(&good.der).unwrap();
    let with_entry = s.write("shard.crl", &p.shard(shard).unwrap().der);
    let empty_shard = p.served_shards().into_iter().find(|x| *x != shard).unwrap();
    let empty = s.write("empty-shard.crl", &p.shard(empty_shard).unwrap().der);
    p.regenerate().unwrap();
    let full = s.write("full.crl", &p.current().unwrap().der);
    let (_, issuing) = s.chain();
    let reports = pkilint::run(&[
        Check::crl("shard CRL with an entry", &with_entry),
        Check::crl("empty shard CRL", &empty),
        Check::crl("full CRL with shards on", &full),
        Check::certificate("certificate naming its shard", &good_pem),
        Check::issued_by(
            "certificate naming its shard, by issuing CA",
            &issuing,
            &good_pem,
        ),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    if let Some(findings) = pkilint::failures(&reports, pkilint::FALSE_POSITIVES) {
        panic!("{findings}");
    }
}

/// Two nodes on one PostgreSQL database: each builds a shard's CRL when it holds the shard's
/// lease, the other serves what it archived, and the shard's CRL numbers only go up, whoever
/// built them.
#[test]
fn two_nodes_on_postgres_number_each_shards_crls_upwards() {
    let s = Setup::new();
    let server = testkit::pg::PgServer::shared().unwrap();
    let db = server.fresh_database().unwrap();
    let a: Arc<dyn Store> = Arc::new(ca_core::store::PgStore::open(db.url()).unwrap());
    let b: Arc<dyn Store> = Arc::new(ca_core::store::PgStore::open(db.url()).unwrap());
    let (rec, _) = s.issue("pg");
    assert!(a.insert_cert(&rec).unwrap());
    let shard = crl_shard_of(&rec.der).unwrap();
    let pa = s.publisher(a.clone(), 1);
    let pb = s.publisher(b.clone(), 1);
    let mut numbers = Vec::new();
    pa.regenerate_shards_if_due().unwrap();
    numbers.push(pa.shard(shard).unwrap().number);
    // B builds nothing: it serves what A archived (and A holds the leases).
    let pass = pb.regenerate_shards_if_due().unwrap();
    assert!(pass.built.is_empty(), "{pass:?}");
    assert_eq!(pb.shard(shard).unwrap().number, numbers[0]);
    // Dirty on B too (it follows revocations): B may not build while A holds the lease.
    pb.note_revoked_serial(&rec.serial);
    pb.mark_all_shards_dirty();
    let pass = pb.regenerate_shards_if_due().unwrap();
    assert!(pass.built.is_empty() && pass.left_to_others > 0, "{pass:?}");
    for round in 0..4 {
        // The revocation happens on B; the builder alternates as leases lapse.
        if round == 0 {
            b.revoke(&rec.serial, s.clock.now(), RevocationReason::Superseded)
                .unwrap();
        }
        let (builder, other) = if round % 2 == 0 {
            (&pb, &pa)
        } else {
            (&pa, &pb)
        };
        // The previous builder gives the shard's lease up (as after a failed build, or when
        // its lease lapses).
        a.release_lease(&shard.lease(), other.holder()).unwrap();
        builder.note_revoked_serial(&rec.serial);
        let pass = builder.regenerate_shards_if_due().unwrap();
        assert!(pass.built.contains(&shard), "round {round}: {pass:?}");
        let crl = builder.shard(shard).unwrap();
        assert_eq!(crl.entries, 1);
        numbers.push(crl.number);
        assert!(other.adopt_archived_shard(shard).unwrap());
        assert_eq!(other.shard(shard).unwrap().number, crl.number);
    }
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "shard CRL numbers {numbers:?}"
    );
}

fn openssl_text(s: &Setup, name: &str, der: &[u8]) -> String {
    let path = s.write(name, der);
    let o = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Delta CRLs (RFC 5280 5.2.4) of the full CRL: the base names the delta in its Freshest CRL
/// extension; a delta names its base's number in a critical delta CRL indicator, shares the
/// base's number sequence, and lists what was revoked since the base. openssl applies the
/// delta to its base (`-use_deltas`): a certificate revoked after the base is refused with
/// both, accepted with the base alone. A new base starts a new, empty delta. pkilint finds
/// nothing in either.
#[test]
fn delta_crls_apply_to_their_base_with_openssl() {
    use testkit::pkilint::{self, Check};
    let s = Setup::new();
    let p = s.publisher(s.store(), 1);
    let (early, early_pem) = s.issue("early");
    let (late, late_pem) = s.issue("late");
    let (_, good_pem) = s.issue("still-good");
    revoke(&s, &p, &early);
    let base = p.regenerate().unwrap();
    assert_eq!(base.entries, 1);
    let empty = p
        .regenerate_delta_if_due()
        .unwrap()
        .expect("a delta for the new base");
    assert_eq!(empty.entries, 0);
    assert!(
        p.regenerate_delta_if_due().unwrap().is_none(),
        "nothing changed"
    );
    revoke(&s, &p, &late);
    let delta = p.regenerate_delta_if_due().unwrap().unwrap();
    assert_eq!(delta.entries, 1);
    assert!(delta.number > empty.number && empty.number > base.number);
    assert_eq!(p.delta().unwrap().number, delta.number);

    let text = openssl_text(&s, "base.der", &base.der);
    assert!(text.contains("Freshest CRL"), "{text}");
    assert!(text.contains(&format!("{CRL_URL}/delta")), "{text}");
    let text = openssl_text(&s, "delta.der", &delta.der);
    assert!(text.contains("Delta CRL Indicator: critical"), "{text}");

    let (_, issuing) = s.chain();
    let base_pem = s.write_crl("base.pem", &base.der);
    let delta_pem = s.write_crl("delta.pem", &delta.der);
    let verify = |cert: &Path, crls: &[&Path]| {
        let mut c = Command::new("openssl");
        c.args([
            "verify",
            "-partial_chain",
            "-crl_check",
            "-use_deltas",
            "-attime",
        ])
        .arg(s.clock.now().timestamp().to_string())
        .arg("-CAfile")
        .arg(&issuing);
        for crl in crls {
            c.arg("-CRLfile").arg(crl);
        }
        let o = c.arg(cert).output().unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (ok, out) = verify(&late_pem, &[&base_pem]);
    assert!(ok, "the base alone does not list it: {out}");
    let (ok, out) = verify(&late_pem, &[&base_pem, &delta_pem]);
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let (ok, out) = verify(&early_pem, &[&base_pem, &delta_pem]);
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let (ok, out) = verify(&good_pem, &[&base_pem, &delta_pem]);
    assert!(ok, "{out}");

    let base_der = s.write("base.crl", &base.der);
    let delta_der = s.write("delta.crl", &delta.der);
    let reports = pkilint::run(&[
        Check::crl("full CRL with Freshest CRL", &base_der),
        Check::crl("delta CRL", &delta_der),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    if let Some(findings) = pkilint::failures(&reports, pkilint::FALSE_POSITIVES) {
        panic!("{findings}");
    }

    // A new base lists both; its first delta is empty.
    let base2 = p.regenerate().unwrap();
    assert_eq!(base2.entries, 2);
    let delta2 = p.regenerate_delta_if_due().unwrap().unwrap();
    assert_eq!(delta2.entries, 0);
    assert!(delta2.number > base2.number);

    // After a restart the node does not know what was revoked since the archived base: it
    // signs no delta (one that missed a revocation would vouch for the certificate) until it
    // has built a base of its own.
    let restarted = s.publisher(s.store(), 1);
    restarted.adopt_archived().unwrap();
    let (third, _) = s.issue("third");
    revoke(&s, &restarted, &third);
    assert!(restarted.regenerate_delta_if_due().unwrap().is_none());
    restarted.regenerate().unwrap();
    let (fourth, _) = s.issue("fourth");
    revoke(&s, &restarted, &fourth);
    let d = restarted.regenerate_delta_if_due().unwrap().unwrap();
    assert_eq!(d.entries, 1);
}

/// Whoever can write the database cannot make a node serve one shard's CRL as another's: the
/// archived CRL of a scope is served only if its issuing distribution point is that shard's
/// URL (besides this issuer's signature and the stored number).
#[test]
fn a_crl_archived_under_another_shards_scope_is_not_served() {
    let s = Setup::new();
    let p = s.publisher(s.store(), 1);
    let (bad, _) = s.issue("scope-bad");
    s.clock.set(s.clock.now() + Duration::hours(2));
    let (other, _) = s.issue("scope-other");
    let (x, y) = (
        crl_shard_of(&bad.der).unwrap(),
        crl_shard_of(&other.der).unwrap(),
    );
    revoke(&s, &p, &bad);
    p.regenerate_shards_if_due().unwrap();
    // Shard Y's CRL, numbered above X's, written under X's scope.
    let mut forged = p.shard(y).unwrap();
    while forged.number <= p.shard(x).unwrap().number + 1 {
        // Marks Y dirty (the certificate names Y; that it is not revoked does not matter).
        p.note_revoked_serial(&other.serial);
        p.regenerate_shards_if_due().unwrap();
        forged = p.shard(y).unwrap();
    }
    assert!(s
        .pki
        .store
        .put_crl(&ca_core::store::StoredCrl {
            scope: x.scope(),
            number: forged.number,
            der: forged.der.clone(),
            this_update: forged.this_update,
            next_update: forged.next_update,
        })
        .unwrap());
    let node = s.publisher(s.store(), 1);
    assert!(!node.adopt_archived_shard(x).unwrap());
    assert!(node.shard(x).is_none());
}

/// rustls-webpki's verdict (strict: unknown status and expired CRLs refused) on a clientAuth
/// certificate of this PKI with `crl_der`, at the test clock's time.
fn webpki_verdict(s: &Setup, leaf: &[u8], crl_der: &[u8]) -> Result<(), webpki::Error> {
    use rustls::pki_types::{CertificateDer, UnixTime};
    use webpki::{
        CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
        RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
    };
    let root = CertificateDer::from(s.pki.root_der.clone());
    let anchors = vec![webpki::anchor_from_trusted_cert(&root).unwrap().to_owned()];
    let crl = CertRevocationList::Owned(OwnedCertRevocationList::from_der(crl_der).unwrap());
    let crls = [&crl];
    let revocation = RevocationOptionsBuilder::new(&crls)
        .unwrap()
        .with_depth(RevocationCheckDepth::EndEntity)
        .with_status_policy(UnknownStatusPolicy::Deny)
        .with_expiration_policy(ExpirationPolicy::Enforce)
        .build();
    let leaf = CertificateDer::from(leaf.to_vec());
    let ee = EndEntityCert::try_from(&leaf).unwrap();
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        s.clock.now().timestamp() as u64
    ));
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &[CertificateDer::from(s.pki.issuing_der.clone())],
        now,
        KeyUsage::client_auth(),
        Some(revocation),
        None,
    )
    .map(|_| ())
}

/// The same attack against rustls-webpki, which compares a CRL's issuing distribution point
/// with the certificate's distribution point: another shard's CRL is not authoritative for a
/// certificate (unknown status, refused by the strict policy), never proof of good status.
#[test]
fn rustls_webpki_refuses_another_shards_crl_for_a_revoked_certificate() {
    let s = Setup::new();
    let p = s.publisher(s.store(), 1);
    let (bad, _) = s.issue("wp-bad");
    s.clock.set(s.clock.now() + Duration::hours(2));
    let (other, _) = s.issue("wp-other");
    let (shard, other_shard) = (
        crl_shard_of(&bad.der).unwrap(),
        crl_shard_of(&other.der).unwrap(),
    );
    assert_ne!(shard, other_shard);
    revoke(&s, &p, &bad);
    p.regenerate_shards_if_due().unwrap();
    let own = p.shard(shard).unwrap();
    let another = p.shard(other_shard).unwrap();
    assert_eq!(
        webpki_verdict(&s, &bad.der, &own.der),
        Err(webpki::Error::CertRevoked)
    );
    assert_eq!(
        webpki_verdict(&s, &bad.der, &another.der),
        Err(webpki::Error::UnknownRevocationStatus),
        "another shard's CRL must not vouch for the revoked certificate"
    );
    assert_eq!(webpki_verdict(&s, &other.der, &another.der), Ok(()));
    p.regenerate().unwrap();
    assert_eq!(
        webpki_verdict(&s, &bad.der, &p.current().unwrap().der),
        Err(webpki::Error::CertRevoked),
        "the full CRL covers every certificate"
    );
}
