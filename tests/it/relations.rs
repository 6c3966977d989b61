//! Replies, edits, deletes for everyone, reactions and disappearing
//! messages (PROTOCOL §21) with the real `hush` binary against a real
//! server: what one user does with the CLI is what another's
//! `hush read --json` shows; edits and deletes another member forges with
//! their own (real) keys are rejected and change nothing; a delete erases
//! the ciphertext from the server's database and WAL and the plaintext
//! from the reader's store; a disappearing room loses its messages
//! everywhere without leaving a gap; a payload type no client knows is
//! "update hush", not an attack.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hush::client::account::Account;
use hush::client::keystore::KeyStore;
use hush::client::link::Link;
use hush::client::transcript;
use hush::config::ServerConfig;
use hush::crypto::device::DeviceId;
use hush::crypto::envelope::{self, Payload};
use hush::crypto::keys::IdentityPrivateKey;
use hush::crypto::room_timer;
use hush::crypto::sender_keys::{self, Recipient, SenderKey};
use hush::protocol::b64;
use hush::store::RoomId;
use serde_json::Value;

use crate::cli_support::{contains, fixture_key_store, hush, ok};
use crate::support::{TestApp, spawn_app, spawn_app_with};

/// Two users' key stores (one directory) on a fresh server.
struct World {
    app: TestApp,
    keys: std::path::PathBuf,
    _home: tempfile::TempDir,
}

impl World {
    async fn new(users: &[&str]) -> Result<Self> {
        Self::on(spawn_app().await?, users)
    }

    fn on(app: TestApp, users: &[&str]) -> Result<Self> {
        let home = tempfile::tempdir()?;
        let keys = fixture_key_store(&app.base_url, home.path(), users)?;
        Ok(Self {
            app,
            keys,
            _home: home,
        })
    }

    /// `hush ARGS` as `user`; its stdout, failing if the command did.
    fn run(&self, user: &str, args: &[&str]) -> Result<String> {
        ok(hush(&self.app.base_url, &self.keys, user, args)?)
    }

    /// Runs a sending command and returns the `#seq` it reports.
    fn sent(&self, user: &str, args: &[&str]) -> Result<i64> {
        let out = self.run(user, args)?;
        seq_of(&out)
    }

    /// `hush read --json` as `user` in the DM with `peer`: one object per line.
    fn read_json(&self, user: &str, peer: &str) -> Result<Vec<Value>> {
        let out = self.run(user, &["read", "--with", peer, "--json"])?;
        out.lines()
            .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}")))
            .collect()
    }

    /// The user's account through the client library (its own device),
    /// for what the CLI refuses to do: forging, raw payloads.
    async fn account(&self, user: &str) -> Result<Account> {
        Account::open_with(
            &self.app.base_url,
            KeyStore::new(&self.keys),
            user,
            format!("passphrase of {user}"),
            &format!("password of {user}"),
        )
        .await
    }
}

/// The `#N` in "sent to @bob as #N".
fn seq_of(out: &str) -> Result<i64> {
    let at = out
        .rfind('#')
        .with_context(|| format!("no #seq in {out:?}"))?;
    let digits: String = out[at + 1..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Ok(digits.parse()?)
}

fn line_at(lines: &[Value], seq: i64) -> Result<&Value> {
    lines
        .iter()
        .find(|l| l["seq"] == seq)
        .with_context(|| format!("no line for #{seq} in {lines:#?}"))
}

/// Seals `payload` as `user` through the library (a real envelope with the
/// user's own identity key and sender key) and posts it (never with
/// `erase`); returns its seq.
async fn post_as(world: &World, user: &str, room: RoomId, payload: &Payload) -> Result<i64> {
    let mut account = world.account(user).await?;
    let room = account.api.room(room).await?;
    let (mut link, mut conversation, _) = transcript::load(&mut account, &room).await?;
    let client_id = transcript::new_client_id();
    // Sealed as the CLI would, but posted without `erase`: a forger does
    // not ask the server for what it would refuse.
    let outgoing = conversation
        .seal(
            payload,
            &room.members,
            room.is_dm(),
            &account.identity,
            &mut account.directory,
        )
        .await?;
    let mut ids = Vec::new();
    for (i, body) in outgoing.bodies.iter().enumerate() {
        let id = if i + 1 == outgoing.bodies.len() {
            client_id.clone()
        } else {
            transcript::new_client_id()
        };
        link.send(room.id, id.clone(), b64::encode(body)).await;
        ids.push(id);
    }
    let seq = transcript::await_acks(&mut link, ids).await?;
    account.finish()?;
    Ok(seq)
}

async fn dm_of(world: &World, user: &str, peer: &str) -> Result<RoomId> {
    Ok(world.account(user).await?.api.open_dm(peer).await?.id)
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_edits_and_reactions_by_cli_show_in_the_other_users_read() -> Result<()> {
    let world = World::new(&["alice", "bob"]).await?;
    let first = world.sent("alice", &["send", "--to", "bob", "lunch on Fridy?"])?;
    let reply = world.sent(
        "bob",
        &[
            "send",
            "--to",
            "alice",
            "--reply",
            &first.to_string(),
            "Yes, Friday.",
        ],
    )?;
    let edit = world.sent(
        "alice",
        &[
            "edit",
            "--to",
            "bob",
            &first.to_string(),
            "lunch on Friday?",
        ],
    )?;
    let bob_thumb = world.sent("bob", &["react", "--to", "alice", &first.to_string(), "👍"])?;
    world.sent("alice", &["react", "--to", "bob", &first.to_string(), "👍"])?;
    world.sent("alice", &["react", "--to", "bob", &reply.to_string(), "❤️"])?;
    // Bob reacting again with the same emoji takes his reaction back.
    let bob_undo = world.sent("bob", &["react", "--to", "alice", &first.to_string(), "👍"])?;

    let lines = world.read_json("bob", "alice")?;
    let original = line_at(&lines, first)?;
    assert_eq!(original["kind"], "message");
    assert_eq!(
        original["text"], "lunch on Friday?",
        "the latest edit's text"
    );
    assert_eq!(original["edited"], true);
    assert_eq!(original["deleted"], false);
    assert_eq!(original["reactions"], serde_json::json!({"👍": ["alice"]}));
    let answer = line_at(&lines, reply)?;
    assert_eq!(answer["reply_to"], first);
    assert_eq!(answer["reactions"], serde_json::json!({"❤️": ["alice"]}));
    assert_eq!(answer["edited"], false);
    let edit_line = line_at(&lines, edit)?;
    assert_eq!(edit_line["kind"], "edit");
    assert_eq!(edit_line["of"], first);
    assert_eq!(edit_line["text"], "lunch on Friday?");
    assert_eq!(edit_line["sender"], "alice");
    assert_eq!(edit_line["late"], false);
    let thumb = line_at(&lines, bob_thumb)?;
    assert_eq!(thumb["kind"], "react");
    assert_eq!(thumb["emoji"], "👍");
    assert_eq!(
        line_at(&lines, bob_undo)?["emoji"],
        "",
        "the toggle sent \"\""
    );

    // Alice sees the same state; the text transcript quotes and marks.
    let alice_lines = world.read_json("alice", "bob")?;
    assert_eq!(line_at(&alice_lines, first)?, original);
    let text = world.run("bob", &["read", "--with", "alice"])?;
    assert!(text.contains("↪ alice: lunch on Friday?"), "{text}");
    assert!(text.contains("lunch on Friday? (edited)"), "{text}");
    assert!(text.contains("👍 1 (alice)"), "{text}");
    assert!(
        text.contains(&format!("#{first} ")),
        "seqs are shown: {text}"
    );

    // The CLI refuses what readers would reject: editing bob's message.
    let refused = hush(
        &world.app.base_url,
        &world.keys,
        "alice",
        &["edit", "--to", "bob", &reply.to_string(), "not mine"],
    )?;
    assert!(!refused.status.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn edits_and_deletes_forged_by_another_member_are_rejected() -> Result<()> {
    let world = World::new(&["alice", "bob"]).await?;
    let first = world.sent("alice", &["send", "--to", "bob", "the original words"])?;
    let dm = dm_of(&world, "alice", "bob").await?;
    // Bob seals, with his own real keys, an edit and a delete of alice's
    // message: the server stores them (it cannot tell), readers must not
    // believe them.
    let forged_edit = post_as(
        &world,
        "bob",
        dm,
        &Payload::Edit {
            of: first,
            text: "words alice never wrote".into(),
        },
    )
    .await?;
    let forged_delete = post_as(&world, "bob", dm, &Payload::Delete { of: first }).await?;
    // A relation that names itself or a later message is rejected too.
    let forward = post_as(
        &world,
        "bob",
        dm,
        &Payload::React {
            of: forged_delete + 5,
            emoji: "👍".into(),
        },
    )
    .await?;

    for (reader, peer) in [("alice", "bob"), ("bob", "alice")] {
        let lines = world.read_json(reader, peer)?;
        let original = line_at(&lines, first)?;
        assert_eq!(original["text"], "the original words", "{reader}");
        assert_eq!(original["edited"], false, "{reader}");
        assert_eq!(original["deleted"], false, "{reader}");
        let edit = line_at(&lines, forged_edit)?;
        assert_eq!(edit["kind"], "rejected", "{reader}");
        assert_eq!(edit["warning"], "an edit of someone else's message");
        let delete = line_at(&lines, forged_delete)?;
        assert_eq!(delete["kind"], "rejected", "{reader}");
        assert_eq!(delete["warning"], "a delete of someone else's message");
        assert_eq!(line_at(&lines, forward)?["kind"], "rejected", "{reader}");
    }
    let text = world.run("alice", &["read", "--with", "bob"])?;
    assert!(
        text.contains("REJECTED: an edit of someone else's message"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_payload_type_shows_update_hush_not_rejected() -> Result<()> {
    let world = World::new(&["alice", "bob"]).await?;
    let dm = dm_of(&world, "alice", "bob").await?;
    let alice = fixture_key("alice")?;
    let bob = fixture_key("bob")?;
    let device = DeviceId::generate()?;
    let key = SenderKey::generate(1)?;
    let recipients = [
        Recipient {
            username: "alice",
            identity: alice.public(),
        },
        Recipient {
            username: "bob",
            identity: bob.public(),
        },
    ];
    let distribution =
        sender_keys::seal_distribution(dm.0, "alice", &device, &key, &recipients, &alice)?;
    let poll = envelope::seal_plaintext(
        dm.0,
        "alice",
        &device,
        &key,
        0,
        br#"{"v":1,"t":"poll","question":"lunch?","options":["yes","no"]}"#,
        &alice,
    )?;
    let account = world.account("alice").await?;
    let token = account.api.token().context("logged in")?.to_owned();
    let mut link = Link::start(&world.app.base_url, token);
    let mut seqs = Vec::new();
    for body in [distribution, poll] {
        let client_id = transcript::new_client_id();
        link.send(dm, client_id.clone(), b64::encode(&body)).await;
        seqs.push(transcript::await_acks(&mut link, vec![client_id]).await?);
    }
    let lines = world.read_json("bob", "alice")?;
    let poll = line_at(&lines, seqs[1])?;
    assert_eq!(poll["kind"], "unsupported");
    assert_eq!(poll["sender"], "alice");
    assert!(
        poll["text"].as_str().unwrap_or("").contains("update hush"),
        "{poll}"
    );
    Ok(())
}

fn fixture_key(name: &str) -> Result<IdentityPrivateKey> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/keys/{name}.pem"));
    Ok(IdentityPrivateKey::from_pkcs8_pem(
        &std::fs::read_to_string(path)?,
    )?)
}

/// Waits until `holds` is true, up to `limit`.
async fn eventually(limit: Duration, mut holds: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    loop {
        if holds()? {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("still not so after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the server's database file or its WAL holds `bytes`.
fn on_disk(app: &TestApp, bytes: &[u8]) -> bool {
    let wal = format!("{}-wal", app.db_path.display());
    [app.db_path.clone(), wal.into()]
        .iter()
        .any(|path| std::fs::read(path).is_ok_and(|data| contains(&data, bytes)))
}

/// The ciphertext part of the stored body of `seq` in `room`, as the
/// server has it now (to look for it on disk).
async fn stored_ciphertext(world: &World, user: &str, room: RoomId, seq: i64) -> Result<Vec<u8>> {
    let account = world.account(user).await?;
    let token = account.api.token().context("logged in")?.to_owned();
    let mut ws = world.app.connect_ws(&token).await?;
    let (entries, _) = ws.sync(room.0, seq - 1).await?;
    let entry = entries
        .iter()
        .find(|e| e["seq"] == seq)
        .context("the entry is served")?;
    let body = b64::decode(entry["body"].as_str().context("a body")?)?;
    ensure!(body.len() > 120, "an envelope");
    // Past the header (magic .. counter .. nonce): AES-GCM output.
    Ok(body[70..body.len().min(70 + 48)].to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_erases_the_ciphertext_on_the_server_and_the_plaintext_at_the_reader() -> Result<()>
{
    let world = World::new(&["alice", "bob"]).await?;
    let marker = "DELMARK-4c1e9a";
    let first = world.sent(
        "alice",
        &["send", "--to", "bob", &format!("{marker} soon gone")],
    )?;
    let edit = world.sent(
        "alice",
        &[
            "edit",
            "--to",
            "bob",
            &first.to_string(),
            &format!("{marker} edited, then gone"),
        ],
    )?;
    world.sent("bob", &["react", "--to", "alice", &first.to_string(), "👀"])?;
    let kept = world.sent("alice", &["send", "--to", "bob", "this one stays"])?;
    // Bob has read it: his store holds it, and search finds it.
    let lines = world.read_json("bob", "alice")?;
    assert!(
        line_at(&lines, first)?["text"]
            .as_str()
            .unwrap_or("")
            .contains(marker)
    );
    let found = world.run("bob", &["search", marker])?;
    assert!(
        found.contains(&format!("#{first} ")),
        "bob's store has it: {found}"
    );
    let dm = dm_of(&world, "bob", "alice").await?;
    let ciphertext = stored_ciphertext(&world, "bob", dm, first).await?;
    assert!(
        on_disk(&world.app, &ciphertext),
        "the check can see the ciphertext"
    );

    let delete = world.sent("alice", &["delete", "--to", "bob", &first.to_string()])?;

    // The server erased the ciphertext from its database file and WAL.
    eventually(Duration::from_secs(10), || {
        Ok(!on_disk(&world.app, &ciphertext))
    })
    .await?;
    for (reader, peer) in [("bob", "alice"), ("alice", "bob")] {
        let lines = world.read_json(reader, peer)?;
        let gone = line_at(&lines, first)?;
        assert_eq!(gone["kind"], "message", "{reader}: {gone}");
        assert_eq!(gone["deleted"], true, "{reader}");
        assert!(gone.get("text").is_none() && gone.get("reactions").is_none());
        assert_eq!(gone["sender"], "alice");
        let delete_line = line_at(&lines, delete)?;
        assert_eq!(delete_line["kind"], "delete");
        assert_eq!(delete_line["of"], first);
        // The edit and the reaction of it went with it.
        assert!(
            lines
                .iter()
                .all(|l| l["of"] != first || l["kind"] == "delete"),
            "{lines:#?}"
        );
        assert!(lines.iter().all(|l| l["seq"] != edit), "{reader}");
        assert_eq!(line_at(&lines, kept)?["text"], "this one stays");
        let all = serde_json::to_string(&lines)?;
        assert!(!all.contains(marker), "{reader} still shows it: {all}");
    }
    // Nothing of it is left in bob's store for search to find (the store
    // is encrypted, so this is how its content is checked).
    let output = hush(&world.app.base_url, &world.keys, "bob", &["search", marker])?;
    assert!(output.status.success());
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains(marker),
        "bob's store still has it"
    );
    let text = world.run("bob", &["read", "--with", "alice"])?;
    assert!(text.contains("(message deleted)"), "{text}");
    // Only the sender may delete: alice cannot delete bob's message.
    let bobs = world.sent("bob", &["send", "--to", "alice", "bob's own"])?;
    let refused = hush(
        &world.app.base_url,
        &world.keys,
        "alice",
        &["delete", "--to", "bob", &bobs.to_string()],
    )?;
    assert!(!refused.status.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_who_meets_the_tombstone_first_shows_the_message_deleted() -> Result<()> {
    let world = World::new(&["alice", "bob"]).await?;
    let first = world.sent("alice", &["send", "--to", "bob", "never seen by bob"])?;
    world.sent("alice", &["delete", "--to", "bob", &first.to_string()])?;
    // Bob reads the room only now: the server serves a tombstone at
    // `first`, and the signed delete after it.
    let lines = world.read_json("bob", "alice")?;
    let gone = line_at(&lines, first)?;
    assert_eq!(gone["kind"], "message", "{gone}");
    assert_eq!(gone["deleted"], true);
    assert_eq!(gone["sender"], "alice");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn disappearing_messages_expire_for_everyone_and_leave_no_gap() -> Result<()> {
    let config = ServerConfig {
        min_disappearing_secs: 1,
        expiry_interval: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let world = World::on(spawn_app_with(config).await?, &["alice", "bob"])?;
    let before = world.sent("alice", &["send", "--to", "bob", "said before the timer"])?;
    let out = world.run("alice", &["timer", "--to", "bob", "2s"])?;
    assert!(out.contains("disappear after 2 seconds"), "{out}");
    let marker = "EXPMARK-93bd0e";
    let vanishing = world.sent(
        "alice",
        &["send", "--to", "bob", &format!("{marker} vanishing")],
    )?;
    let lines = world.read_json("bob", "alice")?;
    assert!(
        lines.iter().any(|l| l["kind"] == "event"
            && l["text"] == "alice set messages to disappear after 2 seconds"),
        "{lines:#?}"
    );
    assert!(
        line_at(&lines, vanishing)?["text"]
            .as_str()
            .unwrap_or("")
            .contains(marker)
    );
    let dm = dm_of(&world, "bob", "alice").await?;
    let ciphertext = stored_ciphertext(&world, "bob", dm, vanishing).await?;

    // The server erases it from its database and WAL…
    eventually(Duration::from_secs(15), || {
        Ok(!on_disk(&world.app, &ciphertext))
    })
    .await?;
    // …and both readers show it expired, without a gap, and keep what
    // came before the timer.
    for (reader, peer) in [("bob", "alice"), ("alice", "bob")] {
        let lines = world.read_json(reader, peer)?;
        let gone = line_at(&lines, vanishing)?;
        assert_eq!(gone["kind"], "erased", "{reader}: {gone}");
        assert_eq!(gone["reason"], "expired");
        assert_eq!(gone["sender"], "alice");
        assert_eq!(line_at(&lines, before)?["text"], "said before the timer");
        let all = serde_json::to_string(&lines)?;
        assert!(!all.contains(marker), "{reader} still shows it");
        let seqs: Vec<i64> = lines.iter().filter_map(|l| l["seq"].as_i64()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    }
    let output = hush(&world.app.base_url, &world.keys, "bob", &["search", marker])?;
    assert!(!String::from_utf8_lossy(&output.stdout).contains(marker));
    // A later message still arrives and reads normally.
    let off = world.run("alice", &["timer", "--to", "bob", "off"])?;
    assert!(off.contains("turned off"), "{off}");
    let after = world.sent("alice", &["send", "--to", "bob", "after the timer"])?;
    let lines = world.read_json("bob", "alice")?;
    assert_eq!(
        line_at(&lines, after)?["text"],
        "after the timer",
        "{lines:#?}"
    );
    assert!(
        lines.iter().all(|l| l["kind"] != "rejected"),
        "nothing rejected: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["text"] == "alice turned off disappearing messages")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timer_statement_the_server_refuses_sets_nothing() -> Result<()> {
    // The default minimum is 5 minutes: 2 seconds is refused, and nothing
    // changes for the readers.
    let world = World::new(&["alice", "bob"]).await?;
    let refused = hush(
        &world.app.base_url,
        &world.keys,
        "alice",
        &["timer", "--to", "bob", "2s"],
    )?;
    assert!(!refused.status.success());
    let first = world.sent("alice", &["send", "--to", "bob", "stays"])?;
    let lines = world.read_json("bob", "alice")?;
    assert_eq!(line_at(&lines, first)?["text"], "stays");
    assert!(
        lines.iter().all(
            |l| l["kind"] != "event" || !l["text"].as_str().unwrap_or("").contains("disappear")
        )
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_replies_reacts_and_shows_edits_and_deletes_as_they_come() -> Result<()> {
    use std::io::Write;
    use std::process::Stdio;
    let world = World::new(&["alice", "bob"]).await?;
    let first = world.sent("alice", &["send", "--to", "bob", "are we on for Fridy?"])?;
    // They share no room, so alice's first DM is a request for bob (§21).
    world.run("bob", &["accept", "@alice"])?;
    let mut chat = crate::cli_support::hush_command(&world.app.base_url, &world.keys, "bob")
        .arg("chat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut input = chat.stdin.take().context("chat stdin")?;
    let mut out = crate::cli_support::Lines::from(chat.stdout.take().context("chat stdout")?);
    out.wait_for(&format!("#{first} "))?;

    writeln!(input, "/reply {first} yes, Friday")?;
    writeln!(input, "/react {first} 🎉")?;
    out.wait_for("bob reacted 🎉")?;
    world.sent(
        "alice",
        &[
            "edit",
            "--to",
            "bob",
            &first.to_string(),
            "are we on for Friday?",
        ],
    )?;
    out.wait_for("are we on for Friday? (edited)")?;
    world.sent("alice", &["delete", "--to", "bob", &first.to_string()])?;
    out.wait_for("(message deleted)")?;
    writeln!(input, "/quit")?;
    let status = chat.wait()?;
    assert!(status.success(), "hush chat exits cleanly: {status}");

    let lines = world.read_json("alice", "bob")?;
    let reply = lines
        .iter()
        .find(|l| l["text"] == "yes, Friday")
        .context("the reply arrived")?;
    assert_eq!(reply["reply_to"], first);
    assert_eq!(line_at(&lines, first)?["deleted"], true);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timer_change_its_sender_did_not_sign_is_rejected_and_not_applied() -> Result<()> {
    let config = ServerConfig {
        min_disappearing_secs: 1,
        ..ServerConfig::default()
    };
    let world = World::on(spawn_app_with(config).await?, &["alice", "bob"])?;
    world.sent("alice", &["send", "--to", "bob", "hello"])?;
    world.run("alice", &["timer", "--to", "bob", "1w"])?;
    // The server (here: the test, with the database) swaps the statement
    // for one that says the same, signed by bob's key instead of alice's.
    let pool = world.app.sql().await?;
    let (seq, body): (i64, Vec<u8>) =
        hush::store::db::query("SELECT seq, body FROM entries WHERE kind = 'timer'")
            .fetch_one(&pool)
            .await?;
    let statement = room_timer::parse(&body)?.statement;
    ensure!(statement.sender == "alice" && statement.duration_secs == 604_800);
    let forged = room_timer::sign(&statement, &fixture_key("bob")?)?;
    hush::store::db::query("UPDATE entries SET body = ? WHERE kind = 'timer'")
        .bind(forged)
        .execute(&pool)
        .await?;
    pool.close().await;

    let lines = world.read_json("bob", "alice")?;
    let timer = line_at(&lines, seq)?;
    assert_eq!(timer["kind"], "rejected", "{timer}");
    assert!(
        timer["warning"]
            .as_str()
            .unwrap_or("")
            .starts_with("a timer change was rejected: "),
        "{timer}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !l["text"].as_str().unwrap_or("").contains("disappear")),
        "not shown as a timer change: {lines:#?}"
    );
    // Alice's client had not read it yet either: it reads the swapped
    // statement and rejects it the same way.
    let alice_lines = world.read_json("alice", "bob")?;
    assert_eq!(line_at(&alice_lines, seq)?["kind"], "rejected");
    Ok(())
}
