//! Issuance throughput against SoftHSM, side by side with the raw PKCS#11 signing rate of the
//! same token in the same run. Run through `bench/issuance.sh` (release build).
//!
//! "Threads" is the number of HSM signing sessions (one signer per core, as the server runs):
//! the raw case signs with that many threads, one session each; the issuance case gives the CA
//! a session pool of that size and drives it with 8 concurrent requesters, the way concurrent
//! HTTP requests reach it, so group commit can batch the store flushes (`BENCH_REQUESTERS`
//! changes the 8). The raw case runs twice: signing with the token key object, and with a
//! session-object copy of it made in the HSM, which is what `Pkcs11Signer` signs with (SoftHSM
//! re-reads a token object's file on every signature); the ratio is given against both.
//!
//! Usage: `bench_issuance [SECONDS_PER_CASE] [--only raw|issue] [--sessions N]` (default 5 s,
//! both cases, 1 and 2 sessions). Prints a Markdown table. `--only` and `--sessions` exist for
//! profiling one case (`perf record`, `valgrind --tool=callgrind`).

/// mimalloc, as in the `ca-server` binary: glibc malloc cost 15% of the CPU per certificate.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use ca_core::csr;
use ca_core::issuance::IssueContext;
use ca_core::signer::KeyAlgorithm;
use ca_core::store::{IdentityBinding, TokenRecord};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use sha2::Digest;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::pki::{TestPki, ISSUING_KEY};

/// Concurrent requesters driving the CA in the issuance case.
const REQUESTERS: usize = 8;

/// One timed case: operations per second, and the process's CPU time (user + system, every
/// thread: SoftHSM, sled's IO threads, ...) per operation, in microseconds.
#[derive(Clone, Copy)]
struct Run {
    per_sec: f64,
    cpu_us: f64,
}

const NOT_RUN: Run = Run {
    per_sec: f64::NAN,
    cpu_us: f64::NAN,
};

/// This process's CPU time so far (user + system), from /proc/self/stat, in microseconds.
fn process_cpu_us() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // Linux reports these in USER_HZ, 100 per second on every common configuration.
    (ticks(11) + ticks(12)) * 10_000.0
}

fn run_threads(threads: usize, secs: u64, work: impl Fn() + Send + Sync + 'static) -> Run {
    let work = Arc::new(work);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let cpu0 = process_cpu_us();
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (work, stop, count) = (work.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    work();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("bench thread panicked");
    }
    let n = count.load(Ordering::Relaxed) as f64;
    Run {
        per_sec: n / start.elapsed().as_secs_f64(),
        cpu_us: (process_cpu_us() - cpu0) / n,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut secs: u64 = 5;
    let mut only: Option<String> = None;
    let mut session_counts = vec![1, 2];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--only" => only = args.next(),
            "--sessions" => session_counts = vec![args.next().ok_or("--sessions N")?.parse()?],
            s => secs = s.parse()?,
        }
    }
    let requesters: usize = std::env::var("BENCH_REQUESTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(REQUESTERS);
    let pki = Arc::new(TestPki::new(KeyAlgorithm::P256)?);

    // Raw PKCS#11: one logged-in session per thread, CKM_ECDSA over a SHA-256 digest, nothing else.
    let module = pki.token.module.clone();
    let label = pki.token.label.clone();
    let pin = pki.token.pin().to_string();
    let raw = |threads: usize, copy: bool| {
        let (module, label, pin) = (module.clone(), label.clone(), pin.clone());
        let ctx = ca_core::signer::pkcs11::open_module(&module).expect("module");
        let slot = ctx
            .get_all_slots()
            .expect("slots")
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .map(|i| i.label().trim_end() == label)
                    .unwrap_or(false)
            })
            .expect("token");
        let sessions: Vec<_> = (0..threads)
            .map(|_| {
                let s = ctx.open_rw_session(slot).expect("session");
                let _ = s.login(UserType::User, Some(&AuthPin::from(pin.as_str())));
                let mut key = s
                    .find_objects(&[
                        Attribute::Class(ObjectClass::PRIVATE_KEY),
                        Attribute::Label(ISSUING_KEY.as_bytes().to_vec()),
                    ])
                    .expect("find")[0];
                if copy {
                    // What `Pkcs11Signer` signs with: a session-object copy made in the HSM.
                    key = s
                        .copy_object(key, &[Attribute::Token(false)])
                        .expect("copy");
                }
                std::sync::Mutex::new((s, key))
            })
            .collect();
        let sessions = Arc::new(sessions);
        let next = Arc::new(AtomicU64::new(0));
        let digest = sha2::Sha256::digest(b"benchmark tbs").to_vec();
        run_threads(threads, secs, move || {
            // Each thread sticks to one session (index by a thread-local slot).
            thread_local!(static IDX: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) });
            let i = IDX.with(|c| {
                if c.get().is_none() {
                    c.set(Some(next.fetch_add(1, Ordering::Relaxed) as usize));
                }
                c.get().unwrap_or(0)
            });
            let guard = sessions[i % sessions.len()].lock().expect("lock");
            guard
                .0
                .sign(&Mechanism::Ecdsa, guard.1, &digest)
                .expect("sign");
        })
    };

    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec!["bench.test".to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench.test");
    let csr_der = params.serialize_request(&kp)?.der().to_vec();
    let req = Arc::new(csr::parse_der(&csr_der)?);
    let now = chrono::Utc::now();
    let tok = Arc::new(TokenRecord {
        id: "bench".into(),
        hash: "bench".into(),
        identity: IdentityBinding {
            common_name: Some("bench.test".into()),
            sans: vec!["dns:bench.test".into()],
        },
        profile: "client".into(),
        created_at: now,
        expires_at: now + chrono::Duration::hours(1),
        created_by: "bench".into(),
        used_at: None,
    });
    // The CA's issuing signer with a pool of `sessions` HSM sessions.
    let issuing_signer = |sessions: usize| {
        let mut cfg = pki.token.hsm_config();
        cfg.sessions = sessions;
        Arc::new(
            cfg.open()
                .expect("token")
                .signer(ISSUING_KEY)
                .expect("signer"),
        )
    };
    // The ceiling of any issuance that keeps invariant 3: the CA's own signer (its session pool
    // and session copies) signing a certificate-sized message, then ring verifying the
    // signature, with as many requesters as the issuance case and nothing else (no certificate
    // building, no store).
    let sign_verify = |sessions: usize| {
        let signer = issuing_signer(sessions);
        let tbs = vec![0x5a_u8; 700];
        run_threads(requesters, secs, move || {
            use ca_core::signer::Signer;
            let sig = signer.sign(&tbs).expect("sign");
            ca_core::signer::verify_own(signer.as_ref(), &tbs, &sig).expect("verify");
        })
    };
    let issue = |sessions: usize| {
        let signer = issuing_signer(sessions);
        let ca = Arc::new(
            ca_core::issuance::Ca::new(
                signer,
                pki.issuing_der.clone(),
                vec![pki.root_der.clone()],
                testkit::pki::test_profiles(),
                Default::default(),
                pki.store.clone(),
                Arc::new(ca_core::clock::SystemClock),
            )
            .expect("ca"),
        );
        let (req, tok) = (req.clone(), tok.clone());
        run_threads(requesters, secs, move || {
            ca.prepare(&req, IssueContext::Enrollment { token: &tok })
                .expect("prepare")
                .issue()
                .expect("issue");
        })
    };

    println!("| HSM sessions | raw signs/s, token key object | raw signs/s, session copy of the key (what the signer uses) | CA signer sign + verify only, {requesters} requesters (the ceiling under invariant 3) | ca-core issuances/s (sign + verify + durable store, {requesters} requesters) | ratio to token-object rate | ratio to session-copy rate | ceiling's ratio to session-copy rate |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut cpu_rows = Vec::new();
    for threads in session_counts {
        let (r, rc, sv) = if only.as_deref() == Some("issue") {
            (NOT_RUN, NOT_RUN, NOT_RUN)
        } else {
            (
                raw(threads, false),
                raw(threads, true),
                sign_verify(threads),
            )
        };
        let i = if only.as_deref() == Some("raw") {
            NOT_RUN
        } else {
            issue(threads)
        };
        println!(
            "| {threads} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |",
            r.per_sec,
            rc.per_sec,
            sv.per_sec,
            i.per_sec,
            i.per_sec / r.per_sec,
            i.per_sec / rc.per_sec,
            sv.per_sec / rc.per_sec
        );
        cpu_rows.push((threads, rc, sv, i));
    }
    // Where the CPU goes: with SoftHSM the signature runs on the CA's own cores; a hardware HSM
    // would take it off them, and the CA's own cost per certificate is what is left.
    println!();
    println!("| HSM sessions | CPU per raw signature, session copy (us) | CPU per sign + verify (us) | CPU per issuance (us) | CPU per issuance besides the signature (us) |");
    println!("|---|---|---|---|---|");
    for (threads, rc, sv, i) in cpu_rows {
        println!(
            "| {threads} | {:.0} | {:.0} | {:.0} | {:.0} |",
            rc.cpu_us,
            sv.cpu_us,
            i.cpu_us,
            i.cpu_us - rc.cpu_us
        );
    }
    Ok(())
}
