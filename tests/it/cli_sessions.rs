//! The CLI keeps one login session per (server, user) in the key store
//! (`keys/USER.session`, sealed): the real `hush` binary against a server
//! on 127.0.0.1, with key stores made from the fixture keys. Commands reuse
//! the saved session, log in again only when the server refuses it, `hush
//! logout` ends it, and a throttled login is waited out.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use anyhow::{Context, Result, bail, ensure};
use hush::client::keystore::KeyStore;
use hush::client::session_file::SessionFile;
use hush::config::{Limits, Rate, ServerConfig};
use hush::crypto::keys::IdentityPrivateKey;
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;

use crate::cli_support::ok;
use crate::support::{TestApp, password, spawn_app, spawn_app_with};

const HUSH: &str = env!("CARGO_BIN_EXE_hush");
const PASSPHRASE: &str = "passphrase of the key store";
/// What a command run with this password must never need: a login would
/// fail with it, so a command that succeeds did not log in.
const WRONG_PASSWORD: &str = "not the password at all";

/// A registered user with a key store of their own (their fixture key).
struct User {
    name: &'static str,
    keys: TempDir,
}

impl User {
    async fn register(app: &TestApp, name: &'static str) -> Result<Self> {
        app.register(name).await?;
        let keys = tempfile::tempdir()?;
        let pem =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/keys/{name}.pem"));
        let key = IdentityPrivateKey::from_pkcs8_pem(&std::fs::read_to_string(pem)?)?;
        KeyStore::new(keys.path()).create(name, &key, PASSPHRASE)?;
        Ok(Self { name, keys })
    }

    /// Runs `hush ARGS` as this user, with the right password.
    async fn hush(&self, app: &TestApp, args: &[&str]) -> Result<Output> {
        self.hush_with(app, &password(self.name), args).await
    }

    /// Runs `hush ARGS` as this user with `password` in `HUSH_PASSWORD`.
    async fn hush_with(&self, app: &TestApp, password: &str, args: &[&str]) -> Result<Output> {
        Ok(tokio::process::Command::new(HUSH)
            .args(args)
            .env("HUSH_SERVER", &app.base_url)
            .env("HUSH_KEYS", self.keys.path())
            .env("HUSH_USER", self.name)
            .env("HUSH_PASSPHRASE", PASSPHRASE)
            .env("HUSH_PASSWORD", password)
            .env_remove("HUSH_CA_CERT")
            .stdin(Stdio::null())
            .output()
            .await?)
    }

    fn session_path(&self) -> PathBuf {
        self.keys.path().join(format!("{}.session", self.name))
    }

    /// The token saved for `app`, read with the library.
    fn saved_token(&self, app: &TestApp) -> Result<Option<String>> {
        let store = KeyStore::new(self.keys.path());
        let identity = store.open(self.name, PASSPHRASE)?;
        Ok(SessionFile::new(&store, &identity)?
            .load(&app.base_url)?
            .map(|s| s.token.clone()))
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `hush admin …` on the app's database (the server keeps running).
async fn admin(app: &TestApp, args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new(HUSH)
        .arg("admin")
        .arg("--db")
        .arg(&app.db)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await?;
    ok(output)
}

/// Unexpired login sessions of `user`, as `hush admin users list` counts them.
async fn sessions_of(app: &TestApp, user: &str) -> Result<i64> {
    let listed = admin(app, &["users", "list", "--json"]).await?;
    for line in listed.lines() {
        let row: Value = serde_json::from_str(line)?;
        if row["username"] == user {
            return row["sessions"].as_i64().context("sessions is a number");
        }
    }
    bail!("{user} is not listed: {listed}")
}

/// What the server answers to `token` on an authenticated endpoint.
async fn status_of(app: &TestApp, token: &str) -> Result<StatusCode> {
    Ok(app.get("/api/v1/rooms", Some(token)).await?.0)
}

/// The case: 40 quick commands on default limits (30 logins in a
/// burst) all succeed, and leave one session behind, not 40.
#[tokio::test(flavor = "multi_thread")]
async fn forty_quick_commands_succeed_on_default_limits_and_share_one_session() -> Result<()> {
    let app = spawn_app().await?;
    let alice = User::register(&app, "alice").await?;
    ok(alice.hush(&app, &["room", "create", "general"]).await?)?;
    for i in 1..39 {
        let text = format!("message {i}");
        let args: &[&str] = match i % 3 {
            0 => &["send", "--room", "general", &text],
            1 => &["read", "--room", "general"],
            _ => &["room", "list"],
        };
        let output = alice.hush(&app, args).await?;
        ensure!(
            !stderr(&output).contains("asks us to wait"),
            "command {i} was throttled: {}",
            stderr(&output)
        );
        ok(output).with_context(|| format!("command {i}: {args:?}"))?;
    }
    // The 40th command.
    let read = ok(alice.hush(&app, &["read", "--room", "general"]).await?)?;
    let sent: Vec<&str> = read
        .lines()
        .filter(|l| l.contains("alice: message "))
        .collect();
    assert_eq!(sent.len(), 12, "{read}");
    assert_eq!(sessions_of(&app, "alice").await?, 1, "one login in all");
    Ok(())
}

/// With a saved session the password is not needed, so not asked for.
#[tokio::test(flavor = "multi_thread")]
async fn a_saved_session_needs_no_password() -> Result<()> {
    let app = spawn_app().await?;
    let alice = User::register(&app, "alice").await?;
    let refused = alice
        .hush_with(&app, WRONG_PASSWORD, &["room", "list"])
        .await?;
    assert!(!refused.status.success(), "no session yet: the login fails");
    ok(alice.hush(&app, &["room", "create", "general"]).await?)?;
    let listed = ok(alice
        .hush_with(&app, WRONG_PASSWORD, &["room", "list"])
        .await?)?;
    assert!(listed.contains("#general"), "{listed}");
    ok(alice
        .hush_with(&app, WRONG_PASSWORD, &["send", "--room", "general", "hi"])
        .await?)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_ends_the_session_and_the_next_command_logs_in_again() -> Result<()> {
    let app = spawn_app().await?;
    let alice = User::register(&app, "alice").await?;
    ok(alice.hush(&app, &["room", "list"]).await?)?;
    let old = alice.saved_token(&app)?.context("a session is saved")?;
    assert_eq!(status_of(&app, &old).await?, StatusCode::OK);

    let said = ok(alice.hush(&app, &["logout"]).await?)?;
    assert!(said.contains("logged alice out"), "{said}");
    assert_eq!(
        status_of(&app, &old).await?,
        StatusCode::UNAUTHORIZED,
        "the server ended the session"
    );
    assert!(!alice.session_path().exists(), "the local copy is gone");
    assert_eq!(sessions_of(&app, "alice").await?, 0);

    let refused = alice
        .hush_with(&app, WRONG_PASSWORD, &["room", "list"])
        .await?;
    assert!(
        !refused.status.success(),
        "after logout a command has to log in"
    );
    ok(alice.hush(&app, &["room", "list"]).await?)?;
    let new = alice.saved_token(&app)?.context("a new session is saved")?;
    assert_ne!(new, old);
    assert_eq!(status_of(&app, &new).await?, StatusCode::OK);
    assert_eq!(status_of(&app, &old).await?, StatusCode::UNAUTHORIZED);
    assert_eq!(sessions_of(&app, "alice").await?, 1);

    ok(alice.hush(&app, &["logout"]).await?)?;
    let again = ok(alice.hush(&app, &["logout"]).await?)?;
    assert!(again.contains("no saved session"), "{again}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_with_the_server_unreachable_still_deletes_the_saved_session() -> Result<()> {
    let mut app = spawn_app().await?;
    let alice = User::register(&app, "alice").await?;
    ok(alice.hush(&app, &["room", "list"]).await?)?;
    assert!(alice.session_path().exists());
    app.shutdown().await?;

    let output = alice.hush(&app, &["logout"]).await?;
    let said = stderr(&output);
    let out = ok(output)?;
    assert!(said.contains("could not reach the server"), "{said}");
    assert!(out.contains("deleted alice's saved session"), "{out}");
    assert!(!alice.session_path().exists());
    Ok(())
}

/// A token revoked by the operator is noticed at the next command, which
/// logs in again by itself: over HTTP (`send`) and for `hush chat`.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_session_is_replaced_by_a_new_login_transparently() -> Result<()> {
    let app = spawn_app().await?;
    let alice = User::register(&app, "alice").await?;
    ok(alice.hush(&app, &["room", "create", "general"]).await?)?;
    let old = alice.saved_token(&app)?.context("a session is saved")?;

    admin(&app, &["sessions", "revoke", "alice"]).await?;
    assert_eq!(status_of(&app, &old).await?, StatusCode::UNAUTHORIZED);
    ok(alice
        .hush(&app, &["send", "--room", "general", "after the revocation"])
        .await?)?;
    let new = alice.saved_token(&app)?.context("a session is saved")?;
    assert_ne!(new, old);
    assert_eq!(sessions_of(&app, "alice").await?, 1);

    admin(&app, &["sessions", "revoke", "alice"]).await?;
    let chat = ok(alice.hush(&app, &["chat"]).await?)?;
    assert!(chat.contains("hush chat as alice"), "{chat}");
    assert!(!chat.contains("refused our session"), "{chat}");
    let newer = alice.saved_token(&app)?.context("a session is saved")?;
    assert_ne!(newer, new);
    assert_eq!(status_of(&app, &newer).await?, StatusCode::OK);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_session_file_holds_no_token_in_clear_and_is_private() -> Result<()> {
    let app = spawn_app().await?;
    let alice = User::register(&app, "alice").await?;
    let output = alice.hush(&app, &["room", "list"]).await?;
    let token = alice.saved_token(&app)?.context("a session is saved")?;
    assert_eq!(
        status_of(&app, &token).await?,
        StatusCode::OK,
        "it is the live token"
    );

    let bytes = std::fs::read(alice.session_path())?;
    assert!(
        !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
        "the token is sealed"
    );
    let mode = std::fs::metadata(alice.session_path())?.permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    for printed in [&output.stdout, &output.stderr] {
        assert!(
            !printed.windows(token.len()).any(|w| w == token.as_bytes()),
            "the token is never printed"
        );
    }
    Ok(())
}

/// A server whose login throttle allows `burst` logins, then one per `every_secs`.
async fn throttled_app(every_secs: f64) -> Result<TestApp> {
    spawn_app_with(ServerConfig {
        limits: Limits {
            logins_per_ip: Rate::new(1.0 / every_secs, 1),
            ..Limits::default()
        },
        ..ServerConfig::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_login_is_waited_out_with_a_word_to_the_user() -> Result<()> {
    let app = throttled_app(1.0).await?;
    let alice = User::register(&app, "alice").await?;
    app.login("alice").await?; // takes the one login of the burst
    let output = alice.hush(&app, &["room", "list"]).await?;
    let said = stderr(&output);
    ok(output)?;
    assert!(
        said.contains("hush: the server asks us to wait 1 s (too many login attempts"),
        "{said}"
    );
    assert!(said.contains("retrying"), "{said}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_throttled_for_longer_than_a_command_waits_fails_at_once_and_says_so() -> Result<()>
{
    let app = throttled_app(600.0).await?;
    let alice = User::register(&app, "alice").await?;
    app.login("alice").await?;
    let output = alice.hush(&app, &["room", "list"]).await?;
    let said = stderr(&output);
    assert!(!output.status.success());
    assert!(!said.contains("retrying"), "no wait is started: {said}");
    assert!(said.contains("rate_limited"), "{said}");
    assert!(said.contains("try again later"), "{said}");
    Ok(())
}
