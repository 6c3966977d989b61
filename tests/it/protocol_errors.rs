//! Bad frames get an `error` frame with a stable code and leave the
//! connection (and everyone else's) working; a bad first frame closes 4001.

use anyhow::Result;
use hush::config::ServerConfig;
use serde_json::{Value, json};

use crate::support::*;

async fn expect_error(ws: &mut WsClient, code: &str, what: &str) -> Result<()> {
    let frame = ws.expect(what, |f| f["type"] == "error").await?;
    assert_eq!(frame["code"], code, "{what}: {frame}");
    // Still usable afterwards.
    ws.ping().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_get_error_codes_and_the_connection_keeps_working() -> Result<()> {
    let app = spawn_app_with(ServerConfig {
        max_body_bytes: 64,
        ..ServerConfig::default()
    })
    .await?;
    let t = app.users(&["alice", "bob", "carol"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let other_room = app.create_room(&t[2], "not alice's").await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    assert_eq!(alice.ready["max_body_bytes"], 64);

    let send = |extra: Value| {
        let mut frame = json!({ "v": 1, "type": "send", "room": room, "client_id": "x" });
        for (k, v) in extra.as_object().expect("extra fields are an object") {
            frame[k] = v.clone();
        }
        frame.to_string()
    };

    let texts: Vec<(&str, String, &str)> = vec![
        ("malformed JSON", "{\"v\":1,\"type\":".to_owned(), "bad_frame"),
        ("not an object", "[1,2,3]".to_owned(), "bad_frame"),
        ("unknown type", json!({ "v": 1, "type": "dance" }).to_string(), "bad_frame"),
        ("room as string", send(json!({ "room": "one", "body": b64(b"x") })), "bad_frame"),
        ("body as number", send(json!({ "body": 5 })), "bad_frame"),
        ("missing body", send(json!({})), "bad_frame"),
        ("invalid base64", send(json!({ "body": "%%%%" })), "bad_body"),
        ("oversized body", send(json!({ "body": b64(&[1u8; 65]) })), "too_large"),
        ("oversized encoding", send(json!({ "body": b64(&[1u8; 200]) })), "too_large"),
        ("empty body", send(json!({ "body": "" })), "bad_body"),
        ("empty client_id", send(json!({ "client_id": "", "body": b64(b"x") })), "bad_frame"),
        ("long client_id", send(json!({ "client_id": "c".repeat(65), "body": b64(b"x") })), "bad_frame"),
        ("unsupported v", json!({ "v": 2, "type": "ping" }).to_string(), "unsupported_version"),
        ("auth again", json!({ "v": 1, "type": "auth", "token": t[0] }).to_string(), "bad_frame"),
        (
            "room not a member of",
            json!({ "v": 1, "type": "send", "room": other_room, "client_id": "x", "body": b64(b"x") }).to_string(),
            "not_found",
        ),
    ];
    for (what, text, code) in &texts {
        alice.send_text(text).await?;
        expect_error(&mut alice, code, what).await?;
    }
    alice.send_binary(b"\x00\x01binary").await?;
    expect_error(&mut alice, "bad_frame", "binary frame").await?;

    // An error echoes the request id when it can be read.
    let reply = alice
        .request(json!({ "type": "send", "room": room, "client_id": "", "body": b64(b"x") }))
        .await?;
    assert_eq!(reply["code"], "bad_frame", "{reply}");

    // A body of exactly the limit is fine, and the connection still sends.
    let seq = alice.send_ok(room, "ok", &[2u8; 64]).await?;
    let entry = bob.next_entry(room).await?;
    assert_eq!(entry["seq"], seq);
    // None of alice's mistakes reached bob or the log.
    bob.assert_no_entries().await?;
    let frames = bob.drain().await?;
    assert!(frames.iter().all(|f| f["type"] != "error"), "{frames:?}");
    let (entries, _) = bob.sync(room, 0).await?;
    assert_eq!(message_seqs(&entries), vec![seq]);
    Ok(())
}

#[tokio::test]
async fn a_first_frame_that_is_not_a_valid_auth_closes_with_4001() -> Result<()> {
    let app = spawn_app().await?;
    let token = app.user("alice").await?;
    let bad_firsts = [
        json!({ "v": 1, "type": "ping" }).to_string(),
        "not json".to_owned(),
        json!({ "v": 1, "type": "auth", "token": "not-a-token" }).to_string(),
        json!({ "v": 1, "type": "auth", "token": "A".repeat(43) }).to_string(),
        json!({ "v": 2, "type": "auth", "token": token }).to_string(),
        json!({ "v": 1, "type": "auth" }).to_string(),
    ];
    for first in &bad_firsts {
        let mut ws = app.connect_ws_raw().await?;
        ws.send_text(first).await?;
        assert_eq!(ws.expect_close().await?, Some(4001), "first frame {first}");
        let error = ws.next_frame().await?;
        assert_eq!(error["code"], "unauthorized", "{first}: {error}");
    }
    let mut ws = app.connect_ws_raw().await?;
    ws.send_binary(b"binary").await?;
    assert_eq!(ws.expect_close().await?, Some(4001));
    // The real token still works.
    app.connect_ws(&token).await?.ping().await?;
    Ok(())
}

#[tokio::test]
async fn a_connection_that_never_authenticates_is_closed_with_4001() -> Result<()> {
    let config = ServerConfig {
        auth_timeout: std::time::Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let app = spawn_app_with(config).await?;
    let mut ws = app.connect_ws_raw().await?;
    assert_eq!(ws.expect_close().await?, Some(4001));
    Ok(())
}

#[tokio::test]
async fn a_message_larger_than_the_frame_limit_closes_with_1009() -> Result<()> {
    let config = ServerConfig {
        max_body_bytes: 64,
        ..ServerConfig::default()
    };
    let max_frame = config.max_frame_bytes();
    let app = spawn_app_with(config).await?;
    let t = app.users(&["alice"]).await?;
    let room = app.create_room(&t[0], "r").await?;
    let mut ws = app.connect_ws(&t[0]).await?;
    let huge = json!({ "v": 1, "type": "send", "room": room, "client_id": "big", "body": "A".repeat(max_frame) });
    ws.send_json(&huge).await?;
    assert_eq!(ws.expect_close().await?, Some(1009));
    // Nothing was stored, and the user can reconnect.
    let mut again = app.connect_ws(&t[0]).await?;
    let (entries, _) = again.sync(room, 0).await?;
    assert!(message_seqs(&entries).is_empty());
    Ok(())
}
