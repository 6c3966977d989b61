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

use anyhow::{Context, Result};
use hush::client::account::Account;
use hush::client::keystore::KeyStore;
use hush::client::link::Link;
use hush::client::transcript;
use hush::crypto::device::DeviceId;
use hush::crypto::envelope::{self, Payload};
use hush::crypto::keys::IdentityPrivateKey;
use hush::crypto::sender_keys::{self, Recipient, SenderKey};
use hush::protocol::b64;
use hush::store::RoomId;
use serde_json::Value;

use crate::cli_support::{fixture_key_store, hush, ok};
use crate::support::{TestApp, spawn_app};

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
/// user's own identity key and sender key) and posts it; returns its seq.
async fn post_as(world: &World, user: &str, room: RoomId, payload: &Payload) -> Result<i64> {
    let mut account = world.account(user).await?;
    let room = account.api.room(room).await?;
    let (mut link, mut conversation, _) = transcript::load(&mut account, &room).await?;
    let client_id = transcript::new_client_id();
    let ids = transcript::post(
        &mut account,
        &link,
        &mut conversation,
        &room,
        payload,
        &client_id,
    )
    .await?;
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
