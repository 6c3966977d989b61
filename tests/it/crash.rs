//! Crash safety with the real binary: `hush serve` is killed with SIGKILL
//! while three clients send, then restarted on the same database. Every
//! acknowledged message is there exactly once, at the seq its ack gave, in
//! each sender's order; the clients resync from their cursors with no gap
//! and no duplicate; resending the unacknowledged ones with the same
//! client ids stores each exactly once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use sqlx::Connection;

use crate::hostile::assert_sound_at;
use crate::support::*;

const HUSH: &str = env!("CARGO_BIN_EXE_hush");

/// `hush serve` as a child process on a loopback port, limits raised so
/// that the test's own bursts are not rate limited.
pub struct HushProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub db: PathBuf,
}

impl HushProcess {
    pub async fn start(dir: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_with(dir, extra, |_| {}).await
    }

    /// Like `start`, with a hook to adjust the command before it runs.
    pub async fn start_with(
        dir: &Path,
        extra: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Result<Self> {
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await?
            .local_addr()?
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let db = dir.join("hush.db");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))?;
        let mut command = Command::new(HUSH);
        command
            .args(["serve", "--addr", &addr.to_string(), "--log-level", "warn"])
            .args([
                "--message-rate",
                "100000/s",
                "--user-message-rate",
                "100000/s",
            ])
            .arg("--db")
            .arg(server_db(&db)?)
            .args(extra)
            .env_remove("HUSH_LOG")
            // An env var rather than a flag, so a test can still pass its own.
            .env("HUSH_FRAME_RATE", "100000/s")
            .stdout(Stdio::null())
            .stderr(log);
        adjust(&mut command);
        let child = command.spawn().context("starting hush serve")?;
        let server = Self { child, addr, db };
        server.wait_healthy().await?;
        Ok(server)
    }

    async fn wait_healthy(&self) -> Result<()> {
        let client = hush::client::tls::http_client();
        for _ in 0..600 {
            if let Ok(r) = client
                .get(format!("http://{}/healthz", self.addr))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("hush serve did not become healthy")
    }

    pub fn app(&self) -> Result<TestApp> {
        external_app(self.addr, &server_db(&self.db)?)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL: no shutdown, no flush, nothing.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn terminate(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        ensure!(rc == 0, "kill: {}", std::io::Error::last_os_error());
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "hush serve exited with {status}");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("hush serve did not stop on SIGTERM")
    }
}

impl Drop for HushProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one client saw before the crash.
#[derive(Default)]
struct Seen {
    sent: Vec<String>,
    acked: BTreeMap<String, i64>,
    /// The `synced` seq of the room at the start, then every live entry.
    synced: i64,
    live: Vec<i64>,
}

const WINDOW: usize = 8;
const MAX_BATCHES: usize = 500;

/// Sends windows of messages and reads their acks (and everyone's live
/// entries) until the connection dies.
async fn send_until_killed(
    mut ws: WsClient,
    room: i64,
    name: String,
    acks: Arc<AtomicUsize>,
) -> Seen {
    let mut seen = Seen::default();
    match ws.sync(room, 0).await {
        Ok((entries, synced)) => {
            seen.synced = synced;
            seen.live
                .extend(entries.iter().filter_map(|e| e["seq"].as_i64()));
        }
        Err(_) => return seen,
    }
    'batches: for batch in 0..MAX_BATCHES {
        for j in 0..WINDOW {
            let client_id = format!("{name}-{:05}", batch * WINDOW + j);
            let frame = json!({ "v": 1, "id": client_id, "type": "send", "room": room,
                                "client_id": client_id, "body": b64(client_id.as_bytes()) });
            if ws.send_json(&frame).await.is_err() {
                break 'batches;
            }
            seen.sent.push(client_id);
        }
        let mut waiting = WINDOW;
        while waiting > 0 {
            let Ok(frame) = ws.next_frame().await else {
                break 'batches;
            };
            match frame["type"].as_str() {
                Some("ack") => {
                    let client_id = frame["client_id"].as_str().unwrap_or_default().to_owned();
                    seen.acked
                        .insert(client_id, frame["seq"].as_i64().unwrap_or(-1));
                    acks.fetch_add(1, Ordering::Relaxed);
                    waiting -= 1;
                }
                Some("entry") => {
                    // Entries that raced the first sync repeat its pages.
                    let seq = frame["entry"]["seq"].as_i64().unwrap_or(-1);
                    if seq > seen.live.last().copied().unwrap_or(seen.synced) {
                        seen.live.push(seq);
                    }
                }
                Some("error") => waiting -= 1, // no ack: resent after the restart
                _ => {}
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_messages_survive_sigkill_exactly_once_and_clients_resync_without_gaps()
-> Result<()> {
    stop_mid_stream(HushProcess::kill).await
}

/// The same under a graceful stop (SIGTERM) with clients sending: the
/// server exits cleanly, and nothing acked is lost or doubled.
#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_stop_under_load_keeps_every_acked_message_exactly_once() -> Result<()> {
    stop_mid_stream(HushProcess::terminate).await
}

async fn stop_mid_stream(stop: fn(HushProcess) -> Result<()>) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = HushProcess::start(dir.path(), &[]).await?;
    let app = server.app()?;
    let names = ["alice", "bob", "carol"];
    let tokens = app.users(&names).await?;
    let room = app
        .group(&tokens[0], &[("bob", &tokens[1]), ("carol", &tokens[2])])
        .await?;

    let acks = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for (name, token) in names.iter().zip(&tokens) {
        let ws = app.connect_ws(token).await?;
        clients.push(tokio::spawn(send_until_killed(
            ws,
            room,
            name.to_string(),
            Arc::clone(&acks),
        )));
    }
    // Kill mid-stream, once a fair number of messages are acknowledged.
    for _ in 0..6000 {
        if acks.load(Ordering::Relaxed) >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ensure!(
        acks.load(Ordering::Relaxed) >= 300,
        "the clients never got going"
    );
    stop(server)?;
    let mut seen = Vec::new();
    for client in clients {
        seen.push(tokio::time::timeout(Duration::from_secs(60), client).await??);
    }
    let acked_before: usize = seen.iter().map(|s| s.acked.len()).sum();
    let unacked_before: usize = seen.iter().map(|s| s.sent.len() - s.acked.len()).sum();
    println!("stopped with {acked_before} acked and {unacked_before} sent but not acked");

    // The database on its own: intact, gap-free, every ack at its seq.
    assert_sound_at(&dir.path().join("hush.db")).await?;
    let stored = stored_messages(&dir.path().join("hush.db"), room).await?;
    for s in &seen {
        for (client_id, seq) in &s.acked {
            assert_eq!(
                stored.get(client_id).map(|(seq, _)| *seq),
                Some(*seq),
                "acked {client_id} is not at seq {seq}"
            );
        }
    }

    // Restart on the same database; the old tokens still work.
    let server = HushProcess::start(dir.path(), &[]).await?;
    let app = server.app()?;
    for ((name, token), s) in names.iter().zip(&tokens).zip(&seen) {
        let mut ws = app.connect_ws(token).await?;
        // What the client saw live was gap-free from its first sync.
        let live = &s.live;
        for pair in live.windows(2) {
            ensure!(
                pair[1] == pair[0] + 1,
                "{name}'s live stream jumps at {pair:?}"
            );
        }
        let cursor = live.last().copied().unwrap_or(s.synced);
        // Resync from the cursor: exactly what follows it, once each.
        let (entries, synced) = ws.sync(room, cursor).await?;
        let seqs: Vec<i64> = entries.iter().filter_map(|e| e["seq"].as_i64()).collect();
        assert_eq!(
            seqs,
            (cursor + 1..=synced).collect::<Vec<_>>(),
            "{name} resynced from {cursor}"
        );
        // Resend everything unacknowledged, with the same client ids.
        let mut duplicates = 0;
        for client_id in s.sent.iter().filter(|c| !s.acked.contains_key(*c)) {
            let ack = ws
                .send_message(room, client_id, client_id.as_bytes())
                .await?;
            ensure!(ack["type"] == "ack", "resend of {client_id}: {ack}");
            if ack["duplicate"] == true {
                duplicates += 1;
            }
        }
        println!(
            "{name}: {} acked before the kill, resent {} ({duplicates} had been stored)",
            s.acked.len(),
            s.sent.len() - s.acked.len()
        );
        // Acked ones resent again are recognised as duplicates at the same seq.
        if let Some((client_id, seq)) = s.acked.iter().next() {
            let ack = ws
                .send_message(room, client_id, client_id.as_bytes())
                .await?;
            assert_eq!(ack["duplicate"], true, "{ack}");
            assert_eq!(ack["seq"], *seq);
        }
    }

    // Every message ever sent is stored exactly once, each sender's in order.
    assert_sound_at(&server.db).await?;
    let stored = stored_messages(&server.db, room).await?;
    let sent: usize = seen.iter().map(|s| s.sent.len()).sum();
    assert_eq!(stored.len(), sent, "each client id once");
    for name in names {
        let mut mine: Vec<(i64, &String)> = stored
            .iter()
            .filter(|(id, _)| id.starts_with(&format!("{name}-")))
            .map(|(id, (seq, _))| (*seq, id))
            .collect();
        mine.sort();
        let ids: Vec<&String> = mine.iter().map(|(_, id)| *id).collect();
        let mut in_order = ids.clone();
        in_order.sort();
        // The resent tail may follow other senders' entries, but a sender's
        // own messages keep their order.
        assert_eq!(ids, in_order, "{name}'s messages out of order");
    }
    server.kill()
}

/// client_id -> (seq, sender) of every message in `room`, read from the
/// file; fails if a client id appears twice.
async fn stored_messages(db: &Path, room: i64) -> Result<BTreeMap<String, (i64, i64)>> {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await?;
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT client_id, seq, sender_id FROM entries WHERE room_id = ? AND kind = 'message' ORDER BY seq",
    )
    .bind(room)
    .fetch_all(&mut conn)
    .await?;
    conn.close().await?;
    let mut out = BTreeMap::new();
    for (client_id, seq, sender) in rows {
        if out.insert(client_id.clone(), (seq, sender)).is_some() {
            bail!("{client_id} is stored twice");
        }
    }
    Ok(out)
}
