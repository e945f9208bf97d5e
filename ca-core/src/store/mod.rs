//! Persistent state: certificates and revocations ([`CertStore`]), CRL numbers
//! ([`CrlNumbers`]), enrollment tokens ([`TokenStore`]), pre-signed OCSP responses
//! ([`OcspResponseStore`]) and the audit log ([`AuditLog`]), plus durability control
//! ([`Durability`]), the pruning of expired records ([`Retention`]), and what several nodes on
//! one store coordinate with: the latest signed CRLs ([`CrlArchive`]), leases ([`Leases`]) and
//! the change feed ([`ChangeFeed`]). Each consumer takes the traits it uses (Boulder's storage subsets);
//! [`Store`] is all of them, implemented by [`SledStore`] and, with the cargo feature
//! `postgres`, by `PgStore` (one PostgreSQL database shared by several nodes).
//!
//! Only [`sled_store`] knows sled, and only `pg_store` PostgreSQL (DESIGN invariant 6): no
//! trait here names a backend's type, so each backend implements the same traits, keeping the
//! atomicity each method documents.
//! Every write method returns after the data is durable (flushed), so callers may acknowledge
//! once it returns (invariant 2).

mod codec;
mod deferral;
mod feed;
#[cfg(feature = "postgres")]
mod pg_listen;
#[cfg(feature = "postgres")]
mod pg_store;
mod sled_store;

pub use feed::{Change, FeedClosed, Subscription};
#[cfg(feature = "postgres")]
pub use pg_store::{
    PgImport, PgStore, SchemaTooNew, SchemaTooOld, StoreCounts, TargetNotEmpty, CHECKOUT_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_POOL_SIZE, SCHEMA_VERSION,
};
pub use sled_store::{SledStore, DEFAULT_CACHE_BYTES};

use crate::audit::{AuditEvent, AuditKey, AuditReport, Checkpoint, LogVerifier, NewAuditEvent};
use crate::error::Result;
use crate::revocation::{CertStatus, RevocationReason, RevokedEntry};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The store traits, to bring their methods into scope on a concrete store
/// (`use ca_core::store::prelude::*;`); on `dyn Store` they are in scope already.
pub mod prelude {
    pub use super::{
        AuditLog, CertCounts, CertStore, ChangeFeed, CrlArchive, CrlNumbers, CrlShards, Durability,
        Leases, OcspResponseStore, Retention, Store, TokenStore,
    };
}

/// Who asked for a certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "id")]
pub enum Requester {
    /// Enrollment with the token of this id.
    Token(String),
    /// Renewal authenticated by the certificate with this serial (hex).
    Renewal(String),
    /// An administrator (certificate subject) or the server itself.
    Admin(String),
}

/// Revocation state stored with a certificate. Expiry is derived from `not_after`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum RecordStatus {
    /// Not revoked.
    Valid,
    /// Revoked at `at` for `reason`.
    Revoked {
        /// Revocation time.
        at: DateTime<Utc>,
        /// RFC 5280 reason.
        reason: RevocationReason,
    },
}

/// A certificate issued by this CA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Serial number, big-endian magnitude (16 random bytes, positive).
    #[serde(with = "hex_bytes")]
    pub serial: Vec<u8>,
    /// Subject DN (RFC 4514 string).
    pub subject: String,
    /// Subject alternative names, typed: `dns:`, `uri:`, `ip:`, `email:`.
    pub sans: Vec<String>,
    /// Canonical identity used for lookups and renewal (CN, else first SAN).
    pub identity: String,
    /// Profile name.
    pub profile: String,
    /// Validity start.
    pub not_before: DateTime<Utc>,
    /// Validity end.
    pub not_after: DateTime<Utc>,
    /// When the CA issued it.
    pub issued_at: DateTime<Utc>,
    /// Who asked.
    pub requester: Requester,
    /// SHA-256 of the SubjectPublicKeyInfo (hex), to refuse key reuse on renewal.
    pub spki_sha256: String,
    /// The certificate (DER; base64 in the stored JSON).
    #[serde(with = "b64_bytes")]
    pub der: Vec<u8>,
    /// Revocation state.
    pub status: RecordStatus,
    /// The lineage this certificate descends from: the serial of generation 1, the
    /// certificate of the enrollment (token or administrator) that started it. A renewal
    /// keeps its predecessor's lineage. Records of earlier versions read as their own
    /// lineage, generation 1.
    #[serde(default, with = "hex_bytes")]
    pub lineage: Vec<u8>,
    /// 1 for the enrollment's certificate, +1 at each renewal. Only the newest generation of
    /// a lineage may renew.
    #[serde(default)]
    pub generation: u32,
}

impl CertRecord {
    /// Serial as lowercase hex.
    pub fn serial_hex(&self) -> String {
        hex::encode(&self.serial)
    }

    /// OCSP/CRL view of this record.
    pub fn cert_status(&self) -> CertStatus {
        match &self.status {
            RecordStatus::Valid => CertStatus::Good,
            RecordStatus::Revoked { at, reason } => CertStatus::Revoked {
                at: *at,
                reason: *reason,
            },
        }
    }

    /// Whether the record is revoked.
    pub fn is_revoked(&self) -> bool {
        matches!(self.status, RecordStatus::Revoked { .. })
    }

    /// Mark the record revoked at `at` for `reason` and return its CRL entry: the one rule
    /// every store applies inside its revoke transaction. A second revocation is
    /// [`crate::Error::AlreadyRevoked`], except a change to keyCompromise, which keeps the
    /// original revocation date (RFC 5280 5.3.1).
    pub(crate) fn revoke(
        &mut self,
        at: DateTime<Utc>,
        reason: RevocationReason,
    ) -> Result<RevokedEntry> {
        let at = match &self.status {
            RecordStatus::Valid => at,
            RecordStatus::Revoked {
                at: first,
                reason: old,
            } if reason == RevocationReason::KeyCompromise
                && *old != RevocationReason::KeyCompromise =>
            {
                *first
            }
            RecordStatus::Revoked { reason: old, .. } => {
                return Err(crate::Error::AlreadyRevoked {
                    serial: self.serial_hex(),
                    reason: *old,
                })
            }
        };
        self.status = RecordStatus::Revoked { at, reason };
        Ok(RevokedEntry {
            serial: self.serial.clone(),
            revoked_at: at,
            reason,
        })
    }

    /// Lineage as lowercase hex (the serial of its generation 1).
    pub fn lineage_hex(&self) -> String {
        hex::encode(&self.lineage)
    }

    /// Give a record of an earlier version (no lineage) its own lineage, generation 1.
    pub(crate) fn with_lineage_defaults(mut self) -> Self {
        if self.lineage.is_empty() {
            self.lineage = self.serial.clone();
        }
        if self.generation == 0 {
            self.generation = 1;
        }
        self
    }
}

/// Why a lineage is locked: no generation of it may renew or re-enroll any more.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageLock {
    /// When it was locked.
    pub at: DateTime<Utc>,
    /// `key_compromise` (a generation was revoked for keyCompromise), `lineage_revoked`
    /// (`revoke --lineage`), or `superseded_renewal` (a superseded generation tried to renew:
    /// a cloned key).
    pub reason: String,
    /// The serial (hex) whose event locked it.
    pub serial: String,
    /// Who locked it (administrator, or `ca` for an automatic lock).
    pub actor: String,
}

/// Which names an enrollment token lets its holder ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityBinding {
    /// The subject CN the certificate must carry (if any).
    #[serde(default)]
    pub common_name: Option<String>,
    /// The SANs the CSR may ask for (typed, e.g. `dns:web1.example.com`); the CSR must not
    /// ask for any other. Empty means "only the CN".
    #[serde(default)]
    pub sans: Vec<String>,
}

/// A one-time enrollment token, stored by hash only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (for audit and listing; not a secret).
    pub id: String,
    /// SHA-256 of the secret token (hex).
    pub hash: String,
    /// Names the holder may request.
    pub identity: IdentityBinding,
    /// Profile to issue under.
    pub profile: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// From this instant on the token can no longer be redeemed.
    pub expires_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: String,
    /// When it was used (single use), if it was.
    pub used_at: Option<DateTime<Utc>>,
}

impl TokenRecord {
    /// The one rule for whether a token may be redeemed at `now`: never used, and `now`
    /// before its expiry (`TokenRejected` otherwise). The authority checks it before any HSM
    /// work ([`crate::authority`]); every store applies it again inside
    /// [`TokenStore::consume_token`]'s atomic step.
    pub fn check_usable(&self, now: DateTime<Utc>) -> Result<()> {
        if self.used_at.is_some() {
            return Err(crate::Error::TokenRejected("token already used"));
        }
        if now >= self.expires_at {
            return Err(crate::Error::TokenRejected("token expired"));
        }
        Ok(())
    }

    /// When the token stopped being redeemable: its use, or its expiry if it was never used
    /// (a use is always before the expiry; the earlier of the two is taken all the same).
    /// [`Retention::prune_tokens`] counts its retention from here.
    pub fn finished_at(&self) -> DateTime<Utc> {
        self.used_at
            .map_or(self.expires_at, |u| u.min(self.expires_at))
    }
}

/// A pre-signed OCSP response kept across restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOcspResponse {
    /// Serial of the certificate answered for.
    #[serde(with = "hex_bytes")]
    pub serial: Vec<u8>,
    /// The DER OCSPResponse.
    #[serde(with = "b64_bytes")]
    pub der: Vec<u8>,
    /// thisUpdate of the response.
    pub this_update: DateTime<Utc>,
    /// nextUpdate of the response.
    pub next_update: DateTime<Utc>,
}

/// Filter for listing certificates.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CertFilter {
    /// Only this identity.
    pub identity: Option<String>,
    /// Only revoked (`Some(true)`) or only not revoked (`Some(false)`).
    pub revoked: Option<bool>,
    /// Only certificates whose notAfter is before this time.
    pub expiring_before: Option<DateTime<Utc>>,
    /// Only certificates whose notAfter is after this time (i.e. unexpired at that time).
    pub valid_at: Option<DateTime<Utc>>,
    /// Only this lineage (the serial of its generation 1).
    #[serde(default)]
    pub lineage: Option<Vec<u8>>,
    /// At most this many, the first in the filter's order ([`CertFilter::order`]).
    pub limit: Option<usize>,
    /// Only certificates after this position in the filter's order: the next page of a
    /// listing ([`CertCursor::after`] of the last certificate of the previous page).
    #[serde(default)]
    pub after: Option<CertCursor>,
}

impl CertFilter {
    /// The order [`CertStore::list_certs`] answers this filter in: the order of the index
    /// both stores read for it (lineage, else expiry when `expiring_before` is set, else
    /// serial; an identity's certificates are in serial order).
    pub fn order(&self) -> CertOrder {
        if self.lineage.is_some() {
            CertOrder::Generation
        } else if self.identity.is_some() {
            CertOrder::Serial
        } else if self.expiring_before.is_some() {
            CertOrder::Expiry
        } else {
            CertOrder::Serial
        }
    }

    /// Whether `rec` passes the filter's conditions (not the cursor or the limit).
    pub fn matches(&self, rec: &CertRecord) -> bool {
        self.identity.as_ref().is_none_or(|i| &rec.identity == i)
            && self.lineage.as_ref().is_none_or(|l| &rec.lineage == l)
            && self.revoked.is_none_or(|r| rec.is_revoked() == r)
            && self.expiring_before.is_none_or(|t| rec.not_after < t)
            && self.valid_at.is_none_or(|t| rec.not_after > t)
    }

    /// The cursor, refused ([`crate::Error::BadCursor`]) if it was made for another order:
    /// what each store checks before it reads.
    pub(crate) fn checked_cursor(&self) -> Result<Option<&CertCursor>> {
        match &self.after {
            Some(c) if c.order != self.order() => Err(crate::Error::BadCursor(format!(
                "the cursor is for a listing in {} order, this one is in {} order",
                c.order.name(),
                self.order().name()
            ))),
            other => Ok(other.as_ref()),
        }
    }
}

/// The order of a certificate listing ([`CertFilter::order`]), each with its keyset: what a
/// [`CertCursor`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertOrder {
    /// By serial.
    Serial,
    /// By notAfter (whole seconds, as certificates carry it: RFC 5280 4.1.2.5), then serial.
    Expiry,
    /// By generation within the lineage, then serial.
    Generation,
}

impl CertOrder {
    fn name(self) -> &'static str {
        match self {
            CertOrder::Serial => "serial",
            CertOrder::Expiry => "expiry",
            CertOrder::Generation => "generation",
        }
    }

    fn tag(self) -> u8 {
        match self {
            CertOrder::Serial => 1,
            CertOrder::Expiry => 2,
            CertOrder::Generation => 3,
        }
    }
}

/// A keyset cursor into a certificate listing: the position `(key, serial)` of the last
/// certificate of a page in the listing's order (`key` is the notAfter in Unix seconds for
/// [`CertOrder::Expiry`], the generation for [`CertOrder::Generation`], 0 for
/// [`CertOrder::Serial`]). The next page is every matching certificate strictly after it, so a
/// listing followed page by page returns each certificate stored for its whole duration
/// exactly once, whatever is inserted or deleted meanwhile (no offset to shift).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertCursor {
    /// The listing's order.
    pub order: CertOrder,
    /// The sort key of the last certificate of the page.
    pub key: i64,
    /// Its serial.
    #[serde(with = "hex_bytes")]
    pub serial: Vec<u8>,
}

/// Version of [`CertCursor::to_bytes`]'s layout.
const CURSOR_V1: u8 = 1;

impl CertCursor {
    /// The cursor just after `rec` in `filter`'s order.
    pub fn after(filter: &CertFilter, rec: &CertRecord) -> CertCursor {
        let order = filter.order();
        let key = match order {
            CertOrder::Serial => 0,
            CertOrder::Expiry => rec.not_after.timestamp(),
            CertOrder::Generation => i64::from(rec.generation.max(1)),
        };
        CertCursor {
            order,
            key,
            serial: rec.serial.clone(),
        }
    }

    /// The cursor as bytes: version, order, key (big-endian), serial.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(10 + self.serial.len());
        b.push(CURSOR_V1);
        b.push(self.order.tag());
        b.extend_from_slice(&self.key.to_be_bytes());
        b.extend_from_slice(&self.serial);
        b
    }

    /// Read [`CertCursor::to_bytes`]; anything else is [`crate::Error::BadCursor`].
    pub fn from_bytes(b: &[u8]) -> Result<CertCursor> {
        let bad = |why: &str| crate::Error::BadCursor(why.to_string());
        let (&version, rest) = b.split_first().ok_or_else(|| bad("empty cursor"))?;
        if version != CURSOR_V1 {
            return Err(bad("unknown cursor version"));
        }
        let (&tag, rest) = rest.split_first().ok_or_else(|| bad("truncated cursor"))?;
        let order = [CertOrder::Serial, CertOrder::Expiry, CertOrder::Generation]
            .into_iter()
            .find(|o| o.tag() == tag)
            .ok_or_else(|| bad("unknown cursor order"))?;
        let (key, serial) = rest
            .split_at_checked(8)
            .ok_or_else(|| bad("truncated cursor"))?;
        let key =
            i64::from_be_bytes(<[u8; 8]>::try_from(key).map_err(|_| bad("truncated cursor"))?);
        // RFC 5280 4.1.2.2: a serial is 1 to 20 octets.
        if serial.is_empty() || serial.len() > 20 {
            return Err(bad("the cursor's serial is not 1 to 20 octets"));
        }
        if order == CertOrder::Serial && key != 0 {
            return Err(bad("a serial-order cursor with a sort key"));
        }
        Ok(CertCursor {
            order,
            key,
            serial: serial.to_vec(),
        })
    }
}

/// Certificates, their revocation state and their lineages: what issuance, renewal, the
/// authority's revocation workflow and the CRL publisher read and write.
///
/// Every write is durable when it returns (outside [`deferred`]), so a caller may acknowledge
/// it (DESIGN invariant 2). A backend must keep the atomicity each method states: the
/// lineage rules (a generation renews at most once; nothing renews once its lineage is locked)
/// rest on [`CertStore::insert_renewal`] and [`CertStore::lock_lineage`] being linearizable
/// with respect to each other.
pub trait CertStore: Send + Sync + std::fmt::Debug {
    /// Insert a new certificate; `Ok(false)` if the serial is taken (nothing written). The
    /// uniqueness check and the insert are one atomic step: of two inserts of one serial,
    /// exactly one returns `Ok(true)`. A record is never visible without its lookup entries
    /// (identity, lineage).
    fn insert_cert(&self, rec: &CertRecord) -> Result<bool>;
    /// Insert a renewal, atomically with the lineage checks: `rec` (generation n + 1 of
    /// `rec.lineage`) is stored only if its lineage is not locked and `previous` (the
    /// renewing certificate, generation n) is the lineage's newest stored generation. The
    /// check and the insert are one atomic step (check-and-insert): of two renewals of one
    /// generation, even racing, at most one is stored, and none is stored after
    /// [`CertStore::lock_lineage`] returned. Errors: [`crate::Error::LineageLocked`],
    /// [`crate::Error::GenerationSuperseded`] (nothing written); `Ok(false)` if the serial
    /// is taken.
    fn insert_renewal(&self, rec: &CertRecord, previous: &CertRecord) -> Result<bool>;
    /// The lineage's certificates, oldest generation first.
    fn lineage_certs(&self, lineage: &[u8]) -> Result<Vec<CertRecord>>;
    /// The lineage's newest stored generation (what every renewal checks: its cost must not
    /// grow with the lineage's length). The default takes the last of
    /// [`CertStore::lineage_certs`].
    fn lineage_newest(&self, lineage: &[u8]) -> Result<Option<CertRecord>> {
        Ok(self.lineage_certs(lineage)?.pop())
    }
    /// Lock a lineage (no renewal, no re-enrollment from any of its generations). Locking a
    /// locked lineage keeps the first lock and returns it (first lock wins, atomically). Once
    /// this returns, no renewal of the lineage can be stored, so a list of its certificates
    /// read afterwards is complete.
    fn lock_lineage(&self, lineage: &[u8], lock: &LineageLock) -> Result<LineageLock>;
    /// The lineage's lock, if it is locked.
    fn lineage_lock(&self, lineage: &[u8]) -> Result<Option<LineageLock>>;
    /// Whether a serial has been used.
    fn serial_exists(&self, serial: &[u8]) -> Result<bool>;
    /// Look up a certificate.
    fn get_cert(&self, serial: &[u8]) -> Result<Option<CertRecord>>;
    /// Certificates matching a filter, in its order ([`CertFilter::order`]), strictly after
    /// its cursor ([`CertFilter::after`]), at most its limit: one page of a keyset-paged
    /// listing. Each page reads only its own rows (an index range from the cursor on). A cursor
    /// of another order is [`crate::Error::BadCursor`] (nothing read).
    fn list_certs(&self, filter: &CertFilter) -> Result<Vec<CertRecord>>;
    /// Visit every certificate (for OCSP warm-up), without loading all at once.
    fn for_each_cert(&self, f: &mut dyn FnMut(CertRecord) -> Result<()>) -> Result<()>;
    /// Revoke, as one atomic read-modify-write of the record (two concurrent revocations of
    /// one serial: one succeeds, the other sees it revoked). Errors: unknown serial
    /// (`CertNotFound`); already revoked (`AlreadyRevoked`), except that a revocation may be
    /// changed to keyCompromise (RFC 5280 5.3.1); a reason
    /// [`crate::revocation::check_reason`] refuses (`ReasonNotAllowed`), before anything
    /// changes.
    fn revoke(
        &self,
        serial: &[u8],
        at: DateTime<Utc>,
        reason: RevocationReason,
    ) -> Result<CertRecord>;
    /// Visit revoked entries in serial order, streaming (CRL building). Every revocation
    /// durable before the call starts is visited.
    fn for_each_revoked(&self, f: &mut dyn FnMut(RevokedEntry) -> Result<()>) -> Result<()>;
}

// ---------------------------------------------------------------------------------------------
// Certificate counters (issue 17 item 5: counts come from counters, not scans).

/// One row of the certificate counters ([`CertCounts::cert_counts`]): how many stored
/// certificates share a profile, a revocation state and the UTC date of their notAfter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertCount {
    /// Profile name.
    pub profile: String,
    /// The UTC date of the certificates' notAfter.
    pub not_after_day: chrono::NaiveDate,
    /// Revoked (`true`) or not revoked (`false`; expired certificates not yet pruned included).
    pub revoked: bool,
    /// How many.
    pub count: u64,
}

/// The counters' key of a certificate: its notAfter's UTC date as days since 1970-01-01.
pub(crate) fn count_day(not_after: DateTime<Utc>) -> i32 {
    let d = not_after.timestamp().div_euclid(86_400);
    i32::try_from(d).unwrap_or(if d < 0 { i32::MIN } else { i32::MAX })
}

/// The date of a [`count_day`].
pub(crate) fn count_date(day: i32) -> Result<chrono::NaiveDate> {
    DateTime::from_timestamp(i64::from(day) * 86_400, 0)
        .map(|t| t.date_naive())
        .ok_or_else(|| crate::Error::Corrupt(format!("certificate counter day {day}")))
}

/// Certificate counters kept by the store itself: every write that adds a certificate,
/// revokes one or prunes one moves its counter in the same atomic step (DESIGN "Inventory at
/// scale"), so counting never reads certificates and a crash never leaves the counters apart
/// from the records. Expiry views are computed from the per-day rows at read time, so they stay
/// right as time passes without anything being rewritten.
pub trait CertCounts: Send + Sync + std::fmt::Debug {
    /// The non-zero counters, one row per (profile, notAfter date, revoked). The cost depends
    /// on the number of rows (profiles times notAfter dates still stored), not on the number of
    /// certificates. A repeated revocation (or one changed to keyCompromise) changes nothing.
    fn cert_counts(&self) -> Result<Vec<CertCount>>;
}

/// CRL numbers (RFC 5280 5.2.3): what the CRL publisher allocates.
pub trait CrlNumbers: Send + Sync + std::fmt::Debug {
    /// Allocate the next CRL number, durably: strictly greater than every number returned
    /// before, by any caller, across restarts (an atomic increment; two callers never get the
    /// same number).
    fn next_crl_number(&self) -> Result<u64>;
}

/// One-time enrollment tokens, stored by hash: what the admin routes create and list and
/// the authority redeems.
pub trait TokenStore: Send + Sync + std::fmt::Debug {
    /// Store a new enrollment token (by hash), durably. A hash already stored is an error
    /// (`Corrupt`), never an overwrite.
    fn insert_token(&self, tok: &TokenRecord) -> Result<()>;
    /// Atomically consume the token with this hash: the usability check
    /// ([`TokenRecord::check_usable`]: unused, unexpired at `now`) and the marking
    /// as used at `now` are one compare-and-swap, so a token is redeemed at most once: of
    /// concurrent attempts exactly one succeeds; the others, and every later one, fail with
    /// `TokenRejected`.
    fn consume_token(&self, hash: &str, now: DateTime<Utc>) -> Result<TokenRecord>;
    /// Undo [`TokenStore::consume_token`] when the issuance it was consumed for failed before
    /// any certificate was stored (HSM down, store error): atomically mark the token unused
    /// again, only if it is still marked used at exactly `used_at` (the value `consume_token`
    /// wrote; a compare-and-swap). `Ok(false)` if it is not (unknown, unused, or used at
    /// another time): nothing changes.
    fn release_token(&self, hash: &str, used_at: DateTime<Utc>) -> Result<bool>;
    /// List tokens (for admins).
    fn list_tokens(&self) -> Result<Vec<TokenRecord>>;
    /// The token stored under this hash, used or not (to check a request against its binding
    /// before consuming it). The default scans [`TokenStore::list_tokens`]; stores override it.
    fn get_token(&self, hash: &str) -> Result<Option<TokenRecord>> {
        Ok(self.list_tokens()?.into_iter().find(|t| t.hash == hash))
    }
}

/// What [`OcspResponseStore::for_each_ocsp_due`] calls with each due response's serial and
/// nextUpdate.
pub type DueVisitor<'a> = dyn FnMut(&[u8], DateTime<Utc>) -> Result<()> + 'a;

/// Pre-signed OCSP responses kept across restarts: what the OCSP responder persists.
pub trait OcspResponseStore: Send + Sync + std::fmt::Debug {
    /// Keep a pre-signed OCSP response (replacing the serial's previous one), durable on
    /// return.
    fn put_ocsp_response(&self, resp: &StoredOcspResponse) -> Result<()>;
    /// Keep a pre-signed OCSP response without waiting for it to be durable: the next flush
    /// (any write's, or the store's periodic one) makes it so. Only for what can be rebuilt
    /// after a crash: the responder signs missing responses again at start. The default is
    /// [`OcspResponseStore::put_ocsp_response`].
    fn put_ocsp_response_lazy(&self, resp: &StoredOcspResponse) -> Result<()> {
        self.put_ocsp_response(resp)
    }
    /// [`OcspResponseStore::put_ocsp_response_lazy`] for several responses: one group
    /// response, kept under each serial it covers. Reading any of them gives the whole
    /// response under that serial; stores keep the bytes once where they can (sled,
    /// PostgreSQL: the members link to one group record), in one round trip.
    fn put_ocsp_responses_lazy(&self, resps: &[StoredOcspResponse]) -> Result<()> {
        resps
            .iter()
            .try_for_each(|r| self.put_ocsp_response_lazy(r))
    }
    /// Remove group responses written before `written_before` that no member links to any
    /// more (every member re-signed on its own, or pruned); returns how many. Stores that keep
    /// a group's bytes once ([`OcspResponseStore::put_ocsp_responses_lazy`]) implement it; run
    /// by the retention pass.
    fn sweep_ocsp_groups(&self, _written_before: DateTime<Utc>) -> Result<usize> {
        Ok(0)
    }
    /// Visit all kept OCSP responses.
    fn for_each_ocsp_response(
        &self,
        f: &mut dyn FnMut(StoredOcspResponse) -> Result<()>,
    ) -> Result<()>;
    /// Visit the serial and nextUpdate of every kept response whose nextUpdate is at or before
    /// `before`: what a refresh pass needs to find due responses when its cache does not hold
    /// them all. Reads no response bytes (a link's group is not resolved), so a pass over a
    /// million records costs their keys and dates, not their DER.
    fn for_each_ocsp_due(&self, before: DateTime<Utc>, f: &mut DueVisitor<'_>) -> Result<()>;
    /// The response kept under `serial` (a response may cover several serials and is kept
    /// under one of them: see the responder's issuance groups).
    fn get_ocsp_response(&self, serial: &[u8]) -> Result<Option<StoredOcspResponse>>;
    /// Keep `resp` under its serial only if nothing is kept there yet (one atomic step),
    /// durable on return; `Ok(false)`: a response was kept already, nothing written. How a
    /// group response is kept for its other members when the serial it was stored under gets
    /// an answer of its own, without overwriting a member's newer answer.
    fn put_ocsp_response_if_absent(&self, resp: &StoredOcspResponse) -> Result<bool>;
}

/// The scope of the issuing CA's full CRL in a [`CrlArchive`].
pub const FULL_CRL: &str = "full";

/// A signed CRL as kept in a [`CrlArchive`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCrl {
    /// Which CRL this is ([`FULL_CRL`]).
    pub scope: String,
    /// Its CRL number.
    pub number: u64,
    /// The DER CertificateList.
    pub der: Vec<u8>,
    /// thisUpdate.
    pub this_update: DateTime<Utc>,
    /// nextUpdate.
    pub next_update: DateTime<Utc>,
}

/// The latest signed CRL of each scope, shared by every node and stateless responder (DESIGN
/// "Several nodes"): whichever node signs a CRL, all of them serve it.
pub trait CrlArchive: Send + Sync + std::fmt::Debug {
    /// Keep `crl` as its scope's latest if its number is higher than the kept one's, durable
    /// on return (compare and write are one atomic step). `Ok(false)`: a CRL with this or a
    /// higher number is kept already, nothing was written.
    fn put_crl(&self, crl: &StoredCrl) -> Result<bool>;
    /// The latest kept CRL of `scope`.
    fn latest_crl(&self, scope: &str) -> Result<Option<StoredCrl>>;
}

/// Named leases: work that one node at a time should do (building and signing a CRL, an OCSP
/// refresh pass). A lease is a promise between cooperating nodes, not a security control:
/// whatever it guards stays correct if two nodes did it at once, only wasteful.
pub trait Leases: Send + Sync + std::fmt::Debug {
    /// Take, or extend, the lease `name` for `holder` until `ttl` from now (the database's
    /// clock on PostgreSQL, so node clocks do not matter). `Ok(true)`: `holder` holds it until
    /// then (it was free, expired, or `holder`'s already). `Ok(false)`: another holder's lease
    /// is live; nothing changed. A holder that crashed loses the lease when it expires.
    fn try_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool>;
    /// Give the lease up if `holder` holds it (another node may take it at once).
    fn release_lease(&self, name: &str, holder: &str) -> Result<()>;
}

/// Changes as they are committed, by every node sharing the store ([`Change`]): how nodes and
/// stateless responders follow revocations, OCSP responses and CRLs without polling.
pub trait ChangeFeed: Send + Sync + std::fmt::Debug {
    /// A new subscription: it receives every change committed after this returns, and a
    /// [`Change::Resync`] after any gap (a reconnection, or a subscriber too slow to keep up).
    /// Dropping it unsubscribes. On PostgreSQL the first subscription connects a listening
    /// session (waiting up to a few seconds for it; if the database is away it keeps trying
    /// and sends `Resync` once connected).
    fn subscribe(&self) -> Result<Subscription>;
    /// Like [`ChangeFeed::subscribe`], but only changes committed through other handles on the
    /// store (other nodes), and `Resync`: what a node follows to learn what it did not do
    /// itself. On a store only one process opens (sled) that is only ever `Resync`.
    fn subscribe_remote(&self) -> Result<Subscription>;
    /// Whether other processes may write this store (other nodes, stateless responders
    /// reading it): `false` for sled.
    fn is_shared(&self) -> bool;
}

// --- CRL shards (README "CRLs", DESIGN "CRL shards") ---

/// What the sharded CRL publisher reads: the revoked entries of one CRL shard, through an
/// index (a shard's build must not read every revocation), and a CRL number sequence per
/// archive scope.
///
/// A store files a revocation under the shard its certificate's CRL distribution point names
/// ([`crate::x509::crl_shard_of`]), inside the revocation's own atomic step; a certificate
/// that names no shard is on the full CRL only.
pub trait CrlShards: Send + Sync + std::fmt::Debug {
    /// Visit the revoked entries of `shard`, in serial order, streaming, reading only that
    /// shard's entries (an index range). Every revocation durable before the call starts is
    /// visited; a pruned certificate is not.
    fn for_each_revoked_in_shard(
        &self,
        shard: crate::x509::CrlShard,
        f: &mut dyn FnMut(RevokedEntry) -> Result<()>,
    ) -> Result<()>;
    /// Allocate the next CRL number of `scope`, durably: strictly greater than every number
    /// returned before for this scope, by any caller, across restarts, and than the number of
    /// the CRL the archive keeps for it (a store copied with its archive goes on from there).
    fn next_crl_number_in(&self, scope: &str) -> Result<u64>;
    /// The scopes of the CRL archive that start with `prefix`, in order.
    fn archived_crl_scopes(&self, prefix: &str) -> Result<Vec<String>>;
}

/// Which expired certificates [`Retention::prune_expired_certs`] may remove: the one rule both
/// stores apply ([`CertCutoff::allows`]), inside the step that deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertCutoff {
    /// A certificate whose notAfter is before this instant may go (now minus the retention).
    pub expired_before: DateTime<Utc>,
    /// A revoked certificate must stay while the CRL must list it: RFC 5280 5.2 / 3.3 allow
    /// an entry to leave the CRL only after it appeared on a CRL issued after the
    /// certificate's notAfter (this CA does not use ExpiredCertsOnCRL, RFC 5280 5.2.7). A
    /// revoked certificate may therefore go only when its notAfter **and** its revocation
    /// date are both before this instant, the thisUpdate of a CRL already published (and
    /// built from the store after then). `None`: no such CRL is known, no revoked
    /// certificate goes.
    pub revoked_listed_before: Option<DateTime<Utc>>,
}

impl CertCutoff {
    /// Whether `rec` may be pruned under this cutoff.
    pub fn allows(&self, rec: &CertRecord) -> bool {
        if rec.not_after >= self.expired_before {
            return false;
        }
        match &rec.status {
            RecordStatus::Valid => true,
            RecordStatus::Revoked { at, .. } => self
                .revoked_listed_before
                .is_some_and(|listed| rec.not_after < listed && *at < listed),
        }
    }
}

/// What one [`Retention::prune_expired_certs`] call removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrunedCerts {
    /// Serials of the certificates removed (with every index entry, their revocation entry and
    /// the OCSP response stored under their serial).
    pub serials: Vec<Vec<u8>>,
    /// The stored OCSP responses removed with them. A response signed at issuance for a group
    /// of certificates is stored once, under the group's first serial: one of these may also
    /// answer for certificates still stored, whose persisted answer it was. The caller may
    /// store it again under such a serial ([`OcspResponseStore::put_ocsp_response`]); if it
    /// does not, the responder signs a new answer for them when asked or at its next start.
    pub ocsp_responses: Vec<StoredOcspResponse>,
}

/// Pruning of records past their retention (README "Retention"): expired certificates and
/// finished enrollment tokens. The audit log is never pruned here.
///
/// Each call does at most `limit` records and is its own unit: on sled one transaction, on
/// PostgreSQL one database transaction whose rows are claimed with `FOR UPDATE SKIP LOCKED`,
/// so several nodes pruning at once share the work, never remove (or count) a record twice
/// and never wait on each other. Callers loop until a call returns fewer than `limit`.
/// Durable on return, like every write.
pub trait Retention: Send + Sync + std::fmt::Debug {
    /// Remove up to `limit` certificates that `cutoff` allows ([`CertCutoff::allows`], checked
    /// again inside the deleting step, so a revocation racing with the prune either comes
    /// first and keeps the certificate, or finds it gone), oldest notAfter first. A pruned
    /// certificate disappears from every lookup at once: its record, its identity, expiry and
    /// lineage index entries, its revocation entry (CRL) and the OCSP response stored under
    /// its serial. A lineage's lock is removed only with its last certificate.
    fn prune_expired_certs(&self, cutoff: &CertCutoff, limit: usize) -> Result<PrunedCerts>;
    /// Remove up to `limit` enrollment tokens that finished
    /// ([`TokenRecord::finished_at`]: used, or expired unused) before `before`; returns how
    /// many. A token consumed or released while this runs is judged on its new state.
    fn prune_tokens(&self, before: DateTime<Utc>, limit: usize) -> Result<usize>;
}

/// The keys an OCSP response for `serial` may be stored under: the serial as recorded and its
/// magnitude without leading zero octets (what the responder stores under).
fn ocsp_keys(serial: &[u8]) -> Vec<&[u8]> {
    let start = serial
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(serial.len().saturating_sub(1));
    let magnitude = &serial[start.min(serial.len())..];
    if magnitude == serial {
        vec![serial]
    } else {
        vec![serial, magnitude]
    }
}

/// How far [`AuditLog::verify_audit_log_with_progress`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditProgress {
    /// Events checked so far.
    pub events: u64,
    /// Sequence number of the last event checked.
    pub seq: u64,
    /// The head's sequence number read when the verification started (where it ends), if the
    /// log had a head.
    pub head: Option<u64>,
}

/// The hash-chained audit log and its signed checkpoints (DESIGN invariant 4).
pub trait AuditLog: Send + Sync + std::fmt::Debug {
    /// Append an audit event to the hash chain; returns the sealed event. Appends are
    /// serialised: each event's `seq` is the previous one's + 1 and its `prev_hash` the
    /// previous one's hash, and the event and the stored head move together (a crash leaves
    /// a prefix of the chain, never a gap). Durable on return.
    fn append_audit(&self, ev: NewAuditEvent) -> Result<AuditEvent>;
    /// Audit events with `seq >= from`, at most `limit`.
    fn audit_events(&self, from: u64, limit: usize) -> Result<Vec<AuditEvent>>;
    /// Audit events with `seq >= from`, in order, read as they are consumed (constant memory).
    fn audit_iter(&self, from: u64) -> Box<dyn Iterator<Item = Result<AuditEvent>> + Send + '_>;
    /// The stored head of the audit chain `(seq, hash)`, if there is one.
    fn audit_head(&self) -> Result<Option<(u64, String)>>;
    /// The head and whether any event exists, read together (no append in between). The
    /// default reads them one after the other; stores with an append lock override it.
    fn audit_head_and_any(&self) -> Result<(Option<(u64, String)>, bool)> {
        let head = self.audit_head()?;
        let any = head.is_some() || self.audit_iter(1).next().is_some();
        Ok((head, any))
    }
    /// Keep a signed audit checkpoint (durable on return).
    fn put_audit_checkpoint(&self, cp: &Checkpoint) -> Result<()>;
    /// Checkpoints with `seq >= from_seq`, in sequence order (then time), read as consumed.
    fn audit_checkpoints(
        &self,
        from_seq: u64,
    ) -> Box<dyn Iterator<Item = Result<Checkpoint>> + Send + '_>;
    /// The latest checkpoint with `seq < before_seq` (`u64::MAX`: the last one).
    fn audit_checkpoint_before(&self, before_seq: u64) -> Result<Option<Checkpoint>>;
    // ---- Archive and truncation (README "Archiving and truncating the audit log") ----

    /// The start of a truncated log: the signed checkpoint whose event was the last one
    /// archived and deleted (`audit truncate`); the first kept event links to its hash.
    /// `None`: the log starts at event 1.
    fn audit_start(&self) -> Result<Option<Checkpoint>>;
    /// Make `anchor` the start of the log (durable on return), before any event is deleted.
    /// Refused with [`crate::Error::AuditChain`] when the stored event at `anchor.seq` has
    /// another hash than the checkpoint's, when it lies beyond the head, or when the start
    /// would move back; setting the current start again is accepted (a resumed truncation).
    /// The signature is the caller's to check (the store holds no key).
    fn set_audit_start(&self, anchor: &Checkpoint) -> Result<()>;
    /// Delete at most `limit` events at or below the start and checkpoints below it; returns
    /// how many records were deleted (0: nothing is left below the start). Each call is one
    /// durable batch, so an interrupted truncation resumes where it stopped.
    fn delete_audit_below_start(&self, limit: usize) -> Result<usize>;

    /// Check the whole audit chain; returns the number of events.
    fn verify_audit(&self) -> Result<u64> {
        Ok(self.verify_audit_log(None)?.events)
    }
    /// Check the whole audit log in one pass, in constant memory: the hash chain, every
    /// checkpoint against the event at its sequence (and its signature with `key`), that no
    /// checkpoint lies beyond the last event (tail deleted), and that the stored head is the
    /// last event (a missing head while events exist is tampering too).
    fn verify_audit_log(&self, key: Option<&AuditKey>) -> Result<AuditReport> {
        self.verify_audit_log_with_progress(key, &mut |_| {})
    }
    /// [`AuditLog::verify_audit_log`], calling `progress` after each event checked (the
    /// callback decides how often to report: it is called in the verifying loop).
    fn verify_audit_log_with_progress(
        &self,
        key: Option<&AuditKey>,
        progress: &mut dyn FnMut(AuditProgress),
    ) -> Result<AuditReport> {
        let start = self.audit_start()?;
        match verify_audit_log_from(self, start.as_ref(), key, progress) {
            // A truncation moved the start while this ran (PostgreSQL, another node): the
            // events it deleted were read as missing. Check again from the new start.
            Err(e @ crate::Error::AuditChain { .. }) => match self.audit_start()? {
                now if now != start => verify_audit_log_from(self, now.as_ref(), key, progress),
                _ => Err(e),
            },
            r => r,
        }
    }
}

/// [`AuditLog::verify_audit_log_with_progress`] from the log's start read before (`None`:
/// event 1; else the signed checkpoint a truncation left).
fn verify_audit_log_from<S: AuditLog + ?Sized>(
    store: &S,
    start: Option<&Checkpoint>,
    key: Option<&AuditKey>,
    progress: &mut dyn FnMut(AuditProgress),
) -> Result<AuditReport> {
    // The head first: events appended while this runs (a live server) are beyond it and
    // are left for the next check.
    let (head, any) = store.audit_head_and_any()?;
    let limit = match &head {
        Some(h) => h.0,
        // Events but no head: the head was removed (reported below).
        None if any => u64::MAX,
        // An empty log when the head was read: whatever is appended since is beyond it.
        None => 0,
    };
    let (mut v, first) = match start {
        Some(a) => (LogVerifier::starting_at(a, key.cloned())?, a.seq + 1),
        None => (LogVerifier::new(key.cloned()), 1),
    };
    // After a truncation the checkpoints at or below the start are archived (some may
    // be left by an interrupted one): the stream starts after it.
    let cp_from = if start.is_some() { first } else { 0 };
    let mut checkpoints = store.audit_checkpoints(cp_from).peekable();
    let mut feed = |v: &mut LogVerifier| -> Result<()> {
        while let Some(cp) = checkpoints.next_if(|c| c.as_ref().map_or(true, |c| c.seq <= v.seq()))
        {
            v.checkpoint(&cp?)?;
        }
        Ok(())
    };
    feed(&mut v)?;
    let mut beyond = None;
    for (events, ev) in (1u64..).zip(store.audit_iter(first)) {
        let ev = ev?;
        if ev.seq > limit {
            beyond = Some(ev.seq);
            break;
        }
        v.event(&ev)?;
        feed(&mut v)?;
        progress(AuditProgress {
            events,
            seq: ev.seq,
            head: head.as_ref().map(|h| h.0),
        });
    }
    // Appends write the event, then the head, under the lock `audit_head` takes: an event
    // beyond the head read at the start with the head unchanged since is no append in
    // progress but a head moved back.
    let now = store.audit_head()?.map_or(0, |h| h.0);
    if let Some(b) = beyond {
        if now == limit {
            return Err(crate::Error::AuditChain {
                seq: b,
                reason: format!(
                    "event {b} lies beyond the audit head ({limit}): the head was moved back"
                ),
            });
        }
    }
    let mut leftover = checkpoints.next().transpose()?;
    if let Some(cp) = &leftover {
        // A checkpoint signed while this ran, of events appended after the head was read.
        if cp.seq > limit && v.seq() == limit && cp.seq <= now {
            leftover = None;
        }
    }
    let mut report = v.finish(leftover.as_ref())?;
    if let Some(a) = start {
        report.archived_events = a.seq;
        report.start = Some(a.clone());
    }
    match head {
        None if report.events > 0 => Err(crate::Error::AuditChain {
            seq: report.last_seq,
            reason: format!(
                "the audit head is missing while {} events exist (head deleted)",
                report.events
            ),
        }),
        Some((seq, _)) if seq != report.last_seq => Err(crate::Error::AuditChain {
            seq: report.last_seq + 1,
            reason: format!(
                "log ends at {} but head says {seq} (events removed)",
                report.last_seq
            ),
        }),
        Some((_, hash)) if hash != report.last_hash => Err(crate::Error::AuditChain {
            seq: report.last_seq,
            reason: "the audit head's hash is not the last event's (log rewritten)".into(),
        }),
        _ => Ok(report),
    }
}

/// Whether `anchor` may become the start of the audit log ([`AuditLog::set_audit_start`]),
/// given the current start, the head's sequence and the stored event at `anchor.seq` (`None`:
/// already deleted).
pub(crate) fn check_new_audit_start(
    anchor: &Checkpoint,
    current: Option<&Checkpoint>,
    head: Option<u64>,
    event: Option<&AuditEvent>,
) -> Result<()> {
    let refuse = |reason: String| {
        Err(crate::Error::AuditChain {
            seq: anchor.seq,
            reason,
        })
    };
    if let Some(cur) = current {
        if cur == anchor {
            // A truncation resumed: the start is already there.
            return Ok(());
        }
        if anchor.seq <= cur.seq {
            return refuse(format!(
                "the log already starts after sequence {}: its start cannot move back to {}",
                cur.seq, anchor.seq
            ));
        }
    }
    if anchor.seq == 0 {
        return refuse("a checkpoint of the empty log cannot start a truncated log".into());
    }
    match head {
        Some(h) if h >= anchor.seq => {}
        _ => {
            return refuse(format!(
                "the log's head ({}) is before the checkpoint's sequence {}",
                head.unwrap_or(0),
                anchor.seq
            ))
        }
    }
    match event {
        Some(ev) if ev.hash == anchor.head_hash => Ok(()),
        Some(ev) => refuse(format!(
            "the stored event {} has hash {}, not the checkpoint's {}: the store does not hold \
             the log the checkpoint signed",
            anchor.seq, ev.hash, anchor.head_hash
        )),
        None => refuse(format!(
            "the stored log has no event {}: it cannot be checked against the checkpoint",
            anchor.seq
        )),
    }
}

/// Readiness and durability control: the part of a store its host (server, tools) drives.
///
/// Every write of the other store traits is durable when it returns, except inside a
/// deferral begun on the writing thread ([`deferred`]): there it is applied (visible to
/// readers, with its atomicity) on return and durable when the outermost deferral ends.
pub trait Durability: Send + Sync + std::fmt::Debug {
    /// Check the store answers reads (the status listener's readiness: OCSP and CRLs are
    /// served from reads, so a read-only store is enough).
    fn health(&self) -> Result<()>;
    /// Check the store can write now (the API listener's readiness): a small write, made
    /// durable, that fails while writes fail (a full disk, a read-only database, a lost
    /// connection). Bounded: a probe gives up after a few seconds. The default, for a store
    /// without a cheaper way, is [`Durability::health`].
    fn check_writable(&self) -> Result<()> {
        self.health()
    }
    /// Whether the store needs its process restarted to write again. The default (a store
    /// that recovers by itself once the fault is gone: a database client reconnects) is
    /// [`Recovery::NotNeeded`].
    fn recovery(&self) -> Recovery {
        Recovery::NotNeeded
    }
    /// Start deferring the flushes of writes made **on this thread** (nestable): until the
    /// matching [`Durability::end_deferred`], write methods return once the write is applied, before
    /// it is durable. Use [`deferred`], which pairs the two calls; the default (a store whose
    /// writes are always durable on return) does nothing.
    fn begin_deferred(&self) {}
    /// End a deferral begun on this thread; when the outermost one ends, make every write made
    /// so far durable (one group-committed flush) before returning.
    fn end_deferred(&self) -> Result<()> {
        Ok(())
    }
    /// Make every write completed so far durable (shutdown: writes that were never
    /// acknowledged, such as OCSP responses stored without a flush). The default (a store whose
    /// writes are always durable on return) does nothing.
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// What it takes for a store to write again after a fault ([`Durability::recovery`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovery {
    /// Nothing: the store writes, or recovers by itself once the fault is gone.
    NotNeeded,
    /// The store refuses every write until it is opened again (sled keeps the first I/O
    /// error of its log, such as a full disk, for the life of the handle).
    Restart {
        /// The fault, for the log.
        cause: String,
        /// Whether the fault looks gone (a probe file of the store's size class could be
        /// written and synced next to the store): a restart now would recover.
        cause_gone: bool,
    },
}

impl crate::Error {
    /// A store error: [`crate::Error::StoreUnavailable`] when the backend's error means the
    /// store is unreachable or cannot write for now ([`is_unavailable`]), else
    /// [`crate::Error::Store`]. Here, not in `error.rs`, so that the error type does not
    /// depend on the store (no import cycle).
    pub(crate) fn store<E: std::error::Error + Send + Sync + 'static>(
        op: &'static str,
        e: E,
    ) -> Self {
        if is_unavailable(&e) {
            crate::Error::StoreUnavailable {
                op,
                source: Box::new(e),
            }
        } else {
            crate::Error::Store {
                op,
                source: Box::new(e),
            }
        }
    }
}

/// Whether a backend error (or one in its source chain) means the store is unavailable for
/// now rather than broken: I/O errors (a full disk, a lost connection), a pool with no
/// connection in time, and on PostgreSQL the SQLSTATEs of a server that is shutting down,
/// restarting, read-only, out of resources or that cancelled a statement on a timeout.
/// [`crate::Error::StoreUnavailable`] carries them.
pub fn is_unavailable(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<std::io::Error>() || sled_store::is_unavailable(err) {
            return true;
        }
        #[cfg(feature = "postgres")]
        if pg_store::is_unavailable(err) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Everything a CA store holds: certificates ([`CertStore`]), CRL numbers ([`CrlNumbers`]),
/// enrollment tokens ([`TokenStore`]), OCSP responses ([`OcspResponseStore`]), the audit log
/// ([`AuditLog`]), durability control ([`Durability`]), pruning ([`Retention`]), and what
/// several nodes share: the latest CRLs ([`CrlArchive`]), leases ([`Leases`]) and the change
/// feed ([`ChangeFeed`]).
/// Implemented for every type that
/// implements them all; components that need only part take the narrower trait, and the
/// `into_*` methods hand them a narrowed handle on the same store.
pub trait Store:
    CertStore
    + CertCounts
    + CrlNumbers
    + TokenStore
    + OcspResponseStore
    + AuditLog
    + Durability
    + Retention
    + CrlArchive
    + Leases
    + ChangeFeed
    + CrlShards
{
    /// This store as a [`CertStore`].
    fn into_certs(self: Arc<Self>) -> Arc<dyn CertStore>;
    /// This store as a [`CrlNumbers`].
    fn into_crl_numbers(self: Arc<Self>) -> Arc<dyn CrlNumbers>;
    /// This store as a [`TokenStore`].
    fn into_tokens(self: Arc<Self>) -> Arc<dyn TokenStore>;
    /// This store as an [`OcspResponseStore`].
    fn into_ocsp_responses(self: Arc<Self>) -> Arc<dyn OcspResponseStore>;
    /// This store as an [`AuditLog`].
    fn into_audit_log(self: Arc<Self>) -> Arc<dyn AuditLog>;
    /// This store as a [`Durability`].
    fn into_durability(self: Arc<Self>) -> Arc<dyn Durability>;
    /// This store as a [`Retention`].
    fn into_retention(self: Arc<Self>) -> Arc<dyn Retention>;
    /// This store as a [`CrlArchive`].
    fn into_crl_archive(self: Arc<Self>) -> Arc<dyn CrlArchive>;
    /// This store as a [`Leases`].
    fn into_leases(self: Arc<Self>) -> Arc<dyn Leases>;
    /// This store as a [`ChangeFeed`].
    fn into_change_feed(self: Arc<Self>) -> Arc<dyn ChangeFeed>;
    /// This store as a [`CertCounts`].
    fn into_cert_counts(self: Arc<Self>) -> Arc<dyn CertCounts>;
}

impl<T> Store for T
where
    T: CertStore
        + CertCounts
        + CrlNumbers
        + TokenStore
        + OcspResponseStore
        + AuditLog
        + Durability
        + Retention
        + CrlArchive
        + Leases
        + ChangeFeed
        + CrlShards
        + 'static,
{
    fn into_certs(self: Arc<Self>) -> Arc<dyn CertStore> {
        self
    }
    fn into_crl_numbers(self: Arc<Self>) -> Arc<dyn CrlNumbers> {
        self
    }
    fn into_tokens(self: Arc<Self>) -> Arc<dyn TokenStore> {
        self
    }
    fn into_ocsp_responses(self: Arc<Self>) -> Arc<dyn OcspResponseStore> {
        self
    }
    fn into_audit_log(self: Arc<Self>) -> Arc<dyn AuditLog> {
        self
    }
    fn into_durability(self: Arc<Self>) -> Arc<dyn Durability> {
        self
    }
    fn into_retention(self: Arc<Self>) -> Arc<dyn Retention> {
        self
    }
    fn into_crl_archive(self: Arc<Self>) -> Arc<dyn CrlArchive> {
        self
    }
    fn into_leases(self: Arc<Self>) -> Arc<dyn Leases> {
        self
    }
    fn into_change_feed(self: Arc<Self>) -> Arc<dyn ChangeFeed> {
        self
    }
    fn into_cert_counts(self: Arc<Self>) -> Arc<dyn CertCounts> {
        self
    }
}

/// Run `f` with the flushes of the writes it makes on this thread deferred to **one**
/// group-committed flush when it returns (DESIGN "Performance shape": batched store flushes).
///
/// The result is returned only after that flush, so a caller that acknowledges on return still
/// acknowledges only durable writes (DESIGN invariant 2); nothing inside `f` may acknowledge
/// anything. The flush happens whether `f` succeeded or failed, so a failed unit of work leaves
/// its writes durable exactly as if each write had flushed. A flush failure replaces `f`'s
/// success with the store error. Writes made on other threads are not deferred.
///
/// ```
/// # fn f(store: &dyn ca_core::store::Store, tok: &ca_core::store::TokenRecord) -> ca_core::Result<()> {
/// use ca_core::audit::NewAuditEvent;
/// ca_core::store::deferred(store, || {
///     store.insert_token(tok)?;
///     store.append_audit(NewAuditEvent::ok("admin", "token.create", &tok.id))?;
///     Ok::<_, ca_core::Error>(())
/// })?; // both durable here, after one flush
/// # Ok(()) }
/// ```
pub fn deferred<T, E: From<crate::Error>, S: Durability + ?Sized>(
    store: &S,
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    /// Ends the deferral even if `f` panics (the flush error is then moot).
    struct End<'a, S: Durability + ?Sized>(Option<&'a S>);
    impl<S: Durability + ?Sized> Drop for End<'_, S> {
        fn drop(&mut self) {
            if let Some(s) = self.0.take() {
                let _ = s.end_deferred();
            }
        }
    }
    store.begin_deferred();
    let mut end = End(Some(store));
    let r = f();
    end.0 = None;
    let flushed = store.end_deferred();
    let v = r?;
    flushed?;
    Ok(v)
}

/// Serde helper: bytes as lowercase hex.
pub mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    /// Write the bytes as a lowercase hex string.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    /// Read bytes from a hex string (either case); anything else is an error.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// Serde helper: bytes as standard base64.
pub mod b64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};
    /// Write the bytes as a standard (padded) base64 string.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    /// Read bytes from a standard (padded) base64 string; anything else is an error.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::{CertCursor, CertOrder, IdentityBinding, TokenRecord};

    #[test]
    fn a_cursor_round_trips_and_bad_bytes_are_refused() {
        for c in [
            CertCursor {
                order: CertOrder::Serial,
                key: 0,
                serial: vec![0x7f; 20],
            },
            CertCursor {
                order: CertOrder::Expiry,
                key: -5,
                serial: vec![1],
            },
            CertCursor {
                order: CertOrder::Generation,
                key: 3,
                serial: vec![0, 0x80],
            },
        ] {
            assert_eq!(CertCursor::from_bytes(&c.to_bytes()).unwrap(), c);
        }
        let good = CertCursor {
            order: CertOrder::Expiry,
            key: 1_700_000_000,
            serial: vec![9; 16],
        }
        .to_bytes();
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            b
        };
        let table: &[(&str, Vec<u8>, &str)] = &[
            ("empty", vec![], "empty cursor"),
            (
                "unknown version",
                with(&|b| b[0] = 2),
                "unknown cursor version",
            ),
            ("no order", vec![1], "truncated cursor"),
            ("unknown order", with(&|b| b[1] = 0), "unknown cursor order"),
            ("key cut", with(&|b| b.truncate(6)), "truncated cursor"),
            ("no serial", with(&|b| b.truncate(10)), "not 1 to 20 octets"),
            (
                "serial of 21 octets",
                with(&|b| b.extend([1; 5])),
                "not 1 to 20 octets",
            ),
            (
                "serial order with a key",
                CertCursor {
                    order: CertOrder::Serial,
                    key: 0,
                    serial: vec![1],
                }
                .to_bytes()
                .into_iter()
                .enumerate()
                .map(|(i, b)| if i == 9 { 1 } else { b })
                .collect(),
                "serial-order cursor with a sort key",
            ),
        ];
        for (what, bytes, why) in table {
            match CertCursor::from_bytes(bytes) {
                Err(crate::Error::BadCursor(m)) => assert!(m.contains(why), "{what}: {m}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }
    use chrono::{Duration, TimeZone, Utc};

    #[test]
    fn a_token_is_usable_once_and_only_before_its_expiry() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let tok = TokenRecord {
            id: "t1".into(),
            hash: "00".into(),
            identity: IdentityBinding::default(),
            profile: "server".into(),
            created_at: t0,
            expires_at: t0 + Duration::hours(1),
            created_by: "admin".into(),
            used_at: None,
        };
        assert!(tok.check_usable(t0).is_ok());
        let rejected = |r: crate::Result<()>| match r {
            Err(crate::Error::TokenRejected(why)) => why,
            other => panic!("expected TokenRejected, got {other:?}"),
        };
        assert_eq!(
            rejected(tok.check_usable(t0 + Duration::hours(1))),
            "token expired"
        );
        let used = TokenRecord {
            used_at: Some(t0),
            ..tok
        };
        assert_eq!(rejected(used.check_usable(t0)), "token already used");
    }
}
