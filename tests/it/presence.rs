//! Presence: online when the first connection opens, offline when the last
//! one closes, told per room in coalesced frames (a snapshot first); `who`
//! lists a room's online members.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use futures_util::future::try_join_all;
use hush::config::{Limits, ServerConfig};
use serde_json::{Value, json};

use crate::support::*;

/// Whether a `presence` frame lists `user` among those who came online
/// (`online`) or went offline.
fn tells(frame: &Value, user: &str, online: bool) -> bool {
    let list = if online { "online" } else { "offline" };
    frame["type"] == "presence"
        && frame[list]
            .as_array()
            .is_some_and(|names| names.iter().any(|n| n == user))
}

/// Whether a frame is presence news about `user`, either way.
fn mentions(frame: &Value, user: &str) -> bool {
    tells(frame, user, true) || tells(frame, user, false)
}

/// One observer's view of a room, kept from its `presence` frames.
#[derive(Default)]
struct View {
    online: BTreeSet<String>,
    snapshots: usize,
    changes: usize,
}

impl View {
    fn apply(&mut self, frame: &Value) -> Result<()> {
        let names = |field: &str| -> Result<Vec<String>> {
            frame[field]
                .as_array()
                .with_context(|| format!("{field} in {frame}"))?
                .iter()
                .map(|n| n.as_str().map(str::to_owned).context("a username"))
                .collect()
        };
        if frame["snapshot"] == true {
            self.snapshots += 1;
            self.online = names("online")?.into_iter().collect();
        } else {
            self.changes += 1;
            self.online.extend(names("online")?);
            for gone in names("offline")? {
                self.online.remove(&gone);
            }
        }
        Ok(())
    }

    /// Reads presence frames (others are kept) until `done` holds.
    async fn until(
        &mut self,
        ws: &mut WsClient,
        done: impl Fn(&BTreeSet<String>) -> bool,
    ) -> Result<()> {
        while !done(&self.online) {
            let frame = ws.expect_type("presence").await?;
            self.apply(&frame)?;
        }
        Ok(())
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

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
    let online = alice
        .expect("bob online", |f| tells(f, "bob", true))
        .await?;
    assert_eq!(online["room"], room, "{online}");
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
    let offline = alice
        .expect("bob offline", |f| tells(f, "bob", false))
        .await?;
    assert_eq!(offline["room"], room, "{offline}");
    let who = alice
        .request(json!({ "type": "who", "room": room }))
        .await?;
    assert_eq!(who["users"], json!(["alice"]));
    // One online and one offline, nothing more about bob (alice's own
    // snapshot of the room may be among the rest).
    let rest = alice.drain().await?;
    assert!(rest.iter().all(|f| !mentions(f, "bob")), "{rest:?}");

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

#[tokio::test]
async fn a_burst_of_members_connecting_reaches_an_observer_in_a_few_frames_with_the_exact_set()
-> Result<()> {
    const BURST: usize = 16;
    // Registration's own limits have their tests; here it is setup.
    let app = spawn_app_with(ServerConfig {
        limits: Limits::unlimited(),
        ..ServerConfig::default()
    })
    .await?;
    let alice = app.user("alice").await?;
    let mut names = Vec::new();
    let mut members = Vec::new();
    for i in 0..BURST {
        // Fixture keys are few: these members share dave's, which the
        // server allows (keys identify devices, not accounts).
        let name = format!("member{i}");
        let (status, body) = app
            .register_with(&name, &password(&name), "dave", "dave")
            .await?;
        ensure!(status.is_success(), "register {name}: {status} {body}");
        let token = app.login(&name).await?;
        names.push(name);
        members.push(token);
    }
    let joined: Vec<(&str, &str)> = names
        .iter()
        .zip(&members)
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let room = app.group(&alice, &joined).await?;

    let mut observer = app.connect_ws(&alice).await?;
    let mut view = View::default();
    view.until(&mut observer, |online| online.contains("alice"))
        .await?;
    let before = view.changes;

    let sockets = try_join_all(members.iter().map(|t| app.connect_ws(t))).await?;
    let mut everyone: BTreeSet<String> = names.iter().cloned().collect();
    everyone.insert("alice".to_owned());
    view.until(&mut observer, |online| *online == everyone)
        .await?;
    let frames = view.changes - before;
    assert!(
        frames <= BURST / 2,
        "{BURST} members coming online took {frames} presence frames"
    );

    // Every connection's first presence frame is a snapshot of the room.
    for (mut ws, name) in sockets.into_iter().zip(&names) {
        let first = ws.expect_type("presence").await?;
        assert_eq!(
            (&first["snapshot"], &first["room"]),
            (&json!(true), &json!(room)),
            "{first}"
        );
        let listed = first["online"].as_array().context("online list")?;
        assert!(
            listed.iter().any(|n| n == name.as_str()),
            "{name} not in {first}"
        );
        assert!(listed.iter().any(|n| n == "alice"), "alice not in {first}");
    }
    // Their sockets are closed now: everyone but alice goes offline.
    view.until(&mut observer, |online| *online == set(&["alice"]))
        .await?;
    let who = observer
        .request(json!({ "type": "who", "room": room }))
        .await?;
    assert_eq!(who["users"], json!(["alice"]));
    Ok(())
}

#[tokio::test]
async fn leaving_and_coming_back_inside_a_window_leaves_the_right_state() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob", "carol", "dave"]).await?;
    let room = app
        .group(&t[0], &[("bob", &t[1]), ("carol", &t[2]), ("dave", &t[3])])
        .await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut view = View::default();
    let bob = app.connect_ws(&t[1]).await?;
    view.until(&mut alice, |online| *online == set(&["alice", "bob"]))
        .await?;

    // bob goes and comes straight back; dave comes and goes straight away.
    bob.close().await?;
    let _bob = app.connect_ws(&t[1]).await?;
    let dave = app.connect_ws(&t[3]).await?;
    dave.close().await?;
    // carol comes online after all that: once alice hears of her, every
    // earlier change has been told (windows are flushed in order).
    let _carol = app.connect_ws(&t[2]).await?;
    view.until(&mut alice, |online| online.contains("carol"))
        .await?;
    assert_eq!(view.online, set(&["alice", "bob", "carol"]));
    let rest = alice.drain().await?;
    for frame in rest.iter().filter(|f| f["type"] == "presence") {
        view.apply(frame)?;
    }
    assert_eq!(view.online, set(&["alice", "bob", "carol"]), "{rest:?}");
    let who = alice
        .request(json!({ "type": "who", "room": room }))
        .await?;
    assert_eq!(who["users"], json!(["alice", "bob", "carol"]));
    Ok(())
}

#[tokio::test]
async fn a_connecting_member_first_gets_a_snapshot_of_who_is_online() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob", "carol", "dave"]).await?;
    let room = app
        .group(&t[0], &[("bob", &t[1]), ("carol", &t[2]), ("dave", &t[3])])
        .await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let _bob = app.connect_ws(&t[1]).await?;
    let mut view = View::default();
    view.until(&mut alice, |online| *online == set(&["alice", "bob"]))
        .await?;

    let mut carol = app.connect_ws(&t[2]).await?;
    let first = carol.expect_type("presence").await?;
    assert_eq!(
        first,
        json!({ "v": 1, "type": "presence", "room": room, "snapshot": true,
                "online": ["alice", "bob", "carol"], "offline": [] })
    );
    // A second connection of an online user gets its own snapshot; the
    // others hear nothing of it.
    let mut carol2 = app.connect_ws(&t[2]).await?;
    let first = carol2.expect_type("presence").await?;
    assert_eq!(first["snapshot"], true, "{first}");
    assert_eq!(first["online"], json!(["alice", "bob", "carol"]));
    view.until(&mut alice, |online| online.contains("carol"))
        .await?;
    let heard = carol.drain().await?;
    assert!(heard.iter().all(|f| f["type"] != "presence"), "{heard:?}");
    Ok(())
}

#[tokio::test]
async fn members_all_coming_back_after_a_restart_are_told_exactly() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob", "carol", "dave"]).await?;
    app.group(&t[0], &[("bob", &t[1]), ("carol", &t[2]), ("dave", &t[3])])
        .await?;
    let before = try_join_all(t.iter().map(|t| app.connect_ws(t))).await?;
    drop(before);
    let app = app.restart().await?;

    // Everyone at once, the observer among them.
    let mut back = try_join_all(t.iter().map(|t| app.connect_ws(t))).await?;
    let everyone = set(&["alice", "bob", "carol", "dave"]);
    let mut view = View::default();
    view.until(&mut back[0], |online| *online == everyone)
        .await?;
    assert_eq!(view.snapshots, 1, "one snapshot, then changes only");
    let dave = back.pop().context("dave's socket")?;
    dave.close().await?;
    view.until(&mut back[0], |online| !online.contains("dave"))
        .await?;
    assert_eq!(view.online, set(&["alice", "bob", "carol"]));
    Ok(())
}
