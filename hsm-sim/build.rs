//! The git commit for `--version` (cli_support::version!).
fn main() {
    cli_support::build::emit_commit();
}
