//! Load generator for `bench/api.sh`: certificates per second through the HTTPS API.
//!
//! Untimed setup: mint one enrollment token per enrollment through the admin API, generate a
//! fresh P-256 key and CSR for every request. Timed: `POST /v1/enroll` with those tokens over
//! `--conns` keep-alive TLS connections (default 16), then `POST /v1/renew` in as many
//! renewal chains: each starts from one of the certificates just enrolled and renews the newest
//! generation again and again, each renewal over a fresh mTLS connection authenticated by the
//! certificate the previous one returned, with a new key (only the newest generation of a
//! lineage may renew, as an agent does). Every answer must be `200` with a certificate for the
//! requested name; serials must all differ.
//!
//! Reports per phase: certificates/s, p50/p99/max latency, errors, the generator's own CPU
//! (user+sys from `/proc/self/stat`) as a share of the machine (wall time x cores), and the
//! server's when `--server-pid` is given; with `--db-comm NAME` (`postgres`), the CPU of the
//! processes of that name (the database's) and the server's and database's CPU per certificate,
//! a cost that other load on the machine does not change.
//!
//! Usage: `bench_api --url https://127.0.0.1:PORT --root ROOT.pem --admin-cert C --admin-key K
//! [--enroll N] [--renew N] [--revoke N] [--conns 16] [--server-pid PID] [--db-comm NAME]`
//!
//! `--revoke N` (default 0): after the other phases, revoke the first N certificates enrolled
//! (`POST /v1/admin/revoke`, reason cessationOfOperation) over `--conns` admin mTLS
//! connections; reported as the `revoke` phase (revocations/s, p50/p99).
//!
//! Several nodes (one store): `--url URL1,URL2 --server-pid PID1,PID2`; connection (or renewal
//! chain) `i` goes to node `i % n`, and the server CPU is the nodes' sum.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

/// mimalloc, as in the `ca-server` binary: glibc malloc cost 15% of the CPU per certificate.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context};
use ca_server::api::types::{IssuedResponse, TokenCreateRequest, TokenCreateResponse};
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

struct Args {
    url: Vec<String>,
    root: String,
    admin_cert: String,
    admin_key: String,
    enroll: usize,
    renew: usize,
    revoke: usize,
    conns: usize,
    server_pid: Vec<u32>,
    db_comm: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        url: Vec::new(),
        root: String::new(),
        admin_cert: String::new(),
        admin_key: String::new(),
        enroll: 10_000,
        renew: 10_000,
        revoke: 0,
        conns: 16,
        server_pid: Vec::new(),
        db_comm: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--url" => a.url = v()?.split(',').map(str::to_string).collect(),
            "--root" => a.root = v()?,
            "--admin-cert" => a.admin_cert = v()?,
            "--admin-key" => a.admin_key = v()?,
            "--enroll" => a.enroll = v()?.parse()?,
            "--renew" => a.renew = v()?.parse()?,
            "--revoke" => a.revoke = v()?.parse()?,
            "--conns" => a.conns = v()?.parse()?,
            "--server-pid" => {
                a.server_pid = v()?.split(',').map(str::parse).collect::<Result<_, _>>()?
            }
            "--db-comm" => a.db_comm = Some(v()?),
            _ => bail!("unknown argument {k}"),
        }
    }
    if a.url.is_empty() || a.root.is_empty() || a.admin_cert.is_empty() || a.admin_key.is_empty() {
        bail!("usage: bench_api --url URL --root PEM --admin-cert PEM --admin-key PEM [--enroll N] [--renew N] [--revoke N] [--conns N] [--server-pid PID] [--db-comm NAME]");
    }
    Ok(a)
}

/// user+sys CPU seconds of a process, from /proc/PID/stat (fields 14 and 15, clock ticks).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may contain spaces; fields after it start past the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// The command name whose processes are the database (`--db-comm`), set once at start.
static DB_COMM: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// user+sys CPU seconds of every running process named [`DB_COMM`], by PID (empty without
/// `--db-comm`). A PostgreSQL backend's command name is `postgres`.
fn db_cpu() -> HashMap<u32, f64> {
    let Some(comm) = DB_COMM.get() else {
        return HashMap::new();
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .map(|pid| (pid, cpu_seconds(&pid.to_string())))
        .collect()
}

/// Busy (non-idle) CPU seconds of the whole machine, from /proc/stat.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait.
    let all: f64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0.0) + f.get(4).copied().unwrap_or(0.0);
    (all - idle) / 100.0
}

/// The machine's online CPUs (the `cpuN` lines of /proc/stat), not this process's share of
/// them: shares are of the machine even when the generator is pinned to one CPU.
fn cores() -> f64 {
    let n = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    if n > 0 {
        n as f64
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
    }
}

fn tls_config(
    root_pem: &[u8],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &root_pem[..]) {
        roots.add(c?)?;
    }
    let b = ClientConfig::builder_with_provider(ca_server::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    Ok(Arc::new(match identity {
        Some((chain, key)) => b.with_client_auth_cert(chain, key)?,
        None => b.with_no_client_auth(),
    }))
}

struct Target {
    host: String,
    port: u16,
    authority: String,
}

async fn connect(t: &Target, tls: Arc<ClientConfig>) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(t.host.clone())?;
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn post(
    s: &mut SendRequest<Full<Bytes>>,
    t: &Target,
    path: &str,
    body: Bytes,
) -> anyhow::Result<(StatusCode, Bytes)> {
    s.ready().await?;
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, &t.authority)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let resp = s.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// A P-256 key and a CSR for `cn` (PEM), made before the timed part.
fn key_and_csr(cn: &str) -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

/// Run `f` over items on 2 threads (setup only).
fn par_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let n = items.len();
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    let half = n / 2;
    let (a, b) = slots.split_at_mut(half);
    let (ra, rb) = std::thread::scope(|s| {
        let f = &f;
        let ha = s.spawn(move || {
            a.iter_mut()
                .map(|x| f(x.take().unwrap()))
                .collect::<Vec<_>>()
        });
        let hb = s.spawn(move || {
            b.iter_mut()
                .map(|x| f(x.take().unwrap()))
                .collect::<Vec<_>>()
        });
        (ha.join().unwrap(), hb.join().unwrap())
    });
    ra.into_iter().chain(rb).collect()
}

struct Job {
    body: Bytes,
}

#[derive(Default)]
struct PhaseResult {
    done: usize,
    errors: Vec<String>,
    secs: f64,
    lat_us: Vec<u32>,
    gen_cpu: f64,
    server_cpu: Option<f64>,
    /// CPU of the database's processes (`--db-comm`): those running at the end, less what
    /// they had used at the start.
    db_cpu: Option<f64>,
    machine_busy: f64,
    serials: Vec<String>,
    issued: Vec<(usize, IssuedResponse)>,
}

/// The clocks a phase is measured with: wall time, the generator's and the server's CPU, and
/// the machine's busy time.
struct Meter {
    start: Instant,
    gen0: f64,
    /// The server processes and their CPU seconds at the start.
    server: Vec<(u32, f64)>,
    db: HashMap<u32, f64>,
    busy0: f64,
}

impl Meter {
    fn start(server_pids: &[u32]) -> Self {
        Meter {
            gen0: cpu_seconds("self"),
            server: server_pids
                .iter()
                .map(|p| (*p, cpu_seconds(&p.to_string())))
                .collect(),
            db: db_cpu(),
            busy0: machine_busy_seconds(),
            start: Instant::now(),
        }
    }

    /// Fill `r`'s timings and sort its latencies.
    fn finish(self, r: &mut PhaseResult) {
        r.secs = self.start.elapsed().as_secs_f64();
        r.gen_cpu = cpu_seconds("self") - self.gen0;
        r.machine_busy = machine_busy_seconds() - self.busy0;
        r.server_cpu = (!self.server.is_empty()).then(|| {
            self.server
                .iter()
                .map(|(p, s0)| cpu_seconds(&p.to_string()) - s0)
                .sum()
        });
        r.db_cpu = DB_COMM.get().map(|_| {
            db_cpu()
                .iter()
                .map(|(p, c)| c - self.db.get(p).copied().unwrap_or(0.0))
                .sum()
        });
        r.done = r.lat_us.len();
        r.lat_us.sort_unstable();
    }
}

/// Send every job over `senders` (one task per connection, each taking the next job), timed.
#[allow(clippy::too_many_arguments)]
async fn run_phase(
    targets: &[Arc<Target>],
    senders: Vec<SendRequest<Full<Bytes>>>,
    path: &'static str,
    jobs: Arc<Vec<Job>>,
    jobs_of: Option<Arc<Vec<Vec<usize>>>>,
    keep: usize,
    server_pids: &[u32],
    expect_cert: bool,
) -> anyhow::Result<PhaseResult> {
    let next = Arc::new(AtomicUsize::new(0));
    let meter = Meter::start(server_pids);
    let mut tasks = Vec::new();
    for (ci, mut s) in senders.into_iter().enumerate() {
        let (target, jobs, next, jobs_of) = (
            targets[ci % targets.len()].clone(),
            jobs.clone(),
            next.clone(),
            jobs_of.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = Vec::new();
            let mut serials = Vec::new();
            let mut issued = Vec::new();
            let mut own = 0usize;
            loop {
                // Enrollment: any connection takes the next job; renewal: a connection's own
                // jobs (its certificate's identity).
                let i = match &jobs_of {
                    None => next.fetch_add(1, Ordering::Relaxed),
                    Some(per) => match per[ci].get(own) {
                        Some(&i) => {
                            own += 1;
                            i
                        }
                        None => break,
                    },
                };
                let Some(job) = jobs.get(i) else { break };
                let t0 = Instant::now();
                match post(&mut s, &target, path, job.body.clone()).await {
                    Ok((StatusCode::OK, _)) if !expect_cert => {
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok((StatusCode::OK, body)) => {
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        match serde_json::from_slice::<IssuedResponse>(&body) {
                            Ok(r) => {
                                serials.push(r.serial.clone());
                                if i < keep {
                                    issued.push((i, r));
                                }
                            }
                            Err(e) => errors.push(format!("bad JSON answer: {e}")),
                        }
                    }
                    Ok((status, body)) => {
                        errors.push(format!("{status} {}", String::from_utf8_lossy(&body)))
                    }
                    Err(e) => {
                        errors.push(format!("connection: {e}"));
                        break;
                    }
                }
            }
            (lat, errors, serials, issued)
        }));
    }
    let mut r = PhaseResult::default();
    for t in tasks {
        let (lat, errors, serials, issued) = t.await?;
        r.lat_us.extend(lat);
        r.errors.extend(errors);
        r.serials.extend(serials);
        r.issued.extend(issued);
    }
    meter.finish(&mut r);
    Ok(r)
}

/// A certificate (PEM) and its private key (PKCS#8 DER).
type Identity = (String, Vec<u8>);

/// One renewal chain: the identity it starts from, then each renewal's new key (PKCS#8 DER)
/// and request body.
type Chain = (Identity, Vec<(Vec<u8>, Bytes)>);

/// Renewal chains: each chain renews its identity once per job, over a fresh mTLS connection
/// authenticated by the certificate the previous renewal returned.
async fn run_renew_chains(
    targets: &[Arc<Target>],
    root_pem: Vec<u8>,
    chains: Vec<Chain>,
    server_pids: &[u32],
) -> anyhow::Result<PhaseResult> {
    let meter = Meter::start(server_pids);
    let mut tasks = Vec::new();
    for (ci, ((mut cert, mut key), jobs)) in chains.into_iter().enumerate() {
        let (target, root_pem) = (targets[ci % targets.len()].clone(), root_pem.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut serials) = (Vec::new(), Vec::new(), Vec::new());
            for (new_key, body) in jobs {
                let t0 = Instant::now();
                let attempt = async {
                    let chain: Vec<CertificateDer<'static>> =
                        rustls_pemfile::certs(&mut cert.as_bytes()).collect::<Result<_, _>>()?;
                    let pk = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone()));
                    let mut s = connect(&target, tls_config(&root_pem, Some((chain, pk)))?).await?;
                    post(&mut s, &target, "/v1/renew", body).await
                };
                match attempt.await {
                    Ok((StatusCode::OK, body)) => {
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        match serde_json::from_slice::<IssuedResponse>(&body) {
                            Ok(r) => {
                                serials.push(r.serial.clone());
                                cert = r.certificate;
                                key = new_key;
                            }
                            Err(e) => {
                                errors.push(format!("bad JSON answer: {e}"));
                                break;
                            }
                        }
                    }
                    Ok((status, body)) => {
                        errors.push(format!("{status} {}", String::from_utf8_lossy(&body)));
                        break;
                    }
                    Err(e) => {
                        errors.push(format!("connection: {e}"));
                        break;
                    }
                }
            }
            (lat, errors, serials)
        }));
    }
    let mut r = PhaseResult::default();
    for t in tasks {
        let (lat, errors, serials) = t.await?;
        r.lat_us.extend(lat);
        r.errors.extend(errors);
        r.serials.extend(serials);
    }
    meter.finish(&mut r);
    Ok(r)
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn report(name: &str, conns: usize, r: &PhaseResult) {
    let wall_cores = r.secs * cores();
    let srv = r
        .server_cpu
        .map(|c| format!("{:.0}%", 100.0 * c / wall_cores))
        .unwrap_or_else(|| "-".into());
    // Everything else that ran meanwhile (other builds on a shared machine): the noise.
    let db = r
        .db_cpu
        .map(|c| format!("{:.0}%", 100.0 * c / wall_cores))
        .unwrap_or_else(|| "-".into());
    // Server and database CPU per certificate: the cost, whatever else ran meanwhile.
    let per_cert = r
        .server_cpu
        .filter(|_| r.done > 0)
        .map(|c| {
            format!(
                "{:.2}",
                1000.0 * (c + r.db_cpu.unwrap_or(0.0)) / r.done as f64
            )
        })
        .unwrap_or_else(|| "-".into());
    let others = r.machine_busy - r.gen_cpu - r.server_cpu.unwrap_or(0.0) - r.db_cpu.unwrap_or(0.0);
    println!(
        "| {name} | {conns} | {} | {:.1} | **{:.0}** | {:.1} | {:.1} | {:.1} | {} | {:.0}% | {srv} | {db} | {per_cert} | {:.0}% |",
        r.done,
        r.secs,
        r.done as f64 / r.secs,
        pct(&r.lat_us, 0.50),
        pct(&r.lat_us, 0.99),
        pct(&r.lat_us, 1.0),
        r.errors.len(),
        100.0 * r.gen_cpu / wall_cores,
        100.0 * others.max(0.0) / wall_cores,
    );
    for e in r.errors.iter().take(5) {
        eprintln!("{name} error: {e}");
    }
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    if let Some(c) = &a.db_comm {
        let _ = DB_COMM.set(c.clone());
    }
    let mut targets = Vec::new();
    for url in &a.url {
        let uri: http::Uri = url.parse()?;
        let host = uri
            .host()
            .context("URL host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        targets.push(Arc::new(Target {
            port: uri.port_u16().unwrap_or(443),
            authority: uri.authority().context("URL")?.to_string(),
            host,
        }));
    }
    // Tokens are minted on the first node (the store is shared).
    let target = targets[0].clone();
    let root_pem = std::fs::read(&a.root)?;
    let admin_chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut &std::fs::read(&a.admin_cert)?[..]).collect::<Result<_, _>>()?;
    let admin_key = rustls_pemfile::private_key(&mut &std::fs::read(&a.admin_key)?[..])?
        .context("admin key")?;
    let admin_tls = tls_config(&root_pem, Some((admin_chain, admin_key)))?;
    let plain_tls = tls_config(&root_pem, None)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let run_id: u32 = rand::random();

    // ---- Setup (untimed): tokens and CSRs.
    eprintln!(
        "setup: minting {} tokens, generating {} enrollment and {} renewal keys/CSRs",
        a.enroll, a.enroll, a.renew
    );
    let names: Vec<String> = (0..a.enroll)
        .map(|i| format!("e{i}-{run_id:08x}.bench.example"))
        .collect();
    let tokens: Vec<String> = rt.block_on(async {
        let next = Arc::new(AtomicUsize::new(0));
        let names = Arc::new(names.clone());
        let mut tasks = Vec::new();
        for _ in 0..a.conns {
            let (target, tls, next, names) = (
                target.clone(),
                admin_tls.clone(),
                next.clone(),
                names.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut s = connect(&target, tls).await?;
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(cn) = names.get(i) else { break };
                    let body = serde_json::to_vec(&TokenCreateRequest {
                        common_name: Some(cn.clone()),
                        sans: vec![format!("dns:{cn}")],
                        profile: Some("client".into()),
                        ttl: Some("2h".into()),
                    })?;
                    let (status, body) =
                        post(&mut s, &target, "/v1/admin/tokens", body.into()).await?;
                    if status != StatusCode::OK {
                        bail!("token create: {status} {}", String::from_utf8_lossy(&body));
                    }
                    let t: TokenCreateResponse = serde_json::from_slice(&body)?;
                    out.push((i, t.token));
                }
                Ok::<_, anyhow::Error>(out)
            }));
        }
        let mut all = vec![String::new(); names.len()];
        for t in tasks {
            for (i, tok) in t.await?? {
                all[i] = tok;
            }
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    let enroll_keys = par_map(names.clone(), |cn| key_and_csr(&cn));
    let enroll_jobs: Vec<Job> = enroll_keys
        .iter()
        .zip(&tokens)
        .map(|((_, csr), token)| Job {
            body: serde_json::to_vec(&serde_json::json!({ "token": token, "csr": csr }))
                .unwrap()
                .into(),
        })
        .collect();
    let renew_conns = a.conns.min(a.enroll);
    // Renewal j is sent by connection j % renew_conns, authenticated by enrolled cert j % renew_conns.
    let renew_inputs: Vec<(usize, String)> = (0..a.renew)
        .map(|j| (j % renew_conns, names[j % renew_conns].clone()))
        .collect();
    let renew_csrs = par_map(renew_inputs, |(c, cn)| {
        let (key, csr) = key_and_csr(&cn);
        (c, key.serialize_der(), csr)
    });

    // ---- Timed: enrollment.
    let enroll_jobs = Arc::new(enroll_jobs);
    let senders = rt.block_on(async {
        let mut v = Vec::new();
        for ci in 0..a.conns {
            v.push(connect(&targets[ci % targets.len()], plain_tls.clone()).await?);
        }
        Ok::<_, anyhow::Error>(v)
    })?;
    eprintln!("enroll: {} requests over {} connections", a.enroll, a.conns);
    let er = rt.block_on(run_phase(
        &targets,
        senders,
        "/v1/enroll",
        enroll_jobs.clone(),
        None,
        renew_conns,
        &a.server_pid,
        true,
    ))?;

    println!("| phase | connections | certificates | seconds | certificates/s | p50 ms | p99 ms | max ms | errors | generator CPU (share of {} cores) | server CPU (share) | database CPU (share) | server + database CPU ms per certificate | other processes' CPU (share) |", cores());
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    report("enroll", a.conns, &er);

    // ---- Timed: renewal over mTLS with the first enrolled certificates.
    let mut rr = None;
    if a.renew > 0 {
        let mut issued = er.issued.clone();
        issued.sort_by_key(|(i, _)| *i);
        if issued.len() < renew_conns {
            bail!(
                "only {} of the first {renew_conns} enrollments succeeded; cannot renew",
                issued.len()
            );
        }
        // Each connection renews its own certificate again and again: every renewal is a
        // fresh mTLS handshake with the newest generation (the one the previous renewal
        // returned), as an agent does; only the newest generation of a lineage may renew.
        let mut chains: Vec<Chain> = Vec::new();
        for (i, r) in issued.iter().take(renew_conns) {
            chains.push((
                (r.certificate.clone(), enroll_keys[*i].0.serialize_der()),
                Vec::new(),
            ));
        }
        for (c, key, csr) in renew_csrs {
            let body: Bytes = serde_json::to_vec(&serde_json::json!({ "csr": csr }))
                .unwrap()
                .into();
            chains[c].1.push((key, body));
        }
        eprintln!(
            "renew: {} requests over {} chains of fresh mTLS connections",
            a.renew, renew_conns
        );
        let r = rt.block_on(run_renew_chains(
            &targets,
            root_pem.clone(),
            chains,
            &a.server_pid,
        ))?;
        report("renew (mTLS)", renew_conns, &r);
        rr = Some(r);
    }

    // ---- Timed: revocation of the first certificates enrolled, through the admin API.
    let mut vr = None;
    if a.revoke > 0 {
        let jobs: Vec<Job> = er
            .serials
            .iter()
            .take(a.revoke)
            .map(|serial| Job {
                body: serde_json::to_vec(&serde_json::json!({
                    "serial": serial,
                    "reason": "cessationOfOperation",
                }))
                .unwrap()
                .into(),
            })
            .collect();
        let senders = rt.block_on(async {
            let mut v = Vec::new();
            for ci in 0..a.conns {
                v.push(connect(&targets[ci % targets.len()], admin_tls.clone()).await?);
            }
            Ok::<_, anyhow::Error>(v)
        })?;
        eprintln!(
            "revoke: {} requests over {} admin connections",
            jobs.len(),
            a.conns
        );
        let r = rt.block_on(run_phase(
            &targets,
            senders,
            "/v1/admin/revoke",
            Arc::new(jobs),
            None,
            0,
            &a.server_pid,
            false,
        ))?;
        report("revoke", a.conns, &r);
        vr = Some(r);
    }

    // ---- Checks (untimed): every serial distinct, the kept certificates carry their names.
    let mut seen = HashSet::new();
    let all = er
        .serials
        .iter()
        .chain(rr.iter().flat_map(|r| r.serials.iter()));
    let mut total = 0;
    for s in all {
        total += 1;
        if !seen.insert(s.clone()) {
            bail!("serial {s} issued twice");
        }
    }
    for (i, r) in &er.issued {
        let der = rustls_pemfile::certs(&mut r.certificate.as_bytes())
            .next()
            .context("no cert")??;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or("");
        if cn != names[*i] {
            bail!(
                "enrollment {i}: certificate for {cn:?}, expected {:?}",
                names[*i]
            );
        }
    }
    let errors = er.errors.len()
        + rr.as_ref().map_or(0, |r| r.errors.len())
        + vr.as_ref().map_or(0, |r| r.errors.len());
    if let Some(e) = vr.as_ref().and_then(|r| r.errors.first()) {
        eprintln!("first revocation error: {e}");
    }
    eprintln!("checked: {total} distinct serials, {errors} errors");
    // How the OCSP responses signed at issuance were grouped (server metrics).
    let mut metrics = Vec::new();
    for target in &targets {
        metrics.push(rt.block_on(async {
            let mut s = connect(target, tls_config(&root_pem, None)?).await?;
            let req = Request::builder()
                .uri("/metrics")
                .header(header::HOST, &target.authority)
                .body(Full::new(Bytes::new()))?;
            let body = s.send_request(req).await?.into_body().collect().await?;
            Ok::<_, anyhow::Error>(String::from_utf8_lossy(&body.to_bytes()).into_owned())
        })?);
    }
    // Summed over the nodes.
    let counter = |name: &str| {
        metrics
            .iter()
            .map(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            })
            .sum::<Option<f64>>()
    };
    if let (Some(sigs), Some(certs)) = (
        counter("ca_ocsp_issuance_signatures_total "),
        counter("ca_ocsp_issuance_certificates_total "),
    ) {
        println!();
        println!(
            "OCSP responses signed at issuance: {sigs:.0} for {certs:.0} certificates (mean group {:.2}).",
            certs / sigs.max(1.0)
        );
    }
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}
