//! The issuing CA: checks a request against policy, signs in the HSM, verifies, stores.
//!
//! The safe path is the only path: [`Ca::prepare`] turns a parsed CSR and its context
//! (enrollment token, renewal, or administrator) into a [`Prepared`] certificate that passed
//! every policy check; [`Prepared::issue`] consumes it, signs it with the HSM key, verifies the
//! signature with the issuer's public key, and stores the record durably before returning it
//! (DESIGN invariants 2 and 3).

use crate::ca_identity::ReservedNames;
use crate::clock::{to_offset, Clock};
use crate::csr::CsrRequest;
use crate::error::{Error, Result};
use crate::profile::{KeyUsage, Profile, Profiles, San};
use crate::signer::{self, KeyAlgorithm, PublicKey, Signer};
use crate::store::{CertRecord, IdentityBinding, RecordStatus, Requester, Store, TokenRecord};
use crate::x509::{self, RcgenKey};
use chrono::{DateTime, Utc};
use der::{Decode, Encode};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use x509_cert::ext::pkix::{name::GeneralName, AccessDescription, AuthorityInfoAccessSyntax};

/// URLs written into issued certificates; they must match what the status listener serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerUrls {
    /// OCSP responder (AIA id-ad-ocsp), e.g. `http://ca.example.com/ocsp`.
    #[serde(default)]
    pub ocsp: Option<String>,
    /// Issuer certificate (AIA id-ad-caIssuers), e.g. `http://ca.example.com/ca.crt`.
    #[serde(default)]
    pub ca_issuers: Option<String>,
    /// CRL distribution point, e.g. `http://ca.example.com/crl`.
    #[serde(default)]
    pub crl: Option<String>,
}

/// Why a certificate is being issued, which decides its names and profile.
#[derive(Clone, Copy, Debug)]
pub enum IssueContext<'a> {
    /// First enrollment with a (already consumed) one-time token.
    Enrollment {
        /// The token record: identity binding and profile.
        token: &'a TokenRecord,
    },
    /// Renewal authenticated by the current certificate: same identity, same profile.
    Renewal {
        /// The certificate being renewed.
        previous: &'a CertRecord,
    },
    /// Issued on an administrator's (or the server's own) authority.
    Admin {
        /// Profile to use.
        profile: &'a str,
        /// Administrator (certificate subject) or `ca-server` itself; recorded as the requester.
        actor: &'a str,
        /// Names to impose (if `None`, the CSR's names, checked against the profile).
        binding: Option<&'a IdentityBinding>,
    },
}

/// The issuing CA.
pub struct Ca {
    signer: Arc<dyn Signer>,
    /// rcgen's view of the issuer (subject DN, key identifier, key usages) with the HSM key,
    /// parsed from `cert_der` once instead of at every issuance.
    issuer: rcgen::Issuer<'static, RcgenKey<'static>>,
    cert_der: Vec<u8>,
    chain: Vec<Vec<u8>>,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    profiles: Profiles,
    urls: IssuerUrls,
    /// CRL shards: each certificate's CRL distribution point names its shard instead of the
    /// full CRL (README "CRLs").
    crl_shards: Option<crate::crl::ShardScheme>,
    /// Names of the CA's own endpoints, never issued to a subscriber.
    reserved: ReservedNames,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("signer", &self.signer)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Assemble the CA. `chain` is the issuing certificate's chain above it (intermediates, then
    /// the root), DER. Fails closed if the HSM key does not match the issuer certificate, or the
    /// certificate is not a CA allowed to sign certificates.
    pub fn new(
        signer: Arc<dyn Signer>,
        cert_der: Vec<u8>,
        chain: Vec<Vec<u8>>,
        profiles: Profiles,
        urls: IssuerUrls,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        profiles.validate()?;
        let cert = x509_cert::Certificate::from_der(&cert_der)
            .map_err(|e| Error::Issuer(format!("cannot parse: {e}")))?;
        let spki = cert.tbs_certificate.subject_public_key_info.to_der()?;
        if spki != signer.spki_der() {
            return Err(Error::Issuer(
                "the HSM key's public key does not match the issuer certificate".into(),
            ));
        }
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| Error::Issuer(e.to_string()))?;
        let is_ca = parsed
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(Error::Issuer(
                "certificate is not a CA (basicConstraints cA=TRUE missing)".into(),
            ));
        }
        if let Ok(Some(ku)) = parsed.key_usage() {
            if !ku.value.key_cert_sign() {
                return Err(Error::Issuer(
                    "certificate lacks keyUsage keyCertSign".into(),
                ));
            }
        }
        let (not_before, not_after) = x509::validity(&cert_der)?;
        let issuer = rcgen::Issuer::from_ca_cert_der(
            &cert_der.as_slice().into(),
            RcgenKey::shared(signer.clone()),
        )
        .map_err(|e| Error::Issuer(format!("rcgen cannot use it as an issuer: {e}")))?;
        Ok(Ca {
            signer,
            issuer,
            cert_der,
            chain,
            not_before,
            not_after,
            profiles,
            urls,
            crl_shards: None,
            reserved: ReservedNames::none(),
            store,
            clock,
        })
    }

    /// Name each certificate's CRL shard in its CRL distribution point instead of the full
    /// CRL (the same scheme the CRL publisher publishes: `CrlPublisher::with_shards`).
    pub fn with_crl_shards(mut self, scheme: crate::crl::ShardScheme) -> Self {
        self.crl_shards = Some(scheme);
        self
    }

    /// Reserve the names of the CA's own endpoints: no profile but the CA server's own
    /// ([`Profile::ca_server_tls`]) issues them, at issuance and in [`Ca::check_identity`].
    pub fn with_reserved_names(mut self, reserved: ReservedNames) -> Self {
        self.reserved = reserved;
        self
    }

    /// The reserved names.
    pub fn reserved_names(&self) -> &ReservedNames {
        &self.reserved
    }

    /// Check an identity (commonName and SANs) against a profile as issuance will: syntax,
    /// name policy (the commonName included), reserved names. For enrollment tokens, so that
    /// a token that could never be redeemed is refused when it is created.
    pub fn check_identity(
        &self,
        profile_name: &str,
        common_name: Option<&str>,
        sans: &[San],
    ) -> Result<()> {
        let profile = self.profiles.get(profile_name)?;
        self.vet_names(profile, common_name.map(str::to_string), sans.to_vec())
            .map(|_| ())
    }

    /// The names a certificate under `profile` will carry, or why it cannot: the commonName
    /// settled ([`settle_common_name`]), reserved names refused, the name policy applied.
    fn vet_names(
        &self,
        profile: &Profile,
        common_name: Option<String>,
        mut sans: Vec<San>,
    ) -> Result<(Option<String>, Vec<San>)> {
        if let Some(cn) = &common_name {
            settle_common_name(cn, &mut sans, profile)?;
        }
        if !profile.is_ca_server_identity() {
            if let Some(cn) = &common_name {
                self.reserved.check_common_name(cn)?;
            }
            for san in &sans {
                self.reserved.check(san)?;
            }
        }
        check_names(&common_name, &sans, profile)?;
        if profile.is_ca_server_identity() {
            // The mark of the CA server's own certificate (crate::ca_identity): a reserved name
            // for every other profile, so only this one can write it.
            sans.retain(
                |s| !matches!(s, San::Uri(u) if crate::ca_identity::is_ca_server_identity_uri(u)),
            );
            sans.push(San::Uri(crate::ca_identity::CA_SERVER_IDENTITY_URI.into()));
        }
        Ok((common_name, sans))
    }

    /// The issuing certificate (DER).
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The chain above the issuing certificate (DER), root last.
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The issuing certificate followed by its chain.
    pub fn full_chain(&self) -> Vec<Vec<u8>> {
        std::iter::once(self.cert_der.clone())
            .chain(self.chain.iter().cloned())
            .collect()
    }

    /// The HSM signer.
    pub fn signer(&self) -> &Arc<dyn Signer> {
        &self.signer
    }

    /// The store every issued certificate is recorded in before it is returned.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The clock validity windows and issuance times are read from (tests inject a fixed one).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The profiles every request is checked against.
    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    /// The URLs written into certificates.
    pub fn urls(&self) -> &IssuerUrls {
        &self.urls
    }

    /// The issuer's notAfter.
    pub fn not_after(&self) -> DateTime<Utc> {
        self.not_after
    }

    /// Check a request against policy and build the certificate to sign.
    pub fn prepare<'a>(&'a self, csr: &CsrRequest, ctx: IssueContext<'_>) -> Result<Prepared<'a>> {
        let (profile_name, requester) = match ctx {
            IssueContext::Enrollment { token } => {
                (token.profile.clone(), Requester::Token(token.id.clone()))
            }
            IssueContext::Renewal { previous } => (
                previous.profile.clone(),
                Requester::Renewal(previous.serial_hex()),
            ),
            IssueContext::Admin { profile, actor, .. } => {
                (profile.to_string(), Requester::Admin(actor.to_string()))
            }
        };
        let profile = self.profiles.get(&profile_name)?;
        // The lineage the certificate joins: a renewal is the next generation of its
        // predecessor's; anything else starts a lineage (its serial, set at issue).
        let lineage = match ctx {
            IssueContext::Renewal { previous } => {
                if !profile.renewable {
                    return Err(Error::NotRenewable {
                        profile: profile_name,
                    });
                }
                Some(Lineage {
                    id: previous.lineage.clone(),
                    generation: previous.generation.saturating_add(1),
                    previous: Box::new(previous.clone()),
                })
            }
            _ => None,
        };
        check_key_and_extensions(csr, profile, &profile_name)?;
        let spki_sha256 = signer::sha256_hex(csr.public_key.spki_der());

        let (common_name, sans) = match ctx {
            IssueContext::Enrollment { token } => names_from_binding(csr, &token.identity)?,
            IssueContext::Admin {
                binding: Some(b), ..
            } => names_from_binding(csr, b)?,
            IssueContext::Admin { binding: None, .. } => {
                (csr.common_name.clone(), csr.sans.clone())
            }
            IssueContext::Renewal { previous } => {
                if previous.spki_sha256 == spki_sha256 && !profile.allow_key_reuse {
                    return Err(Error::KeyReuse);
                }
                names_for_renewal(csr, previous)?
            }
        };
        let (common_name, sans) = self.vet_names(profile, common_name, sans)?;

        let now = self.clock.now();
        let (not_before, not_after) = x509::issuance_window(
            now,
            profile.backdate.0,
            profile.validity.0,
            (self.not_before, self.not_after),
        )?;

        let mut params = rcgen::CertificateParams::default();
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = &common_name {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn.as_str());
        }
        params.subject_alt_names = sans.iter().map(San::rcgen).collect::<Result<_>>()?;
        // RFC 5280 4.2.1.9: end-entity certificates say cA=FALSE.
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = key_usages_for(profile, &profile_name, csr.public_key.algorithm())?
            .into_iter()
            .map(KeyUsage::rcgen)
            .collect();
        params.extended_key_usages = profile
            .extended_key_usage
            .iter()
            .map(|k| k.rcgen())
            .collect();
        // RFC 5280 4.2.1.1: AKI in every certificate issued by a CA; SKI per 4.2.1.2, derived
        // from the public key as RFC 7093 2 method 1 describes.
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = x509::key_id_method(csr.public_key.spki_der())?;
        // RFC 5280 4.2.1.13: the CRL that covers this certificate; with shards, its shard's
        // (fixed here for good: the store reads the shard back from this extension).
        let crl_url = match &self.crl_shards {
            Some(scheme) => Some(scheme.url(scheme.shard_of(crate::clock::truncate(not_after)))),
            None => self.urls.crl.clone(),
        };
        if let Some(crl) = crl_url {
            params.crl_distribution_points = vec![rcgen::CrlDistributionPoint { uris: vec![crl] }];
        }
        if let Some(aia) = self.aia_extension()? {
            params.custom_extensions.push(aia);
        }
        let identity = common_name
            .clone()
            .or_else(|| sans.first().map(|s| s.to_string()))
            .ok_or_else(|| Error::NameNotAllowed {
                name: "(none)".into(),
                reason: "a certificate needs a commonName or at least one SAN".into(),
            })?;
        Ok(Prepared {
            ca: self,
            params,
            public_key: csr.public_key.clone(),
            subject: common_name.map(|cn| format!("CN={cn}")).unwrap_or_default(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            identity,
            profile: profile_name,
            not_before,
            not_after,
            issued_at: now,
            requester,
            spki_sha256,
            lineage,
        })
    }

    /// RFC 5280 4.2.2.1 Authority Information Access: OCSP and caIssuers URLs.
    fn aia_extension(&self) -> Result<Option<rcgen::CustomExtension>> {
        let mut descs = Vec::new();
        let uri = |u: &str| -> Result<GeneralName> {
            Ok(GeneralName::UniformResourceIdentifier(
                der::asn1::Ia5String::new(u)?,
            ))
        };
        if let Some(ocsp) = &self.urls.ocsp {
            descs.push(AccessDescription {
                access_method: const_oid::db::rfc5280::ID_AD_OCSP,
                access_location: uri(ocsp)?,
            });
        }
        if let Some(ca) = &self.urls.ca_issuers {
            descs.push(AccessDescription {
                access_method: const_oid::db::rfc5280::ID_AD_CA_ISSUERS,
                access_location: uri(ca)?,
            });
        }
        if descs.is_empty() {
            return Ok(None);
        }
        let der = AuthorityInfoAccessSyntax(descs).to_der()?;
        Ok(Some(rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 5, 5, 7, 1, 1],
            der,
        )))
    }
}

/// The profile's key usage bits that an end-entity certificate for a key of `alg` may carry:
/// RFC 3279 2.3.1 (RSA: digitalSignature, keyEncipherment, ...; not keyAgreement), RFC 5480 3
/// (EC: digitalSignature, keyAgreement, ...; not keyEncipherment) and RFC 8410 5 (Ed25519:
/// digitalSignature, ...; neither). Bits the key type cannot use are dropped; a profile
/// that leaves none for this key type refuses it.
fn key_usages_for(
    profile: &Profile,
    profile_name: &str,
    alg: KeyAlgorithm,
) -> Result<Vec<KeyUsage>> {
    let fits = |k: &KeyUsage| match k {
        KeyUsage::DigitalSignature => true,
        KeyUsage::KeyEncipherment => alg.rsa_bits().is_some(),
        KeyUsage::KeyAgreement => matches!(alg, KeyAlgorithm::P256 | KeyAlgorithm::P384),
    };
    let usages: Vec<KeyUsage> = profile.key_usage.iter().copied().filter(fits).collect();
    if usages.is_empty() {
        return Err(Error::WeakKey(format!(
            "{alg} keys can have none of the key usages of profile {profile_name:?} \
             (RFC 3279 2.3.1, RFC 5480 3, RFC 8410 5)"
        )));
    }
    Ok(usages)
}

fn check_key_and_extensions(csr: &CsrRequest, profile: &Profile, profile_name: &str) -> Result<()> {
    let not_allowed = |oid: &str| Error::ExtensionNotAllowed {
        oid: oid.to_string(),
        profile: profile_name.to_string(),
    };
    if let Some(types) = &profile.key_types {
        let alg = csr.public_key.algorithm();
        if !types.contains(&alg) {
            return Err(Error::WeakKey(format!(
                "{alg} keys are not allowed by profile {profile_name:?}"
            )));
        }
    }
    if csr.requests_ca {
        return Err(not_allowed("2.5.29.19 (basicConstraints cA=TRUE)"));
    }
    if let Some(ku) = &csr.key_usage {
        if csr.key_usage_other || ku.iter().any(|k| !profile.key_usage.contains(k)) {
            return Err(not_allowed("2.5.29.15 (keyUsage beyond the profile)"));
        }
    }
    if let Some(eku) = &csr.extended_key_usage {
        if !csr.extended_key_usage_other.is_empty()
            || eku.iter().any(|k| !profile.extended_key_usage.contains(k))
        {
            return Err(not_allowed(
                "2.5.29.37 (extendedKeyUsage beyond the profile)",
            ));
        }
    }
    for oid in &csr.other_extensions {
        if let Some((_, name)) = crate::profile::MEANINGFUL_EXTENSIONS
            .iter()
            .find(|(o, _)| o == oid)
        {
            return Err(not_allowed(&format!("{oid} ({name})")));
        }
        if !profile.tolerated_csr_extensions.contains(oid) {
            return Err(not_allowed(oid));
        }
    }
    Ok(())
}

fn parse_bound(binding: &IdentityBinding) -> Result<Vec<San>> {
    binding.sans.iter().map(|s| s.parse()).collect()
}

/// Names for an enrollment: the CSR may only ask for names the token binds.
fn names_from_binding(
    csr: &CsrRequest,
    binding: &IdentityBinding,
) -> Result<(Option<String>, Vec<San>)> {
    let bound = parse_bound(binding)?;
    let cn = match (&binding.common_name, &csr.common_name) {
        (Some(b), Some(c)) if b != c => {
            return Err(Error::NameNotAllowed {
                name: format!("CN={c}"),
                reason: format!("the token is bound to CN={b}"),
            })
        }
        (Some(b), _) => Some(b.clone()),
        (None, Some(c)) => {
            if !bound
                .iter()
                .any(|s| matches!(s, San::Dns(d) if d.eq_ignore_ascii_case(c)))
            {
                return Err(Error::NameNotAllowed {
                    name: format!("CN={c}"),
                    reason: "the token binds no commonName".into(),
                });
            }
            Some(c.clone())
        }
        (None, None) => None,
    };
    let mut allowed = bound.clone();
    if let Some(cn) = &cn {
        if let Ok(s) = format!("dns:{cn}").parse::<San>() {
            allowed.push(s);
        }
    }
    for san in &csr.sans {
        if !allowed.contains(san) {
            return Err(Error::NameNotAllowed {
                name: san.to_string(),
                reason: "not among the names the token is bound to".into(),
            });
        }
    }
    let sans = if csr.sans.is_empty() {
        bound
    } else {
        csr.sans.clone()
    };
    Ok((cn, sans))
}

/// Names for a renewal: exactly the previous certificate's identity; the CSR cannot add any.
fn names_for_renewal(
    csr: &CsrRequest,
    previous: &CertRecord,
) -> Result<(Option<String>, Vec<San>)> {
    let prev_cn = previous.subject.strip_prefix("CN=").map(str::to_string);
    if let Some(c) = &csr.common_name {
        if Some(c) != prev_cn.as_ref() {
            return Err(Error::NameNotAllowed {
                name: format!("CN={c}"),
                reason: "renewal cannot change the commonName".into(),
            });
        }
    }
    let prev_sans: Vec<San> = previous
        .sans
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_>>()?;
    for san in &csr.sans {
        if !prev_sans.contains(san) {
            return Err(Error::NameNotAllowed {
                name: san.to_string(),
                reason: "renewal cannot add names".into(),
            });
        }
    }
    Ok((prev_cn, prev_sans))
}

/// The commonName is a name like the others (CA/B Forum BR 7.1.4.3 for server certificates):
/// it must be one of the certificate's DNS names or IP addresses. A commonName that is a DNS
/// name or an IP address but not yet among the SANs is added as one (so a CN-only request
/// gets its CN as a SAN, which the name policy then allows or refuses). In profiles without
/// serverAuth, a commonName matching `names.common_name_patterns` may stand alone (a user or
/// service label). Anything else is refused.
fn settle_common_name(cn: &str, sans: &mut Vec<San>, profile: &Profile) -> Result<()> {
    let refuse = |reason: String| Error::NameNotAllowed {
        name: format!("CN={cn}"),
        reason,
    };
    if !profile.names.common_name {
        return Err(refuse("profile forbids a commonName".into()));
    }
    let as_san = match cn.parse::<std::net::IpAddr>() {
        Ok(ip) => Some(San::Ip(ip)),
        Err(_) => {
            let d = San::Dns(cn.to_ascii_lowercase());
            d.check_syntax().is_ok().then_some(d)
        }
    };
    if as_san.as_ref().is_some_and(|s| sans.contains(s)) {
        return Ok(());
    }
    if !profile.server_auth() && profile.names.allows_common_name_label(cn) {
        return Ok(());
    }
    match as_san {
        Some(san) => {
            sans.push(san);
            Ok(())
        }
        None => Err(refuse(if profile.server_auth() {
            "the commonName of a server certificate must be one of its DNS names or IP \
             addresses (CA/B Forum BR 7.1.4.3)"
                .into()
        } else {
            "the commonName must be a DNS name or IP address the profile allows, or match \
             names.common_name_patterns"
                .into()
        })),
    }
}

fn check_names(cn: &Option<String>, sans: &[San], profile: &Profile) -> Result<()> {
    if let Some(c) = cn {
        if !profile.names.common_name {
            return Err(Error::NameNotAllowed {
                name: format!("CN={c}"),
                reason: "profile forbids a commonName".into(),
            });
        }
        // RFC 5280 Appendix A: ub-common-name = 64. A token binding can name one the CSR
        // parser never saw.
        if c.is_empty() || c.chars().count() > 64 || c.chars().any(char::is_control) {
            return Err(Error::NameNotAllowed {
                name: format!("CN={c}"),
                reason: "commonName must be 1-64 printable characters".into(),
            });
        }
    }
    if sans.len() > profile.names.max_sans {
        return Err(Error::NameNotAllowed {
            name: format!("{} SANs", sans.len()),
            reason: format!("profile allows at most {}", profile.names.max_sans),
        });
    }
    for san in sans {
        san.check_syntax()?;
        if !profile.names.allows(san) {
            return Err(Error::NameNotAllowed {
                name: san.to_string(),
                reason: "not allowed by the profile's name policy".into(),
            });
        }
    }
    if cn.is_none() && sans.is_empty() {
        return Err(Error::NameNotAllowed {
            name: "(none)".into(),
            reason: "a certificate needs a commonName or at least one SAN".into(),
        });
    }
    Ok(())
}

/// A certificate that passed every policy check, ready to be signed exactly once.
#[must_use = "a prepared certificate does nothing until issued"]
pub struct Prepared<'a> {
    ca: &'a Ca,
    params: rcgen::CertificateParams,
    public_key: PublicKey,
    subject: String,
    sans: Vec<String>,
    identity: String,
    profile: String,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    issued_at: DateTime<Utc>,
    requester: Requester,
    spki_sha256: String,
    /// For a renewal: the lineage it continues (checked again, atomically, by the store).
    lineage: Option<Lineage>,
}

/// The lineage a renewal continues.
struct Lineage {
    id: Vec<u8>,
    generation: u32,
    previous: Box<CertRecord>,
}

impl std::fmt::Debug for Prepared<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("identity", &self.identity)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// How many fresh serials to try when one collides (a collision of 127 random bits means the
/// CSPRNG is broken; fail closed rather than loop).
const SERIAL_ATTEMPTS: usize = 3;

impl Prepared<'_> {
    /// The identity the certificate will carry.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Sign in the HSM, verify, store durably, return. (Inside [`crate::store::deferred`] the
    /// store write becomes durable when the unit of work ends, before it returns.)
    pub fn issue(mut self) -> Result<Issued> {
        let ca = self.ca;
        for _ in 0..SERIAL_ATTEMPTS {
            // Uniqueness is checked by the store's insert (a compare-and-swap on the serial),
            // not by a lookup first: a collision of 127 random bits costs one wasted signature
            // and a retry, and never happens; the lookup cost a store read on every issuance.
            let serial = x509::random_serial();
            self.params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
            let cert = self
                .params
                .signed_by(&self.public_key, &ca.issuer)
                .map_err(|e| ca.issuer.key().map_err(e))?;
            let der = cert.der().to_vec();
            self.check_signed(&der, &serial)?;
            let lineage = self
                .lineage
                .as_ref()
                .map_or_else(|| serial.clone(), |l| l.id.clone());
            let record = CertRecord {
                serial,
                subject: self.subject.clone(),
                sans: self.sans.clone(),
                identity: self.identity.clone(),
                profile: self.profile.clone(),
                not_before: self.not_before,
                not_after: self.not_after,
                issued_at: self.issued_at,
                requester: self.requester.clone(),
                spki_sha256: self.spki_sha256.clone(),
                der,
                status: RecordStatus::Valid,
                lineage,
                generation: self.lineage.as_ref().map_or(1, |l| l.generation),
            };
            // A renewal is stored only if its predecessor is still the newest generation of
            // an unlocked lineage, checked atomically with the insert (a generation renews at
            // most once, even when two renewals race).
            let inserted = match &self.lineage {
                Some(l) => ca.store.insert_renewal(&record, &l.previous)?,
                None => ca.store.insert_cert(&record)?,
            };
            if inserted {
                return Ok(Issued {
                    record,
                    chain: ca.full_chain(),
                });
            }
        }
        Err(Error::SerialExhausted)
    }

    /// Invariant 3: never return a certificate whose signature the CA did not verify, or that
    /// does not carry the requested key and serial.
    fn check_signed(&self, der: &[u8], serial: &[u8]) -> Result<()> {
        let parts = CertParts::parse(der)?;
        signer::verify_own(self.ca.signer.as_ref(), parts.tbs, parts.signature)?;
        if parts.spki != self.public_key.spki_der() {
            return Err(Error::Issuer(
                "issued certificate does not carry the requested public key".into(),
            ));
        }
        if parts.serial != serial {
            return Err(Error::Issuer(
                "issued certificate does not carry the chosen serial".into(),
            ));
        }
        Ok(())
    }
}

/// The parts of a DER certificate that the post-sign check compares, as they appear in it
/// (no re-encoding, no allocation): read field by field, without decoding names or extensions.
struct CertParts<'a> {
    /// tbsCertificate, the signed bytes.
    tbs: &'a [u8],
    /// serialNumber contents.
    serial: &'a [u8],
    /// subjectPublicKeyInfo, whole TLV.
    spki: &'a [u8],
    /// signatureValue contents (no unused bits).
    signature: &'a [u8],
}

impl<'a> CertParts<'a> {
    fn parse(der: &'a [u8]) -> Result<Self> {
        use der::{Decode, Reader};
        let (tbs, signature) = signed_parts(der)?;
        let inner = der::asn1::AnyRef::from_der(tbs)?;
        let mut t = der::SliceReader::new(inner.value())?;
        // version [0] EXPLICIT, present in every v3 certificate.
        if t.peek_tag()?
            == (der::Tag::ContextSpecific {
                constructed: true,
                number: der::TagNumber::N0,
            })
        {
            t.tlv_bytes()?;
        }
        let serial = der::asn1::IntRef::decode(&mut t)?.as_bytes();
        for _ in 0..4 {
            // signature algorithm, issuer, validity, subject
            t.tlv_bytes()?;
        }
        let spki = t.tlv_bytes()?;
        Ok(CertParts {
            tbs,
            serial,
            spki,
            signature,
        })
    }
}

/// The to-be-signed bytes and the signature of a DER `SIGNED{}` structure
/// (`SEQUENCE { tbs, algorithm, BIT STRING }`: a certificate, CRL or OCSP basic response), as
/// they appear in `der`. Trailing data, a non-SEQUENCE or a signature with unused bits is an
/// error.
fn signed_parts(der: &[u8]) -> Result<(&[u8], &[u8])> {
    use der::{Decode, Reader, Tagged};
    let outer = der::asn1::AnyRef::from_der(der)?;
    if outer.tag() != der::Tag::Sequence {
        return Err(Error::Der(der::Error::from(
            der::ErrorKind::TagUnexpected {
                expected: Some(der::Tag::Sequence),
                actual: outer.tag(),
            },
        )));
    }
    let mut r = der::SliceReader::new(outer.value())?;
    let tbs = r.tlv_bytes()?;
    let _algorithm = r.tlv_bytes()?;
    let signature = der::asn1::BitStringRef::decode(&mut r)?
        .as_bytes()
        .ok_or(Error::SignatureCheckFailed)?;
    r.finish(())?;
    Ok((tbs, signature))
}

/// The encoded tbsCertificate (or tbsCertList, tbsResponseData: any SIGNED{} structure) of a
/// DER `SEQUENCE { tbs, algorithm, signature }`, as it appears in `der`.
pub fn tbs_bytes(der: &[u8]) -> Result<&[u8]> {
    Ok(signed_parts(der)?.0)
}

/// An issued, verified and stored certificate.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The stored record (DER inside).
    pub record: CertRecord,
    /// The issuing certificate and its chain (DER), root last.
    pub chain: Vec<Vec<u8>>,
}

impl Issued {
    /// The certificate as PEM.
    pub fn cert_pem(&self) -> String {
        x509::pem_encode("CERTIFICATE", &self.record.der)
    }
    /// The chain as concatenated PEM (issuing CA first).
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| x509::pem_encode("CERTIFICATE", c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Encode;

    #[test]
    fn cert_parts_match_a_full_decode_and_refuse_damage() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["parts.test".to_string()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x42; 16]));
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let full = x509_cert::Certificate::from_der(&der).unwrap();
        let parts = CertParts::parse(&der).unwrap();
        assert_eq!(parts.tbs, full.tbs_certificate.to_der().unwrap().as_slice());
        assert_eq!(parts.serial, full.tbs_certificate.serial_number.as_bytes());
        assert_eq!(parts.serial, &[0x42; 16]);
        assert_eq!(
            parts.spki,
            full.tbs_certificate
                .subject_public_key_info
                .to_der()
                .unwrap()
                .as_slice()
        );
        assert_eq!(parts.signature, full.signature.as_bytes().unwrap());
        signer::verify(parts.spki, parts.tbs, parts.signature).unwrap();

        let mut trailing = der.clone();
        trailing.push(0);
        let mut not_seq = der.clone();
        not_seq[0] = 0x31;
        for bad in [
            &[][..],
            &der[..1],
            &der[..der.len() - 1],
            &trailing,
            &not_seq,
        ] {
            assert!(CertParts::parse(bad).is_err(), "{bad:?}");
        }
    }
}
