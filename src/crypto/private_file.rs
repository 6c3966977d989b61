//! Writing files that hold secrets (key files, the trust store) so that they
//! are never readable by anyone but the owner, not even for a moment: the
//! file is created with mode 0600 under a temporary name in the same
//! directory, synced, then renamed over the target.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::wire::random_bytes;

/// Creates `dir` (and parents) with mode 0700 if it does not exist yet.
/// An existing directory's mode is left alone.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Atomically replaces `path` with `contents`, created with mode 0600.
pub fn write_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let temporary = temporary_sibling(path)?;
    let result =
        write_new_private_file(&temporary, contents).and_then(|()| fs::rename(&temporary, path));
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Opens `path` (created with mode 0600 if missing) and locks it
/// exclusively for as long as the returned file is open; `None` if another
/// open file holds the lock (another process, or this one).
pub fn try_lock_private_file(path: &Path) -> io::Result<Option<File>> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(err)) => Err(err),
    }
}

fn write_new_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn temporary_sibling(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let suffix: [u8; 8] = random_bytes().map_err(io::Error::other)?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let mut temporary = std::ffi::OsString::from(".");
    temporary.push(name);
    temporary.push(format!(".{suffix}.tmp"));
    Ok(path.with_file_name(temporary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn private_files_and_dirs_are_owner_only() -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let temp = tempfile::tempdir()?;
        let dir = temp.path().join("keys");
        create_private_dir(&dir)?;
        assert_eq!(fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);
        let file = dir.join("secret.json");
        write_private_file(&file, b"one")?;
        write_private_file(&file, b"two")?;
        assert_eq!(fs::read(&file)?, b"two");
        assert_eq!(fs::metadata(&file)?.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(&dir)?.count(), 1, "no temporary file left");
        Ok(())
    }
}
