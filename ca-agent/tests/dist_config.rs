//! The agent configuration the Debian package installs (dist/etc/ca-agent/agent.toml, README
//! "Packages") is valid for this version, and its paths are where the package and its unit
//! expect them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn the_default_agent_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/etc/ca-agent/agent.toml");
    let cfg = ca_agent::config::Config::load(&path).unwrap();
    assert_eq!(cfg.state_dir, Path::new("/var/lib/ca-agent"));
    assert_eq!(cfg.certificates.len(), 1);
    let host = &cfg.certificates[0];
    assert_eq!(host.name, "host");
    // /etc/ca-agent is writable for the unit (ReadWritePaths) and made by the postinst.
    assert!(host.key.starts_with("/etc/ca-agent/tls"), "{:?}", host.key);
    assert!(
        host.cert.starts_with("/etc/ca-agent/tls"),
        "{:?}",
        host.cert
    );
}
