//! Atomic installation of key, certificate and chain.
//!
//! Two files cannot be renamed in one step, so the agent never renames the key and the
//! certificate separately. Each pair is written, complete, into a version directory of the store
//! (`<store>/v000042/{key.pem,cert.pem,chain.pem,fullchain.pem}`: temp directory, every file
//! fsynced, directory fsynced, renamed into place, store fsynced). The configured paths are
//! symlinks through one `current` link:
//!
//! ```text
//! /etc/nginx/tls/server.key      -> .ca-agent/nginx/current/key.pem
//! /etc/nginx/tls/server.crt      -> .ca-agent/nginx/current/cert.pem
//! /etc/nginx/tls/server.key.prev -> .ca-agent/nginx/prev/key.pem
//! /etc/nginx/tls/.ca-agent/nginx/current -> v000042
//! /etc/nginx/tls/.ca-agent/nginx/prev    -> v000041
//! ```
//!
//! Switching to a new pair is one `rename(2)` of a fresh symlink over `current`, so at every
//! instant, even if the agent is killed, the key and certificate paths resolve into the same
//! version directory (the Kubernetes atomic-writer scheme). Leftover temp entries are removed by
//! [`recover`]. Existing plain files at the configured paths are first imported as a version
//! with identical content, so converting them to links never changes what a reader sees.

use crate::certs::CertInfo;
use crate::config::CertConfig;
use crate::error::{Error, Result};
use crate::keys::PrivateKey;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Files of a version directory.
pub const KEY: &str = "key.pem";
/// Leaf certificate.
pub const CERT: &str = "cert.pem";
/// CA chain (issuing CA, root).
pub const CHAIN: &str = "chain.pem";
/// Leaf + intermediates.
pub const FULLCHAIN: &str = "fullchain.pem";

const CURRENT: &str = "current";
const PREV: &str = "prev";

/// What to install.
#[derive(Clone)]
pub struct Material {
    /// PKCS#8 PEM key.
    pub key_pem: String,
    /// Leaf certificate PEM.
    pub cert_pem: String,
    /// CA chain PEM (issuing CA, then root).
    pub chain_pem: String,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material").finish_non_exhaustive()
    }
}

impl Material {
    /// Leaf + intermediates (self-signed roots left out), for `ssl_certificate`.
    pub fn fullchain_pem(&self) -> Result<String> {
        let mut out = self.cert_pem.clone();
        if !out.ends_with('\n') {
            out.push('\n');
        }
        for der in crate::certs::pem_certs(self.chain_pem.as_bytes(), "chain")? {
            if !CertInfo::parse(&der, "chain")?.self_issued {
                out.push_str(&ca_core::x509::pem("CERTIFICATE", &der));
            }
        }
        Ok(out)
    }
}

/// Result of an installation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The new current version (`v000042`).
    pub version: String,
    /// The version kept as `prev`, if any.
    pub previous: Option<String>,
}

/// The pair currently on disk, read through the configured paths.
pub struct OnDisk {
    /// Parsed leaf.
    pub cert: CertInfo,
    /// The key.
    pub key: PrivateKey,
    /// Leaf PEM as read.
    pub cert_pem: Vec<u8>,
    /// Chain PEM (configured chain path, or the store's chain), possibly empty.
    pub chain_pem: Vec<u8>,
}

impl std::fmt::Debug for OnDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDisk")
            .field("serial", &self.cert.serial)
            .finish_non_exhaustive()
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(op, path, e)
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Refuse a configured path that is a symbolic link leading out of its own directory and out of
/// the agent's store. Someone with write access to the directory could otherwise plant
/// `server.key -> /etc/shadow`, or links to another service's key and certificate, and have the
/// agent read them, copy them into its store (owned and moded as configured here) and renew
/// that other identity. The agent's own links (into `.ca-agent/<name>/current/`) and an
/// operator's links within the directory are fine. A missing or dangling path is left to the
/// caller (it reads as missing).
fn check_link_stays_inside(cfg: &CertConfig, path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {}
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("inspect", path, e)),
    }
    let target = match fs::canonicalize(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("resolve", path, e)),
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("/"));
    // The store counts only while it is the agent's own directory: a `.ca-agent` or
    // `.ca-agent/<name>` replaced by a link to another service's store is not.
    let store = cfg.store_dir();
    let real_dir = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    let store_is_ours = real_dir(&store) && store.parent().is_none_or(real_dir);
    let allowed: Vec<PathBuf> = std::iter::once(dir.to_path_buf())
        .chain(store_is_ours.then_some(store))
        .filter_map(|d| fs::canonicalize(d).ok())
        .collect();
    if allowed.iter().any(|d| target.starts_with(d)) {
        return Ok(());
    }
    Err(Error::UnsafeLink {
        path: path.to_path_buf(),
        target,
        dir: dir.to_path_buf(),
    })
}

/// Read the key and certificate at the configured paths (following the links, but never out of
/// their directory or the store: [`Error::UnsafeLink`]). `None` when either is missing;
/// [`Error::KeyMismatch`] when they do not belong together.
pub fn read_current(cfg: &CertConfig) -> Result<Option<OnDisk>> {
    // The chain too: an import copies it into the store with the certificate's (public) mode.
    for p in [Some(&cfg.key), Some(&cfg.cert), cfg.chain.as_ref()]
        .into_iter()
        .flatten()
    {
        check_link_stays_inside(cfg, p)?;
    }
    let (Some(key_pem), Some(cert_pem)) = (read_opt(&cfg.key)?, read_opt(&cfg.cert)?) else {
        return Ok(None);
    };
    let key = PrivateKey::from_pem(&String::from_utf8_lossy(&key_pem))?;
    let cert = CertInfo::from_pem(&cert_pem, &cfg.cert.display().to_string())?;
    if !cert.matches_key(&key) {
        return Err(Error::KeyMismatch {
            key: cfg.key.clone(),
            cert: cfg.cert.clone(),
        });
    }
    let chain_pem = match &cfg.chain {
        Some(p) => read_opt(p)?,
        None => read_opt(&cfg.store_dir().join(CURRENT).join(CHAIN))?,
    }
    .unwrap_or_default();
    Ok(Some(OnDisk {
        cert,
        key,
        cert_pem,
        chain_pem,
    }))
}

/// Owner and group to apply, resolved from names or numbers.
#[derive(Clone, Copy, Debug, Default)]
struct Ownership {
    uid: Option<u32>,
    gid: Option<u32>,
}

fn resolve_ownership(cfg: &CertConfig) -> Result<Ownership> {
    let uid = match &cfg.owner {
        None => None,
        Some(o) => Some(match o.parse::<u32>() {
            Ok(n) => n,
            Err(_) => nix::unistd::User::from_name(o)
                .ok()
                .flatten()
                .ok_or_else(|| Error::Config {
                    path: format!("certificate {}.owner", cfg.name),
                    reason: format!("no user {o:?} on this host"),
                })?
                .uid
                .as_raw(),
        }),
    };
    let gid = match &cfg.group {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => nix::unistd::Group::from_name(g)
                .ok()
                .flatten()
                .ok_or_else(|| Error::Config {
                    path: format!("certificate {}.group", cfg.name),
                    reason: format!("no group {g:?} on this host"),
                })?
                .gid
                .as_raw(),
        }),
    };
    Ok(Ownership { uid, gid })
}

/// Fault injection for the kill test: with `CA_AGENT_DANGER_INSTALL_STEP_DELAY_MS` set, every
/// install step is followed by a pause, so a test can kill the agent between any two steps.
/// Never set it in production.
fn danger_step_pause() {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        std::env::var("CA_AGENT_DANGER_INSTALL_STEP_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis)
    });
    if let Some(d) = delay {
        std::thread::sleep(*d);
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync", dir))
}

fn write_file(path: &Path, data: &[u8], mode: u32, own: Ownership) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("create", path))?;
    f.write_all(data).map_err(io("write", path))?;
    if own.uid.is_some() || own.gid.is_some() {
        std::os::unix::fs::fchown(&f, own.uid, own.gid).map_err(io("chown", path))?;
    }
    // The umask may have cut the mode at creation; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("chmod", path))?;
    f.sync_all().map_err(io("fsync", path))?;
    danger_step_pause();
    Ok(())
}

fn mkdir_p(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(io("create directory", dir))
}

fn random_suffix() -> String {
    use rand::Rng;
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

/// Point `link` at `target` atomically: a new symlink beside it, renamed over it.
fn swap_link(link: &Path, target: &Path) -> Result<()> {
    let dir = link.parent().unwrap_or_else(|| Path::new("/"));
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.ca-agent-tmp-{}", random_suffix()));
    std::os::unix::fs::symlink(target, &tmp).map_err(io("symlink", &tmp))?;
    danger_step_pause();
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("rename", link, e));
    }
    fsync_dir(dir)?;
    danger_step_pause();
    Ok(())
}

fn link_target(link: &Path) -> Option<PathBuf> {
    fs::read_link(link).ok()
}

/// Lexical relative path from `base_dir` to `target` when `target` lies below `base_dir`;
/// otherwise `target` itself (absolute), so links never depend on `..` through symlinked dirs.
fn relative_or_absolute(target: &Path, base_dir: &Path) -> PathBuf {
    match target.strip_prefix(base_dir) {
        Ok(rel) if !rel.components().any(|c| matches!(c, Component::ParentDir)) => {
            rel.to_path_buf()
        }
        _ => target.to_path_buf(),
    }
}

fn version_number(name: &str) -> Option<u64> {
    name.strip_prefix('v').and_then(|n| n.parse().ok())
}

/// Complete version directories of the store, sorted by number.
fn versions(store: &Path) -> Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(store) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("list", store, e)),
    };
    for entry in rd {
        let entry = entry.map_err(io("list", store))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(n) = version_number(&name) {
            out.push((n, name));
        }
    }
    out.sort();
    Ok(out)
}

fn current_version(store: &Path, which: &str) -> Option<String> {
    link_target(&store.join(which))
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().to_string()))
        .filter(|n| store.join(n).is_dir())
}

/// The configured public paths and the version file each one links to.
fn public_links(cfg: &CertConfig) -> Vec<(PathBuf, &'static str, &'static str)> {
    let mut out = vec![
        (cfg.key.clone(), CURRENT, KEY),
        (cfg.cert.clone(), CURRENT, CERT),
        (with_suffix(&cfg.key, ".prev"), PREV, KEY),
        (with_suffix(&cfg.cert, ".prev"), PREV, CERT),
    ];
    if let Some(c) = &cfg.chain {
        out.push((c.clone(), CURRENT, CHAIN));
    }
    if let Some(c) = &cfg.fullchain {
        out.push((c.clone(), CURRENT, FULLCHAIN));
    }
    out
}

/// `path` with `suffix` appended to the file name (`server.key` -> `server.key.prev`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn desired_target(cfg: &CertConfig, link: &Path, which: &str, file: &str) -> PathBuf {
    let target = cfg.store_dir().join(which).join(file);
    relative_or_absolute(&target, link.parent().unwrap_or_else(|| Path::new("/")))
}

/// Make every configured path a link into the store (once `current` exists). `prev` links are
/// made only while a `prev` version exists, and removed otherwise.
fn ensure_links(cfg: &CertConfig) -> Result<()> {
    let store = cfg.store_dir();
    let has_prev = current_version(&store, PREV).is_some();
    for (link, which, file) in public_links(cfg) {
        let want = desired_target(cfg, &link, which, file);
        if which == PREV && !has_prev {
            if fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink())
                && link_target(&link).as_deref() == Some(want.as_path())
            {
                fs::remove_file(&link).map_err(io("remove", &link))?;
            }
            continue;
        }
        if link_target(&link).as_deref() == Some(want.as_path()) {
            continue;
        }
        if let Some(parent) = link.parent() {
            mkdir_p(parent)?;
        }
        swap_link(&link, &want)?;
    }
    Ok(())
}

/// Remove leftovers of an interrupted run (temp directories and temp links), import plain files
/// found at the configured paths, and make sure every configured path links into the store.
/// Safe to run at any time; run at start-up and before each install.
pub fn recover(cfg: &CertConfig) -> Result<()> {
    let store = cfg.store_dir();
    // Never work in a store that was swapped for a link (to another service's store).
    for p in [Some(store.as_path()), store.parent()]
        .into_iter()
        .flatten()
    {
        if fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Error::UnsafeLink {
                path: p.to_path_buf(),
                target: fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()),
                dir: p.parent().unwrap_or_else(|| Path::new("/")).to_path_buf(),
            });
        }
    }
    if store.is_dir() {
        for entry in fs::read_dir(&store).map_err(io("list", &store))? {
            let entry = entry.map_err(io("list", &store))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let p = entry.path();
            if name.starts_with(".tmp-") {
                fs::remove_dir_all(&p).map_err(io("remove", &p))?;
            } else if name.starts_with('.') && name.contains(".ca-agent-tmp-") {
                fs::remove_file(&p).map_err(io("remove", &p))?;
            }
        }
    }
    for (link, _, _) in public_links(cfg) {
        if let (Some(dir), Some(name)) = (link.parent(), link.file_name()) {
            let prefix = format!(".{}.ca-agent-tmp-", name.to_string_lossy());
            if let Ok(rd) = fs::read_dir(dir) {
                for entry in rd.flatten() {
                    if entry.file_name().to_string_lossy().starts_with(&prefix) {
                        let _ = fs::remove_file(entry.path());
                    }
                }
            }
        }
    }
    import_plain_files(cfg)?;
    tighten_key_modes(cfg)?;
    if current_version(&store, CURRENT).is_some() {
        ensure_links(cfg)?;
    }
    Ok(())
}

/// When the configured key/cert paths are not our links (first run over existing files, or an
/// operator replaced them), copy them into a new version that becomes `current`, so the links
/// that replace them serve identical content.
fn import_plain_files(cfg: &CertConfig) -> Result<()> {
    let store = cfg.store_dir();
    let ours = |link: &Path, file: &str| {
        link_target(link).as_deref() == Some(desired_target(cfg, link, CURRENT, file).as_path())
    };
    let current = current_version(&store, CURRENT);
    if current.is_some() && ours(&cfg.key, KEY) && ours(&cfg.cert, CERT) {
        return Ok(());
    }
    let disk = match read_current(cfg) {
        Ok(Some(d)) => d,
        // Nothing there, or a mismatched pair: nothing safe to import.
        Ok(None) | Err(Error::KeyMismatch { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    if let Some(v) = &current {
        // Already identical to the current version (e.g. links were removed by hand).
        let same = fs::read(store.join(v).join(CERT)).ok().as_deref() == Some(&disk.cert_pem[..])
            && fs::read(store.join(v).join(KEY)).ok().as_deref() == Some(disk.key.pem().as_bytes());
        if same {
            return ensure_links(cfg);
        }
    }
    tracing::info!(
        cert = %cfg.cert.display(),
        serial = %disk.cert.serial,
        "importing existing key and certificate into the agent's store"
    );
    let material = Material {
        key_pem: disk.key.pem().to_string(),
        cert_pem: String::from_utf8_lossy(&disk.cert_pem).to_string(),
        chain_pem: String::from_utf8_lossy(&disk.chain_pem).to_string(),
    };
    // The certificate keeps the operator's mode; the key never does (a 0644 key is a leak).
    let modes = (
        key_mode(cfg),
        file_mode(&cfg.cert).or(cfg.cert_mode).unwrap_or(0o644),
    );
    let version = write_version(cfg, &material, modes)?;
    switch_to(&store, &version)?;
    ensure_links(cfg)
}

/// The mode every key file gets: the configured one if it keeps the key private (config
/// validation refuses any other), else `0600`. Never the mode of a file being replaced.
fn key_mode(cfg: &CertConfig) -> u32 {
    cfg.key_mode
        .filter(|m| crate::config::check_key_mode(*m).is_ok())
        .unwrap_or(0o600)
}

/// Key files of every version kept in the store (`current`, `prev`, older and failed ones)
/// get no more than the key mode: versions written by an older agent may have copied the mode
/// of a world-readable key they replaced. The file is opened without following links.
fn tighten_key_modes(cfg: &CertConfig) -> Result<()> {
    let store = cfg.store_dir();
    let want = key_mode(cfg);
    let rd = match fs::read_dir(&store) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("list", &store, e)),
    };
    for entry in rd {
        let entry = entry.map_err(io("list", &store))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let is_version = version_number(&name).is_some()
            || name
                .strip_prefix("failed-")
                .is_some_and(|n| version_number(n).is_some());
        if !is_version || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let key = entry.path().join(KEY);
        let f = match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&key)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("open", &key, e)),
        };
        let meta = f.metadata().map_err(io("inspect", &key))?;
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_file() && mode & !want != 0 {
            tracing::warn!(key = %key.display(), mode = format!("{mode:04o}"), "key file readable by others; setting {want:04o}");
            f.set_permissions(fs::Permissions::from_mode(want))
                .map_err(io("chmod", &key))?;
        }
    }
    Ok(())
}

fn file_mode(path: &Path) -> Option<u32> {
    fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

/// Write a complete version directory and return its name. The pair is re-read from the temp
/// directory and checked before the directory gets its final name.
fn write_version(
    cfg: &CertConfig,
    m: &Material,
    (key_mode, cert_mode): (u32, u32),
) -> Result<String> {
    let store = cfg.store_dir();
    mkdir_p(&store)?;
    let own = resolve_ownership(cfg)?;
    let next = versions(&store)?.last().map(|(n, _)| n + 1).unwrap_or(1);
    let name = format!("v{next:06}");
    let tmp = store.join(format!(".tmp-{name}-{}", random_suffix()));
    fs::create_dir(&tmp).map_err(io("create directory", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(io("chmod", &tmp))?;
    let fullchain = m.fullchain_pem()?;
    // Key first: a version directory never holds a certificate without its key.
    write_file(&tmp.join(KEY), m.key_pem.as_bytes(), key_mode, own)?;
    write_file(&tmp.join(CERT), m.cert_pem.as_bytes(), cert_mode, own)?;
    write_file(&tmp.join(CHAIN), m.chain_pem.as_bytes(), cert_mode, own)?;
    write_file(&tmp.join(FULLCHAIN), fullchain.as_bytes(), cert_mode, own)?;
    fsync_dir(&tmp)?;
    // Never install a certificate that does not match the key next to it: check what is on disk.
    let key_back = fs::read_to_string(tmp.join(KEY)).map_err(io("read", &tmp.join(KEY)))?;
    let cert_back = fs::read(tmp.join(CERT)).map_err(io("read", &tmp.join(CERT)))?;
    let key = PrivateKey::from_pem(&key_back)?;
    if !CertInfo::from_pem(&cert_back, "new certificate")?.matches_key(&key) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(Error::KeyMismatch {
            key: tmp.join(KEY),
            cert: tmp.join(CERT),
        });
    }
    let dest = store.join(&name);
    fs::rename(&tmp, &dest).map_err(io("rename", &dest))?;
    fsync_dir(&store)?;
    danger_step_pause();
    Ok(name)
}

/// Make `version` current, keeping the old current as `prev`.
fn switch_to(store: &Path, version: &str) -> Result<Option<String>> {
    let old = current_version(store, CURRENT);
    if let Some(old) = &old {
        if old != version {
            swap_link(&store.join(PREV), Path::new(old))?;
        }
    }
    swap_link(&store.join(CURRENT), Path::new(version))?;
    Ok(old.filter(|o| o != version))
}

/// Install a new pair atomically (see the module docs) and keep the previous one as `prev`.
pub fn install(cfg: &CertConfig, m: &Material) -> Result<Installed> {
    recover(cfg)?;
    let store = cfg.store_dir();
    let key_mode = key_mode(cfg);
    let cert_mode = cfg
        .cert_mode
        .or_else(|| file_mode(&cfg.cert))
        .unwrap_or(0o644);
    let version = write_version(cfg, m, (key_mode, cert_mode))?;
    let previous = switch_to(&store, &version)?;
    ensure_links(cfg)?;
    garbage_collect(&store)?;
    Ok(Installed { version, previous })
}

/// Put the `prev` pair back as current (the new one did not work). The failed version is kept
/// as `failed-vNNNNNN` for inspection. Returns the restored version.
pub fn restore_previous(cfg: &CertConfig) -> Result<String> {
    let store = cfg.store_dir();
    let prev = current_version(&store, PREV).ok_or_else(|| Error::Io {
        op: "restore",
        path: store.join(PREV),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no previous pair to restore"),
    })?;
    let failed = current_version(&store, CURRENT);
    swap_link(&store.join(CURRENT), Path::new(&prev))?;
    if let Some(f) = failed.filter(|f| *f != prev) {
        let from = store.join(&f);
        let to = store.join(format!("failed-{f}"));
        let _ = fs::remove_dir_all(&to);
        fs::rename(&from, &to).map_err(io("rename", &from))?;
    }
    // The new prev is the newest version older than the restored one, if any.
    let prev_n = version_number(&prev).unwrap_or(0);
    match versions(&store)?
        .into_iter()
        .rev()
        .find(|(n, _)| *n < prev_n)
    {
        Some((_, older)) => swap_link(&store.join(PREV), Path::new(&older))?,
        None => {
            let p = store.join(PREV);
            if fs::symlink_metadata(&p).is_ok() {
                fs::remove_file(&p).map_err(io("remove", &p))?;
            }
        }
    }
    fsync_dir(&store)?;
    ensure_links(cfg)?;
    Ok(prev)
}

/// Keep `current`, `prev`, one older version (so a restore still leaves a `prev`), and the most
/// recent failed version.
fn garbage_collect(store: &Path) -> Result<()> {
    let keep: Vec<String> = [
        current_version(store, CURRENT),
        current_version(store, PREV),
    ]
    .into_iter()
    .flatten()
    .collect();
    let all = versions(store)?;
    let mut older_kept = 0;
    for (_, name) in all.iter().rev() {
        if keep.contains(name) {
            continue;
        }
        if older_kept < 1 {
            older_kept += 1;
            continue;
        }
        let p = store.join(name);
        fs::remove_dir_all(&p).map_err(io("remove", &p))?;
    }
    let mut failed: Vec<String> = fs::read_dir(store)
        .map_err(io("list", store))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("failed-v"))
        .collect();
    failed.sort();
    failed.pop();
    for f in failed {
        let p = store.join(&f);
        fs::remove_dir_all(&p).map_err(io("remove", &p))?;
    }
    Ok(())
}

/// Write a single file atomically (temp file in the same directory, fsync, rename, fsync dir).
/// Used for the OCSP staple and the state files.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("/"));
    mkdir_p(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.ca-agent-tmp-{}", random_suffix()));
    if let Err(e) = write_file(&tmp, data, mode, Ownership::default()) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("rename", path, e));
    }
    fsync_dir(dir)
}

/// An exclusive lock on a certificate's store, so a one-shot `renew` and the daemon never work
/// on the same certificate at once. Released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _lock: nix::fcntl::Flock<File>,
}

/// Take the store lock, waiting up to `wait`.
pub async fn lock(cfg: &CertConfig, wait: std::time::Duration) -> Result<StoreLock> {
    let store = cfg.store_dir();
    mkdir_p(&store)?;
    let path = store.join(".lock");
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("open", &path))?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(StoreLock { _lock: l }),
            Err((_, errno)) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::io(
                        "lock",
                        &path,
                        std::io::Error::other(format!(
                            "another ca-agent holds the lock ({errno}); is the daemon running a renewal?"
                        )),
                    ));
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests;
