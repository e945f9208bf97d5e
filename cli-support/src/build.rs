//! For build scripts: find the git commit the crate is built from and hand it to the crate as
//! the compile-time variable `CA_BUILD_COMMIT` (read by [`crate::version!`]).
//!
//! In order: `git` in the workspace checkout (`git rev-parse --short=12 HEAD`, `-dirty` when a
//! tracked file differs from HEAD, and the commit date); else the environment variable
//! `CA_GIT_COMMIT` (a build outside git, e.g. from a source tarball:
//! `CA_GIT_COMMIT=03b27ff1a2b3 cargo build ...`); else `unknown`.
//!
//! The script is re-run when HEAD or the branch it points to moves, when `CA_GIT_COMMIT`
//! changes, and when the crate's own sources change (which rebuilds the crate anyway), not on
//! every build. `-dirty` therefore describes the tree as it was the last time one of those
//! changed: a release built from a clean checkout says what it was built from.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable a build outside a git checkout takes the commit from.
pub const COMMIT_ENV: &str = "CA_GIT_COMMIT";

/// The compile-time variable the build script sets for the crate.
pub const BUILD_COMMIT_VAR: &str = "CA_BUILD_COMMIT";

/// Run from a crate's `build.rs`: print the `cargo:` lines that set `CA_BUILD_COMMIT` and say
/// when to run the script again. Never fails the build: without git and `CA_GIT_COMMIT` the
/// commit is `unknown`.
pub fn emit_commit() {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    println!("cargo:rerun-if-env-changed={COMMIT_ENV}");
    if let Some(dir) = &manifest_dir {
        for own in [dir.join("build.rs"), dir.join("src")] {
            if own.exists() {
                println!("cargo:rerun-if-changed={}", own.display());
            }
        }
    }
    let git = manifest_dir.as_deref().and_then(from_git);
    let commit = match git {
        Some(g) => {
            for path in &g.watch {
                println!("cargo:rerun-if-changed={}", path.display());
            }
            g.describe()
        }
        None => match std::env::var(COMMIT_ENV) {
            Ok(v) if valid_commit(&v) => v,
            Ok(v) => {
                println!(
                    "cargo:warning={COMMIT_ENV}={v:?} is not a commit name (1 to 64 of \
                     [0-9A-Za-z._+-]): the version says `commit unknown`"
                );
                "unknown".into()
            }
            Err(_) => "unknown".into(),
        },
    };
    println!("cargo:rustc-env={BUILD_COMMIT_VAR}={commit}");
}

/// HEAD's abbreviated commit (12 hex digits or more) when `manifest_dir` is a member of the
/// workspace at the top of a git checkout: the hash [`emit_commit`] puts in the version.
pub fn head(manifest_dir: &Path) -> Option<String> {
    from_git(manifest_dir).map(|g| g.short)
}

/// What `CA_GIT_COMMIT` may hold: it ends up in `--version` and the man pages.
fn valid_commit(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// The commit of a git checkout, and the files whose change means HEAD moved.
#[derive(Debug)]
struct Git {
    short: String,
    date: String,
    dirty: bool,
    watch: Vec<PathBuf>,
}

impl Git {
    fn describe(&self) -> String {
        let dirty = if self.dirty { "-dirty" } else { "" };
        format!("{}{dirty}, {}", self.short, self.date)
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `None` when git is missing or `manifest_dir` is not a member of the workspace at the top of
/// a git checkout (an unpacked source tarball inside some other repository must not report
/// that repository's commit).
fn from_git(manifest_dir: &Path) -> Option<Git> {
    let top = PathBuf::from(git(manifest_dir, &["rev-parse", "--show-toplevel"])?);
    let workspace = manifest_dir.parent()?;
    if top.canonicalize().ok()? != workspace.canonicalize().ok()? {
        return None;
    }
    let line = git(
        &top,
        &["show", "-s", "--abbrev=12", "--format=%h %cs", "HEAD"],
    )?;
    let (short, date) = line.split_once(' ')?;
    if !valid_commit(short) {
        return None;
    }
    // `--no-optional-locks`: do not refresh the index (a read-only checkout, or a concurrent
    // git command in the same tree).
    let status = git(
        &top,
        &[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )?;
    let mut watch = Vec::new();
    let git_path = |name: &str| {
        git(
            &top,
            &["rev-parse", "--path-format=absolute", "--git-path", name],
        )
        .map(PathBuf::from)
    };
    let mut names = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&top, &["symbolic-ref", "-q", "HEAD"]) {
        names.push(branch);
    }
    for name in names {
        // A path that does not exist would make cargo run the script on every build.
        if let Some(p) = git_path(&name).filter(|p| p.exists()) {
            watch.push(p);
        }
    }
    Some(Git {
        short: short.to_string(),
        date: date.to_string(),
        dirty: !status.is_empty(),
        watch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_names_from_the_environment_are_restricted() {
        for ok in ["03b27ff1a2b3", "v0.1.0-3-g03b27ff", "03b27ff+local", "a"] {
            assert!(valid_commit(ok), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in ["", "03b27ff 2026", "x\ny", "$(id)", "a)b", long.as_str()] {
            assert!(!valid_commit(bad), "{bad:?}");
        }
    }

    #[test]
    fn describe_shows_dirty_and_date() {
        let g = Git {
            short: "03b27ff1a2b3".into(),
            date: "2026-12-05".into(),
            dirty: true,
            watch: vec![],
        };
        assert_eq!(g.describe(), "03b27ff1a2b3-dirty, 2026-12-05");
    }
}
