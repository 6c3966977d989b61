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

#[tokio::test]
async fn history_pages_backwards_from_the_newest_entries() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice"]).await?;
    let room = app.create_room(&t[0], "r").await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut sent = Vec::new();
    for i in 0..7 {
        sent.push(alice.send_ok(room, &format!("h{i}"), b"x").await?);
    }
    let newest = alice.history(room, None, Some(3)).await?;
    assert_eq!(
        message_seqs(newest["entries"].as_array().unwrap()),
        sent[4..].to_vec()
    );
    assert_eq!(newest["has_more"], true);
    let older = alice.history(room, Some(sent[4]), Some(3)).await?;
    assert_eq!(
        message_seqs(older["entries"].as_array().unwrap()),
        sent[1..4].to_vec()
    );
    let oldest = alice.history(room, Some(sent[1]), Some(3)).await?;
    let seqs: Vec<i64> = oldest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    // The room's `create` entry, then the first message; nothing before.
    assert_eq!(seqs, vec![1, sent[0]], "{oldest}");
    assert_eq!(oldest["has_more"], false);
    Ok(())
}

#[tokio::test]
async fn a_dm_cannot_be_joined_left_or_extended() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob", "carol"]).await?;
    let (_, dm) = app.open_dm(&t[0], "bob").await?;
    let (status, body) = app
        .post(
            &format!("/api/v1/rooms/{dm}/invite"),
            Some(&t[0]),
            Some(json!({ "username": "carol" })),
        )
        .await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{body}"
    );
    let (status, body) = app
        .post(&format!("/api/v1/rooms/{dm}/leave"), Some(&t[1]), None)
        .await?;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{body}"
    );
    let (status, _) = app
        .post(&format!("/api/v1/rooms/{dm}/join"), Some(&t[2]), None)
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, info) = app.get(&format!("/api/v1/rooms/{dm}"), Some(&t[0])).await?;
    assert_eq!(info["members"], json!(["alice", "bob"]));
    Ok(())
}

#[tokio::test]
async fn a_member_who_leaves_and_rejoins_does_not_see_what_was_said_while_away() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let first = alice.send_ok(room, "1", b"first").await?;
    let (status, _) = app
        .post(&format!("/api/v1/rooms/{room}/leave"), Some(&t[1]), None)
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let away = alice.send_ok(room, "2", b"while away").await?;
    let back = app.add_member(&t[0], room, "bob", &t[1]).await?;
    let rejoin = back["joined_seq"].as_i64().context("joined_seq")?;
    let last = alice.send_ok(room, "3", b"back").await?;

    let mut bob = app.connect_ws(&t[1]).await?;
    let (entries, _) = bob.sync(room, 0).await?;
    let msgs = message_seqs(&entries);
    assert_eq!(msgs, vec![first, last], "{entries:?}");
    assert!(!msgs.contains(&away));
    assert!(
        entries
            .iter()
            .any(|e| e["seq"] == rejoin && e["kind"] == "join")
    );
    Ok(())
}
