//! Sharded CRLs (README "CRLs"): partitioned CRLs (RFC 5280 5.2.5), one per notAfter window.
//!
//! **Which shard.** [`ShardScheme::shard_of`] puts a certificate in the window of width
//! `shard_width` that its notAfter falls in, `(end - width, end]`, and the shard's id is the
//! window's end in Unix seconds. The certificate carries `<crl url>/shard/<id>` in its CRL
//! distribution point; the store files its revocation under the shard that URL names
//! ([`crate::x509::crl_shard_of`]), so the shard is fixed at issuance: changing the width
//! later only changes the windows of new certificates, and shards of the old width keep being
//! published (from the archive's scopes) until their certificates have expired.
//!
//! **What a shard costs.** A shard lists the revocations of the certificates of one window, so
//! its size follows the issuance rate times the width, not the CA's history; once every
//! certificate of a window has expired and a CRL was issued after that (RFC 5280 3.3), the
//! shard is no longer rebuilt. A revocation marks its shard dirty; a pass rebuilds the dirty
//! shards only, each read through the store's shard index.
//!
//! **Several nodes.** Each shard has its own archive scope ([`CrlShard::scope`]), CRL number
//! sequence and lease ([`CrlShard::lease`]): one node builds a given shard's next CRL, the
//! others serve what it archives.

use super::{CrlHeadRequest, CrlIssuer, CrlPublisher, EntryList, SignedCrl};
use crate::error::{Error, Result};
use crate::store::StoredCrl;
use crate::x509::{CrlShard, SHARD_PATH};
use chrono::{DateTime, Duration, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

/// Shortest shard width accepted (a shorter one makes a CRL per minute of notAfter).
pub(super) const MIN_SHARD_WIDTH: Duration = Duration::minutes(10);

/// Most shards a scheme may have to publish ahead (`horizon / width`).
pub(super) const MAX_SHARDS_AHEAD: i64 = 10_000;

/// How certificates are assigned to CRL shards and where the shards are published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardScheme {
    crl_url: String,
    base_url: String,
    width: Duration,
    horizon: Duration,
}

impl ShardScheme {
    /// Shards of `width` (notAfter windows), published under `<crl_url>/shard/<id>`, for
    /// certificates valid for at most `horizon` from their issuance (the longest validity of
    /// any profile): the shards of windows ending up to `horizon` ahead are published before
    /// any certificate names them. Errors name the `[crl]` field.
    pub fn new(crl_url: &str, width: Duration, horizon: Duration) -> Result<Self> {
        if width < MIN_SHARD_WIDTH || width.num_seconds() % 60 != 0 {
            return Err(Error::Config {
                path: "crl.shard_width".into(),
                reason: format!(
                    "must be whole minutes and at least {} minutes",
                    MIN_SHARD_WIDTH.num_minutes()
                ),
            });
        }
        if horizon <= Duration::zero()
            || horizon.num_seconds() / width.num_seconds() > MAX_SHARDS_AHEAD
        {
            return Err(Error::Config {
                path: "crl.shard_width".into(),
                reason: format!(
                    "the longest certificate validity ({} h) would need more than {MAX_SHARDS_AHEAD} shards of this width: choose a wider one",
                    horizon.num_hours()
                ),
            });
        }
        let base = crl_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config {
                path: "urls.crl".into(),
                reason: "CRL shards need an http(s) CRL URL to publish them under".into(),
            });
        }
        Ok(ShardScheme {
            crl_url: base.to_string(),
            base_url: format!("{base}/{SHARD_PATH}"),
            width,
            horizon,
        })
    }

    /// The full CRL's URL, under which the shards (and the delta CRL) are published.
    pub fn crl_url(&self) -> &str {
        &self.crl_url
    }

    /// The window width.
    pub fn width(&self) -> Duration {
        self.width
    }

    /// The shard of a certificate with this notAfter: the end of its window.
    pub fn shard_of(&self, not_after: DateTime<Utc>) -> CrlShard {
        let w = self.width.num_seconds();
        let t = not_after.timestamp().max(0);
        // The window (end - w, end]: its end is t rounded up to a multiple of w.
        let end = t.div_euclid(w) * w + if t.rem_euclid(w) == 0 { 0 } else { w };
        CrlShard(end as u64)
    }

    /// The URL of a shard: the CRL distribution point of its certificates and the issuing
    /// distribution point of its CRLs (RFC 5280 5.2.5: they must match, 6.3.3 (b)(2)(i)).
    pub fn url(&self, shard: CrlShard) -> String {
        format!("{}/{}", self.base_url, shard.0)
    }

    /// The shards of this scheme a certificate issued from `now` on may name.
    fn ahead(&self, now: DateTime<Utc>) -> impl Iterator<Item = CrlShard> {
        let w = self.width.num_seconds() as u64;
        let first = self.shard_of(now).0;
        let last = self.shard_of(now + self.horizon).0 + w;
        (first..=last).step_by(w as usize).map(CrlShard)
    }
}

/// What one shard pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardPass {
    /// Shards whose CRL this node built and signed.
    pub built: Vec<CrlShard>,
    /// Shards another node holds the lease of (their archived CRL is served).
    pub left_to_others: usize,
    /// Shards whose build failed (they stay dirty).
    pub failed: usize,
}

/// The publisher's sharded state.
pub(super) struct Shards {
    pub(super) scheme: ShardScheme,
    full_interval: Duration,
    current: RwLock<BTreeMap<CrlShard, Arc<SignedCrl>>>,
    dirty: Mutex<BTreeSet<CrlShard>>,
    /// Every live shard is to be rebuilt (a missed change, an unreadable record).
    all_dirty: std::sync::atomic::AtomicBool,
    /// The shards whose lease this node held at its last attempt.
    held: Mutex<BTreeSet<CrlShard>>,
    last_full: Mutex<Option<DateTime<Utc>>>,
    /// Shards found in the archive (read once, then kept up to date by what this node builds
    /// and adopts; read again after [`Shards::mark_all_dirty`]), so a pass does not list the
    /// archive, whose scopes grow with time.
    archived: Mutex<Option<BTreeSet<CrlShard>>>,
    /// Delta CRLs of the full CRL (`delta.rs`).
    pub(super) delta: Mutex<super::delta::DeltaState>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shards {
    pub(super) fn new(scheme: ShardScheme, full_interval: Duration) -> Self {
        Shards {
            scheme,
            full_interval,
            current: RwLock::new(BTreeMap::new()),
            dirty: Mutex::new(BTreeSet::new()),
            all_dirty: std::sync::atomic::AtomicBool::new(false),
            held: Mutex::new(BTreeSet::new()),
            last_full: Mutex::new(None),
            archived: Mutex::new(None),
            delta: Mutex::new(Default::default()),
        }
    }

    pub(super) fn mark_dirty(&self, shard: CrlShard) {
        lock(&self.dirty).insert(shard);
    }

    pub(super) fn mark_all_dirty(&self) {
        self.all_dirty.store(true, Ordering::SeqCst);
        *lock(&self.archived) = None;
        lock(&self.delta).forget_base();
    }

    pub(super) fn full_built(&self, at: DateTime<Utc>) {
        *lock(&self.last_full) = Some(at);
    }

    fn get(&self, shard: CrlShard) -> Option<Arc<SignedCrl>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&shard)
            .cloned()
    }

    fn set(&self, shard: CrlShard, crl: Arc<SignedCrl>) {
        if let Some(known) = lock(&self.archived).as_mut() {
            known.insert(shard);
        }
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if cur.get(&shard).is_none_or(|c| c.number < crl.number) {
            cur.insert(shard, crl);
        }
    }
}

impl CrlPublisher {
    /// Whether the full CRL may be rebuilt for staleness at `now`: always without shards; with
    /// shards, once `full_interval` has passed since the last full build.
    pub(super) fn full_rebuild_allowed(&self, now: DateTime<Utc>) -> bool {
        match &self.shards {
            None => true,
            Some(s) => lock(&s.last_full).is_none_or(|t| now - t >= s.full_interval),
        }
    }

    /// Rebuild every live shard at the next pass (changes may have been missed).
    pub fn mark_all_shards_dirty(&self) {
        if let Some(s) = &self.shards {
            s.mark_all_dirty();
        }
    }

    /// The current CRL of `shard`, if this node built or adopted one.
    pub fn shard(&self, shard: CrlShard) -> Option<Arc<SignedCrl>> {
        self.shards.as_ref()?.get(shard)
    }

    /// The shards this node serves a CRL for.
    pub fn served_shards(&self) -> Vec<CrlShard> {
        match &self.shards {
            Some(s) => s
                .current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .copied()
                .collect(),
            None => Vec::new(),
        }
    }

    /// Serve the CRL the archive keeps for `shard` if it is newer than the served one (another
    /// node built it); checked like [`CrlPublisher::adopt_archived`]'s, and its issuing
    /// distribution point must be this shard's URL. Returns whether it was taken.
    pub fn adopt_archived_shard(&self, shard: CrlShard) -> Result<bool> {
        let Some(shards) = &self.shards else {
            return Ok(false);
        };
        let Some(stored) = self.store.latest_crl(&shard.scope())? else {
            return Ok(false);
        };
        if shards.get(shard).is_some_and(|c| c.number >= stored.number) {
            return Ok(false);
        }
        let checked = match crate::x509::check_crl(&self.issuer_cert_der, &stored.der) {
            Ok(c) if c.number == stored.number => c,
            Ok(_) | Err(_) => {
                tracing::error!(%shard, number = stored.number, "the archived shard CRL is not this issuer's, does not verify or is not numbered as stored: not served");
                return Ok(false);
            }
        };
        let idp = crate::x509::crl_idp_uri(&stored.der);
        if idp.as_deref() != Some(shards.scheme.url(shard).as_str()) {
            tracing::error!(%shard, "the archived shard CRL names another distribution point: not served");
            return Ok(false);
        }
        shards.set(
            shard,
            Arc::new(SignedCrl {
                der: stored.der,
                number: checked.number,
                this_update: checked.this_update,
                next_update: checked.next_update,
                entries: checked.entries,
            }),
        );
        Ok(true)
    }

    /// The shards to keep published at `now`: those of this scheme that certificates issued
    /// from now on may name, and every archived shard (of any width) whose certificates may
    /// not all have expired before a CRL was issued after their expiry.
    fn live_shards(&self, shards: &Shards, now: DateTime<Utc>) -> Result<BTreeSet<CrlShard>> {
        let mut live: BTreeSet<CrlShard> = shards.scheme.ahead(now).collect();
        // A window's certificates expire by its end; its CRLs go on until one was issued a
        // whole CRL validity after that end.
        let live_end = |s: CrlShard| {
            DateTime::from_timestamp(s.0 as i64, 0)
                .is_some_and(|end| end + self.config.validity > now)
        };
        let mut archived = lock(&shards.archived);
        if archived.is_none() {
            let mut found = BTreeSet::new();
            for scope in self.store.archived_crl_scopes("shard:")? {
                if let Some(s) = CrlShard::from_scope(&scope) {
                    found.insert(s);
                }
            }
            *archived = Some(found);
        }
        if let Some(known) = archived.as_mut() {
            known.retain(|s| live_end(*s));
            live.extend(known.iter().copied());
        }
        drop(archived);
        live.extend(lock(&shards.dirty).iter().copied().filter(|s| live_end(*s)));
        Ok(live)
    }

    /// The maintenance step for shards: for each live shard that is dirty (a revocation
    /// since its CRL), has no CRL yet, is within `refresh_before` of its nextUpdate, or whose
    /// lease this node just took, build its CRL if this node holds (or takes) its lease, else
    /// serve the archived one. Shards no longer live are dropped from memory.
    pub fn regenerate_shards_if_due(&self) -> Result<ShardPass> {
        let Some(shards) = &self.shards else {
            return Ok(ShardPass::default());
        };
        let now = self.clock.now();
        let all = shards.all_dirty.swap(false, Ordering::SeqCst);
        let live = match self.live_shards(shards, now) {
            Ok(l) => l,
            Err(e) => {
                if all {
                    shards.mark_all_dirty();
                }
                return Err(e);
            }
        };
        {
            let mut cur = shards.current.write().unwrap_or_else(|p| p.into_inner());
            cur.retain(|s, _| live.contains(s));
        }
        let mut pass = ShardPass::default();
        let mut first_error = None;
        for shard in live {
            let dirty = all || lock(&shards.dirty).contains(&shard);
            if shards.get(shard).is_none() {
                // After a restart, or built by another node: what the archive has first.
                if let Err(e) = self.adopt_archived_shard(shard) {
                    tracing::warn!(%shard, error = %e, "reading an archived CRL shard failed");
                }
            }
            let current = shards.get(shard);
            let stale_time = current
                .as_ref()
                .is_none_or(|c| c.next_update - now <= self.config.refresh_before);
            if !dirty && !stale_time {
                continue;
            }
            let lease = shard.lease();
            let held = match self.store.try_lease(&lease, &self.holder, self.lease_ttl) {
                Ok(h) => h,
                Err(e) => {
                    pass.failed += 1;
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            if !held {
                lock(&shards.held).remove(&shard);
                // The holder rebuilds it (it follows revocations too); this node serves what
                // it archives. A dirty shard stays dirty here: if the holder died before
                // building, this node builds once its lease has lapsed.
                let _ = self.adopt_archived_shard(shard);
                pass.left_to_others += 1;
                continue;
            }
            let took_over = lock(&shards.held).insert(shard);
            if !(dirty || stale_time || took_over) {
                continue;
            }
            // Cleared before the store is read: a revocation during the build marks it again.
            lock(&shards.dirty).remove(&shard);
            match self.build_shard(shards, shard, now) {
                Ok(crl) => {
                    shards.set(shard, crl);
                    pass.built.push(shard);
                }
                Err(e) => {
                    tracing::error!(%shard, error = %e, "building a CRL shard failed; it stays dirty");
                    shards.mark_dirty(shard);
                    lock(&shards.held).remove(&shard);
                    if let Err(le) = self.store.release_lease(&lease, &self.holder) {
                        tracing::warn!(error = %le, "giving up a CRL shard lease failed; it expires by itself");
                    }
                    pass.failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if !pass.built.is_empty() {
            tracing::info!(built = pass.built.len(), "CRL shards signed");
        }
        match first_error {
            Some(e) if pass.built.is_empty() => Err(e),
            _ => Ok(pass),
        }
    }

    /// Build and sign the full CRL with shards on: no issuing distribution point, a Freshest
    /// CRL extension naming the delta CRL, and the base of the deltas that follow.
    pub(super) fn build_base(&self, shards: &Shards, now: DateTime<Utc>) -> Result<SignedCrl> {
        let next_update = now + self.config.validity;
        super::update_times(now, next_update)?;
        let issuer = CrlIssuer::new(&self.issuer_cert_der, self.signer.as_ref())?;
        let extensions = self.full_crl_extensions()?;
        // Taken before the store is read: these revocations are in the base.
        let snapshot = lock(&shards.delta).snapshot();
        let mut entries = EntryList::default();
        self.store.for_each_revoked(&mut |e| entries.push(&e))?;
        let number = self.store.next_crl_number()?;
        let crl = issuer.sign_list(
            &CrlHeadRequest {
                number,
                this_update: now,
                next_update,
                distribution_point: None,
            },
            &extensions,
            entries,
        )?;
        lock(&shards.delta).based(crl.number, crl.this_update, &snapshot);
        tracing::info!(number, entries = crl.entries, "CRL signed");
        Ok(crl)
    }

    /// Build, sign and archive the next CRL of `shard`: its entries through the store's shard
    /// index, its number from its own sequence, its issuing distribution point its URL.
    fn build_shard(
        &self,
        shards: &Shards,
        shard: CrlShard,
        now: DateTime<Utc>,
    ) -> Result<Arc<SignedCrl>> {
        let next_update = now + self.config.validity;
        super::update_times(now, next_update)?;
        let issuer = CrlIssuer::new(&self.issuer_cert_der, self.signer.as_ref())?;
        let mut entries = EntryList::default();
        self.store
            .for_each_revoked_in_shard(shard, &mut |e| entries.push(&e))?;
        let scope = shard.scope();
        let number = self.store.next_crl_number_in(&scope)?;
        let url = shards.scheme.url(shard);
        let crl = Arc::new(issuer.sign_list(
            &CrlHeadRequest {
                number,
                this_update: now,
                next_update,
                distribution_point: Some(&url),
            },
            &[],
            entries,
        )?);
        let kept = self.store.put_crl(&StoredCrl {
            scope,
            number: crl.number,
            der: crl.der.clone(),
            this_update: crl.this_update,
            next_update: crl.next_update,
        });
        match kept {
            Ok(true) => {}
            Ok(false) => {
                let _ = self.adopt_archived_shard(shard);
            }
            Err(e) => {
                tracing::error!(%shard, number = crl.number, error = %e, "archiving a CRL shard failed; serving it from memory");
                shards.mark_dirty(shard);
            }
        }
        Ok(crl)
    }
}
