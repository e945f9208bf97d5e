//! `intermediate`: the root key, unlocked with the quorum PIN, signs the issuing CA
//! certificate (pathLen 0, CRL distribution point, AIA, optional name constraints and EKU).

use super::{sign_err, validity, Input, Steps};
use crate::config::{NameConstraintsSpec, Subject};
use crate::error::Error;
use crate::history::History;
use crate::output::PUBLIC;
use crate::plan::{TokenRef, V};
use crate::run::{Authority, Ctx, Unlock};
use crate::x509::{self, read_public_key_pem, CertInfo};
use ca_core::clock::to_offset;
use ca_core::signer::{sha256_hex, PublicKey};
use ca_core::x509::RcgenKey;
use chrono::{DateTime, Utc};
use std::path::PathBuf;

/// `intermediate`: checked.
#[derive(Debug)]
pub struct IntermediateTask {
    /// Root token.
    pub token: TokenRef,
    /// Root key label.
    pub key_label: String,
    /// Root certificate.
    pub root: CertInfo,
    /// Issuing public key.
    pub public_key: PublicKey,
    /// Where it was read from.
    pub public_key_path: PathBuf,
    /// Subject name of the issuing CA certificate.
    pub subject: Subject,
    /// notBefore (checked to lie within the root's validity).
    pub not_before: DateTime<Utc>,
    /// notAfter (checked to lie within the root's validity).
    pub not_after: DateTime<Utc>,
    /// CRL distribution points.
    pub crl_urls: Vec<String>,
    /// AIA OCSP.
    pub ocsp_urls: Vec<String>,
    /// AIA caIssuers.
    pub ca_issuers_urls: Vec<String>,
    /// Name constraints.
    pub name_constraints: Option<rcgen::NameConstraints>,
    /// Extended key usages.
    pub extended_key_usage: Vec<rcgen::ExtendedKeyUsagePurpose>,
    /// Output certificate (PEM).
    pub certificate: PathBuf,
    /// Output chain (PEM).
    pub chain: Option<PathBuf>,
}

pub(super) fn plan(input: Input<'_>) -> Result<IntermediateTask, Error> {
    let Input {
        v,
        config,
        start,
        root_token,
        outputs,
        ..
    } = input;
    let (token, t) = root_token.ok_or_else(|| v.err("root_token", "missing"))?;
    let spec = config
        .intermediate
        .as_ref()
        .ok_or_else(|| v.err("intermediate", "missing"))?;
    let root = v.ca_cert(
        "intermediate.root_certificate",
        "root certificate",
        &spec.root_certificate,
        start,
    )?;
    let public_key_path = v.path(&spec.public_key);
    let public_key = read_public_key_pem("issuing public key", &public_key_path)?;
    if public_key.spki_der() == root.spki_der.as_slice() {
        return Err(v.err(
            "intermediate.public_key",
            "this is the root's own key; give the issuing key from the key ceremony",
        ));
    }
    v.subject("intermediate.subject", &spec.subject)?;
    let validity = v.validity("intermediate.validity", &spec.validity, start)?;
    v.within_issuer("intermediate.validity", "root certificate", validity, &root)?;
    if spec.crl_urls.is_empty() {
        return Err(v.err(
            "intermediate.crl_urls",
            "at least one URL where the root CRL is published (RFC 5280 4.2.1.13)",
        ));
    }
    v.urls("intermediate.crl_urls", &spec.crl_urls)?;
    v.urls("intermediate.ocsp_urls", &spec.ocsp_urls)?;
    v.urls("intermediate.ca_issuers_urls", &spec.ca_issuers_urls)?;
    let nc = spec
        .name_constraints
        .as_ref()
        .map(|nc| name_constraints(v, "intermediate.name_constraints", nc))
        .transpose()?;
    let extended_key_usage = eku(
        v,
        "intermediate.extended_key_usage",
        &spec.extended_key_usage,
    )?;
    let certificate = v.output("intermediate.certificate", &spec.certificate, outputs)?;
    let chain = spec
        .chain
        .as_ref()
        .map(|c| v.output("intermediate.chain", c, outputs))
        .transpose()?;
    Ok(IntermediateTask {
        token,
        key_label: t.key_label.clone(),
        root,
        public_key,
        public_key_path,
        subject: spec.subject.clone(),
        not_before: validity.0,
        not_after: validity.1,
        crl_urls: spec.crl_urls.clone(),
        ocsp_urls: spec.ocsp_urls.clone(),
        ca_issuers_urls: spec.ca_issuers_urls.clone(),
        name_constraints: nc,
        extended_key_usage,
        certificate,
        chain,
    })
}

fn cidr(s: &str) -> Option<rcgen::CidrSubnet> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: std::net::IpAddr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then(|| rcgen::CidrSubnet::from_addr_prefix(addr, prefix))
}

fn name_constraints(
    v: &V<'_>,
    path: &str,
    nc: &NameConstraintsSpec,
) -> Result<rcgen::NameConstraints, Error> {
    use rcgen::GeneralSubtree;
    let dns = |field: &str, list: &[String]| -> Result<Vec<GeneralSubtree>, Error> {
        list.iter()
            .enumerate()
            .map(|(i, d)| {
                let ok = !d.is_empty() && d.is_ascii() && !d.contains(['*', ' ', '/']);
                ok.then(|| GeneralSubtree::DnsName(d.clone()))
                    .ok_or_else(|| {
                        v.err(
                            format!("{path}.{field}[{i}]"),
                            format!("{d:?} is not a DNS name constraint (e.g. \"example.com\")"),
                        )
                    })
            })
            .collect()
    };
    let ips = |field: &str, list: &[String]| -> Result<Vec<GeneralSubtree>, Error> {
        list.iter()
            .enumerate()
            .map(|(i, c)| {
                cidr(c).map(GeneralSubtree::IpAddress).ok_or_else(|| {
                    v.err(
                        format!("{path}.{field}[{i}]"),
                        format!("{c:?} is not a CIDR range (e.g. \"10.0.0.0/8\")"),
                    )
                })
            })
            .collect()
    };
    let mut permitted = dns("permitted_dns", &nc.permitted_dns)?;
    permitted.extend(ips("permitted_ip", &nc.permitted_ip)?);
    for (i, e) in nc.permitted_email.iter().enumerate() {
        if e.is_empty() || !e.is_ascii() || e.contains(' ') {
            return Err(v.err(
                format!("{path}.permitted_email[{i}]"),
                format!("{e:?} is not an email name constraint"),
            ));
        }
        permitted.push(GeneralSubtree::Rfc822Name(e.clone()));
    }
    let mut excluded = dns("excluded_dns", &nc.excluded_dns)?;
    excluded.extend(ips("excluded_ip", &nc.excluded_ip)?);
    if permitted.is_empty() && excluded.is_empty() {
        return Err(v.err(
            path,
            "name constraints with no subtree; remove the section or list permitted/excluded names",
        ));
    }
    Ok(rcgen::NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: excluded,
    })
}

fn eku(
    v: &V<'_>,
    path: &str,
    list: &[String],
) -> Result<Vec<rcgen::ExtendedKeyUsagePurpose>, Error> {
    use rcgen::ExtendedKeyUsagePurpose as E;
    list.iter()
        .enumerate()
        .map(|(i, s)| match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "serverauth" => Ok(E::ServerAuth),
            "clientauth" => Ok(E::ClientAuth),
            "ocspsigning" => Ok(E::OcspSigning),
            "codesigning" => Ok(E::CodeSigning),
            "emailprotection" => Ok(E::EmailProtection),
            "timestamping" => Ok(E::TimeStamping),
            _ => Err(v.err(format!("{path}[{i}]"), format!("unknown extended key usage {s:?} (serverAuth, clientAuth, ocspSigning, ...)"))),
        })
        .collect()
}

impl IntermediateTask {
    pub(super) fn describe(&self, s: &mut Steps, history: &History) {
        let key_sha = sha256_hex(self.public_key.spki_der());
        let origin = history
            .key_origin(&key_sha)
            .map(|r| format!(" (generated in {})", r.path.display()))
            .unwrap_or_default();
        s.step(format!(
            "Open token {:?} with the quorum PIN; check its serial; open root key {:?}",
            self.token.label, self.key_label
        ));
        s.step(format!(
            "Check the key matches root certificate {} (SHA-256 {})",
            self.root.path.display(),
            self.root.sha256
        ));
        s.step(format!(
            "Sign the intermediate CN={} for public key {} SHA-256 {key_sha}{origin}: CA pathLen 0, valid {}, CRL {}{}{}",
            self.subject.common_name,
            self.public_key_path.display(),
            validity(&self.not_before, &self.not_after),
            self.crl_urls.join(" "),
            if self.ocsp_urls.is_empty() { String::new() } else { format!(", OCSP {}", self.ocsp_urls.join(" ")) },
            if self.name_constraints.is_some() { ", name constraints" } else { "" }
        ));
        s.step(format!(
            "Write {}{}",
            self.certificate.display(),
            self.chain
                .as_ref()
                .map(|c| format!(" and {}", c.display()))
                .unwrap_or_default()
        ));
    }

    pub(super) fn execute(
        &self,
        ctx: &mut Ctx<'_>,
        unlock: Option<&Unlock>,
    ) -> Result<Authority, Error> {
        let auth = ctx.open_root(&self.token, &self.key_label, &self.root.spki_der, unlock)?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = x509::distinguished_name(&self.subject)?;
        params.not_before = to_offset(self.not_before);
        params.not_after = to_offset(self.not_after);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&x509::random_serial()));
        // RFC 5280 4.2.1.9: pathLen 0, the intermediate issues end-entity certificates only.
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.extended_key_usages = self.extended_key_usage.clone();
        params.name_constraints = self.name_constraints.clone();
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: self.crl_urls.clone(),
        }];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = x509::key_identifier(self.public_key.spki_der())?;
        if let Some(aia) = x509::authority_info_access(&self.ocsp_urls, &self.ca_issuers_urls)? {
            params.custom_extensions.push(aia);
        }
        let key = RcgenKey::new(&auth.signer);
        let issuer = rcgen::Issuer::from_ca_cert_der(&self.root.der.as_slice().into(), &key)
            .map_err(Error::build("issuer from the root certificate"))?;
        let cert = params
            .signed_by(&self.public_key, &issuer)
            .map_err(sign_err(&key, "signing the intermediate certificate"))?;
        x509::check_certificate("intermediate certificate", cert.der(), &self.root.spki_der)?;
        ctx.certificate("intermediate", &self.certificate, cert.der())?;
        if let Some(chain) = &self.chain {
            let text =
                x509::pem("CERTIFICATE", cert.der())? + &x509::pem("CERTIFICATE", &self.root.der)?;
            ctx.write(
                "chain (intermediate, root)",
                chain,
                text.as_bytes(),
                PUBLIC,
                None,
            )?;
        }
        Ok(auth)
    }
}
