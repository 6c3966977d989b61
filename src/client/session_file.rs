//! The saved login sessions of one local user: `keys/USER.session`, so that
//! client commands reuse one session per server instead of logging in (and
//! leaving a 30-day session behind) on every run.
//!
//! The file maps each server (its URL, normalised) to the session token the
//! server gave at login and its expiry. A token is a password for as long as
//! it lives, so the whole file is sealed with `LocalKeys` under the purpose
//! `"session"`: it opens only with the identity key, i.e. with the
//! passphrase. It is written atomically with mode 0600, and read-modify-write
//! happens under an exclusive `flock` on `keys/USER.session.lock`, so two
//! commands saving at once do not drop each other's servers.
//!
//! Nothing here prints or logs a token, and the types holding one have no
//! `Debug`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::keystore::{Identity, KeyStore};
use super::local_seal::LocalKeys;
use crate::crypto::private_file::{create_private_dir, write_private_file};

const FORMAT: &str = "hush-sessions-v1";

/// One saved session. No `Debug`: the token is a secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct SavedSession {
    pub token: String,
    /// When the server said the token stops working (Unix ms).
    pub expires_at: i64,
}

impl Drop for SavedSession {
    fn drop(&mut self) {
        self.token.zeroize();
    }
}

#[derive(Serialize, Deserialize)]
struct Contents {
    format: String,
    /// By normalised server URL (`server_key`).
    sessions: BTreeMap<String, SavedSession>,
}

impl Contents {
    fn empty() -> Self {
        Self {
            format: FORMAT.into(),
            sessions: BTreeMap::new(),
        }
    }
}

/// `keys/USER.session`, opened with the user's identity.
pub struct SessionFile {
    path: PathBuf,
    lock_path: PathBuf,
    keys: LocalKeys,
}

impl SessionFile {
    pub fn new(store: &KeyStore, identity: &Identity) -> anyhow::Result<Self> {
        let user = &identity.username;
        Ok(Self {
            path: store.dir().join(format!("{user}.session")),
            lock_path: store.dir().join(format!("{user}.session.lock")),
            keys: LocalKeys::new(identity, "session")?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved session for `server`. `Ok(None)` when there is none; an
    /// error when the file exists but does not open (damaged, or sealed by
    /// another identity): the caller logs in anew and `save` replaces it.
    pub fn load(&self, server: &str) -> anyhow::Result<Option<SavedSession>> {
        Ok(self
            .read()?
            .and_then(|mut contents| contents.sessions.remove(&server_key(server))))
    }

    /// Saves `session` as the one for `server`, keeping the other servers'.
    pub fn save(&self, server: &str, session: &SavedSession) -> anyhow::Result<()> {
        create_private_dir(self.path.parent().unwrap_or(Path::new(".")))
            .with_context(|| format!("creating the folder of {}", self.path.display()))?;
        let _lock = self.lock()?;
        // A file that does not open holds nothing we could use: start over.
        let mut contents = self.read().ok().flatten().unwrap_or_else(Contents::empty);
        contents
            .sessions
            .insert(server_key(server), session.clone());
        self.write(&contents)
    }

    /// Removes the session for `server` and returns it. The file goes when
    /// it holds no session any more.
    pub fn forget(&self, server: &str) -> anyhow::Result<Option<SavedSession>> {
        if !self.path.exists() {
            return Ok(None);
        }
        let _lock = self.lock()?;
        let Some(mut contents) = self.read()? else {
            return Ok(None);
        };
        let gone = contents.sessions.remove(&server_key(server));
        if contents.sessions.is_empty() {
            std::fs::remove_file(&self.path)
                .with_context(|| format!("deleting {}", self.path.display()))?;
        } else if gone.is_some() {
            self.write(&contents)?;
        }
        Ok(gone)
    }

    /// Deletes the whole file, every server's session.
    pub fn delete(&self) -> anyhow::Result<()> {
        let _lock = self.lock()?;
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("deleting {}", self.path.display()))
            }
            _ => Ok(()),
        }
    }

    fn read(&self) -> anyhow::Result<Option<Contents>> {
        let sealed = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        let plain = self
            .keys
            .open(&sealed)
            .with_context(|| format!("{} does not open with this identity", self.path.display()))?;
        let contents: Contents = serde_json::from_slice(&plain)
            .ok()
            .filter(|c: &Contents| c.format == FORMAT)
            .with_context(|| format!("{} is not a hush session file", self.path.display()))?;
        Ok(Some(contents))
    }

    fn write(&self, contents: &Contents) -> anyhow::Result<()> {
        let plain = Zeroizing::new(serde_json::to_vec(contents)?);
        let sealed = self.keys.seal(&plain)?;
        write_private_file(&self.path, &sealed)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Holds `USER.session.lock` exclusively until dropped.
    fn lock(&self) -> anyhow::Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .with_context(|| format!("opening {}", self.lock_path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", self.lock_path.display()))?;
        Ok(file)
    }
}

/// The server's URL in one spelling: scheme and host lowercased, the
/// scheme's default port made explicit, no trailing slash. So
/// `HTTP://Host/` and `http://host:80` share a session.
pub fn server_key(server: &str) -> String {
    let trimmed = server.trim().trim_end_matches('/');
    match reqwest::Url::parse(trimmed) {
        Ok(url) if url.has_host() => {
            let host = url.host_str().unwrap_or_default();
            let port = url
                .port_or_known_default()
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            let path = url.path().trim_end_matches('/');
            format!("{}://{host}{port}{path}", url.scheme())
        }
        _ => trimmed.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_support::fixture_key;

    fn identity(name: &str) -> Identity {
        Identity {
            username: name.to_owned(),
            current: fixture_key(name),
            previous: Vec::new(),
        }
    }

    fn session(token: &str) -> SavedSession {
        SavedSession {
            token: token.to_owned(),
            expires_at: 1_900_000_000_000,
        }
    }

    #[test]
    fn server_urls_that_name_the_same_server_share_a_key() {
        assert_eq!(server_key("http://127.0.0.1:7878"), "http://127.0.0.1:7878");
        assert_eq!(server_key("HTTP://Chat.Example/"), "http://chat.example:80");
        assert_eq!(
            server_key("https://chat.example:443"),
            "https://chat.example:443"
        );
        assert_eq!(
            server_key("https://chat.example/hush/"),
            "https://chat.example:443/hush"
        );
        assert_ne!(
            server_key("http://chat.example"),
            server_key("https://chat.example")
        );
    }

    #[test]
    fn sessions_are_kept_per_server_sealed_and_forgotten_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let file = SessionFile::new(&store, &identity("alice")).unwrap();
        assert!(file.load("http://a.example").unwrap().is_none());

        file.save("http://a.example", &session("token-for-a"))
            .unwrap();
        file.save("http://b.example/", &session("token-for-b"))
            .unwrap();
        let bytes = std::fs::read(file.path()).unwrap();
        assert!(!bytes.windows(11).any(|w| w == b"token-for-a"));
        assert_eq!(
            file.load("http://A.example:80/").unwrap().unwrap().token,
            "token-for-a"
        );

        assert_eq!(
            file.forget("http://a.example").unwrap().unwrap().token,
            "token-for-a"
        );
        assert!(file.load("http://a.example").unwrap().is_none());
        assert_eq!(
            file.load("http://b.example").unwrap().unwrap().token,
            "token-for-b"
        );
        file.forget("http://b.example").unwrap();
        assert!(!file.path().exists(), "an empty session file is deleted");
    }

    #[test]
    fn another_identitys_file_does_not_open_and_is_replaced_on_save() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        SessionFile::new(&store, &identity("alice"))
            .unwrap()
            .save("http://a.example", &session("alice-token"))
            .unwrap();
        // Bob's key, alice's file name: as after importing another key.
        let mut bob_as_alice = identity("bob");
        bob_as_alice.username = "alice".into();
        let other = SessionFile::new(&store, &bob_as_alice).unwrap();
        assert!(other.load("http://a.example").is_err());
        other
            .save("http://a.example", &session("new-token"))
            .unwrap();
        assert_eq!(
            other.load("http://a.example").unwrap().unwrap().token,
            "new-token"
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_session_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let file = SessionFile::new(&store, &identity("alice")).unwrap();
        file.save("http://a.example", &session("t")).unwrap();
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
