//! Cross-node delivery (issue 16): members of one conversation connected to
//! different `hush serve` nodes sharing one PostgreSQL database. Real
//! processes (`nodes::Cluster`), real PostgreSQL, real LISTEN/NOTIFY.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::nodes::Cluster;
use crate::support::{TestApp, WsClient};

/// A short catch-up, so a lost notification costs the tests little time.
const FLAGS: &[&str] = &[
    "--catchup-interval",
    "300ms",
    "--metrics-token",
    METRICS_TOKEN,
];
const METRICS_TOKEN: &str = "nodes-delivery-metrics-token";

/// Reads live entries of `room` until one with `seq` arrives; returns
/// every seq seen, in arrival order.
pub(crate) async fn entries_until(ws: &mut WsClient, room: i64, seq: i64) -> Result<Vec<i64>> {
    let mut seen = Vec::new();
    while seen.last() != Some(&seq) {
        let entry = ws
            .next_entry(room)
            .await
            .with_context(|| format!("waiting for seq {seq}; saw {seen:?}"))?;
        seen.push(entry["seq"].as_i64().context("seq")?);
        ensure!(seen.len() < 100_000, "runaway");
    }
    Ok(seen)
}

pub(crate) fn contiguous(seqs: &[i64], from: i64, to: i64) -> bool {
    seqs == (from..=to).collect::<Vec<_>>()
}

async fn metric(app: &TestApp, name: &str) -> Result<f64> {
    let text = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await?
        .text()
        .await?;
    // `name value` or `name{labels} value`.
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            rest.split_whitespace().last()?.parse().ok()
        })
        .with_context(|| format!("{name} in /metrics:\n{text}"))
}

/// A group made by `owner` on node 0 with the other users as members.
pub(crate) async fn group(
    cluster: &Cluster,
    owner: &str,
    others: &[&str],
) -> Result<(i64, Vec<String>)> {
    let first = cluster.node(0)?;
    let owner_token = first.user(owner).await?;
    let room = first.create_room(&owner_token, "across nodes").await?;
    let mut tokens = vec![owner_token.clone()];
    for (i, name) in others.iter().enumerate() {
        // Each registers through a different node: the store is shared.
        let node = cluster.node((i + 1) % cluster.nodes.len())?;
        let token = node.user(name).await?;
        node.add_member(&owner_token, room, name, &token).await?;
        tokens.push(token);
    }
    Ok((room, tokens))
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_members_on_three_nodes_get_every_message_once_in_order() -> Result<()> {
    let cluster = Cluster::start(3, FLAGS).await?;
    let (room, tokens) = group(&cluster, "alice", &["bob", "carol"]).await?;
    let mut clients = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let mut ws = cluster.node(i)?.connect_ws(token).await?;
        let (_, synced) = ws.sync(room, 0).await?;
        clients.push((ws, synced));
    }
    let start = clients.iter().map(|(_, s)| *s).max().context("clients")?;
    // Everyone sends, interleaved, each to their own node.
    let mut last = start;
    for round in 0..20 {
        for (i, (ws, _)) in clients.iter_mut().enumerate() {
            last = ws
                .send_ok(
                    room,
                    &format!("m-{round}-{i}"),
                    format!("round {round} from {i}").as_bytes(),
                )
                .await?;
        }
    }
    ensure!(
        last == start + 60,
        "60 messages, contiguous seqs: {start}..{last}"
    );
    for (i, (ws, synced)) in clients.iter_mut().enumerate() {
        let seen = entries_until(ws, room, last).await?;
        // A member synced before the last member joined sees that join live.
        let from = seen.first().copied().unwrap_or(last);
        ensure!(
            from <= *synced + 1,
            "client {i} missed entries after its sync at {synced}: {seen:?}"
        );
        ensure!(
            contiguous(&seen, from, last),
            "client {i} (node {i}) saw gaps, duplicates or disorder: {seen:?}"
        );
    }
    let lag = metric(&cluster.node(1)?, "hush_node_delivery_lag_seconds_count").await?;
    ensure!(
        lag >= 40.0,
        "node 1 delivered the other nodes' 40 messages: {lag}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_an_invitation_and_a_join_reach_members_on_other_nodes() -> Result<()> {
    let cluster = Cluster::start(2, FLAGS).await?;
    let (one, two) = (cluster.node(0)?, cluster.node(1)?);
    let alice = one.user("alice").await?;
    let bob = two.user("bob").await?;
    let room = one.create_room(&alice, "invites").await?;
    let mut alice_ws = one.connect_ws(&alice).await?;
    alice_ws.sync(room, 0).await?;
    // Bob, on node 2, is no member yet: node 2 does not follow the room.
    let mut bob_ws = two.connect_ws(&bob).await?;
    one.invite(&alice, room, "bob").await?;
    let invited = bob_ws.expect_type("invited").await?;
    ensure!(invited["room"] == room, "{invited}");
    // He joins through node 1; his own connection on node 2 gets the join
    // and then alice's messages, sent on node 1.
    one.join(&bob, room).await?;
    let join = bob_ws.next_entry(room).await?;
    ensure!(join["kind"] == "join", "{join}");
    let seq = alice_ws.send_ok(room, "hello-bob", b"hello").await?;
    let entry = bob_ws.next_entry(room).await?;
    ensure!(entry["seq"] == seq, "{entry}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_reconnect_to_another_node_syncs_with_no_gap_and_no_duplicate() -> Result<()> {
    let cluster = Cluster::start(3, FLAGS).await?;
    let (room, tokens) = group(&cluster, "alice", &["bob"]).await?;
    let (alice, bob) = (tokens[0].clone(), tokens[1].clone());
    const TOTAL: usize = 300;
    // Alice keeps sending on node 1 the whole time.
    let sender_node = cluster.node(0)?;
    let sender = tokio::spawn(async move {
        let mut ws = sender_node.connect_ws(&alice).await?;
        let mut last = 0;
        for i in 0..TOTAL {
            // Within the per-connection message rate: resend when told to.
            loop {
                let ack = ws.send_message(room, &format!("c{i}"), b"steady").await?;
                if ack["type"] == "ack" {
                    last = ack["seq"].as_i64().context("ack seq")?;
                    break;
                }
                ensure!(ack["code"] == "rate_limited", "expected ack, got {ack}");
                let wait = ack["retry_after_ms"].as_u64().unwrap_or(50);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        anyhow::Ok(last)
    });
    // Bob reads on node 2, goes away mid-stream, comes back on node 3.
    let mut have: Vec<i64> = Vec::new();
    let mut ws = cluster.node(1)?.connect_ws(&bob).await?;
    let (page, mut cursor) = ws.sync(room, 0).await?;
    have.extend(page.iter().map(|e| e["seq"].as_i64().unwrap_or(-1)));
    for _ in 0..40 {
        let entry = ws.next_entry(room).await?;
        let seq = entry["seq"].as_i64().context("seq")?;
        have.push(seq);
        cursor = seq;
    }
    ws.close().await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ws = cluster.node(2)?.connect_ws(&bob).await?;
    let (page, synced) = ws.sync(room, cursor).await?;
    have.extend(page.iter().map(|e| e["seq"].as_i64().unwrap_or(-1)));
    let last = sender.await??;
    if synced < last {
        have.extend(entries_until(&mut ws, room, last).await?);
    }
    let first = have[0];
    ensure!(
        contiguous(&have, first, last),
        "bob's entries across the move have a gap, a duplicate or disorder: {have:?}"
    );
    ensure!(have.len() >= TOTAL, "all {TOTAL} messages: {}", have.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_listeners_terminated_by_postgres_lose_nothing() -> Result<()> {
    let cluster = Cluster::start(2, FLAGS).await?;
    let (room, tokens) = group(&cluster, "alice", &["bob"]).await?;
    let mut alice = cluster.node(0)?.connect_ws(&tokens[0]).await?;
    let mut bob = cluster.node(1)?.connect_ws(&tokens[1]).await?;
    let (_, start) = bob.sync(room, 0).await?;
    alice.sync(room, 0).await?;
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&cluster.db.url)
        .await?;
    let mut last = start;
    for round in 0..6 {
        for i in 0..10 {
            last = alice
                .send_ok(
                    room,
                    &format!("t{round}-{i}"),
                    b"through a dropped listener",
                )
                .await?;
        }
        // Every node's listener, cut from the server side.
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE query LIKE 'LISTEN%' AND datname = current_database()",
        )
        .fetch_all(&admin)
        .await?;
        if round == 0 {
            ensure!(killed.len() >= 2, "both nodes listen: {killed:?}");
        }
    }
    let seen = entries_until(&mut bob, room, last).await?;
    ensure!(
        contiguous(&seen, start + 1, last),
        "bob (node 2) saw a gap, a duplicate or disorder: {seen:?}"
    );
    let node = cluster.node(1)?;
    let mut reconnects = 0.0;
    for _ in 0..50 {
        reconnects = metric(&node, "hush_node_listener_reconnects_total").await?;
        if reconnects >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        reconnects >= 1.0,
        "node 2's listener reconnected: {reconnects}"
    );
    ensure!(
        metric(&node, "hush_node_listener_up").await? == 1.0,
        "and is up"
    );
    // Still live after all that: a message now arrives without any sync.
    let seq = alice.send_ok(room, "after", b"after").await?;
    ensure!(bob.next_entry(room).await?["seq"] == seq);
    Ok(())
}

fn names(frame: &Value, field: &str) -> BTreeSet<String> {
    frame[field]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads `presence` frames of `room` until `user`'s state is `online`.
async fn until_presence(ws: &mut WsClient, room: i64, user: &str, online: bool) -> Result<()> {
    let mut is_online = false;
    for _ in 0..100 {
        let frame = ws
            .expect(&format!("presence of {user}"), |f| {
                f["type"] == "presence" && f["room"] == room
            })
            .await?;
        if frame["snapshot"] == json!(true) {
            is_online = names(&frame, "online").contains(user);
        } else if names(&frame, "online").contains(user) {
            is_online = true;
        } else if names(&frame, "offline").contains(user) {
            is_online = false;
        }
        if is_online == online {
            return Ok(());
        }
    }
    anyhow::bail!(
        "{user} never became {}",
        if online { "online" } else { "offline" }
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_presence_is_online_anywhere_and_offline_everywhere() -> Result<()> {
    let cluster = Cluster::start(3, FLAGS).await?;
    let (room, tokens) = group(&cluster, "alice", &["bob"]).await?;
    let mut alice = cluster.node(0)?.connect_ws(&tokens[0]).await?;
    // Bob comes online on node 2: alice, on node 1, is told.
    let bob_on_two = cluster.node(1)?.connect_ws(&tokens[1]).await?;
    until_presence(&mut alice, room, "bob", true).await?;
    // A second connection on node 3, then the first one closes: still
    // online (connected somewhere).
    let bob_on_three = cluster.node(2)?.connect_ws(&tokens[1]).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob_on_two.close().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frames = alice.drain().await?;
    for frame in frames.iter().filter(|f| f["type"] == "presence") {
        ensure!(
            !names(frame, "offline").contains("bob"),
            "bob is still connected to node 3: {frame}"
        );
    }
    let who = alice
        .request(json!({ "type": "who", "room": room }))
        .await?;
    ensure!(names(&who, "users").contains("bob"), "who: {who}");
    // His last connection closes: offline everywhere.
    bob_on_three.close().await?;
    until_presence(&mut alice, room, "bob", false).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_node_that_dies_does_not_leave_its_users_online() -> Result<()> {
    let mut cluster = Cluster::start(2, FLAGS).await?;
    let (room, tokens) = group(&cluster, "alice", &["bob"]).await?;
    let mut alice = cluster.node(0)?.connect_ws(&tokens[0]).await?;
    let _bob = cluster.node(1)?.connect_ws(&tokens[1]).await?;
    until_presence(&mut alice, room, "bob", true).await?;
    cluster.kill_node(1);
    // Node 2 cannot say goodbye; node 1 drops it after its silence.
    let started = std::time::Instant::now();
    // Longer than one frame wait of the test client: let most of it pass.
    tokio::time::sleep(Duration::from_secs(6)).await;
    until_presence(&mut alice, room, "bob", false).await?;
    ensure!(
        started.elapsed() < Duration::from_secs(20),
        "bob went offline {:?} after his node died",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_logout_on_one_node_closes_the_sessions_sockets_on_the_others() -> Result<()> {
    // A long sweep: only the logout notice can close the socket in time.
    let mut flags = FLAGS.to_vec();
    flags.extend(["--session-check-interval", "1h"]);
    let cluster = Cluster::start(2, &flags).await?;
    let (one, two) = (cluster.node(0)?, cluster.node(1)?);
    let token = one.user("alice").await?;
    let mut ws = two.connect_ws(&token).await?;
    let (status, body) = one.post("/api/v1/logout", Some(&token), None).await?;
    ensure!(status.is_success(), "logout: {status} {body}");
    let code = tokio::time::timeout(Duration::from_secs(5), ws.expect_close())
        .await
        .context("the socket on node 2 stayed open after logout on node 1")??;
    ensure!(code == Some(4001), "closed as unauthorized: {code:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_an_admin_revocation_closes_the_users_sockets_on_every_node_at_once() -> Result<()>
{
    // A long sweep: only the notice from `hush admin` can close them in time.
    let mut flags = FLAGS.to_vec();
    flags.extend(["--session-check-interval", "1h"]);
    let cluster = Cluster::start(2, &flags).await?;
    let (one, two) = (cluster.node(0)?, cluster.node(1)?);
    let alice = one.user("alice").await?;
    let bob = one.user("bob").await?;
    let mut alice_one = one.connect_ws(&alice).await?;
    let mut alice_two = two.connect_ws(&alice).await?;
    let mut bob_two = two.connect_ws(&bob).await?;
    let db = cluster.db.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::cli_support::HUSH)
            .args(["admin", "--db", &db, "sessions", "revoke", "alice"])
            .output()
    })
    .await??;
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "hush admin: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(said.contains("every running node was told"), "{said}");
    for (node, ws) in [(1, &mut alice_one), (2, &mut alice_two)] {
        let code = tokio::time::timeout(Duration::from_secs(5), ws.expect_close())
            .await
            .with_context(|| format!("alice's socket on node {node} stayed open"))??;
        ensure!(
            code == Some(4001),
            "node {node}: closed as unauthorized: {code:?}"
        );
    }
    bob_two.ping().await.context("bob's socket is left alone")?;
    Ok(())
}

fn signals(frames: &[Value]) -> Vec<&Value> {
    frames.iter().filter(|f| f["type"] == "signal").collect()
}

async fn send_signal(ws: &mut WsClient, room: i64, kind: &str, body: &[u8]) -> Result<()> {
    ws.send_json(&json!({
        "v": 1, "type": "signal", "room": room, "kind": kind, "body": crate::support::b64(body)
    }))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_receipts_and_typing_reach_members_on_other_nodes_and_no_one_else() -> Result<()> {
    let cluster = Cluster::start(2, FLAGS).await?;
    let (one, two) = (cluster.node(0)?, cluster.node(1)?);
    // alice on node 1; bob and dave (members) and carol (not one) on node 2.
    let (room, tokens) = group(&cluster, "alice", &["bob", "dave"]).await?;
    let carol = two.user("carol").await?;
    let mut alice = one.connect_ws(&tokens[0]).await?;
    let mut alice_phone = two.connect_ws(&tokens[0]).await?;
    let mut bob = two.connect_ws(&tokens[1]).await?;
    let mut carol_ws = two.connect_ws(&carol).await?;

    // The largest body a signal may have crosses nodes intact.
    let typing: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    send_signal(&mut alice, room, "typing", &typing).await?;
    for ws in [&mut bob, &mut alice_phone] {
        let got = ws.expect_type("signal").await?;
        ensure!(got["room"] == room && got["sender"] == "alice", "{got}");
        ensure!(got["kind"] == "typing", "{got}");
        let body = crate::support::unb64(got["body"].as_str().context("body")?)?;
        ensure!(body == typing, "the body changed on its way");
    }
    ensure!(
        signals(&alice.drain().await?).is_empty(),
        "not to the sender"
    );
    ensure!(
        signals(&carol_ws.drain().await?).is_empty(),
        "not to a non-member on the other node"
    );

    // A receipt is relayed live and kept on the other node too: dave, who
    // connects to node 2 only now, gets it after his sync.
    send_signal(&mut alice, room, "receipt", b"read up to 1").await?;
    let live = bob.expect_type("signal").await?;
    ensure!(
        live["kind"] == "receipt" && live["sender"] == "alice",
        "{live}"
    );
    let mut dave = two.connect_ws(&tokens[2]).await?;
    dave.sync(room, 0).await?;
    let kept = dave.expect_type("signal").await?;
    ensure!(
        kept["kind"] == "receipt" && kept["sender"] == "alice",
        "{kept}"
    );
    ensure!(
        crate::support::unb64(kept["body"].as_str().context("body")?)? == b"read up to 1",
        "{kept}"
    );

    // Bob blocks alice (through node 2): her signals, sent on node 1, no
    // longer reach him, while dave still gets them.
    let blocked = two
        .http
        .put(two.url("/api/v1/blocks/alice"))
        .bearer_auth(&tokens[1])
        .send()
        .await?
        .status();
    ensure!(blocked.is_success(), "block: {blocked}");
    send_signal(&mut alice, room, "typing", b"still typing").await?;
    let got = dave.expect_type("signal").await?;
    ensure!(got["sender"] == "alice", "{got}");
    ensure!(
        signals(&bob.drain().await?).is_empty(),
        "a blocked sender's signal reached bob"
    );
    Ok(())
}
