//! Assertions the binaries' tests share (feature `check`, for dev-dependencies only): the
//! shape of `--version` and the generated man pages and completion scripts.

use std::path::Path;
use std::process::Command;

/// Check a `--version` line: `BIN VERSION (commit C)` where C is `HASH[-dirty], YYYY-MM-DD`
/// (git), a `CA_GIT_COMMIT` value, or `unknown`. In a git checkout of this workspace HASH must
/// be HEAD's (`git rev-parse --short=12 HEAD`), run in `manifest_dir`.
pub fn version_line(
    line: &str,
    bin: &str,
    version: &str,
    manifest_dir: &Path,
) -> Result<(), String> {
    let line = line.trim_end();
    let prefix = format!("{bin} {version} (commit ");
    let commit = line
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(')'))
        .ok_or_else(|| format!("{line:?} is not `{prefix}...)`"))?;
    let head = crate::build::head(manifest_dir);
    match (head, commit.split_once(", ")) {
        (Some(head), Some((hash, date))) => {
            let hash = hash.strip_suffix("-dirty").unwrap_or(hash);
            if hash != head {
                return Err(format!("commit {hash} in {line:?}, but HEAD is {head}"));
            }
            let d = date.as_bytes();
            let date_ok = d.len() == 10
                && d.iter().enumerate().all(|(i, b)| {
                    if i == 4 || i == 7 {
                        *b == b'-'
                    } else {
                        b.is_ascii_digit()
                    }
                });
            if !date_ok {
                return Err(format!("{date:?} in {line:?} is not YYYY-MM-DD"));
            }
            Ok(())
        }
        (Some(head), None) => Err(format!(
            "{line:?}: built in a git checkout (HEAD {head}) but the commit is {commit:?}"
        )),
        // Outside git: CA_GIT_COMMIT or `unknown`.
        (None, _) if std::env::var(crate::build::COMMIT_ENV).as_deref() == Ok(commit) => Ok(()),
        (None, _) if commit == "unknown" => Ok(()),
        (None, _) => Err(format!(
            "{line:?}: unexpected commit {commit:?} outside git"
        )),
    }
}

/// Render a man page the way `man` would and fail on any roff warning: `groff -man -ww -z`
/// (warnings only, no output), or `mandoc -T lint` when groff is missing. `Ok(false)` when
/// neither is installed (the caller then checks the text itself).
pub fn render_man_page(path: &Path) -> Result<bool, String> {
    let run = |prog: &str, args: &[&str]| -> Option<std::process::Output> {
        Command::new(prog).args(args).arg(path).output().ok()
    };
    if let Some(out) = run("groff", &["-man", "-Tutf8", "-ww", "-z"]) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !stderr.trim().is_empty() {
            return Err(format!("groff on {}: {stderr}", path.display()));
        }
        return Ok(true);
    }
    if let Some(out) = run("mandoc", &["-T", "lint", "-W", "warning"]) {
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.trim().is_empty() {
            return Err(format!("mandoc on {}: {text}", path.display()));
        }
        return Ok(true);
    }
    Ok(false)
}

fn run(bin: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| format!("running {} {args:?}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {args:?}: {}\n{}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{} {args:?}: {e}", bin.display()))
}

/// What bash completes for `words` (the command line so far, the binary's name first, the
/// last word the one being completed), with the script `BIN completions bash` prints loaded
/// into a real bash, as `complete -F` would call it.
pub fn bash_complete(bin: &Path, words: &[&str]) -> Result<Vec<String>, String> {
    let script = run(bin, &["completions", "bash"])?;
    let name = words.first().ok_or("no words")?;
    let quoted: Vec<String> = words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect();
    let line = words.join(" ");
    // The function the script registers for NAME: `complete -F FUNCTION [-o ...] NAME`.
    let function = script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("complete -F "))
        .find(|rest| rest.split_whitespace().last() == Some(name))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| format!("no `complete -F FUNCTION ... {name}` in the bash script"))?;
    let program = format!(
        "{script}\nCOMP_WORDS=({words})\nCOMP_CWORD={cword}\nCOMP_LINE='{line}'\nCOMP_POINT={point}\n\
         {function} {name} {cur} {prev}\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        words = quoted.join(" "),
        cword = words.len() - 1,
        point = line.len(),
        cur = quoted.last().map(String::as_str).unwrap_or("''"),
        prev = quoted
            .len()
            .checked_sub(2)
            .map(|i| quoted[i].as_str())
            .unwrap_or("''"),
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .map_err(|e| format!("running bash: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "bash completion of {words:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// Run `BIN completions SHELL` for every shell: each prints a non-empty script naming the
/// binary; bash's and zsh's (when zsh is installed) parse (`-n`).
pub fn completion_scripts(bin: &Path, name: &str) -> Result<(), String> {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = run(bin, &["completions", shell])?;
        if !script.contains(name) {
            return Err(format!(
                "the {shell} completion script does not name {name}"
            ));
        }
        let parses = |sh: &str| -> Result<(), String> {
            let Ok(out) = Command::new(sh).args(["-n", "-c", &script]).output() else {
                return Ok(()); // not installed
            };
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{sh} -n on the {shell} script: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        match shell {
            "bash" => parses("bash")?,
            "zsh" => parses("zsh")?,
            _ => {}
        }
    }
    Ok(())
}

/// Run `BIN manpages --dir DIR` (DIR empty or new): the pages it writes must be the files
/// it lists, include every name of `expected` (`ca-server`, `ca-server-token-create`, ...)
/// and no `help` page, and each must render without a warning ([`render_man_page`]; when
/// neither groff nor mandoc is installed, start with `.TH` and name the command). Returns the
/// page names, sorted.
pub fn man_pages(bin: &Path, dir: &Path, expected: &[&str]) -> Result<Vec<String>, String> {
    let listed = run(bin, &["manpages", "--dir", &dir.display().to_string()])?;
    let mut names = Vec::new();
    for line in listed.lines() {
        let path = Path::new(line);
        if path.parent() != Some(dir) {
            return Err(format!("{line} is not in {}", dir.display()));
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".1"))
            .ok_or_else(|| format!("{line} is not a section 1 page"))?
            .to_string();
        if name.split('-').any(|part| part == "help") {
            return Err(format!("a page for the help subcommand: {line}"));
        }
        let roff = std::fs::read_to_string(path).map_err(|e| format!("{line}: {e}"))?;
        if !render_man_page(path)?
            && !roff
                .lines()
                .any(|l| l.starts_with(&format!(".TH {name} 1")))
        {
            return Err(format!("{line} has no `.TH {name} 1` line"));
        }
        names.push(name);
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".1").map(String::from))
        .collect();
    on_disk.sort();
    names.sort();
    if on_disk != names {
        return Err(format!("listed {names:?}, on disk {on_disk:?}"));
    }
    for e in expected {
        if !names.iter().any(|n| n == e) {
            return Err(format!("no page {e}.1 among {names:?}"));
        }
    }
    Ok(names)
}
