//! Invitations, joining, leaving and removal, and what each lets a user see.

use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_member_who_joins_sees_entries_from_his_join_onward_only() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.create_room(&t[0], "r").await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let early = [
        alice.send_ok(room, "e1", b"early 1").await?,
        alice.send_ok(room, "e2", b"early 2").await?,
    ];

    let mut bob = app.connect_ws(&t[1]).await?;
    app.invite(&t[0], room, "bob").await?;
    let invited = bob.expect_type("invited").await?;
    assert_eq!(
        (invited["room"].as_i64(), invited["by"].as_str()),
        (Some(room), Some("alice"))
    );
    let (_, pending) = app.get("/api/v1/invitations", Some(&t[1])).await?;
    assert_eq!(pending[0]["room"], room);
    // Invited is not a member yet.
    let reply = bob.history(room, None, None).await?;
    assert_eq!(reply["code"], "not_found", "{reply}");

    let joined = app.join(&t[1], room).await?;
    let join_seq = joined["joined_seq"].as_i64().context("joined_seq")?;
    assert_eq!(joined["members"], json!(["alice", "bob"]));
    assert!(join_seq > early[1]);
    let join_entry = bob.next_entry(room).await?;
    assert_eq!(
        (join_entry["kind"].as_str(), join_entry["seq"].as_i64()),
        (Some("join"), Some(join_seq))
    );
    let late = alice.send_ok(room, "l1", b"late").await?;
    assert_eq!(bob.next_entry(room).await?["seq"], late);

    let (synced, _) = bob.sync(room, 0).await?;
    let seqs: Vec<i64> = synced.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, vec![join_seq, late]);
    let history = bob.history(room, None, Some(500)).await?;
    let seqs: Vec<i64> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![join_seq, late], "{history}");
    assert_eq!(history["has_more"], false);
    // alice, a member from the start, sees the early ones.
    let alice_history = alice.history(room, None, None).await?;
    let alice_msgs = message_seqs(alice_history["entries"].as_array().unwrap());
    assert_eq!(alice_msgs, vec![early[0], early[1], late]);
    Ok(())
}

#[tokio::test]
async fn joining_without_an_invitation_is_not_found() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.create_room(&t[0], "r").await?;
    for id in [room, room + 1000] {
        let (status, body) = app
            .post(&format!("/api/v1/rooms/{id}/join"), Some(&t[1]), None)
            .await?;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{body}"
        );
    }
    let (status, _) = app
        .get(&format!("/api/v1/rooms/{room}"), Some(&t[1]))
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn leaving_ends_delivery_and_sync() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    let before = alice.send_ok(room, "b", b"before").await?;
    assert_eq!(bob.next_entry(room).await?["seq"], before);

    let (status, _) = app
        .post(&format!("/api/v1/rooms/{room}/leave"), Some(&t[1]), None)
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // bob is told about his own leave, then nothing more.
    let leave = bob.next_entry(room).await?;
    assert_eq!(
        (leave["kind"].as_str(), leave["sender"].as_str()),
        (Some("leave"), Some("bob"))
    );
    let after = alice.send_ok(room, "a", b"after").await?;
    bob.assert_no_entries().await?;
    let err = bob.sync(room, 0).await.unwrap_err().to_string();
    assert!(err.contains("not_found"), "{err}");
    let reply = bob.send_message(room, "x", b"x").await?;
    assert_eq!(reply["code"], "not_found", "{reply}");
    let (_, rooms) = app.get("/api/v1/rooms", Some(&t[1])).await?;
    assert_eq!(rooms, json!([]));

    // alice's log shows the leave and her message after it.
    let history = alice.history(room, None, None).await?;
    let entries = history["entries"].as_array().unwrap();
    assert_eq!(entries.last().unwrap()["seq"], after);
    assert_eq!(entries[entries.len() - 2]["kind"], "leave");
    Ok(())
}

#[tokio::test]
async fn only_the_creator_can_remove_and_a_removed_member_stops_receiving() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob", "carol"]).await?;
    let room = app
        .group(&t[0], &[("bob", &t[1]), ("carol", &t[2])])
        .await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;

    let path = format!("/api/v1/rooms/{room}/remove");
    let (status, body) = app
        .post(&path, Some(&t[2]), Some(json!({ "username": "bob" })))
        .await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{body}"
    );
    let (status, body) = app
        .post(&path, Some(&t[1]), Some(json!({ "username": "alice" })))
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // The refusals changed nothing: bob still receives.
    let still = alice.send_ok(room, "s", b"still here").await?;
    assert_eq!(bob.next_entry(room).await?["seq"], still);

    let (status, body) = app
        .post(&path, Some(&t[0]), Some(json!({ "username": "bob" })))
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let removed = bob.next_entry(room).await?;
    assert_eq!(removed["kind"], "remove");
    assert_eq!(removed["subject"], "bob");
    let gone = alice.send_ok(room, "g", b"gone").await?;
    bob.assert_no_entries().await?;
    let reply = bob.history(room, None, None).await?;
    assert_eq!(reply["code"], "not_found", "{reply}");
    let (_, info) = app
        .get(&format!("/api/v1/rooms/{room}"), Some(&t[0]))
        .await?;
    assert_eq!(info["members"], json!(["alice", "carol"]));
    assert_eq!(info["last_seq"], gone);
    Ok(())
}
