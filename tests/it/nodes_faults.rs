//! Faults of a multi-node deployment (issue 16, docs/SCALING.md "Failure
//! modes"): a node killed mid-stream, a PostgreSQL restart, two nodes
//! writing one room at full speed, a resend to another node. Real `hush
//! serve` processes (`nodes::Cluster`), real PostgreSQL. What every test
//! checks in the end is the room's log as a node serves it: seqs 1..last
//! with no gap, every acknowledged message once at its acknowledged seq,
//! each sender's messages in the order it sent them, and members on live
//! nodes that got every entry live, in order, with no gap.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::nodes::Cluster;
use crate::nodes_delivery::{contiguous, group};
use crate::pg_server::PgServer;
use crate::support::{TestApp, WsClient, b64};

/// A short catch-up, so an entry whose announcement died with its node
/// costs the tests little time; rate limits out of the way of clients that
/// send as fast as acks come back.
const FLAGS: &[&str] = &[
    "--catchup-interval",
    "300ms",
    "--message-rate",
    "100000/s:100000",
    "--user-message-rate",
    "100000/s:100000",
    "--frame-rate",
    "100000/s:100000",
];

/// The longest any phase of a test may take.
const PHASE: Duration = Duration::from_secs(30);

/// One stored or acknowledged message: who sent it, its client id, its seq.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Acked {
    sender: String,
    client_id: String,
    seq: i64,
}

/// What became of one client's stream of sends.
#[derive(Debug, Default)]
struct Streamed {
    /// Acked, in the order they were sent.
    acked: Vec<Acked>,
    /// Sent (or being sent) with no reply when the connection broke, in
    /// the order they were sent.
    pending: Vec<String>,
    /// Why the stream ended early: the connection broke.
    broke: Option<String>,
}

fn body_of(client_id: &str) -> Vec<u8> {
    format!("body of {client_id}").into_bytes()
}

/// Sends `{prefix}-0`, `{prefix}-1`, … into `room` as `sender`, keeping up
/// to `window` sends in flight, until `count` are acked or `stop` is set.
/// Counts acks in `progress`. A broken connection ends the stream (what was
/// in flight is `pending`); any reply but an ack is an error.
#[allow(clippy::too_many_arguments)]
async fn stream(
    ws: &mut WsClient,
    room: i64,
    sender: &str,
    prefix: &str,
    count: usize,
    window: usize,
    stop: &AtomicBool,
    progress: &AtomicUsize,
) -> Result<Streamed> {
    let mut out = Streamed::default();
    let mut in_flight: VecDeque<(String, String)> = VecDeque::new();
    let mut next = 0;
    loop {
        while in_flight.len() < window && next < count && !stop.load(Ordering::Relaxed) {
            let client_id = format!("{prefix}-{next}");
            next += 1;
            let id = ws.fresh_id();
            let frame = json!({
                "v": 1, "id": id, "type": "send", "room": room,
                "client_id": client_id, "body": b64(&body_of(&client_id)),
            });
            in_flight.push_back((id, client_id));
            if let Err(e) = ws.send_json(&frame).await {
                out.pending = in_flight.into_iter().map(|(_, c)| c).collect();
                out.broke = Some(format!("{e:#}"));
                return Ok(out);
            }
        }
        let Some((id, client_id)) = in_flight.front().cloned() else {
            return Ok(out);
        };
        // Acks come in the order of the sends (PROTOCOL.md §11).
        let reply = match ws.reply_to(&id).await {
            Ok(reply) => reply,
            Err(e) => {
                out.pending = in_flight.into_iter().map(|(_, c)| c).collect();
                out.broke = Some(format!("{e:#}"));
                return Ok(out);
            }
        };
        in_flight.pop_front();
        ensure!(
            reply["type"] == "ack" && reply["client_id"] == client_id.as_str(),
            "{sender}: expected the ack of {client_id}, got {reply}"
        );
        ensure!(
            reply["duplicate"] == false,
            "{sender}: {client_id} was new: {reply}"
        );
        out.acked.push(Acked {
            sender: sender.to_owned(),
            client_id,
            seq: reply["seq"].as_i64().context("ack seq")?,
        });
        progress.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends one message until it is acked, as a client's outbox would: after
/// `storage_unavailable`, `unavailable` or `rate_limited` it waits as told
/// and resends the same client id; after a broken connection it
/// reconnects (to `app`) and resends. Returns the ack. Bounded by `PHASE`.
async fn send_until_acked(
    app: &TestApp,
    token: &str,
    ws: &mut WsClient,
    room: i64,
    client_id: &str,
    refusals: &AtomicUsize,
) -> Result<Value> {
    let started = Instant::now();
    loop {
        ensure!(
            started.elapsed() < PHASE,
            "{client_id} was not acked within {PHASE:?}"
        );
        match ws.send_message(room, client_id, &body_of(client_id)).await {
            Ok(reply) if reply["type"] == "ack" => return Ok(reply),
            Ok(reply) => {
                let code = reply["code"].as_str().unwrap_or_default();
                ensure!(
                    matches!(code, "storage_unavailable" | "unavailable" | "rate_limited"),
                    "{client_id}: expected an ack or a retryable error, got {reply}"
                );
                refusals.fetch_add(1, Ordering::Relaxed);
                let wait = reply["retry_after_ms"]
                    .as_u64()
                    .unwrap_or(100)
                    .clamp(10, 1000);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            Err(_) => {
                // The connection broke (or a reply took longer than the
                // client waits): a new one, then the same message again.
                refusals.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Ok(fresh) = app.connect_ws(token).await {
                    *ws = fresh;
                }
            }
        }
    }
}

/// Reads live entries of `room` until the one whose client id is `end`;
/// returns every seq seen, in arrival order.
async fn entries_until_end(ws: &mut WsClient, room: i64) -> Result<Vec<i64>> {
    let mut seen = Vec::new();
    loop {
        let entry = ws.next_entry(room).await.with_context(|| {
            format!(
                "waiting for the end marker; saw {} entries, last {:?}",
                seen.len(),
                seen.last()
            )
        })?;
        seen.push(entry["seq"].as_i64().context("seq")?);
        if entry["client_id"] == "end" {
            return Ok(seen);
        }
        ensure!(seen.len() < 100_000, "runaway");
    }
}

/// The whole log of `room` as `app` serves it to a fresh connection.
async fn full_log(app: &TestApp, token: &str, room: i64) -> Result<Vec<Value>> {
    let mut ws = app.connect_ws(token).await?;
    let (entries, _) = ws.sync(room, 0).await?;
    ws.close().await?;
    Ok(entries)
}

/// The stored messages of a log, keyed by (sender, client id), each with
/// every seq it is stored at.
fn messages(log: &[Value]) -> BTreeMap<(String, String), Vec<i64>> {
    let mut out: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    for entry in log.iter().filter(|e| e["kind"] == "message") {
        let key = (
            entry["sender"].as_str().unwrap_or_default().to_owned(),
            entry["client_id"].as_str().unwrap_or_default().to_owned(),
        );
        out.entry(key)
            .or_default()
            .push(entry["seq"].as_i64().unwrap_or(-1));
    }
    out
}

/// What every test checks of the stored log: seqs 1..=last, no gap, no
/// repeat; no message stored twice; each acked message at its acked seq;
/// and, per client id prefix, messages stored in the order they were sent
/// (`{prefix}-{n}` with n rising with seq).
fn check_log(log: &[Value], last: i64, acked: &[Acked]) -> Result<()> {
    let seqs: Vec<i64> = log
        .iter()
        .map(|e| e["seq"].as_i64().unwrap_or(-1))
        .collect();
    ensure!(
        contiguous(&seqs, 1, last),
        "the room's log is not 1..={last}: {seqs:?}"
    );
    let stored = messages(log);
    for ((sender, client_id), at) in &stored {
        ensure!(
            at.len() == 1,
            "{sender}'s {client_id} is stored {} times: {at:?}",
            at.len()
        );
    }
    for a in acked {
        let at = stored
            .get(&(a.sender.clone(), a.client_id.clone()))
            .with_context(|| format!("acked {a:?} is not in the log"))?;
        ensure!(at == &[a.seq], "acked {a:?} is stored at {at:?}");
    }
    let mut by_prefix: BTreeMap<String, Vec<(i64, u64)>> = BTreeMap::new();
    for ((sender, client_id), at) in &stored {
        if let Some((prefix, n)) = client_id.rsplit_once('-')
            && let Ok(n) = n.parse::<u64>()
        {
            by_prefix
                .entry(format!("{sender}/{prefix}"))
                .or_default()
                .push((at[0], n));
        }
    }
    for (prefix, mut sent) in by_prefix {
        sent.sort();
        ensure!(
            sent.windows(2).all(|w| w[0].1 < w[1].1),
            "{prefix}: stored out of the order sent (seq, n): {sent:?}"
        );
    }
    Ok(())
}

/// Waits, bounded, until `what` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let started = Instant::now();
    while !check() {
        ensure!(started.elapsed() < PHASE, "{what}: not within {PHASE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Syncs `room` on `ws` from 0; returns the synced seq. Entries pushed
/// before the sync started may repeat the pages (PROTOCOL.md §10): they
/// are dropped here, so what is read next must continue exactly after it.
async fn sync_for_live(ws: &mut WsClient, room: i64) -> Result<i64> {
    let (_, synced) = ws.sync(room, 0).await?;
    for early in ws.take_stashed_entries(room) {
        ensure!(
            early["entry"]["seq"].as_i64() <= Some(synced),
            "an entry pushed before the sync is beyond its end ({synced}): {early}"
        );
    }
    Ok(synced)
}

/// A member connected to `app` reading `room` live from its sync until the
/// end marker, in a task of its own. Returns its synced seq and the task.
async fn live_reader(
    app: &TestApp,
    token: &str,
    room: i64,
) -> Result<(i64, tokio::task::JoinHandle<Result<Vec<i64>>>)> {
    let mut ws = app.connect_ws(token).await?;
    let synced = sync_for_live(&mut ws, room).await?;
    let task = tokio::spawn(async move { entries_until_end(&mut ws, room).await });
    Ok((synced, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_node_killed_mid_stream_loses_no_acknowledged_message() -> Result<()> {
    let mut cluster = Cluster::start(3, FLAGS).await?;
    let (room, tokens) = group(&cluster, "alice", &["bob", "carol", "dave", "mallory"]).await?;
    let token = |name: &str| -> String {
        let at = ["alice", "bob", "carol", "dave", "mallory"]
            .iter()
            .position(|n| *n == name)
            .expect("a member");
        tokens[at].clone()
    };
    // Members on the nodes that survive, reading live the whole time.
    let (synced_dave, dave) = live_reader(&cluster.node(0)?, &token("dave"), room).await?;
    let (synced_mallory, mallory) = live_reader(&cluster.node(1)?, &token("mallory"), room).await?;

    // Senders: alice on node 1, bob on node 2, and two connections of
    // carol on node 3, the one that dies. Alice and bob keep 4 sends in
    // flight, carol 8 (more to lose when her node dies).
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for (node, name, prefix) in [
        (0, "alice", "a"),
        (1, "bob", "b"),
        (2, "carol", "c1"),
        (2, "carol", "c2"),
    ] {
        let app = cluster.node(node)?;
        let token = token(name);
        let stop = stop.clone();
        let progress = Arc::new(AtomicUsize::new(0));
        let counted = progress.clone();
        let task = tokio::spawn(async move {
            let mut ws = app.connect_ws(&token).await?;
            let window = if node == 2 { 8 } else { 4 };
            let streamed =
                stream(&mut ws, room, name, prefix, 3000, window, &stop, &counted).await?;
            anyhow::Ok(streamed)
        });
        senders.push((node, name, prefix, progress, task));
    }
    until("every sender got 20 acks", || {
        senders
            .iter()
            .all(|(_, _, _, p, _)| p.load(Ordering::Relaxed) >= 20)
    })
    .await?;
    // A third connection of carol's sends 8 and reads no reply: once the
    // node has committed them, their acks die with it. Her resends must
    // then be duplicates carrying the dead node's seqs.
    let mut lost_acks = cluster.node(2)?.connect_ws(&token("carol")).await?;
    let lost: Vec<String> = (0..8).map(|n| format!("c3-{n}")).collect();
    for client_id in &lost {
        lost_acks
            .send_json(&json!({
                "v": 1, "type": "send", "room": room,
                "client_id": client_id, "body": b64(&body_of(client_id)),
            }))
            .await?;
    }
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&cluster.db.url)
        .await?;
    let started = Instant::now();
    loop {
        let stored: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM entries WHERE room_id = $1 AND client_id LIKE 'c3-%'",
        )
        .bind(room)
        .fetch_one(&db)
        .await?;
        if stored == lost.len() as i64 {
            break;
        }
        ensure!(
            started.elapsed() < PHASE,
            "node 3 stored {stored} of carol's unread sends"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.close().await;
    let at_kill: Vec<usize> = senders
        .iter()
        .map(|(_, _, _, p, _)| p.load(Ordering::Relaxed))
        .collect();
    cluster.kill_node(2);
    drop(lost_acks);

    let mut acked: Vec<Acked> = Vec::new();
    let mut survivors = Vec::new();
    let mut carol_pending: Vec<String> = Vec::new();
    let mut carol_acked: Vec<Acked> = Vec::new();
    for ((node, name, prefix, progress, task), at_kill) in senders.into_iter().zip(at_kill) {
        if node != 2 {
            survivors.push((name, progress, at_kill, task));
            continue;
        }
        let streamed = tokio::time::timeout(PHASE, task)
            .await
            .context("carol's stream did not notice its node died")???;
        ensure!(
            streamed.broke.is_some(),
            "{prefix} was cut mid-stream: {streamed:?}"
        );
        carol_acked.extend(streamed.acked);
        carol_pending.extend(streamed.pending);
    }
    carol_pending.extend(lost.iter().cloned());

    // Carol's outbox: every unacknowledged message again, same client id,
    // to a node that lives, while alice and bob keep sending. Stored at
    // most once: a `duplicate` if the dead node had committed it.
    let survivor = cluster.node(0)?;
    let carol = token("carol");
    let mut ws = survivor.connect_ws(&carol).await?;
    let refusals = AtomicUsize::new(0);
    let mut resent = Vec::new();
    for client_id in &carol_pending {
        let ack = send_until_acked(&survivor, &carol, &mut ws, room, client_id, &refusals).await?;
        resent.push((client_id.clone(), ack));
    }
    // And the last acked ones, as a client that lost its acks would: the
    // original seq, nothing new.
    for a in carol_acked.iter().rev().take(3) {
        let ack = ws
            .send_message(room, &a.client_id, &body_of(&a.client_id))
            .await?;
        ensure!(
            ack["type"] == "ack" && ack["duplicate"] == true && ack["seq"] == a.seq,
            "a resend of acked {a:?} to another node: {ack}"
        );
    }
    ensure!(
        refusals.load(Ordering::Relaxed) == 0,
        "a live node refused a resend"
    );

    // The others go on a while after the death, so the members on live
    // nodes have entries of every kind to get in order: the dead node's
    // last ones (announced or caught up), the resends, the others' new ones.
    until("alice and bob got 30 more acks after the kill", || {
        survivors
            .iter()
            .all(|(_, p, at_kill, _)| p.load(Ordering::Relaxed) >= at_kill + 30)
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    for (name, _, _, task) in survivors {
        let streamed = tokio::time::timeout(PHASE, task)
            .await
            .with_context(|| format!("{name}'s stream did not finish"))???;
        ensure!(
            streamed.broke.is_none(),
            "{name} is on a live node: {streamed:?}"
        );
        acked.extend(streamed.acked);
    }
    let end = cluster
        .node(0)?
        .connect_ws(&token("alice"))
        .await?
        .send_ok(room, "end", b"end")
        .await?;

    // The owner's view: a member's sync starts at their join.
    let log = full_log(&cluster.node(1)?, &token("alice"), room).await?;
    acked.extend(carol_acked.iter().cloned());
    check_log(&log, end, &acked)?;
    let stored = messages(&log);
    let mut duplicates = 0;
    for (client_id, ack) in &resent {
        let at = stored
            .get(&("carol".to_owned(), client_id.clone()))
            .with_context(|| format!("carol's resent {client_id} is not in the log"))?;
        ensure!(
            ack["seq"] == at[0],
            "carol's resent {client_id} was acked {ack} but is stored at {at:?}"
        );
        duplicates += usize::from(ack["duplicate"] == true);
        ensure!(
            !lost.contains(client_id) || ack["duplicate"] == true,
            "{client_id} was committed by the dead node: its resend is a duplicate: {ack}"
        );
    }
    // Nothing of carol's is stored that she did not send.
    for (sender, client_id) in stored.keys() {
        if sender == "carol" {
            ensure!(
                carol_acked.iter().any(|a| &a.client_id == client_id)
                    || carol_pending.contains(client_id),
                "carol never sent {client_id}"
            );
        }
    }
    for (name, synced, reader) in [
        ("dave", synced_dave, dave),
        ("mallory", synced_mallory, mallory),
    ] {
        let seen = tokio::time::timeout(PHASE, reader)
            .await
            .with_context(|| format!("{name} did not get the end marker"))???;
        ensure!(
            contiguous(&seen, synced + 1, end),
            "{name} (a live node) saw a gap, a duplicate or disorder after {synced}: {seen:?}"
        );
    }
    eprintln!(
        "killed mid-stream: {} acked, carol resent {} ({} were duplicates), log ends at {end}",
        acked.len(),
        resent.len(),
        duplicates
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_restart_of_postgresql_loses_nothing() -> Result<()> {
    // PostgreSQL of its own: the shared one serves the tests running
    // alongside. Declared first, so it goes after the cluster.
    let pg = PgServer::start().await?;
    let cluster = Cluster::start_on(&pg.url, 2, FLAGS).await?;
    let (room, tokens) = group(&cluster, "alice", &["bob", "carol"]).await?;
    let (alice, bob, carol) = (tokens[0].clone(), tokens[1].clone(), tokens[2].clone());
    // Carol, on node 2, reads live throughout.
    let (synced, reader) = live_reader(&cluster.node(1)?, &carol, room).await?;

    // Alice on node 1 and bob on node 2 send one message after another
    // through the restart, resending what was refused.
    const EACH: usize = 150;
    let refusals = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for (node, name, token) in [(0, "alice", alice.clone()), (1, "bob", bob.clone())] {
        let app = cluster.node(node)?;
        let progress = Arc::new(AtomicUsize::new(0));
        let (counted, refusals) = (progress.clone(), refusals.clone());
        let task = tokio::spawn(async move {
            let mut ws = app.connect_ws(&token).await?;
            let mut acked = Vec::new();
            for n in 0..EACH {
                let client_id = format!("{name}-{n}");
                let ack =
                    send_until_acked(&app, &token, &mut ws, room, &client_id, &refusals).await?;
                acked.push(Acked {
                    sender: name.to_owned(),
                    client_id,
                    seq: ack["seq"].as_i64().context("ack seq")?,
                });
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            anyhow::Ok(acked)
        });
        senders.push((progress, task));
    }
    until("both senders got 20 acks", || {
        senders.iter().all(|(p, _)| p.load(Ordering::Relaxed) >= 20)
    })
    .await?;
    let before: Vec<usize> = senders
        .iter()
        .map(|(p, _)| p.load(Ordering::Relaxed))
        .collect();
    pg.restart().await?;
    let mut acked = Vec::new();
    for (_, task) in senders {
        acked.extend(
            tokio::time::timeout(Duration::from_secs(90), task)
                .await
                .context("a sender did not finish after the restart")???,
        );
    }
    ensure!(
        before.iter().all(|n| *n < EACH),
        "the restart came mid-stream: {before:?} of {EACH} acked before it"
    );
    ensure!(
        refusals.load(Ordering::Relaxed) > 0,
        "no send met the restart: the test did not test it"
    );

    // Every node's listener is back.
    for i in 0..cluster.nodes.len() {
        let app = cluster.node(i)?;
        let started = Instant::now();
        loop {
            let (status, body) = app.get("/healthz", None).await?;
            if status.is_success() && body["listener"] == "ok" && body["store"] == "ok" {
                break;
            }
            ensure!(
                started.elapsed() < PHASE,
                "node {} is not healthy {PHASE:?} after the restart: {status} {body}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Cross-node live delivery again: sent on node 1, to a member on node 2
    // who connected after the restart, and to carol, connected before it.
    let mut bob_ws = cluster.node(1)?.connect_ws(&bob).await?;
    let bob_synced = sync_for_live(&mut bob_ws, room).await?;
    let mut alice_ws = cluster.node(0)?.connect_ws(&alice).await?;
    let end = send_until_acked(
        &cluster.node(0)?,
        &alice,
        &mut alice_ws,
        room,
        "end",
        &refusals,
    )
    .await?["seq"]
        .as_i64()
        .context("seq")?;
    let live = crate::nodes_delivery::entries_until(&mut bob_ws, room, end).await?;
    ensure!(
        contiguous(&live, bob_synced + 1, end),
        "bob (node 2) got the message sent on node 1 live: {live:?}"
    );
    let seen = tokio::time::timeout(PHASE, reader)
        .await
        .context("carol did not get the end marker")???;
    ensure!(
        contiguous(&seen, synced + 1, end),
        "carol (node 2, connected through the restart) saw a gap, a duplicate or disorder: {seen:?}"
    );

    let log = full_log(&cluster.node(1)?, &alice, room).await?;
    check_log(&log, end, &acked)?;
    ensure!(
        messages(&log).len() == 2 * EACH + 1,
        "every message once: {}",
        messages(&log).len()
    );
    eprintln!(
        "PostgreSQL restart: {} refusals or broken connections resent, log ends at {end}",
        refusals.load(Ordering::Relaxed)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_serve_nodes_writing_one_room_at_full_speed_keep_seqs_contiguous() -> Result<()>
{
    let cluster = Cluster::start(2, FLAGS).await?;
    let (room, tokens) = group(&cluster, "alice", &["bob", "carol", "dave", "mallory"]).await?;
    // Mallory reads on both nodes.
    let mut readers = Vec::new();
    for node in 0..2 {
        let mut ws = cluster.node(node)?.connect_ws(&tokens[4]).await?;
        let synced = sync_for_live(&mut ws, room).await?;
        readers.push((synced, ws));
    }
    let start = readers[0].0;
    ensure!(readers[1].0 == start, "both readers synced to one point");
    const EACH: usize = 150;
    const SENDERS: usize = 4;
    let last = start + (SENDERS * EACH) as i64;
    let mut reading = Vec::new();
    for (node, (_, mut ws)) in readers.into_iter().enumerate() {
        reading.push(tokio::spawn(async move {
            let seen = crate::nodes_delivery::entries_until(&mut ws, room, last).await?;
            anyhow::Ok((node, seen))
        }));
    }
    // Alice and carol on node 1, bob and dave on node 2, 8 sends in flight
    // each.
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for (i, name) in ["alice", "bob", "carol", "dave"].into_iter().enumerate() {
        let app = cluster.node(i % 2)?;
        let token = tokens[i].clone();
        let stop = stop.clone();
        senders.push(tokio::spawn(async move {
            let mut ws = app.connect_ws(&token).await?;
            let progress = AtomicUsize::new(0);
            let streamed = stream(&mut ws, room, name, name, EACH, 8, &stop, &progress).await?;
            ensure!(
                streamed.broke.is_none() && streamed.acked.len() == EACH,
                "{name}: every send acked: {streamed:?}"
            );
            anyhow::Ok(streamed.acked)
        }));
    }
    let mut acked = Vec::new();
    for sender in senders {
        acked.extend(
            tokio::time::timeout(Duration::from_secs(120), sender)
                .await
                .context("a sender did not finish")???,
        );
    }
    let mut seqs: Vec<i64> = acked.iter().map(|a| a.seq).collect();
    seqs.sort();
    ensure!(
        contiguous(&seqs, start + 1, last),
        "the acks are the seqs {}..={last}, each once",
        start + 1
    );
    let log = full_log(&cluster.node(0)?, &tokens[0], room).await?;
    check_log(&log, last, &acked)?;
    ensure!(
        messages(&log).len() == SENDERS * EACH,
        "every client id stored once"
    );
    for reader in reading {
        let (node, seen) = tokio::time::timeout(PHASE, reader)
            .await
            .context("a reader did not get the last entry")???;
        ensure!(
            contiguous(&seen, start + 1, last),
            "the reader on node {} saw a gap, a duplicate or disorder: {seen:?}",
            node + 1
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_resend_to_another_node_is_stored_once_with_the_original_seq() -> Result<()> {
    let cluster = Cluster::start(2, FLAGS).await?;
    let one = cluster.node(0)?;
    let alice = one.user("alice").await?;
    let room = one.create_room(&alice, "resends").await?;
    let mut on_one = one.connect_ws(&alice).await?;
    let mut on_two = cluster.node(1)?.connect_ws(&alice).await?;

    // Stored on node 1, resent to node 2, then to node 1 again.
    let first = on_one.send_message(room, "x", b"the message").await?;
    ensure!(
        first["type"] == "ack" && first["duplicate"] == false,
        "{first}"
    );
    for (node, ws) in [(2, &mut on_two), (1, &mut on_one)] {
        let again = ws.send_message(room, "x", b"the message").await?;
        ensure!(
            again["type"] == "ack"
                && again["duplicate"] == true
                && again["seq"] == first["seq"]
                && again["ts"] == first["ts"],
            "the resend to node {node} is the original: {first} vs {again}"
        );
    }

    // The same new client id on both nodes at the same moment: one stores
    // it, the other answers with its seq.
    const ROUNDS: usize = 20;
    let mut acked = vec![Acked {
        sender: "alice".into(),
        client_id: "x".into(),
        seq: first["seq"].as_i64().context("seq")?,
    }];
    for round in 0..ROUNDS {
        let client_id = format!("race-{round}");
        let body = body_of(&client_id);
        let (a, b) = tokio::join!(
            on_one.send_message(room, &client_id, &body),
            on_two.send_message(room, &client_id, &body)
        );
        let (a, b) = (a?, b?);
        ensure!(
            a["type"] == "ack" && b["type"] == "ack",
            "round {round}: {a} / {b}"
        );
        ensure!(
            a["seq"] == b["seq"] && a["ts"] == b["ts"],
            "round {round}: one entry: {a} / {b}"
        );
        let new = [&a, &b].iter().filter(|r| r["duplicate"] == false).count();
        ensure!(new == 1, "round {round}: exactly one stored it: {a} / {b}");
        acked.push(Acked {
            sender: "alice".into(),
            client_id,
            seq: a["seq"].as_i64().context("seq")?,
        });
    }
    let last = acked.last().context("acked")?.seq;
    let log = full_log(&cluster.node(1)?, &alice, room).await?;
    check_log(&log, last, &acked)?;
    ensure!(
        messages(&log).len() == ROUNDS + 1,
        "no extra entry: {log:?}"
    );
    Ok(())
}
