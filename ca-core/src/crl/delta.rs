//! Delta CRLs for the full CRL (RFC 5280 5.2.4), with CRL shards on (README "CRLs").
//!
//! The full CRL is the base: it carries a Freshest CRL extension (RFC 5280 5.2.6) naming
//! `<crl url>/delta`, and each delta CRL a critical delta CRL indicator naming the base's CRL
//! number, the base's scope (no issuing distribution point, as the base has none) and a number
//! of the same sequence as the full CRL's. A delta lists every certificate revoked (or changed
//! to keyCompromise) since its base was built, read by serial, so its cost follows the
//! revocations since the base, not the CA's history.
//!
//! Only a publisher that built the base itself knows what was revoked since: a node that did
//! not (another node builds the full CRL, or this one restarted or missed changes) publishes no
//! delta until it builds a base.
//!

use super::{CrlIssuer, CrlPublisher, CrlRequest, SignedCrl};
use crate::error::Result;
use crate::store::StoredCrl;
use chrono::{DateTime, Utc};
use der::asn1::{Ia5String, OctetString, Uint};
use der::Encode;
use std::collections::BTreeSet;
use std::sync::Arc;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::CrlDistributionPoints;
use x509_cert::ext::Extension;

/// The archive scope of the latest delta CRL.
pub const DELTA_CRL: &str = "delta";

/// The path segment of the delta CRL under the full CRL's URL.
pub const DELTA_PATH: &str = "delta";

/// RFC 5280 5.2.4 delta CRL indicator: critical, BaseCRLNumber.
fn delta_indicator(base: u64) -> Result<Extension> {
    Ok(Extension {
        extn_id: const_oid::db::rfc5280::ID_CE_DELTA_CRL_INDICATOR,
        critical: true,
        extn_value: OctetString::new(Uint::new(&base.to_be_bytes())?.to_der()?)?,
    })
}

/// RFC 5280 5.2.6 Freshest CRL: non-critical, CRLDistributionPoints syntax.
fn freshest_crl(url: &str) -> Result<Extension> {
    let dp = CrlDistributionPoints(vec![DistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(vec![
            GeneralName::UniformResourceIdentifier(Ia5String::new(url)?),
        ])),
        reasons: None,
        crl_issuer: None,
    }]);
    Ok(Extension {
        extn_id: const_oid::db::rfc5280::ID_CE_FRESHEST_CRL,
        critical: false,
        extn_value: OctetString::new(dp.to_der()?)?,
    })
}

/// What the publisher knows of revocations since the base it built.
#[derive(Default)]
pub(super) struct DeltaState {
    /// The base: the number and thisUpdate of the full CRL this node built last.
    base: Option<(u64, DateTime<Utc>)>,
    /// Serials revoked (or changed) since the base was read from the store.
    since_base: BTreeSet<Vec<u8>>,
    /// Something was revoked since the current delta.
    dirty: bool,
    current: Option<Arc<SignedCrl>>,
}

impl DeltaState {
    pub(super) fn note(&mut self, serial: &[u8]) {
        self.since_base.insert(serial.to_vec());
        self.dirty = true;
    }

    /// Forget the base (changes were missed): no delta until the next base.
    pub(super) fn forget_base(&mut self) {
        self.base = None;
        self.current = None;
    }

    /// The serials a base about to be read from the store will contain.
    pub(super) fn snapshot(&self) -> BTreeSet<Vec<u8>> {
        self.since_base.clone()
    }

    /// A base was built (its store read started after `snapshot` was taken).
    pub(super) fn based(
        &mut self,
        number: u64,
        this_update: DateTime<Utc>,
        snapshot: &BTreeSet<Vec<u8>>,
    ) {
        self.base = Some((number, this_update));
        self.since_base.retain(|s| !snapshot.contains(s));
        self.dirty = true;
        self.current = None;
    }
}

impl CrlPublisher {
    /// The current delta CRL, if this node built or adopted one.
    pub fn delta(&self) -> Option<Arc<SignedCrl>> {
        let shards = self.shards.as_ref()?;
        super::shards::lock(&shards.delta).current.clone()
    }

    /// The URL of the delta CRL, named by the full CRL's Freshest CRL extension.
    pub fn delta_url(&self) -> Option<String> {
        self.shards
            .as_ref()
            .map(|s| format!("{}/{DELTA_PATH}", s.scheme.crl_url()))
    }

    /// The Freshest CRL extension of the full CRL, with shards on.
    pub(super) fn full_crl_extensions(&self) -> Result<Vec<Extension>> {
        match self.delta_url() {
            Some(url) => Ok(vec![freshest_crl(&url)?]),
            None => Ok(Vec::new()),
        }
    }

    /// Build and sign a delta CRL of what was revoked since the base, if this node built the
    /// base and something changed since the current delta. Returns it if one was built.
    pub fn regenerate_delta_if_due(&self) -> Result<Option<Arc<SignedCrl>>> {
        let Some(shards) = &self.shards else {
            return Ok(None);
        };
        let (base, serials) = {
            let d = super::shards::lock(&shards.delta);
            match d.base {
                Some(base) if d.dirty || d.current.is_none() => (base, d.since_base.clone()),
                _ => return Ok(None),
            }
        };
        super::shards::lock(&shards.delta).dirty = false;
        let built = self.build_delta(base.0, &serials);
        let crl = match built {
            Ok(c) => c,
            Err(e) => {
                super::shards::lock(&shards.delta).dirty = true;
                return Err(e);
            }
        };
        let mut d = super::shards::lock(&shards.delta);
        // A base built meanwhile makes this delta one of an older base: not served.
        if d.base.map(|b| b.0) == Some(base.0) {
            d.current = Some(crl.clone());
        }
        Ok(Some(crl))
    }

    fn build_delta(&self, base: u64, serials: &BTreeSet<Vec<u8>>) -> Result<Arc<SignedCrl>> {
        let now = self.clock.now();
        let next_update = now + self.config.validity;
        super::update_times(now, next_update)?;
        let issuer = CrlIssuer::new(&self.issuer_cert_der, self.signer.as_ref())?;
        let mut entries = Vec::new();
        for serial in serials {
            if let Some(rec) = self.store.get_cert(serial)? {
                if let crate::store::RecordStatus::Revoked { at, reason } = rec.status {
                    entries.push(crate::revocation::RevokedEntry {
                        serial: rec.serial,
                        revoked_at: at,
                        reason,
                    });
                }
            }
        }
        // RFC 5280 5.2.4: complete and delta CRLs of one scope share one number sequence.
        let number = self.store.next_crl_number()?;
        let crl = Arc::new(issuer.sign_with_extensions(
            &CrlRequest {
                number,
                this_update: now,
                next_update,
                entries: &entries,
                distribution_point: None,
            },
            vec![delta_indicator(base)?],
        )?);
        if let Err(e) = self.store.put_crl(&StoredCrl {
            scope: DELTA_CRL.into(),
            number: crl.number,
            der: crl.der.clone(),
            this_update: crl.this_update,
            next_update: crl.next_update,
        }) {
            tracing::error!(number = crl.number, error = %e, "archiving the delta CRL failed; serving it from memory");
        }
        tracing::info!(number, base, entries = crl.entries, "delta CRL signed");
        Ok(crl)
    }

    /// Serve the archived delta CRL if this node builds no deltas (another node builds the full
    /// CRL) and it is newer than the served one; checked like [`CrlPublisher::adopt_archived`].
    pub fn adopt_archived_delta(&self) -> Result<bool> {
        let Some(shards) = &self.shards else {
            return Ok(false);
        };
        if super::shards::lock(&shards.delta).base.is_some() {
            return Ok(false);
        }
        let Some(stored) = self.store.latest_crl(DELTA_CRL)? else {
            return Ok(false);
        };
        let mut d = super::shards::lock(&shards.delta);
        if d.current
            .as_ref()
            .is_some_and(|c| c.number >= stored.number)
        {
            return Ok(false);
        }
        match crate::x509::check_crl(&self.issuer_cert_der, &stored.der) {
            Ok(c) if c.number == stored.number => {
                d.current = Some(Arc::new(SignedCrl {
                    der: stored.der,
                    number: c.number,
                    this_update: c.this_update,
                    next_update: c.next_update,
                    entries: c.entries,
                }));
                Ok(true)
            }
            _ => {
                tracing::error!(
                    number = stored.number,
                    "the archived delta CRL is not this issuer's or does not verify: not served"
                );
                Ok(false)
            }
        }
    }
}
