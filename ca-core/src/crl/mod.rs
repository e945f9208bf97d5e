//! Certificate revocation lists (RFC 5280 5), signed by a CA key in the HSM.
//!
//! [`issue_crl`] is the one CRL signing function, pure like Boulder's `IssueCRL`: a
//! [`CrlRequest`] (number, thisUpdate/nextUpdate, entries, optional issuing distribution
//! point) and the issuer certificate and key in, a signed and self-checked CRL out. It makes
//! version 2 CRLs with the issuer's name, one entry per revoked certificate (serial,
//! revocation date, reason code except for `unspecified`, RFC 5280 5.3.1) and the authority
//! key identifier (the issuer's subject key identifier, RFC 5280 5.2.1). The signature is
//! verified before the CRL is returned (fail closed). The root CRL ceremony calls it with the
//! entries of its configuration and a number from the transcript history.
//!
//! [`build_crl`] feeds it from the store: the entries from [`CertStore::for_each_revoked`](crate::store::CertStore::for_each_revoked) and a
//! number from [`CrlNumbers::next_crl_number`](crate::store::CrlNumbers::next_crl_number), so numbers only ever increase, across
//! regenerations and restarts (RFC 5280 5.2.3).
//!
//! [`CrlPublisher`] keeps the current CRL in memory for the status listener and rebuilds it
//! when it is due ([`CrlPublisher::regenerate_if_due`]) and after each revocation
//! ([`CrlPublisher::regenerate`]). Several nodes on one store build in turn, not together:
//! the node holding the lease [`CRL_LEASE`] builds, every CRL built is kept in the store's
//! [`CrlArchive`](crate::store::CrlArchive), and the other nodes serve the archived one
//! ([`CrlPublisher::adopt_archived`], told by the change feed). A holder that dies loses the
//! lease when it expires, and the next node to take it builds at once.
//!
//! With [`CrlPublisher::with_shards`] it also publishes sharded CRLs (`shards.rs`, README
//! "CRLs"): each certificate names the shard of its notAfter window in its CRL distribution
//! point ([`ShardScheme`]), each shard is a partitioned CRL whose issuing distribution point is
//! that URL, with a CRL number sequence, an archive scope and a lease of its own. A revocation
//! marks its shard dirty ([`CrlPublisher::note_revoked_serial`]); the maintenance pass
//! rebuilds the dirty shards from the store's shard index
//! ([`CrlShards`](crate::store::CrlShards)) and the full CRL at most once per
//! `full_interval`.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn f(store: Arc<dyn ca_core::store::Store>, signer: Arc<dyn ca_core::signer::Signer>, issuer_der: Vec<u8>) -> ca_core::Result<()> {
//! use ca_core::crl::{CrlConfig, CrlPublisher};
//! let crls = CrlPublisher::new(store, signer, issuer_der, Arc::new(ca_core::clock::SystemClock), CrlConfig::default())?;
//! let crl = crls.regenerate()?;
//! println!("CRL #{} with {} entries", crl.number, crl.entries);
//! # Ok(()) }
//! ```

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::revocation::RevokedEntry;
use crate::signer::{verify, Signer};
use crate::store::{Store, StoredCrl, FULL_CRL};
use chrono::{DateTime, Duration, Utc};
use der::{Decode, Encode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use x509_cert::ext::Extension;
use x509_cert::Certificate;

mod delta;
mod encode;
mod shards;

use encode::EntryList;

pub use crate::x509::{crl_shard_of, CrlShard};
pub use delta::{DELTA_CRL, DELTA_PATH};
pub use shards::{ShardPass, ShardScheme};

/// How the CRL publisher dates, rebuilds and labels the CRLs it signs.
#[derive(Clone, Debug)]
pub struct CrlConfig {
    /// nextUpdate - thisUpdate (default 24 hours).
    pub validity: Duration,
    /// Rebuild when less than this is left before nextUpdate (default 12 hours). Must be
    /// shorter than `validity`.
    pub refresh_before: Duration,
    /// The URL the CRL is published at, written as the issuing distribution point
    /// (RFC 5280 5.2.5) when set. It must then equal the CRL distribution point in the
    /// certificates, or verifiers reject the CRL for them. Default: none.
    pub distribution_point: Option<String>,
}

impl Default for CrlConfig {
    fn default() -> Self {
        CrlConfig {
            validity: Duration::hours(24),
            refresh_before: Duration::hours(12),
            distribution_point: None,
        }
    }
}

impl CrlConfig {
    /// Check the settings; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if self.validity <= Duration::zero() {
            return Err(Error::Config {
                path: "crl.validity".into(),
                reason: "must be positive".into(),
            });
        }
        if self.refresh_before <= Duration::zero() || self.refresh_before >= self.validity {
            return Err(Error::Config {
                path: "crl.refresh_before".into(),
                reason: "must be positive and shorter than crl.validity".into(),
            });
        }
        Ok(())
    }
}

/// A signed CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCrl {
    /// DER CertificateList.
    pub der: Vec<u8>,
    /// cRLNumber (RFC 5280 5.2.3) written into the CRL.
    pub number: u64,
    /// thisUpdate: when the CRL was signed (whole seconds).
    pub this_update: DateTime<Utc>,
    /// nextUpdate: by when the next CRL will be published (whole seconds).
    pub next_update: DateTime<Utc>,
    /// Number of revoked certificates listed.
    pub entries: usize,
}

impl AsRef<[u8]> for SignedCrl {
    fn as_ref(&self) -> &[u8] {
        &self.der
    }
}

/// The issuer's subjectKeyIdentifier, which the CRL's authorityKeyIdentifier must repeat
/// (RFC 5280 5.2.1, 4.2.1.1).
fn subject_key_id(issuer: &Certificate) -> Option<Vec<u8>> {
    let ext = issuer
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER)?;
    let ski =
        x509_cert::ext::pkix::SubjectKeyIdentifier::from_der(ext.extn_value.as_bytes()).ok()?;
    Some(ski.0.as_bytes().to_vec())
}

/// A lease holder name: unique per process start (pid and 64 random bits).
pub fn lease_holder_name() -> String {
    use rand::RngCore;
    let mut r = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut r);
    format!("{}-{}", std::process::id(), hex::encode(r))
}

/// What one CRL says, assembled by its caller (Boulder's `CRLRequest`): the CRL publisher
/// from the store, the root CRL ceremony from its configuration.
#[derive(Clone, Copy, Debug)]
pub struct CrlRequest<'a> {
    /// cRLNumber (RFC 5280 5.2.3); the caller keeps numbers increasing.
    pub number: u64,
    /// thisUpdate (truncated to whole seconds).
    pub this_update: DateTime<Utc>,
    /// nextUpdate (truncated to whole seconds); must be after thisUpdate.
    pub next_update: DateTime<Utc>,
    /// The revoked certificates, listed in this order.
    pub entries: &'a [RevokedEntry],
    /// The issuing distribution point URL (RFC 5280 5.2.5), if the CRL carries one.
    pub distribution_point: Option<&'a str>,
}

/// The issuer certificate, checked to belong to the signing key: the part of issuing a CRL
/// that can fail before anything is read or numbered.
struct CrlIssuer<'a> {
    spki_der: Vec<u8>,
    /// The issuer's subject Name (DER): the CRL's issuer.
    name_der: Vec<u8>,
    /// The issuer's subject key identifier (or, without one, the RFC 7093 identifier of its
    /// key): the CRL's authority key identifier.
    key_id: Vec<u8>,
    /// The signature AlgorithmIdentifier (DER).
    algorithm_der: Vec<u8>,
    signer: &'a dyn Signer,
}

impl<'a> CrlIssuer<'a> {
    fn new(cert_der: &'a [u8], signer: &'a dyn Signer) -> Result<Self> {
        let cert = Certificate::from_der(cert_der)
            .map_err(|e| Error::Issuer(format!("cannot parse issuer certificate: {e}")))?;
        if cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
            != signer.public_key_bits()
        {
            return Err(Error::Issuer(
                "the CRL signing key is not the issuer certificate's key".into(),
            ));
        }
        let spki_der = cert.tbs_certificate.subject_public_key_info.to_der()?;
        let key_id = match subject_key_id(&cert) {
            Some(ski) => ski,
            None => crate::x509::key_identifier(&spki_der)?,
        };
        Ok(CrlIssuer {
            name_der: cert.tbs_certificate.subject.to_der()?,
            algorithm_der: signer.algorithm().signature_algorithm_id().to_der()?,
            spki_der,
            key_id,
            signer,
        })
    }

    fn sign(&self, req: &CrlRequest<'_>) -> Result<SignedCrl> {
        self.sign_with_extensions(req, Vec::new())
    }

    /// [`CrlIssuer::sign`] with `extensions` after the authority key identifier, CRL number
    /// and issuing distribution point.
    fn sign_with_extensions(
        &self,
        req: &CrlRequest<'_>,
        extensions: Vec<Extension>,
    ) -> Result<SignedCrl> {
        let head = CrlHeadRequest {
            number: req.number,
            this_update: req.this_update,
            next_update: req.next_update,
            distribution_point: req.distribution_point,
        };
        self.sign_list(&head, &extensions, EntryList::of(req.entries)?)
    }

    /// Sign the CRL of `head`, `extensions` and the already encoded `entries`, and check the
    /// signature with the issuer certificate's key before returning it (fail closed).
    fn sign_list(
        &self,
        req: &CrlHeadRequest<'_>,
        extensions: &[Extension],
        entries: EntryList,
    ) -> Result<SignedCrl> {
        let (this_update, next_update) = update_times(req.this_update, req.next_update)?;
        let count = entries.len();
        let head = encode::CrlHead {
            req: CrlHeadRequest {
                this_update,
                next_update,
                ..*req
            },
            key_id: &self.key_id,
            issuer_name: &self.name_der,
            algorithm: &self.algorithm_der,
        };
        let der = encode::signed_crl(&head, extensions, entries, |tbs| {
            let sig = self.signer.sign(tbs)?;
            // Fail closed: never return a CRL whose signature the issuer key does not verify.
            verify(&self.spki_der, tbs, &sig)?;
            Ok(sig)
        })?;
        Ok(SignedCrl {
            der,
            number: req.number,
            this_update,
            next_update,
            entries: count,
        })
    }
}

/// A CRL's number, times and distribution point, without its entries (those come as an
/// [`EntryList`], encoded as they were read).
#[derive(Clone, Copy)]
struct CrlHeadRequest<'a> {
    number: u64,
    this_update: DateTime<Utc>,
    next_update: DateTime<Utc>,
    distribution_point: Option<&'a str>,
}

/// thisUpdate and nextUpdate in whole seconds, nextUpdate strictly later.
fn update_times(
    this_update: DateTime<Utc>,
    next_update: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let this_update = crate::clock::truncate(this_update);
    let next_update = crate::clock::truncate(next_update);
    if next_update <= this_update {
        return Err(Error::Config {
            path: "crl.next_update".into(),
            reason: "nextUpdate must be after thisUpdate".into(),
        });
    }
    Ok((this_update, next_update))
}

/// Sign the CRL `req` describes with `signer`, the key of the CA certificate
/// `issuer_cert_der`: the one CRL signing function (Boulder's `IssueCRL`), reading no store
/// and numbering nothing. Version 2, the issuer's name, the authority key identifier
/// repeating the issuer's subject key identifier (RFC 5280 5.2.1), a reason code per entry
/// except `unspecified` (RFC 5280 5.3.1). The signature is verified with the issuer
/// certificate's key before the CRL is returned.
pub fn issue_crl(
    issuer_cert_der: &[u8],
    signer: &dyn Signer,
    req: &CrlRequest<'_>,
) -> Result<SignedCrl> {
    CrlIssuer::new(issuer_cert_der, signer)?.sign(req)
}

/// Build and sign a CRL of every revocation in `store`, numbered with the store's next CRL
/// number, signed by `signer` (the key of `issuer_cert_der`), with the given validity
/// (whole seconds). Without an issuing distribution point; see [`build_crl_with`].
pub fn build_crl(
    store: &dyn Store,
    signer: &dyn Signer,
    issuer_cert_der: &[u8],
    this_update: DateTime<Utc>,
    next_update: DateTime<Utc>,
) -> Result<SignedCrl> {
    build_crl_with(
        store,
        signer,
        issuer_cert_der,
        this_update,
        next_update,
        None,
    )
}

/// [`build_crl`] with an optional issuing distribution point URL (RFC 5280 5.2.5): the
/// store's revocations and next CRL number fed to [`issue_crl`]. The issuer and the times are
/// checked first, so a CRL that cannot be signed consumes no CRL number.
pub fn build_crl_with(
    store: &dyn Store,
    signer: &dyn Signer,
    issuer_cert_der: &[u8],
    this_update: DateTime<Utc>,
    next_update: DateTime<Utc>,
    distribution_point: Option<&str>,
) -> Result<SignedCrl> {
    update_times(this_update, next_update)?;
    let issuer = CrlIssuer::new(issuer_cert_der, signer)?;
    // Each entry is encoded as it is read: the CRL costs its DER, not an object per entry.
    let mut entries = EntryList::default();
    store.for_each_revoked(&mut |e| entries.push(&e))?;
    let number = store.next_crl_number()?;
    let crl = issuer.sign_list(
        &CrlHeadRequest {
            number,
            this_update,
            next_update,
            distribution_point,
        },
        &[],
        entries,
    )?;
    tracing::info!(number, entries = crl.entries, "CRL signed");
    Ok(crl)
}

/// The lease ([`Leases`](crate::store::Leases)) of the node that builds the full CRL.
pub const CRL_LEASE: &str = "crl:full";

/// How long a CRL lease lasts unless renewed (each maintenance pass renews it).
pub const DEFAULT_CRL_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(180);

/// Keeps the current CRL and rebuilds it when due or asked. Thread-safe.
pub struct CrlPublisher {
    store: Arc<dyn Store>,
    signer: Arc<dyn Signer>,
    issuer_cert_der: Vec<u8>,
    clock: Arc<dyn Clock>,
    config: CrlConfig,
    current: RwLock<Option<Arc<SignedCrl>>>,
    building: Mutex<()>,
    /// The store changed since the current CRL was built (a revocation), or the last build
    /// failed: the next [`CrlPublisher::regenerate_if_due`] rebuilds whatever the time.
    stale: AtomicBool,
    /// This publisher's name as a lease holder (random, per process start).
    holder: String,
    lease_ttl: std::time::Duration,
    /// Whether this publisher held [`CRL_LEASE`] at its last attempt.
    holding: AtomicBool,
    /// The sharded CRLs, when [`CrlPublisher::with_shards`] turned them on.
    shards: Option<shards::Shards>,
}

impl std::fmt::Debug for CrlPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlPublisher")
            .field("config", &self.config)
            .field("current", &self.current())
            .finish()
    }
}

impl CrlPublisher {
    /// A publisher for the CA `issuer_cert_der` whose key `signer` holds. No CRL is built yet:
    /// call [`regenerate`](Self::regenerate) (or `regenerate_if_due`).
    pub fn new(
        store: Arc<dyn Store>,
        signer: Arc<dyn Signer>,
        issuer_cert_der: Vec<u8>,
        clock: Arc<dyn Clock>,
        config: CrlConfig,
    ) -> Result<Self> {
        config.validate()?;
        CrlIssuer::new(&issuer_cert_der, signer.as_ref())?;
        Ok(CrlPublisher {
            store,
            signer,
            issuer_cert_der,
            clock,
            config,
            current: RwLock::new(None),
            building: Mutex::new(()),
            stale: AtomicBool::new(false),
            holder: lease_holder_name(),
            lease_ttl: DEFAULT_CRL_LEASE_TTL,
            holding: AtomicBool::new(false),
            shards: None,
        })
    }

    /// Publish sharded CRLs too (README "CRLs"): certificates then name their shard's URL
    /// ([`ShardScheme::url`]); the full CRL drops its issuing distribution point (it lists
    /// every revocation, so it is a complete CRL for every certificate, whichever URL it
    /// names) and, after revocations, is rebuilt at most once per `full_interval` (the shards
    /// carry the revocation at once).
    pub fn with_shards(mut self, scheme: ShardScheme, full_interval: Duration) -> Self {
        self.config.distribution_point = None;
        self.shards = Some(shards::Shards::new(scheme, full_interval));
        self
    }

    /// The shard scheme, when shards are on.
    pub fn shard_scheme(&self) -> Option<&ShardScheme> {
        self.shards.as_ref().map(|s| &s.scheme)
    }

    /// Note a revocation (or an attempt whose outcome is unsure) of `serial`: the full CRL is
    /// stale and, with shards on, the shard the certificate names is dirty (its record is read
    /// once; a certificate the store does not know changes no CRL). Call it after a
    /// revocation, whether or not the rebuild it triggers succeeds.
    pub fn note_revoked_serial(&self, serial: &[u8]) {
        self.mark_stale();
        let Some(shards) = &self.shards else {
            return;
        };
        shards::lock(&shards.delta).note(serial);
        match self.store.get_cert(serial) {
            Ok(Some(rec)) => {
                if let Some(shard) = crl_shard_of(&rec.der) {
                    shards.mark_dirty(shard);
                }
            }
            Ok(None) => {}
            // Unsure which shard: every live one is rebuilt at the next pass.
            Err(e) => {
                tracing::warn!(error = %e, "reading a revoked certificate failed; every CRL shard is rebuilt");
                shards.mark_all_dirty();
            }
        }
    }

    /// Hold the CRL lease for `ttl` at each renewal (longer than the interval between
    /// maintenance passes, which renew it).
    pub fn with_lease_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// This publisher's name as a lease holder.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Whether this publisher held the CRL lease at its last attempt (it builds the CRL).
    pub fn is_builder(&self) -> bool {
        self.holding.load(Ordering::SeqCst)
    }

    fn set_current(&self, crl: Arc<SignedCrl>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(crl);
    }

    /// Serve the CRL kept in the store's archive if it is newer than the current one (another
    /// node built it, or this node before a restart); returns whether it was taken. The
    /// archived CRL is checked first: it must be this issuer's CRL, signed by its key.
    pub fn adopt_archived(&self) -> Result<bool> {
        let Some(stored) = self.store.latest_crl(FULL_CRL)? else {
            return Ok(false);
        };
        if self.current().is_some_and(|c| c.number >= stored.number) {
            return Ok(false);
        }
        // Number and times from the signed CRL, never from the columns stored beside it
        // (whoever can write the database could pair an old CRL with a high number).
        let checked = match crate::x509::check_crl(&self.issuer_cert_der, &stored.der) {
            Ok(c) if c.number == stored.number => c,
            Ok(c) => {
                tracing::error!(
                    stored = stored.number,
                    signed = c.number,
                    "the archived CRL's number is not the one it was stored under: not served"
                );
                return Ok(false);
            }
            Err(e) => {
                tracing::error!(number = stored.number, error = %e, "the archived CRL is not this issuer's or its signature does not verify: not served");
                return Ok(false);
            }
        };
        if self.current().is_some_and(|c| c.number >= checked.number) {
            return Ok(false);
        }
        // Another node's base: this node's deltas would name a base it does not serve.
        if let Some(shards) = &self.shards {
            shards::lock(&shards.delta).forget_base();
        }
        self.set_current(Arc::new(SignedCrl {
            der: stored.der,
            number: checked.number,
            this_update: checked.this_update,
            next_update: checked.next_update,
            entries: checked.entries,
        }));
        Ok(true)
    }

    /// At start: serve the archived CRL if there is one, then build a new one if this node
    /// takes the lease. Fails only if there is no CRL to serve at all and this node cannot
    /// build one (it holds the lease but the build failed); a node that does not hold the
    /// lease and finds nothing archived serves none until the builder's first CRL arrives.
    pub fn start(&self) -> Result<()> {
        if let Err(e) = self.adopt_archived() {
            tracing::warn!(error = %e, "reading the archived CRL failed");
        }
        // Shards first: certificates issued from now on name them. A failure leaves them to
        // the maintenance task (no shard CRL yet is due there).
        if self.shards.is_some() {
            if let Err(e) = self.regenerate_shards_if_due() {
                tracing::warn!(error = %e, "building the CRL shards at start failed; the maintenance task retries");
            }
        }
        match self.regenerate_if_due() {
            Ok(_) => {
                if let Err(e) = self.regenerate_delta_if_due() {
                    tracing::warn!(error = %e, "building the delta CRL at start failed; the maintenance task retries");
                }
                if self.current().is_none() {
                    tracing::warn!("no CRL yet: another node holds the CRL lease and has archived none; /crl answers 503 until it does");
                }
                Ok(())
            }
            Err(e) if self.current().is_some() => {
                tracing::error!(error = %e, "building a CRL at start failed; serving the archived one");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The current CRL, if one was built.
    pub fn current(&self) -> Option<Arc<SignedCrl>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Build a new CRL now (new number) and make it current. If it fails (the HSM is down),
    /// the CRL is marked stale and the next [`regenerate_if_due`](Self::regenerate_if_due)
    /// tries again.
    pub fn regenerate(&self) -> Result<Arc<SignedCrl>> {
        let _g = self.building.lock().unwrap_or_else(|p| p.into_inner());
        // Cleared before the store is read: a revocation during the build marks it again.
        self.stale.store(false, Ordering::SeqCst);
        let now = self.clock.now();
        let built = match &self.shards {
            None => build_crl_with(
                self.store.as_ref(),
                self.signer.as_ref(),
                &self.issuer_cert_der,
                now,
                now + self.config.validity,
                self.config.distribution_point.as_deref(),
            ),
            Some(shards) => self.build_base(shards, now),
        };
        let crl = match built {
            Ok(crl) => {
                if let Some(shards) = &self.shards {
                    shards.full_built(now);
                }
                Arc::new(crl)
            }
            Err(e) => {
                self.stale.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        let archived = self.store.put_crl(&StoredCrl {
            scope: FULL_CRL.into(),
            number: crl.number,
            der: crl.der.clone(),
            this_update: crl.this_update,
            next_update: crl.next_update,
        });
        match archived {
            Ok(true) => {}
            // A node that held the lease before this one archived a higher number meanwhile:
            // serve that one (numbers only increase, so it is newer).
            Ok(false) => {
                if let Some(shards) = &self.shards {
                    shards::lock(&shards.delta).forget_base();
                }
                self.set_current(crl.clone());
                let _ = self.adopt_archived();
                return Ok(self.current().unwrap_or(crl));
            }
            Err(e) => {
                tracing::error!(number = crl.number, error = %e, "archiving the CRL failed; serving it from memory, other nodes keep the previous one");
                self.stale.store(true, Ordering::SeqCst);
            }
        }
        self.set_current(crl.clone());
        Ok(crl)
    }

    /// Note that the current CRL no longer reflects the store (call it after a revocation,
    /// whether or not the rebuild it triggers succeeds).
    pub fn mark_stale(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }

    /// Whether the current CRL is known not to reflect the store (a revocation since, or a
    /// failed build).
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::SeqCst)
    }

    /// The maintenance step: take or renew the CRL lease; holding it, rebuild if there is no
    /// CRL yet, the current one is within `refresh_before` of its nextUpdate, it is stale (a
    /// revocation since, or the last build failed), or this node just took the lease over
    /// (the previous holder may have died before building after a revocation); not holding
    /// it, serve the archived CRL if it is newer. Returns the new CRL if one was built. A
    /// failed build gives the lease up, so that another node can try.
    pub fn regenerate_if_due(&self) -> Result<Option<Arc<SignedCrl>>> {
        if !self
            .store
            .try_lease(CRL_LEASE, &self.holder, self.lease_ttl)?
        {
            if self.holding.swap(false, Ordering::SeqCst) {
                tracing::info!("another node builds the CRL now");
            }
            // The builder rebuilds after revocations; this node serves what it archives.
            self.stale.store(false, Ordering::SeqCst);
            self.adopt_archived()?;
            return Ok(None);
        }
        let took_over = !self.holding.swap(true, Ordering::SeqCst);
        let now = self.clock.now();
        let due = match self.current() {
            Some(c) => {
                c.next_update - now <= self.config.refresh_before
                    || (self.is_stale() && self.full_rebuild_allowed(now))
                    || took_over
            }
            None => true,
        };
        if !due {
            return Ok(None);
        }
        match self.regenerate() {
            Ok(crl) => Ok(Some(crl)),
            Err(e) => {
                self.holding.store(false, Ordering::SeqCst);
                if let Err(le) = self.store.release_lease(CRL_LEASE, &self.holder) {
                    tracing::warn!(error = %le, "giving up the CRL lease failed; it expires by itself");
                }
                Err(e)
            }
        }
    }
}
