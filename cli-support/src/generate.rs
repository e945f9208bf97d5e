//! The `completions SHELL` and `manpages --dir DIR` subcommands, generated from a binary's clap
//! definition (`clap::CommandFactory::command()`) with clap_complete and clap_mangen.

use clap::{Args, Command};
use std::io::Write;
use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// Writing generated output failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A man page (or its directory) could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The completion script could not be written to the output (e.g. a closed pipe).
    #[error("cannot write the completion script: {0}")]
    Output(#[source] std::io::Error),
}

/// `completions SHELL`: print a completion script for SHELL to stdout.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

impl CompletionsArgs {
    /// The completion script for `cmd`, completing the command named as `cmd` is.
    pub fn script(&self, cmd: Command) -> Vec<u8> {
        let mut cmd = cmd;
        let name = cmd.get_name().to_string();
        let mut out = Vec::new();
        clap_complete::generate(self.shell, &mut cmd, name.clone(), &mut out);
        if self.shell == Shell::Bash {
            out = fix_bash_hyphenated_name(&out, &name);
        }
        out
    }

    /// Write [`Self::script`] to `out`.
    pub fn write(&self, cmd: Command, out: &mut dyn Write) -> Result<(), Error> {
        // Generated into memory first: clap_complete panics on a failed write.
        out.write_all(&self.script(cmd))
            .and_then(|()| out.flush())
            .map_err(Error::Output)
    }
}

/// clap_complete 4.6's bash script completes nothing after a subcommand when the binary's name
/// has a hyphen (clap issue 6421): its dispatch loop names the state `ca__server__subcmd__token`
/// but the case arms spell it `ca__subcmd__server__subcmd__token`. Spell the arms as the loop
/// does. A no-op once clap_complete is fixed (the wrong spelling then no longer occurs).
fn fix_bash_hyphenated_name(script: &[u8], name: &str) -> Vec<u8> {
    if !name.contains('-') {
        return script.to_vec();
    }
    let text = String::from_utf8_lossy(script);
    let wrong = name.replace('-', "__subcmd__");
    let right = name.replace('-', "__");
    let mut fixed = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        // Only the case arms: `        ca__subcmd__server__subcmd__token)`.
        let arm = line.trim_start();
        if arm.starts_with(&wrong) && arm.trim_end().ends_with(')') {
            fixed.push_str(&line.replacen(&wrong, &right, 1));
        } else {
            fixed.push_str(line);
        }
    }
    fixed.into_bytes()
}

/// `manpages --dir DIR`: write one man page (section 1) per command and subcommand.
#[derive(Debug, Clone, Args)]
pub struct ManpagesArgs {
    /// Directory to write the pages into (created if missing; pages of the same name are
    /// replaced).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

impl ManpagesArgs {
    /// Write the pages of `cmd` and its visible subcommands, recursively: `NAME.1`,
    /// `NAME-SUB.1`, `NAME-SUB-SUBSUB.1`, ... Hidden subcommands (this one) and `help` get none.
    /// Returns the files written, the top command's first.
    pub fn write(&self, cmd: Command) -> Result<Vec<PathBuf>, Error> {
        manpages(cmd, &self.dir)
    }
}

/// Write the man pages of `cmd` into `dir` (see [`ManpagesArgs::write`]).
pub fn manpages(cmd: Command, dir: &Path) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    // As clap_mangen::generate_to: build once with the help subcommand off, so that every
    // subcommand carries its display name (`ca-server-token-create`) and its bin name
    // (`ca-server token create`, in the synopsis).
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    // Every page's footer names the program and its version (`ca-server 0.1.0 (commit ...)`),
    // not the subcommand's own name.
    let source = format!(
        "{} {}",
        cmd.get_name(),
        cmd.get_version().unwrap_or_default()
    );
    let mut written = Vec::new();
    page(cmd, dir, &source, &mut written)?;
    Ok(written)
}

fn page(cmd: Command, dir: &Path, source: &str, written: &mut Vec<PathBuf>) -> Result<(), Error> {
    let subs: Vec<Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let man = clap_mangen::Man::new(cmd)
        .source(source)
        .manual("Internal CA");
    let path = dir.join(man.get_filename());
    let mut roff = Vec::new();
    man.render(&mut roff)
        .and_then(|()| std::fs::write(&path, &roff))
        .map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
    written.push(path);
    for sub in subs {
        page(sub, dir, source, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Command {
        Command::new("demo")
            .version("1.2.3 (commit abc)")
            .about("A demo")
            .subcommand(
                Command::new("token")
                    .about("Tokens")
                    .subcommand(Command::new("create").about("Create one")),
            )
            .subcommand(Command::new("secret").hide(true))
    }

    #[test]
    fn one_page_per_visible_command_with_full_names() {
        let dir = tempfile::tempdir().unwrap();
        let pages = manpages(demo(), dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["demo.1", "demo-token.1", "demo-token-create.1"]);
        let create = std::fs::read_to_string(&pages[2]).unwrap();
        assert!(
            create.contains(".TH demo-token-create 1  \"demo 1.2.3 (commit abc)\" \"Internal CA\""),
            "{create}"
        );
        // The synopsis names the whole command line.
        assert!(create.contains("demo token create"), "{create}");
    }

    #[test]
    fn bash_case_arms_of_a_hyphenated_name_match_the_dispatch_loop() {
        let cmd = Command::new("my-app").subcommand(
            Command::new("token").subcommand(
                Command::new("create").arg(
                    clap::Arg::new("cn")
                        .long("cn")
                        .action(clap::ArgAction::SetTrue),
                ),
            ),
        );
        let args = CompletionsArgs { shell: Shell::Bash };
        let script = String::from_utf8(args.script(cmd)).unwrap();
        assert!(!script.contains("my__subcmd__app"), "{script}");
        // Every state the loop sets has its arm.
        for state in script
            .lines()
            .filter_map(|l| l.trim().strip_prefix("cmd=\""))
            .map(|l| l.trim_end_matches('"'))
            .filter(|state| !state.is_empty())
        {
            assert!(
                script.lines().any(|l| l.trim() == format!("{state})")),
                "no arm for {state}"
            );
        }
    }

    #[test]
    fn completion_script_names_the_subcommands() {
        let args = CompletionsArgs { shell: Shell::Bash };
        let script = String::from_utf8(args.script(demo())).unwrap();
        assert!(
            script.contains("demo__subcmd__token__subcmd__create"),
            "{script}"
        );
        assert!(script.contains("complete -F _demo"), "{script}");
    }
}
