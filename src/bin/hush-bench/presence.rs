//! `presence`: a join storm in one room. N accounts, all members of one
//! room, each with M connections, connect at once; then the server is
//! restarted on the same database and every connection comes back at once.
//! For each storm: authenticated connects/s, `presence` frames per
//! connection (counted until presence has been quiet for a while), the
//! server's CPU time and its peak resident memory against the figure once
//! everyone is connected and idle. The bare relay (a child process, so its
//! CPU and memory are its own) takes the same number of plain WebSocket
//! connects beside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Bench, User, Ws, connect_authenticated, connect_ws};

#[derive(Debug, Clone, clap::Args)]
pub struct PresenceArgs {
    /// Accounts, all members of one room.
    #[arg(long, default_value_t = 1000)]
    pub accounts: usize,
    /// Connections per account.
    #[arg(long, default_value_t = 10)]
    pub per_account: usize,
    /// Connections being opened at once (the server's listen backlog is
    /// 1024).
    #[arg(long, default_value_t = 1000)]
    pub concurrency: usize,
}

impl PresenceArgs {
    pub fn quick() -> Self {
        Self {
            accounts: 20,
            per_account: 2,
            concurrency: 16,
        }
    }

    pub fn connections(&self) -> usize {
        self.accounts.max(1) * self.per_account.max(1)
    }
}

/// How long presence must be quiet before a storm counts as over (the
/// server's longest window is 1 s).
const QUIET: Duration = Duration::from_millis(2500);
/// The longest a storm is followed.
const MAX_SETTLE: Duration = Duration::from_secs(60);

/// Connections of one storm, each read by a task counting presence frames.
pub struct Storm {
    readers: Vec<JoinHandle<()>>,
    pub opened: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    /// From the first connect to the last `ready`.
    pub seconds: f64,
    presence_frames: Arc<AtomicU64>,
    last_presence: Arc<std::sync::Mutex<Instant>>,
}

impl Storm {
    pub fn per_sec(&self) -> f64 {
        self.opened as f64 / self.seconds.max(1e-9)
    }

    pub fn frames_per_connection(&self) -> f64 {
        self.presence_frames.load(Ordering::Relaxed) as f64 / self.opened.max(1) as f64
    }

    /// Waits until no presence frame came for `QUIET` (at most
    /// `MAX_SETTLE`), calling `sample` every 100 ms meanwhile.
    pub async fn settle(&self, mut sample: impl FnMut()) {
        let started = Instant::now();
        loop {
            sample();
            let last = *self.last_presence.lock().expect("bench lock poisoned");
            if last.elapsed() >= QUIET || started.elapsed() >= MAX_SETTLE {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn close(self) {
        for reader in self.readers {
            reader.abort();
        }
    }
}

/// Registers `accounts` users and makes them all members of one room.
pub async fn one_room(bench: &Bench, accounts: usize) -> Result<Vec<User>> {
    let users = bench.users("p", accounts.max(1)).await?;
    let owner = &users[0];
    let room = owner
        .api
        .create_room("presence")
        .await
        .context("creating the room")?;
    stream::iter(&users[1..])
        .map(|user| async move { owner.api.invite(room.id, &user.name).await })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await
        .context("inviting")?;
    stream::iter(&users[1..])
        .map(|user| async move { user.api.join(room.id).await })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await
        .context("joining")?;
    Ok(users)
}

/// Opens `per_account` authenticated connections for every user, all at
/// once (bounded by `concurrency`), interleaving the accounts.
pub async fn storm(users: &[User], ws_url: &str, args: &PresenceArgs) -> Result<Storm> {
    let count = args.connections();
    let tokens: Vec<String> = (0..count)
        .map(|i| users[i % users.len()].token.clone())
        .collect();
    open(count, args.concurrency, |i| {
        let token = tokens[i].clone();
        let url = ws_url.to_owned();
        async move { connect_authenticated(&url, &token, true).await }
    })
    .await
}

/// Opens `count` plain WebSocket connections to the bare relay.
pub async fn bare_storm(ws_url: &str, count: usize, concurrency: usize) -> Result<Storm> {
    open(count, concurrency, |_| {
        let url = ws_url.to_owned();
        async move { connect_ws(&url, true).await }
    })
    .await
}

async fn open<F, Fut>(count: usize, concurrency: usize, connect: F) -> Result<Storm>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Ws>>,
{
    let presence_frames = Arc::new(AtomicU64::new(0));
    let last_presence = Arc::new(std::sync::Mutex::new(Instant::now()));
    let started = Instant::now();
    let mut storm = Storm {
        readers: Vec::with_capacity(count),
        opened: 0,
        failed: 0,
        first_error: None,
        seconds: 0.0,
        presence_frames: presence_frames.clone(),
        last_presence: last_presence.clone(),
    };
    let mut opened = stream::iter(0..count)
        .map(&connect)
        .buffer_unordered(concurrency.max(1));
    while let Some(result) = opened.next().await {
        match result {
            Ok(mut ws) => {
                storm.opened += 1;
                let (frames, last) = (presence_frames.clone(), last_presence.clone());
                storm.readers.push(tokio::spawn(async move {
                    // Bounded: the bench aborts it, and an hour is the cap.
                    let stop = tokio::time::Instant::now() + Duration::from_secs(3600);
                    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(stop, ws.next()).await {
                        if let Message::Text(text) = msg
                            && text.contains(r#""type":"presence""#)
                        {
                            frames.fetch_add(1, Ordering::Relaxed);
                            *last.lock().expect("bench lock poisoned") = Instant::now();
                        }
                    }
                }));
            }
            Err(err) => {
                storm.failed += 1;
                storm.first_error.get_or_insert_with(|| format!("{err:#}"));
            }
        }
    }
    storm.seconds = started.elapsed().as_secs_f64();
    if storm.opened == 0 {
        bail!(
            "no connection could be opened: {}",
            storm.first_error.unwrap_or_default()
        );
    }
    Ok(storm)
}
