//! The CLI's local store (`keys/USER.store`), with the real `hush` binary
//! against `hush serve`: a command reads only what is new since its
//! cursors (counted by the server's `hush_sync_entries_total`); a deleted
//! or garbage store is rebuilt with identical output; nothing readable of
//! a message is on disk; `hush search` works offline; `read --last` and
//! `--since`; two processes of one identity share the store.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cli_support::{HUSH, contains, fixture_key_store, hush, hush_command, ok};
use crate::support::server_db;
use anyhow::{Context, Result, bail, ensure};
use hush::client::account::Account;
use hush::client::keystore::KeyStore;
use hush::client::link::{Event, Link};
use hush::client::transcript::{new_client_id, next_event};
use hush::crypto::device::DeviceId;
use hush::crypto::envelope::Payload;
use hush::crypto::sender_keys::{Recipient, SenderKeyState};
use hush::protocol::b64;
use hush::store::RoomId;
use serde_json::Value;

const METRICS_TOKEN: &str = "client-store-test-metrics";

/// `hush serve` as a child process on a free loopback port, killed on
/// drop; rate limits raised so that seeding a room is quick.
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
            .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
            .args(["--metrics-token", METRICS_TOKEN, "--log-level", "trace"])
            .args(["--frame-rate", "100000/s:100000"])
            .args(["--message-rate", "100000/s:100000"])
            .args(["--user-message-rate", "100000/s:100000"])
            .arg("--db")
            .arg(server_db(&dir.path().join("data/hush.db"))?)
            .env_remove("HUSH_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let server = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let client = hush::client::tls::http_client();
        for _ in 0..300 {
            if let Ok(r) = client.get(format!("{}/healthz", server.url)).send().await
                && r.status().is_success()
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("hush serve did not become healthy")
    }

    /// Log entries the server has read for sync pages so far.
    async fn entries_synced(&self) -> Result<u64> {
        let text = hush::client::tls::http_client()
            .get(format!("{}/metrics", self.url))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await?
            .text()
            .await?;
        text.lines()
            .find_map(|line| line.strip_prefix("hush_sync_entries_total "))
            .context("no hush_sync_entries_total in /metrics")?
            .trim()
            .parse()
            .context("hush_sync_entries_total is a number")
    }

    fn log(&self) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.dir.path().join("server.log"))?)
    }

    /// Kills the server and waits for it to be gone.
    fn stop(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hush read --json` lines, parsed.
fn read_json(url: &str, keys: &Path, user: &str, args: &[&str]) -> Result<Vec<Value>> {
    let mut all = vec!["read", "--json"];
    all.extend_from_slice(args);
    ok(hush(url, keys, user, &all)?)?
        .lines()
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

fn texts(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["kind"] == "message")
        .filter_map(|l| l["text"].as_str().map(str::to_owned))
        .collect()
}

/// alice's room `name` with bob in it, made with the CLI; returns its id.
fn room_with_bob(url: &str, keys: &Path, name: &str) -> Result<i64> {
    let made = ok(hush(url, keys, "alice", &["room", "create", name])?)?;
    ok(hush(url, keys, "alice", &["room", "invite", name, "bob"])?)?;
    ok(hush(url, keys, "bob", &["room", "join", name])?)?;
    let id = made
        .rsplit("(id ")
        .next()
        .and_then(|rest| rest.trim().trim_end_matches(')').parse().ok())
        .with_context(|| format!("no room id in {made:?}"))?;
    Ok(id)
}

/// Posts `count` real sealed messages as `user` into `room`, from a new
/// device of theirs, through the library's link: one sender-key
/// distribution for `members`, then the messages, 500 at a time, each
/// batch acknowledged before the next. Returns the bodies posted.
async fn seed(
    url: &str,
    keys: &Path,
    user: &str,
    room: i64,
    members: &[&str],
    count: usize,
) -> Result<Vec<Vec<u8>>> {
    let mut account = Account::open_with(
        url,
        KeyStore::new(keys),
        user,
        format!("passphrase of {user}"),
        &format!("password of {user}"),
    )
    .await?;
    let mut member_keys = Vec::new();
    for member in members {
        let key = if *member == user {
            account.identity.current.public().clone()
        } else {
            account
                .directory
                .peer(member)
                .await?
                .usable
                .context("a usable key")?
        };
        member_keys.push(((*member).to_owned(), key));
    }
    let recipients: Vec<Recipient<'_>> = member_keys
        .iter()
        .map(|(username, identity)| Recipient { username, identity })
        .collect();
    let signer = &account.identity.current;
    let mut state = SenderKeyState::new(room, user, DeviceId::generate()?);
    let mut bodies = vec![state.rotate(&recipients, signer)?];
    for i in 0..count {
        bodies.push(state.seal(&Payload::text(format!("seeded message {i}")), signer)?);
    }
    let token = account.api.token().context("logged in")?.to_owned();
    let mut link = Link::start(url, token);
    for chunk in bodies.chunks(500) {
        for body in chunk {
            link.send(RoomId(room), new_client_id(), b64::encode(body))
                .await;
        }
        let mut acked = 0;
        while acked < chunk.len() {
            match next_event(&mut link).await? {
                Event::Acked { .. } => acked += 1,
                Event::SendFailed { message, .. } => {
                    bail!("a seeded message was refused: {message}")
                }
                _ => {}
            }
        }
    }
    Ok(bodies)
}

/// Posts `body` as `user` (a stored body again: what a replaying server or
/// a thief with the user's session could do).
async fn post_again(url: &str, keys: &Path, user: &str, room: i64, body: &[u8]) -> Result<()> {
    let account = Account::open_with(
        url,
        KeyStore::new(keys),
        user,
        format!("passphrase of {user}"),
        &format!("password of {user}"),
    )
    .await?;
    let mut link = Link::start(url, account.api.token().context("logged in")?.to_owned());
    link.send(RoomId(room), new_client_id(), b64::encode(body))
        .await;
    loop {
        match next_event(&mut link).await? {
            Event::Acked { .. } => return Ok(()),
            Event::SendFailed { message, .. } => bail!("refused: {message}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_send_in_a_5000_message_room_fetches_only_the_new_entries() -> Result<()> {
    let server = Server::start().await?;
    let home = tempfile::tempdir()?;
    let keys = fixture_key_store(&server.url, home.path(), &["alice", "bob"])?;
    let url = server.url.clone();
    let room = room_with_bob(&url, &keys, "big")?;
    seed(&url, &keys, "bob", room, &["alice", "bob"], 5000).await?;

    let before = server.entries_synced().await?;
    ok(hush(
        &url,
        &keys,
        "alice",
        &["send", "--room", "big", "first from alice"],
    )?)?;
    let first = server.entries_synced().await? - before;
    ensure!(
        first > 5000,
        "the first send reads the whole room: {first} entries"
    );

    let before = server.entries_synced().await?;
    ok(hush(
        &url,
        &keys,
        "alice",
        &["send", "--room", "big", "second from alice"],
    )?)?;
    let second = server.entries_synced().await? - before;
    // What alice's first send added: its sender-key distribution and the message.
    ensure!(
        second <= 2,
        "the second send reads only the new entries: {second}"
    );

    let before = server.entries_synced().await?;
    let last = read_json(&url, &keys, "alice", &["--room", "big", "--last", "3"])?;
    let third = server.entries_synced().await? - before;
    ensure!(
        third <= 1,
        "a read after it reads only the new entry: {third}"
    );
    assert_eq!(
        texts(&last),
        [
            "seeded message 4999",
            "first from alice",
            "second from alice"
        ]
    );
    let everything = read_json(&url, &keys, "alice", &["--room", "big"])?;
    assert_eq!(texts(&everything).len(), 5002);
    assert!(everything.iter().all(|l| l["kind"] != "rejected"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_or_garbage_store_is_rebuilt_with_identical_output() -> Result<()> {
    let server = Server::start().await?;
    let home = tempfile::tempdir()?;
    let keys = fixture_key_store(&server.url, home.path(), &["alice", "bob", "carol"])?;
    let url = server.url.clone();
    let room = room_with_bob(&url, &keys, "team")?;
    let save_dir = home.path().join("downloads");
    let save = save_dir.to_str().context("utf-8")?;
    let read = |args: &[&str]| {
        let mut all = vec!["--room", "team", "--save-dir", save];
        all.extend_from_slice(args);
        read_json(&url, &keys, "alice", &all)
    };
    ok(hush(
        &url,
        &keys,
        "alice",
        &["send", "--room", "team", "one"],
    )?)?;
    ok(hush(
        &url,
        &keys,
        "bob",
        &["send", "--room", "team", "two"],
    )?)?;
    // Read in steps, so the store is built incrementally.
    let early = read(&[])?;
    assert_eq!(texts(&early), ["one", "two"]);
    let file = home.path().join("notes.txt");
    std::fs::write(&file, "attached")?;
    ok(hush(
        &url,
        &keys,
        "bob",
        &[
            "send",
            "--room",
            "team",
            "--file",
            file.to_str().context("utf-8")?,
        ],
    )?)?;
    ok(hush(
        &url,
        &keys,
        "alice",
        &["room", "invite", "team", "carol"],
    )?)?;
    ok(hush(&url, &keys, "carol", &["room", "join", "team"])?)?;
    seed(&url, &keys, "bob", room, &["alice", "bob", "carol"], 30).await?;
    ok(hush(
        &url,
        &keys,
        "carol",
        &["send", "--room", "team", "three"],
    )?)?;
    ok(hush(
        &url,
        &keys,
        "alice",
        &["send", "--room", "team", "four"],
    )?)?;
    let incremental = read(&[])?;
    assert_eq!(texts(&incremental).len(), 34, "{incremental:?}");
    assert!(incremental.iter().any(|l| l["kind"] == "event"));
    assert!(incremental.iter().any(|l| l["file"]["name"] == "notes.txt"));

    let store = keys.join("alice.store");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", store.display()));
    }
    assert_eq!(read(&[])?, incremental, "rebuilt after deletion");

    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", store.display()));
    }
    std::fs::write(
        &store,
        b"this is not an SQLite database, it is garbage".repeat(200),
    )?;
    let output = hush(
        &url,
        &keys,
        "alice",
        &["read", "--json", "--room", "team", "--save-dir", save],
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let rebuilt: Vec<Value> = ok(output)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(rebuilt, incremental, "rebuilt after damage");
    assert!(stderr.contains("moved to"), "the user is told: {stderr}");
    let aside = std::fs::read_dir(&keys)?.filter_map(|e| e.ok()).any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with("alice.store.damaged-")
    });
    assert!(aside, "the damaged file is kept aside");

    // A new machine: the exported identity, imported into an empty key store.
    let bundle = home.path().join("alice.export");
    let bundle = bundle.to_str().context("utf-8")?;
    ok(hush(
        &url,
        &keys,
        "alice",
        &["keys", "export", "alice", bundle],
    )?)?;
    let new_machine = home.path().join("new-machine");
    ok(hush(
        &url,
        &new_machine,
        "alice",
        &["keys", "import", bundle],
    )?)?;
    let elsewhere = read_json(
        &url,
        &new_machine,
        "alice",
        &["--room", "team", "--save-dir", save],
    )?;
    assert_eq!(elsewhere, incremental, "an imported key reads all history");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_after_the_cursor_is_judged_as_a_full_replay_judges_it() -> Result<()> {
    let server = Server::start().await?;
    let home = tempfile::tempdir()?;
    let keys = fixture_key_store(&server.url, home.path(), &["alice", "bob"])?;
    let url = server.url.clone();
    let room = room_with_bob(&url, &keys, "echo")?;
    let bodies = seed(&url, &keys, "bob", room, &["alice", "bob"], 3).await?;
    let before = read_json(&url, &keys, "alice", &["--room", "echo"])?;
    assert_eq!(texts(&before).len(), 3);
    // The same message again, after alice's cursor: the seen counters of
    // bob's chain must have been kept in the store to refuse it.
    post_again(&url, &keys, "bob", room, &bodies[2]).await?;
    let incremental = read_json(&url, &keys, "alice", &["--room", "echo"])?;
    let last = incremental.last().context("an entry")?;
    assert_eq!(last["kind"], "rejected", "{last}");
    assert_eq!(texts(&incremental).len(), 3);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(keys.join(format!("alice.store{suffix}")));
    }
    assert_eq!(
        read_json(&url, &keys, "alice", &["--room", "echo"])?,
        incremental
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_on_disk_holds_no_plaintext() -> Result<()> {
    let server = Server::start().await?;
    let home = tempfile::tempdir()?;
    let keys = fixture_key_store(&server.url, home.path(), &["alice", "bob"])?;
    let url = server.url.clone();
    let marker = "STOREMARKER-91c2e";
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
            file.to_str().context("utf-8")?,
        ],
    )?)?;
    let save = home.path().join("dl");
    for user in ["bob", "alice"] {
        let read = ok(hush(
            &url,
            &keys,
            user,
            &[
                "read",
                "--to",
                if user == "bob" { "alice" } else { "bob" },
                "--save-dir",
                save.to_str().context("utf-8")?,
            ],
        )?)?;
        assert!(read.contains(marker), "{user} reads it: {read}");
    }
    let mut looked_at = 0;
    for user in ["alice", "bob"] {
        for suffix in ["", "-wal", "-shm"] {
            let path = keys.join(format!("{user}.store{suffix}"));
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            looked_at += 1;
            assert!(
                !contains(&bytes, marker.as_bytes()),
                "the marker is readable in {}",
                path.display()
            );
            assert!(
                !contains(&bytes, b"file content"),
                "file content is readable in {}",
                path.display()
            );
            let mode =
                std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path)?.permissions());
            assert_eq!(mode & 0o777, 0o600, "{} is private", path.display());
        }
    }
    // The WALs exist only while a process has the store open, or if the
    // last one did not close it cleanly; whatever is on disk was checked.
    assert!(looked_at >= 2, "both stores exist: {looked_at}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn search_finds_words_offline_and_by_room() -> Result<()> {
    let mut server = Server::start().await?;
    let home = tempfile::tempdir()?;
    let keys = fixture_key_store(&server.url, home.path(), &["alice", "bob"])?;
    let url = server.url.clone();
    room_with_bob(&url, &keys, "garden")?;
    room_with_bob(&url, &keys, "kitchen")?;
    let word = "zucchinimarker";
    ok(hush(
        &url,
        &keys,
        "bob",
        &["send", "--room", "garden", &format!("the {word} grew tall")],
    )?)?;
    ok(hush(
        &url,
        &keys,
        "bob",
        &["send", "--room", "garden", "nothing to see"],
    )?)?;
    ok(hush(
        &url,
        &keys,
        "bob",
        &["send", "--room", "kitchen", "Zucchinimarker soup tonight"],
    )?)?;
    ok(hush(&url, &keys, "alice", &["read", "--room", "garden"])?)?;
    ok(hush(&url, &keys, "alice", &["read", "--room", "kitchen"])?)?;
    server.stop()?;

    let everywhere = ok(hush(&url, &keys, "alice", &["search", word])?)?;
    let lines: Vec<&str> = everywhere.lines().collect();
    assert_eq!(lines.len(), 2, "{everywhere}");
    assert!(
        lines[0].starts_with("#garden ") && lines[0].contains("bob: the zucchinimarker grew tall"),
        "{everywhere}"
    );
    assert!(
        lines[1].starts_with("#kitchen ") && lines[1].contains("soup tonight"),
        "{everywhere}"
    );
    let in_kitchen = ok(hush(
        &url,
        &keys,
        "alice",
        &["search", word, "--room", "kitchen"],
    )?)?;
    assert_eq!(in_kitchen.lines().count(), 1, "{in_kitchen}");
    assert!(in_kitchen.contains("soup tonight"));
    let two_words = ok(hush(
        &url,
        &keys,
        "alice",
        &["search", "grew zucchinimarker"],
    )?)?;
    assert_eq!(two_words.lines().count(), 1, "{two_words}");
    let none = hush(&url, &keys, "alice", &["search", "absentword"])?;
    assert!(none.status.success() && none.stdout.is_empty());

    assert!(
        !contains(&server.log()?, word.as_bytes()),
        "the server never saw the word"
    );
    for suffix in ["", "-wal"] {
        let Ok(bytes) = std::fs::read(keys.join(format!("alice.store{suffix}"))) else {
            continue;
        };
        assert!(
            !contains(&bytes, word.as_bytes()),
            "no index of the word on disk"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn read_last_and_since_choose_the_window() -> Result<()> {
    let server = Server::start().await?;
    let home = tempfile::tempdir()?;
    let keys = fixture_key_store(&server.url, home.path(), &["alice", "bob"])?;
    let url = server.url.clone();
    for i in 1..=5 {
        ok(hush(
            &url,
            &keys,
            "bob",
            &["send", "--to", "alice", &format!("m{i}")],
        )?)?;
    }
    let all = read_json(&url, &keys, "alice", &["--with", "bob"])?;
    assert_eq!(texts(&all), ["m1", "m2", "m3", "m4", "m5"]);
    let last = read_json(&url, &keys, "alice", &["--with", "bob", "--last", "2"])?;
    assert_eq!(last, all[all.len() - 2..].to_vec());

    let recent = read_json(&url, &keys, "alice", &["--with", "bob", "--since", "1h"])?;
    assert_eq!(recent, all);
    let future = read_json(
        &url,
        &keys,
        "alice",
        &["--with", "bob", "--since", "2999-01-01T00:00:00Z"],
    )?;
    assert!(future.is_empty(), "{future:?}");
    let third = all
        .iter()
        .find(|l| l["text"] == "m3")
        .and_then(|l| l["ts"].as_i64())
        .context("m3 has a time")?;
    let at = std::time::UNIX_EPOCH + Duration::from_millis(third as u64);
    let since = humantime::format_rfc3339_millis(at).to_string();
    let from_third = read_json(&url, &keys, "alice", &["--with", "bob", "--since", &since])?;
    assert_eq!(texts(&from_third), ["m3", "m4", "m5"]);
    let both = read_json(
        &url,
        &keys,
        "alice",
        &["--with", "bob", "--since", &since, "--last", "1"],
    )?;
    assert_eq!(texts(&both), ["m5"]);
    let bad = hush(
        &url,
        &keys,
        "alice",
        &["read", "--with", "bob", "--since", "yesterdayish"],
    )?;
    assert!(!bad.status.success());

    // Verifying bob later marks his stored messages too, as a full read would.
    assert!(
        all.iter()
            .filter(|l| l["kind"] == "message")
            .all(|l| l["verified"] == false)
    );
    ok(hush(
        &url,
        &keys,
        "alice",
        &["keys", "verify", "bob", "--mark-verified"],
    )?)?;
    let verified = read_json(&url, &keys, "alice", &["--with", "bob"])?;
    let messages: Vec<&Value> = verified.iter().filter(|l| l["kind"] == "message").collect();
    assert_eq!(messages.len(), 5);
    assert!(
        messages.iter().all(|l| l["verified"] == true),
        "{verified:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_of_one_identity_share_the_store() -> Result<()> {
    let server = Server::start().await?;
    let home = tempfile::tempdir()?;
    let keys = fixture_key_store(&server.url, home.path(), &["alice", "bob"])?;
    let url = server.url.clone();
    room_with_bob(&url, &keys, "busy")?;
    ok(hush(
        &url,
        &keys,
        "bob",
        &["send", "--room", "busy", "before chat"],
    )?)?;

    let log = home.path().join("chat.out");
    let mut chat = hush_command(&url, &keys, "alice")
        .arg("chat")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&log)?)
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut chat_input = chat.stdin.take().context("chat stdin")?;
    // While `hush chat` of alice holds and writes the store, other
    // processes of alice send and read through the same store at once.
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let (url, keys) = (url.clone(), keys.clone());
            std::thread::spawn(move || -> Result<()> {
                for j in 0..3 {
                    ok(hush(
                        &url,
                        &keys,
                        "alice",
                        &["send", "--room", "busy", &format!("w{i}-{j}")],
                    )?)?;
                    ok(hush(
                        &url,
                        &keys,
                        "alice",
                        &["read", "--room", "busy", "--last", "1"],
                    )?)?;
                }
                Ok(())
            })
        })
        .collect();
    for k in 0..5 {
        ok(hush(
            &url,
            &keys,
            "bob",
            &["send", "--room", "busy", &format!("b{k}")],
        )?)?;
    }
    for worker in workers {
        worker.join().expect("worker thread")?;
    }
    writeln!(chat_input, "/go busy")?;
    writeln!(chat_input, "from chat")?;
    writeln!(chat_input, "/quit")?;
    drop(chat_input);
    let status = wait_with_limit(&mut chat, Duration::from_secs(60))?;
    ensure!(status.success(), "hush chat ended with {status}");
    let chat_out = std::fs::read_to_string(&log)?;
    assert!(!chat_out.contains("local store"), "{chat_out}");

    let through_store = read_json(&url, &keys, "alice", &["--room", "busy"])?;
    let rejected: Vec<&Value> = through_store
        .iter()
        .filter(|l| l["kind"] == "rejected")
        .collect();
    assert!(rejected.is_empty(), "rejected: {rejected:?}");
    let mut seen = texts(&through_store);
    assert_eq!(seen.len(), 1 + 9 + 5 + 1, "{seen:?}");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 16, "each message once");
    // The store several processes wrote gives what a fresh one gives.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(keys.join(format!("alice.store{suffix}")));
    }
    assert_eq!(
        read_json(&url, &keys, "alice", &["--room", "busy"])?,
        through_store
    );
    Ok(())
}

fn wait_with_limit(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if std::time::Instant::now() > deadline {
            child.kill()?;
            bail!("the process did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
