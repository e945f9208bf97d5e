//! Writing outputs: never over an existing file (`O_EXCL`), synced to disk, secrets mode 0600.

use crate::error::Error;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Mode of public outputs.
pub const PUBLIC: u32 = 0o644;
/// Mode of secret outputs (PIN shares).
pub const SECRET: u32 = 0o600;

/// Create `path` (and its parent directories) with `bytes`; fails if it exists.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let werr = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(werr)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::OutputExists(path.to_path_buf())
            } else {
                werr(e)
            }
        })?;
    f.write_all(bytes).map_err(werr)?;
    f.sync_all().map_err(werr)
}
