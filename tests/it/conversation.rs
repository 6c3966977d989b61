//! Conversation features (PROTOCOL.md §21), server side: erasing with
//! tombstones, ephemeral signals and kept receipts, blocking, message
//! requests, room admins, and disappearing messages.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hush::config::ServerConfig;
use hush::crypto::keys::IdentityPrivateKey;
use hush::crypto::room_timer::{self, TimerStatement};
use hush::store::db;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

/// How long the server gets to scrub erased bytes off the disk.
const SCRUB_DEADLINE: Duration = Duration::from_secs(8);

impl TestApp {
    async fn put_or_delete(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> Result<(StatusCode, Value)> {
        let resp = self
            .http
            .request(method, self.url(path))
            .bearer_auth(token)
            .timeout(FRAME_TIMEOUT)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| text.clone())?
        };
        Ok((status, body))
    }

    async fn put(&self, path: &str, token: &str) -> Result<(StatusCode, Value)> {
        self.put_or_delete(reqwest::Method::PUT, path, token).await
    }

    async fn delete(&self, path: &str, token: &str) -> Result<(StatusCode, Value)> {
        self.put_or_delete(reqwest::Method::DELETE, path, token)
            .await
    }

    /// The room as `token`'s user sees it (`GET /api/v1/rooms/{id}`).
    async fn room(&self, token: &str, room: i64) -> Result<Value> {
        let (status, body) = self
            .get(&format!("/api/v1/rooms/{room}"), Some(token))
            .await?;
        ensure!(status == StatusCode::OK, "get room {room}: {status} {body}");
        Ok(body)
    }

    async fn listed_rooms(&self, token: &str) -> Result<Vec<i64>> {
        let (status, body) = self.get("/api/v1/rooms", Some(token)).await?;
        ensure!(status == StatusCode::OK, "list rooms: {status} {body}");
        Ok(body
            .as_array()
            .context("rooms")?
            .iter()
            .filter_map(|r| r["id"].as_i64())
            .collect())
    }

    async fn entry_count(&self) -> Result<i64> {
        let db = self.sql().await?;
        let count = db::query("SELECT COUNT(*) FROM entries")
            .fetch_scalar(&db)
            .await?;
        db.close().await;
        Ok(count)
    }

    /// Whether `needle` is anywhere in the database file or its WAL.
    fn on_disk(&self, needle: &[u8]) -> Result<bool> {
        let mut wal = self.db_path.clone().into_os_string();
        wal.push("-wal");
        for path in [self.db_path.clone(), wal.into()] {
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err.into()),
            };
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Waits (polling, at most `SCRUB_DEADLINE`) until `needle` is in
    /// neither the database file nor the WAL.
    async fn wait_off_disk(&self, needle: &[u8]) -> Result<Duration> {
        let started = Instant::now();
        while self.on_disk(needle)? {
            ensure!(
                started.elapsed() < SCRUB_DEADLINE,
                "the erased bytes are still on disk after {SCRUB_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(started.elapsed())
    }
}

/// A message body whose middle `MARK_LEN` bytes no other bytes of the
/// database can contain by chance (see `mark`).
fn marker(label: &str) -> Vec<u8> {
    let mut body = vec![b'.'; PADDING];
    let mut mark = format!("ciphertext-marker-{label}-").into_bytes();
    mark.resize(MARK_LEN, 0xa5);
    body.extend(mark);
    body.extend(vec![b'.'; PADDING]);
    body
}

const MARK_LEN: usize = 64;
const PADDING: usize = 200;

/// What to look for on disk: the middle of a `marker` body. SQLite puts
/// the smaller tombstone record into the end of the space the erased one
/// freed and a free-block header at its start, so only the middle tells
/// whether the old bytes were zeroed (`secure_delete`) or merely left in
/// the page's free space.
fn mark(body: &[u8]) -> &[u8] {
    &body[PADDING..PADDING + MARK_LEN]
}

fn seqs(entries: &[Value]) -> Vec<i64> {
    entries
        .iter()
        .map(|e| e["seq"].as_i64().unwrap_or(-1))
        .collect()
}

fn fixture_key(name: &str) -> Result<IdentityPrivateKey> {
    let path = format!(
        "{}/tests/fixtures/keys/{name}.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let pem = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    Ok(IdentityPrivateKey::from_pkcs8_pem(&pem)?)
}

/// A timer statement for `room` by `sender`, signed with `signer`'s key.
fn timer_statement(room: i64, sender: &str, secs: u32, after: i64, signer: &str) -> Result<String> {
    let statement = TimerStatement {
        room,
        sender: sender.into(),
        duration_secs: secs,
        after: after as u64,
    };
    Ok(b64(&room_timer::sign(&statement, &fixture_key(signer)?)?))
}

async fn post_timer(
    app: &TestApp,
    token: &str,
    room: i64,
    body: &str,
) -> Result<(StatusCode, Value)> {
    app.post(
        &format!("/api/v1/rooms/{room}/timer"),
        Some(token),
        Some(json!({ "body": body })),
    )
    .await
}

async fn send_erasing(
    ws: &mut WsClient,
    room: i64,
    client_id: &str,
    body: &[u8],
    erase: i64,
) -> Result<Value> {
    ws.request(json!({
        "type": "send", "room": room, "client_id": client_id, "body": b64(body), "erase": erase
    }))
    .await
}

async fn signal(ws: &mut WsClient, room: i64, kind: &str, body: &[u8]) -> Result<()> {
    ws.send_json(
        &json!({ "v": 1, "type": "signal", "room": room, "kind": kind, "body": b64(body) }),
    )
    .await
}

fn signals(frames: &[Value]) -> Vec<&Value> {
    frames.iter().filter(|f| f["type"] == "signal").collect()
}

// ------------------------------------------------------------------ erase

#[tokio::test]
async fn an_erase_by_the_sender_leaves_a_tombstone_that_syncs_without_a_gap() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let target = alice.send_ok(room, "m1", b"regret this").await?;
    let kept = alice.send_ok(room, "m2", b"keep this").await?;
    let ack = send_erasing(&mut alice, room, "d1", b"delete of m1", target).await?;
    ensure!(ack["type"] == "ack", "{ack}");
    let delete = ack["seq"].as_i64().context("seq")?;
    assert_eq!(delete, kept + 1);

    let mut bob = app.connect_ws(&t[1]).await?;
    let (entries, synced) = bob.sync(room, 0).await?;
    assert_eq!(synced, delete);
    let all = seqs(&entries);
    let first = all[0];
    assert_eq!(all, (first..=delete).collect::<Vec<_>>(), "no gap");
    let tombstone = entries
        .iter()
        .find(|e| e["seq"] == target)
        .context("tombstone")?;
    assert_eq!(tombstone["kind"], "erased");
    assert_eq!(tombstone["reason"], "deleted");
    assert_eq!(tombstone["sender"], "alice");
    assert!(tombstone.get("body").is_none(), "{tombstone}");
    let history = bob.history(room, None, None).await?;
    let from_history = history["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .find(|e| e["seq"] == target)
        .context("tombstone in history")?;
    assert_eq!(from_history["kind"], "erased");

    // A resend of the erasing send is a duplicate; erasing a tombstone
    // again is allowed and changes nothing.
    let again = send_erasing(&mut alice, room, "d1", b"delete of m1", target).await?;
    assert_eq!(
        (again["duplicate"].as_bool(), again["seq"].as_i64()),
        (Some(true), Some(delete))
    );
    let twice = send_erasing(&mut alice, room, "d2", b"delete again", target).await?;
    assert_eq!(twice["type"], "ack", "{twice}");
    Ok(())
}

#[tokio::test]
async fn erasing_what_is_not_ones_own_message_is_refused_and_stores_nothing() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    let hers = alice.send_ok(room, "m1", b"alice's").await?;
    let before = app.entry_count().await?;

    let refused = send_erasing(&mut bob, room, "x1", b"delete hers", hers).await?;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    // The room's create entry (seq 1) is not a message.
    let refused = send_erasing(&mut alice, room, "x2", b"delete create", 1).await?;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let refused = send_erasing(&mut alice, room, "x3", b"delete nothing", 999).await?;
    assert_eq!(refused["code"], "not_found", "{refused}");
    assert_eq!(app.entry_count().await?, before, "nothing stored");
    let (entries, _) = bob.sync(room, 0).await?;
    let target = entries
        .iter()
        .find(|e| e["seq"] == hers)
        .context("target")?;
    assert_eq!(target["kind"], "message");
    Ok(())
}

#[tokio::test]
async fn erased_ciphertext_leaves_the_database_and_its_wal_within_seconds() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice"]).await?;
    let room = app.create_room(&t[0], "r").await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let secret = marker("erase");
    let target = alice.send_ok(room, "m1", &secret).await?;
    assert!(
        app.on_disk(mark(&secret))?,
        "the message is on disk before the erase"
    );
    let ack = send_erasing(&mut alice, room, "d1", b"delete", target).await?;
    ensure!(ack["type"] == "ack", "{ack}");
    let took = app.wait_off_disk(mark(&secret)).await?;
    eprintln!("erased bytes left the disk after {took:?}");
    Ok(())
}

// ---------------------------------------------------------------- signals

#[tokio::test]
async fn signals_reach_other_connections_live_but_not_the_sending_one_and_are_never_stored()
-> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob", "carol"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut alice_phone = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    let mut carol = app.connect_ws(&t[2]).await?;
    let before = app.entry_count().await?;

    let body = marker("typing");
    signal(&mut alice, room, "typing", &body).await?;
    for ws in [&mut bob, &mut alice_phone] {
        let got = ws.expect_type("signal").await?;
        assert_eq!(got["room"], room);
        assert_eq!(got["sender"], "alice");
        assert_eq!(got["kind"], "typing");
        assert_eq!(unb64(got["body"].as_str().context("body")?)?, body);
    }
    assert!(
        signals(&alice.drain().await?).is_empty(),
        "not to the sender"
    );
    assert!(
        signals(&carol.drain().await?).is_empty(),
        "not to a non-member"
    );
    assert_eq!(app.entry_count().await?, before, "never stored");
    assert!(!app.on_disk(mark(&body))?, "never written");

    // Bad signals get errors and go nowhere.
    let reply = carol
        .request(json!({ "type": "signal", "room": room, "kind": "typing", "body": b64(b"x") }))
        .await?;
    assert_eq!(reply["code"], "not_found", "{reply}");
    let reply = alice
        .request(
            json!({ "type": "signal", "room": room, "kind": "typing", "body": b64(&[0; 4097]) }),
        )
        .await?;
    assert_eq!(reply["code"], "too_large", "{reply}");
    let reply = alice
        .request(json!({ "type": "signal", "room": room, "kind": "typing", "body": "%%" }))
        .await?;
    assert_eq!(reply["code"], "bad_body", "{reply}");
    assert!(signals(&bob.drain().await?).is_empty());
    Ok(())
}

#[tokio::test]
async fn a_kept_receipt_arrives_after_synced_on_a_new_connection() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    signal(&mut bob, room, "receipt", b"old receipt").await?;
    signal(&mut bob, room, "receipt", b"new receipt").await?;
    signal(&mut bob, room, "typing", b"typing is not kept").await?;
    bob.ping().await?;

    let mut alice = app.connect_ws(&t[0]).await?;
    alice
        .send_json(&json!({ "v": 1, "type": "sync", "rooms": [{ "room": room, "after": 0 }] }))
        .await?;
    let mut order = Vec::new();
    loop {
        let frame = alice.next_frame().await?;
        order.push(frame["type"].as_str().unwrap_or("?").to_owned());
        if frame["type"] == "signal" {
            assert_eq!(frame["sender"], "bob");
            assert_eq!(frame["kind"], "receipt");
            assert_eq!(
                unb64(frame["body"].as_str().context("body")?)?,
                b"new receipt"
            );
            break;
        }
        if order.len() > 50 {
            bail!("no kept receipt: {order:?}");
        }
    }
    let synced_at = order.iter().position(|t| t == "synced").context("synced")?;
    assert_eq!(
        synced_at,
        order.len() - 2,
        "the receipt follows synced: {order:?}"
    );
    assert!(
        signals(&alice.drain().await?).is_empty(),
        "only the latest receipt"
    );

    // Bob's own other connection gets his kept receipt too; the one that
    // sent it does not get it back.
    let mut bob_phone = app.connect_ws(&t[1]).await?;
    bob_phone.sync(room, 0).await?;
    assert_eq!(bob_phone.expect_type("signal").await?["sender"], "bob");
    bob.sync(room, 0).await?;
    assert!(signals(&bob.drain().await?).is_empty());

    // Leaving drops the kept receipt.
    let (status, _) = app
        .post(&format!("/api/v1/rooms/{room}/leave"), Some(&t[1]), None)
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut alice_again = app.connect_ws(&t[0]).await?;
    alice_again.sync(room, 0).await?;
    assert!(signals(&alice_again.drain().await?).is_empty());
    Ok(())
}

#[tokio::test]
async fn signals_of_a_blocked_user_are_not_relayed_to_the_blocker() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob", "carol"]).await?;
    let room = app
        .group(&t[0], &[("bob", &t[1]), ("carol", &t[2])])
        .await?;
    let (status, _) = app.put("/api/v1/blocks/bob", &t[0]).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    let mut carol = app.connect_ws(&t[2]).await?;
    signal(&mut bob, room, "receipt", b"from bob").await?;
    assert_eq!(carol.expect_type("signal").await?["sender"], "bob");
    assert!(signals(&alice.drain().await?).is_empty(), "blocked");
    // Nor is bob's kept receipt handed to alice after a sync.
    alice.sync(room, 0).await?;
    assert!(signals(&alice.drain().await?).is_empty(), "blocked");

    let (status, _) = app.delete("/api/v1/blocks/bob", &t[0]).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    signal(&mut bob, room, "typing", b"again").await?;
    assert_eq!(alice.expect_type("signal").await?["sender"], "bob");
    Ok(())
}

#[tokio::test]
async fn signals_past_the_rate_limit_are_refused_and_dropped() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    for i in 0..30 {
        let frame = json!({ "v": 1, "id": format!("s{i}"), "type": "signal", "room": room,
                            "kind": "typing", "body": b64(b"t") });
        alice.send_json(&frame).await?;
    }
    let replies = alice.drain().await?;
    let limited = replies
        .iter()
        .filter(|f| f["type"] == "error" && f["code"] == "rate_limited")
        .count();
    let relayed = signals(&bob.drain().await?).len();
    assert!(limited >= 5, "{limited} refused: {replies:?}");
    assert_eq!(relayed + limited, 30, "each signal is relayed or refused");
    Ok(())
}

// --------------------------------------------------------------- blocking

#[tokio::test]
async fn a_block_refuses_dms_invites_and_sends_until_it_is_lifted() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let (_, dm) = app.open_dm(&t[0], "bob").await?;
    let group = app.create_room(&t[1], "bob's").await?;

    let (status, body) = app.put("/api/v1/blocks/bob", &t[0]).await?;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        app.put("/api/v1/blocks/bob", &t[0]).await?.0,
        StatusCode::NO_CONTENT
    );
    let (status, list) = app.get("/api/v1/blocks", Some(&t[0])).await?;
    assert_eq!((status, list), (StatusCode::OK, json!(["bob"])));
    let (status, body) = app.put("/api/v1/blocks/alice", &t[0]).await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let (status, body) = app.put("/api/v1/blocks/nobody", &t[0]).await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    // Bob's own list is his own.
    assert_eq!(app.get("/api/v1/blocks", Some(&t[1])).await?.1, json!([]));

    let (status, body) = app
        .post(
            "/api/v1/dm",
            Some(&t[1]),
            Some(json!({ "username": "alice" })),
        )
        .await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "blocked")
    );
    let (status, body) = app
        .post(
            &format!("/api/v1/rooms/{group}/invite"),
            Some(&t[1]),
            Some(json!({ "username": "alice" })),
        )
        .await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "blocked")
    );
    let mut bob = app.connect_ws(&t[1]).await?;
    let before = app.entry_count().await?;
    let refused = bob.send_message(dm, "b1", b"hello?").await?;
    assert_eq!(refused["code"], "blocked", "{refused}");
    assert_eq!(app.entry_count().await?, before, "nothing stored");
    // Alice may still write, and open the DM herself.
    let mut alice = app.connect_ws(&t[0]).await?;
    alice.send_ok(dm, "a1", b"I blocked you").await?;
    assert_eq!(app.open_dm(&t[0], "bob").await?.1, dm);

    let (status, _) = app.delete("/api/v1/blocks/bob", &t[0]).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.delete("/api/v1/blocks/bob", &t[0]).await?.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.get("/api/v1/blocks", Some(&t[0])).await?.1, json!([]));
    bob.send_ok(dm, "b1", b"hello again").await?;
    assert_eq!(app.open_dm(&t[1], "alice").await?.1, dm);
    app.invite(&t[1], group, "alice").await?;
    Ok(())
}

// ------------------------------------------------------- message requests

#[tokio::test]
async fn a_dm_between_strangers_is_a_request_until_the_peer_accepts() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    let (status, dm) = app.open_dm(&t[0], "bob").await?;
    assert_eq!(status, StatusCode::CREATED);
    let request = bob.expect_type("request").await?;
    assert_eq!(
        (request["room"].as_i64(), request["by"].as_str()),
        (Some(dm), Some("alice"))
    );
    assert_eq!(app.room(&t[1], dm).await?["request"], true);
    assert!(
        app.room(&t[0], dm).await?.get("request").is_none(),
        "not for the requester"
    );
    // Entries are delivered as in any room.
    let mut alice = app.connect_ws(&t[0]).await?;
    let seq = alice.send_ok(dm, "a1", b"hi, we have not met").await?;
    let got = bob
        .expect("message", |f| f["entry"]["kind"] == "message")
        .await?;
    assert_eq!(got["entry"]["seq"], seq);

    let (status, room) = app
        .post(&format!("/api/v1/rooms/{dm}/accept"), Some(&t[1]), None)
        .await?;
    assert_eq!(status, StatusCode::OK, "{room}");
    assert!(room.get("request").is_none(), "{room}");
    let (status, body) = app
        .post(&format!("/api/v1/rooms/{dm}/accept"), Some(&t[1]), None)
        .await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "conflict")
    );
    let (status, body) = app
        .post(&format!("/api/v1/rooms/{dm}/decline"), Some(&t[1]), None)
        .await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "conflict")
    );
    let (status, body) = app
        .post("/api/v1/rooms/999/accept", Some(&t[1]), None)
        .await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    Ok(())
}

#[tokio::test]
async fn a_declined_dm_is_hidden_and_not_delivered_until_accepted() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let (_, dm) = app.open_dm(&t[0], "bob").await?;
    let (status, _) = app
        .post(&format!("/api/v1/rooms/{dm}/decline"), Some(&t[1]), None)
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!app.listed_rooms(&t[1]).await?.contains(&dm), "not listed");
    assert!(
        app.listed_rooms(&t[0]).await?.contains(&dm),
        "still the requester's"
    );

    let mut bob = app.connect_ws(&t[1]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let stored = alice.send_ok(dm, "a1", b"please?").await?;
    bob.assert_no_entries().await?;
    // Stored all the same: the decliner can still read it by syncing.
    let (entries, _) = bob.sync(dm, 0).await?;
    assert_eq!(message_seqs(&entries), vec![stored]);

    // Bob's own POST /dm accepts: listed again, delivered live again.
    let (status, again) = app.open_dm(&t[1], "alice").await?;
    assert_eq!((status, again), (StatusCode::OK, dm));
    assert!(app.listed_rooms(&t[1]).await?.contains(&dm));
    assert!(app.room(&t[1], dm).await?.get("request").is_none());
    let live = alice.send_ok(dm, "a2", b"thanks").await?;
    assert_eq!(bob.next_entry(dm).await?["seq"], live);
    Ok(())
}

#[tokio::test]
async fn declining_a_group_invitation_tells_the_members() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.create_room(&t[0], "r").await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    app.invite(&t[0], room, "bob").await?;
    let (status, _) = app
        .post(&format!("/api/v1/rooms/{room}/decline"), Some(&t[1]), None)
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let invite = alice.next_entry(room).await?;
    assert_eq!(invite["kind"], "invite");
    let decline = alice.next_entry(room).await?;
    assert_eq!(
        (decline["kind"].as_str(), decline["sender"].as_str()),
        (Some("decline"), Some("bob"))
    );
    assert_eq!(
        app.get("/api/v1/invitations", Some(&t[1])).await?.1,
        json!([])
    );
    let (status, _) = app
        .post(&format!("/api/v1/rooms/{room}/join"), Some(&t[1]), None)
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .post(&format!("/api/v1/rooms/{room}/decline"), Some(&t[1]), None)
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn users_who_share_a_group_open_a_dm_without_a_request() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    let (_, dm) = app.open_dm(&t[0], "bob").await?;
    assert!(app.room(&t[1], dm).await?.get("request").is_none());
    let frames = bob.drain().await?;
    assert!(!frames.iter().any(|f| f["type"] == "request"), "{frames:?}");
    let (status, _) = app
        .post(&format!("/api/v1/rooms/{dm}/accept"), Some(&t[1]), None)
        .await?;
    assert_eq!(status, StatusCode::CONFLICT);
    Ok(())
}

// ----------------------------------------------------------------- admins

async fn remove(app: &TestApp, token: &str, room: i64, user: &str) -> Result<StatusCode> {
    let (status, _) = app
        .post(
            &format!("/api/v1/rooms/{room}/remove"),
            Some(token),
            Some(json!({ "username": user })),
        )
        .await?;
    Ok(status)
}

async fn promote(app: &TestApp, token: &str, room: i64, user: &str) -> Result<StatusCode> {
    let (status, _) = app
        .post(
            &format!("/api/v1/rooms/{room}/admins"),
            Some(token),
            Some(json!({ "username": user })),
        )
        .await?;
    Ok(status)
}

#[tokio::test]
async fn the_creator_makes_admins_who_remove_members_but_not_the_creator_or_admins() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob", "carol", "dave"]).await?;
    let room = app
        .group(&t[0], &[("bob", &t[1]), ("carol", &t[2]), ("dave", &t[3])])
        .await?;
    assert_eq!(app.room(&t[1], room).await?["admins"], json!([]));
    assert_eq!(
        remove(&app, &t[1], room, "dave").await?,
        StatusCode::FORBIDDEN,
        "not yet an admin"
    );

    let mut alice = app.connect_ws(&t[0]).await?;
    assert_eq!(
        promote(&app, &t[0], room, "bob").await?,
        StatusCode::NO_CONTENT
    );
    let promoted = alice.next_entry(room).await?;
    assert_eq!(
        (
            promoted["kind"].as_str(),
            promoted["sender"].as_str(),
            promoted["subject"].as_str()
        ),
        (Some("promote"), Some("alice"), Some("bob"))
    );
    assert_eq!(app.room(&t[2], room).await?["admins"], json!(["bob"]));
    assert_eq!(
        promote(&app, &t[1], room, "carol").await?,
        StatusCode::FORBIDDEN,
        "creator only"
    );

    assert_eq!(
        remove(&app, &t[1], room, "dave").await?,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        remove(&app, &t[1], room, "alice").await?,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        promote(&app, &t[0], room, "carol").await?,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.room(&t[0], room).await?["admins"],
        json!(["bob", "carol"])
    );
    assert_eq!(
        remove(&app, &t[1], room, "carol").await?,
        StatusCode::FORBIDDEN
    );

    let (status, _) = app
        .delete(&format!("/api/v1/rooms/{room}/admins/carol"), &t[0])
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let demoted = alice
        .expect("demote", |f| f["entry"]["kind"] == "demote")
        .await?;
    assert_eq!(demoted["entry"]["subject"], "carol");
    assert_eq!(
        remove(&app, &t[1], room, "carol").await?,
        StatusCode::NO_CONTENT
    );
    // Leaving ends admin rights.
    let (status, _) = app
        .post(&format!("/api/v1/rooms/{room}/leave"), Some(&t[1]), None)
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.room(&t[0], room).await?["admins"], json!([]));
    Ok(())
}

// ---------------------------------------------------- disappearing messages

#[tokio::test]
async fn a_signed_timer_statement_sets_the_rooms_ttl_and_stamps_new_messages() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let last = app.room(&t[0], room).await?["last_seq"]
        .as_i64()
        .context("last_seq")?;
    let statement = timer_statement(room, "alice", 3600, last, "alice")?;
    let (status, body) = post_timer(&app, &t[0], room, &statement).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ttl"], 3600);
    assert_eq!(app.room(&t[1], room).await?["ttl"], 3600);

    let mut bob = app.connect_ws(&t[1]).await?;
    let (entries, _) = bob.sync(room, 0).await?;
    let timer = entries.last().context("timer entry")?;
    assert_eq!(
        (timer["kind"].as_str(), timer["sender"].as_str()),
        (Some("timer"), Some("alice"))
    );
    assert_eq!(timer["ttl"], 3600);
    assert_eq!(timer["body"].as_str(), Some(statement.as_str()));
    let timer_seq = timer["seq"].as_i64().context("seq")?;

    let mut alice = app.connect_ws(&t[0]).await?;
    alice.send_ok(room, "m1", b"fleeting").await?;
    let message = bob.next_entry(room).await?;
    let expires = message["expires"].as_i64().context("expires")?;
    assert_eq!(expires - message["ts"].as_i64().context("ts")?, 3_600_000);

    // Bob turns it off, having seen alice's timer entry.
    let off = timer_statement(room, "bob", 0, timer_seq + 1, "bob")?;
    let (status, body) = post_timer(&app, &t[1], room, &off).await?;
    assert_eq!(
        (status, body["ttl"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{body}"
    );
    alice.send_ok(room, "m2", b"lasting").await?;
    let message = bob
        .expect("m2", |f| {
            f["entry"]["kind"] == "message" && f["entry"]["client_id"] == "m2"
        })
        .await?;
    assert!(message["entry"].get("expires").is_none(), "{message}");
    Ok(())
}

#[tokio::test]
async fn timer_statements_that_fail_a_check_are_refused() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob", "carol"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let other = app.create_room(&t[0], "other").await?;
    let last = app.room(&t[0], room).await?["last_seq"]
        .as_i64()
        .context("last_seq")?;
    let cases = [
        (
            "signed by another key",
            timer_statement(room, "alice", 3600, last, "bob")?,
        ),
        (
            "another room",
            timer_statement(other, "alice", 3600, 1, "alice")?,
        ),
        (
            "beyond the room's end",
            timer_statement(room, "alice", 3600, last + 1, "alice")?,
        ),
        (
            "too short",
            timer_statement(room, "alice", 299, last, "alice")?,
        ),
        (
            "too long",
            timer_statement(room, "alice", 2_419_201, last, "alice")?,
        ),
        (
            "another sender",
            timer_statement(room, "bob", 3600, last, "bob")?,
        ),
        ("not base64", "%%%".to_owned()),
        ("not a statement", b64(b"HUSH\x02\x01not a timer")),
    ];
    for (what, body) in &cases {
        let (status, reply) = post_timer(&app, &t[0], room, body).await?;
        assert_eq!(
            (status, error_code(&reply)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{what}: {reply}"
        );
    }
    let (status, _) = post_timer(
        &app,
        &t[2],
        room,
        &timer_statement(room, "carol", 3600, last, "carol")?,
    )
    .await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "not a member");

    // A stale `after`: below the latest timer entry.
    let ok = timer_statement(room, "alice", 3600, last, "alice")?;
    assert_eq!(post_timer(&app, &t[0], room, &ok).await?.0, StatusCode::OK);
    let stale = timer_statement(room, "bob", 600, last, "bob")?;
    let (status, reply) = post_timer(&app, &t[1], room, &stale).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "stale: {reply}");
    assert_eq!(app.room(&t[0], room).await?["ttl"], 3600, "unchanged");
    Ok(())
}

#[tokio::test]
async fn a_message_under_a_short_timer_expires_into_a_tombstone_and_leaves_the_disk() -> Result<()>
{
    let app = spawn_app_with(ServerConfig {
        min_disappearing_secs: 1,
        expiry_interval: Duration::from_millis(100),
        ..ServerConfig::default()
    })
    .await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let last = app.room(&t[0], room).await?["last_seq"]
        .as_i64()
        .context("last_seq")?;
    let statement = timer_statement(room, "alice", 1, last, "alice")?;
    assert_eq!(
        post_timer(&app, &t[0], room, &statement).await?.0,
        StatusCode::OK
    );
    let mut alice = app.connect_ws(&t[0]).await?;
    let secret = marker("expire");
    let seq = alice.send_ok(room, "m1", &secret).await?;
    assert!(app.on_disk(mark(&secret))?, "stored before it expires");

    let mut bob = app.connect_ws(&t[1]).await?;
    let deadline = Instant::now() + SCRUB_DEADLINE;
    let entries = loop {
        let (entries, synced) = bob.sync(room, 0).await?;
        assert_eq!(synced, seq);
        let all = seqs(&entries);
        assert_eq!(all, (all[0]..=seq).collect::<Vec<_>>(), "no gap");
        if entries.last().is_some_and(|e| e["kind"] == "erased") {
            break entries;
        }
        ensure!(Instant::now() < deadline, "the message did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tombstone = entries.last().context("tombstone")?;
    assert_eq!(tombstone["reason"], "expired");
    assert_eq!(tombstone["sender"], "alice");
    assert!(tombstone.get("body").is_none());
    app.wait_off_disk(mark(&secret)).await?;
    Ok(())
}

#[tokio::test]
async fn blocking_the_requester_declines_the_request_and_accept_joins_a_group() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob", "carol"]).await?;
    let (_, dm) = app.open_dm(&t[0], "bob").await?;
    assert!(app.listed_rooms(&t[1]).await?.contains(&dm));
    let (status, _) = app.put("/api/v1/blocks/alice", &t[1]).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!app.listed_rooms(&t[1]).await?.contains(&dm), "declined");
    assert_eq!(app.room(&t[1], dm).await?["request"], true);

    let room = app.create_room(&t[2], "carol's").await?;
    app.invite(&t[2], room, "bob").await?;
    let (status, joined) = app
        .post(&format!("/api/v1/rooms/{room}/accept"), Some(&t[1]), None)
        .await?;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["members"], json!(["bob", "carol"]));
    Ok(())
}
