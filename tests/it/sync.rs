//! Catching up: offline members sync what they missed, and sync racing
//! live traffic yields every entry exactly once, in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, ensure};
use hush::config::{Limits, ServerConfig};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn an_offline_member_gets_everything_he_missed_when_he_syncs() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.create_room(&t[0], "r").await?;
    app.invite(&t[0], room, "bob").await?;
    let joined = app.join(&t[1], room).await?;
    let join_seq = joined["joined_seq"].as_i64().unwrap();

    let mut alice = app.connect_ws(&t[0]).await?;
    let mut sent = Vec::new();
    for i in 0..12 {
        sent.push(
            alice
                .send_ok(room, &format!("c{i}"), format!("body {i}").as_bytes())
                .await?,
        );
    }

    let mut bob = app.connect_ws(&t[1]).await?;
    let (entries, synced) = bob.sync(room, join_seq).await?;
    assert_eq!(message_seqs(&entries), sent);
    assert_eq!(synced, *sent.last().unwrap());
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(
            unb64(entry["body"].as_str().unwrap())?,
            format!("body {i}").as_bytes()
        );
        assert_eq!(entry["client_id"], format!("c{i}"));
    }

    // From 0: his join entry and everything after, nothing before it.
    let (all, synced_again) = bob.sync(room, 0).await?;
    assert_eq!(synced_again, synced);
    let seqs: Vec<i64> = all.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (join_seq..=synced).collect::<Vec<_>>());
    assert_eq!(all[0]["kind"], "join");
    assert_eq!(all[0]["sender"], "bob");

    // Caught up: live again, and the next message arrives exactly once.
    let next = alice.send_ok(room, "later", b"later").await?;
    assert_eq!(bob.next_entry(room).await?["seq"], next);
    bob.assert_no_entries().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_during_concurrent_sends_delivers_every_entry_once_in_order() -> Result<()> {
    sync_races_live_traffic(ServerConfig::default(), 62).await
}

/// One long last page: its read takes a while, and entries committed
/// meanwhile (live frames the session must not lose) follow it after
/// `synced` without a gap or a second sync.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_last_page_read_during_concurrent_sends_loses_no_live_entry() -> Result<()> {
    sync_races_live_traffic(
        ServerConfig {
            page_size: 5_000,
            ..ServerConfig::default()
        },
        4_000,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_with_small_pages_during_concurrent_sends_delivers_every_entry_once_in_order()
-> Result<()> {
    sync_races_live_traffic(
        ServerConfig {
            page_size: 7,
            ..ServerConfig::default()
        },
        23,
    )
    .await
}

/// Each sender sends at least this many, and keeps going until bob has
/// synced and seen live traffic resume (at most `MAX_PER_SENDER`).
const PER_SENDER: usize = 100;
const MAX_PER_SENDER: usize = 5_000;
/// Live entries bob must see after `synced` before the senders may stop.
const LIVE_AFTER_SYNC: usize = 20;

/// bob saw some of the room, went offline, missed a backlog of `backlog`
/// messages, and reconnects and syncs while alice and carol keep sending.
/// Pages plus the live entries after `synced` must hold every seq once, in
/// order; live entries pushed before the sync began may repeat (§10).
async fn sync_races_live_traffic(config: ServerConfig, backlog: usize) -> Result<()> {
    // The senders go on until bob is live, which may take more than the
    // default message burst; the limits have their own tests.
    let app = spawn_app_with(ServerConfig {
        limits: Limits::unlimited(),
        ..config
    })
    .await?;
    let t = app.users(&["alice", "bob", "carol"]).await?;
    let room = app
        .group(&t[0], &[("bob", &t[1]), ("carol", &t[2])])
        .await?;

    let mut bob = app.connect_ws(&t[1]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let seen = alice.send_ok(room, "before", b"seen by bob").await?;
    assert_eq!(bob.next_entry(room).await?["seq"], seen);
    bob.close().await?;

    let last = send_backlog(&mut alice, room, backlog).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let carol = app.connect_ws(&t[2]).await?;
    let alice_task = tokio::spawn(send_burst(alice, room, "a", None, stop.clone()));
    let carol_task = tokio::spawn(send_burst(carol, room, "c", Some(started_tx), stop.clone()));
    // Reconnect once the burst is under way, so sync and live traffic overlap.
    started_rx.await.context("carol's burst did not start")?;

    let mut bob = app.connect_ws(&t[1]).await?;
    bob.send_json(&json!({ "v": 1, "type": "sync", "rooms": [{ "room": room, "after": seen }] }))
        .await?;
    let mut stream = Vec::new();
    let mut pages = 0;
    let mut synced = false;
    let mut live_after_synced = 0;
    let mut pre_sync = Vec::new();
    let mut expected_last = None;
    let mut senders = Some((alice_task, carol_task));
    for _ in 0..MAX_FRAMES {
        if expected_last.is_some() && stream.last() == expected_last.as_ref() {
            break;
        }
        if live_after_synced >= LIVE_AFTER_SYNC
            && let Some((alice_task, carol_task)) = senders.take()
        {
            stop.store(true, Ordering::Relaxed);
            let mut acked = alice_task.await??;
            acked.extend(carol_task.await??);
            acked.sort();
            assert_eq!(
                acked,
                (last + 1..=last + acked.len() as i64).collect::<Vec<_>>(),
                "acks are gap-free"
            );
            assert!(acked.len() >= 2 * PER_SENDER);
            expected_last = acked.last().copied();
            continue;
        }
        let frame = bob.next_frame().await?;
        match frame["type"].as_str() {
            Some("page") => {
                pages += 1;
                ensure!(!synced, "page after synced: {frame}");
                for e in frame["entries"].as_array().unwrap() {
                    stream.push(e["seq"].as_i64().unwrap());
                }
            }
            Some("entry") if frame["entry"]["room"] == room => {
                let seq = frame["entry"]["seq"].as_i64().unwrap();
                if synced {
                    live_after_synced += 1;
                    stream.push(seq);
                } else {
                    // Pushed before the server took up the sync request (it
                    // holds live entries back while a room syncs): PROTOCOL.md
                    // §10 allows these to come again in a page.
                    ensure!(pages == 0, "live entry {seq} in the middle of the sync");
                    pre_sync.push(seq);
                }
            }
            Some("synced") => synced = true,
            Some("presence") => {}
            _ => anyhow::bail!("unexpected frame {frame}"),
        }
    }
    let expected_last = expected_last.context("the senders were never stopped")?;
    let want: Vec<i64> = (seen + 1..=expected_last).collect();
    assert!(
        pre_sync.iter().all(|seq| want.contains(seq)),
        "pre-sync entries {pre_sync:?}"
    );
    assert!(pages >= 1, "the backlog came as pages");
    // The guarantee: pages, then live entries after `synced`, cover the
    // range exactly once, in order.
    if stream != want {
        let bad: Vec<_> = stream.windows(2).filter(|w| w[1] != w[0] + 1).collect();
        anyhow::bail!(
            "bob's stream is not every seq once in order: {} seqs, want {} ({}..={}); breaks: {:?}",
            stream.len(),
            want.len(),
            seen + 1,
            expected_last,
            &bad[..bad.len().min(10)]
        );
    }
    bob.assert_no_entries().await?;
    Ok(())
}

/// Sends `count` messages, up to 100 before waiting for their acks, and
/// returns the last seq.
async fn send_backlog(ws: &mut WsClient, room: i64, count: usize) -> Result<i64> {
    let mut last = 0;
    for chunk in (0..count).collect::<Vec<_>>().chunks(100) {
        let mut ids = Vec::new();
        for i in chunk {
            let id = format!("backlog-{i}");
            ws.send_json(&json!({ "v": 1, "id": id, "type": "send", "room": room,
                "client_id": id, "body": b64(b"missed") }))
                .await?;
            ids.push(id);
        }
        for id in ids {
            let ack = ws.reply_to(&id).await?;
            ensure!(ack["type"] == "ack", "expected an ack, got {ack}");
            last = ack["seq"].as_i64().context("ack seq")?;
        }
    }
    Ok(last)
}

/// Sends messages one after another (each after the previous ack) until
/// `stop` is set and at least `PER_SENDER` went out; signals `started`
/// after the tenth. Returns the acked seqs.
async fn send_burst(
    mut ws: WsClient,
    room: i64,
    tag: &str,
    mut started: Option<tokio::sync::oneshot::Sender<()>>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<i64>> {
    let mut seqs = Vec::new();
    for i in 0..MAX_PER_SENDER {
        seqs.push(
            ws.send_ok(room, &format!("{tag}{i}"), format!("{tag}{i}").as_bytes())
                .await?,
        );
        if i == 10
            && let Some(tx) = started.take()
        {
            let _ = tx.send(());
        }
        if i + 1 >= PER_SENDER && stop.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(seqs)
}

#[tokio::test]
async fn a_cursor_beyond_the_end_of_the_room_is_clamped_so_new_entries_still_arrive() -> Result<()>
{
    let app = spawn_app().await?;
    let t = app.users(&["alice"]).await?;
    let room = app.create_room(&t[0], "r").await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let (entries, synced) = alice.sync(room, 1_000).await?;
    assert!(entries.is_empty());
    assert_eq!(
        synced, 1,
        "synced reports the room's real end, not the bogus cursor"
    );
    let seq = alice
        .send_ok(room, "after-clamp", b"still delivered")
        .await?;
    let entry = alice.next_entry(room).await?;
    assert_eq!(entry["seq"], seq, "the next entry is pushed live");
    Ok(())
}

/// Sync and history pages stop at a byte budget, so a room of large
/// messages (files) comes in frames a client's WebSocket library takes:
/// tungstenite, which this test's client uses, refuses frames over 16 MiB,
/// and 24 messages of 900 KB would be one ~29 MB page.
#[tokio::test(flavor = "multi_thread")]
async fn pages_of_large_messages_stay_within_a_byte_budget_and_lose_nothing() -> Result<()> {
    const LARGE: usize = 24;
    // The budget, plus the one entry that crosses it.
    const MOST_FRAME_BYTES: usize = hush::protocol::PAGE_JSON_BUDGET + 2 * 1024 * 1024;
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut sent = Vec::new();
    for i in 0..LARGE {
        let body = vec![i as u8; 900 * 1024];
        sent.push(alice.send_ok(room, &format!("file-{i}"), &body).await?);
    }

    let mut bob = app.connect_ws(&t[1]).await?;
    bob.send_json(&json!({ "v": 1, "type": "sync", "rooms": [{ "room": room, "after": 0 }] }))
        .await?;
    let (mut synced, mut pages) = (Vec::new(), 0);
    loop {
        let frame = bob
            .expect("page or synced", |f| {
                matches!(f["type"].as_str(), Some("page" | "synced" | "error"))
            })
            .await?;
        match frame["type"].as_str() {
            Some("page") => {
                let bytes = frame.to_string().len();
                ensure!(bytes <= MOST_FRAME_BYTES, "a page of {bytes} bytes");
                pages += 1;
                for entry in frame["entries"].as_array().context("entries")? {
                    synced.push(entry["seq"].as_i64().context("seq")?);
                }
            }
            Some("synced") => break,
            _ => anyhow::bail!("sync failed: {frame}"),
        }
    }
    ensure!(pages > 2, "{pages} pages for ~29 MB");
    // Bob sees the room from his own join on.
    let joined = *synced.first().context("nothing synced")?;
    ensure!(joined < sent[0], "bob's join {joined} after the files");
    let expected: Vec<i64> = (joined..=*sent.last().context("sent")?).collect();
    assert_eq!(synced, expected, "every entry once, in order");

    // History, newest first: as many as fit, then the rest page by page.
    let mut before = None;
    let mut history = Vec::new();
    loop {
        let page = bob.history(room, before, Some(500)).await?;
        ensure!(page["type"] == "history", "{page}");
        let bytes = page.to_string().len();
        ensure!(bytes <= MOST_FRAME_BYTES, "a history page of {bytes} bytes");
        let seqs: Vec<i64> = page["entries"]
            .as_array()
            .context("entries")?
            .iter()
            .map(|e| e["seq"].as_i64().context("seq"))
            .collect::<Result<_>>()?;
        ensure!(!seqs.is_empty(), "an empty history page");
        before = seqs.first().copied();
        history.splice(0..0, seqs);
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(history, expected, "history pages back to the start");
    Ok(())
}
