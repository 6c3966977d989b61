//! Presence: online when the first connection opens, offline when the last
//! one closes; `who` lists a room's online members.

use anyhow::Result;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn members_see_a_user_come_online_and_go_offline_with_his_last_connection() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob", "carol"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut carol = app.connect_ws(&t[2]).await?;

    let who = alice
        .request(json!({ "type": "who", "room": room }))
        .await?;
    assert_eq!(
        (who["type"].as_str(), &who["users"]),
        (Some("online"), &json!(["alice"]))
    );

    let bob1 = app.connect_ws(&t[1]).await?;
    let online = alice.expect_type("presence").await?;
    assert_eq!(
        (online["user"].as_str(), online["online"].as_bool()),
        (Some("bob"), Some(true))
    );
    let bob2 = app.connect_ws(&t[1]).await?;
    let who = alice
        .request(json!({ "type": "who", "room": room }))
        .await?;
    assert_eq!(who["users"], json!(["alice", "bob"]));

    bob1.close().await?;
    let who = alice
        .request(json!({ "type": "who", "room": room }))
        .await?;
    assert_eq!(who["users"], json!(["alice", "bob"]));
    bob2.close().await?;
    let offline = alice.expect_type("presence").await?;
    assert_eq!(
        (offline["user"].as_str(), offline["online"].as_bool()),
        (Some("bob"), Some(false))
    );
    let who = alice
        .request(json!({ "type": "who", "room": room }))
        .await?;
    assert_eq!(who["users"], json!(["alice"]));
    // One online and one offline, nothing more.
    let rest = alice.drain().await?;
    assert!(rest.iter().all(|f| f["type"] != "presence"), "{rest:?}");

    // carol shares no room with bob: she hears nothing and cannot ask.
    let heard = carol.drain().await?;
    assert!(heard.iter().all(|f| f["type"] != "presence"), "{heard:?}");
    let who = carol
        .request(json!({ "type": "who", "room": room }))
        .await?;
    assert_eq!(who["code"], "not_found", "{who}");
    // Without a room: everyone online she shares a room with, and herself.
    let who = carol.request(json!({ "type": "who" })).await?;
    assert_eq!(who["users"], json!(["carol"]));
    Ok(())
}
