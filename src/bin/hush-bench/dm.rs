//! `dm`: N one-to-one rooms, every sender pipelining `send`s (at most W
//! unacknowledged) for D seconds while its peer is connected and
//! receiving. Each ack means the message was committed, so acked/s is the
//! durable ingest rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{StreamExt, TryStreamExt, stream};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Bench, Frame, Pumped, Ws, connect_authenticated, pump};

#[derive(Debug, Clone, clap::Args)]
pub struct DmArgs {
    /// One-to-one rooms, each with one sender and one receiver.
    #[arg(long, default_value_t = 500)]
    pub pairs: usize,
    /// Unacknowledged sends allowed per sender.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

impl DmArgs {
    pub fn quick() -> Self {
        Self {
            pairs: 4,
            window: 8,
            payload: 64,
            duration: 1.5,
        }
    }
}

pub struct DmResult {
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub duplicates: u64,
    pub delivered: u64,
    pub seconds: f64,
    pub acked_per_sec: f64,
}

pub async fn run(bench: &Bench, ws_url: &str, args: &DmArgs) -> Result<DmResult> {
    let pairs = args.pairs.max(1);
    let users = bench.users("d", pairs * 2).await?;
    let rooms: Vec<i64> = stream::iter(users.chunks(2))
        .map(|pair| async move {
            let room = pair[0]
                .api
                .open_dm(&pair[1].name)
                .await
                .context("opening a DM")?;
            Ok::<_, anyhow::Error>(room.id.0)
        })
        .buffered(8)
        .try_collect()
        .await?;
    let sockets: Vec<Ws> = stream::iter(&users)
        .map(|user| connect_authenticated(ws_url, &user.token, false))
        .buffered(32)
        .try_collect()
        .await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (index, ws) in sockets.into_iter().enumerate() {
        if index % 2 == 0 {
            let room = rooms[index / 2];
            let (window, payload) = (args.window, args.payload);
            senders.push(tokio::spawn(pump(
                ws,
                room,
                String::new(),
                u64::MAX,
                until,
                window,
                payload,
            )));
        } else {
            receivers.push(tokio::spawn(receive(ws, delivered.clone(), until)));
        }
    }
    let mut total = Pumped::default();
    for sender in senders {
        let pumped = sender.await.context("a sender panicked")??;
        total.sent += pumped.sent;
        total.acked += pumped.acked;
        total.errors += pumped.errors;
        total.duplicates += pumped.duplicates;
        total.elapsed = total.elapsed.max(pumped.elapsed);
    }
    // Give receivers a moment to see the last entries, then stop them.
    let wait_until = Instant::now() + Duration::from_secs(2);
    while delivered.load(Ordering::Relaxed) < total.acked && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for receiver in receivers {
        receiver.abort();
    }
    let seconds = total.elapsed.as_secs_f64().max(1e-9);
    Ok(DmResult {
        sent: total.sent,
        acked: total.acked,
        errors: total.errors,
        duplicates: total.duplicates,
        delivered: delivered.load(Ordering::Relaxed),
        seconds,
        acked_per_sec: total.acked as f64 / seconds,
    })
}

/// Counts message entries until the connection closes (or the bench
/// aborts it; bounded by `until` plus a grace period either way).
async fn receive(mut ws: Ws, delivered: Arc<AtomicU64>, until: Instant) {
    let stop = tokio::time::Instant::from_std(until) + Duration::from_secs(40);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(stop, ws.next()).await {
        let Message::Text(text) = msg else { continue };
        if let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text)
            && frame.kind == "entry"
            && frame.entry.is_some_and(|e| e.kind == "message")
        {
            delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
}
