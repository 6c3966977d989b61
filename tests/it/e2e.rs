//! End-to-end encryption through the real client library against a real
//! server: people chat, leave, rotate keys and move machines, while the
//! server (here: the test, with full access to the database) tries to read,
//! tamper with, replay, re-route and substitute keys.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hush::client::account::Account;
use hush::client::api::{Api, Room};
use hush::client::conversation::Shown;
use hush::client::keystore::KeyStore;
use hush::client::link::{Event, Link};
use hush::client::transcript;
use hush::config::ServerConfig;
use hush::crypto::device::DeviceId;
use hush::crypto::envelope::{self, Payload};
use hush::crypto::keys::IdentityPrivateKey;
use hush::crypto::sender_keys::{self, Recipient, SenderKey};
use hush::crypto::statements;
use hush::protocol::WireEntry;
use hush::store::RoomId;
use hush::store::db;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::{open_store, password, server_db, spawn_app};

const PASSPHRASE: &str = "test passphrase";

/// A person with their own key store, logged in through the client library.
struct Person {
    account: Account,
    _keys: TempDir,
}

/// Registers `name` with its fixture key and opens it as a client.
async fn person(server: &str, name: &str) -> Result<Person> {
    let keys_dir = tempfile::tempdir()?;
    let store = KeyStore::new(keys_dir.path());
    let key = fixture_key(name)?;
    store.create(name, &key, PASSPHRASE)?;
    Api::new(server)
        .register(name, &password(name), key.public().spki_der(), None, |m| {
            key.sign(m).expect("fixture key signs")
        })
        .await?;
    let account =
        Account::open_with(server, store, name, PASSPHRASE.into(), &password(name)).await?;
    Ok(Person {
        account,
        _keys: keys_dir,
    })
}

fn fixture_key(name: &str) -> Result<IdentityPrivateKey> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/keys/{name}.pem"));
    Ok(IdentityPrivateKey::from_pkcs8_pem(
        &std::fs::read_to_string(path)?,
    )?)
}

impl Person {
    fn name(&self) -> String {
        self.account.username().to_owned()
    }

    async fn room(&self, id: RoomId) -> Result<Room> {
        Ok(self.account.api.room(id).await?)
    }

    /// Reads the room from the start, seals and posts, waits for the ack.
    async fn send(&mut self, room: RoomId, payload: Payload) -> Result<i64> {
        let room = self.room(room).await?;
        let (mut link, mut conversation, _) = transcript::load(&mut self.account, &room).await?;
        let client_id = transcript::new_client_id();
        let ids = transcript::post(
            &mut self.account,
            &link,
            &mut conversation,
            &room,
            &payload,
            &client_id,
        )
        .await?;
        transcript::await_acks(&mut link, ids).await
    }

    async fn say(&mut self, room: RoomId, text: &str) -> Result<i64> {
        self.send(room, Payload::text(text)).await
    }

    /// Everything the room shows this person, read from the start.
    async fn read(&mut self, room: RoomId) -> Result<Vec<Shown>> {
        let room = self.room(room).await?;
        let (_, _, shown) = transcript::load(&mut self.account, &room).await?;
        Ok(shown)
    }
}

/// The texts this person could open, with their senders, in order.
fn texts(shown: &[Shown]) -> Vec<(String, String)> {
    shown
        .iter()
        .filter_map(|s| match s {
            Shown::Message {
                sender,
                payload: Payload::Text { text, .. },
                ..
            } => Some((sender.clone(), text.clone())),
            _ => None,
        })
        .collect()
}

fn rejected_seqs(shown: &[Shown]) -> Vec<i64> {
    shown
        .iter()
        .filter(|s| matches!(s, Shown::Rejected { .. }))
        .map(Shown::seq)
        .collect()
}

fn pair(sender: &str, text: &str) -> (String, String) {
    (sender.to_owned(), text.to_owned())
}

/// alice's room with bob and carol as members.
async fn room_of_three(alice: &mut Person, bob: &mut Person, carol: &mut Person) -> Result<RoomId> {
    let room = alice.account.api.create_room("team").await?.id;
    for person in [&mut *bob, &mut *carol] {
        alice.account.api.invite(room, &person.name()).await?;
        person.account.api.join(room).await?;
    }
    Ok(room)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_people_chat_in_a_room_and_in_dms_and_each_reads_everything_meant_for_them()
-> Result<()> {
    let app = spawn_app().await?;
    let (mut alice, mut bob, mut carol) = (
        person(&app.base_url, "alice").await?,
        person(&app.base_url, "bob").await?,
        person(&app.base_url, "carol").await?,
    );
    let room = room_of_three(&mut alice, &mut bob, &mut carol).await?;
    alice.say(room, "hello team").await?;
    bob.say(room, "hi alice").await?;
    carol.say(room, "hi both").await?;
    alice.say(room, "second from alice").await?;

    let expected = vec![
        pair("alice", "hello team"),
        pair("bob", "hi alice"),
        pair("carol", "hi both"),
        pair("alice", "second from alice"),
    ];
    for person in [&mut alice, &mut bob, &mut carol] {
        let shown = person.read(room).await?;
        assert_eq!(texts(&shown), expected, "{} reads the room", person.name());
        assert!(
            rejected_seqs(&shown).is_empty(),
            "{} rejected nothing",
            person.name()
        );
    }

    let dm = alice.account.api.open_dm("bob").await?.id;
    alice.say(dm, "just for bob").await?;
    bob.say(dm, "just for alice").await?;
    let expected_dm = vec![pair("alice", "just for bob"), pair("bob", "just for alice")];
    assert_eq!(texts(&bob.read(dm).await?), expected_dm);
    assert_eq!(texts(&alice.read(dm).await?), expected_dm);
    assert!(
        carol.read(dm).await.is_err(),
        "carol cannot even open alice and bob's DM"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_who_left_cannot_decrypt_what_follows_even_with_the_database() -> Result<()> {
    let app = spawn_app().await?;
    let (mut alice, mut bob, mut carol) = (
        person(&app.base_url, "alice").await?,
        person(&app.base_url, "bob").await?,
        person(&app.base_url, "carol").await?,
    );
    let room = room_of_three(&mut alice, &mut bob, &mut carol).await?;
    alice.say(room, "before bob leaves").await?;
    bob.account.api.leave(room).await?;
    let after = alice.say(room, "after bob left").await?;
    assert_eq!(
        texts(&carol.read(room).await?).last(),
        Some(&pair("alice", "after bob left"))
    );

    // Bob gets the whole log straight from the database file, as a
    // malicious server could hand it to him, and still reads nothing new.
    let entries = entries_from_db(&app.db, room).await?;
    let mut conversation = hush::client::conversation::Conversation::new(
        room,
        "bob",
        hush::crypto::device::DeviceId([5; 16]),
    );
    let mut shown = Vec::new();
    for entry in &entries {
        shown.push(
            conversation
                .process(entry, &bob.account.identity, &mut bob.account.directory)
                .await,
        );
    }
    let readable = texts(&shown);
    assert!(readable.contains(&pair("alice", "before bob leaves")));
    assert!(
        !readable.iter().any(|(_, t)| t == "after bob left"),
        "bob read a message sent after he left"
    );
    assert!(
        rejected_seqs(&shown).contains(&after),
        "the message after his departure is unreadable to bob"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_tampered_with_in_the_database_are_rejected_by_every_recipient() -> Result<()> {
    let app = spawn_app().await?;
    let (mut alice, mut bob, mut carol) = (
        person(&app.base_url, "alice").await?,
        person(&app.base_url, "bob").await?,
        person(&app.base_url, "carol").await?,
    );
    let room = room_of_three(&mut alice, &mut bob, &mut carol).await?;
    let other = alice.account.api.create_room("elsewhere").await?.id;
    for person in [&mut bob, &mut carol] {
        alice.account.api.invite(other, &person.name()).await?;
        person.account.api.join(other).await?;
    }
    alice.say(other, "a genuine message elsewhere").await?;
    let flipped = alice.say(room, "this one gets a byte flipped").await?;
    let moved = alice
        .say(room, "this one gets moved to another room")
        .await?;
    let replayed = alice.say(room, "this one gets replayed").await?;
    alice.say(room, "an untouched message").await?;

    let pool = app.sql().await?;
    // 1. Flip one byte in the middle of the stored ciphertext.
    let body: Vec<u8> = db::query("SELECT body FROM entries WHERE room_id = ? AND seq = ?")
        .bind(room.0)
        .bind(flipped)
        .fetch_scalar(&pool)
        .await?;
    let mut tampered = body.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    db::query("UPDATE entries SET body = ? WHERE room_id = ? AND seq = ?")
        .bind(tampered)
        .bind(room.0)
        .bind(flipped)
        .execute(&pool)
        .await?;
    // 2. Re-route a message into the other room, at that room's next position.
    let other_next: i64 =
        db::query("UPDATE rooms SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq")
            .bind(other.0)
            .fetch_scalar(&pool)
            .await?;
    db::query(
        "UPDATE entries SET room_id = ?, seq = ?, client_id = NULL WHERE room_id = ? AND seq = ?",
    )
    .bind(other.0)
    .bind(other_next)
    .bind(room.0)
    .bind(moved)
    .execute(&pool)
    .await?;
    // 3. Replay a message as a new entry at the end of the same room.
    let next: i64 =
        db::query("UPDATE rooms SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq")
            .bind(room.0)
            .fetch_scalar(&pool)
            .await?;
    db::query(
        "INSERT INTO entries (room_id, seq, ts, kind, sender_id, body)
         SELECT room_id, ?, ts, kind, sender_id, body FROM entries WHERE room_id = ? AND seq = ?",
    )
    .bind(next)
    .bind(room.0)
    .bind(replayed)
    .execute(&pool)
    .await?;
    pool.close().await;

    for person in [&mut alice, &mut bob, &mut carol] {
        let shown = person.read(room).await?;
        let rejected = rejected_seqs(&shown);
        assert!(
            rejected.contains(&flipped),
            "{}: a flipped byte is rejected",
            person.name()
        );
        assert!(
            rejected.contains(&next),
            "{}: a replay is rejected",
            person.name()
        );
        let readable = texts(&shown);
        assert!(readable.contains(&pair("alice", "an untouched message")));
        assert!(
            readable.contains(&pair("alice", "this one gets replayed")),
            "the original still reads"
        );
        assert!(
            !readable
                .iter()
                .any(|(_, t)| t == "this one gets a byte flipped")
        );
        assert_eq!(
            readable
                .iter()
                .filter(|(_, t)| t == "this one gets replayed")
                .count(),
            1
        );

        let elsewhere = person.read(other).await?;
        assert!(
            rejected_seqs(&elsewhere).contains(&other_next),
            "{}: a re-routed message is rejected",
            person.name()
        );
        assert!(
            !texts(&elsewhere)
                .iter()
                .any(|(_, t)| t == "this one gets moved to another room")
        );
        assert!(texts(&elsewhere).contains(&pair("alice", "a genuine message elsewhere")));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_swapped_by_the_server_raises_a_warning_and_blocks_sending_until_trusted()
-> Result<()> {
    let app = spawn_app().await?;
    let (mut alice, _bob) = (
        person(&app.base_url, "alice").await?,
        person(&app.base_url, "bob").await?,
    );
    let dm = alice.account.api.open_dm("bob").await?.id;
    alice.say(dm, "first contact pins bob's key").await?;
    alice.account.directory.take_notices();

    // The operator replaces bob's key with mallory's, with no rotation statement.
    let mallory = fixture_key("mallory")?;
    let pool = app.sql().await?;
    db::query(
        "UPDATE user_keys SET public_key = ?, fingerprint = ? WHERE user_id = (SELECT id FROM users WHERE username = 'bob')",
    )
    .bind(mallory.public().spki_der())
    .bind(mallory.public().fingerprint().to_hex())
    .execute(&pool)
    .await?;
    pool.close().await;

    // Alice's client asks the server for bob's key again and checks it against its pin.
    alice.account.directory.invalidate("bob");
    let err = alice
        .say(dm, "must not reach mallory")
        .await
        .expect_err("sending to a swapped key is refused");
    assert!(err.to_string().contains("key changed"), "{err:#}");
    let notices = alice.account.directory.take_notices();
    assert!(
        notices.iter().any(|n| matches!(n, hush::client::directory::KeyNotice::Changed { user, .. } if user == "bob")),
        "a warning names bob: {notices:?}"
    );

    // After alice explicitly accepts the new key, sending works again.
    let peer = alice.account.directory.peer("bob").await?;
    let offered = peer.blocked_key.context("the swapped key is on offer")?;
    alice
        .account
        .directory
        .trust_store_mut()
        .trust("bob", &offered);
    alice.account.directory.invalidate("bob");
    alice.say(dm, "sent after trusting").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_properly_rotated_key_is_followed_and_old_history_stays_readable() -> Result<()> {
    let app = spawn_app().await?;
    let (mut alice, mut bob) = (
        person(&app.base_url, "alice").await?,
        person(&app.base_url, "bob").await?,
    );
    let dm = alice.account.api.open_dm("bob").await?.id;
    alice.say(dm, "before the rotation").await?;
    bob.say(dm, "bob before rotating").await?;

    // Bob rotates to carol's fixture key, signed by his old key, keeping the old one.
    let new = fixture_key("carol")?;
    let old_fp = bob.account.identity.current.public().fingerprint();
    let statement = statements::key_rotation("bob", &old_fp.0, new.public().spki_der());
    let signature = bob.account.identity.current.sign(&statement)?;
    bob.account
        .api
        .rotate_key(new.public().spki_der(), &signature)
        .await?;
    bob.account
        .keys
        .rotate(&bob.account.identity, &new, PASSPHRASE)?;
    let bob_keys = bob.account.keys.clone();
    bob.account = Account::open_with(
        &app.base_url,
        bob_keys,
        "bob",
        PASSPHRASE.into(),
        &password("bob"),
    )
    .await?;

    alice.account.directory.invalidate("bob");
    alice.say(dm, "after the rotation").await?;
    let notices = alice.account.directory.take_notices();
    assert!(
        notices.iter().any(|n| matches!(n, hush::client::directory::KeyNotice::Rotated { user, .. } if user == "bob")),
        "alice is told bob rotated: {notices:?}"
    );
    bob.say(dm, "bob after rotating").await?;

    let expected = vec![
        pair("alice", "before the rotation"),
        pair("bob", "bob before rotating"),
        pair("alice", "after the rotation"),
        pair("bob", "bob after rotating"),
    ];
    assert_eq!(texts(&alice.read(dm).await?), expected);
    assert_eq!(
        texts(&bob.read(dm).await?),
        expected,
        "bob reads old and new with his old and new keys"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_imported_into_a_fresh_key_store_reads_the_old_history() -> Result<()> {
    let app = spawn_app().await?;
    let (mut alice, mut bob) = (
        person(&app.base_url, "alice").await?,
        person(&app.base_url, "bob").await?,
    );
    let dm = alice.account.api.open_dm("bob").await?.id;
    alice.say(dm, "one").await?;
    bob.say(dm, "two").await?;
    alice.say(dm, "three").await?;

    let export_dir = tempfile::tempdir()?;
    let export = export_dir.path().join("bob.hush-export.json");
    bob.account.keys.export("bob", &export)?;
    let new_machine = tempfile::tempdir()?;
    let store = KeyStore::new(new_machine.path());
    assert_eq!(store.import(&export)?, "bob");
    let account = Account::open_with(
        &app.base_url,
        store,
        "bob",
        PASSPHRASE.into(),
        &password("bob"),
    )
    .await?;
    let mut bob_elsewhere = Person {
        account,
        _keys: new_machine,
    };
    assert_eq!(
        texts(&bob_elsewhere.read(dm).await?),
        vec![
            pair("alice", "one"),
            pair("bob", "two"),
            pair("alice", "three")
        ]
    );
    // And it continues bob's sending state from the log.
    bob_elsewhere.say(dm, "four, from the new machine").await?;
    assert_eq!(
        texts(&alice.read(dm).await?).last(),
        Some(&pair("bob", "four, from the new machine"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attachment_round_trips_byte_for_byte() -> Result<()> {
    let app = spawn_app().await?;
    let (mut alice, mut bob) = (
        person(&app.base_url, "alice").await?,
        person(&app.base_url, "bob").await?,
    );
    let dm = alice.account.api.open_dm("bob").await?.id;
    let mut data = vec![0u8; 200 * 1024];
    getrandom::fill(&mut data)?;
    alice
        .send(dm, Payload::file("photo.png", "image/png", data.clone()))
        .await?;
    let shown = bob.read(dm).await?;
    let received = shown.iter().find_map(|s| match s {
        Shown::Message {
            payload: Payload::File {
                name, mime, data, ..
            },
            ..
        } => Some((name.clone(), mime.clone(), data.clone())),
        _ => None,
    });
    let (name, mime, received) = received.context("bob received the file")?;
    assert_eq!((name.as_str(), mime.as_str()), ("photo.png", "image/png"));
    assert!(received == data, "the file arrives byte for byte");
    Ok(())
}

/// The server on a fixed port, so clients can reconnect to the same address.
struct FixedPortServer {
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

async fn serve_at(addr: SocketAddr, db: &Path) -> Result<FixedPortServer> {
    let mut attempts = 0;
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) if attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let store = open_store(&server_db(db)?).await?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(hush::server::run(
        listener,
        store,
        ServerConfig::default(),
        async move {
            let _ = rx.await;
        },
    ));
    Ok(FixedPortServer {
        shutdown: Some(tx),
        task,
    })
}

impl FixedPortServer {
    async fn stop(mut self) -> Result<()> {
        let _ = self.shutdown.take().context("running")?.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task).await??;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_server_restart_a_reconnecting_client_loses_and_repeats_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("hush.db");
    let addr: SocketAddr = {
        let probe = TcpListener::bind("127.0.0.1:0").await?;
        probe.local_addr()?
    };
    let server_url = format!("http://{addr}");
    let server = serve_at(addr, &db).await?;
    let (alice, mut bob) = (
        person(&server_url, "alice").await?,
        person(&server_url, "bob").await?,
    );
    let dm = alice.account.api.open_dm("bob").await?.id;
    for i in 0..3 {
        bob.say(dm, &format!("before restart {i}")).await?;
    }

    // Alice keeps a live link, as `hush chat` does.
    let token = alice.account.api.token().context("logged in")?.to_owned();
    let mut link = Link::start(&server_url, token);
    link.follow(dm, 0).await;
    let mut seen: Vec<WireEntry> = Vec::new();
    wait_for(&mut link, &mut seen, |e| matches!(e, Event::Synced { .. })).await?;

    server.stop().await?;
    wait_for(&mut link, &mut seen, |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await?;
    // Typed while the server is down: queued, sent once it is back.
    link.send(
        dm,
        "offline-1".into(),
        hush::protocol::b64::encode(b"queued while offline"),
    )
    .await;

    let server = serve_at(addr, &db).await?;
    wait_for(
        &mut link,
        &mut seen,
        |e| matches!(e, Event::Acked { client_id, .. } if client_id == "offline-1"),
    )
    .await?;
    for i in 0..3 {
        bob.say(dm, &format!("after restart {i}")).await?;
    }
    let last = bob.say(dm, "the last one").await?;
    wait_for(
        &mut link,
        &mut seen,
        |e| matches!(e, Event::Entry(entry) if entry.seq == last),
    )
    .await?;

    let seqs: Vec<i64> = seen.iter().map(|e| e.seq).collect();
    let expected: Vec<i64> = (1..=last).collect();
    assert_eq!(
        seqs, expected,
        "every entry exactly once, in order, across the restart"
    );
    let offline_copies = seen
        .iter()
        .filter(|e| e.client_id.as_deref() == Some("offline-1"))
        .count();
    assert_eq!(
        offline_copies, 1,
        "the message typed offline is stored once"
    );
    assert_eq!(
        texts(&bob.read(dm).await?).len(),
        7,
        "bob's six messages plus nothing lost"
    );
    drop(link);
    server.stop().await?;
    Ok(())
}

/// Reads link events into `seen` (entries) until `done` matches one.
async fn wait_for(
    link: &mut Link,
    seen: &mut Vec<WireEntry>,
    done: impl Fn(&Event) -> bool,
) -> Result<()> {
    for _ in 0..10_000 {
        let event = tokio::time::timeout(Duration::from_secs(20), link.events.recv())
            .await
            .context("timed out waiting for the link")?
            .context("link ended")?;
        if let Event::Entry(entry) = &event {
            seen.push(entry.clone());
        }
        if done(&event) {
            return Ok(());
        }
    }
    bail!("the expected event never came")
}

/// Every entry of a room straight from the database.
async fn entries_from_db(db: &str, room: RoomId) -> Result<Vec<WireEntry>> {
    let pool = crate::support::connect_db(db).await?;
    type Row = (i64, i64, String, String, Option<Vec<u8>>);
    let rows: Vec<Row> = db::query(
        "SELECT e.seq, e.ts, e.kind, u.username, e.body FROM entries e JOIN users u ON u.id = e.sender_id
         WHERE e.room_id = ? ORDER BY e.seq",
    )
    .bind(room.0)
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    Ok(rows
        .into_iter()
        .map(|(seq, ts, kind, sender, body)| WireEntry {
            room,
            seq,
            ts,
            kind,
            sender,
            subject: None,
            client_id: None,
            body: body.map(|b| hush::protocol::b64::encode(&b)),
            fingerprint: None,
            expires: None,
            ttl: None,
            reason: None,
        })
        .collect())
}

/// Posts bodies as `person` through the raw protocol (as a server that
/// helps an attacker could), in order; returns their seqs.
async fn post_raw(person: &Person, room: RoomId, bodies: &[Vec<u8>]) -> Result<Vec<i64>> {
    let token = person.account.api.token().context("token")?.to_owned();
    let mut link = Link::start(person.account.api.server(), token);
    let mut seqs = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let client_id = format!("raw-{}-{i}", hex_id());
        link.send(room, client_id.clone(), hush::protocol::b64::encode(body))
            .await;
        seqs.push(transcript::await_acks(&mut link, vec![client_id]).await?);
    }
    Ok(seqs)
}

fn hex_id() -> String {
    DeviceId::generate().expect("rng").short()
}

/// Rotates `person`'s key to the fixture key `to`, signed by the old one,
/// keeping the old one, and reopens the account.
async fn rotate(person: &mut Person, server: &str, to: &str) -> Result<()> {
    let name = person.name();
    let new = fixture_key(to)?;
    let old_fp = person.account.identity.current.public().fingerprint();
    let statement = statements::key_rotation(&name, &old_fp.0, new.public().spki_der());
    let signature = person.account.identity.current.sign(&statement)?;
    person
        .account
        .api
        .rotate_key(new.public().spki_der(), &signature)
        .await?;
    person
        .account
        .keys
        .rotate(&person.account.identity, &new, PASSPHRASE)?;
    let keys = person.account.keys.clone();
    person.account =
        Account::open_with(server, keys, &name, PASSPHRASE.into(), &password(&name)).await?;
    Ok(())
}

fn rejection_at(shown: &[Shown], seq: i64) -> Option<String> {
    shown.iter().find_map(|s| match s {
        Shown::Rejected {
            seq: at, reason, ..
        } if *at == seq => Some(reason.clone()),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_and_sender_keys_signed_with_a_retired_key_are_refused_after_the_rotation()
-> Result<()> {
    let app = spawn_app().await?;
    let (mut alice, mut bob) = (
        person(&app.base_url, "alice").await?,
        person(&app.base_url, "bob").await?,
    );
    let dm = alice.account.api.open_dm("bob").await?.id;
    bob.say(dm, "bob before rotating").await?;
    let stolen = fixture_key("bob")?;
    rotate(&mut bob, &app.base_url, "dave").await?;
    bob.say(dm, "bob after rotating").await?;

    // Whoever stole bob's old key, helped by the server (bob's session),
    // posts a new sender-key epoch and a message, both signed with it.
    let thief = DeviceId([0xee; 16]);
    let key = SenderKey::generate(1)?;
    let (alice_key, dave_key) = (fixture_key("alice")?, fixture_key("dave")?);
    let recipients = [
        Recipient {
            username: "alice",
            identity: alice_key.public(),
        },
        Recipient {
            username: "bob",
            identity: dave_key.public(),
        },
    ];
    let distribution =
        sender_keys::seal_distribution(dm.0, "bob", &thief, &key, &recipients, &stolen)?;
    let forged = envelope::seal(
        dm.0,
        "bob",
        &thief,
        &key,
        0,
        &Payload::text("forged with the retired key"),
        &stolen,
    )?;
    let seqs = post_raw(&bob, dm, &[distribution, forged]).await?;

    for reader in [&mut alice, &mut bob] {
        let shown = reader.read(dm).await?;
        assert_eq!(
            texts(&shown),
            [
                pair("bob", "bob before rotating"),
                pair("bob", "bob after rotating")
            ],
            "{}: history before the rotation still verifies, the forgery does not",
            reader.name()
        );
        for seq in &seqs {
            let reason = rejection_at(&shown, *seq)
                .with_context(|| format!("{}: #{seq} is not rejected", reader.name()))?;
            assert!(
                reason.contains("retired"),
                "{}: #{seq} rejected for the wrong reason: {reason}",
                reader.name()
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_seen_in_no_key_entry_is_found_by_fetching_the_keys_again() -> Result<()> {
    let app = spawn_app().await?;
    let (mut alice, mut bob, mut carol) = (
        person(&app.base_url, "alice").await?,
        person(&app.base_url, "bob").await?,
        person(&app.base_url, "carol").await?,
    );
    let room = room_of_three(&mut alice, &mut bob, &mut carol).await?;
    bob.say(room, "bob with his first key").await?;
    // Carol pins bob's first key and keeps it cached.
    assert_eq!(
        texts(&carol.read(room).await?),
        [pair("bob", "bob with his first key")]
    );
    rotate(&mut bob, &app.base_url, "dave").await?;
    // A DM made after the rotation holds no `key` entry for carol to see.
    let dm = bob.account.api.open_dm("carol").await?.id;
    bob.say(dm, "hello from my new key").await?;
    let shown = carol.read(dm).await?;
    assert_eq!(
        texts(&shown),
        [pair("bob", "hello from my new key")],
        "carol follows bob's rotation after one look-up: {:?}",
        rejected_seqs(&shown)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn several_devices_of_one_identity_send_at_once_and_every_message_is_readable() -> Result<()>
{
    let app = spawn_app().await?;
    let (mut alice, mut carol) = (
        person(&app.base_url, "alice").await?,
        person(&app.base_url, "carol").await?,
    );
    let room = alice.account.api.create_room("together").await?.id;
    alice.account.api.invite(room, "carol").await?;
    carol.account.api.join(room).await?;

    // A second key store with alice's key imported, and a second run of
    // the first key store: three devices of one identity.
    let export = alice._keys.path().join("alice.export.json");
    alice.account.keys.export("alice", &export)?;
    let imported_dir = tempfile::tempdir()?;
    let imported = KeyStore::new(imported_dir.path());
    imported.import(&export)?;
    let alice_password = password("alice");
    let mut laptop = Person {
        account: Account::open_with(
            &app.base_url,
            imported,
            "alice",
            PASSPHRASE.into(),
            &alice_password,
        )
        .await?,
        _keys: imported_dir,
    };
    let mut second_window = Person {
        account: Account::open_with(
            &app.base_url,
            alice.account.keys.clone(),
            "alice",
            PASSPHRASE.into(),
            &alice_password,
        )
        .await?,
        _keys: tempfile::tempdir()?,
    };
    let devices = [
        alice.account.device.id(),
        laptop.account.device.id(),
        second_window.account.device.id(),
    ];
    assert!(
        devices[0] != devices[1] && devices[1] != devices[2] && devices[0] != devices[2],
        "each running client has its own device id"
    );

    let (a, b, c) = tokio::join!(
        talk(&mut alice, room, "desk"),
        talk(&mut laptop, room, "laptop"),
        talk(&mut second_window, room, "window")
    );
    a?;
    b?;
    c?;

    for reader in [&mut carol, &mut alice] {
        let shown = reader.read(room).await?;
        assert!(
            rejected_seqs(&shown).is_empty(),
            "{}: nothing rejected",
            reader.name()
        );
        let mut got: Vec<String> = texts(&shown).into_iter().map(|(_, t)| t).collect();
        got.sort();
        let mut want: Vec<String> = ["desk", "laptop", "window"]
            .iter()
            .flat_map(|label| (0..EACH).map(move |i| format!("{label} {i}")))
            .collect();
        want.sort();
        assert_eq!(got, want, "{} reads every message", reader.name());
        let senders: std::collections::HashSet<DeviceId> = shown
            .iter()
            .filter_map(|s| match s {
                Shown::Message { device, .. } => *device,
                _ => None,
            })
            .collect();
        assert_eq!(senders.len(), 3, "three devices sent");
    }
    Ok(())
}

const EACH: usize = 6;

async fn talk(person: &mut Person, room: RoomId, label: &str) -> Result<()> {
    for i in 0..EACH {
        person.say(room, &format!("{label} {i}")).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payload_type_no_client_knows_shows_as_unsupported_not_rejected() -> Result<()> {
    let app = spawn_app().await?;
    let (alice, mut bob) = (
        person(&app.base_url, "alice").await?,
        person(&app.base_url, "bob").await?,
    );
    let dm = alice.account.api.open_dm("bob").await?.id;
    let device = DeviceId([0x42; 16]);
    let key = SenderKey::generate(1)?;
    let (alice_key, bob_key) = (fixture_key("alice")?, fixture_key("bob")?);
    let recipients = [
        Recipient {
            username: "alice",
            identity: alice_key.public(),
        },
        Recipient {
            username: "bob",
            identity: bob_key.public(),
        },
    ];
    let distribution =
        sender_keys::seal_distribution(dm.0, "alice", &device, &key, &recipients, &alice_key)?;
    let future = envelope::seal_plaintext(
        dm.0,
        "alice",
        &device,
        &key,
        0,
        br#"{"v":1,"t":"poll","question":"lunch?","options":["yes","no"]}"#,
        &alice_key,
    )?;
    let seqs = post_raw(&alice, dm, &[distribution, future]).await?;
    let shown = bob.read(dm).await?;
    let entry = shown
        .iter()
        .find(|s| s.seq() == seqs[1])
        .context("the entry is shown")?;
    assert!(
        matches!(entry, Shown::Unsupported { sender, .. } if sender == "alice"),
        "an unknown type is shown as 'update hush', not rejected"
    );
    Ok(())
}
