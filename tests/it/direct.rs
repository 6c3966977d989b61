//! Direct conversations are private to their two members.

use anyhow::Result;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn opening_a_dm_again_from_either_side_returns_the_same_room() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let (status, room) = app.open_dm(&t[0], "bob").await?;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(app.open_dm(&t[0], "bob").await?, (StatusCode::OK, room));
    assert_eq!(app.open_dm(&t[1], "alice").await?, (StatusCode::OK, room));
    let (status, info) = app
        .get(&format!("/api/v1/rooms/{room}"), Some(&t[1]))
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["kind"], "dm");
    assert_eq!(info["members"], json!(["alice", "bob"]));
    // A DM with yourself is refused.
    let (status, body) = app
        .post(
            "/api/v1/dm",
            Some(&t[0]),
            Some(json!({ "username": "alice" })),
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    Ok(())
}

#[tokio::test]
async fn a_dm_is_invisible_to_a_third_user_exactly_like_a_missing_room() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob", "carol"]).await?;
    let (_, dm) = app.open_dm(&t[0], "bob").await?;
    let missing = dm + 1000;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    let mut carol = app.connect_ws(&t[2]).await?;
    let seq = alice.send_ok(dm, "hi", b"secret").await?;
    assert_eq!(bob.next_entry(dm).await?["seq"], seq);

    // HTTP: same status and body for the DM and for a room that does not exist.
    let seen = app.get(&format!("/api/v1/rooms/{dm}"), Some(&t[2])).await?;
    let none = app
        .get(&format!("/api/v1/rooms/{missing}"), Some(&t[2]))
        .await?;
    assert_eq!(seen.0, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&seen.1), "not_found");
    assert_eq!(seen, none);
    let (_, rooms) = app.get("/api/v1/rooms", Some(&t[2])).await?;
    assert_eq!(rooms, json!([]));

    // WebSocket: send, history, sync all give the same not_found.
    for room in [dm, missing] {
        let reply = carol.send_message(room, "sneak", b"x").await?;
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some("not_found")),
            "{reply}"
        );
        let reply = carol.history(room, None, None).await?;
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some("not_found")),
            "{reply}"
        );
        let err = carol.sync(room, 0).await.unwrap_err().to_string();
        assert!(err.contains("not_found"), "{err}");
    }
    let a = carol.history(dm, None, None).await?;
    let b = carol.history(missing, None, None).await?;
    assert_eq!(a["message"], b["message"]);
    carol.assert_no_entries().await?;

    // Nothing carol tried reached the log.
    let history = bob.history(dm, None, None).await?;
    assert_eq!(
        message_seqs(history["entries"].as_array().unwrap()),
        vec![seq]
    );
    Ok(())
}
