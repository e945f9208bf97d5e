//! CRL build cost against the number of revoked certificates: the full CRL, one shard after a
//! revocation in it (README "CRL shards"), and the delta CRL, with a SoftHSM P-256 issuing key
//! and a durable sled store. Run through `bench/crl_shards.sh` (release build).
//!
//! The revoked certificates spread over 24 one-hour shards (24-hour certificates issued over a
//! day); each record's certificate is a small one naming its shard's CRL distribution point
//! (one per shard: the CRL entry is the record's serial, the shard the certificate's URL).
//!
//! Usage: `bench_crl_shards [COUNT...]` (default 10000 100000). Prints a Markdown table: store
//! fill time, reopening the store, first pass (every live shard signed once), full CRL build (time, the store's
//! scan of every revocation alone, size, the
//! process's RSS before it and its peak during it), the check another node makes of the archived
//! full CRL, one shard rebuild after a revocation in it, delta CRL build, with sizes and entry
//! counts.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use ca_core::clock::FixedClock;
use ca_core::crl::{CrlConfig, CrlPublisher, ShardScheme};
use ca_core::revocation::RevocationReason;
use ca_core::signer::{KeyAlgorithm, Signer};
use ca_core::store::{
    CertRecord, CertStore, Durability, RecordStatus, Requester, SledStore, Store,
};
use chrono::{Duration, Utc};
use std::sync::Arc;
use std::time::Instant;
use testkit::pki::{test_profiles, TestPki};

const CRL_URL: &str = "http://ca.example.test/crl";
const SHARDS: i64 = 24;

fn record(i: u64, not_after: chrono::DateTime<Utc>, der: &[u8]) -> CertRecord {
    let mut serial = vec![0x40];
    serial.extend_from_slice(&i.to_be_bytes());
    CertRecord {
        serial: serial.clone(),
        subject: format!("CN=b{i}"),
        sans: vec![format!("dns:b{i}.test")],
        identity: format!("b{i}.test"),
        profile: "client".into(),
        not_before: not_after - Duration::hours(24),
        not_after,
        issued_at: not_after - Duration::hours(24),
        requester: Requester::Token("t".into()),
        spki_sha256: "00".into(),
        der: der.to_vec(),
        status: RecordStatus::Valid,
        lineage: serial,
        generation: 1,
    }
}

/// `VmRSS` or `VmHWM` of this process in MB, from /proc/self/status.
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Reset the process's peak RSS (`VmHWM`) to its current RSS (Linux `clear_refs` 5).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn kb(n: usize) -> String {
    format!("{:.0} KB", n as f64 / 1000.0)
}

fn main() {
    let counts: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![10_000, 100_000]
    } else {
        counts
    };
    println!("| revoked | fill | store reopen | first pass (shards signed) | full CRL build | of which the store's scan | full CRL size | RSS before / peak during the full build | full CRL check (archive) | shard rebuild | shard entries | shard size | delta build | delta entries |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for n in counts {
        run(n);
    }
}

fn run(n: u64) {
    let now = ca_core::clock::truncate(Utc::now());
    let clock = Arc::new(FixedClock::new(now));
    let pki = TestPki::with(
        KeyAlgorithm::P256,
        test_profiles(),
        ca_core::issuance::IssuerUrls::default(),
        clock.clone(),
    )
    .expect("test PKI");
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let scheme = ShardScheme::new(CRL_URL, Duration::hours(1), Duration::hours(25)).unwrap();
    // One certificate per shard, naming it.
    let ders: Vec<(chrono::DateTime<Utc>, Vec<u8>)> = (0..SHARDS)
        .map(|h| {
            let not_after = now + Duration::hours(h + 1) - Duration::minutes(1);
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["b.test".to_string()]).unwrap();
            params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
                uris: vec![scheme.url(scheme.shard_of(not_after))],
            }];
            (not_after, params.self_signed(&key).unwrap().der().to_vec())
        })
        .collect();
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        ca_core::store::deferred::<_, ca_core::Error, _>(store.as_ref(), || {
            for &i in chunk {
                let (na, der) = &ders[(i % SHARDS as u64) as usize];
                let rec = record(i, *na, der);
                store.insert_cert(&rec)?;
                store.revoke(&rec.serial, now, RevocationReason::Superseded)?;
            }
            Ok(())
        })
        .unwrap();
    }
    let fill = t.elapsed();
    // The fill's writes on disk before anything is measured (sled writes them back in the
    // background otherwise, into the first measurement).
    store.flush().unwrap();
    // What opening the store costs at this size (a restart's first step).
    drop(store);
    let t = Instant::now();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let reopen = t.elapsed();
    let signer: Arc<dyn Signer> = pki.issuing_signer.clone();
    let p = CrlPublisher::new(
        store.clone() as Arc<dyn Store>,
        signer,
        pki.issuing_der.clone(),
        clock.clone(),
        CrlConfig::default(),
    )
    .unwrap()
    .with_shards(scheme.clone(), Duration::minutes(5));
    let t = Instant::now();
    let first = p.regenerate_shards_if_due().unwrap();
    let first_pass = t.elapsed();
    let rss_before = status_mb("VmRSS:");
    reset_peak();
    let t = Instant::now();
    let full = p.regenerate().unwrap();
    let full_time = t.elapsed();
    let rss_peak = status_mb("VmHWM:");
    // What another node (or a stateless responder) does with the archived full CRL.
    let t = Instant::now();
    let checked = ca_core::x509::check_crl(&pki.issuing_der, &full.der).unwrap();
    let check_time = t.elapsed();
    assert_eq!(checked.entries, full.entries);
    // The store's part of a full build: one pass over every revocation.
    let t = Instant::now();
    let mut scanned = 0u64;
    store
        .for_each_revoked(&mut |_| {
            scanned += 1;
            Ok(())
        })
        .unwrap();
    let scan_time = t.elapsed();
    assert_eq!(scanned, n);
    p.regenerate_delta_if_due().unwrap();
    // One more revocation, in the first shard: only that shard is rebuilt, then the delta.
    let (na, der) = &ders[0];
    let rec = record(n + 1, *na, der);
    store.insert_cert(&rec).unwrap();
    store
        .revoke(&rec.serial, now, RevocationReason::KeyCompromise)
        .unwrap();
    p.note_revoked_serial(&rec.serial);
    let t = Instant::now();
    let pass = p.regenerate_shards_if_due().unwrap();
    let shard_time = t.elapsed();
    assert_eq!(pass.built.len(), 1, "{pass:?}");
    let shard = p.shard(pass.built[0]).unwrap();
    let t = Instant::now();
    let delta = p.regenerate_delta_if_due().unwrap().unwrap();
    let delta_time = t.elapsed();
    println!(
        "| {n} | {:.1} s | {:.2} s | {:.2} s ({}) | {:.2} s | {:.2} s | {} | {:.0} / {:.0} MB | {:.2} s | {:.1} ms | {} | {} | {:.1} ms | {} |",
        fill.as_secs_f64(),
        reopen.as_secs_f64(),
        first_pass.as_secs_f64(),
        first.built.len(),
        full_time.as_secs_f64(),
        scan_time.as_secs_f64(),
        kb(full.der.len()),
        rss_before,
        rss_peak,
        check_time.as_secs_f64(),
        shard_time.as_secs_f64() * 1000.0,
        shard.entries,
        kb(shard.der.len()),
        delta_time.as_secs_f64() * 1000.0,
        delta.entries,
    );
}
