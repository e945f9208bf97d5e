//! `hsm-sim`: provision throwaway SoftHSM2 tokens.

use anyhow::Context;
use ca_core::signer::pkcs11::{HsmConfig, PinSource};
use ca_core::signer::KeyAlgorithm;
use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

/// Throwaway SoftHSM2 tokens for development, tests and ceremony rehearsal.
#[derive(Parser)]
#[command(name = "hsm-sim", version = cli_support::version!(), about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create DIR/softhsm2.conf, a token directory and an initialised token; print `export`
    /// lines for `eval`. The user PIN is written to DIR/user.pin (mode 0600), not printed.
    Init {
        /// Directory to create the configuration and tokens in (must not hold one already).
        #[arg(long)]
        dir: PathBuf,
        /// Token label.
        #[arg(long, default_value = "ca-dev")]
        label: String,
        /// User PIN (default: random, written to DIR/user.pin).
        #[arg(long, env = "HSM_SIM_PIN", hide_env_values = true)]
        pin: Option<String>,
        /// Security officer PIN (default: random, written to DIR/so.pin).
        #[arg(long, env = "HSM_SIM_SO_PIN", hide_env_values = true)]
        so_pin: Option<String>,
    },
    /// Generate a key pair in a token (uses SOFTHSM2_CONF); prints the public key as PEM.
    Genkey {
        /// Token label.
        #[arg(long, env = "HSM_TOKEN_LABEL")]
        token: String,
        /// File holding the user PIN.
        #[arg(long, env = "HSM_PIN_FILE")]
        pin_file: PathBuf,
        /// Key label.
        #[arg(long)]
        label: String,
        /// Algorithm: p256, p384, rsa2048, rsa3072, rsa4096, ed25519.
        #[arg(long, default_value = "p256")]
        alg: KeyAlgorithm,
    },
    /// Print a shell completion script to stdout.
    ///
    /// Example: hsm-sim completions bash > /etc/bash_completion.d/hsm-sim
    #[command(verbatim_doc_comment)]
    Completions(cli_support::generate::CompletionsArgs),
    /// Write the man pages (hsm-sim.1, hsm-sim-init.1, ...) into DIR.
    #[command(hide = true)]
    Manpages(cli_support::generate::ManpagesArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Init {
            dir,
            label,
            pin,
            so_pin,
        } => {
            let p = hsm_sim::provision(&dir, &label, pin.as_deref(), so_pin.as_deref())
                .with_context(|| format!("provisioning a SoftHSM2 token in {}", dir.display()))?;
            print!("{}", p.exports());
        }
        Cmd::Genkey {
            token,
            pin_file,
            label,
            alg,
        } => {
            let mut token = HsmConfig::new(token, PinSource::File(pin_file));
            token.module = Some(hsm_sim::module_path()?);
            let token = token.open()?;
            let spki = token.generate_key(&label, alg)?;
            let pem = der::pem::encode_string("PUBLIC KEY", der::pem::LineEnding::LF, &spki)
                .map_err(|e| anyhow::anyhow!("PEM encoding: {e}"))?;
            print!("{pem}");
        }
        Cmd::Completions(args) => args.write(Cli::command(), &mut std::io::stdout())?,
        Cmd::Manpages(args) => {
            for page in args.write(Cli::command())? {
                println!("{}", page.display());
            }
        }
    }
    Ok(())
}
