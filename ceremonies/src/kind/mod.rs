//! One module per ceremony kind, each with the three things that make the kind:
//!
//! - `plan`: its configuration section checked into a task (errors name the field path), with
//!   every input read and every output path free, before anything touches the HSM;
//! - `describe`: the steps shown to the officers before they confirm;
//! - `execute`: the HSM work, recorded step by step in the transcript.
//!
//! What every kind shares stays in [`crate::plan`] (officers, tokens, shares, transcripts
//! directory) and [`crate::run`] (unlocking the root token with the quorum PIN, the
//! transcript, writing outputs); [`Task`] dispatches to the kinds.

pub mod crl;
pub mod intermediate;
pub mod key;
pub mod ocsp_response;
pub mod ocsp_signer;
pub mod root;

use crate::config::{Config, Kind, RootToken};
use crate::error::Error;
use crate::history::History;
use crate::plan::{TokenRef, V};
use crate::run::{Authority, Ctx, Unlock};
use ca_core::signer::pkcs11::PinSource;
use ca_core::x509::RcgenKey;
use chrono::{DateTime, Utc};
use std::fmt::Write as _;
use std::path::PathBuf;

pub use crl::CrlTask;
pub use intermediate::IntermediateTask;
pub use key::{AuditKeyTask, KeyTask};
pub use ocsp_response::OcspResponseTask;
pub use ocsp_signer::OcspSignerTask;
pub use root::RootTask;

/// The work of a ceremony, checked.
#[derive(Debug)]
pub enum Task {
    /// `root`
    Root(RootTask),
    /// `key`
    Key(KeyTask),
    /// `intermediate`
    Intermediate(IntermediateTask),
    /// `ocsp-signer`
    OcspSigner(OcspSignerTask),
    /// `crl`
    Crl(CrlTask),
    /// `ocsp-response`
    OcspResponse(OcspResponseTask),
}

/// What [`crate::plan::Plan::from_config`] has checked before the kind checks its own section.
pub(crate) struct Input<'a> {
    pub(crate) v: &'a V<'a>,
    pub(crate) config: &'a Config,
    /// The ceremony's start: validity and update times are computed from it.
    pub(crate) start: DateTime<Utc>,
    /// Present exactly when the kind uses the root token.
    pub(crate) root_token: Option<(TokenRef, &'a RootToken)>,
    /// Present exactly when the kind uses the online token, with its PIN.
    pub(crate) online_token: Option<(TokenRef, PinSource)>,
    /// (officer, share file to write), root ceremony only.
    pub(crate) shareholders: Vec<(String, PathBuf)>,
    /// Output paths taken so far (no two outputs may share a path).
    pub(crate) outputs: &'a mut Vec<PathBuf>,
}

impl Task {
    /// Check the section of `kind`.
    pub(crate) fn plan(kind: Kind, input: Input<'_>) -> Result<Task, Error> {
        Ok(match kind {
            Kind::Root => Task::Root(root::plan(input)?),
            Kind::Key => Task::Key(key::plan(input)?),
            Kind::Intermediate => Task::Intermediate(intermediate::plan(input)?),
            Kind::OcspSigner => Task::OcspSigner(ocsp_signer::plan(input)?),
            Kind::Crl => Task::Crl(crl::plan(input)?),
            Kind::OcspResponse => Task::OcspResponse(ocsp_response::plan(input)?),
        })
    }

    /// Settle what depends on the verified transcript history (the root CRL's number).
    pub(crate) fn bind_history(&mut self, history: &History) {
        if let Task::Crl(t) = self {
            t.bind_history(history);
        }
    }

    /// The root token this task unlocks with quorum shares, if any (not the root ceremony,
    /// which sets the PIN).
    pub fn quorum_token(&self) -> Option<&TokenRef> {
        match self {
            Task::Intermediate(t) => Some(&t.token),
            Task::Crl(t) => Some(&t.token),
            Task::OcspResponse(t) => Some(&t.token),
            Task::Root(_) | Task::Key(_) | Task::OcspSigner(_) => None,
        }
    }

    /// Add this task's steps to the plan shown to the officers.
    pub(crate) fn describe(&self, s: &mut Steps, history: &History) {
        match self {
            Task::Root(t) => t.describe(s),
            Task::Key(t) => t.describe(s),
            Task::Intermediate(t) => t.describe(s, history),
            Task::OcspSigner(t) => t.describe(s),
            Task::Crl(t) => t.describe(s),
            Task::OcspResponse(t) => t.describe(s),
        }
    }

    /// Do the work; returns the key that signs the transcript.
    pub(crate) fn execute(
        &self,
        ctx: &mut Ctx<'_>,
        unlock: Option<&Unlock>,
    ) -> Result<Authority, Error> {
        match self {
            Task::Root(t) => t.execute(ctx),
            Task::Key(t) => t.execute(ctx),
            Task::Intermediate(t) => t.execute(ctx, unlock),
            Task::OcspSigner(t) => t.execute(ctx),
            Task::Crl(t) => t.execute(ctx, unlock),
            Task::OcspResponse(t) => t.execute(ctx, unlock),
        }
    }
}

/// The numbered steps of the plan as shown to the officers.
pub(crate) struct Steps {
    text: String,
    n: usize,
}

impl Steps {
    /// Steps appended to `text` (the plan's header).
    pub(crate) fn new(text: String) -> Self {
        Steps { text, n: 0 }
    }

    /// The next numbered step.
    pub(crate) fn step(&mut self, text: impl AsRef<str>) {
        self.n += 1;
        let _ = writeln!(self.text, "  {}. {}", self.n, text.as_ref());
    }

    /// A line under the current step.
    pub(crate) fn detail(&mut self, text: impl AsRef<str>) {
        let _ = writeln!(self.text, "{}", text.as_ref());
    }

    pub(crate) fn into_text(self) -> String {
        self.text
    }
}

/// A validity period as shown in the plan.
pub(crate) fn validity(nb: &DateTime<Utc>, na: &DateTime<Utc>) -> String {
    format!("{} to {}", nb.to_rfc3339(), na.to_rfc3339())
}

/// Keep the HSM's error behind an rcgen signing failure (rcgen's own carries no detail).
pub(crate) fn sign_err<'a>(
    key: &'a RcgenKey<'_>,
    op: &'static str,
) -> impl FnOnce(rcgen::Error) -> Error + 'a {
    move |e| Error::Core {
        op,
        source: key.map_err(e),
    }
}
