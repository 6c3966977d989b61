//! Abuse limits: message rates per connection and per user, connections
//! per address, sessions per user, registration and login attempts per
//! address, the bounded challenge store and hashing queue, username
//! folding, and sessions that end when their token expires.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hush::client::link::{Event, Link};
use hush::config::{Limits, Rate, ServerConfig};
use hush::store::RoomId;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

use crate::support::*;

fn with_limits(limits: Limits) -> ServerConfig {
    ServerConfig {
        limits,
        ..ServerConfig::default()
    }
}

/// Sends until acked, waiting out `rate_limited` replies as told.
async fn send_when_allowed(ws: &mut WsClient, room: i64, client_id: &str) -> Result<Value> {
    for _ in 0..200 {
        let reply = ws
            .send_message(room, client_id, client_id.as_bytes())
            .await?;
        if reply["type"] == "ack" {
            return Ok(reply);
        }
        ensure!(reply["code"] == "rate_limited", "unexpected reply {reply}");
        let wait = reply["retry_after_ms"].as_u64().context("retry_after_ms")?;
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    bail!("never allowed to send {client_id}")
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_past_the_connection_rate_are_refused_with_a_retry_time_and_not_stored() -> Result<()>
{
    let app = spawn_app_with(with_limits(Limits {
        messages_per_connection: Rate::new(1.0, 3),
        ..Limits::default()
    }))
    .await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;

    for i in 0..3 {
        alice.send_ok(room, &format!("m{i}"), b"x").await?;
    }
    let refused = alice.send_message(room, "m3", b"x").await?;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let wait = refused["retry_after_ms"]
        .as_u64()
        .context("retry_after_ms")?;
    assert!(
        (1..=1000).contains(&wait),
        "1/s refills a token within 1 s, got {wait}"
    );
    // The connection stays open, and the refused message was not stored.
    alice.ping().await?;
    let (entries, _) = bob.sync(room, 0).await?;
    let ids: Vec<_> = entries
        .iter()
        .filter_map(|e| e["client_id"].as_str())
        .collect();
    assert_eq!(ids, ["m0", "m1", "m2"]);

    // Resending the same client_id after the wait stores it exactly once.
    let ack = send_when_allowed(&mut alice, room, "m3").await?;
    assert_eq!(ack["duplicate"], false, "{ack}");
    let entry = bob
        .expect("m3", |f| {
            f["type"] == "entry" && f["entry"]["client_id"] == "m3"
        })
        .await?;
    assert_eq!(entry["entry"]["seq"], ack["seq"]);
    Ok(())
}

/// A send refused for now holds back every later send of the connection
/// until it is resent, so a client that resends in refusal order keeps its
/// messages in the order it sent them; held sends cost no allowance.
#[tokio::test(flavor = "multi_thread")]
async fn sends_behind_a_refused_one_are_held_until_it_is_resent() -> Result<()> {
    let app = spawn_app_with(with_limits(Limits {
        messages_per_connection: Rate::new(2.0, 2),
        ..Limits::default()
    }))
    .await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;

    alice.send_ok(room, "m0", b"x").await?;
    alice.send_ok(room, "m1", b"x").await?;
    let refused = alice.send_message(room, "m2", b"x").await?;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let wait = refused["retry_after_ms"]
        .as_u64()
        .context("retry_after_ms")?;

    // Once a token is back, m3 is still refused: m2 has not come again.
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    let held = alice.send_message(room, "m3", b"x").await?;
    assert_eq!(held["code"], "rate_limited", "{held}");
    let message = held["message"].as_str().unwrap_or_default();
    assert!(message.contains("held behind"), "{held}");

    // m2's resend lifts the hold and takes the token m3 did not spend.
    let ack = alice.send_message(room, "m2", b"x").await?;
    assert_eq!(
        ack["type"], "ack",
        "held sends must not spend the allowance: {ack}"
    );
    send_when_allowed(&mut alice, room, "m3").await?;

    let (entries, _) = bob.sync(room, 0).await?;
    let ids: Vec<_> = entries
        .iter()
        .filter_map(|e| e["client_id"].as_str())
        .collect();
    assert_eq!(ids, ["m0", "m1", "m2", "m3"]);
    Ok(())
}

/// The client's link sends a message the server refused for now again
/// once the server's wait is over, on the same connection: before, it kept
/// it until the next reconnect.
#[tokio::test(flavor = "multi_thread")]
async fn the_client_link_resends_rate_limited_messages_in_order_without_reconnecting() -> Result<()>
{
    let app = spawn_app_with(with_limits(Limits {
        messages_per_connection: Rate::new(20.0, 2),
        ..Limits::default()
    }))
    .await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut link = Link::start(&app.url(""), t[0].clone());
    let sent: Vec<String> = (0..40).map(|i| format!("burst-{i:02}")).collect();
    for client_id in &sent {
        link.send(RoomId(room), client_id.clone(), b64(b"x")).await;
    }
    let (mut acked, mut refused) = (HashSet::new(), 0);
    while acked.len() < sent.len() {
        let event = tokio::time::timeout(Duration::from_secs(20), link.events.recv())
            .await
            .with_context(|| format!("only {acked:?} were acknowledged"))?
            .context("the link stopped")?;
        match event {
            Event::Acked {
                client_id,
                duplicate,
                ..
            } => {
                ensure!(!duplicate, "{client_id} was stored before");
                acked.insert(client_id);
            }
            Event::Retrying { code, .. } if code == "rate_limited" => refused += 1,
            Event::Error { code, message } => bail!("unexpected error {code}: {message}"),
            Event::SendFailed {
                client_id, code, ..
            } => bail!("{client_id} failed: {code}"),
            Event::Disconnected { reason } => bail!("the link had to reconnect: {reason}"),
            _ => {}
        }
    }
    ensure!(refused > 0, "no send was refused, so none was retried");
    println!("{refused} refusals for {} messages", sent.len());
    // Past a refusal the link sends one at a time and one more per ack: a
    // refusal or so per message stored, not the whole burst every round.
    ensure!(
        refused < 3 * sent.len(),
        "{refused} refusals for {} messages",
        sent.len()
    );

    let mut bob = app.connect_ws(&t[1]).await?;
    let (entries, _) = bob.sync(room, 0).await?;
    let stored: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["client_id"].as_str())
        .collect();
    assert_eq!(stored, sent, "each stored exactly once, in the order sent");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_user_rate_covers_all_of_a_users_connections() -> Result<()> {
    let app = spawn_app_with(with_limits(Limits {
        messages_per_user: Rate::new(0.01, 4),
        ..Limits::default()
    }))
    .await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut first = app.connect_ws(&t[0]).await?;
    let mut second = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    for i in 0..2 {
        first.send_ok(room, &format!("a{i}"), b"x").await?;
        second.send_ok(room, &format!("b{i}"), b"x").await?;
    }
    for ws in [&mut first, &mut second] {
        let refused = ws.send_message(room, "over", b"x").await?;
        assert_eq!(refused["code"], "rate_limited", "{refused}");
        assert!(
            refused["retry_after_ms"]
                .as_u64()
                .is_some_and(|ms| ms > 1000)
        );
    }
    // Another user is not affected.
    bob.send_ok(room, "bob", b"x").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_per_address_limit_are_refused_at_the_upgrade() -> Result<()> {
    let app = spawn_app_with(with_limits(Limits {
        connections_per_ip: 2,
        ..Limits::default()
    }))
    .await?;
    let token = app.user("alice").await?;
    // Unauthenticated sockets count too: they cost memory all the same.
    let first = app.connect_ws_raw().await?;
    let mut second = app.connect_ws(&token).await?;
    let refused = tokio_tungstenite::connect_async(app.ws_url()).await;
    match refused {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
            let body = response.body().as_deref().unwrap_or_default();
            let body: Value = serde_json::from_slice(body)?;
            assert_eq!(error_code(&body), "too_many_connections", "{body}");
        }
        other => bail!("expected a 429 at the upgrade, got {other:?}"),
    }
    // HTTP requests from the same address are not connections.
    let (status, _) = app.get("/healthz", None).await?;
    assert_eq!(status, StatusCode::OK);
    second.ping().await?;

    // Closing one frees its place.
    first.close().await?;
    for attempt in 0.. {
        match app.connect_ws(&token).await {
            Ok(mut ws) => {
                ws.ping().await?;
                break;
            }
            Err(_) if attempt < 100 => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(err) => return Err(err.context("a closed connection's place was never freed")),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_past_the_per_user_limit_is_refused_and_the_others_keep_working() -> Result<()> {
    let app = spawn_app_with(with_limits(Limits {
        sessions_per_user: 2,
        ..Limits::default()
    }))
    .await?;
    let t = app.users(&["alice", "bob"]).await?;
    let mut one = app.connect_ws(&t[0]).await?;
    let mut two = app.connect_ws(&t[0]).await?;
    let mut three = app.connect_ws_raw().await?;
    three
        .send_json(&json!({ "v": 1, "id": "a", "type": "auth", "token": t[0] }))
        .await?;
    let error = three.next_frame().await?;
    assert_eq!(error["code"], "too_many_sessions", "{error}");
    assert_eq!(error["id"], "a");
    assert_eq!(three.expect_close().await?, Some(4029));
    one.ping().await?;
    two.ping().await?;
    // Other users are counted separately.
    let mut bob = app.connect_ws(&t[1]).await?;
    bob.ping().await?;
    // The oldest closing makes room for a new one.
    two.close().await?;
    for attempt in 0.. {
        match app.connect_ws(&t[0]).await {
            Ok(_) => break,
            Err(_) if attempt < 100 => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(err) => return Err(err.context("a closed session's place was never freed")),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_attempts_per_address_are_limited() -> Result<()> {
    let app = spawn_app_with(with_limits(Limits {
        registrations_per_ip: Rate::new(0.001, 3),
        ..Limits::default()
    }))
    .await?;
    app.register("alice").await?; // a challenge and a registration
    app.challenge().await?;
    let resp = app
        .http
        .post(app.url("/api/v1/register/challenge"))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .context("Retry-After")?
        .to_str()?
        .parse()?;
    assert!(retry > 60, "0.001/s means a long wait, got {retry}");
    let body: Value = resp.json().await?;
    assert_eq!(error_code(&body), "rate_limited", "{body}");
    // The registration endpoint shares the allowance.
    let (status, body) = app.register_raw(json!({})).await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    // Logins are limited separately.
    app.login("alice").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn login_attempts_per_address_are_limited_and_failures_delay_the_address() -> Result<()> {
    let app = spawn_app_with(with_limits(Limits {
        login_failures_per_ip_before_delay: 3,
        ..Limits::default()
    }))
    .await?;
    app.register("alice").await?;
    // Failures spread over many account names (so no account throttle
    // applies) still add up for the address.
    for i in 0..3 {
        let (status, body) = app
            .login_raw(&format!("nobody{i}"), "wrong-password")
            .await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let (status, body) = app.login_raw("alice", &password("alice")).await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(error_code(&body), "rate_limited");
    assert!(
        body["error"]["retry_after_secs"]
            .as_u64()
            .is_some_and(|s| s >= 1)
    );

    let app = spawn_app_with(with_limits(Limits {
        logins_per_ip: Rate::new(0.001, 2),
        ..Limits::default()
    }))
    .await?;
    app.register("alice").await?;
    app.login("alice").await?;
    app.login("alice").await?;
    let (status, body) = app.login_raw("alice", &password("alice")).await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_challenge_store_is_bounded() -> Result<()> {
    let app = spawn_app_with(with_limits(Limits {
        pending_challenges: 3,
        ..Limits::default()
    }))
    .await?;
    for _ in 0..3 {
        app.challenge().await?;
    }
    let (status, body) = app.post("/api/v1/register/challenge", None, None).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error_code(&body), "busy");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn look_alike_usernames_cannot_register_and_fold_to_the_real_account_at_login() -> Result<()>
{
    let app = spawn_app().await?;
    app.register("alice").await?;
    for look_alike in [
        "Alice",
        "ａｌｉｃｅ",
        "ＡＬＩＣＥ",
        "alice\u{200b}",
        "аlice",
    ] {
        let (status, body) = app
            .register_with(look_alike, &password("alice"), "bob", "bob")
            .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{look_alike}: {body}");
        assert_eq!(error_code(&body), "invalid_username", "{look_alike}");
    }
    for typed in ["Alice", "ＡＬＩＣＥ", "ａｌｉｃｅ"] {
        let (status, body) = app.login_raw(typed, &password("alice")).await?;
        assert_eq!(status, StatusCode::OK, "{typed}: {body}");
        assert_eq!(body["username"], "alice");
    }
    // A different script is a different (unknown) name.
    let (status, _) = app.login_raw("аlice", &password("alice")).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_closes_when_its_token_expires() -> Result<()> {
    let app = spawn_app_with(ServerConfig {
        session_ttl: Duration::from_secs(2),
        ..ServerConfig::default()
    })
    .await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    alice.send_ok(room, "before", b"x").await?;
    // The 2 s token runs out while the socket is open: it is closed 4001.
    assert_eq!(alice.expect_close().await?, Some(4001));
    let mut again = app.connect_ws_raw().await?;
    again
        .send_json(&json!({ "v": 1, "type": "auth", "token": t[0] }))
        .await?;
    assert_eq!(again.next_frame().await?["code"], "unauthorized");
    Ok(())
}

/// VmRSS of this process in KiB (the server runs in it).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_flood_past_the_hashing_queue_gets_503_and_the_server_stays_responsive()
-> Result<()> {
    const FLOOD: usize = 40;
    let app = spawn_app_with(ServerConfig {
        hashing_slots: 1,
        limits: Limits {
            hashing_queue: 3,
            logins_per_ip: Rate::new(1000.0, 1000),
            login_failures_per_ip_before_delay: 1000,
            ..Limits::default()
        },
        ..ServerConfig::default()
    })
    .await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    let before = rss_kib();

    let mut flood = tokio::task::JoinSet::new();
    for i in 0..FLOOD {
        let http = app.http.clone();
        let url = app.url("/api/v1/login");
        // Half unknown users, half wrong passwords for a known one: both
        // queue for the same slots.
        let name = if i % 2 == 0 {
            format!("ghost{i}")
        } else {
            "bob".to_owned()
        };
        flood.spawn(async move {
            let resp = http
                .post(url)
                .json(&json!({ "username": name, "password": format!("wrong{i}-password") }))
                .timeout(Duration::from_secs(120))
                .send()
                .await?;
            let retry_after = resp.headers().get("retry-after").cloned();
            let status = resp.status();
            let body: Value = resp.json().await?;
            anyhow::Ok((status, retry_after, body))
        });
    }
    // While the flood runs, chat and health checks keep working.
    for i in 0..5 {
        let seq = alice.send_ok(room, &format!("during{i}"), b"x").await?;
        assert_eq!(bob.next_entry(room).await?["seq"], seq);
        let (status, _) = app.get("/healthz", None).await?;
        assert_eq!(status, StatusCode::OK);
    }
    let (mut refused, mut checked) = (0, 0);
    while let Some(outcome) = flood.join_next().await {
        let (status, retry_after, body) = outcome??;
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(error_code(&body), "busy", "{body}");
                assert!(retry_after.is_some(), "503 carries Retry-After");
                refused += 1;
            }
            StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS => checked += 1,
            other => bail!("unexpected {other}: {body}"),
        }
    }
    assert!(
        refused > 0,
        "with 1 slot and a queue of 3, {FLOOD} at once overflow"
    );
    assert!(checked >= 4, "the queue was served ({checked} checked)");
    // The real user can still log in once the flood is over.
    app.login("alice").await?;
    if let (Some(before), Some(after)) = (before, rss_kib()) {
        println!(
            "login flood of {FLOOD}: RSS {before} KiB -> {after} KiB ({refused} refused with 503)"
        );
    }
    Ok(())
}

/// A raw connection with a tiny receive buffer, authenticated and synced
/// on `room`; returns it and the `synced` seq. The caller then stops
/// reading it, so frames back up on the server within a few messages.
async fn stalling_reader(app: &TestApp, token: &str, room: i64) -> Result<(RawTcpWs, i64)> {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let stream = socket.connect(app.addr).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(app.ws_url(), stream).await?;
    ws.send(Message::text(
        json!({ "v": 1, "type": "auth", "token": token }).to_string(),
    ))
    .await?;
    ws.send(Message::text(
        json!({ "v": 1, "type": "sync", "rooms": [{ "room": room, "after": 0 }] }).to_string(),
    ))
    .await?;
    for _ in 0..100 {
        let frame = read_raw(&mut ws)
            .await?
            .context("the connection ended before it synced")?;
        if frame["type"] == "synced" {
            let cursor = frame["seq"].as_i64().context("seq")?;
            ensure!(cursor > 0, "synced at {cursor}");
            return Ok((ws, cursor));
        }
    }
    bail!("never synced")
}

type RawTcpWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The next frame of a raw WebSocket: text as JSON, a close as
/// `{"closed": code}`, `None` when the connection ended.
async fn read_raw(ws: &mut RawTcpWs) -> Result<Option<Value>> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    match tokio::time::timeout(FRAME_TIMEOUT, ws.next()).await? {
        Some(Ok(Message::Text(text))) => Ok(Some(serde_json::from_str(&text)?)),
        Some(Ok(Message::Close(frame))) => {
            Ok(Some(json!({ "closed": frame.map(|f| u16::from(f.code)) })))
        }
        Some(Ok(_)) => Ok(Some(json!({ "type": "control" }))),
        Some(Err(_)) | None => Ok(None),
    }
}

/// A member that stops reading is cut off (4009, or a dropped connection
/// if the send timeout fires first) once its bounded queue is full; the
/// others receive everything meanwhile; it catches up by syncing.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_consumer_is_cut_off_without_delaying_others_and_resyncs_later() -> Result<()> {
    const MESSAGES: usize = 150;
    let app = spawn_app_with(ServerConfig {
        outbound_queue: 8,
        max_body_bytes: 100_000,
        limits: Limits::unlimited(),
        ..ServerConfig::default()
    })
    .await?;
    let t = app.users(&["alice", "bob", "carol"]).await?;
    let room = app
        .group(&t[0], &[("bob", &t[1]), ("carol", &t[2])])
        .await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;

    // carol: a tiny receive buffer, and after syncing she stops reading.
    let (mut carol, mut cursor) = stalling_reader(&app, &t[2], room).await?;

    let body = vec![0x42; 60_000];
    let mut last = 0;
    for i in 0..MESSAGES {
        last = alice.send_ok(room, &format!("m{i}"), &body).await?;
        // bob keeps up, message by message, while carol reads nothing.
        assert_eq!(bob.next_entry(room).await?["seq"], last);
    }

    // carol now reads what reached her, then the end of her connection.
    let mut closed_with = None;
    for _ in 0..MESSAGES + 100 {
        match read_raw(&mut carol).await? {
            Some(frame) if frame["type"] == "entry" => {
                let seq = frame["entry"]["seq"].as_i64().context("seq")?;
                ensure!(
                    seq == cursor + 1,
                    "carol's stream jumped from {cursor} to {seq}"
                );
                cursor = seq;
            }
            Some(frame) if frame.get("closed").is_some() => {
                closed_with = frame["closed"].as_u64();
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(
        cursor < last,
        "carol was cut off before the end ({cursor} of {last})"
    );
    assert!(
        matches!(closed_with, Some(4009) | None),
        "closed with {closed_with:?}"
    );

    // She reconnects and catches up from her cursor, gap-free.
    let mut carol = app.connect_ws(&t[2]).await?;
    let (entries, synced) = carol.sync(room, cursor).await?;
    let seqs: Vec<i64> = entries.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(seqs, (cursor + 1..=last).collect::<Vec<_>>());
    assert_eq!(synced, last);
    Ok(())
}

/// When most recipients of a room stop reading at once, fan-out is the limit:
/// the sender is held (its next message is not taken) instead of every
/// reader being cut off; once they read again, everything they were sent
/// while stalled arrives, in order, with no one cut off meanwhile. (Eight
/// or more readers, at least half of the recipients: fewer are cut off
/// alone, as in the test above. After the stall, a reader slower than the
/// rest may be cut off alone too; it then resyncs.)
#[tokio::test(flavor = "multi_thread")]
async fn a_sender_is_held_while_most_of_its_room_falls_behind_and_no_one_is_cut_off() -> Result<()>
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

    const READERS: usize = 8;
    const MESSAGES: usize = 150;
    let app = spawn_app_with(ServerConfig {
        outbound_queue: 16,
        max_body_bytes: 100_000,
        limits: Limits::unlimited(),
        ..ServerConfig::default()
    })
    .await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    // The readers: bob's connections (the hub delivers to each of them).
    let mut readers = Vec::new();
    for _ in 0..READERS {
        readers.push(stalling_reader(&app, &t[1], room).await?);
    }

    // alice writes all her messages at once, without waiting for acks (the
    // server takes up to 256 before it stops reading her): what it admits
    // before the hold starts must not overflow the readers' queues either.
    let (mut alice_sink, mut alice_stream) = {
        use futures_util::{SinkExt, StreamExt};
        let (mut ws, _) = tokio_tungstenite::connect_async(app.ws_url()).await?;
        ws.send(tungstenite::Message::text(
            json!({ "v": 1, "type": "auth", "token": t[0] }).to_string(),
        ))
        .await?;
        ws.split()
    };
    let writer = tokio::spawn(async move {
        use futures_util::SinkExt;
        let body = b64(&vec![0x42; 60_000]);
        for i in 0..MESSAGES {
            let frame = json!({ "v": 1, "type": "send", "room": room,
                "client_id": format!("m{i}"), "body": body });
            alice_sink
                .send(tungstenite::Message::text(frame.to_string()))
                .await?;
        }
        anyhow::Ok(alice_sink)
    });
    let acked = Arc::new(AtomicUsize::new(0));
    let acked_seq = Arc::new(AtomicI64::new(0));
    let last_seq = Arc::new(AtomicI64::new(0));
    let sender = tokio::spawn({
        let (acked, acked_seq, last_seq) = (acked.clone(), acked_seq.clone(), last_seq.clone());
        async move {
            use futures_util::StreamExt;
            let mut seq = 0;
            while acked.load(Ordering::SeqCst) < MESSAGES {
                let Some(msg) = alice_stream.next().await else {
                    anyhow::bail!("alice's connection ended");
                };
                let tungstenite::Message::Text(text) = msg? else {
                    continue;
                };
                let frame: Value = serde_json::from_str(&text)?;
                match frame["type"].as_str() {
                    Some("ack") => {
                        seq = frame["seq"].as_i64().context("ack seq")?;
                        acked_seq.store(seq, Ordering::SeqCst);
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Some("error") => anyhow::bail!("alice got {frame}"),
                    _ => {}
                }
            }
            // Only now: the readers stop once they have this one.
            last_seq.store(seq, Ordering::SeqCst);
            anyhow::Ok(())
        }
    });

    // The readers read nothing until alice makes no progress for a second.
    let mut seen = usize::MAX;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = acked.load(Ordering::SeqCst);
        if now == seen {
            break;
        }
        seen = now;
    }
    let held_at = acked.load(Ordering::SeqCst);
    let held_seq = acked_seq.load(Ordering::SeqCst);
    ensure!(
        held_at < MESSAGES,
        "alice was never held: all {MESSAGES} acked while no one read"
    );

    // They read again: each gets every message after its cursor, in order,
    // at least up to where alice was held.
    let mut reading = Vec::new();
    for (ws, cursor) in readers {
        let last_seq = last_seq.clone();
        reading.push(tokio::spawn(read_all_entries(ws, cursor, last_seq)));
    }
    sender.await??;
    let _alice_sink = writer.await??;
    let last = last_seq.load(Ordering::SeqCst);
    for (i, reader) in reading.into_iter().enumerate() {
        let (got, closed_with) = reader.await??;
        ensure!(
            got >= held_seq,
            "reader {i} was cut off during the stall: it has {got}, alice was held at {held_seq} (closed with {closed_with:?})"
        );
        if got < last {
            ensure!(
                matches!(closed_with, Some(4009)),
                "reader {i} stopped at {got} of {last}, closed with {closed_with:?}"
            );
            let mut again = app.connect_ws(&t[1]).await?;
            let (entries, synced) = again.sync(room, got).await?;
            let seqs: Vec<i64> = entries.iter().filter_map(|e| e["seq"].as_i64()).collect();
            ensure!(seqs == (got + 1..=last).collect::<Vec<_>>() && synced == last);
        }
    }
    println!("alice held after {held_at} of {MESSAGES} messages while {READERS} readers stalled");
    Ok(())
}

/// Reads live entries until the one at `last_seq` (known once the sender
/// is done), checking each follows the one before. Returns the last seq
/// read and the close code if the connection was closed instead.
async fn read_all_entries(
    mut ws: RawTcpWs,
    mut cursor: i64,
    last_seq: std::sync::Arc<std::sync::atomic::AtomicI64>,
) -> Result<(i64, Option<u64>)> {
    use std::sync::atomic::Ordering;
    loop {
        let last = last_seq.load(Ordering::SeqCst);
        if last > 0 && cursor >= last {
            return Ok((cursor, None));
        }
        match read_raw(&mut ws).await? {
            Some(frame) if frame["type"] == "entry" => {
                let seq = frame["entry"]["seq"].as_i64().context("seq")?;
                ensure!(seq == cursor + 1, "stream jumped from {cursor} to {seq}");
                cursor = seq;
            }
            Some(frame) if frame.get("closed").is_some() => {
                return Ok((cursor, frame["closed"].as_u64()));
            }
            Some(_) => {}
            None => return Ok((cursor, Some(0))),
        }
    }
}

/// One frame of a flood: `history`, `who`, `ping` or an unknown type, in
/// turn, each with the id `f{i}` (every one gets an answer carrying it).
fn flood_frame(i: usize, room: i64) -> String {
    let id = format!("f{i}");
    let frame = match i % 4 {
        0 => json!({ "v": 1, "id": id, "type": "history", "room": room, "limit": 1 }),
        1 => json!({ "v": 1, "id": id, "type": "who" }),
        2 => json!({ "v": 1, "id": id, "type": "ping" }),
        _ => json!({ "v": 1, "id": id, "type": "no_such_frame" }),
    };
    frame.to_string()
}

/// The most frames a connection with `rate` may have had read `elapsed`
/// after a moment before it opened. One extra for floating-point rounding.
fn most_frames_read(rate: Rate, elapsed: Duration) -> f64 {
    f64::from(rate.burst) + rate.per_sec * elapsed.as_secs_f64() + 1.0
}

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type RawSink = futures_util::stream::SplitSink<RawWs, tungstenite::Message>;

/// Writes `count` flood frames as fast as the socket takes them.
fn spawn_flood(
    mut sink: RawSink,
    count: usize,
    room: i64,
) -> tokio::task::JoinHandle<Result<RawSink>> {
    use futures_util::SinkExt;
    tokio::spawn(async move {
        for i in 0..count {
            sink.feed(tungstenite::Message::text(flood_frame(i, room)))
                .await?;
        }
        sink.flush().await?;
        Ok(sink)
    })
}

/// Reads the answers to a flood, checking after each one that no more
/// frames were read than the rate allows, and notes when a live entry of
/// `live_room` came in between.
struct FloodReader {
    stream: futures_util::stream::SplitStream<RawWs>,
    rate: Rate,
    /// A moment before the connection (and so its bucket) was made.
    start: std::time::Instant,
    live_room: i64,
    answered: usize,
    answered_before_entry: Option<usize>,
}

impl FloodReader {
    async fn next_text(&mut self) -> Result<Value> {
        use futures_util::StreamExt;
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, self.stream.next())
                .await
                .context("the flooding connection went quiet")?
                .context("the flooding connection ended")??;
            if let tungstenite::Message::Text(text) = msg {
                return Ok(serde_json::from_str(&text)?);
            }
        }
    }

    async fn read_answers_until(&mut self, total: usize) -> Result<()> {
        while self.answered < total {
            let frame = self.next_text().await?;
            if frame["type"] == "entry" && frame["entry"]["room"] == self.live_room {
                self.answered_before_entry.get_or_insert(self.answered);
                continue;
            }
            let is_flood_answer = frame["id"]
                .as_str()
                .and_then(|id| id.strip_prefix('f'))
                .is_some_and(|n| n.parse::<usize>().is_ok());
            if !is_flood_answer {
                continue;
            }
            self.answered += 1;
            let most = most_frames_read(self.rate, self.start.elapsed());
            ensure!(
                self.answered as f64 <= most,
                "{} frames answered, at most {most:.0} allowed so far",
                self.answered
            );
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_non_send_frames_is_read_at_the_frame_rate_and_others_keep_chatting()
-> Result<()> {
    use futures_util::{SinkExt, StreamExt};

    const FLOOD: usize = 2000;
    let rate = Rate::new(500.0, 50);
    let app = spawn_app_with(ServerConfig {
        metrics_token: Some(hush::config::Secret(crate::metrics::TOKEN.into())),
        limits: Limits {
            frames_per_connection: rate,
            ..Limits::default()
        },
        ..ServerConfig::default()
    })
    .await?;
    let before = crate::metrics::scrape(&app).await?;
    let t = app.users(&["alice", "bob", "carol", "dave"]).await?;
    let flooded_room = app.group(&t[0], &[("dave", &t[3])]).await?;
    let chat_room = app.group(&t[1], &[("carol", &t[2])]).await?;
    let mut dave = app.connect_ws(&t[3]).await?;
    dave.send_ok(flooded_room, "first", b"x").await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    let mut carol = app.connect_ws(&t[2]).await?;

    let start = std::time::Instant::now();
    let alice = app.connect_ws(&t[0]).await?;
    let (sink, stream) = alice.ws.split();
    let flood = spawn_flood(sink, FLOOD, flooded_room);
    let mut reader = FloodReader {
        stream,
        rate,
        start,
        live_room: flooded_room,
        answered: 0,
        answered_before_entry: None,
    };
    // Well into the flood (past the burst, so reading is being paced)...
    reader.read_answers_until(200).await?;
    // ...bob and carol chat: each message reaches carol within FRAME_TIMEOUT.
    let chat = tokio::spawn(async move {
        for i in 0..20 {
            let seq = bob.send_ok(chat_room, &format!("c{i}"), b"hi").await?;
            let entry = carol.next_entry(chat_room).await?;
            ensure!(entry["seq"] == seq, "carol got {entry}");
        }
        anyhow::Ok(())
    });
    // ...and dave writes to the flooder, who gets it while still throttled.
    dave.send_ok(flooded_room, "live", b"x").await?;
    reader.read_answers_until(FLOOD).await?;
    chat.await??;
    let at = reader
        .answered_before_entry
        .context("alice never got dave's live message")?;
    assert!(
        at < FLOOD,
        "the live entry came while reading was paced, not after the flood ({at})"
    );

    // The connection still works once the flood is answered.
    let mut sink = flood.await??;
    sink.send(tungstenite::Message::text(
        json!({ "v": 1, "id": "after", "type": "ping" }).to_string(),
    ))
    .await?;
    let pong = loop {
        let frame = reader.next_text().await?;
        if frame["id"] == "after" {
            break frame;
        }
    };
    assert_eq!(pong["type"], "pong", "{pong}");

    let after = crate::metrics::scrape(&app).await?;
    let kind = "hush_rate_limited_total{kind=\"frames\"}";
    let paused = crate::metrics::get(&after, kind) - crate::metrics::get(&before, kind);
    assert!(paused >= 1.0, "paced reads show in /metrics ({paused})");
    Ok(())
}

/// `hush serve --frame-rate` sets the limit (with the default, bursts of
/// 200, these 60 frames would all be answered at once).
#[tokio::test(flavor = "multi_thread")]
async fn the_frame_rate_flag_sets_the_limit() -> Result<()> {
    use futures_util::StreamExt;

    const FLOOD: usize = 60;
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_hush"))
        .args(["serve", "--help"])
        .output()?;
    let help = String::from_utf8(help.stdout)?;
    assert!(
        help.contains("--frame-rate") && help.contains("HUSH_FRAME_RATE"),
        "{help}"
    );

    let dir = tempfile::tempdir()?;
    let server = crate::crash::HushProcess::start(dir.path(), &["--frame-rate", "20/s:5"]).await?;
    let app = server.app()?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let start = std::time::Instant::now();
    let alice = app.connect_ws(&t[0]).await?;
    let (sink, stream) = alice.ws.split();
    let flood = spawn_flood(sink, FLOOD, room);
    let mut reader = FloodReader {
        stream,
        rate: Rate::new(20.0, 5),
        start,
        live_room: room,
        answered: 0,
        answered_before_entry: None,
    };
    reader.read_answers_until(FLOOD).await?;
    drop(flood.await??);
    Ok(())
}
