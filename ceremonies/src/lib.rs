//! Key ceremonies for the internal CA, driven by reviewed configuration files, with the root
//! token's PIN held by a quorum of officers and a signed, hash-chained transcript of every step.
//!
//! Ceremony kinds ([`config::Kind`]): `root` (root key and self-signed certificate, quorum
//! PIN), `key` (issuing key in the online token, public key exported), `intermediate` (root
//! signs the issuing CA, pathLen 0), `ocsp-signer` (delegated OCSP signing certificate),
//! `crl` (root CRL) and `ocsp-response` (root-signed OCSP response about the intermediate).
//!
//! The pieces:
//!
//! - [`config`]: the strict TOML schema; [`plan`]: validation into a checked [`plan::Plan`]
//!   before anything touches the HSM.
//! - [`kind`]: one module per kind, each with its plan (its configuration section checked),
//!   its steps as shown to the officers, and its execution.
//! - [`quorum`]: Shamir shares of the PIN with integrity checks, reassembled before login.
//! - [`history`] and [`transcript`]: the signed transcripts, verified and chained.
//! - [`run`]: the runner (plan, confirmations, quorum unlock, outputs, transcript).
//! - [`dev`]: the example ceremonies as a rehearsal on given tokens (the test PKI is made this
//!   way) and, with the cargo feature `dev` (on by default), the full rehearsal behind
//!   `ceremony dev` and `ca-server dev` on throwaway SoftHSM tokens provisioned by `hsm-sim`.
//!
//! ```no_run
//! use ceremonies::run::{run, Console, Outcome, RunOptions};
//! let stdin = std::io::stdin();
//! let mut ui = Console::new(stdin.lock(), std::io::stdout());
//! if let Outcome::Done(done) = run("root.toml".as_ref(), &RunOptions::default(), &mut ui)? {
//!     println!("transcript: {}", done.transcript.display());
//! }
//! # Ok::<(), ceremonies::Error>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod config;
pub mod dev;
pub mod error;
pub mod history;
pub mod hsm;
pub mod kind;
pub mod output;
pub mod plan;
pub mod quorum;
pub mod run;
pub mod transcript;
pub mod x509;

pub use error::{Error, QuorumError, TranscriptFault};
