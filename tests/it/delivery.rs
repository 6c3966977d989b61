//! Live delivery of group messages, and idempotent resends.

use anyhow::Result;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_group_message_reaches_every_member_once_and_no_one_else() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob", "carol", "dave"]).await?;
    let room = app
        .group(&t[0], &[("bob", &t[1]), ("carol", &t[2])])
        .await?;
    // dave shares another room with alice, so he is a real, connected bystander.
    app.group(&t[0], &[("dave", &t[3])]).await?;

    let mut alice = app.connect_ws(&t[0]).await?;
    let mut alice2 = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    let mut carol = app.connect_ws(&t[2]).await?;
    let mut dave = app.connect_ws(&t[3]).await?;

    let first = alice.send_message(room, "m1", b"ciphertext one").await?;
    assert_eq!(first["type"], "ack", "{first}");
    assert_eq!(first["client_id"], "m1");
    assert_eq!(first["duplicate"], false);
    let seq1 = first["seq"].as_i64().unwrap();
    let seq2 = alice.send_ok(room, "m2", b"ciphertext two").await?;
    assert_eq!(seq2, seq1 + 1, "sequence numbers are consecutive");

    for (who, ws) in [
        ("bob", &mut bob),
        ("carol", &mut carol),
        ("alice2", &mut alice2),
        ("alice", &mut alice),
    ] {
        for (seq, body) in [(seq1, &b"ciphertext one"[..]), (seq2, b"ciphertext two")] {
            let entry = ws.next_entry(room).await?;
            assert_eq!(entry["seq"], seq, "{who}: {entry}");
            assert_eq!(entry["kind"], "message");
            assert_eq!(entry["sender"], "alice");
            assert_eq!(unb64(entry["body"].as_str().unwrap())?, body, "{who}");
        }
        ws.assert_no_entries().await?;
    }
    dave.assert_no_entries().await?;
    Ok(())
}

#[tokio::test]
async fn resending_a_client_id_is_acknowledged_as_duplicate_and_stored_once() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;

    let first = alice.send_message(room, "same-id", b"hello").await?;
    let second = alice.send_message(room, "same-id", b"hello").await?;
    assert_eq!(first["type"], "ack", "{first}");
    assert_eq!(second["type"], "ack", "{second}");
    assert_eq!(first["seq"], second["seq"]);
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);

    // bob got it live exactly once.
    let entry = bob.next_entry(room).await?;
    assert_eq!(entry["seq"], first["seq"]);
    bob.assert_no_entries().await?;

    // The log holds it once.
    let history = bob.history(room, None, None).await?;
    let entries = history["entries"].as_array().unwrap();
    let stored: Vec<_> = entries
        .iter()
        .filter(|e| e["client_id"] == "same-id")
        .collect();
    assert_eq!(stored.len(), 1, "{history}");
    let (synced, _) = bob.sync(room, 0).await?;
    assert_eq!(message_seqs(&synced), vec![first["seq"].as_i64().unwrap()]);

    // The same client_id from another sender is a different message.
    let bobs = bob.send_message(room, "same-id", b"mine").await?;
    assert_eq!(bobs["duplicate"], false);
    assert_eq!(bobs["seq"], first["seq"].as_i64().unwrap() + 1);
    Ok(())
}
