//! The real `hush` binary, as a user runs it: `hush serve` in one process,
//! the client commands in others. Also the secrecy check: a marker sent in
//! messages and files appears nowhere in the database, its WAL, or the
//! server's (most verbose) log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cli_support::{Lines, contains, hush, ok};
use crate::support::server_db;
use anyhow::{Context, Result, bail};
use serde_json::Value;

const HUSH: &str = env!("CARGO_BIN_EXE_hush");

/// `hush serve` as a child process on a free loopback port, killed when
/// dropped unless `stop` ended it (a failing test leaves no server behind).
struct Server {
    child: Child,
    url: String,
    port: u16,
    /// Taken by `stop`.
    dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Server {
    async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await?
            .local_addr()?
            .port();
        Self::start_at(dir, port, &[]).await
    }

    async fn start_at(dir: tempfile::TempDir, port: u16, flags: &[&str]) -> Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("server.log"))?;
        let child = Command::new(HUSH)
            .args([
                "serve",
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--log-level",
                "trace",
            ])
            .args(flags)
            .arg("--db")
            .arg(server_db(&dir.path().join("data/hush.db"))?)
            .env_remove("HUSH_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let server = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir: Some(dir),
        };
        server.wait_healthy().await?;
        Ok(server)
    }

    async fn wait_healthy(&self) -> Result<()> {
        let client = hush::client::tls::http_client();
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
        self.dir
            .as_ref()
            .expect("a running server has its dir")
            .path()
            .join(name)
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) -> Result<(std::process::ExitStatus, tempfile::TempDir)> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait()? {
                let dir = self.dir.take().expect("stopped once");
                return Ok((status, dir));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        bail!("hush serve did not stop on SIGTERM")
    }
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
    // Replies, edits and reactions are encrypted like messages (§21): an
    // edit and a reply by alice, and a reaction by bob, carry it too.
    let sent = ok(hush(
        &url,
        &keys,
        "alice",
        &["send", "--to", "bob", "short"],
    )?)?;
    let seq = sent
        .rsplit('#')
        .next()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .context("a #seq")?
        .to_string();
    ok(hush(
        &url,
        &keys,
        "alice",
        &["edit", "--to", "bob", &seq, &format!("edited {marker}")],
    )?)?;
    ok(hush(
        &url,
        &keys,
        "alice",
        &[
            "send",
            "--to",
            "bob",
            "--reply",
            &seq,
            &format!("reply {marker}"),
        ],
    )?)?;
    ok(hush(
        &url,
        &keys,
        "bob",
        &["react", "--to", "alice", &seq, marker],
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
    assert!(
        read.contains(&format!("edited {marker} (edited)")),
        "{read}"
    );
    assert!(read.contains(&format!("{marker} 1 (bob)")), "{read}");

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

#[tokio::test(flavor = "multi_thread")]
async fn hush_chat_talks_live_survives_a_server_restart_and_sends_offline_lines_once() -> Result<()>
{
    use std::io::Write;
    let server = Server::start().await?;
    let home = tempfile::tempdir()?;
    let keys = home.path().join("keys");
    let url = server.url.clone();
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
        &["send", "--to", "bob", "first, before chat"],
    )?)?;
    // They share no room, so alice's DM is a message request (§21): bob
    // accepts it, or his chat would show only the request.
    ok(hush(&url, &keys, "bob", &["accept", "@alice"])?)?;

    let mut chat = Command::new(HUSH)
        .arg("chat")
        .env("HUSH_SERVER", &url)
        .env("HUSH_KEYS", &keys)
        .env("HUSH_USER", "bob")
        .env("HUSH_PASSPHRASE", "passphrase of bob")
        .env("HUSH_PASSWORD", "password of bob")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut input = chat.stdin.take().context("chat stdin")?;
    let mut out = Lines::from(chat.stdout.take().context("chat stdout")?);
    out.wait_for("hush chat as bob")?;
    out.wait_for("alice: first, before chat")?;

    ok(hush(
        &url,
        &keys,
        "alice",
        &["send", "--to", "bob", "second, live"],
    )?)?;
    out.wait_for("alice: second, live")?;
    writeln!(input, "reply typed in chat")?;
    writeln!(input, "/who")?;
    out.wait_for("* online:")?;
    let read = ok(hush(&url, &keys, "alice", &["read", "--with", "bob"])?)?;
    assert!(read.contains("bob: reply typed in chat"), "{read}");

    // The server goes away; a line typed meanwhile is sent once it is back.
    let port = server.port;
    let (_, dir) = server.stop()?;
    out.wait_for("* disconnected")?;
    writeln!(input, "typed while the server was down")?;
    out.wait_for("will send when reconnected")?;
    let server = Server::start_at(dir, port, &[]).await?;
    out.wait_for("* reconnected")?;
    ok(hush(
        &url,
        &keys,
        "alice",
        &["send", "--to", "bob", "third, after the restart"],
    )?)?;
    out.wait_for("alice: third, after the restart")?;
    let read = ok(hush(&url, &keys, "alice", &["read", "--with", "bob"])?)?;
    assert_eq!(
        read.matches("bob: typed while the server was down").count(),
        1,
        "{read}"
    );
    assert_eq!(read.matches("alice: second, live").count(), 1, "{read}");

    writeln!(input, "/quit")?;
    let status = chat.wait()?;
    assert!(status.success(), "hush chat exits cleanly: {status}");
    assert_eq!(
        out.seen
            .iter()
            .filter(|l| l.contains("alice: second, live"))
            .count(),
        1,
        "chat showed nothing twice across the restart"
    );
    server.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_publishes_a_signed_rotation_that_peers_follow() -> Result<()> {
    let server = Server::start().await?;
    let home = tempfile::tempdir()?;
    let keys = home.path().join("keys");
    let url = server.url.clone();
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
        "bob",
        &["send", "--to", "alice", "signed with the old key"],
    )?)?;
    ok(hush(&url, &keys, "alice", &["read", "--with", "bob"])?)?;
    let before = ok(hush(&url, &keys, "bob", &["keys", "show", "bob"])?)?;
    ok(hush(
        &url,
        &keys,
        "bob",
        &["keys", "rotate", "--bits", "2048"],
    )?)?;
    let after = ok(hush(&url, &keys, "bob", &["keys", "show", "bob"])?)?;
    assert_ne!(before, after, "bob has a new current key");
    ok(hush(
        &url,
        &keys,
        "bob",
        &["send", "--to", "alice", "signed with the new key"],
    )?)?;
    let output = hush(&url, &keys, "alice", &["read", "--with", "bob"])?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let read = ok(output)?;
    assert!(
        stderr.contains("bob rotated their key"),
        "alice is told: {stderr}"
    );
    assert!(
        read.contains("bob: signed with the old key")
            && read.contains("bob: signed with the new key"),
        "{read}"
    );
    assert!(!read.contains("REJECTED"), "{read}");
    let bob_reads = ok(hush(&url, &keys, "bob", &["read", "--with", "alice"])?)?;
    assert!(
        bob_reads.contains("bob: signed with the old key"),
        "bob still reads his old messages: {bob_reads}"
    );
    server.stop()?;
    Ok(())
}

/// The same identity on two machines (an exported and imported key) and
/// two commands of one key store running at once: each sends as its own
/// device, every message reads, and `hush keys devices` lists them.
#[tokio::test(flavor = "multi_thread")]
async fn one_identity_on_several_devices_sends_at_once_and_lists_its_devices() -> Result<()> {
    let server = Server::start().await?;
    let home = tempfile::tempdir()?;
    let (keys, laptop) = (home.path().join("keys"), home.path().join("laptop"));
    let url = server.url.clone();
    for user in ["alice", "bob"] {
        ok(hush(
            &url,
            &keys,
            user,
            &["keys", "new", user, "--bits", "2048"],
        )?)?;
        ok(hush(&url, &keys, user, &["register"])?)?;
    }
    let export = home.path().join("alice.export");
    let export_arg = export.to_str().context("path")?;
    ok(hush(
        &url,
        &keys,
        "alice",
        &["keys", "export", "alice", export_arg],
    )?)?;
    ok(hush(
        &url,
        &laptop,
        "alice",
        &["keys", "import", export_arg],
    )?)?;
    ok(hush(
        &url,
        &keys,
        "alice",
        &["send", "--to", "bob", "first"],
    )?)?;

    let spawn = |store: &Path, text: &str| {
        Command::new(HUSH)
            .args(["send", "--to", "bob", text])
            .env("HUSH_SERVER", &url)
            .env("HUSH_KEYS", store)
            .env("HUSH_USER", "alice")
            .env("HUSH_PASSPHRASE", "passphrase of alice")
            .env("HUSH_PASSWORD", "password of alice")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let running = [
        spawn(&keys, "from the desk")?,
        spawn(&keys, "from a second terminal")?,
        spawn(&laptop, "from the laptop")?,
    ];
    for child in running {
        ok(child.wait_with_output()?)?;
    }

    let read = ok(hush(
        &url,
        &keys,
        "bob",
        &["read", "--with", "alice", "--json"],
    )?)?;
    let lines: Vec<Value> = read
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let messages: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "message").collect();
    let mut texts: Vec<&str> = messages.iter().filter_map(|m| m["text"].as_str()).collect();
    texts.sort();
    assert_eq!(
        texts,
        [
            "first",
            "from a second terminal",
            "from the desk",
            "from the laptop"
        ],
        "{read}"
    );
    assert!(!read.contains("rejected"), "{read}");
    let devices: std::collections::HashSet<&str> = messages
        .iter()
        .filter_map(|m| m["device"].as_str())
        .collect();
    assert!(devices.len() >= 2, "several devices sent: {read}");

    let listed = ok(hush(&url, &keys, "alice", &["keys", "devices"])?)?;
    let laptop_device = messages
        .iter()
        .find(|m| m["text"] == "from the laptop")
        .and_then(|m| m["device"].as_str())
        .context("laptop device")?;
    let laptop_line = listed
        .lines()
        .find(|l| l.contains(laptop_device))
        .with_context(|| format!("the laptop's device is listed: {listed}"))?;
    assert!(
        laptop_line.contains("last sent") && !laptop_line.contains("this key store"),
        "{listed}"
    );
    assert!(listed.contains("(this key store"), "{listed}");
    server.stop()?;
    Ok(())
}

/// `/quit` typed while a line is still on its way: the chat leaves once it
/// is sent, with its standard input still open (a terminal, or a script
/// that keeps the pipe). It used to stay alive after its last line,
/// waiting for a read of standard input that only more input would end.
#[tokio::test(flavor = "multi_thread")]
async fn hush_chat_exits_after_quit_while_its_input_stays_open() -> Result<()> {
    use std::io::Write;
    let server = Server::start().await?;
    let home = tempfile::tempdir()?;
    let keys = crate::cli_support::fixture_key_store(&server.url, home.path(), &["alice"])?;
    ok(hush(
        &server.url,
        &keys,
        "alice",
        &["room", "create", "notes"],
    )?)?;
    let mut chat = crate::cli_support::hush_command(&server.url, &keys, "alice")
        .arg("chat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut input = chat.stdin.take().context("chat stdin")?;
    let mut out = Lines::from(chat.stdout.take().context("chat stdout")?);
    out.wait_for("--- #notes ---")?;
    input.write_all(b"one last line\n/quit\n")?;
    input.flush()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = chat.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            chat.kill()?;
            bail!("hush chat still running 30 s after /quit, with its input open");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    drop(input);
    let read = ok(hush(
        &server.url,
        &keys,
        "alice",
        &["read", "--room", "notes"],
    )?)?;
    assert!(read.contains("one last line"), "{read}");
    Ok(())
}
