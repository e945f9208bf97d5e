//! Test support for the CA workspace. Unpublished and only ever a dev-dependency (as rustls keeps
//! its test support in an unpublished crate): nothing in a production binary links it.
//!
//! - [`pki::TestPki`]: a throwaway two-level PKI (root, issuing CA, sled store, a ready
//!   [`ca_core::issuance::Ca`]) with its keys in a fresh SoftHSM token.
//! - [`Faults`]: fault injection on a [`hsm_sim::TestToken`] (logged-out sessions, a token that
//!   refuses the CA's PIN).
//! - [`pkilint`]: DigiCert's pkilint and pyca/cryptography as independent linters of
//!   certificates, CRLs and OCSP responses written to files.
//! - [`pg`]: a throwaway PostgreSQL cluster (or `CA_TEST_DATABASE_URL`) with a fresh
//!   database per test.
//!
//! Fresh tokens themselves come from `hsm-sim` ([`hsm_sim::TestToken`]), which also provisions
//! the SoftHSM configuration of `ca-server dev` and `ceremony dev`.
//!
//! ```no_run
//! use testkit::Faults;
//! let pki = testkit::pki::TestPki::new(ca_core::signer::KeyAlgorithm::P256)?;
//! pki.token.inject_logout()?;
//! # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use ca_core::signer::pkcs11::open_module;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use hsm_sim::TestToken;
use std::path::PathBuf;

/// What can go wrong in test support.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The token fixture failed.
    #[error(transparent)]
    Token(#[from] hsm_sim::Error),
    /// ca-core error (module loading, token lookup).
    #[error(transparent)]
    Core(#[from] ca_core::Error),
    /// A PKCS#11 call of a fault injection failed.
    #[error("PKCS#11 {op} failed: {source}")]
    Pkcs11 {
        /// The PKCS#11 call that failed.
        op: &'static str,
        /// Underlying error.
        #[source]
        source: cryptoki::error::Error,
    },
    /// A pkilint command is not installed where [`pkilint`] looks for it.
    #[error(
        "pkilint's `{tool}` is not installed (looked in {searched}); install it with \
         `scripts/deps.sh test` (PyPI package pkilint into .venv-lint) or `python3 -m pip install pkilint`"
    )]
    LinterMissing {
        /// The command looked for, e.g. `lint_pkix_cert`.
        tool: &'static str,
        /// Where it was looked for.
        searched: String,
    },
    /// The throwaway PostgreSQL server ([`pg`]) could not be started or used.
    #[error("test PostgreSQL: {0}")]
    Postgres(String),
    /// A linter could not be run or answered nonsense.
    #[error("{path}: {source}")]
    Io {
        /// The command involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

pub mod pg;

fn ck(op: &'static str) -> impl FnOnce(cryptoki::error::Error) -> Error {
    move |source| Error::Pkcs11 { op, source }
}

/// Fault injection on a test token: real tokens, real failures, for the recovery paths of the
/// signers.
pub trait Faults {
    /// Log the user out of the token. PKCS#11 login state is shared by all sessions of the
    /// process, so every pooled signer session is now "not logged in" and the next signing
    /// call must recover by itself.
    fn inject_logout(&self) -> Result<(), Error>;

    /// An HSM that refuses the CA: the user PIN is changed behind the CA's back and every
    /// session is logged out, so signers fail (their re-login is refused) until
    /// [`Faults::end_login_refusal`]. A real token, a real failure: an operator rotating the
    /// PIN, or an HSM that lost its login state and sees a wrong PIN.
    fn inject_login_refusal(&self) -> Result<(), Error>;

    /// Undo [`Faults::inject_login_refusal`]: the PIN the CA knows works again.
    fn end_login_refusal(&self) -> Result<(), Error>;
}

impl Faults for TestToken {
    fn inject_logout(&self) -> Result<(), Error> {
        let ctx = open_module(&self.module)?;
        let slot = self.hsm_config().open()?.slot()?;
        let session = ctx.open_rw_session(slot).map_err(ck("open session"))?;
        session.logout().map_err(ck("logout"))
    }

    fn inject_login_refusal(&self) -> Result<(), Error> {
        change_pin(self, self.pin(), &refused_pin(self))
    }

    fn end_login_refusal(&self) -> Result<(), Error> {
        change_pin(self, &refused_pin(self), self.pin())
    }
}

/// The user PIN while [`Faults::inject_login_refusal`] is in effect.
fn refused_pin(token: &TestToken) -> String {
    format!("{}-rotated", token.pin())
}

fn change_pin(token: &TestToken, old: &str, new: &str) -> Result<(), Error> {
    let ctx = open_module(&token.module)?;
    let slot = token.hsm_config().open()?.slot()?;
    let session = ctx.open_rw_session(slot).map_err(ck("open session"))?;
    match session.login(UserType::User, Some(&AuthPin::from(old.to_string()))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => return Err(ck("login")(e)),
    }
    session
        .set_pin(
            &AuthPin::from(old.to_string()),
            &AuthPin::from(new.to_string()),
        )
        .map_err(ck("set PIN"))?;
    session.logout().map_err(ck("logout"))
}

/// DigiCert's pkilint (PyPI package `pkilint`) as an independent RFC 5280 / RFC 6960 linter of
/// artifacts written to files.
///
/// Each [`Check`](pkilint::Check) runs one pkilint command with `--severity WARNING`: pkilint prints the
/// findings at or above that severity and exits with their number (0 when clean). pyca/
/// cryptography, installed with pkilint, then reads the same artifacts as a second, independent
/// reader ([`pkilint::PYCA`] reports, after pkilint's). The commands
/// are looked up in `$PKILINT_DIR`, then in the workspace's `.venv-lint/bin` (where
/// `scripts/deps.sh test` installs them), then on `PATH`. A missing linter is an error
/// ([`Error::LinterMissing`]), never a silent pass.
///
/// ```no_run
/// use testkit::pkilint::{self, Check};
/// let reports = pkilint::run(&[Check::certificate("leaf", std::path::Path::new("leaf.pem"))])?;
/// if let Some(findings) = pkilint::failures(&reports, &[]) {
///     panic!("{findings}");
/// }
/// # Ok::<(), testkit::Error>(())
/// ```
pub mod pkilint {
    use super::Error;
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Environment variable naming a directory that holds the pkilint commands.
    pub const DIR_ENV: &str = "PKILINT_DIR";

    /// The workspace's linter virtual environment (`scripts/deps.sh test` creates it).
    pub fn venv_bin() -> PathBuf {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        crate_dir
            .parent()
            .unwrap_or(crate_dir)
            .join(".venv-lint")
            .join("bin")
    }

    /// Where `tool` is: `$PKILINT_DIR/tool`, `.venv-lint/bin/tool`, or `tool` on `PATH`.
    pub fn tool_path(tool: &'static str) -> Result<PathBuf, Error> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(d) = std::env::var_os(DIR_ENV) {
            dirs.push(PathBuf::from(d));
        }
        dirs.push(venv_bin());
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        dirs.iter()
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::LinterMissing {
                tool,
                searched: format!("${DIR_ENV}, {} and PATH", venv_bin().display()),
            })
    }

    /// One artifact and the pkilint command that checks it.
    #[derive(Clone, Debug)]
    pub struct Check {
        /// Name of the artifact in reports.
        pub artifact: String,
        /// The pkilint command.
        pub tool: &'static str,
        args: Vec<OsString>,
        /// What pyca/cryptography checks of it (see [`PYCA`]): its kind and files.
        pyca: (&'static str, Vec<PathBuf>),
    }

    impl Check {
        /// `tool lint --severity WARNING OPTIONS... FILES...`; pyca/cryptography reads the
        /// same files as `pyca_kind`.
        fn new(
            artifact: impl Into<String>,
            tool: &'static str,
            options: &[&str],
            files: &[&Path],
            pyca_kind: &'static str,
        ) -> Check {
            let mut args: Vec<OsString> =
                vec!["lint".into(), "--severity".into(), "WARNING".into()];
            args.extend(options.iter().map(OsString::from));
            args.extend(files.iter().map(|f| f.as_os_str().to_os_string()));
            Check {
                artifact: artifact.into(),
                tool,
                args,
                pyca: (pyca_kind, files.iter().map(|f| f.to_path_buf()).collect()),
            }
        }

        /// A certificate (PEM or DER) against RFC 5280: `lint_pkix_cert`.
        pub fn certificate(artifact: impl Into<String>, file: &Path) -> Check {
            Check::new(artifact, "lint_pkix_cert", &[], &[file], "cert")
        }

        /// A complete CRL (PEM or DER) against RFC 5280: `lint_crl --type CRL --profile PKIX`.
        pub fn crl(artifact: impl Into<String>, file: &Path) -> Check {
            Check::new(
                artifact,
                "lint_crl",
                &["--type", "CRL", "--profile", "PKIX"],
                &[file],
                "crl",
            )
        }

        /// An OCSP response (DER) against RFC 6960: `lint_ocsp_response`.
        pub fn ocsp_response(artifact: impl Into<String>, file: &Path) -> Check {
            Check::new(artifact, "lint_ocsp_response", &[], &[file], "ocsp")
        }

        /// A certificate with its issuer (names, key identifiers, signature algorithms):
        /// `lint_pkix_signer_signee_cert_chain`.
        pub fn issued_by(artifact: impl Into<String>, issuer: &Path, subject: &Path) -> Check {
            Check::new(
                artifact,
                "lint_pkix_signer_signee_cert_chain",
                &[],
                &[issuer, subject],
                "issued_by",
            )
        }
    }

    /// pkilint findings that are not violations of the RFCs, each with the RFC text.
    pub const FALSE_POSITIVES: &[FalsePositive] = &[
        FalsePositive {
            code: "pkix.invalid_uri_syntax",
            message_contains: "\"spiffe://",
            why: "pkilint checks URIs with python-validators' url(), which accepts only a fixed \
                  list of schemes (http, https, ftp, ...). RFC 5280 4.2.1.6 asks only that the \
                  name \"MUST follow the URI syntax and encoding rules specified in [RFC3986]. \
                  The name MUST include both a scheme (e.g., \"http\" or \"ftp\") and a \
                  scheme-specific-part\", which SPIFFE IDs (spiffe://trust-domain/path) do.",
        },
        FalsePositive {
            code: "pkix.invalid_uri_syntax",
            message_contains: "\"urn:",
            why: "the same python-validators url() refuses every URN. RFC 3986 3 allows a URI \
                  without an authority (scheme \":\" path, as in urn:uuid:..., RFC 4122 3 and \
                  RFC 8141), and RFC 5280 4.2.1.6 asks only for RFC 3986 syntax with a scheme \
                  and a scheme-specific-part; the CA server's mark (urn:uuid:...) and the \
                  administrator role URIs (urn:ca:role:...) are such URNs.",
        },
        FalsePositive {
            code: "pkix.invalid_domain_name_syntax",
            message_contains: "\"localhost\"",
            why: "pkilint checks dNSNames with python-validators' domain(), which requires a \
                  top-level domain. RFC 5280 4.2.1.6 asks for the preferred name syntax of \
                  RFC 1034 3.5 (as modified by RFC 1123 2.1), where \
                  <subdomain> ::= <label> | <subdomain> \".\" <label>: a single label such as \
                  localhost is a valid name.",
        },
    ];

    /// One pkilint finding.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Finding {
        /// The validator that reported it, e.g. `GeneralNameUriSyntaxValidator`.
        pub validator: String,
        /// Where in the document, e.g. `certificate.tbsCertificate.extensions.1.extnValue...`.
        pub node: String,
        /// The finding code, e.g. `pkix.invalid_uri_syntax`.
        pub code: String,
        /// FATAL, ERROR or WARNING (the checks ask for nothing below WARNING).
        pub severity: String,
        /// The message, when pkilint gives one.
        pub message: String,
    }

    impl std::fmt::Display for Finding {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{} ({}) at {}", self.code, self.severity, self.node)?;
            if !self.message.is_empty() {
                write!(f, ": {}", self.message)?;
            }
            Ok(())
        }
    }

    /// A finding known to be a false positive of pkilint, with the reason (the RFC text) in
    /// `why`. It matches a finding with this code whose message contains `message_contains`.
    #[derive(Clone, Copy, Debug)]
    pub struct FalsePositive {
        /// The finding code.
        pub code: &'static str,
        /// A part of the message that pins the finding to one value.
        pub message_contains: &'static str,
        /// Why it is not a violation.
        pub why: &'static str,
    }

    impl FalsePositive {
        fn matches(&self, f: &Finding) -> bool {
            f.code == self.code && f.message.contains(self.message_contains)
        }
    }

    /// The outcome of one [`Check`].
    #[derive(Clone, Debug)]
    pub struct Report {
        /// Name of the artifact.
        pub artifact: String,
        /// The pkilint command.
        pub tool: &'static str,
        /// pkilint's exit status: the number of findings (0: none), or 1 with nothing parsed
        /// when the artifact did not load.
        pub exit_code: Option<i32>,
        /// The findings pkilint printed.
        pub findings: Vec<Finding>,
        /// What pkilint printed (stdout, then stderr).
        pub output: String,
    }

    impl Report {
        /// Whether pkilint found nothing at all.
        pub fn clean(&self) -> bool {
            self.exit_code == Some(0)
        }

        /// The findings that are not listed in `known`, or, when pkilint failed without
        /// printing findings it could be checked against (the artifact did not load, or the
        /// output format changed), one pseudo-finding that says so.
        pub fn unexpected(&self, known: &[FalsePositive]) -> Vec<Finding> {
            if self.clean() {
                return Vec::new();
            }
            // pkilint exits with the number of findings (clamped to 255).
            let count_matches = self.exit_code.is_some_and(|c| {
                usize::try_from(c).is_ok_and(|c| c == self.findings.len() || c == 255)
            });
            if self.findings.is_empty() || !count_matches {
                return vec![Finding {
                    validator: self.tool.to_string(),
                    node: String::new(),
                    code: "pkilint.failed".into(),
                    severity: "FATAL".into(),
                    message: format!(
                        "exit status {:?} with {} parsed findings: {}",
                        self.exit_code,
                        self.findings.len(),
                        self.output.trim()
                    ),
                }];
            }
            self.findings
                .iter()
                .filter(|f| !known.iter().any(|k| k.matches(f)))
                .cloned()
                .collect()
        }
    }

    /// Parse pkilint's TEXT report: `Validator @ node` lines, each followed by indented
    /// `code (SEVERITY)` or `code (SEVERITY): message` lines.
    fn parse_findings(stdout: &str) -> Vec<Finding> {
        let mut findings = Vec::new();
        let (mut validator, mut node) = (String::new(), String::new());
        for line in stdout.lines() {
            if line.trim().is_empty() {
                continue;
            }
            if !line.starts_with(' ') {
                if let Some((v, n)) = line.split_once(" @ ") {
                    validator = v.trim().to_string();
                    node = n.trim().to_string();
                }
                continue;
            }
            let line = line.trim();
            let Some((code, rest)) = line.split_once(" (") else {
                continue;
            };
            let Some((severity, message)) = rest.split_once(')') else {
                continue;
            };
            findings.push(Finding {
                validator: validator.clone(),
                node: node.clone(),
                code: code.to_string(),
                severity: severity.to_string(),
                message: message.trim_start_matches(':').trim().to_string(),
            });
        }
        findings
    }

    fn run_one(check: &Check) -> Result<Report, Error> {
        let tool = tool_path(check.tool)?;
        let out = Command::new(&tool)
            .args(&check.args)
            .output()
            .map_err(|source| Error::Io {
                path: tool.clone(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        Ok(Report {
            artifact: check.artifact.clone(),
            tool: check.tool,
            exit_code: out.status.code(),
            findings: parse_findings(&stdout),
            output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        })
    }

    /// Run every check, as many at once as there are cores (pkilint is a Python process per
    /// artifact). Fails only if a linter cannot be run; findings are in the reports.
    pub fn run(checks: &[Check]) -> Result<Vec<Report>, Error> {
        for c in checks {
            tool_path(c.tool)?;
        }
        let workers = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(2)
            .max(1);
        let chunk = checks.len().div_ceil(workers).max(1);
        let results: Vec<Result<Vec<Report>, Error>> = std::thread::scope(|s| {
            let handles: Vec<_> = checks
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().map(run_one).collect()))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::Io {
                            path: PathBuf::from("pkilint"),
                            source: std::io::Error::other("a linter thread panicked"),
                        })
                    })
                })
                .collect()
        });
        let mut reports = Vec::with_capacity(2 * checks.len());
        for r in results {
            reports.extend(r?);
        }
        reports.extend(run_pyca(checks)?);
        Ok(reports)
    }

    /// The pseudo-tool name of the pyca/cryptography reports.
    pub const PYCA: &str = "pyca/cryptography";

    /// pyca/cryptography (installed with pkilint) as a second, independent reader of the same
    /// artifacts: strict DER parsing of every certificate, CRL and OCSP response, its own
    /// verification of certificate signatures against their issuer, and of CRL and OCSP
    /// signatures where the issuer's certificate lies beside the artifact (`issuing.pem`,
    /// `ca.pem`, `root.pem`) or is embedded (delegated responder). One report per check,
    /// after pkilint's, with one finding when pyca/cryptography refused the artifact.
    fn run_pyca(checks: &[Check]) -> Result<Vec<Report>, Error> {
        use std::io::Write as _;
        let python = tool_path("python3")?;
        let items: Vec<serde_json::Value> = checks
            .iter()
            .map(|c| {
                let files: Vec<String> = c.pyca.1.iter().map(|f| f.display().to_string()).collect();
                serde_json::json!({ "kind": c.pyca.0, "files": files })
            })
            .collect();
        let input = serde_json::Value::Array(items).to_string();
        let io = |source| Error::Io {
            path: python.clone(),
            source,
        };
        let mut child = Command::new(&python)
            .arg("-c")
            .arg(include_str!("pyca_check.py"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(io)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).map_err(io)?;
        }
        let out = child.wait_with_output().map_err(io)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let results: Vec<Option<String>> = serde_json::from_str(&stdout).map_err(|e| {
            io(std::io::Error::other(format!(
                "pyca/cryptography check did not run ({e}): {}{}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )))
        })?;
        if results.len() != checks.len() {
            return Err(io(std::io::Error::other(
                "pyca/cryptography check answered for another number of artifacts",
            )));
        }
        Ok(checks
            .iter()
            .zip(results)
            .map(|(c, r)| {
                let findings: Vec<Finding> = r
                    .iter()
                    .map(|msg| Finding {
                        validator: PYCA.to_string(),
                        node: String::new(),
                        code: "pyca.refused".into(),
                        severity: "ERROR".into(),
                        message: msg.clone(),
                    })
                    .collect();
                Report {
                    artifact: c.artifact.clone(),
                    tool: PYCA,
                    exit_code: Some(findings.len() as i32),
                    output: r.unwrap_or_default(),
                    findings,
                }
            })
            .collect())
    }

    /// `None` when no report has a finding outside `known`; otherwise every such finding, by
    /// artifact, for an assertion message.
    pub fn failures(reports: &[Report], known: &[FalsePositive]) -> Option<String> {
        let mut s = String::new();
        let mut bad = 0;
        for r in reports {
            let unexpected = r.unexpected(known);
            if unexpected.is_empty() {
                continue;
            }
            bad += 1;
            s.push_str(&format!("--- {} ({}):\n", r.artifact, r.tool));
            for f in unexpected {
                s.push_str(&format!("    {f}\n"));
            }
        }
        (bad > 0).then(|| {
            format!(
                "{bad} of {} artifacts have pkilint findings of severity WARNING or above:\n{s}",
                reports.len()
            )
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const TEXT: &str = "\
NameDecodingValidator @ certificate.tbsCertificate.subject.rdnSequence.0.0
    itu.invalid_asn1_syntax (FATAL): ASN.1 decoding failure (schema \"X520countryName\")
KeyUsagePresenceValidator @ certificate.tbsCertificate.extensions
    pkix.ca_certificate_no_ku_extension (ERROR)
GeneralNameUriSyntaxValidator @ certificate.tbsCertificate.extensions.1.extnValue.subjectAltName.0.uniformResourceIdentifier
    pkix.invalid_uri_syntax (ERROR): Invalid URI syntax: \"spiffe://test/x\"

";

        fn report(exit_code: i32) -> Report {
            Report {
                artifact: "a".into(),
                tool: "lint_pkix_cert",
                exit_code: Some(exit_code),
                findings: parse_findings(TEXT),
                output: TEXT.into(),
            }
        }

        #[test]
        fn text_report_is_parsed_and_false_positives_are_set_aside() {
            let r = report(3);
            assert_eq!(r.findings.len(), 3);
            assert_eq!(r.findings[0].code, "itu.invalid_asn1_syntax");
            assert_eq!(r.findings[0].severity, "FATAL");
            assert!(r.findings[0]
                .message
                .starts_with("ASN.1 decoding failure (schema"));
            assert_eq!(r.findings[1].severity, "ERROR");
            assert_eq!(r.findings[1].message, "");
            assert_eq!(r.findings[1].node, "certificate.tbsCertificate.extensions");
            let unexpected = r.unexpected(FALSE_POSITIVES);
            let codes: Vec<&str> = unexpected.iter().map(|f| f.code.as_str()).collect();
            assert_eq!(
                codes,
                [
                    "itu.invalid_asn1_syntax",
                    "pkix.ca_certificate_no_ku_extension"
                ]
            );
        }

        #[test]
        fn failures_that_cannot_be_matched_to_findings_are_never_clean() {
            // The exit status says 5 findings but 3 were printed: the format changed.
            let r = report(5);
            assert_eq!(r.unexpected(FALSE_POSITIVES)[0].code, "pkilint.failed");
            // A file that did not load: exit 1, nothing parsed.
            let r = Report {
                findings: Vec::new(),
                output: "Failed to load certificate: bad".into(),
                ..report(1)
            };
            assert_eq!(r.unexpected(FALSE_POSITIVES)[0].code, "pkilint.failed");
            assert!(failures(&[r], FALSE_POSITIVES).is_some());
            let clean = Report {
                exit_code: Some(0),
                findings: Vec::new(),
                ..report(0)
            };
            assert!(failures(&[clean], FALSE_POSITIVES).is_none());
        }
    }
}

/// A throwaway two-level PKI for tests, made by the ceremony library: the root, key and
/// intermediate example ceremonies ([`ceremonies::dev::run_steps`], the code behind
/// `ceremony dev` and `ca-server dev`) run as rehearsals on two fresh SoftHSM tokens, plus a
/// sled store in a temporary directory and a ready [`ca_core::issuance::Ca`].
pub mod pki {
    use super::{ck, Error};
    use ca_core::clock::{Clock, SystemClock};
    use ca_core::issuance::{Ca, IssuerUrls};
    use ca_core::profile::{ExtKeyUsage, NamePolicy, Profile, Profiles};
    use ca_core::signer::pkcs11::{open_module, Pkcs11Signer};
    use ca_core::signer::KeyAlgorithm;
    use ca_core::store::{SledStore, Store};
    use ca_core::x509::pem_encode as pem;
    use ceremonies::dev::{run_steps, DevOptions, RehearsalTokens, Step};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    use hsm_sim::TestToken;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    /// Label of the root key in the root token.
    pub const ROOT_KEY: &str = "root-ca";
    /// Label of the issuing key in the test (online) token.
    pub const ISSUING_KEY: &str = ceremonies::dev::ISSUING_KEY;

    /// A root and issuing CA on two SoftHSM tokens, built by the ceremony library, with a
    /// sled store and a ready CA.
    pub struct TestPki {
        /// The online token: the issuing key and OCSP responder keys.
        pub token: TestToken,
        /// The root token: the root key (its user PIN is the token's again after the
        /// ceremonies, which set a quorum PIN).
        pub root_token: TestToken,
        /// Temporary directory holding the store and PEM files; the ceremonies' outputs and
        /// transcripts are in `pki/` inside.
        pub dir: tempfile::TempDir,
        /// Root certificate (DER).
        pub root_der: Vec<u8>,
        /// Issuing CA certificate (DER).
        pub issuing_der: Vec<u8>,
        /// Root signer (HSM).
        pub root_signer: Arc<Pkcs11Signer>,
        /// Issuing signer (HSM).
        pub issuing_signer: Arc<Pkcs11Signer>,
        /// The sled store in `dir` (the same one `ca` records into).
        pub store: Arc<SledStore>,
        /// The issuing CA.
        pub ca: Ca,
        tokens: RehearsalTokens,
    }

    /// Profiles for tests: `client` (clientAuth), `server` (serverAuth), `mtls` (both); all
    /// allow DNS names under `.test` and `localhost`, `spiffe://test/` URIs, emails at
    /// `example.test`, 127.0.0.0/8 and ::1.
    pub fn test_profiles() -> Profiles {
        let names = NamePolicy {
            dns: vec![".test".into(), "localhost".into()],
            uri: vec!["spiffe://test/".into()],
            email: vec!["@example.test".into()],
            ip: vec!["127.0.0.0/8".into(), "::1/128".into()],
            common_name: true,
            max_sans: 10,
            common_name_patterns: Vec::new(),
        };
        let client = Profile::client(names.clone());
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

    fn subject(common_name: &str) -> toml::Value {
        let mut t = toml::Table::new();
        t.insert("common_name".into(), common_name.into());
        t.insert("organization".into(), "hsm-sim".into());
        toml::Value::Table(t)
    }

    /// An explicit validity from an hour before `now` until `until` (whole seconds).
    fn validity(
        now: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> toml::Value {
        let time = |t: chrono::DateTime<chrono::Utc>| {
            toml::Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        };
        let mut t = toml::Table::new();
        t.insert("not_before".into(), time(now - chrono::Duration::hours(1)));
        t.insert("not_after".into(), time(until));
        toml::Value::Table(t)
    }

    /// Set the user PIN of `token` back to the one it was made with, as its security officer
    /// (the root ceremony replaced it by the quorum PIN).
    fn restore_user_pin(token: &TestToken) -> Result<(), Error> {
        let ctx = open_module(&token.module)?;
        let slot = token.hsm_config().open()?.slot()?;
        let session = ctx.open_rw_session(slot).map_err(ck("open session"))?;
        session
            .login(
                UserType::So,
                Some(&AuthPin::from(token.so_pin().to_string())),
            )
            .map_err(ck("SO login"))?;
        session
            .init_pin(&AuthPin::from(token.pin().to_string()))
            .map_err(ck("C_InitPIN"))?;
        session.logout().map_err(ck("logout"))
    }

    fn read_pem_cert(path: &Path) -> Result<Vec<u8>, BoxError> {
        Ok(ceremonies::x509::read_cert_pem("certificate", path)?.der)
    }

    impl TestPki {
        /// Root and issuing keys of `alg`, default profiles, URLs under `http://127.0.0.1:8080`.
        pub fn new(alg: KeyAlgorithm) -> Result<Self, BoxError> {
            Self::with(
                alg,
                test_profiles(),
                IssuerUrls::default(),
                Arc::new(SystemClock),
            )
        }

        /// Full control over profiles, URLs and clock (the ceremonies run at the clock's time;
        /// the root is valid for 10 years and the issuing CA for one, both from an hour ago).
        pub fn with(
            alg: KeyAlgorithm,
            profiles: Profiles,
            urls: IssuerUrls,
            clock: Arc<dyn Clock>,
        ) -> Result<Self, BoxError> {
            let token = TestToken::new()?;
            let root_token = TestToken::new()?;
            let dir = tempfile::tempdir()?;
            let out = dir.path().join("pki");
            let secrets = dir.path().join("hsm");
            std::fs::create_dir_all(&out)?;
            std::fs::create_dir_all(&secrets)?;
            let tokens = RehearsalTokens {
                module: token.module.clone(),
                root_token: root_token.label.clone(),
                root_so_pin_file: secrets.join("root.so.pin"),
                online_token: token.label.clone(),
                online_pin_file: secrets.join("online.pin"),
            };
            hsm_sim::write_secret(&tokens.root_so_pin_file, root_token.so_pin())?;
            token.write_pin_file(&tokens.online_pin_file)?;
            let opts = DevOptions {
                algorithm: alg,
                ..DevOptions::default()
            };
            let now = clock.now();
            let steps = [
                Step::example("root.toml")
                    .set(&["root", "subject"], subject("hsm-sim Test Root CA"))
                    .set(
                        &["root", "validity"],
                        validity(now, now + chrono::Duration::days(3650)),
                    ),
                Step::example("key.toml")
                    .unset(&["key", "audit_key_label"])
                    .unset(&["key", "audit_public_key"]),
                Step::example("intermediate.toml")
                    .set(
                        &["intermediate", "subject"],
                        subject("hsm-sim Test Issuing CA"),
                    )
                    .set(
                        &["intermediate", "validity"],
                        validity(now, now + chrono::Duration::days(365)),
                    ),
            ];
            run_steps(&out, &tokens, &opts, &steps, clock.as_ref())?;
            restore_user_pin(&root_token)?;
            let root_der = read_pem_cert(&out.join("root.pem"))?;
            let issuing_der = read_pem_cert(&out.join("intermediate.pem"))?;
            let root_signer = Arc::new(root_token.hsm_config().open()?.signer(ROOT_KEY)?);
            let issuing_signer = Arc::new(token.hsm_config().open()?.signer(ISSUING_KEY)?);

            std::fs::write(dir.path().join("root.pem"), pem("CERTIFICATE", &root_der))?;
            std::fs::write(
                dir.path().join("issuing.pem"),
                pem("CERTIFICATE", &issuing_der),
            )?;
            std::fs::write(
                dir.path().join("chain.pem"),
                format!(
                    "{}{}",
                    pem("CERTIFICATE", &issuing_der),
                    pem("CERTIFICATE", &root_der)
                ),
            )?;
            let store = Arc::new(SledStore::open(&dir.path().join("store"))?);
            let ca = Ca::new(
                issuing_signer.clone(),
                issuing_der.clone(),
                vec![root_der.clone()],
                profiles,
                urls,
                store.clone() as Arc<dyn Store>,
                clock,
            )?;
            Ok(TestPki {
                token,
                root_token,
                dir,
                root_der,
                issuing_der,
                root_signer,
                issuing_signer,
                store,
                ca,
                tokens,
            })
        }

        /// A certificate from the CA's issuance path under `profile` (on an administrator's
        /// authority) for a fresh P-256 software key, named `name` (CN and DNS SAN). Returns it
        /// with the key.
        pub fn issue_new_key(
            &self,
            profile: &str,
            name: &str,
        ) -> Result<
            (ca_core::issuance::Issued, rcgen::KeyPair),
            Box<dyn std::error::Error + Send + Sync>,
        > {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let req = ca_core::csr::parse_der(params.serialize_request(&kp)?.der())?;
            let issued = self
                .ca
                .prepare(
                    &req,
                    ca_core::issuance::IssueContext::Admin {
                        profile,
                        actor: "test",
                        binding: None,
                    },
                )?
                .issue()?;
            Ok((issued, kp))
        }

        /// A delegated OCSP responder for the issuing CA (RFC 6960 4.2.2.2), made by the
        /// ocsp-signer ceremony: a key of `alg` generated in the test token under `label`, and
        /// a 30-day certificate for it issued by the issuing CA with keyUsage
        /// digitalSignature, id-kp-OCSPSigning and id-pkix-ocsp-nocheck (RFC 6960 4.2.2.2.1).
        /// Returns the signer and the DER.
        pub fn ocsp_responder(
            &self,
            label: &str,
            alg: KeyAlgorithm,
        ) -> Result<(Arc<Pkcs11Signer>, Vec<u8>), BoxError> {
            self.ocsp_responder_valid_for(label, alg, chrono::Duration::days(30))
        }

        /// [`ocsp_responder`](Self::ocsp_responder) with a certificate valid from an hour ago
        /// until `valid_for` from now (a responder certificate about to expire).
        pub fn ocsp_responder_valid_for(
            &self,
            label: &str,
            alg: KeyAlgorithm,
            valid_for: chrono::Duration,
        ) -> Result<(Arc<Pkcs11Signer>, Vec<u8>), BoxError> {
            let now = chrono::Utc::now();
            let cert_file = format!("ocsp-signer-{label}.pem");
            let step = Step::example("ocsp-signer.toml")
                .file(format!("ocsp-signer-{label}.toml"))
                .set(&["ocsp_signer", "key_label"], label)
                .set(&["ocsp_signer", "algorithm"], alg.name())
                .set(
                    &["ocsp_signer", "subject"],
                    subject("hsm-sim Test OCSP Responder"),
                )
                .set(&["ocsp_signer", "validity"], validity(now, now + valid_for))
                .set(&["ocsp_signer", "certificate"], cert_file.as_str());
            let out = self.dir.path().join("pki");
            let opts = DevOptions {
                algorithm: alg,
                ..DevOptions::default()
            };
            run_steps(&out, &self.tokens, &opts, &[step], &SystemClock)?;
            let der = read_pem_cert(&out.join(cert_file))?;
            let signer = Arc::new(self.token.hsm_config().open()?.signer(label)?);
            Ok((signer, der))
        }

        /// `DIR/root.pem`
        pub fn root_pem_path(&self) -> PathBuf {
            self.dir.path().join("root.pem")
        }
        /// `DIR/issuing.pem`
        pub fn issuing_pem_path(&self) -> PathBuf {
            self.dir.path().join("issuing.pem")
        }
        /// `DIR/chain.pem` (issuing, then root)
        pub fn chain_pem_path(&self) -> PathBuf {
            self.dir.path().join("chain.pem")
        }
    }
}
