//! Running a ceremony: validate everything, check the history and the quorum shares, show the
//! plan, collect the officers' confirmations, then (and only then) use the HSM, write the
//! outputs and the signed transcript.
//!
//! The runner holds what every kind shares: unlocking the root token with the quorum PIN,
//! the transcript and the outputs (`Ctx`); what a kind checks, shows and does lives in its
//! module under [`crate::kind`].

use crate::config::{Config, Kind};
use crate::error::{Error, QuorumError};
use crate::history::History;
use crate::hsm;
use crate::kind::Steps;
use crate::output::{write_new, PUBLIC};
use crate::plan::{Plan, TokenRef};
use crate::quorum::{self, LoadedShare, ShareSet};
use crate::transcript::{
    CertFact, Facts, FileFact, KeyFact, Recorder, TokenId, Transcript, TranscriptSignature,
};
use crate::x509;
use ca_core::clock::{Clock, SystemClock};
use ca_core::signer::pkcs11::{PinSource, Pkcs11Signer, Token};
use ca_core::signer::{sha256_hex, Signer};
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// How the ceremony talks to the people in the room.
pub trait Ui {
    /// Show text (the plan, progress).
    fn show(&mut self, text: &str);
    /// Ask `officer` to confirm the plan shown; `Ok` only if they did.
    fn confirm(&mut self, officer: &str) -> Result<(), Error>;
}

/// Interactive console: each officer confirms by typing their full name.
pub struct Console<R, W> {
    input: R,
    out: W,
}

impl<R: BufRead, W: Write> Console<R, W> {
    /// A console over `input` and `out` (normally locked stdin and stdout).
    pub fn new(input: R, out: W) -> Self {
        Console { input, out }
    }
}

impl<R: BufRead, W: Write> Ui for Console<R, W> {
    fn show(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    fn confirm(&mut self, officer: &str) -> Result<(), Error> {
        let _ = write!(self.out, "Officer {officer}: type your full name to confirm the plan above, anything else aborts: ");
        let _ = self.out.flush();
        let mut line = String::new();
        match self.input.read_line(&mut line) {
            Ok(0) | Err(_) => Err(Error::NoConfirmationInput {
                officer: officer.to_string(),
            }),
            Ok(_) if line.trim() == officer => {
                let _ = writeln!(self.out, "  confirmed by {officer}");
                Ok(())
            }
            Ok(_) => Err(Error::NotConfirmed {
                officer: officer.to_string(),
            }),
        }
    }
}

/// Rehearsal output: shows text, takes no confirmations (the runner records them as not
/// typed and marks the transcript as a rehearsal).
pub struct Rehearsal<W>(pub W);

impl<W: Write> Ui for Rehearsal<W> {
    fn show(&mut self, text: &str) {
        let _ = writeln!(self.0, "{text}");
    }
    fn confirm(&mut self, _officer: &str) -> Result<(), Error> {
        Ok(())
    }
}

static SYSTEM_CLOCK: SystemClock = SystemClock;

/// Options of [`run`].
pub struct RunOptions<'a> {
    /// Validate and show the plan only.
    pub dry_run: bool,
    /// A rehearsal: officers are not prompted; the transcript says so.
    pub rehearsal: bool,
    /// Share files given besides those in the configuration (`--share`).
    pub shares: Vec<PathBuf>,
    /// The clock (the system clock unless testing).
    pub clock: &'a dyn Clock,
}

impl Default for RunOptions<'_> {
    fn default() -> Self {
        RunOptions {
            dry_run: false,
            rehearsal: false,
            shares: Vec::new(),
            clock: &SYSTEM_CLOCK,
        }
    }
}

/// A file the ceremony wrote.
#[derive(Debug, Clone)]
pub struct WrittenFile {
    /// What it is.
    pub role: String,
    /// Path it was written to.
    pub path: PathBuf,
    /// SHA-256 of the file.
    pub sha256: String,
}

/// A completed ceremony.
#[derive(Debug, Clone)]
pub struct Done {
    /// Ceremony id.
    pub ceremony_id: String,
    /// Which ceremony ran.
    pub kind: Kind,
    /// The signed transcript (JSON).
    pub transcript: PathBuf,
    /// The Markdown report.
    pub report: PathBuf,
    /// Files written (besides the transcript).
    pub files: Vec<WrittenFile>,
    /// Certificates signed, with their SHA-256 fingerprints.
    pub certificates: Vec<CertFact>,
    /// SHA-256 of the transcript signer's public key.
    pub signer_spki_sha256: String,
}

impl Done {
    /// Text for the operator: outputs and fingerprints.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "Ceremony {} ({}) complete.\n\nOutputs (SHA-256 of each file):\n",
            self.ceremony_id, self.kind
        );
        for f in &self.files {
            let _ = writeln!(s, "  {:<22} {}  {}", f.role, f.sha256, f.path.display());
        }
        for c in &self.certificates {
            let _ = writeln!(
                s,
                "\n{} certificate {}\n  SHA-256 fingerprint (DER): {}",
                c.role, c.subject, c.sha256
            );
        }
        let _ = writeln!(
            s,
            "\nTranscript: {}\nReport:     {}\nSigned by key with SHA-256 {}",
            self.transcript.display(),
            self.report.display(),
            self.signer_spki_sha256
        );
        s
    }
}

/// What [`run`] did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// `--dry-run`: the plan, validated.
    Planned {
        /// The plan as shown.
        plan: String,
    },
    /// The ceremony ran.
    Done(Done),
}

/// The root token PIN, reassembled from quorum shares (before any HSM access).
pub(crate) struct Unlock {
    pin: Zeroizing<String>,
    set: ShareSet,
    used: Vec<LoadedShare>,
}

fn unlock(plan: &Plan, history: &History, token: &TokenRef) -> Result<Unlock, Error> {
    let (_, expected) = history.root_ceremony(&token.label).ok_or_else(|| Error::History {
        dir: history.dir.clone(),
        reason: format!(
            "no root ceremony for token {:?} in the history, so the PIN shares cannot be checked; put the root \
             ceremony's transcripts in this directory",
            token.label
        ),
    })?;
    if plan.share_inputs.is_empty() {
        return Err(QuorumError::NoShares.into());
    }
    let loaded = plan
        .share_inputs
        .iter()
        .map(|p| quorum::read_share(p))
        .collect::<Result<Vec<_>, _>>()?;
    let (pin, set) = quorum::reassemble(
        &loaded,
        &quorum::Expect {
            token_label: &token.label,
            ceremony: Some((&expected.ceremony_id, &expected.pin_commitment)),
            officers: &plan.officers,
        },
    )?;
    Ok(Unlock {
        pin,
        set,
        used: loaded,
    })
}

/// Run the ceremony described by `file`.
pub fn run(file: &Path, opts: &RunOptions<'_>, ui: &mut dyn Ui) -> Result<Outcome, Error> {
    let (config, text) = Config::load(file)?;
    let start = opts.clock.now();
    let mut plan = Plan::from_config(file, config, text, start, &opts.shares)?;
    let history = History::load(&plan.transcripts)?;
    plan.task.bind_history(&history);
    let unlock = match plan.quorum_token() {
        Some(_) if opts.dry_run && plan.share_inputs.is_empty() => None,
        Some(token) => Some(unlock(&plan, &history, token)?),
        None => None,
    };
    let described = describe(&plan, &history, unlock.as_ref());
    ui.show(&described);
    if opts.dry_run {
        return Ok(Outcome::Planned { plan: described });
    }

    let ceremony_id = hex::encode(rand::random::<[u8; 16]>());
    let mut ctx = Ctx {
        plan: &plan,
        rec: Recorder::new(&ceremony_id),
        clock: opts.clock,
        ceremony_id: &ceremony_id,
        facts: Facts::default(),
        files: Vec::new(),
    };
    ctx.rec.record(
        start,
        "config-validated",
        Some(&plan.operator),
        None,
        &[
            ("config", plan.rel(&plan.file)),
            ("config_sha256", plan.config_sha256.clone()),
        ],
        &[],
    );
    ctx.rec.record(
        ctx.now(),
        "history-verified",
        Some(&plan.operator),
        None,
        &[("transcripts", plan.rel(&plan.transcripts))],
        &[
            ("transcripts_verified", history.records.len().to_string()),
            (
                "previous_transcript_sha256",
                history.head_sha256().unwrap_or_else(|| "none".into()),
            ),
        ],
    );
    for officer in &plan.officers {
        let mode = if opts.rehearsal {
            "rehearsal: not typed"
        } else {
            ui.confirm(officer)?;
            "typed their name"
        };
        ctx.rec.record(
            ctx.now(),
            "officer-confirmed",
            Some(officer),
            None,
            &[("plan_config_sha256", plan.config_sha256.clone())],
            &[("confirmation", mode.into())],
        );
    }
    if let Some(u) = &unlock {
        for s in &u.used {
            let bytes = std::fs::read(&s.file).map_err(|source| Error::Read {
                what: "PIN share",
                path: s.file.clone(),
                source,
            })?;
            ctx.rec.record(
                ctx.now(),
                "share-presented",
                Some(&s.share.officer),
                None,
                &[
                    ("share_file", plan.rel(&s.file)),
                    ("share_file_sha256", sha256_hex(&bytes)),
                    ("share_index", s.share.index.to_string()),
                ],
                &[],
            );
        }
        ctx.rec.record(
            ctx.now(),
            "pin-reassembled",
            Some(&plan.operator),
            None,
            &[
                ("share_set_ceremony", u.set.ceremony_id.clone()),
                ("threshold", u.set.threshold.to_string()),
            ],
            &[("pin_commitment", "matches".into())],
        );
    }

    match plan.task.execute(&mut ctx, unlock.as_ref()) {
        Ok(auth) => finish(ctx, &history, auth, opts.rehearsal, ui),
        Err(e) => {
            failure_report(&ctx, &history, &e);
            Err(e)
        }
    }
}

/// The key that signs the transcript: the key the ceremony generated (`root`, `key`) or used
/// (the root key, the issuing key for `ocsp-signer`).
pub(crate) struct Authority {
    pub(crate) signer: Pkcs11Signer,
    pub(crate) token: TokenId,
}

/// A running ceremony: the kinds record their steps, facts and outputs through it.
pub(crate) struct Ctx<'a> {
    plan: &'a Plan,
    rec: Recorder,
    clock: &'a dyn Clock,
    pub(crate) ceremony_id: &'a str,
    pub(crate) facts: Facts,
    files: Vec<WrittenFile>,
}

impl Ctx<'_> {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// Record a step done by the HSM operator.
    pub(crate) fn step(
        &mut self,
        step: &str,
        token: Option<&TokenId>,
        inputs: &[(&str, String)],
        outputs: &[(&str, String)],
    ) {
        let now = self.now();
        self.rec
            .record(now, step, Some(&self.plan.operator), token, inputs, outputs);
    }

    /// Write a new output file (never overwriting) and record it with its SHA-256.
    pub(crate) fn write(
        &mut self,
        role: &str,
        path: &Path,
        bytes: &[u8],
        mode: u32,
        officer: Option<&str>,
    ) -> Result<String, Error> {
        write_new(path, bytes, mode)?;
        let sha256 = sha256_hex(bytes);
        let now = self.now();
        let officer = officer.unwrap_or(&self.plan.operator).to_string();
        self.rec.record(
            now,
            "output-written",
            Some(&officer),
            None,
            &[("what", role.to_string())],
            &[
                ("file", self.plan.rel(path)),
                ("file_sha256", sha256.clone()),
            ],
        );
        self.facts.files.push(FileFact {
            role: role.to_string(),
            path: self.plan.rel(path),
            sha256: sha256.clone(),
        });
        self.files.push(WrittenFile {
            role: role.to_string(),
            path: path.to_path_buf(),
            sha256: sha256.clone(),
        });
        Ok(sha256)
    }

    /// Record a signed (and checked) certificate and write it as PEM.
    pub(crate) fn certificate(&mut self, role: &str, path: &Path, der: &[u8]) -> Result<(), Error> {
        let info = x509::cert_info("signed certificate", path, der.to_vec())?;
        let fact = CertFact {
            role: role.to_string(),
            subject: info.subject,
            serial: x509::serial_hex(&info.serial),
            not_before: info.not_before,
            not_after: info.not_after,
            sha256: info.sha256,
            spki_sha256: sha256_hex(&info.spki_der),
        };
        self.step(
            "certificate-signed",
            None,
            &[
                ("role", role.to_string()),
                ("subject", fact.subject.clone()),
            ],
            &[
                ("serial", fact.serial.clone()),
                ("sha256_fingerprint", fact.sha256.clone()),
                ("signature", "verified with the issuer key".into()),
            ],
        );
        self.facts.certificates.push(fact);
        self.write(
            &format!("{role} certificate"),
            path,
            x509::pem("CERTIFICATE", der)?.as_bytes(),
            PUBLIC,
            None,
        )?;
        Ok(())
    }

    /// Open a token with `pin` (no login yet) and record which token it is.
    pub(crate) fn open_token(
        &mut self,
        token_ref: &TokenRef,
        pin: PinSource,
    ) -> Result<(Token, TokenId), Error> {
        let token = hsm::open(token_ref, pin)?;
        let id = hsm::identify(&token)?;
        self.step(
            "token-opened",
            Some(&id),
            &[("module", token_ref.module.display().to_string())],
            &[("serial", id.serial.clone())],
        );
        Ok((token, id))
    }

    /// Record a key generated in token `id`.
    pub(crate) fn key_generated(&mut self, id: &TokenId, fact: KeyFact) {
        self.step(
            "key-generated",
            Some(id),
            &[
                ("key_label", fact.key_label.clone()),
                ("algorithm", fact.algorithm.to_string()),
            ],
            &[
                ("spki_sha256", fact.spki_sha256.clone()),
                ("sensitive", fact.sensitive.to_string()),
                ("extractable", fact.extractable.to_string()),
                ("never_extractable", fact.never_extractable.to_string()),
            ],
        );
        self.facts.keys.push(fact);
    }

    /// Open the root token with the reassembled PIN: the token's serial is checked against the
    /// share set before the login that opening the signer performs.
    pub(crate) fn open_root(
        &mut self,
        token_ref: &TokenRef,
        key_label: &str,
        root_spki: &[u8],
        unlock: Option<&Unlock>,
    ) -> Result<Authority, Error> {
        let u = unlock.ok_or(Error::Quorum(QuorumError::NoShares))?;
        let token = hsm::open(token_ref, PinSource::Value(u.pin.clone()))?;
        let id = hsm::identify(&token)?;
        if id.serial != u.set.token_serial {
            return Err(Error::TokenMismatch {
                label: id.label,
                expected: u.set.token_serial.clone(),
                found: id.serial,
            });
        }
        self.step(
            "token-opened",
            Some(&id),
            &[("module", token_ref.module.display().to_string())],
            &[("serial", id.serial.clone())],
        );
        let signer = token
            .signer(key_label)
            .map_err(Error::core("logging in and opening the root key"))?;
        if signer.spki_der() != root_spki {
            return Err(Error::KeyMismatch {
                what: format!("key {key_label:?} in token {:?}", id.label),
                reason: "its public key is not the root certificate's".into(),
            });
        }
        self.step(
            "key-opened",
            Some(&id),
            &[("key_label", key_label.to_string())],
            &[
                ("spki_sha256", sha256_hex(signer.spki_der())),
                ("matches", "root certificate".into()),
            ],
        );
        Ok(Authority { signer, token: id })
    }
}

fn transcript_names(plan: &Plan, history: &History) -> (PathBuf, PathBuf) {
    let stem = format!("{:03}-{}", history.next_seq(), plan.kind.name());
    (
        plan.transcripts.join(format!("{stem}.json")),
        plan.transcripts.join(format!("{stem}.md")),
    )
}

fn finish(
    ctx: Ctx<'_>,
    history: &History,
    auth: Authority,
    rehearsal: bool,
    ui: &mut dyn Ui,
) -> Result<Outcome, Error> {
    let plan = ctx.plan;
    let finished_at = ctx.now();
    let key_label = auth.signer.key_label().to_string();
    let mut transcript = Transcript {
        format: crate::transcript::FORMAT.to_string(),
        ceremony_id: ctx.ceremony_id.to_string(),
        kind: plan.kind,
        name: plan.name.clone(),
        rehearsal,
        tool: format!("ceremony {}", env!("CARGO_PKG_VERSION")),
        config_file: plan.rel(&plan.file),
        config_sha256: plan.config_sha256.clone(),
        config: plan.config_text.clone(),
        previous_transcript_sha256: history.head_sha256(),
        started_at: plan.start,
        finished_at,
        officers: plan.officers.clone(),
        operator: plan.operator.clone(),
        entries: ctx.rec.into_entries(),
        facts: ctx.facts,
        signature: TranscriptSignature {
            algorithm: auth.signer.algorithm(),
            token: auth.token.clone(),
            key_label: key_label.clone(),
            spki: String::new(),
            spki_sha256: String::new(),
            value: String::new(),
        },
    };
    transcript.sign(&auth.signer, auth.token.clone(), &key_label)?;
    let (json, md) = transcript_names(plan, history);
    let bytes = transcript.canonical_bytes();
    write_new(&json, &bytes, PUBLIC)?;
    let json_name = json
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    write_new(
        &md,
        transcript
            .markdown(&sha256_hex(&bytes), &json_name)
            .as_bytes(),
        PUBLIC,
    )?;
    let done = Done {
        ceremony_id: transcript.ceremony_id.clone(),
        kind: plan.kind,
        transcript: json,
        report: md,
        files: ctx.files,
        certificates: transcript.facts.certificates.clone(),
        signer_spki_sha256: transcript.signature.spki_sha256.clone(),
    };
    ui.show(&done.summary());
    Ok(Outcome::Done(done))
}

/// Best effort: a failed ceremony leaves an (unsigned) Markdown record of what happened.
fn failure_report(ctx: &Ctx<'_>, history: &History, error: &Error) {
    let (json, _) = transcript_names(ctx.plan, history);
    let path = json.with_extension(format!("FAILED-{}.md", &ctx.ceremony_id[..8]));
    let mut s = format!(
        "# FAILED key ceremony: {}\n\nKind: {}\nCeremony id: `{}`\nConfiguration: `{}` (SHA-256 `{}`)\n\n**Error:** {}\n\nThis record is not signed. Steps completed before the failure:\n\n| # | Time | Step | Officer | Token | Outputs |\n|---|---|---|---|---|---|\n",
        ctx.plan.name,
        ctx.plan.kind,
        ctx.ceremony_id,
        ctx.plan.rel(&ctx.plan.file),
        ctx.plan.config_sha256,
        error
    );
    for e in ctx.rec.entries() {
        let outputs = e
            .outputs
            .iter()
            .map(|(k, v)| format!("{k}: `{v}`"))
            .collect::<Vec<_>>()
            .join("<br>");
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            e.seq,
            e.time.to_rfc3339(),
            e.step,
            e.officer.as_deref().unwrap_or(""),
            e.token
                .as_ref()
                .map(|t| format!("{} ({})", t.label, t.serial))
                .unwrap_or_default(),
            outputs
        );
    }
    if let Err(e) = write_new(&path, s.as_bytes(), PUBLIC) {
        tracing::error!(error = %e, "could not write the failure report");
    }
}

/// The plan as shown to the officers before they confirm.
fn describe(plan: &Plan, history: &History, unlock: Option<&Unlock>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "=== Key ceremony: {} ===", plan.name);
    let _ = writeln!(s, "Kind:            {}", plan.kind);
    let _ = writeln!(
        s,
        "Configuration:   {} (SHA-256 {})",
        plan.file.display(),
        plan.config_sha256
    );
    let _ = writeln!(s, "Start:           {}", plan.start.to_rfc3339());
    let _ = writeln!(
        s,
        "Officers:        {} (HSM operator: {})",
        plan.officers.join(", "),
        plan.operator
    );
    let (json, _) = transcript_names(plan, history);
    let _ = writeln!(
        s,
        "History:         {} earlier transcript(s) verified in {}; this transcript: {}",
        history.records.len(),
        plan.transcripts.display(),
        json.display()
    );
    if let Some(u) = unlock {
        let _ = writeln!(
            s,
            "Quorum:          {} of {} shares from root ceremony {} reassemble the PIN of token {:?} (serial {}): checked",
            u.used.len(),
            u.set.total,
            u.set.ceremony_id,
            u.set.token_label,
            u.set.token_serial
        );
    } else if plan.quorum_token().is_some() {
        let _ = writeln!(s, "Quorum:          shares not given (dry run); they will be checked before the HSM is opened");
    }
    let _ = writeln!(s, "\nSteps:");
    let mut steps = Steps::new(s);
    plan.task.describe(&mut steps, history);
    steps.step(format!("Write the signed transcript {}", json.display()));
    steps.into_text()
}
