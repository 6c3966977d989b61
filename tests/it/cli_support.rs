//! Running the real `hush` binary as a user would: a command with that
//! user's environment (server, key store, passphrase, password), its
//! output checked, and key stores made from the fixture keys.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
