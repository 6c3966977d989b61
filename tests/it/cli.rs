//! The real `hush` binary, as a user runs it: `hush serve` in one process,
//! the client commands in others. Also the secrecy check: a marker sent in
//! messages and files appears nowhere in the database, its WAL, or the
//! server's (most verbose) log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

const HUSH: &str = env!("CARGO_BIN_EXE_hush");

/// `hush serve` as a child process on a free loopback port.
struct Server {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = Command::new(HUSH)
            .args([
                "serve",
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--log-level",
                "trace",
            ])
            .arg("--db")
            .arg(dir.path().join("data/hush.db"))
            .env_remove("HUSH_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let server = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        server.wait_healthy().await?;
        Ok(server)
    }

    async fn wait_healthy(&self) -> Result<()> {
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(r) = client.get(format!("{}/healthz", self.url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("hush serve did not become healthy")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) -> Result<(std::process::ExitStatus, tempfile::TempDir)> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, self.dir));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        bail!("hush serve did not stop on SIGTERM")
    }
}

/// Runs a client command as `user` against `server` with the given key store.
fn hush(server: &str, keys: &Path, user: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(HUSH)
        .args(args)
        .env("HUSH_SERVER", server)
        .env("HUSH_KEYS", keys)
        .env("HUSH_USER", user)
        .env("HUSH_PASSPHRASE", format!("passphrase of {user}"))
        .env("HUSH_PASSWORD", format!("password of {user}"))
        .stdin(Stdio::null())
        .output()?;
    Ok(output)
}

fn ok(output: Output) -> Result<String> {
    if !output.status.success() {
        bail!(
            "command failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_people_with_only_the_binary_make_keys_register_and_talk() -> Result<()> {
    let server = Server::start().await?;
    let home = tempfile::tempdir()?;
    let (alice_keys, bob_keys) = (home.path().join("alice-keys"), home.path().join("bob-keys"));
    let url = server.url.clone();

    let made = ok(hush(
        &url,
        &alice_keys,
        "alice",
        &["keys", "new", "alice", "--bits", "2048"],
    )?)?;
    assert!(made.contains("alice:"), "{made}");
    ok(hush(
        &url,
        &bob_keys,
        "bob",
        &["keys", "new", "bob", "--bits", "2048"],
    )?)?;
    let mode = std::fs::metadata(alice_keys.join("alice.key.json"))?.permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600,
        "the key file is private"
    );
    let listed = ok(hush(&url, &alice_keys, "alice", &["keys", "list"])?)?;
    assert!(listed.starts_with("alice "), "{listed}");

    ok(hush(&url, &alice_keys, "alice", &["register"])?)?;
    ok(hush(&url, &bob_keys, "bob", &["register"])?)?;
    ok(hush(
        &url,
        &alice_keys,
        "alice",
        &["room", "create", "general"],
    )?)?;
    ok(hush(
        &url,
        &alice_keys,
        "alice",
        &["room", "invite", "general", "bob"],
    )?)?;
    let listed = ok(hush(&url, &bob_keys, "bob", &["room", "list"])?)?;
    assert!(listed.contains("invited to #general by alice"), "{listed}");
    ok(hush(&url, &bob_keys, "bob", &["room", "join", "general"])?)?;
    ok(hush(
        &url,
        &alice_keys,
        "alice",
        &["send", "--room", "general", "hello from alice"],
    )?)?;
    let attachment = home.path().join("note.bin");
    std::fs::write(&attachment, [0u8, 1, 2, 3, 254, 255])?;
    ok(hush(
        &url,
        &bob_keys,
        "bob",
        &[
            "send",
            "--room",
            "general",
            "--file",
            attachment.to_str().context("utf-8 path")?,
        ],
    )?)?;
    ok(hush(
        &url,
        &bob_keys,
        "bob",
        &["send", "--to", "alice", "a private word"],
    )?)?;

    let save_dir = home.path().join("downloads");
    let read = ok(hush(
        &url,
        &alice_keys,
        "alice",
        &[
            "read",
            "--room",
            "general",
            "--json",
            "--save-dir",
            save_dir.to_str().context("utf-8 path")?,
        ],
    )?)?;
    let lines: Vec<Value> = read
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let messages: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "message").collect();
    assert_eq!(messages.len(), 2, "{read}");
    assert_eq!(
        (messages[0]["sender"].as_str(), messages[0]["text"].as_str()),
        (Some("alice"), Some("hello from alice"))
    );
    let saved = messages[1]["file"]["saved_to"]
        .as_str()
        .context("the file was saved")?;
    assert_eq!(
        std::fs::read(saved)?,
        vec![0u8, 1, 2, 3, 254, 255],
        "the attachment arrives byte for byte"
    );
    assert!(lines.iter().all(|l| l["kind"] != "rejected"), "{read}");

    let dm = ok(hush(
        &url,
        &alice_keys,
        "alice",
        &["read", "--with", "bob"],
    )?)?;
    assert!(dm.contains("bob: a private word"), "{dm}");

    let alice_side = ok(hush(
        &url,
        &alice_keys,
        "alice",
        &["keys", "verify", "bob"],
    )?)?;
    let bob_side = ok(hush(&url, &bob_keys, "bob", &["keys", "verify", "alice"])?)?;
    let number = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("    "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(!number(&alice_side).is_empty());
    assert_eq!(
        number(&alice_side),
        number(&bob_side),
        "both sides see the same safety number"
    );

    let (status, _) = server.stop()?;
    assert!(status.success(), "hush serve exits 0 on SIGTERM: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_marker_sent_in_messages_appears_nowhere_on_the_server() -> Result<()> {
    let server = Server::start().await?;
    let home = tempfile::tempdir()?;
    let keys = home.path().join("keys");
    let url = server.url.clone();
    let marker = "MARKER-7f3a9c-do-not-leak";
    for user in ["alice", "bob"] {
        ok(hush(
            &url,
            &keys,
            user,
            &["keys", "new", user, "--bits", "2048"],
        )?)?;
        ok(hush(&url, &keys, user, &["register"])?)?;
    }
    ok(hush(
        &url,
        &keys,
        "alice",
        &["send", "--to", "bob", &format!("text with {marker} inside")],
    )?)?;
    let file = home.path().join(format!("{marker}.txt"));
    std::fs::write(&file, format!("file content {marker}"))?;
    ok(hush(
        &url,
        &keys,
        "alice",
        &[
            "send",
            "--to",
            "bob",
            "--file",
            file.to_str().context("utf-8 path")?,
        ],
    )?)?;
    let read = ok(hush(
        &url,
        &keys,
        "bob",
        &[
            "read",
            "--with",
            "alice",
            "--save-dir",
            home.path().join("dl").to_str().context("utf-8")?,
        ],
    )?)?;
    assert!(read.contains(marker), "bob can read it: {read}");

    let mut looked_at = 0;
    let mut check = |path: PathBuf| -> Result<()> {
        if let Ok(bytes) = std::fs::read(&path) {
            looked_at += 1;
            assert!(
                !contains(&bytes, marker.as_bytes()),
                "the marker leaked into {}",
                path.display()
            );
        }
        Ok(())
    };
    // While running: the database, its WAL and shared memory, the log.
    for name in [
        "data/hush.db",
        "data/hush.db-wal",
        "data/hush.db-shm",
        "server.log",
    ] {
        check(server.path(name))?;
    }
    let db_before_stop = std::fs::read(server.path("data/hush.db-wal")).unwrap_or_default();
    let log_path = server.path("server.log");
    let (status, dir) = server.stop()?;
    assert!(status.success());
    for name in ["data/hush.db", "data/hush.db-wal", "server.log"] {
        check(dir.path().join(name))?;
    }
    assert!(looked_at >= 5, "the files were there to be searched");
    // The search itself works: the usernames (not secret) are in the files.
    let db = std::fs::read(dir.path().join("data/hush.db"))?;
    assert!(
        contains(&db, b"alice") || contains(&db_before_stop, b"alice"),
        "sanity: the database holds the users"
    );
    let log = std::fs::read_to_string(&log_path).unwrap_or_else(|_| {
        std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
    });
    assert!(
        log.contains("hush listening"),
        "sanity: the log was captured"
    );
    Ok(())
}
