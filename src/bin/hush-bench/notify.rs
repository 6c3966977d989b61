//! `notify`: what a NOTIFY inside the data transaction costs PostgreSQL's
//! commit rate, against the design hush uses (the data commits alone, one
//! announcer sending what was committed in its own autocommit statement,
//! `synchronous_commit = off`). W writers each commit one small insert per
//! transaction as fast as they can for D seconds, in three modes: no
//! notification at all, the announcer beside the commits (hush), and
//! `pg_notify` inside every data transaction. A listener is connected
//! throughout, as a node's would be. Needs `--postgres`; the database is
//! fresh and dropped afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::mpsc;

use crate::placement::BenchDatabase;

#[derive(Debug, Clone, clap::Args)]
pub struct NotifyArgs {
    /// Concurrent writers, each on its own connection.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// Seconds per mode.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Data commits only.
    Silent,
    /// Data commits, then one announcer outside them (hush's design).
    Beside,
    /// `pg_notify` inside each data transaction.
    Inside,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Silent, Mode::Beside, Mode::Inside];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Silent => "no notification",
            Mode::Beside => "announcer beside the commits (hush)",
            Mode::Inside => "NOTIFY inside each data transaction",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Mode::Silent => "silent",
            Mode::Beside => "beside",
            Mode::Inside => "inside",
        }
    }
}

pub struct ModeResult {
    pub commits: u64,
    pub seconds: f64,
    pub notifications_received: u64,
}

const CHANNEL: &str = "hush_bench";

pub async fn run(admin: &str, args: &NotifyArgs, mode: Mode) -> Result<ModeResult> {
    let database = BenchDatabase::create(admin).await?;
    let outcome = run_on(&database.url, args, mode).await;
    database.drop_now().await;
    outcome
}

async fn run_on(url: &str, args: &NotifyArgs, mode: Mode) -> Result<ModeResult> {
    let pool = PgPoolOptions::new()
        .max_connections(args.writers as u32 + 1)
        .connect(url)
        .await
        .context("connecting to the bench database")?;
    sqlx::raw_sql("CREATE TABLE entries (id BIGSERIAL PRIMARY KEY, room BIGINT, body BYTEA)")
        .execute(&pool)
        .await?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    let listening = {
        let (received, stop) = (received.clone(), stop.clone());
        // Once told to stop, it still drains until 300 ms pass in silence.
        tokio::spawn(async move {
            loop {
                let next = tokio::time::timeout(Duration::from_millis(300), listener.recv());
                match next.await {
                    Ok(Ok(_)) => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    _ if stop.load(Ordering::Acquire) => break,
                    _ => {}
                }
            }
        })
    };
    let (announce_tx, announce_rx) = mpsc::unbounded_channel::<i64>();
    let announcer = (mode == Mode::Beside).then(|| {
        let url = url.to_owned();
        tokio::spawn(announce(url, announce_rx))
    });
    let commits = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let writers: Vec<_> = (0..args.writers)
        .map(|w| {
            let (pool, commits, tx) = (pool.clone(), commits.clone(), announce_tx.clone());
            tokio::spawn(write(pool, w as i64, mode, deadline, commits, tx))
        })
        .collect();
    drop(announce_tx);
    for writer in writers {
        writer.await.context("a writer panicked")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(announcer) = announcer {
        announcer.await.context("the announcer panicked")??;
    }
    stop.store(true, Ordering::Release);
    let _ = listening.await;
    pool.close().await;
    Ok(ModeResult {
        commits: commits.load(Ordering::Relaxed),
        seconds,
        notifications_received: received.load(Ordering::Relaxed),
    })
}

async fn write(
    pool: PgPool,
    room: i64,
    mode: Mode,
    deadline: Instant,
    commits: Arc<AtomicU64>,
    announce: mpsc::UnboundedSender<i64>,
) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let body = vec![7u8; 256];
    // Bounded by count as well as by time.
    for _ in 0..10_000_000u64 {
        if Instant::now() >= deadline {
            break;
        }
        let mut tx = conn.begin().await?;
        let (id,): (i64,) =
            sqlx::query_as("INSERT INTO entries (room, body) VALUES ($1, $2) RETURNING id")
                .bind(room)
                .bind(&body)
                .fetch_one(&mut *tx)
                .await?;
        if mode == Mode::Inside {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(format!("{room}:{id}"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        commits.fetch_add(1, Ordering::Relaxed);
        if mode == Mode::Beside {
            let _ = announce.send(room);
        }
    }
    Ok(())
}

/// Sends one notification per round with everything committed since the
/// previous one, as hush's announcer does.
async fn announce(url: String, mut committed: mpsc::UnboundedReceiver<i64>) -> Result<()> {
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::raw_sql("SET synchronous_commit = off")
        .execute(&mut conn)
        .await?;
    while let Some(first) = committed.recv().await {
        let mut rooms = vec![first];
        while let Ok(more) = committed.try_recv() {
            rooms.push(more);
        }
        rooms.sort_unstable();
        rooms.dedup();
        let payload = rooms
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(",");
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&mut conn)
            .await?;
    }
    let _ = conn.close().await;
    Ok(())
}
