//! `--retention-days`: old message ciphertext is pruned on schedule, while
//! membership entries, sequence numbers and cursors keep working.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use hush::config::ServerConfig;
use hush::store::db;

use crate::support::*;

const DAY_MS: i64 = 24 * 3600 * 1000;

async fn message_count(app: &TestApp, room: i64) -> Result<i64> {
    let db = app.sql().await?;
    let count = db::query("SELECT COUNT(*) FROM entries WHERE room_id = ? AND kind = 'message'")
        .bind(room)
        .fetch_scalar(&db)
        .await?;
    db.close().await;
    Ok(count)
}

#[tokio::test]
async fn messages_older_than_the_retention_are_pruned_and_sync_goes_on() -> Result<()> {
    let app = spawn_app_with(ServerConfig {
        retention: Some(Duration::from_millis(DAY_MS as u64)),
        retention_interval: Duration::from_millis(100),
        ..ServerConfig::default()
    })
    .await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.create_room(&t[0], "r").await?;
    app.invite(&t[0], room, "bob").await?;
    let join_seq = app.join(&t[1], room).await?["joined_seq"].as_i64().unwrap();

    let mut alice = app.connect_ws(&t[0]).await?;
    let old: Vec<i64> = vec![
        alice.send_ok(room, "old-1", b"old one").await?,
        alice.send_ok(room, "old-2", b"old two").await?,
    ];
    let recent = alice.send_ok(room, "new-1", b"recent").await?;

    // Age the first two by two days, as if they had been sent then.
    let db = app.sql().await?;
    for &seq in &old {
        db::query("UPDATE entries SET ts = ts - ? WHERE room_id = ? AND seq = ?")
            .bind(2 * DAY_MS)
            .bind(room)
            .bind(seq)
            .execute(&db)
            .await?;
    }
    db.close().await;

    let deadline = Instant::now() + Duration::from_secs(10);
    while message_count(&app, room).await? != 1 {
        ensure!(
            Instant::now() < deadline,
            "the old messages were not pruned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Bob syncs from before the pruned messages: he gets what remains, in
    // order, with the membership entries intact and the recent message.
    let mut bob = app.connect_ws(&t[1]).await?;
    let (entries, synced) = bob.sync(room, 0).await?;
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(synced, recent);
    assert_eq!(entries[0]["kind"], "join");
    assert_eq!(entries[0]["seq"], join_seq);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(!seqs.iter().any(|seq| old.contains(seq)), "{seqs:?}");
    assert_eq!(message_seqs(&entries), vec![recent]);

    // A cursor that pointed into the pruned range still works, and the log
    // goes on from where it was: no sequence number is reused.
    let (after_old, _) = bob.sync(room, old[0]).await?;
    assert_eq!(message_seqs(&after_old), vec![recent]);
    let next = alice.send_ok(room, "new-2", b"after pruning").await?;
    assert_eq!(next, recent + 1);
    assert_eq!(bob.next_entry(room).await?["seq"], next);
    Ok(())
}
