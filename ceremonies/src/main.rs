//! `ceremony`: run key ceremonies, verify transcripts, rehearse.

use anyhow::Context;
use ceremonies::run::{run, Console, Outcome, Rehearsal, RunOptions};
use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

/// Config-driven key ceremonies with quorum-held PINs and signed transcripts.
#[derive(Parser)]
#[command(name = "ceremony", version = cli_support::version!(), about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the ceremony described by FILE: validate, show the plan, ask each officer to confirm
    /// by typing their name, run, write outputs and the signed transcript.
    Run {
        /// Ceremony configuration (TOML).
        file: PathBuf,
        /// Validate everything (and check PIN shares if given) and show the plan; touch no HSM.
        #[arg(long)]
        dry_run: bool,
        /// Rehearsal: do not prompt the officers; the transcript is marked as a rehearsal.
        #[arg(long = "yes-i-am-rehearsing")]
        rehearsing: bool,
        /// A PIN share file, in addition to those in the configuration (repeatable).
        #[arg(long = "share", value_name = "FILE")]
        shares: Vec<PathBuf>,
    },
    /// Verify a transcript: exact form, hash chain and signature, and its signer pinned from
    /// the history in its directory (the root key for root-signed kinds, the issuing key for
    /// ocsp-signer, the generated key for root and key).
    VerifyTranscript {
        /// Transcript JSON file.
        file: PathBuf,
        /// The key that must have signed it: a PEM certificate, a PEM public key, or the
        /// SHA-256 of its SubjectPublicKeyInfo in hex.
        #[arg(long)]
        expect_signer: Option<String>,
    },
    /// Complete rehearsal on throwaway SoftHSM tokens in DIR (no prompts): root, issuing key,
    /// intermediate, OCSP signer, root CRL, intermediate OCSP response.
    #[cfg(feature = "dev")]
    Dev {
        /// Output directory (created; must be empty).
        #[arg(long)]
        out: PathBuf,
        /// Key algorithm for all keys.
        #[arg(long, default_value = "p256")]
        algorithm: ca_core::signer::KeyAlgorithm,
        /// Base URL of the CA server's plain-HTTP listener (root CRL and OCSP URLs).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        status_base_url: String,
    },
    /// Print a shell completion script to stdout.
    ///
    /// Example: ceremony completions bash > /etc/bash_completion.d/ceremony
    #[command(verbatim_doc_comment)]
    Completions(cli_support::generate::CompletionsArgs),
    /// Write the man pages (ceremony.1, ceremony-run.1, ...) into DIR.
    #[command(hide = true)]
    Manpages(cli_support::generate::ManpagesArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run {
            file,
            dry_run,
            rehearsing,
            shares,
        } => {
            let opts = RunOptions {
                dry_run,
                rehearsal: rehearsing,
                shares,
                ..RunOptions::default()
            };
            let outcome = if rehearsing {
                run(&file, &opts, &mut Rehearsal(std::io::stdout()))
            } else {
                let stdin = std::io::stdin();
                run(
                    &file,
                    &opts,
                    &mut Console::new(stdin.lock(), std::io::stdout()),
                )
            }
            .with_context(|| format!("ceremony {} failed", file.display()))?;
            if let Outcome::Planned { .. } = outcome {
                println!("Dry run: the configuration is valid; nothing was done.");
            }
        }
        Cmd::VerifyTranscript {
            file,
            expect_signer,
        } => {
            let expected = expect_signer
                .as_deref()
                .map(ceremonies::transcript::signer_fingerprint)
                .transpose()?;
            let (t, pin) = ceremonies::history::verify_pinned(&file, expected.as_deref())?;
            println!(
                "OK: {} transcript {} ({} steps, {}{}), signed by key {:?} in token {:?} serial {}, public key SHA-256 {}, pinned by {}",
                t.kind,
                t.ceremony_id,
                t.entries.len(),
                t.finished_at.to_rfc3339(),
                if t.rehearsal { ", REHEARSAL" } else { "" },
                t.signature.key_label,
                t.signature.token.label,
                t.signature.token.serial,
                t.signature.spki_sha256,
                pin.source
            );
            if expected.is_none() {
                println!(
                    "Note: the history's anchors are its root ceremonies; pass --expect-signer \
                     root.pem (on any root-signed transcript) to check it is your root."
                );
            }
        }
        Cmd::Completions(args) => args.write(Cli::command(), &mut std::io::stdout())?,
        Cmd::Manpages(args) => {
            for page in args.write(Cli::command())? {
                println!("{}", page.display());
            }
        }
        #[cfg(feature = "dev")]
        Cmd::Dev {
            out,
            algorithm,
            status_base_url,
        } => {
            let a = ceremonies::dev::rehearse(
                &out,
                &ceremonies::dev::DevOptions {
                    algorithm,
                    status_base_url,
                },
            )
            .with_context(|| format!("rehearsal in {} failed", out.display()))?;
            println!("Rehearsal complete in {}", out.display());
            println!("  root certificate      {}", a.root_cert.display());
            println!("  root SHA-256          {}", a.root_fingerprint);
            println!("  intermediate          {}", a.intermediate_cert.display());
            println!("  chain                 {}", a.chain.display());
            println!("  OCSP signer           {}", a.ocsp_signer_cert.display());
            println!("  root CRL              {}", a.root_crl.display());
            println!(
                "  intermediate OCSP     {}",
                a.intermediate_ocsp_response.display()
            );
            println!("  transcript            {}", a.transcript.display());
            println!("  SOFTHSM2_CONF         {}", a.softhsm_conf.display());
            println!(
                "  online token          {} (PIN file {})",
                a.online_token,
                a.online_pin_file.display()
            );
            println!(
                "  keys                  {}, {}",
                a.issuing_key_label, a.ocsp_key_label
            );
        }
    }
    Ok(())
}
