//! Running a ceremony: validate everything, check the history and the quorum shares, show the
//! plan, collect the officers' confirmations, then (and only then) use the HSM, write the
//! outputs and the signed transcript.

use crate::config::{Config, Kind};
use crate::error::{Error, QuorumError};
use crate::history::History;
use crate::hsm;
use crate::output::{write_new, PUBLIC, SECRET};
use crate::plan::{Plan, Task, TokenRef};
use crate::quorum::{self, LoadedShare, ShareSet};
use crate::transcript::{
    CertFact, CrlFact, Facts, FileFact, OcspFact, Recorder, TokenId, Transcript,
    TranscriptSignature,
};
use crate::x509;
use ca_core::clock::{to_offset, Clock, SystemClock};
use ca_core::revocation::{CertStatus, RevocationReason};
use ca_core::signer::pkcs11::{PinSource, Pkcs11Signer};
use ca_core::signer::{sha256_hex, PublicKey, RcgenKey, Signer};
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
    /// Where.
    pub path: PathBuf,
    /// SHA-256 of the file.
    pub sha256: String,
}

/// A completed ceremony.
#[derive(Debug, Clone)]
pub struct Done {
    /// Ceremony id.
    pub ceremony_id: String,
    /// Kind.
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
struct Unlock {
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
    if let Task::Crl(t) = &mut plan.task {
        t.number = history.last_crl_number(&sha256_hex(&t.root.spki_der)) + 1;
    }
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

    match execute(&mut ctx, unlock.as_ref()) {
        Ok(auth) => finish(ctx, &history, auth, opts.rehearsal, ui),
        Err(e) => {
            failure_report(&ctx, &history, &e);
            Err(e)
        }
    }
}

/// The key that signs the transcript.
struct Authority {
    signer: Pkcs11Signer,
    token: TokenId,
}

struct Ctx<'a> {
    plan: &'a Plan,
    rec: Recorder,
    clock: &'a dyn Clock,
    ceremony_id: &'a str,
    facts: Facts,
    files: Vec<WrittenFile>,
}

impl Ctx<'_> {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    fn step(
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

    fn write(
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

    fn certificate(&mut self, role: &str, path: &Path, der: &[u8]) -> Result<(), Error> {
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

    /// Open the root token with the reassembled PIN: the token's serial is checked against the
    /// share set before the login that opening the signer performs.
    fn open_root(
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

fn sign_err<'a>(
    key: &'a RcgenKey<'_>,
    op: &'static str,
) -> impl FnOnce(rcgen::Error) -> Error + 'a {
    move |e| Error::Core {
        op,
        source: key.map_err(e),
    }
}

fn execute(ctx: &mut Ctx<'_>, unlock: Option<&Unlock>) -> Result<Authority, Error> {
    let plan = ctx.plan;
    match &plan.task {
        Task::Root(t) => {
            let pin = quorum::random_pin();
            let token = hsm::open(&t.token, PinSource::Value(pin.clone()))?;
            let id = hsm::identify(&token)?;
            ctx.step(
                "token-opened",
                Some(&id),
                &[("module", t.token.module.display().to_string())],
                &[("serial", id.serial.clone())],
            );
            let holders: Vec<String> = t.shares.iter().map(|(o, _)| o.clone()).collect();
            let (set, files) = quorum::split(
                &pin,
                ctx.ceremony_id,
                &id.label,
                &id.serial,
                t.threshold,
                &holders,
            )?;
            ctx.step(
                "pin-split",
                Some(&id),
                &[
                    ("threshold", t.threshold.to_string()),
                    ("shares", holders.len().to_string()),
                ],
                &[
                    ("pin_commitment", set.pin_commitment.clone()),
                    ("reassembly", "checked before use".into()),
                ],
            );
            // The shares are on disk before the token gets the PIN, so the PIN is never set
            // without a way to reassemble it.
            for ((officer, path), share) in t.shares.iter().zip(&files) {
                ctx.write(
                    "PIN share",
                    path,
                    share.to_json().as_bytes(),
                    SECRET,
                    Some(officer),
                )?;
            }
            hsm::set_user_pin(&t.token, &token, &t.so_pin, &pin)?;
            ctx.step(
                "user-pin-set",
                Some(&id),
                &[("by", "security officer (C_InitPIN)".into())],
                &[("pin_commitment", set.pin_commitment.clone())],
            );
            ctx.facts.share_set = Some(set);
            let (spki, fact) = hsm::generate_protected_key(&token, &id, &t.key_label, t.algorithm)?;
            key_step(ctx, &id, &fact);
            ctx.facts.keys.push(fact);
            let signer = token.signer(&t.key_label).map_err(Error::core(
                "logging in with the new PIN and opening the root key",
            ))?;
            if signer.spki_der() != spki.as_slice() {
                return Err(Error::KeyMismatch {
                    what: format!("key {:?}", t.key_label),
                    reason: "the token returned another public key".into(),
                });
            }
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = x509::distinguished_name(&t.subject)?;
            params.not_before = to_offset(t.not_before);
            params.not_after = to_offset(t.not_after);
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&x509::random_serial()));
            // RFC 5280 4.2.1.9 and 4.2.1.3: a CA, signing certificates and CRLs; no EKU.
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            params.key_identifier_method = x509::key_identifier(&spki)?;
            let key = RcgenKey::new(&signer);
            let cert = params
                .self_signed(&key)
                .map_err(sign_err(&key, "signing the root certificate"))?;
            x509::check_certificate("root certificate", cert.der(), &spki)?;
            ctx.certificate("root", &t.certificate, cert.der())?;
            Ok(Authority { signer, token: id })
        }
        Task::Key(t) => {
            let token = hsm::open(&t.token, t.pin.clone())?;
            let id = hsm::identify(&token)?;
            ctx.step(
                "token-opened",
                Some(&id),
                &[("module", t.token.module.display().to_string())],
                &[("serial", id.serial.clone())],
            );
            let (spki, fact) = hsm::generate_protected_key(&token, &id, &t.key_label, t.algorithm)?;
            key_step(ctx, &id, &fact);
            ctx.facts.keys.push(fact);
            let signer = token
                .signer(&t.key_label)
                .map_err(Error::core("opening the new key"))?;
            if signer.spki_der() != spki.as_slice() {
                return Err(Error::KeyMismatch {
                    what: format!("key {:?}", t.key_label),
                    reason: "the token returned another public key".into(),
                });
            }
            ctx.write(
                "issuing public key",
                &t.public_key,
                x509::pem("PUBLIC KEY", &spki)?.as_bytes(),
                PUBLIC,
                None,
            )?;
            if let Some(a) = &t.audit {
                // Recorded after the issuing key: the first key of a key ceremony is the
                // issuing key (history pins later signers to it).
                let (audit_spki, fact) =
                    hsm::generate_protected_key(&token, &id, &a.key_label, a.algorithm)?;
                key_step(ctx, &id, &fact);
                ctx.facts.keys.push(fact);
                ctx.write(
                    "audit checkpoint public key",
                    &a.public_key,
                    x509::pem("PUBLIC KEY", &audit_spki)?.as_bytes(),
                    PUBLIC,
                    None,
                )?;
            }
            Ok(Authority { signer, token: id })
        }
        Task::Intermediate(t) => {
            let auth = ctx.open_root(&t.token, &t.key_label, &t.root.spki_der, unlock)?;
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = x509::distinguished_name(&t.subject)?;
            params.not_before = to_offset(t.not_before);
            params.not_after = to_offset(t.not_after);
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&x509::random_serial()));
            // RFC 5280 4.2.1.9: pathLen 0, the intermediate issues end-entity certificates only.
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
            params.extended_key_usages = t.extended_key_usage.clone();
            params.name_constraints = t.name_constraints.clone();
            params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
                uris: t.crl_urls.clone(),
            }];
            params.use_authority_key_identifier_extension = true;
            params.key_identifier_method = x509::key_identifier(t.public_key.spki_der())?;
            if let Some(aia) = x509::authority_info_access(&t.ocsp_urls, &t.ca_issuers_urls)? {
                params.custom_extensions.push(aia);
            }
            let key = RcgenKey::new(&auth.signer);
            let issuer = rcgen::Issuer::from_ca_cert_der(&t.root.der.as_slice().into(), &key)
                .map_err(Error::build("issuer from the root certificate"))?;
            let cert = params
                .signed_by(&t.public_key, &issuer)
                .map_err(sign_err(&key, "signing the intermediate certificate"))?;
            x509::check_certificate("intermediate certificate", cert.der(), &t.root.spki_der)?;
            ctx.certificate("intermediate", &t.certificate, cert.der())?;
            if let Some(chain) = &t.chain {
                let text =
                    x509::pem("CERTIFICATE", cert.der())? + &x509::pem("CERTIFICATE", &t.root.der)?;
                ctx.write(
                    "chain (intermediate, root)",
                    chain,
                    text.as_bytes(),
                    PUBLIC,
                    None,
                )?;
            }
            Ok(auth)
        }
        Task::OcspSigner(t) => {
            let token = hsm::open(&t.token, t.pin.clone())?;
            let id = hsm::identify(&token)?;
            ctx.step(
                "token-opened",
                Some(&id),
                &[("module", t.token.module.display().to_string())],
                &[("serial", id.serial.clone())],
            );
            let signer = token
                .signer(&t.issuing_key_label)
                .map_err(Error::core("opening the issuing key"))?;
            if signer.spki_der() != t.issuer.spki_der.as_slice() {
                return Err(Error::KeyMismatch {
                    what: format!("key {:?} in token {:?}", t.issuing_key_label, id.label),
                    reason: format!(
                        "its public key is not the one in {}",
                        t.issuer.path.display()
                    ),
                });
            }
            ctx.step(
                "key-opened",
                Some(&id),
                &[("key_label", t.issuing_key_label.clone())],
                &[
                    ("spki_sha256", sha256_hex(signer.spki_der())),
                    ("matches", "issuing CA certificate".into()),
                ],
            );
            let (spki, fact) = hsm::generate_protected_key(&token, &id, &t.key_label, t.algorithm)?;
            key_step(ctx, &id, &fact);
            ctx.facts.keys.push(fact);
            let public = PublicKey::from_spki(&spki)
                .map_err(Error::core("reading the OCSP signing public key"))?;
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = x509::distinguished_name(&t.subject)?;
            params.not_before = to_offset(t.not_before);
            params.not_after = to_offset(t.not_after);
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&x509::random_serial()));
            // RFC 6960 4.2.2.2: a delegated responder certificate carries id-kp-OCSPSigning, and
            // 4.2.2.2.1: id-pkix-ocsp-nocheck so clients do not ask about the responder itself.
            params.is_ca = rcgen::IsCa::ExplicitNoCa;
            params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::OcspSigning];
            params.custom_extensions.push(x509::ocsp_nocheck()?);
            params.use_authority_key_identifier_extension = true;
            params.key_identifier_method = x509::key_identifier(&spki)?;
            let key = RcgenKey::new(&signer);
            let issuer = rcgen::Issuer::from_ca_cert_der(&t.issuer.der.as_slice().into(), &key)
                .map_err(Error::build("issuer from the issuing CA certificate"))?;
            let cert = params
                .signed_by(&public, &issuer)
                .map_err(sign_err(&key, "signing the OCSP signer certificate"))?;
            x509::check_certificate("OCSP signer certificate", cert.der(), &t.issuer.spki_der)?;
            ctx.certificate("ocsp-signer", &t.certificate, cert.der())?;
            Ok(Authority { signer, token: id })
        }
        Task::Crl(t) => {
            let auth = ctx.open_root(&t.token, &t.key_label, &t.root.spki_der, unlock)?;
            let params = rcgen::CertificateRevocationListParams {
                this_update: to_offset(t.this_update),
                next_update: to_offset(t.next_update),
                crl_number: rcgen::SerialNumber::from_slice(&crl_number_bytes(t.number)),
                issuing_distribution_point: None,
                revoked_certs: t
                    .revoked
                    .iter()
                    .map(|r| rcgen::RevokedCertParams {
                        serial_number: rcgen::SerialNumber::from_slice(&r.serial),
                        revocation_time: to_offset(r.revoked_at),
                        reason_code: rcgen_reason(r.reason),
                        invalidity_date: None,
                    })
                    .collect(),
                // RFC 5280 5.2.1: the AKI matches the root certificate's SKI.
                key_identifier_method: match &t.root.ski {
                    Some(ski) => rcgen::KeyIdMethod::PreSpecified(ski.clone()),
                    None => rcgen::KeyIdMethod::Sha256,
                },
            };
            let key = RcgenKey::new(&auth.signer);
            let issuer = rcgen::Issuer::from_ca_cert_der(&t.root.der.as_slice().into(), &key)
                .map_err(Error::build("issuer from the root certificate"))?;
            let crl = params
                .signed_by(&issuer)
                .map_err(sign_err(&key, "signing the root CRL"))?;
            x509::check_crl(crl.der(), &t.root.spki_der)?;
            let revoked: Vec<String> = t
                .revoked
                .iter()
                .map(|r| x509::serial_hex(&r.serial))
                .collect();
            let sha256 = sha256_hex(crl.der());
            ctx.step(
                "crl-signed",
                Some(&auth.token),
                &[
                    ("crl_number", t.number.to_string()),
                    ("revoked", revoked.join(",")),
                ],
                &[
                    ("sha256", sha256.clone()),
                    ("signature", "verified with the root key".into()),
                ],
            );
            ctx.facts.crl = Some(CrlFact {
                issuer_spki_sha256: sha256_hex(&t.root.spki_der),
                number: t.number,
                this_update: t.this_update,
                next_update: t.next_update,
                revoked,
                sha256,
            });
            ctx.write("root CRL (DER)", &t.crl, crl.der(), PUBLIC, None)?;
            Ok(auth)
        }
        Task::OcspResponse(t) => {
            let auth = ctx.open_root(&t.token, &t.key_label, &t.root.spki_der, unlock)?;
            let der = ca_core::ocsp::sign_response(
                &auth.signer,
                None,
                &t.root.der,
                &[(t.subject_cert.serial.clone(), t.status.clone())],
                t.this_update,
                t.next_update,
                None,
            )
            .map_err(Error::core("signing the OCSP response"))?;
            let status = match &t.status {
                CertStatus::Good => "good".to_string(),
                CertStatus::Revoked { reason, .. } => format!("revoked ({reason})"),
                CertStatus::Unknown => "unknown".to_string(),
            };
            let sha256 = sha256_hex(&der);
            ctx.step(
                "ocsp-response-signed",
                Some(&auth.token),
                &[
                    ("serial", x509::serial_hex(&t.subject_cert.serial)),
                    ("status", status.clone()),
                ],
                &[
                    ("sha256", sha256.clone()),
                    ("next_update", t.next_update.to_rfc3339()),
                ],
            );
            ctx.facts.ocsp_response = Some(OcspFact {
                serial: x509::serial_hex(&t.subject_cert.serial),
                status,
                this_update: t.this_update,
                next_update: t.next_update,
                sha256,
            });
            ctx.write("OCSP response (DER)", &t.response, &der, PUBLIC, None)?;
            Ok(auth)
        }
    }
}

fn key_step(ctx: &mut Ctx<'_>, id: &TokenId, fact: &crate::transcript::KeyFact) {
    ctx.step(
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
}

fn crl_number_bytes(n: u64) -> Vec<u8> {
    let b = n.to_be_bytes();
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len() - 1);
    b[first..].to_vec()
}

/// The CRL entry reason code; none for `unspecified`, which RFC 5280 5.3.1 says to express by
/// omitting the extension ("SHOULD be absent instead of using the unspecified (0) reasonCode
/// value").
fn rcgen_reason(r: RevocationReason) -> Option<rcgen::RevocationReason> {
    use rcgen::RevocationReason as R;
    Some(match r {
        RevocationReason::Unspecified => return None,
        RevocationReason::KeyCompromise => R::KeyCompromise,
        RevocationReason::CaCompromise => R::CaCompromise,
        RevocationReason::AffiliationChanged => R::AffiliationChanged,
        RevocationReason::Superseded => R::Superseded,
        RevocationReason::CessationOfOperation => R::CessationOfOperation,
        RevocationReason::CertificateHold => R::CertificateHold,
        RevocationReason::RemoveFromCrl => R::RemoveFromCrl,
        RevocationReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        RevocationReason::AaCompromise => R::AaCompromise,
    })
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
    let mut n = 0;
    let mut step = |s: &mut String, text: String| {
        n += 1;
        let _ = writeln!(s, "  {n}. {text}");
    };
    let validity = |nb: &chrono::DateTime<chrono::Utc>, na: &chrono::DateTime<chrono::Utc>| {
        format!("{} to {}", nb.to_rfc3339(), na.to_rfc3339())
    };
    match &plan.task {
        Task::Root(t) => {
            step(
                &mut s,
                format!(
                    "Open token {:?} ({})",
                    t.token.label,
                    t.token.module.display()
                ),
            );
            step(
                &mut s,
                format!(
                    "Generate a random user PIN and split it into {} shares, {} needed:",
                    t.shares.len(),
                    t.threshold
                ),
            );
            for (o, p) in &t.shares {
                let _ = writeln!(s, "       {o}: {}", p.display());
            }
            step(
                &mut s,
                "Set the user PIN as the security officer (C_InitPIN)".into(),
            );
            step(
                &mut s,
                format!(
                    "Generate {} root key {:?} in the token (sensitive, not extractable)",
                    t.algorithm, t.key_label
                ),
            );
            step(
                &mut s,
                format!(
                    "Self-sign the root certificate CN={} (CA, keyCertSign + cRLSign), valid {} -> {}",
                    t.subject.common_name,
                    validity(&t.not_before, &t.not_after),
                    t.certificate.display()
                ),
            );
        }
        Task::Key(t) => {
            step(
                &mut s,
                format!(
                    "Open online token {:?} ({})",
                    t.token.label,
                    t.token.module.display()
                ),
            );
            step(
                &mut s,
                format!(
                    "Generate {} issuing key {:?} (sensitive, not extractable)",
                    t.algorithm, t.key_label
                ),
            );
            step(
                &mut s,
                format!("Export its public key -> {}", t.public_key.display()),
            );
            if let Some(a) = &t.audit {
                step(
                    &mut s,
                    format!(
                        "Generate {} audit checkpoint key {:?} (sensitive, not extractable); export its public key -> {}",
                        a.algorithm,
                        a.key_label,
                        a.public_key.display()
                    ),
                );
            }
        }
        Task::Intermediate(t) => {
            let key_sha = sha256_hex(t.public_key.spki_der());
            let origin = history
                .key_origin(&key_sha)
                .map(|r| format!(" (generated in {})", r.path.display()))
                .unwrap_or_default();
            step(
                &mut s,
                format!(
                    "Open token {:?} with the quorum PIN; check its serial; open root key {:?}",
                    t.token.label, t.key_label
                ),
            );
            step(
                &mut s,
                format!(
                    "Check the key matches root certificate {} (SHA-256 {})",
                    t.root.path.display(),
                    t.root.sha256
                ),
            );
            step(
                &mut s,
                format!(
                    "Sign the intermediate CN={} for public key {} SHA-256 {key_sha}{origin}: CA pathLen 0, valid {}, CRL {}{}{}",
                    t.subject.common_name,
                    t.public_key_path.display(),
                    validity(&t.not_before, &t.not_after),
                    t.crl_urls.join(" "),
                    if t.ocsp_urls.is_empty() { String::new() } else { format!(", OCSP {}", t.ocsp_urls.join(" ")) },
                    if t.name_constraints.is_some() { ", name constraints" } else { "" }
                ),
            );
            step(
                &mut s,
                format!(
                    "Write {}{}",
                    t.certificate.display(),
                    t.chain
                        .as_ref()
                        .map(|c| format!(" and {}", c.display()))
                        .unwrap_or_default()
                ),
            );
        }
        Task::OcspSigner(t) => {
            step(
                &mut s,
                format!(
                    "Open online token {:?}; open issuing key {:?} and check it matches {}",
                    t.token.label,
                    t.issuing_key_label,
                    t.issuer.path.display()
                ),
            );
            step(
                &mut s,
                format!(
                    "Generate {} OCSP signing key {:?}",
                    t.algorithm, t.key_label
                ),
            );
            step(
                &mut s,
                format!(
                    "Issue the OCSP signer CN={} (id-kp-OCSPSigning, ocsp-nocheck), valid {} -> {}",
                    t.subject.common_name,
                    validity(&t.not_before, &t.not_after),
                    t.certificate.display()
                ),
            );
        }
        Task::Crl(t) => {
            step(
                &mut s,
                format!(
                    "Open token {:?} with the quorum PIN; check its serial; open root key {:?}",
                    t.token.label, t.key_label
                ),
            );
            step(
                &mut s,
                format!(
                    "Sign root CRL number {} (thisUpdate {}, nextUpdate {}) revoking {} certificate(s){} -> {}",
                    t.number,
                    t.this_update.to_rfc3339(),
                    t.next_update.to_rfc3339(),
                    t.revoked.len(),
                    t.revoked.iter().map(|r| format!(" {} ({})", x509::serial_hex(&r.serial), r.reason)).collect::<String>(),
                    t.crl.display()
                ),
            );
        }
        Task::OcspResponse(t) => {
            step(
                &mut s,
                format!(
                    "Open token {:?} with the quorum PIN; check its serial; open root key {:?}",
                    t.token.label, t.key_label
                ),
            );
            step(
                &mut s,
                format!(
                    "Sign an OCSP response: {} serial {} is {}, valid {} -> {}",
                    t.subject_cert.subject,
                    x509::serial_hex(&t.subject_cert.serial),
                    match &t.status {
                        CertStatus::Good => "good".to_string(),
                        CertStatus::Revoked { at, reason } => format!("revoked at {at} ({reason})"),
                        CertStatus::Unknown => "unknown".to_string(),
                    },
                    validity(&t.this_update, &t.next_update),
                    t.response.display()
                ),
            );
        }
    }
    step(
        &mut s,
        format!("Write the signed transcript {}", json.display()),
    );
    s
}
