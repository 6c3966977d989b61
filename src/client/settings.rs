//! Per-identity settings of the terminal client, kept beside the key store
//! in `KEYS/USER.settings.json` (mode 0600, written atomically):
//!
//! ```json
//! {"read_receipts": true, "typing": true}
//! ```
//!
//! Both default to on. With `read_receipts` off, `hush chat` sends
//! `delivered` receipts only (never `read`); with `typing` off it sends no
//! typing signal. They are local to this key store: another device of the
//! same user has its own (the browser keeps its own in the page).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::crypto::private_file::write_private_file;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub read_receipts: bool,
    pub typing: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            read_receipts: true,
            typing: true,
        }
    }
}

/// Where `user`'s settings live in key store `dir`.
pub fn path(dir: &Path, user: &str) -> PathBuf {
    dir.join(format!("{user}.settings.json"))
}

impl Settings {
    /// The saved settings, or the defaults if there is no file yet.
    pub fn load(dir: &Path, user: &str) -> anyhow::Result<Self> {
        let path = path(dir, user);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, dir: &Path, user: &str) -> anyhow::Result<PathBuf> {
        let path = path(dir, user);
        let mut text = serde_json::to_vec_pretty(self).expect("settings serialize");
        text.push(b'\n');
        write_private_file(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_to_on_and_round_trip() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        assert_eq!(Settings::load(dir.path(), "alice")?, Settings::default());
        let off = Settings {
            read_receipts: false,
            typing: true,
        };
        let path = off.save(dir.path(), "alice")?;
        assert_eq!(Settings::load(dir.path(), "alice")?, off);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(path)?.permissions().mode() & 0o777, 0o600);
        }
        // A file missing a member takes the default for it.
        std::fs::write(settings_path(dir.path()), br#"{"typing":false}"#)?;
        let loaded = Settings::load(dir.path(), "alice")?;
        assert!(loaded.read_receipts && !loaded.typing);
        Ok(())
    }

    fn settings_path(dir: &Path) -> PathBuf {
        path(dir, "alice")
    }
}
