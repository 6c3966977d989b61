//! Several writers on one PostgreSQL database (several `hush serve` nodes):
//! each room's log stays gap-free and duplicate-free, resends are
//! idempotent across nodes, and a writer's cached view of a room follows
//! changes made on another node. PostgreSQL pass only (`postgres_*`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail, ensure};
use hush::store::writer::{Committed, Writer};
use hush::store::{RoomId, Store, StoreError, UserRef};

use crate::support::{PgDatabase, open_store};

/// (room, seq) of every entry a writer announced, in announcement order.
type Announced = Arc<Mutex<Vec<(RoomId, i64)>>>;

fn start(store: &Store) -> (Writer, tokio::task::JoinHandle<()>, Announced) {
    let announced: Announced = Arc::default();
    let seen = announced.clone();
    let (writer, task) = store.spawn_writer(Box::new(move |c: &Committed| {
        seen.lock().unwrap().push((c.entry.room, c.entry.seq));
    }));
    (writer, task, announced)
}

async fn user(store: &Store, name: &str) -> Result<UserRef> {
    let id = store
        .create_user(name, "not-a-hash", name.as_bytes(), &format!("fp-{name}"))
        .await?;
    Ok(UserRef {
        id,
        name: name.to_owned(),
    })
}

/// Two nodes' writers append to one room at full speed, and resend some
/// messages to the other node: every ack arrives, the room's seqs are
/// 1..=last_seq with no gap and no repeat, and a resend gets the original
/// seq back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_writers_append_to_one_room() -> Result<()> {
    let db = PgDatabase::create().await?;
    let node1 = open_store(&db.url).await?;
    let node2 = open_store(&db.url).await?;
    let alice = user(&node1, "alice").await?;
    let bob = user(&node1, "bob").await?;
    let (w1, t1, announced1) = start(&node1);
    let (w2, t2, announced2) = start(&node2);

    let room = w1.create_group(alice.clone(), "busy".into()).await?.room;
    w1.invite(room, alice.clone(), bob.clone()).await?;
    w2.join(room, bob.clone()).await?;

    const TASKS: usize = 8;
    const PER_TASK: usize = 300;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (mine, other) = if t % 2 == 0 {
            (w1.clone(), w2.clone())
        } else {
            (w2.clone(), w1.clone())
        };
        let sender = if t % 4 < 2 {
            alice.clone()
        } else {
            bob.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::with_capacity(PER_TASK);
            // Many in flight at once, in this task's order.
            let mut pending = Vec::with_capacity(PER_TASK);
            for i in 0..PER_TASK {
                let slot = mine.clone().reserve().await?;
                let id = format!("t{t}-{i}");
                pending.push((
                    id.clone(),
                    slot.enqueue_message(room, sender.clone(), id, vec![t as u8; 32], None),
                ));
            }
            for (id, reply) in pending {
                let applied = reply.await.context("writer gone")??;
                ensure!(!applied.duplicate, "{id} was new, not a duplicate");
                let seq = applied.entry.context("an entry")?.seq;
                acks.push((id, seq));
            }
            // Every tenth message resent to the other node.
            for (id, seq) in acks.iter().step_by(10) {
                let again = other
                    .send_message(room, sender.clone(), id.clone(), vec![t as u8; 32])
                    .await?;
                ensure!(
                    again.duplicate,
                    "resend of {id} to the other node is a duplicate"
                );
                ensure!(
                    again.entry.as_ref().map(|e| e.seq) == Some(*seq),
                    "resend of {id} has the original seq"
                );
            }
            anyhow::Ok(acks)
        }));
    }
    let mut seqs = BTreeSet::new();
    let mut acked = 0;
    for task in tasks {
        for (id, seq) in task.await?? {
            ensure!(seqs.insert(seq), "seq {seq} acked twice (last: {id})");
            acked += 1;
        }
    }
    ensure!(acked == TASKS * PER_TASK, "every message acked");

    // create, invite, join, then the messages.
    let last = node1.last_seq(room).await?;
    ensure!(
        last == 3 + (TASKS * PER_TASK) as i64,
        "last_seq {last} counts every entry once"
    );
    ensure!(
        seqs.iter().copied().eq(4..=last),
        "the acked seqs are 4..={last} without gaps"
    );
    let stored: Vec<i64> =
        hush::store::db::query("SELECT seq FROM entries WHERE room_id = ? ORDER BY seq")
            .bind(room)
            .fetch_all_scalars(node1.db())
            .await?;
    ensure!(
        stored.iter().copied().eq(1..=last),
        "the stored log is 1..={last}"
    );

    w1.stop().await;
    w2.stop().await;
    t1.await?;
    t2.await?;
    node1.close().await;
    node2.close().await;
    // Each node announced its own commits, each room's in increasing order,
    // and between them every entry once.
    let mut all = BTreeMap::new();
    for announced in [announced1, announced2] {
        let announced = announced.lock().unwrap();
        let mut last_of: BTreeMap<RoomId, i64> = BTreeMap::new();
        for (r, seq) in announced.iter() {
            let prev = last_of.insert(*r, *seq).unwrap_or(0);
            ensure!(*seq > prev, "room {r:?}: {seq} announced after {prev}");
            if all.insert((*r, *seq), ()).is_some() {
                bail!("({r:?}, {seq}) announced by both nodes");
            }
        }
    }
    ensure!(
        all.keys().filter(|(r, _)| *r == room).count() == last as usize,
        "every entry of the room announced once"
    );
    Ok(())
}

/// The same message sent to two nodes at once is stored once; both callers
/// get its seq, and exactly one of them a fresh (not duplicate) answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_racing_resends_are_stored_once() -> Result<()> {
    let db = PgDatabase::create().await?;
    let node1 = open_store(&db.url).await?;
    let node2 = open_store(&db.url).await?;
    let alice = user(&node1, "alice").await?;
    let (w1, t1, _) = start(&node1);
    let (w2, t2, _) = start(&node2);
    let room = w1.create_group(alice.clone(), "race".into()).await?.room;
    for i in 0..200 {
        let id = format!("race-{i}");
        let (a, b) = tokio::join!(
            w1.send_message(room, alice.clone(), id.clone(), vec![1; 16]),
            w2.send_message(room, alice.clone(), id.clone(), vec![1; 16]),
        );
        let (a, b) = (a?, b?);
        ensure!(
            a.duplicate != b.duplicate,
            "{id}: exactly one fresh answer ({}, {})",
            a.duplicate,
            b.duplicate
        );
        ensure!(
            a.entry.map(|e| e.seq) == b.entry.map(|e| e.seq),
            "{id}: both answers name one entry"
        );
    }
    ensure!(
        node2.last_seq(room).await? == 201,
        "200 messages after create"
    );
    w1.stop().await;
    w2.stop().await;
    t1.await?;
    t2.await?;
    node1.close().await;
    node2.close().await;
    Ok(())
}

/// A block made on one node stops messages that another node's writer
/// would let through from its cached view of the conversation, and an
/// unblock there lets them through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_block_on_another_node_reaches_the_cached_room() -> Result<()> {
    let db = PgDatabase::create().await?;
    let node1 = open_store(&db.url).await?;
    let node2 = open_store(&db.url).await?;
    let alice = user(&node1, "alice").await?;
    let bob = user(&node1, "bob").await?;
    let (w1, t1, _) = start(&node1);
    let (w2, t2, _) = start(&node2);
    let dm = w1.open_dm(alice.clone(), bob.clone()).await?.room;
    w2.accept(dm, bob.clone()).await?;
    // Node 1 caches the conversation.
    w1.send_message(dm, alice.clone(), "m1".into(), vec![1])
        .await?;
    w2.block(bob.clone(), alice.clone()).await?;
    match w1
        .send_message(dm, alice.clone(), "m2".into(), vec![2])
        .await
    {
        Err(StoreError::Blocked) => {}
        other => bail!("a blocked sender's message was not refused: {other:?}"),
    }
    w2.unblock(bob.clone(), alice.clone()).await?;
    let applied = w1
        .send_message(dm, alice.clone(), "m3".into(), vec![3])
        .await?;
    ensure!(
        !applied.duplicate && applied.entry.is_some(),
        "stored after the unblock"
    );
    w1.stop().await;
    w2.stop().await;
    t1.await?;
    t2.await?;
    node1.close().await;
    node2.close().await;
    Ok(())
}
