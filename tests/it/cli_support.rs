//! Running the real `hush` binary as a user would: a command with that
//! user's environment (server, key store, passphrase, password), its
//! output checked, and key stores made from the fixture keys.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Result, bail};
use hush::client::keystore::KeyStore;
use hush::crypto::keys::IdentityPrivateKey;

pub const HUSH: &str = env!("CARGO_BIN_EXE_hush");

/// `hush` as `user` against `url` with the key store at `keys`; the
/// passphrase and password are the fixtures' ("passphrase of USER", ...).
pub fn hush_command(url: &str, keys: &Path, user: &str) -> Command {
    let mut command = Command::new(HUSH);
    command
        .env("HUSH_SERVER", url)
        .env("HUSH_KEYS", keys)
        .env("HUSH_USER", user)
        .env("HUSH_PASSPHRASE", format!("passphrase of {user}"))
        .env("HUSH_PASSWORD", format!("password of {user}"));
    command
}

/// Runs `hush ARGS` as `user` with no input, to completion.
pub fn hush(url: &str, keys: &Path, user: &str, args: &[&str]) -> Result<Output> {
    Ok(hush_command(url, keys, user)
        .args(args)
        .stdin(Stdio::null())
        .output()?)
}

/// The command's stdout if it succeeded; its output as the error if not.
pub fn ok(output: Output) -> Result<String> {
    if !output.status.success() {
        bail!(
            "command failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A key store in `home` holding the fixture keys of `users`, each
/// registered on the server at `url`.
pub fn fixture_key_store(url: &str, home: &Path, users: &[&str]) -> Result<PathBuf> {
    let keys = home.join("keys");
    let store = KeyStore::new(&keys);
    for user in users {
        let pem = std::fs::read_to_string(format!(
            "{}/tests/fixtures/keys/{user}.pem",
            env!("CARGO_MANIFEST_DIR")
        ))?;
        let key = IdentityPrivateKey::from_pkcs8_pem(&pem)?;
        store.create(user, &key, &format!("passphrase of {user}"))?;
        ok(hush(url, &keys, user, &["register"])?)?;
    }
    Ok(keys)
}

/// Lines a child process prints, gathered by a thread.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Lines {
    pub fn from(stdout: std::process::ChildStdout) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits (up to 30 s) for a line containing `needle`.
    pub fn wait_for(&mut self, needle: &str) -> Result<String> {
        self.wait_for_within(needle, Duration::from_secs(30))
    }

    /// Waits up to `limit` for a line containing `needle`.
    pub fn wait_for_within(&mut self, needle: &str, limit: Duration) -> Result<String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(_) => bail!(
                    "no line containing {needle:?}; saw:\n{}",
                    self.seen[self.seen.len().saturating_sub(40)..].join("\n")
                ),
            }
        }
    }

    /// Whether a line read so far contains `needle`.
    pub fn saw(&self, needle: &str) -> bool {
        self.seen.iter().any(|line| line.contains(needle))
    }
}
