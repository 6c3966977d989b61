//! `sync`: fill a room with M messages (pipelined over a few connections),
//! then a fresh connection syncs it from 0; messages/s replayed from the
//! `sync` frame to the room's `synced`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Bench, Frame, Pumped, connect_authenticated, pump, sync_frame};

#[derive(Debug, Clone, clap::Args)]
pub struct SyncArgs {
    /// Messages stored in the room before the sync.
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Connections that fill the room.
    #[arg(long, default_value_t = 4)]
    pub loaders: usize,
    /// Unacknowledged sends per loader.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
}

impl SyncArgs {
    pub fn quick() -> Self {
        Self {
            messages: 1000,
            payload: 64,
            loaders: 2,
            window: 64,
        }
    }
}

pub struct SyncResult {
    pub stored: u64,
    pub load_secs: f64,
    pub replayed: u64,
    pub pages: u64,
    pub seconds: f64,
    pub per_sec: f64,
}

#[derive(Deserialize)]
struct PageFrame {
    entries: Vec<IgnoredAny>,
}

pub async fn run(bench: &Bench, ws_url: &str, args: &SyncArgs) -> Result<SyncResult> {
    let user = bench.users("s", 1).await?.remove(0);
    let room = user
        .api
        .create_room("history")
        .await
        .context("creating the room")?
        .id
        .0;
    let loaders = args.loaders.clamp(1, 64);
    let load_started = Instant::now();
    // Bounded by count; the time limit is only a safety net.
    let until = load_started + Duration::from_secs(600);
    let mut tasks = Vec::new();
    for index in 0..loaders as u64 {
        let share =
            args.messages / loaders as u64 + u64::from(index < args.messages % loaders as u64);
        let ws = connect_authenticated(ws_url, &user.token, false).await?;
        tasks.push(tokio::spawn(pump(
            ws,
            room,
            format!("l{index}-"),
            share,
            until,
            args.window,
            args.payload,
        )));
    }
    let mut loaded = Pumped::default();
    for task in tasks {
        let pumped = task.await.context("a loader panicked")??;
        loaded.acked += pumped.acked;
        loaded.errors += pumped.errors;
        loaded.duplicates += pumped.duplicates;
    }
    let load_secs = load_started.elapsed().as_secs_f64();
    if loaded.errors > 0 || loaded.duplicates > 0 {
        bail!(
            "{} sends were refused while filling the room",
            loaded.errors
        );
    }

    let mut ws = connect_authenticated(ws_url, &user.token, false).await?;
    let started = Instant::now();
    ws.send(Message::text(sync_frame(room, 0)))
        .await
        .context("sending sync")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let (mut replayed, mut pages) = (0u64, 0u64);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("sync did not finish within 300 s")?
            .context("connection closed during sync")?
            .context("reading a page")?;
        let Message::Text(text) = msg else { continue };
        let frame: Frame<'_> = serde_json::from_str(&text).context("parsing a frame")?;
        match frame.kind {
            "page" if frame.room == Some(room) => {
                let page: PageFrame = serde_json::from_str(&text).context("parsing a page")?;
                replayed += page.entries.len() as u64;
                pages += 1;
            }
            "synced" if frame.room == Some(room) => break,
            "error" => bail!("sync refused: {}", frame.code.unwrap_or_default()),
            _ => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let _ = ws.close(None).await;
    Ok(SyncResult {
        stored: loaded.acked,
        load_secs,
        replayed,
        pages,
        seconds,
        per_sec: replayed as f64 / seconds,
    })
}
