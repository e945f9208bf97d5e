//! `ca-server dev`: the quick start. On an empty data directory it rehearses the key
//! ceremonies on throwaway SoftHSM tokens (`ceremonies::dev::rehearse`, cargo feature `dev`: root, issuing key,
//! intermediate, OCSP signer, root CRL), writes a server configuration and an administrator
//! certificate (role security-officer), then serves. On a directory it made before it reuses
//! everything. It writes `DIR/dev.env` (`export` lines for the admin CLI and the agent) once
//! the listeners are bound, with the actual addresses (port 0 is allowed), and the directory of
//! the running `ca-server` first on `PATH`: the quick start (`scripts/dev.sh`) builds
//! `ca-agent`, `ceremony` and `hsm-sim` into the same directory, so the commands `dev` prints
//! work as printed in a new shell.
//!
//! Layout of `DIR`: `pki/` (ceremony artifacts, `hsm/` inside), `config.toml`, `store/`,
//! `admin/admin.crt` + `admin/admin.key`, `dev.env`.

use crate::auth::Role;
use crate::config::{CaSection, HsmSection, Listen, OcspSection, ServerConfig};
use crate::server::{self, Running};
use crate::service::{AppState, Request, ADMIN_PROFILE};
use anyhow::Context;
use ca_core::issuance::IssuerUrls;
use ca_core::profile::{ExtKeyUsage, NamePolicy, Profile, Profiles};
use ca_core::signer::pkcs11::PinSource;
use ca_core::store::IdentityBinding;
use ca_core::x509::pem_encode;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Options of `ca-server dev`.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// Data directory (default `./ca-data`).
    pub data: PathBuf,
    /// HTTPS listener (default 127.0.0.1:8443; port 0 picks a free port).
    pub listen: Option<SocketAddr>,
    /// Status listener (default 127.0.0.1:8080; port 0 picks a free port).
    pub status_listen: Option<SocketAddr>,
}

/// What `dev` prints and writes to `dev.env`.
#[derive(Clone, Debug)]
pub struct DevInfo {
    /// `https://ADDR`
    pub ca_url: String,
    /// `http://ADDR`
    pub status_url: String,
    /// Root certificate (PEM).
    pub root: PathBuf,
    /// SHA-256 of the root (hex).
    pub fingerprint: String,
    /// Admin certificate (PEM).
    pub admin_cert: PathBuf,
    /// Admin key (PEM, mode 0600).
    pub admin_key: PathBuf,
    /// SoftHSM configuration of the dev tokens.
    pub softhsm_conf: PathBuf,
    /// Directory of the running `ca-server` (absolute), put first on `PATH`; `None` when the
    /// executable's path is unknown.
    pub bin_dir: Option<PathBuf>,
}

impl DevInfo {
    /// `export` lines for a POSIX shell.
    pub fn env_lines(&self) -> String {
        let q = |p: &Path| shell_quote(&p.display().to_string());
        // A directory with ':' in its name cannot be on PATH.
        let path = match self.bin_dir.as_deref().filter(|d| !d.to_string_lossy().contains(':')) {
            Some(dir) => format!(
                "# ca-server, and ca-agent, ceremony and hsm-sim when built with it (scripts/dev.sh)\nexport PATH={}:\"$PATH\"\n",
                q(dir)
            ),
            None => String::new(),
        };
        format!(
            "# Written by `ca-server dev`, removed when it stops. Load it with `. dev.env`.\n{path}export CA_URL={}\nexport CA_STATUS_URL={}\nexport CA_ROOT={}\nexport CA_FINGERPRINT={}\nexport CA_ADMIN_CERT={}\nexport CA_ADMIN_KEY={}\nexport SOFTHSM2_CONF={}\n",
            shell_quote(&self.ca_url),
            shell_quote(&self.status_url),
            q(&self.root),
            self.fingerprint,
            q(&self.admin_cert),
            q(&self.admin_key),
            q(&self.softhsm_conf),
        )
    }
}

/// Quote a value for POSIX sh (`dev.env` is sourced by a shell).
fn shell_quote(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=+,@".contains(c))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

/// Profiles of the dev CA: `client` (clientAuth), `server` (serverAuth), `mtls` (both), any
/// name (the token's binding decides the names).
pub fn dev_profiles() -> Profiles {
    let names = NamePolicy {
        dns: vec!["*".into()],
        uri: vec!["*".into()],
        email: vec!["*".into()],
        ip: vec!["0.0.0.0/0".into(), "::/0".into()],
        common_name: true,
        max_sans: 10,
        common_name_patterns: Vec::new(),
    };
    // A client certificate's commonName may be any label (a user or service name).
    let client = Profile::client(NamePolicy {
        common_name_patterns: vec!["*".into()],
        ..names.clone()
    });
    let mut server = Profile::client(names.clone());
    server.extended_key_usage = vec![ExtKeyUsage::ServerAuth];
    let mut mtls = Profile::client(names);
    mtls.extended_key_usage = vec![ExtKeyUsage::ClientAuth, ExtKeyUsage::ServerAuth];
    Profiles(
        [
            ("client".to_string(), client),
            ("server".to_string(), server),
            ("mtls".to_string(), mtls),
        ]
        .into_iter()
        .collect(),
    )
}

/// The PKI of a dev directory, however it was made.
#[derive(Clone, Debug)]
pub struct DevPki {
    /// SoftHSM configuration.
    pub softhsm_conf: PathBuf,
    /// PKCS#11 module.
    pub module: PathBuf,
    /// Token holding the issuing and OCSP keys.
    pub token: String,
    /// Its PIN file.
    pub pin_file: PathBuf,
    /// Issuing key label.
    pub issuing_key: String,
    /// OCSP signer key label and certificate (PEM).
    pub ocsp: Option<(String, PathBuf)>,
    /// Root certificate (PEM).
    pub root: PathBuf,
    /// Issuing CA certificate (PEM).
    pub intermediate: PathBuf,
    /// Root-signed OCSP response about the intermediate (DER), if any.
    pub intermediate_ocsp: Option<PathBuf>,
    /// Root CRL (DER), if any.
    pub root_crl: Option<PathBuf>,
    /// Audit checkpoint key label, if the key ceremony made one.
    pub audit_key: Option<String>,
}

/// Without the `dev` feature there is no SoftHSM provisioning to make a dev PKI with.
#[cfg(not(feature = "dev"))]
pub fn bootstrap(dir: &Path, _status_url: &str) -> anyhow::Result<DevPki> {
    anyhow::bail!(
        "this ca-server was built without the `dev` feature (no SoftHSM provisioning): it cannot \
         make a development CA in {}; run the key ceremonies and `ca-server serve --config`, or \
         build ca-server with its default features",
        dir.display()
    )
}

/// Make the dev PKI in `dir/pki` by rehearsing the key ceremonies. Must run before anything
/// loads SoftHSM in this process (SoftHSM reads `SOFTHSM2_CONF` once).
#[cfg(feature = "dev")]
pub fn bootstrap(dir: &Path, status_url: &str) -> anyhow::Result<DevPki> {
    // The provisioning would otherwise set SOFTHSM2_CONF in this (multithreaded) process: it
    // must be in the environment already (`run` restarts the process with it).
    let conf = dir.join("pki").join("hsm").join("softhsm2.conf");
    if std::env::var_os(server::SOFTHSM_CONF_ENV).as_deref() != Some(conf.as_os_str()) {
        anyhow::bail!(
            "{} must be {} before the development CA is made (`ca-server dev` restarts itself \
             with it)",
            server::SOFTHSM_CONF_ENV,
            conf.display()
        );
    }
    let opts = ceremonies::dev::DevOptions {
        status_base_url: status_url.to_string(),
        ..ceremonies::dev::DevOptions::default()
    };
    let a = ceremonies::dev::rehearse(&dir.join("pki"), &opts)
        .context("rehearsing the dev key ceremonies")?;
    Ok(DevPki {
        softhsm_conf: a.softhsm_conf,
        module: a.module,
        token: a.online_token,
        pin_file: a.online_pin_file,
        issuing_key: a.issuing_key_label,
        ocsp: Some((a.ocsp_key_label, a.ocsp_signer_cert)),
        root: a.root_cert,
        intermediate: a.intermediate_cert,
        intermediate_ocsp: Some(a.intermediate_ocsp_response),
        root_crl: Some(a.root_crl),
        audit_key: Some(a.audit_key_label),
    })
}

/// The server configuration for a dev PKI (paths relative to `dir`).
pub fn dev_config(dir: &Path, pki: &DevPki, listen: Listen) -> ServerConfig {
    let rel = |p: &Path| {
        p.strip_prefix(dir)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let mut cfg = ServerConfig {
        data_dir: PathBuf::from("."),
        listen,
        hsm: HsmSection {
            module: Some(pki.module.clone()),
            token_label: pki.token.clone(),
            pin: PinSource::File(rel(&pki.pin_file)),
            issuing_key: pki.issuing_key.clone(),
            sessions: None,
            softhsm_conf: Some(rel(&pki.softhsm_conf)),
            refused_pin_retry: crate::config::HsmSection::default_refused_pin_retry(),
        },
        ca: CaSection {
            certificate: rel(&pki.intermediate),
            chain: rel(&pki.root),
        },
        urls: IssuerUrls::default(),
        tls: Default::default(),
        admin: Default::default(),
        tokens: Default::default(),
        renewal: Default::default(),
        limits: Default::default(),
        log: Default::default(),
        ocsp: OcspSection::default(),
        crl: Default::default(),
        audit: Default::default(),
        store: Default::default(),
        retention: Default::default(),
        profiles: dev_profiles(),
    };
    if let Some((key, cert)) = &pki.ocsp {
        cfg.ocsp.signer_key = Some(key.clone());
        cfg.ocsp.signer_cert = Some(rel(cert));
    }
    if let Some(resp) = &pki.intermediate_ocsp {
        cfg.ocsp.external_responses = vec![rel(resp)];
    }
    cfg.crl.root_crl = pki.root_crl.as_deref().map(rel);
    cfg.audit.key = pki.audit_key.clone();
    cfg.tls.names = vec![
        "dns:localhost".into(),
        "ip:127.0.0.1".into(),
        "ip:::1".into(),
    ];
    cfg
}

fn urls_for(status: SocketAddr) -> IssuerUrls {
    IssuerUrls {
        ocsp: Some(format!("http://{status}{}", ca_api::routes::OCSP)),
        ca_issuers: Some(format!("http://{status}{}", ca_api::routes::CA_CERT)),
        crl: Some(format!("http://{status}{}", ca_api::routes::CRL)),
    }
}

/// Write a file atomically (temp file, fsync, rename), with `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Issue an administrator certificate with `role` for `name`; returns (cert PEM, key PEM).
pub async fn issue_admin_cert(
    state: &Arc<AppState>,
    name: &str,
    role: Role,
    actor: &str,
) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let csr = params.serialize_request(&key)?;
    let csr = ca_core::csr::parse_der(csr.der())?;
    let outcome = state
        .issue(
            csr,
            Request::Admin {
                profile: ADMIN_PROFILE.into(),
                actor: actor.into(),
                binding: IdentityBinding {
                    common_name: Some(name.into()),
                    sans: vec![role.san()],
                },
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("issuing the admin certificate: {e}"))?;
    let rec = &outcome.issued.record;
    state.metrics.issued(&rec.profile);
    state
        .audit(
            ca_core::audit::NewAuditEvent::ok(actor, "issue", rec.serial_hex()).with_detail(
                serde_json::json!({ "profile": rec.profile, "identity": rec.identity, "role": role.name() }),
            ),
        )
        .await;
    Ok((pem_encode("CERTIFICATE", &rec.der), key.serialize_pem()))
}

/// The SoftHSM configuration the dev directory `data` uses (or will use, once made): the one
/// its `config.toml` names, or `pki/hsm/softhsm2.conf` for a new directory.
fn dev_softhsm_conf(data: &Path) -> anyhow::Result<Option<PathBuf>> {
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let dir = data
        .canonicalize()
        .with_context(|| format!("resolving {}", data.display()))?;
    let config_path = dir.join("config.toml");
    if config_path.exists() {
        let cfg = ServerConfig::load(&config_path).context("reading the dev config.toml")?;
        return Ok(cfg.hsm.softhsm_conf);
    }
    Ok(Some(dir.join("pki").join("hsm").join("softhsm2.conf")))
}

/// Run `ca-server dev` until SIGINT/SIGTERM.
///
/// SoftHSM reads `SOFTHSM2_CONF` when the module loads, and a running server does not set its
/// own environment: unless `SOFTHSM2_CONF` already names the directory's configuration, this
/// process is replaced first by the same command with it in the environment.
pub async fn run(opts: DevOptions) -> anyhow::Result<()> {
    if let Some(conf) = dev_softhsm_conf(&opts.data)? {
        server::reexec_for_softhsm(&conf)?;
    }
    // Before startup: a signal during startup stops the server once it has started.
    let mut signal = server::ShutdownSignal::install().context("listening for SIGINT/SIGTERM")?;
    let running = start(&opts).await?;
    let stopped = running.wait_for(&mut signal).await;
    // The addresses in dev.env are stale once the server is gone.
    let _ = std::fs::remove_file(opts.data.join("dev.env"));
    Ok(stopped?)
}

/// Prepare (or reuse) the directory, start the server, write `dev.env`; returns the running
/// server.
pub async fn start(opts: &DevOptions) -> anyhow::Result<Running> {
    let dir = &opts.data;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let env_file = dir.join("dev.env");
    let _ = std::fs::remove_file(&env_file);
    let config_path = dir.join("config.toml");
    let fresh = !config_path.exists();
    if fresh {
        let non_empty = std::fs::read_dir(&dir)?.next().is_some();
        if non_empty {
            anyhow::bail!(
                "{} is not empty and has no config.toml: not a ca-server dev directory (use an empty or new directory)",
                dir.display()
            );
        }
    }
    let previous = if fresh {
        None
    } else {
        Some(ServerConfig::load(&config_path).context("reading the dev config.toml")?)
    };
    let api_addr = opts
        .listen
        .or(previous.as_ref().map(|c| c.listen.api))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443)));
    let status_addr = opts
        .status_listen
        .or(previous.as_ref().map(|c| c.listen.status))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let api = TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("binding {api_addr} (use --listen)"))?;
    let status = TcpListener::bind(status_addr)
        .await
        .with_context(|| format!("binding {status_addr} (use --status-listen)"))?;
    let api_addr = api.local_addr()?;
    let status_addr = status.local_addr()?;
    let status_url = format!("http://{status_addr}");

    let mut cfg = match previous {
        Some(c) => c,
        None => {
            println!("Creating a development CA in {} ...", dir.display());
            let d = dir.clone();
            let url = status_url.clone();
            let pki = tokio::task::spawn_blocking(move || bootstrap(&d, &url)).await??;
            let listen = Listen {
                api: opts.listen.unwrap_or(api_addr),
                status: opts.status_listen.unwrap_or(status_addr),
            };
            let fixed_status = listen.status.port() != 0;
            let mut cfg = dev_config(&dir, &pki, listen);
            if fixed_status {
                // `serve --config` on this directory then writes the same URLs.
                cfg.urls = urls_for(status_addr);
            }
            let text = format!(
                "# Written by `ca-server dev`. Paths are relative to this file.\n{}",
                cfg.to_toml()?
            );
            write_atomic(&config_path, text.as_bytes(), 0o644)?;
            ServerConfig::load(&config_path)?
        }
    };
    // Certificates point at the status listener actually bound.
    cfg.urls = urls_for(status_addr);
    cfg.listen = Listen {
        api: api_addr,
        status: status_addr,
    };

    let assembled = server::ServerBuilder::from_config(&cfg)
        .await?
        .assemble()
        .await?;
    let state = assembled.state.clone();
    let admin = async {
        let admin_dir = dir.join("admin");
        std::fs::create_dir_all(&admin_dir)?;
        let admin_cert = admin_dir.join("admin.crt");
        let admin_key = admin_dir.join("admin.key");
        let needs_admin = match std::fs::read(&admin_cert) {
            Ok(pem_bytes) => {
                let soon = state.clock.now() + chrono::Duration::days(7);
                rustls_pemfile::certs(&mut pem_bytes.as_slice())
                    .next()
                    .and_then(|c| c.ok())
                    .and_then(|c| crate::tls::leaf_not_after(&c))
                    .is_none_or(|na| (na as i64) < soon.timestamp())
            }
            Err(_) => true,
        };
        if needs_admin {
            let (cert, key) =
                issue_admin_cert(&state, "dev-admin", Role::SecurityOfficer, "ca-server dev")
                    .await?;
            write_atomic(&admin_key, key.as_bytes(), 0o600)?;
            write_atomic(&admin_cert, cert.as_bytes(), 0o644)?;
        }
        anyhow::Ok((admin_cert, admin_key))
    }
    .await;
    let (admin_cert, admin_key) = match admin {
        Ok(paths) => paths,
        Err(e) => {
            // The OCSP issuance signer thread must not outlive a failed start either.
            assembled.close().await;
            return Err(e);
        }
    };
    let running = assembled.start(api, Some(status)).await?;

    let info = DevInfo {
        ca_url: format!("https://{api_addr}"),
        status_url,
        root: dir.join(&cfg.ca.chain),
        fingerprint: state.root_fingerprint(),
        admin_cert,
        admin_key,
        softhsm_conf: cfg.hsm.softhsm_conf.clone().unwrap_or_default(),
        bin_dir: running_bin_dir(),
    };
    write_atomic(&env_file, info.env_lines().as_bytes(), 0o644)?;
    println!(
        "\nDevelopment CA ready.\n  API (HTTPS):       {}\n  Status (HTTP):     {}\n  Root certificate:  {}\n  Root SHA-256:      {}\n  Admin certificate: {}\n  Admin key:         {}\n\n{}",
        info.ca_url,
        info.status_url,
        info.root.display(),
        info.fingerprint,
        info.admin_cert.display(),
        info.admin_key.display(),
        next_steps(&env_file, info.bin_dir.as_deref()),
    );
    Ok(running)
}

/// The directory of the running executable, for `PATH` in `dev.env`.
fn running_bin_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.parent().map(Path::to_path_buf)
}

/// What `dev` prints after "ready": the commands of the README's quick start, runnable as
/// printed in a new shell (`dev.env` puts `bin_dir` first on `PATH`).
pub fn next_steps(env_file: &Path, bin_dir: Option<&Path>) -> String {
    let mut text = format!(
        "In another shell:\n  . {}\n  ca-server token create --cn web1.example.com --san dns:web1.example.com > web1.token\n  ca-agent enroll --server \"$CA_URL\" --fingerprint \"$CA_FINGERPRINT\" --token-file web1.token --cert web1.crt --key web1.key\n",
        shell_quote(&env_file.display().to_string())
    );
    if let Some(dir) = bin_dir.filter(|d| !d.join("ca-agent").exists()) {
        text.push_str(&format!(
            "(no ca-agent in {}: build it there first, e.g. `cargo build --release --locked -p ca-agent`, or run scripts/dev.sh)\n",
            dir.display()
        ));
    }
    text
}
