//! Break-glass: `ca-server admin-cert create --offline --config FILE --role ROLE --name NAME
//! --out DIR` mints an administrator certificate (normally a security officer's) without the
//! API, for when no administrator who could do it is left (every security-officer certificate
//! revoked or expired, or their keys lost).
//!
//! Whoever runs it needs what the server itself needs: the configuration, the HSM PIN (from
//! the configured source) and the store on the CA host. It works on a **stopped** server
//! only: the store (sled) is locked by the process that has it open, so while the server runs
//! the command waits briefly for the lock and then refuses, saying so; stop the server, run
//! it, start the server again. The certificate goes through the normal issuance path (profile
//! `_admin`, the same checks and post-signature verification as every certificate), and the
//! audit log records it (`admin_cert.create`, detail `break-glass` with the OS user and host)
//! in the same unit of work as the certificate. The key is generated here and written with the
//! certificate, both mode 0600; existing files are never overwritten.

use crate::auth::{is_valid_security_officer, Role};
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::server;
use crate::service::{Request, ADMIN_PROFILE};
use anyhow::Context;
use ca_core::audit::NewAuditEvent;
use ca_core::store::IdentityBinding;
use ca_core::x509::pem_encode;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a break-glass run produced.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Minted {
    /// Serial (hex).
    pub serial: String,
    /// Role the certificate grants (e.g. `security-officer`).
    pub role: &'static str,
    /// notAfter (RFC 3339).
    pub not_after: String,
    /// Certificate file (PEM, 0600).
    pub certificate: PathBuf,
    /// Key file (PEM PKCS#8, 0600).
    pub key: PathBuf,
    /// Valid security-officer certificates before this one.
    pub security_officers_before: usize,
}

/// Who runs the command, for the audit log: the OS user (name and uid) and the host.
pub(crate) fn operator_identity() -> (String, String) {
    use std::os::unix::fs::MetadataExt;
    let name = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid().to_string())
        .unwrap_or_else(|_| "?".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    (format!("{name} (uid {uid})"), host)
}

/// Mint an administrator certificate offline (see the module documentation).
pub(crate) async fn create(
    config: &Path,
    role: Role,
    name: &str,
    out: &Path,
) -> anyhow::Result<Minted> {
    let cfg = ServerConfig::load(config)?;
    if let Some(conf) = &cfg.hsm.softhsm_conf {
        server::reexec_for_softhsm(conf)?;
    }
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        anyhow::bail!("--name must be 1-64 printable characters");
    }
    if name.contains('/') || name.starts_with('.') {
        anyhow::bail!("--name {name:?} cannot be a file name (it names NAME.crt and NAME.key)");
    }
    let cert_path = out.join(format!("{name}.crt"));
    let key_path = out.join(format!("{name}.key"));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            anyhow::bail!("{} exists; refusing to overwrite it", p.display());
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let store_dir = cfg.data_dir.join("store");
    let owned = cfg.clone();
    let parts = tokio::task::spawn_blocking(move || {
        server::parts_from_config(&owned, Arc::new(Metrics::new()))
    })
    .await?
    .map_err(|e| {
        let chain = format!("{e:#}");
        if chain.contains("could not acquire lock") || chain.contains("WouldBlock") {
            anyhow::anyhow!(
                "the store {} is in use, most likely by a running ca-server: break-glass works on \
                 a stopped server only. Stop the server, run this command again, then start the \
                 server ({chain})",
                store_dir.display()
            )
        } else {
            e.context("opening the HSM and the store named by the configuration")
        }
    })?;
    let assembled = server::ServerBuilder::new(parts).assemble().await?;
    let state = assembled.state.clone();

    let now = state.clock.now();
    let store = state.store.clone();
    let before = tokio::task::spawn_blocking(move || {
        let mut n = 0usize;
        store.for_each_cert(&mut |r| {
            if is_valid_security_officer(&r, now) {
                n += 1;
            }
            Ok(())
        })?;
        Ok::<_, ca_core::Error>(n)
    })
    .await??;

    let (os_user, host) = operator_identity();
    let actor = format!("break-glass: {os_user}@{host}");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let csr = params.serialize_request(&key)?;
    let csr = ca_core::csr::parse_der(csr.der())?;
    let (detail_user, detail_host, detail_config) =
        (os_user.clone(), host.clone(), config.display().to_string());
    let audit_actor = actor.clone();
    let outcome = state
        .issue_audited(
            csr,
            Request::Admin {
                profile: ADMIN_PROFILE.into(),
                actor: actor.clone(),
                binding: IdentityBinding {
                    common_name: Some(name.into()),
                    sans: vec![role.san()],
                },
            },
            move |o| {
                let rec = &o.issued.record;
                NewAuditEvent::ok(audit_actor, "admin_cert.create", rec.serial_hex()).with_detail(
                    serde_json::json!({
                        "mode": "break-glass",
                        "os_user": detail_user,
                        "host": detail_host,
                        "config": detail_config,
                        "role": role.name(),
                        "identity": rec.identity,
                        "profile": rec.profile,
                        "security_officers_before": before,
                    }),
                )
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("issuing the administrator certificate: {e}"))?;
    let rec = &outcome.issued.record;
    crate::dev::write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    crate::dev::write_atomic(
        &cert_path,
        pem_encode("CERTIFICATE", &rec.der).as_bytes(),
        0o600,
    )?;
    tracing::warn!(serial = %rec.serial_hex(), role = role.name(), %actor,
        "break-glass administrator certificate issued");
    Ok(Minted {
        serial: rec.serial_hex(),
        role: role.name(),
        not_after: rec.not_after.to_rfc3339(),
        certificate: cert_path,
        key: key_path,
        security_officers_before: before,
    })
}
