//! What the Debian packages install from dist/ (README "Packages"): the default configuration
//! files are valid for this version (strict parsing: an unknown or renamed key fails here, not
//! on an operator's machine), name no secret, and are the files the units start with.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ca_core::signer::pkcs11::PinSource;
use ca_server::config::ServerConfig;
use ca_server::ocsp_node::OcspNodeConfig;
use std::path::{Path, PathBuf};

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist")
}

#[test]
fn the_default_server_config_checks_and_holds_no_secret() {
    let cfg = ServerConfig::load(&dist().join("etc/ca/ca.toml")).unwrap();
    assert_eq!(
        cfg.data_dir,
        Path::new("/var/lib/ca"),
        "the unit's StateDirectory"
    );
    assert!(
        matches!(&cfg.hsm.pin, PinSource::File(p) if p == Path::new("/etc/ca/hsm.pin")),
        "{:?}",
        cfg.hsm.pin
    );
}

#[test]
fn the_default_stateless_responder_config_parses() {
    let cfg = OcspNodeConfig::load(&dist().join("etc/ca/ocsp.toml")).unwrap();
    assert_eq!(cfg.ca_certificate, Path::new("/etc/ca/intermediate.pem"));
}

/// Each unit starts `/usr/bin/<binary> <command> --config <file>` with a file the packages
/// ship, and the CA units run as the package's system user.
#[test]
fn the_units_start_the_shipped_configs() {
    for (unit, command, config, user) in [
        (
            "ca-server.service",
            "ca-server serve",
            "etc/ca/ca.toml",
            Some("ca-server"),
        ),
        (
            "ca-server-ocsp.service",
            "ca-server ocsp",
            "etc/ca/ocsp.toml",
            Some("ca-server"),
        ),
        (
            "ca-agent.service",
            "ca-agent run",
            "etc/ca-agent/agent.toml",
            None,
        ),
    ] {
        let text = std::fs::read_to_string(dist().join("systemd").join(unit)).unwrap();
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_string)
        };
        assert_eq!(
            value("ExecStart").as_deref(),
            Some(format!("/usr/bin/{command} --config /{config}").as_str()),
            "{unit}"
        );
        assert!(
            dist().join(config).is_file(),
            "{unit}: {config} not in dist/"
        );
        assert_eq!(value("User").as_deref(), user, "{unit}");
        assert_eq!(value("Restart").as_deref(), Some("on-failure"), "{unit}");
        assert_eq!(value("NoNewPrivileges").as_deref(), Some("yes"), "{unit}");
        assert_eq!(value("ProtectSystem").as_deref(), Some("strict"), "{unit}");
        if user.is_some() {
            assert_eq!(
                value("CapabilityBoundingSet").as_deref(),
                Some(""),
                "{unit}"
            );
        }
    }
    let sysusers = std::fs::read_to_string(dist().join("sysusers/ca-server.conf")).unwrap();
    assert!(
        sysusers
            .lines()
            .any(|l| l.starts_with("u ca-server - ") && l.contains(" /var/lib/ca ")),
        "{sysusers}"
    );
}
