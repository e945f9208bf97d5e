//! Bad configurations are refused with the field path, before any HSM operation.
//!
//! This test process never provisions a token: had validation let a configuration through, the
//! run would fail with a token error from the HSM instead of the configuration error asserted
//! here. Inputs (root and intermediate certificates, the issuing public key) are made with
//! software keys.

mod common;

use ceremonies::run::{run, Outcome, Rehearsal, RunOptions};
use ceremonies::Error;
use common::{set, EXAMPLES};
use std::path::Path;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        for entry in std::fs::read_dir(EXAMPLES).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, p(path.file_name().unwrap().to_str().unwrap())).unwrap();
        }
        std::fs::create_dir(p("hsm")).unwrap();
        std::fs::write(p("hsm/so.pin"), "so-pin").unwrap();
        std::fs::write(p("hsm/online.pin"), "user-pin").unwrap();

        // Inputs of the later ceremonies, made in software.
        let now = time::OffsetDateTime::now_utc();
        let root_key = rcgen::KeyPair::generate().unwrap();
        let mut root = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        root.distinguished_name
            .push(rcgen::DnType::CommonName, "Software Root");
        root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        root.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        root.not_before = now - time::Duration::days(1);
        root.not_after = now + time::Duration::days(3650);
        let root_cert = root.self_signed(&root_key).unwrap();
        std::fs::write(p("root.pem"), root_cert.pem()).unwrap();
        let issuing_key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(p("issuing-ca.pub.pem"), issuing_key.public_key_pem()).unwrap();
        let mut inter = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        inter
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Software Intermediate");
        inter.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        inter.not_before = now - time::Duration::hours(1);
        inter.not_after = now + time::Duration::days(100);
        let issuer = rcgen::Issuer::new(root, root_key);
        std::fs::write(
            p("intermediate.pem"),
            inter.signed_by(&issuing_key, &issuer).unwrap().pem(),
        )
        .unwrap();

        let f = Fixture { dir };
        // Outputs must not exist: point the ceremonies that would write over the inputs elsewhere.
        f.edit("root.toml", |t| set(t, "root.certificate", "new-root.pem"));
        f.edit("key.toml", |t| {
            set(t, "key.public_key", "new-issuing-ca.pub.pem")
        });
        f.edit("intermediate.toml", |t| {
            set(t, "intermediate.certificate", "new-intermediate.pem")
        });
        // No shares and no history here: the root-key ceremonies list their officers as
        // witnesses only, so a dry run validates them without the quorum.
        for name in ["intermediate.toml", "crl.toml", "ocsp-response.toml"] {
            f.edit(name, |t| {
                for o in officers(t) {
                    o.as_table_mut().unwrap().remove("share");
                }
            });
        }
        f
    }

    fn path(&self, n: &str) -> std::path::PathBuf {
        self.dir.path().join(n)
    }

    fn edit(&self, name: &str, f: impl FnOnce(&mut toml::Table)) {
        let mut table: toml::Table =
            toml::from_str(&std::fs::read_to_string(self.path(name)).unwrap()).unwrap();
        f(&mut table);
        std::fs::write(self.path(name), toml::to_string(&table).unwrap()).unwrap();
    }

    fn run(&self, file: &Path, dry_run: bool) -> Result<Outcome, Error> {
        let opts = RunOptions {
            dry_run,
            rehearsal: true,
            ..RunOptions::default()
        };
        run(file, &opts, &mut Rehearsal(std::io::sink()))
    }
}

type Edit = fn(&mut toml::Table);

fn remove(t: &mut toml::Table, dotted: &str) {
    let parts: Vec<&str> = dotted.split('.').collect();
    let (last, parents) = parts.split_last().unwrap();
    let mut cur = t;
    for p in parents {
        cur = cur.get_mut(*p).unwrap().as_table_mut().unwrap();
    }
    assert!(cur.remove(*last).is_some(), "{dotted} not in the example");
}

fn officers(t: &mut toml::Table) -> &mut Vec<toml::Value> {
    t.get_mut("officers").unwrap().as_array_mut().unwrap()
}

#[test]
fn every_class_of_bad_configuration_is_refused_with_its_field_path() {
    let fx = Fixture::new();
    // The unmodified configurations pass validation (dry run), so each row fails for its edit.
    for name in [
        "root.toml",
        "key.toml",
        "intermediate.toml",
        "ocsp-signer.toml",
        "crl.toml",
        "ocsp-response.toml",
    ] {
        match fx.run(&fx.path(name), true) {
            Ok(Outcome::Planned { .. }) => {}
            other => panic!("{name} should validate: {other:?}"),
        }
    }

    let rows: Vec<(&str, &str, Edit, &str)> = vec![
        (
            "unknown top-level field",
            "root.toml",
            |t| set(t, "colour", "blue"),
            "colour",
        ),
        (
            "unknown nested field",
            "root.toml",
            |t| set(t, "root.subject.nickname", "x"),
            "root.subject.nickname",
        ),
        (
            "unknown officer field",
            "intermediate.toml",
            |t| {
                officers(t)[1]
                    .as_table_mut()
                    .unwrap()
                    .insert("badge".into(), 7.into());
            },
            "officers[1].badge",
        ),
        (
            "unknown kind",
            "root.toml",
            |t| set(t, "kind", "bogus"),
            "kind",
        ),
        (
            "validity beyond the root's",
            "intermediate.toml",
            |t| set(t, "intermediate.validity.days", 20_000),
            "intermediate.validity",
        ),
        (
            "validity before the root's",
            "intermediate.toml",
            |t| {
                set(
                    t,
                    "intermediate.validity.not_before",
                    "2001-01-01T00:00:00Z",
                );
                set(t, "intermediate.validity.days", 12_000);
            },
            "intermediate.validity",
        ),
        (
            "OCSP signer beyond the intermediate",
            "ocsp-signer.toml",
            |t| set(t, "ocsp_signer.validity.days", 200),
            "ocsp_signer.validity",
        ),
        (
            "OCSP signer not short-lived",
            "ocsp-signer.toml",
            |t| set(t, "ocsp_signer.validity.days", 400),
            "ocsp_signer.validity",
        ),
        (
            "two lifetimes",
            "root.toml",
            |t| set(t, "root.validity.hours", 5),
            "root.validity",
        ),
        (
            "no officer",
            "root.toml",
            |t| set(t, "officers", toml::Value::Array(vec![])),
            "officers",
        ),
        (
            "officer without a name",
            "root.toml",
            |t| {
                officers(t)[1].as_table_mut().unwrap().remove("name");
            },
            "officers[1]",
        ),
        (
            "officer listed twice",
            "root.toml",
            |t| {
                let first = officers(t)[0].clone();
                let mut dup = first.as_table().unwrap().clone();
                dup.insert("share".into(), "shares/dup.share".into());
                officers(t).push(toml::Value::Table(dup));
            },
            "officers[3].name",
        ),
        (
            "operator not an officer",
            "root.toml",
            |t| set(t, "operator", "Mallory"),
            "operator",
        ),
        (
            "quorum m > n",
            "root.toml",
            |t| set(t, "quorum.threshold", 4),
            "quorum.threshold",
        ),
        (
            "quorum of one",
            "root.toml",
            |t| set(t, "quorum.threshold", 1),
            "quorum.threshold",
        ),
        ("no quorum", "root.toml", |t| remove(t, "quorum"), "quorum"),
        (
            "quorum outside a root ceremony",
            "crl.toml",
            |t| set(t, "quorum.threshold", 2),
            "quorum",
        ),
        (
            "no security officer PIN",
            "root.toml",
            |t| remove(t, "root_token.so_pin"),
            "root_token.so_pin",
        ),
        (
            "missing PIN file",
            "key.toml",
            |t| {
                set(
                    t,
                    "online_token.pin",
                    common::pin_file(Path::new("hsm/absent.pin")),
                )
            },
            "online_token.pin",
        ),
        (
            "audit checkpoint key is the issuing key",
            "key.toml",
            |t| set(t, "key.audit_key_label", "issuing-ca"),
            "key.audit_key_label",
        ),
        (
            "audit checkpoint key without its public key output",
            "key.toml",
            |t| remove(t, "key.audit_public_key"),
            "key.audit_public_key",
        ),
        (
            "section of another kind",
            "key.toml",
            |t| set(t, "kind", "crl"),
            "crl",
        ),
        (
            "token the kind does not use",
            "key.toml",
            |t| {
                set(t, "root_token.label", "root");
                set(t, "root_token.key_label", "root-ca");
            },
            "root_token",
        ),
        (
            "share in a ceremony without quorum",
            "key.toml",
            |t| {
                officers(t)[0]
                    .as_table_mut()
                    .unwrap()
                    .insert("share".into(), "shares/alice.share".into());
            },
            "officers[0].share",
        ),
        (
            "bad country",
            "root.toml",
            |t| set(t, "root.subject.country", "USA"),
            "root.subject.country",
        ),
        (
            "empty common name",
            "root.toml",
            |t| set(t, "root.subject.common_name", " "),
            "root.subject.common_name",
        ),
        (
            "common name over the RFC 5280 upper bound",
            "root.toml",
            |t| set(t, "root.subject.common_name", "x".repeat(65)),
            "root.subject.common_name",
        ),
        (
            "locality over the RFC 5280 upper bound",
            "intermediate.toml",
            |t| set(t, "intermediate.subject.locality", "x".repeat(129)),
            "intermediate.subject.locality",
        ),
        (
            "no CRL URL",
            "intermediate.toml",
            |t| set(t, "intermediate.crl_urls", toml::Value::Array(vec![])),
            "intermediate.crl_urls",
        ),
        (
            "bad CRL URL",
            "intermediate.toml",
            |t| {
                set(
                    t,
                    "intermediate.crl_urls",
                    vec!["ldap://x/root.crl".to_string()],
                )
            },
            "intermediate.crl_urls[0]",
        ),
        (
            "bad CIDR",
            "intermediate.toml",
            |t| {
                set(
                    t,
                    "intermediate.name_constraints.permitted_ip",
                    vec!["10.0.0.0/33".to_string()],
                )
            },
            "intermediate.name_constraints.permitted_ip[0]",
        ),
        (
            "unknown EKU",
            "intermediate.toml",
            |t| {
                set(
                    t,
                    "intermediate.extended_key_usage",
                    vec!["anything".to_string()],
                )
            },
            "intermediate.extended_key_usage[0]",
        ),
        (
            "issuing key label reused",
            "ocsp-signer.toml",
            |t| set(t, "ocsp_signer.key_label", "issuing-ca"),
            "ocsp_signer.key_label",
        ),
        (
            "bad revoked serial",
            "crl.toml",
            |t| {
                let mut r = toml::Table::new();
                r.insert("serial".into(), "xyz".into());
                set(
                    t,
                    "crl.revoked",
                    toml::Value::Array(vec![toml::Value::Table(r)]),
                );
            },
            "crl.revoked[0].serial",
        ),
        (
            "bad revocation reason",
            "crl.toml",
            |t| {
                let mut r = toml::Table::new();
                r.insert("serial".into(), "01".into());
                r.insert("reason".into(), "because".into());
                set(
                    t,
                    "crl.revoked",
                    toml::Value::Array(vec![toml::Value::Table(r)]),
                );
            },
            "crl.revoked[0].reason",
        ),
        (
            "removeFromCRL in a complete CRL",
            "crl.toml",
            |t| {
                let mut r = toml::Table::new();
                r.insert("serial".into(), "01".into());
                r.insert("reason".into(), "removeFromCRL".into());
                set(
                    t,
                    "crl.revoked",
                    toml::Value::Array(vec![toml::Value::Table(r)]),
                );
            },
            "crl.revoked[0].reason",
        ),
        (
            "CRL valid too long",
            "crl.toml",
            |t| set(t, "crl.next_update.days", 400),
            "crl.next_update",
        ),
        (
            "OCSP response valid too long",
            "ocsp-response.toml",
            |t| set(t, "ocsp_response.validity.days", 400),
            "ocsp_response.validity",
        ),
        (
            // CA/B Forum BR 4.9.10: twelve months, not the 366 days other short-lived
            // artifacts may have.
            "OCSP response valid 366 days",
            "ocsp-response.toml",
            |t| set(t, "ocsp_response.validity.days", 366),
            "ocsp_response.validity",
        ),
        (
            "OCSP response valid 365 days and an hour",
            "ocsp-response.toml",
            |t| {
                let r = t["ocsp_response"].as_table_mut().unwrap();
                r.remove("validity");
                let mut v = toml::Table::new();
                v.insert("hours".into(), toml::Value::Integer(365 * 24 + 1));
                r.insert("validity".into(), toml::Value::Table(v));
            },
            "ocsp_response.validity",
        ),
        (
            "reason for a good status",
            "ocsp-response.toml",
            |t| set(t, "ocsp_response.reason", "superseded"),
            "ocsp_response.reason",
        ),
        (
            "bad time",
            "root.toml",
            |t| set(t, "root.validity.not_before", "yesterday"),
            "root.validity.not_before",
        ),
    ];
    let before: Vec<_> = std::fs::read_dir(fx.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for (what, name, edit, expected_path) in rows {
        let file = fx.path(&format!("bad-{name}"));
        std::fs::copy(fx.path(name), &file).unwrap();
        fx.edit(file.file_name().unwrap().to_str().unwrap(), edit);
        match fx.run(&file, false) {
            Err(Error::Config {
                path,
                reason,
                file: f,
            }) => {
                assert_eq!(path, expected_path, "{what}: {reason}");
                assert_eq!(f, file, "{what}");
            }
            other => {
                panic!("{what}: expected a configuration error at {expected_path}, got {other:?}")
            }
        }
        std::fs::remove_file(&file).unwrap();
    }
    let after: Vec<_> = std::fs::read_dir(fx.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before, after, "a refused configuration wrote something");
    assert!(!fx.path("transcripts").exists());
    assert!(!fx.path("shares").exists());
}

#[test]
fn existing_outputs_and_unreadable_inputs_are_refused_before_the_hsm() {
    let fx = Fixture::new();
    fx.edit("root.toml", |t| set(t, "root.certificate", "root.pem"));
    assert!(
        matches!(fx.run(&fx.path("root.toml"), false), Err(Error::OutputExists(p)) if p == fx.path("root.pem"))
    );
    fx.edit("intermediate.toml", |t| {
        set(t, "intermediate.public_key", "absent.pem")
    });
    assert!(matches!(
        fx.run(&fx.path("intermediate.toml"), false),
        Err(Error::Read { .. })
    ));
    fx.edit("intermediate.toml", |t| {
        set(t, "intermediate.public_key", "intermediate.pem")
    });
    assert!(matches!(
        fx.run(&fx.path("intermediate.toml"), false),
        Err(Error::Input { .. })
    ));
    // The issuer must be a CA certificate.
    std::fs::write(fx.path("leaf.pem"), {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["leaf.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    })
    .unwrap();
    fx.edit("ocsp-signer.toml", |t| {
        set(t, "ocsp_signer.issuer_certificate", "leaf.pem")
    });
    assert!(
        matches!(fx.run(&fx.path("ocsp-signer.toml"), false), Err(Error::Config { path, .. }) if path == "ocsp_signer.issuer_certificate")
    );
}
