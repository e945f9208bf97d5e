//! `ceremony dev`: a complete rehearsal on throwaway SoftHSM tokens, without prompts.
//!
//! [`rehearse`] provisions SoftHSM under `DIR/hsm` (a `root` token and an `online` token in
//! one configuration), then runs the example ceremonies in order (root, key with the audit
//! checkpoint key, intermediate, ocsp-signer, crl, ocsp-response) with the root token's PIN
//! held as 2-of-3 quorum shares in `DIR/shares/`. Every artifact lands in `DIR`, the signed transcripts in
//! `DIR/transcripts/`. `ca-server dev` builds its configuration from the returned
//! [`DevArtifacts`].
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process: call [`rehearse`] in a process that has not
//! loaded SoftHSM yet (for example the `ceremony dev` subprocess), or one started with
//! `SOFTHSM2_CONF=DIR/hsm/softhsm2.conf` (what `ca-server dev` does).
//!
//! [`rehearse`] (cargo feature `dev`) provisions the tokens with hsm-sim; [`run_steps`] runs
//! example ceremonies on tokens that exist already. The test PKI of the workspace's tests
//! (`testkit::pki::TestPki`) is made by [`run_steps`], so tests exercise this same code.

use crate::error::Error;
use crate::run::{run, Done, Outcome, Rehearsal, RunOptions};
use ca_core::clock::Clock;
use ca_core::signer::KeyAlgorithm;
use std::path::{Path, PathBuf};

/// The example configurations, shipped in the binary; the rehearsal runs exactly these.
pub const EXAMPLES: [(&str, &str); 6] = [
    ("root.toml", include_str!("../examples/root.toml")),
    ("key.toml", include_str!("../examples/key.toml")),
    (
        "intermediate.toml",
        include_str!("../examples/intermediate.toml"),
    ),
    (
        "ocsp-signer.toml",
        include_str!("../examples/ocsp-signer.toml"),
    ),
    ("crl.toml", include_str!("../examples/crl.toml")),
    (
        "ocsp-response.toml",
        include_str!("../examples/ocsp-response.toml"),
    ),
];

/// Label of the rehearsal's root token.
pub const ROOT_TOKEN: &str = "root";
/// Label of the rehearsal's online token.
pub const ONLINE_TOKEN: &str = "online";
/// Label of the issuing key in the online token.
pub const ISSUING_KEY: &str = "issuing-ca";
/// Label of the OCSP signing key in the online token.
pub const OCSP_KEY: &str = "ocsp-signer";
/// Label of the audit checkpoint key in the online token (made by the key ceremony).
pub const AUDIT_KEY: &str = "audit-checkpoint";

/// What a rehearsal produced; everything a development CA server needs.
#[derive(Debug, Clone)]
pub struct DevArtifacts {
    /// `DIR/hsm/softhsm2.conf`: set `SOFTHSM2_CONF` to it before loading the module.
    pub softhsm_conf: PathBuf,
    /// The PKCS#11 module.
    pub module: PathBuf,
    /// Label of the token holding the issuing and OCSP keys.
    pub online_token: String,
    /// File holding the online token's user PIN (mode 0600).
    pub online_pin_file: PathBuf,
    /// Issuing key label (`issuing-ca`).
    pub issuing_key_label: String,
    /// OCSP signing key label (`ocsp-signer`).
    pub ocsp_key_label: String,
    /// Audit checkpoint key label (`audit-checkpoint`).
    pub audit_key_label: String,
    /// The audit checkpoint public key (PEM), from the key ceremony.
    pub audit_public_key: PathBuf,
    /// Root certificate (PEM).
    pub root_cert: PathBuf,
    /// Intermediate (issuing CA) certificate (PEM).
    pub intermediate_cert: PathBuf,
    /// Chain (PEM): intermediate, then root.
    pub chain: PathBuf,
    /// Delegated OCSP signing certificate (PEM).
    pub ocsp_signer_cert: PathBuf,
    /// Root CRL (DER); publish at `{status_base_url}/root.crl`.
    pub root_crl: PathBuf,
    /// OCSP response about the intermediate, signed by the root (DER); serve it at
    /// `{status_base_url}/ocsp` for the intermediate's CertID.
    pub intermediate_ocsp_response: PathBuf,
    /// SHA-256 of the root certificate's DER, lowercase hex without colons (agents pin it).
    pub root_fingerprint: String,
    /// The last transcript (JSON); the earlier ones are beside it, chained by hash.
    pub transcript: PathBuf,
}

/// Options of [`rehearse`].
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Algorithm of the root, issuing and OCSP keys (default P-256).
    pub algorithm: KeyAlgorithm,
    /// Base URL of the server's plain-HTTP listener: the intermediate points its CRL
    /// distribution point at `{base}/root.crl` and its OCSP AIA at `{base}/ocsp`.
    pub status_base_url: String,
}

impl Default for DevOptions {
    fn default() -> Self {
        DevOptions {
            algorithm: KeyAlgorithm::P256,
            status_base_url: "http://127.0.0.1:8080".into(),
        }
    }
}

fn set(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(next) = entry else {
            return;
        };
        t = next;
    }
    t.insert(last.to_string(), value);
}

/// The two tokens a rehearsal runs on, with their PIN files.
#[derive(Debug, Clone)]
pub struct RehearsalTokens {
    /// The PKCS#11 module.
    pub module: PathBuf,
    /// Label of the root token; the root ceremony sets its user PIN to the quorum PIN.
    pub root_token: String,
    /// File holding the root token's security officer PIN.
    pub root_so_pin_file: PathBuf,
    /// Label of the online token (issuing, OCSP signing and audit checkpoint keys).
    pub online_token: String,
    /// File holding the online token's user PIN.
    pub online_pin_file: PathBuf,
}

/// One ceremony of a rehearsal: an example configuration from [`EXAMPLES`], written into the
/// output directory for the rehearsal's tokens and options, with `settings` applied last.
#[derive(Debug, Clone)]
pub struct Step {
    /// Name of the example in [`EXAMPLES`] (`root.toml`, ...).
    pub example: &'static str,
    /// Name of the configuration file written in the output directory.
    pub file: String,
    /// Settings by key path (`["root", "validity"]`): a value replaces, `None` removes.
    pub settings: Vec<(Vec<&'static str>, Option<toml::Value>)>,
}

impl Step {
    /// The example `name` as it is (written under the same name).
    pub fn example(name: &'static str) -> Step {
        Step {
            example: name,
            file: name.to_string(),
            settings: Vec::new(),
        }
    }

    /// Write the configuration as `file` instead (a second ceremony of the same kind).
    pub fn file(mut self, file: impl Into<String>) -> Step {
        self.file = file.into();
        self
    }

    /// Set `path` to `value`.
    pub fn set(mut self, path: &[&'static str], value: impl Into<toml::Value>) -> Step {
        self.settings.push((path.to_vec(), Some(value.into())));
        self
    }

    /// Remove `path` (an optional setting of the example).
    pub fn unset(mut self, path: &[&'static str]) -> Step {
        self.settings.push((path.to_vec(), None));
        self
    }
}

fn unset(table: &mut toml::Table, path: &[&str]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut t = table;
    for p in parents {
        let Some(toml::Value::Table(next)) = t.get_mut(*p) else {
            return;
        };
        t = next;
    }
    t.remove(*last);
}

fn pin_file(path: &Path) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert(
        "file".into(),
        toml::Value::String(path.display().to_string()),
    );
    toml::Value::Table(t)
}

/// Write the configuration of `step` into `out`, adjusted for this rehearsal.
fn write_config(
    out: &Path,
    step: &Step,
    tokens: &RehearsalTokens,
    opts: &DevOptions,
) -> Result<PathBuf, Error> {
    let name = step.example;
    let text = EXAMPLES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| Error::Config {
            file: PathBuf::from(format!("examples/{name}")),
            path: "(top level)".into(),
            reason: "no such example ceremony".into(),
        })?;
    let path = out.join(&step.file);
    let mut table: toml::Table = toml::from_str(text).map_err(|e| Error::Config {
        file: PathBuf::from(format!("examples/{name}")),
        path: "(top level)".into(),
        reason: e.to_string(),
    })?;
    let module = toml::Value::String(tokens.module.display().to_string());
    let alg = toml::Value::String(opts.algorithm.name().to_string());
    let base = opts.status_base_url.trim_end_matches('/');
    let urls =
        |suffix: &str| toml::Value::Array(vec![toml::Value::String(format!("{base}{suffix}"))]);
    if table.contains_key("root_token") {
        set(&mut table, &["root_token", "module"], module.clone());
        set(
            &mut table,
            &["root_token", "label"],
            tokens.root_token.clone().into(),
        );
        let has_so_pin = matches!(table.get("root_token"), Some(toml::Value::Table(t)) if t.contains_key("so_pin"));
        if has_so_pin {
            set(
                &mut table,
                &["root_token", "so_pin"],
                pin_file(&tokens.root_so_pin_file),
            );
        }
    }
    if table.contains_key("online_token") {
        set(&mut table, &["online_token", "module"], module);
        set(
            &mut table,
            &["online_token", "label"],
            tokens.online_token.clone().into(),
        );
        set(
            &mut table,
            &["online_token", "pin"],
            pin_file(&tokens.online_pin_file),
        );
    }
    match name {
        "root.toml" => set(&mut table, &["root", "algorithm"], alg),
        "key.toml" => {
            set(&mut table, &["key", "algorithm"], alg);
            set(&mut table, &["key", "key_label"], ISSUING_KEY.into());
            set(&mut table, &["key", "audit_key_label"], AUDIT_KEY.into());
        }
        "ocsp-signer.toml" => {
            set(&mut table, &["ocsp_signer", "algorithm"], alg);
            set(
                &mut table,
                &["ocsp_signer", "issuing_key_label"],
                ISSUING_KEY.into(),
            );
            set(&mut table, &["ocsp_signer", "key_label"], OCSP_KEY.into());
        }
        "intermediate.toml" => {
            set(&mut table, &["intermediate", "crl_urls"], urls("/root.crl"));
            set(&mut table, &["intermediate", "ocsp_urls"], urls("/ocsp"));
        }
        _ => {}
    }
    for (key, value) in &step.settings {
        match value {
            Some(v) => set(&mut table, key, v.clone()),
            None => unset(&mut table, key),
        }
    }
    let text = format!(
        "# Written by `ceremony dev` from ceremonies/examples/{name} (rehearsal on throwaway SoftHSM tokens).\n{}",
        toml::to_string(&table).map_err(|e| Error::Config { file: path.clone(), path: "(top level)".into(), reason: e.to_string() })?
    );
    crate::output::write_new(&path, text.as_bytes(), crate::output::PUBLIC)?;
    Ok(path)
}

/// Run `steps` in order in `out` (an existing directory; ceremonies never overwrite their
/// outputs) on `tokens`, as rehearsals (no prompts), with `clock` as the ceremonies' clock.
/// Returns the completed ceremonies, in order.
pub fn run_steps(
    out: &Path,
    tokens: &RehearsalTokens,
    opts: &DevOptions,
    steps: &[Step],
    clock: &dyn Clock,
) -> Result<Vec<Done>, Error> {
    let mut done = Vec::with_capacity(steps.len());
    for step in steps {
        let config = write_config(out, step, tokens, opts)?;
        let options = RunOptions {
            rehearsal: true,
            clock,
            ..RunOptions::default()
        };
        match run(&config, &options, &mut Rehearsal(std::io::sink()))? {
            Outcome::Done(d) => {
                tracing::info!(ceremony = %step.file, transcript = %d.transcript.display(), "rehearsal ceremony done");
                done.push(d);
            }
            Outcome::Planned { .. } => {}
        }
    }
    Ok(done)
}

#[cfg(feature = "dev")]
fn rehearsal_hsm(e: hsm_sim::Error) -> Error {
    Error::RehearsalHsm {
        source: Box::new(e),
    }
}

/// Run the complete rehearsal in `out` (created if needed; must be empty): provision the
/// tokens with hsm-sim, then every example ceremony.
#[cfg(feature = "dev")]
pub fn rehearse(out: &Path, opts: &DevOptions) -> Result<DevArtifacts, Error> {
    let base = opts.status_base_url.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://"))
        || base.contains(char::is_whitespace)
    {
        return Err(Error::Config {
            file: PathBuf::from("ceremony dev"),
            path: "status_base_url".into(),
            reason: format!(
                "{:?} is not an http:// or https:// URL",
                opts.status_base_url
            ),
        });
    }
    if out.exists() {
        let non_empty = std::fs::read_dir(out)
            .map_err(|source| Error::Read {
                what: "output directory",
                path: out.to_path_buf(),
                source,
            })?
            .next()
            .is_some();
        if non_empty {
            return Err(Error::OutputExists(out.to_path_buf()));
        }
    }
    std::fs::create_dir_all(out).map_err(|source| Error::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let out = out.canonicalize().map_err(|source| Error::Read {
        what: "output directory",
        path: out.to_path_buf(),
        source,
    })?;

    let hsm_dir = out.join("hsm");
    let root = hsm_sim::provision(&hsm_dir, ROOT_TOKEN, None, None).map_err(rehearsal_hsm)?;
    let tokens_here = std::fs::read_dir(hsm_dir.join("tokens"))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if !tokens_here {
        return Err(Error::Input {
            what: "rehearsal HSM",
            path: root.conf,
            reason: "SoftHSM was already loaded in this process with another configuration, so the tokens did not land \
                     here; run the rehearsal in a fresh process (`ceremony dev --out DIR`)"
                .into(),
        });
    }
    let online = hsm_sim::add_token(&hsm_dir, ONLINE_TOKEN, None, None).map_err(rehearsal_hsm)?;
    tracing::info!(dir = %out.display(), "rehearsal HSM provisioned");

    let tokens = RehearsalTokens {
        module: root.module.clone(),
        root_token: root.label.clone(),
        root_so_pin_file: hsm_dir.join("so.pin"),
        online_token: online.label.clone(),
        online_pin_file: online.pin_file.clone(),
    };
    let steps: Vec<Step> = EXAMPLES.iter().map(|(n, _)| Step::example(n)).collect();
    let done = run_steps(&out, &tokens, opts, &steps, &ca_core::clock::SystemClock)?;
    // The root ceremony replaced the root token's initial user PIN with the quorum PIN: the
    // provisioning PIN file is stale, remove it so nobody mistakes it for the PIN.
    let _ = std::fs::remove_file(&root.pin_file);
    let last = done.last().map(|d| d.transcript.clone());
    let transcript = last.ok_or_else(|| Error::History {
        dir: out.join("transcripts"),
        reason: "no transcript was written".into(),
    })?;
    let root_cert = out.join("root.pem");
    let root_fingerprint = crate::x509::read_cert_pem("root certificate", &root_cert)?.sha256;
    Ok(DevArtifacts {
        softhsm_conf: root.conf,
        module: root.module,
        online_token: online.label,
        online_pin_file: online.pin_file,
        issuing_key_label: ISSUING_KEY.into(),
        ocsp_key_label: OCSP_KEY.into(),
        audit_key_label: AUDIT_KEY.into(),
        audit_public_key: out.join("audit-checkpoint.pub.pem"),
        root_cert,
        intermediate_cert: out.join("intermediate.pem"),
        chain: out.join("chain.pem"),
        ocsp_signer_cert: out.join("ocsp-signer.pem"),
        root_crl: out.join("root.crl"),
        intermediate_ocsp_response: out.join("intermediate.ocsp.der"),
        root_fingerprint,
        transcript,
    })
}
