//! The docs as tests: the shell blocks of README.md and docs/TUTORIAL.md fenced as ```` ```sh test
//! ```` run as a newcomer pastes them, so a command the docs show cannot stop working unnoticed.
//!
//! - Blocks are taken in document order. Consecutive `sh test` blocks of one document run in
//!   one `bash -Eeuo pipefail` (variables, `cd` and sourced files carry over, as in the reader's
//!   shell); any failing command fails the test, and the failure names the document line (the
//!   blocks are sourced from a file that keeps each block at its line of the document).
//! - ```` ```sh test-background ```` marks the command that starts the CA and stays in the
//!   foreground: `scripts/dev.sh [ARGS]`, the only one supported. Building in release takes
//!   minutes, so the runner starts the command the script ends with, `ca-server dev --data
//!   "${CA_DATA:-./ca-data}" ARGS` (checked against scripts/dev.sh), adds `--listen
//!   127.0.0.1:0 --status-listen 127.0.0.1:0` so it never needs 8443/8080, waits until
//!   `ca-data/dev.env` exists and the ready message is printed, then runs the commands that
//!   message tells the user to run "in another shell". Once `dev.env` sets `PATH` itself, those
//!   run with the test process's `PATH` alone, and each binary must resolve to this build's.
//! - Each document starts from a fresh directory laid out like the repository (the tracked
//!   top-level entries as symbolic links) with its own `ca-data`: the developer's `./ca-data`
//!   is never touched. The environment is a new shell's: `HOME` and `TMPDIR` inside the temp
//!   directory, no `CA_*` or `SOFTHSM2_CONF` inherited, and `PATH` led by the directory of the
//!   test build's `ca-server`, `ca-agent`, `ceremony` and `hsm-sim` (built if missing), whether
//!   or not `dev.env` sets `PATH` too. `NGINX_PORT` is a free loopback port (the tutorial's nginx
//!   listens on `${NGINX_PORT:-9443}`).
//! - Everything started is stopped when a document ends, also on failure: the CA and the shell
//!   by process group, and daemons that wrote a pid file under the temp directory (nginx) by
//!   that pid, once their command line shows they run from the temp directory.
//!   `DOCS_TEST_KEEP=1` keeps the temp directories (logs, traces, files) to look at.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER_BIN: &str = env!("CARGO_BIN_EXE_ca-server");
/// The documents, in the order a newcomer reads them.
const DOCS: [&str; 2] = ["README.md", "docs/TUTORIAL.md"];
/// The binaries the docs (and `dev.env`) put on PATH, with the package that builds each.
const BINARIES: [(&str, &str); 4] = [
    ("ca-server", "ca-server"),
    ("ca-agent", "ca-agent"),
    ("ceremony", "ceremonies"),
    ("hsm-sim", "hsm-sim"),
];
/// The command `scripts/dev.sh` ends with (after its release build), as the runner runs it.
const DEV_COMMAND: &str = r#"ca-server dev --data "${CA_DATA:-./ca-data}""#;
const CA_NAME: &str = "ca-server dev";
const CA_READY_WITHIN: Duration = Duration::from_secs(240);
const SESSION_WITHIN: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// ```` ```sh test ````: run, must succeed.
    Run,
    /// ```` ```sh test-background ````: the dev CA, started and awaited.
    Background,
}

#[derive(Debug)]
struct Block {
    kind: Kind,
    /// Line (1-based) of the block's first line in its document.
    line: usize,
    text: String,
}

/// The marked blocks of a Markdown text, in order. Fences are lines starting with three
/// backticks; a marker word the runner does not know fails, so a typo cannot skip a block.
fn marked_blocks(doc: &str, text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<(Option<Kind>, usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match open.take() {
            None if fence => {
                let info: Vec<&str> = line.trim_start()[3..].split_whitespace().collect();
                let kind = match info.as_slice() {
                    ["sh", "test"] => Some(Kind::Run),
                    ["sh", "test-background"] => Some(Kind::Background),
                    [_, marker, ..] if marker.starts_with("test") => {
                        panic!("{doc}:{}: unknown test marker {marker:?}", i + 1)
                    }
                    _ => None,
                };
                open = Some((kind, i + 2, String::new()));
            }
            None => {}
            Some((kind, start, body)) if fence => {
                assert_eq!(line.trim(), "```", "{doc}:{}: fence inside a block", i + 1);
                if let Some(kind) = kind {
                    blocks.push(Block {
                        kind,
                        line: start,
                        text: body,
                    });
                }
            }
            Some((kind, start, mut body)) => {
                body.push_str(line);
                body.push('\n');
                open = Some((kind, start, body));
            }
        }
    }
    assert!(open.is_none(), "{doc}: a code block is not closed");
    blocks
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The directory of the test build's binaries, each built if missing (a `-p ca-server` test
/// run builds only `ca-server`).
fn bin_dir() -> PathBuf {
    let dir = Path::new(SERVER_BIN).parent().unwrap().to_path_buf();
    let missing: Vec<&str> = BINARIES
        .iter()
        .filter(|(bin, _)| !dir.join(bin).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--locked", "--bins"]);
        for pkg in &missing {
            cmd.args(["-p", pkg]);
        }
        let st = cmd
            .env("CARGO_TARGET_DIR", dir.parent().unwrap())
            .current_dir(repo_root())
            .status()
            .expect("cargo build");
        assert!(st.success(), "cargo build of {missing:?} failed");
    }
    for (bin, _) in BINARIES {
        assert!(dir.join(bin).exists(), "no {bin} in {}", dir.display());
    }
    dir
}

/// A free loopback port (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The top-level names of the repository the docs may read: the tracked ones (so files the
/// docs create, which a developer who followed them has in the checkout, are left out), or,
/// without git, everything but build output, data and hidden entries.
fn repo_entries(root: &Path) -> Vec<String> {
    let tracked = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .stderr(Stdio::null())
        .output();
    if let Some(out) = tracked.ok().filter(|o| o.status.success()) {
        let mut names: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let p = String::from_utf8_lossy(p);
                p.split('/').next().unwrap().to_string()
            })
            .collect();
        names.sort();
        names.dedup();
        return names;
    }
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "target" && n != "ca-data")
        .collect()
}

/// Everything one document's run started; stopped when dropped, also when the test fails.
struct Started {
    /// Temp directory whose pid files name daemons the docs started (nginx).
    root: PathBuf,
    /// Process groups (the CA, the shell) by their leaders, until they are reaped.
    groups: Vec<Option<(String, Child)>>,
}

impl Started {
    fn spawn(&mut self, name: &str, mut cmd: Command) -> usize {
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.groups.push(Some((name.to_string(), child)));
        self.groups.len() - 1
    }

    /// The exit status of group `i`'s leader, if it has exited. Then what is left of its group
    /// (a `&` job of a block) is killed at once, before its id could be reused.
    fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let (_, child) = self.groups[i].as_mut()?;
        let status = child.try_wait().unwrap()?;
        signal(&format!("-{}", child.id()), "KILL");
        self.groups[i] = None;
        Some(status)
    }

    /// SIGTERM to group `i`, SIGKILL after `grace`.
    fn stop(&mut self, i: usize, grace: Duration) {
        let Some((_, child)) = self.groups[i].as_ref() else {
            return;
        };
        signal(&format!("-{}", child.id()), "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited(i).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some((name, mut child)) = self.groups[i].take() {
            eprintln!("docs: {name} did not stop within {grace:?}: killed");
            signal(&format!("-{}", child.id()), "KILL");
            let _ = child.wait();
        }
    }

    /// Daemons that left a pid file under the temp directory, when their command line names
    /// the temp directory (so a reused pid is never signalled).
    fn stop_daemons(&self) {
        let mut pidfiles = Vec::new();
        walk(&self.root, &mut |p| {
            if p.extension().is_some_and(|e| e == "pid") {
                pidfiles.push(p.to_path_buf());
            }
        });
        for f in pidfiles {
            let Some(pid) = std::fs::read_to_string(&f)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let ours = || {
                Command::new("ps")
                    .args(["-o", "args=", "-p", &pid.to_string()])
                    .output()
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout).contains(&*self.root.to_string_lossy())
                    })
                    .unwrap_or(false)
            };
            if !ours() {
                continue;
            }
            eprintln!("docs: stopping pid {pid} of {}", f.display());
            signal(&pid.to_string(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while ours() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if ours() {
                signal(&pid.to_string(), "KILL");
            }
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        // The shells first (nothing new starts), then the daemons they left, then the CA.
        for i in (0..self.groups.len()).rev() {
            let is_ca = self.groups[i]
                .as_ref()
                .is_some_and(|(name, _)| name == CA_NAME);
            if !is_ca {
                self.stop(i, Duration::from_secs(5));
            }
        }
        self.stop_daemons();
        for i in 0..self.groups.len() {
            self.stop(i, Duration::from_secs(40));
        }
    }
}

fn signal(target: &str, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", target])
        .stderr(Stdio::null())
        .status();
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&p, f),
            Ok(t) if t.is_file() => f(&p),
            _ => {}
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One document: a fresh repository-shaped directory, its blocks in order.
fn run_document(doc: &str, bins: &Path) -> Duration {
    let started_at = Instant::now();
    let root = repo_root();
    let text = std::fs::read_to_string(root.join(doc)).unwrap();
    let blocks = marked_blocks(doc, &text);
    assert!(
        blocks.iter().any(|b| b.kind == Kind::Run),
        "{doc}: no ```sh test block"
    );

    let tmp = tempfile::Builder::new()
        .prefix("docs-test")
        .tempdir()
        .unwrap();
    // Kept from the start when asked, so a failing run leaves it too.
    let (base, _remove_on_drop) = if std::env::var_os("DOCS_TEST_KEEP").is_some() {
        let kept = tmp.keep();
        eprintln!("docs: {doc}: keeping {}", kept.display());
        (kept, None)
    } else {
        (tmp.path().to_path_buf(), Some(tmp))
    };
    let base = base.canonicalize().unwrap();
    let repo = base.join("repo");
    for sub in ["home", "tmp", "blocks", "logs"] {
        std::fs::create_dir_all(base.join(sub)).unwrap();
    }
    std::fs::create_dir_all(&repo).unwrap();
    for name in repo_entries(&root) {
        std::os::unix::fs::symlink(root.join(&name), repo.join(&name)).unwrap();
    }

    let mut env: BTreeMap<&str, String> = BTreeMap::new();
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    env.insert("PATH", format!("{}:{path}", bins.display()));
    env.insert("HOME", base.join("home").display().to_string());
    env.insert("TMPDIR", base.join("tmp").display().to_string());
    env.insert("NGINX_PORT", free_port().to_string());
    env.insert("TERM", "dumb".into());
    for k in ["USER", "LOGNAME", "LANG", "LC_ALL"] {
        if let Ok(v) = std::env::var(k) {
            env.insert(k, v);
        }
    }
    let command = |program: &str| {
        let mut c = Command::new(program);
        c.env_clear()
            .envs(&env)
            .current_dir(&repo)
            .stdin(Stdio::null());
        c
    };

    let mut started = Started {
        root: base.clone(),
        groups: Vec::new(),
    };
    let mut segment: Vec<&Block> = Vec::new();
    let mut segments = 0;
    for (i, block) in blocks.iter().enumerate() {
        match block.kind {
            Kind::Run => segment.push(block),
            Kind::Background => {
                run_segment(doc, &segment, segments, &base, &command, &mut started);
                segment.clear();
                segments += 1;
                start_ca(doc, block, i, &base, bins, &command, &mut started);
            }
        }
    }
    run_segment(doc, &segment, segments, &base, &command, &mut started);
    drop(started);
    started_at.elapsed()
}

/// Start the dev CA for a `test-background` block and wait until it is ready; then run what
/// its ready message says to run in another shell.
fn start_ca(
    doc: &str,
    block: &Block,
    index: usize,
    base: &Path,
    bins: &Path,
    command: &dyn Fn(&str) -> Command,
    started: &mut Started,
) {
    let line = block.text.trim();
    let args = line
        .strip_prefix("scripts/dev.sh")
        .filter(|rest| !line.contains('\n') && (rest.is_empty() || rest.starts_with(' ')))
        .unwrap_or_else(|| {
            panic!(
                "{doc}:{}: a test-background block must be `scripts/dev.sh [ARGS]`, not {line:?}",
                block.line
            )
        });
    let script = std::fs::read_to_string(repo_root().join("scripts/dev.sh")).unwrap();
    assert!(
        script.contains(DEV_COMMAND.trim_start_matches("ca-server ")),
        "scripts/dev.sh no longer ends with `{DEV_COMMAND}`: update DEV_COMMAND in {}",
        file!()
    );
    let log = base.join("logs").join(format!("ca-{index}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = command("bash");
    cmd.args([
        "-euo",
        "pipefail",
        "-c",
        &format!("exec {DEV_COMMAND} --listen 127.0.0.1:0 --status-listen 127.0.0.1:0{args}"),
    ])
    .stdout(out.try_clone().unwrap())
    .stderr(out);
    let ca = started.spawn(CA_NAME, cmd);
    let env_file = base.join("repo/ca-data/dev.env");
    let deadline = Instant::now() + CA_READY_WITHIN;
    let printed = loop {
        if let Some(status) = started.exited(ca) {
            panic!(
                "{doc}:{}: `{line}` exited with {status}:\n{}",
                block.line,
                tail(&log, 60)
            );
        }
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        let ready = output
            .split_once("In another shell:\n")
            .and_then(|(_, rest)| rest.split_once("\n\n"))
            .map(|(cmds, _)| cmds.to_string());
        if let (true, Some(cmds)) = (env_file.exists(), ready) {
            break cmds;
        }
        assert!(
            Instant::now() < deadline,
            "{doc}:{}: the CA was not ready within {CA_READY_WITHIN:?}:\n{}",
            block.line,
            tail(&log, 60)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "docs: {doc}:{}: CA ready; it prints:\n{printed}",
        block.line
    );
    // What the ready message tells the user to run, as printed.
    let cmds: Vec<&str> = printed.lines().map(str::trim).collect();
    assert!(
        cmds.iter().any(|c| c.starts_with(". ")),
        "the ready message no longer says to source dev.env:\n{printed}"
    );
    let mut cmd = command("bash");
    // Once dev.env puts the binaries on PATH itself, the printed commands get no help: a new
    // shell's PATH, and each binary must resolve to this build's.
    let dev_env = std::fs::read_to_string(&env_file).unwrap();
    let mut script = cmds.join("\n");
    if dev_env.lines().any(|l| l.starts_with("export PATH=")) {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", path);
        for (bin, _) in BINARIES {
            script.push_str(&format!(
                "\ntest \"$(command -v {bin})\" = {}",
                shell_quote(&bins.join(bin).display().to_string())
            ));
        }
    }
    // In a directory of their own that sees the same `ca-data`: they write the same files
    // (`web1.*`) as the README block after them, which a reader runs instead, not as well.
    let printed_dir = base.join("printed");
    std::fs::create_dir_all(&printed_dir).unwrap();
    let repo = env_file.parent().and_then(Path::parent).unwrap();
    std::os::unix::fs::symlink(repo.join("ca-data"), printed_dir.join("ca-data")).unwrap();
    cmd.current_dir(&printed_dir);
    cmd.args(["-euo", "pipefail", "-c", &script]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "the commands `ca-server dev` prints failed:\n{printed}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run consecutive `sh test` blocks in one shell. The blocks are written to a file named after
/// the document, each at its document line (other lines blank), and sourced, so traces and
/// errors give the document's line numbers.
fn run_segment(
    doc: &str,
    blocks: &[&Block],
    index: usize,
    base: &Path,
    command: &dyn Fn(&str) -> Command,
    started: &mut Started,
) {
    if blocks.is_empty() {
        return;
    }
    let mut lines: Vec<String> = Vec::new();
    for b in blocks {
        while lines.len() + 1 < b.line {
            lines.push(String::new());
        }
        lines.extend(b.text.lines().map(str::to_string));
    }
    let file = base.join("blocks").join(format!("{index}")).join(doc);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let driver = format!(
        "set -Eeuo pipefail\n\
         trap 'echo \"docs test: failed at ${{BASH_SOURCE[0]#*/blocks/*/}}:$LINENO: $BASH_COMMAND\" >&2' ERR\n\
         PS4='+ ${{BASH_SOURCE[0]#*/blocks/*/}}:$LINENO: '\n\
         set -x\n\
         source {}\n",
        shell_quote(&file.display().to_string())
    );
    let log = base.join("logs").join(format!("session-{index}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let driver_file = base.join("blocks").join(format!("{index}.sh"));
    std::fs::write(&driver_file, driver).unwrap();
    let mut cmd = command("bash");
    cmd.args(["-euo", "pipefail"])
        .arg(&driver_file)
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let t = Instant::now();
    let shell = started.spawn(&format!("{doc} blocks"), cmd);
    let deadline = t + SESSION_WITHIN;
    let status = loop {
        if let Some(st) = started.exited(shell) {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let first = blocks[0].line;
    let daemon_logs = collect_logs(base);
    match status {
        Some(st) if st.success() => eprintln!(
            "docs: {doc} from line {first}: {} blocks ok in {:.1}s",
            blocks.len(),
            t.elapsed().as_secs_f64()
        ),
        Some(st) => panic!(
            "{doc}: the blocks from line {first} failed ({st}):\n{}\n{daemon_logs}",
            tail(&log, 120)
        ),
        None => panic!(
            "{doc}: the blocks from line {first} did not finish within {SESSION_WITHIN:?}:\n{}\n{daemon_logs}",
            tail(&log, 120)
        ),
    }
}

/// The last lines of the error logs the docs' daemons wrote (nginx), for a failure message.
fn collect_logs(base: &Path) -> String {
    let mut out = String::new();
    walk(&base.join("repo"), &mut |p| {
        if p.file_name().is_some_and(|n| n == "error.log") {
            out.push_str(&format!("--- {}\n{}\n", p.display(), tail(p, 30)));
        }
    });
    out
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn marked_blocks_are_found_in_order_with_their_lines() {
    let text = "# T\n\n```sh test-background\nscripts/dev.sh\n```\n\n```sh\nnot run\n```\n\n\
                ```sh test\na\nb\n```\n```toml\nx = 1\n```\n";
    let b = marked_blocks("t.md", text);
    assert_eq!(b.len(), 2);
    assert_eq!(
        (b[0].kind, b[0].line, b[0].text.as_str()),
        (Kind::Background, 4, "scripts/dev.sh\n")
    );
    assert_eq!(
        (b[1].kind, b[1].line, b[1].text.as_str()),
        (Kind::Run, 12, "a\nb\n")
    );
}

#[test]
#[should_panic(expected = "unknown test marker")]
fn a_misspelt_marker_fails() {
    marked_blocks("t.md", "```sh test-backgruond\nx\n```\n");
}

/// README.md, then docs/TUTORIAL.md, each from a fresh directory with its own dev CA.
#[test]
fn readme_and_tutorial_commands_work_as_written() {
    let t = Instant::now();
    let bins = bin_dir();
    let built = t.elapsed();
    for doc in DOCS {
        let took = run_document(doc, &bins);
        eprintln!("docs: {doc}: {:.1}s", took.as_secs_f64());
    }
    eprintln!(
        "docs: all documents in {:.1}s (binaries ready after {:.1}s)",
        t.elapsed().as_secs_f64(),
        built.as_secs_f64()
    );
}
