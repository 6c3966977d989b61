//! The local key store: a folder (default `keys/`) holding, per local user,
//! the passphrase-protected identity key, the keys it rotated away from
//! (kept to read old history) and the trust pins of the peers it has seen.
//!
//! ```text
//! keys/alice.key.json               current identity (KeyFile, mode 0600)
//! keys/alice.old.<fp16>.key.json    an earlier identity, kept after rotation
//! keys/alice.trust.json             pinned peer keys (mode 0600)
//! keys/alice.session                saved login sessions, sealed (session_file.rs)
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::crypto::identity::Fingerprint;
use crate::crypto::keys::{IdentityPrivateKey, KeyFile};
use crate::crypto::private_file::{create_private_dir, write_private_file};
use crate::crypto::trust::TrustStore;

/// A local user's identity keys, opened with the passphrase.
pub struct Identity {
    pub username: String,
    pub current: IdentityPrivateKey,
    /// Keys this user rotated away from, newest first.
    pub previous: Vec<IdentityPrivateKey>,
}

impl Identity {
    /// The private key whose public half has `fingerprint`, current or old.
    pub fn key_with(&self, fingerprint: &Fingerprint) -> Option<&IdentityPrivateKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.public().fingerprint() == *fingerprint)
    }
}

#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

/// Everything `keys export` writes: the current and old key files, each
/// still sealed under the user's passphrase.
#[derive(Serialize, Deserialize)]
struct ExportBundle {
    format: String,
    username: String,
    current: serde_json::Value,
    previous: Vec<serde_json::Value>,
}

const EXPORT_FORMAT: &str = "hush-identity-export-v1";

impl KeyStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn current_path(&self, user: &str) -> PathBuf {
        self.dir.join(format!("{user}.key.json"))
    }

    fn old_path(&self, user: &str, fingerprint: &Fingerprint) -> PathBuf {
        self.dir.join(format!(
            "{user}.old.{}.key.json",
            &fingerprint.to_hex()[..16]
        ))
    }

    pub fn trust_path(&self, user: &str) -> PathBuf {
        self.dir.join(format!("{user}.trust.json"))
    }

    pub fn has(&self, user: &str) -> bool {
        self.current_path(user).exists()
    }

    /// Local users with an identity in this store, sorted.
    pub fn users(&self) -> anyhow::Result<Vec<String>> {
        let mut users = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(users),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(user) = name
                .strip_suffix(".key.json")
                .filter(|u| !u.contains(".old."))
            {
                users.push(user.to_owned());
            }
        }
        users.sort();
        Ok(users)
    }

    /// The public parts of a user's current key file (no passphrase needed).
    pub fn key_file(&self, user: &str) -> anyhow::Result<KeyFile> {
        let path = self.current_path(user);
        KeyFile::load(&path)
            .with_context(|| format!("no usable key for {user} in {}", self.dir.display()))
    }

    /// Stores a new identity; refuses to overwrite an existing one.
    pub fn create(
        &self,
        user: &str,
        key: &IdentityPrivateKey,
        passphrase: &str,
    ) -> anyhow::Result<PathBuf> {
        let path = self.current_path(user);
        if path.exists() {
            bail!(
                "{} already exists; refusing to overwrite an identity",
                path.display()
            );
        }
        create_private_dir(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        KeyFile::seal(key, passphrase)?.save(&path)?;
        Ok(path)
    }

    /// Opens the current and every old key of `user` with `passphrase`.
    pub fn open(&self, user: &str, passphrase: &str) -> anyhow::Result<Identity> {
        let current = self
            .key_file(user)?
            .open(passphrase)
            .context("cannot open the identity key")?;
        let mut previous = Vec::new();
        for path in self.old_paths(user)? {
            let file = KeyFile::load(&path)?;
            previous.push(
                file.open(passphrase)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            );
        }
        Ok(Identity {
            username: user.to_owned(),
            current,
            previous,
        })
    }

    fn old_paths(&self, user: &str) -> anyhow::Result<Vec<PathBuf>> {
        let prefix = format!("{user}.old.");
        let mut paths = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) && name.ends_with(".key.json") {
                    paths.push(entry.path());
                }
            }
        }
        paths.sort();
        Ok(paths)
    }

    /// Makes `new` the current key and keeps the old one beside it.
    pub fn rotate(
        &self,
        identity: &Identity,
        new: &IdentityPrivateKey,
        passphrase: &str,
    ) -> anyhow::Result<()> {
        let old = &identity.current;
        KeyFile::seal(old, passphrase)?
            .save(&self.old_path(&identity.username, &old.public().fingerprint()))?;
        KeyFile::seal(new, passphrase)?.save(&self.current_path(&identity.username))?;
        Ok(())
    }

    /// Writes every key file of `user` into one file (mode 0600). The keys
    /// stay sealed under the passphrase.
    pub fn export(&self, user: &str, out: &Path) -> anyhow::Result<()> {
        let current = std::fs::read_to_string(self.current_path(user))
            .with_context(|| format!("no identity for {user} in {}", self.dir.display()))?;
        let mut previous = Vec::new();
        for path in self.old_paths(user)? {
            previous.push(serde_json::from_str(&std::fs::read_to_string(path)?)?);
        }
        let bundle = ExportBundle {
            format: EXPORT_FORMAT.into(),
            username: user.into(),
            current: serde_json::from_str(&current)?,
            previous,
        };
        write_private_file(out, serde_json::to_string_pretty(&bundle)?.as_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
        Ok(())
    }

    /// Reads a file written by `export` into this store; returns the user.
    pub fn import(&self, file: &Path) -> anyhow::Result<String> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let bundle: ExportBundle =
            serde_json::from_str(&text).context("not a hush identity export")?;
        if bundle.format != EXPORT_FORMAT {
            bail!("unsupported export format {:?}", bundle.format);
        }
        let user = bundle.username;
        if !crate::crypto::wire::is_valid_username(&user) {
            bail!("the export names an invalid username");
        }
        if self.has(&user) {
            bail!(
                "an identity for {user} already exists in {}",
                self.dir.display()
            );
        }
        create_private_dir(&self.dir)?;
        for old in bundle.previous {
            let file = KeyFile::from_json(&old.to_string())?;
            file.save(&self.old_path(&user, &file.public_key().fingerprint()))?;
        }
        KeyFile::from_json(&bundle.current.to_string())?.save(&self.current_path(&user))?;
        Ok(user)
    }

    pub fn load_trust(&self, user: &str) -> anyhow::Result<TrustStore> {
        TrustStore::load(&self.trust_path(user)).context("reading the trust store")
    }

    pub fn save_trust(&self, user: &str, trust: &TrustStore) -> anyhow::Result<()> {
        create_private_dir(&self.dir)?;
        trust
            .save(&self.trust_path(user))
            .context("writing the trust store")
    }
}
