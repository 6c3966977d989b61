//! A barrage of hostile and broken input against a running server, while
//! another pair of users keeps chatting: each bad input gets its clear
//! error code, the bystanders receive everything they send, and the
//! database is intact and gap-free afterwards.
//!
//! (protocol_errors.rs covers the basic bad frames one by one; this suite
//! adds the nastier shapes and checks everything at once under traffic.)

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hush::config::{Limits, Rate, ServerConfig};
use hush::crypto::statements;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::support::*;

const BYSTANDER_MESSAGES: usize = 60;

/// `count` messages from `from` to `to` in `room`, each acked and received
/// live, in order. Returns the seqs.
async fn chat(mut from: WsClient, mut to: WsClient, room: i64, count: usize) -> Result<Vec<i64>> {
    let mut seqs = Vec::with_capacity(count);
    for i in 0..count {
        let body = format!("hello {i}");
        let seq = from
            .send_ok(room, &format!("c{i}"), body.as_bytes())
            .await?;
        let entry = to.next_entry(room).await?;
        ensure!(entry["seq"] == seq, "bystander got {entry} for seq {seq}");
        ensure!(unb64(entry["body"].as_str().context("body")?)? == body.as_bytes());
        seqs.push(seq);
    }
    Ok(seqs)
}

/// Sends `text` and expects an error frame with `code`; the connection
/// must still answer a ping afterwards.
async fn expect_frame_error(ws: &mut WsClient, text: &str, code: &str, what: &str) -> Result<()> {
    ws.send_text(text).await?;
    let frame = ws.expect(what, |f| f["type"] == "error").await?;
    ensure!(
        frame["code"] == code,
        "{what}: expected {code}, got {frame}"
    );
    ws.ping()
        .await
        .with_context(|| format!("connection dead after {what}"))
}

/// An RSA SPKI with the fixture's modulus but public exponent 3.
fn spki_with_exponent_3(name: &str) -> Result<Vec<u8>> {
    let spki = spki_der(name)?;
    // RSA-2048 SPKI: 30 82 01 22 | alg (15 bytes) | 03 82 01 0f 00 | 30 82 01 0a | n | 02 03 01 00 01
    ensure!(spki.len() == 294 && spki.ends_with(&[0x02, 0x03, 0x01, 0x00, 0x01]));
    let mut out = spki[..spki.len() - 5].to_vec();
    out.extend_from_slice(&[0x02, 0x01, 0x03]);
    for (at, len) in [(2usize, 0x0120u16), (21, 0x010d), (26, 0x0108)] {
        out[at..at + 2].copy_from_slice(&len.to_be_bytes());
    }
    Ok(out)
}

async fn register_key(app: &TestApp, name: &str, spki: &[u8]) -> Result<(StatusCode, Value)> {
    let challenge = app.challenge().await?;
    let signature = sign("mallory", &statements::registration_proof(name, &challenge))?;
    app.register_raw(json!({
        "username": name,
        "password": password(name),
        "public_key": b64(spki),
        "challenge": b64(&challenge),
        "signature": b64(&signature),
    }))
    .await
}

fn send_frame(room: Value, client_id: Value, body: Value) -> String {
    json!({ "v": 1, "type": "send", "room": room, "client_id": client_id, "body": body })
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_barrage_of_bad_input_gets_clear_errors_while_others_chat_and_the_database_stays_sound()
-> Result<()> {
    let app = spawn_app_with(ServerConfig {
        max_body_bytes: 1024,
        limits: Limits {
            registrations_per_ip: Rate::new(100.0, 100),
            messages_per_connection: Rate::new(1000.0, 1000),
            ..Limits::default()
        },
        ..ServerConfig::default()
    })
    .await?;
    let t = app
        .users(&["alice", "bob", "carol", "dave", "mallory"])
        .await?;
    let alice_room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let bystanders = app.group(&t[2], &[("dave", &t[3])]).await?;
    let mallory_room = app.create_room(&t[4], "mallory's").await?;
    let (_, alice_bob_dm) = app.open_dm(&t[0], "bob").await?;

    let carol = app.connect_ws(&t[2]).await?;
    let dave = app.connect_ws(&t[3]).await?;
    let bystander_chat = tokio::spawn(chat(carol, dave, bystanders, BYSTANDER_MESSAGES));

    // --- WebSocket frames from an authenticated attacker ---
    let mut m = app.connect_ws(&t[4]).await?;
    let x = json!(b64(b"x"));
    let valid = send_frame(json!(mallory_room), json!("v"), x.clone());
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let deep_object = format!(
        "{{\"v\":1,\"type\":\"send\",\"room\":{mallory_room},\"client_id\":\"d\",\"body\":{}1{}}}",
        "{\"a\":".repeat(10_000),
        "}".repeat(10_000)
    );
    let mr = json!(mallory_room);
    let mut frames: Vec<(String, String, &str)> = vec![
        ("deeply nested array".into(), deep, "bad_frame"),
        ("deeply nested body".into(), deep_object, "bad_frame"),
        ("null".into(), "null".into(), "bad_frame"),
        ("a bare string".into(), "\"send\"".into(), "bad_frame"),
        ("empty text".into(), String::new(), "bad_frame"),
        (
            "lone surrogate escape".into(),
            "{\"v\":1,\"type\":\"ping\",\"id\":\"\\udc00\"}".into(),
            "bad_frame",
        ),
        (
            "v as string".into(),
            json!({ "v": "1", "type": "ping" }).to_string(),
            "bad_frame",
        ),
        (
            "v negative".into(),
            json!({ "v": -1, "type": "ping" }).to_string(),
            "bad_frame",
        ),
        (
            "v huge".into(),
            json!({ "v": u64::MAX, "type": "ping" }).to_string(),
            "bad_frame",
        ),
        (
            "type as number".into(),
            json!({ "v": 1, "type": 7 }).to_string(),
            "bad_frame",
        ),
        (
            "id as object".into(),
            json!({ "v": 1, "type": "ping", "id": {} }).to_string(),
            "bad_frame",
        ),
        (
            "room as float".into(),
            send_frame(json!(1.5), json!("f"), x.clone()),
            "bad_frame",
        ),
        (
            "room beyond i64".into(),
            send_frame(json!(u64::MAX), json!("f"), x.clone()),
            "bad_frame",
        ),
        (
            "client_id as number".into(),
            send_frame(mr.clone(), json!(5), x.clone()),
            "bad_frame",
        ),
        (
            "body as array".into(),
            send_frame(mr.clone(), json!("a"), json!([1, 2])),
            "bad_frame",
        ),
        (
            "url-safe base64".into(),
            send_frame(mr.clone(), json!("u"), json!("-_-_")),
            "bad_body",
        ),
        (
            "unpadded base64".into(),
            send_frame(mr.clone(), json!("p"), json!("eA")),
            "bad_body",
        ),
        (
            "base64 with spaces".into(),
            send_frame(mr.clone(), json!("s"), json!("eA= =")),
            "bad_body",
        ),
        (
            "body of 2 KiB".into(),
            send_frame(mr.clone(), json!("l"), json!(b64(&[7u8; 2048]))),
            "too_large",
        ),
        (
            "room 0".into(),
            send_frame(json!(0), json!("z"), x.clone()),
            "not_found",
        ),
        (
            "room -1".into(),
            send_frame(json!(-1), json!("z"), x.clone()),
            "not_found",
        ),
        (
            "room i64::MAX".into(),
            send_frame(json!(i64::MAX), json!("z"), x.clone()),
            "not_found",
        ),
        (
            "someone else's room".into(),
            send_frame(json!(alice_room), json!("z"), x.clone()),
            "not_found",
        ),
        (
            "someone else's DM".into(),
            send_frame(json!(alice_bob_dm), json!("z"), x.clone()),
            "not_found",
        ),
        (
            "history of someone else's room".into(),
            json!({ "v": 1, "type": "history", "room": alice_room }).to_string(),
            "not_found",
        ),
        (
            "history with a negative limit".into(),
            json!({ "v": 1, "type": "history", "room": mallory_room, "limit": -5 }).to_string(),
            "bad_frame",
        ),
        (
            "who in someone else's room".into(),
            json!({ "v": 1, "type": "who", "room": alice_room }).to_string(),
            "not_found",
        ),
        (
            "sync with rooms as an object".into(),
            json!({ "v": 1, "type": "sync", "rooms": { "room": 1 } }).to_string(),
            "bad_frame",
        ),
    ];
    // Truncations of a valid frame are invalid JSON.
    for cut in (1..valid.len()).step_by(7) {
        frames.push((
            format!("truncated at {cut}"),
            valid[..cut].to_owned(),
            "bad_frame",
        ));
    }
    for (what, text, code) in &frames {
        expect_frame_error(&mut m, text, code, what).await?;
    }
    m.send_binary(&[0xff; 4096]).await?;
    let frame = m.expect("binary reply", |f| f["type"] == "error").await?;
    assert_eq!(frame["code"], "bad_frame");

    // A sync for someone else's room is refused without leaking a page.
    m.send_json(&json!({ "v": 1, "type": "sync", "rooms": [{ "room": alice_room, "after": 0 }] }))
        .await?;
    let refused = m.expect("sync refusal", |f| f["type"] == "error").await?;
    assert_eq!(refused["code"], "not_found", "{refused}");

    // Replayed client ids: stored once, each replay gets the original seq.
    let first = m.send_ok(mallory_room, "replay", b"original").await?;
    for _ in 0..5 {
        let ack = m.send_message(mallory_room, "replay", b"changed").await?;
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["duplicate"], true);
        assert_eq!(ack["seq"], first);
    }
    let history = m.history(mallory_room, None, None).await?;
    let bodies: Vec<_> = history["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter(|e| e["kind"] == "message")
        .map(|e| e["body"].clone())
        .collect();
    assert_eq!(bodies, vec![json!(b64(b"original"))]);
    let frames = m.drain().await?;
    assert!(
        frames
            .iter()
            .all(|f| f["type"] != "page" || f["room"] != alice_room),
        "{frames:?}"
    );

    // --- HTTP with other users' ids, bad tokens and bad bodies ---
    let mallory = &t[4];
    for path in [
        format!("/api/v1/rooms/{alice_room}"),
        format!("/api/v1/rooms/{alice_bob_dm}"),
        "/api/v1/rooms/9223372036854775807".to_owned(),
    ] {
        let (status, body) = app.get(&path, Some(mallory)).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let user = |name: &str| Some(json!({ "username": name }));
    let refusals = [
        (
            format!("/api/v1/rooms/{alice_room}/invite"),
            user("mallory"),
        ),
        (format!("/api/v1/rooms/{alice_room}/remove"), user("bob")),
        (format!("/api/v1/rooms/{alice_bob_dm}/leave"), None),
        (format!("/api/v1/rooms/{alice_room}/join"), None),
    ];
    for (path, body) in refusals {
        let (status, reply) = app.post(&path, Some(mallory), body).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {reply}");
    }

    let logged_out = app.login("mallory").await?;
    let (status, _) = app.post("/api/v1/logout", Some(&logged_out), None).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let forged = "A".repeat(43);
    let accented = "é".repeat(30);
    for token in [forged.as_str(), "x", logged_out.as_str(), accented.as_str()] {
        let (status, body) = app.get("/api/v1/rooms", Some(token)).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "token {token:?}: {body}");
        assert_eq!(error_code(&body), "unauthorized");
        let mut ws = app.connect_ws_raw().await?;
        ws.send_json(&json!({ "v": 1, "type": "auth", "token": token }))
            .await?;
        assert_eq!(ws.expect_close().await?, Some(4001), "token {token:?}");
    }

    for (what, body) in [
        ("truncated JSON", "{\"name\": \"r".to_owned()),
        ("wrong type", json!({ "name": 5 }).to_string()),
        (
            "deeply nested",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        ),
        ("not JSON", "\u{0}\u{1}binary".to_owned()),
    ] {
        let resp = app
            .http
            .post(app.url("/api/v1/rooms"))
            .bearer_auth(mallory)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{what}");
        let body: Value = resp.json().await?;
        assert_eq!(error_code(&body), "bad_request", "{what}");
    }
    // Its own client: the server closes a connection whose oversized body
    // it did not read, and that connection must not be reused.
    let huge = hush::client::tls::http_client()
        .post(app.url("/api/v1/rooms"))
        .bearer_auth(mallory)
        .header("content-type", "application/json")
        .body(format!("{{\"name\":\"{}\"}}", "a".repeat(200_000)))
        .send()
        .await?;
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // --- keys that are weak, malformed or not RSA ---
    let truncated = {
        let spki = spki_der("carol")?;
        spki[..spki.len() - 20].to_vec()
    };
    let keys: Vec<(&str, Vec<u8>)> = vec![
        ("e = 3", spki_with_exponent_3("mallory")?),
        ("1024-bit", spki_der("weak-1024")?),
        ("EC P-256", spki_der("not-rsa-p256")?),
        ("truncated", truncated),
        (
            "random bytes",
            vec![0x30, 0x82, 0x01, 0x22, 0xde, 0xad, 0xbe, 0xef],
        ),
        ("empty", Vec::new()),
    ];
    for (i, (what, spki)) in keys.iter().enumerate() {
        let (status, body) = register_key(&app, &format!("evil{i}"), spki).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(error_code(&body), "invalid_key", "{what}: {body}");
        let (status, body) = app
            .post(
                "/api/v1/keys/rotate",
                Some(&t[0]),
                Some(json!({ "public_key": b64(spki), "signature": b64(b"sig") })),
            )
            .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "rotate to {what}: {body}");
        assert_eq!(error_code(&body), "invalid_key", "rotate to {what}");
    }

    // --- the bystanders got everything; the legitimate users still work ---
    let seqs = tokio::time::timeout(Duration::from_secs(120), bystander_chat)
        .await
        .context("bystander chat stalled")???;
    assert_eq!(seqs.len(), BYSTANDER_MESSAGES);
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    let seq = alice.send_ok(alice_room, "after", b"still here").await?;
    assert_eq!(bob.next_entry(alice_room).await?["seq"], seq);
    let (entries, _) = bob.sync(alice_room, 0).await?;
    assert!(
        entries.iter().all(|e| e["sender"] != "mallory"),
        "{entries:?}"
    );

    assert_sound_at(&app.db_path).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_refused_over_http_and_websocket() -> Result<()> {
    let app = spawn_app_with(ServerConfig {
        session_ttl: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await?;
    let token = app.user("alice").await?;
    // Wait out the token's life (the only way to have an expired one).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = app.get("/api/v1/rooms", Some(&token)).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let mut ws = app.connect_ws_raw().await?;
    ws.send_json(&json!({ "v": 1, "type": "auth", "token": token }))
        .await?;
    assert_eq!(ws.expect_close().await?, Some(4001));
    assert_eq!(ws.next_frame().await?["code"], "unauthorized");
    Ok(())
}

/// `PRAGMA integrity_check` is ok and every room's log is exactly
/// 1..=last_seq: no gap, no duplicate.
pub async fn assert_sound_at(path: &std::path::Path) -> Result<()> {
    let url = format!("sqlite://{}?mode=ro", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await?;
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(check, "ok");
    let rooms: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT r.id, r.last_seq, count(e.seq), coalesce(min(e.seq), 0), coalesce(max(e.seq), 0)
         FROM rooms r LEFT JOIN entries e ON e.room_id = r.id GROUP BY r.id",
    )
    .fetch_all(&mut conn)
    .await?;
    ensure!(!rooms.is_empty(), "no rooms in the database");
    for (room, last, count, min, max) in rooms {
        assert_eq!(
            (count, min, max),
            (last, 1, last),
            "room {room}: seqs are not exactly 1..={last}"
        );
    }
    conn.close().await?;
    Ok(())
}
