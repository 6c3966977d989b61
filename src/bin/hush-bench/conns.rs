//! `connect` and `idle`: many authenticated connections, a few users each
//! holding many sessions (one login per user, tokens reused). `connect`
//! times connect + `auth` + `ready` at bounded concurrency; `idle` holds
//! them and reads how much the server's resident memory grew.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::{StreamExt, stream};
use tokio::task::JoinHandle;

use crate::client::{Bench, Latency, User, connect_authenticated};

#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// Users the connections are spread over (one login each).
    #[arg(long, default_value_t = 50)]
    pub users: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

impl ConnArgs {
    pub fn quick() -> Self {
        Self {
            connections: 100,
            users: 5,
            concurrency: 16,
        }
    }
}

/// `idle`: like `connect`, with 10,000 connections by default.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    #[arg(long, default_value_t = 50)]
    pub users: usize,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

impl IdleArgs {
    pub fn conn_args(&self) -> ConnArgs {
        ConnArgs {
            connections: self.connections,
            users: self.users,
            concurrency: self.concurrency,
        }
    }
}

/// Connections held open: each has a task reading it (so pings are
/// answered) until dropped.
pub struct Held {
    readers: Vec<JoinHandle<()>>,
    pub opened: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub latency: Latency,
}

impl Held {
    pub fn per_sec(&self) -> f64 {
        self.opened as f64 / self.seconds.max(1e-9)
    }

    pub fn close(self) {
        for reader in self.readers {
            reader.abort();
        }
    }
}

/// Logs in the users, then opens `connections` authenticated sockets.
pub async fn open(bench: &Bench, ws_url: &str, args: &ConnArgs, prefix: &str) -> Result<Held> {
    let users = bench
        .users(prefix, args.users.clamp(1, args.connections.max(1)))
        .await?;
    open_as(&users, ws_url, args).await
}

/// Opens `connections` authenticated sockets spread over `users`.
pub async fn open_as(users: &[User], ws_url: &str, args: &ConnArgs) -> Result<Held> {
    let count = args.connections.max(1);
    let started = Instant::now();
    let results: Vec<_> = stream::iter(0..count)
        .map(|i| {
            let token = users[i % users.len()].token.clone();
            async move {
                let at = Instant::now();
                let ws = connect_authenticated(ws_url, &token, true).await?;
                Ok::<_, anyhow::Error>((ws, at.elapsed()))
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut held = Held {
        readers: Vec::with_capacity(count),
        opened: 0,
        failed: 0,
        first_error: None,
        seconds,
        latency: Latency::default(),
    };
    let mut samples = Vec::with_capacity(count);
    for result in results {
        match result {
            Ok((mut ws, took)) => {
                samples.push(took.as_micros().min(u128::from(u32::MAX)) as u32);
                held.opened += 1;
                held.readers.push(tokio::spawn(async move {
                    // Bounded: the bench aborts it, and an hour is the cap.
                    let stop = tokio::time::Instant::now() + Duration::from_secs(3600);
                    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(stop, ws.next()).await {}
                }));
            }
            Err(err) => {
                held.failed += 1;
                held.first_error.get_or_insert_with(|| format!("{err:#}"));
            }
        }
    }
    held.latency = Latency::of(samples);
    if held.opened == 0 {
        bail!(
            "no connection could be opened: {}",
            held.first_error.unwrap_or_default()
        );
    }
    Ok(held)
}
