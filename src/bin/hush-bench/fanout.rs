//! `fanout` and `ramp`: C clients in one room, S of them sending R msgs/s
//! each on a ticker (open loop), latency read at every receiver from the
//! send time embedded in the payload. The same harness drives hush (real
//! protocol: auth, `send`, live `entry`) and the bare relay (raw frames).
//!
//! Send times are the ticker's scheduled instants, not the moment the
//! frame left, so a sender that falls behind shows up as latency instead
//! of hiding it (no coordinated omission).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt, TryStreamExt, stream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{
    Bench, Frame, Latency, PayloadMaker, Ws, connect_authenticated, connect_ws, micros_at,
    now_micros, read_stamp, send_frame,
};

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Clients in the room (every one receives every message).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// How many of the clients send.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Payload bytes (before base64).
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

impl FanoutArgs {
    pub fn quick() -> Self {
        Self {
            clients: 5,
            senders: 2,
            rate: 20.0,
            payload: 64,
            duration: 1.5,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RampArgs {
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Per-sender rate of the first step, msgs/s.
    #[arg(long, default_value_t = 10.0)]
    pub start_rate: f64,
    /// Each step multiplies the rate by this.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// Seconds per step.
    #[arg(long, default_value_t = 5.0)]
    pub step_secs: f64,
    /// Upper bound on the number of steps.
    #[arg(long, default_value_t = 15)]
    pub max_steps: u32,
}

impl RampArgs {
    pub fn quick() -> Self {
        Self {
            clients: 5,
            senders: 2,
            payload: 64,
            start_rate: 20.0,
            factor: 2.0,
            step_secs: 0.8,
            max_steps: 2,
        }
    }
}

/// p99 above this or loss above `MAX_LOSS` ends a ramp.
const MAX_P99_US: u64 = 250_000;
const MAX_LOSS: f64 = 0.001;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Hush,
    Bare,
}

#[derive(Default)]
struct ReaderStats {
    delivered: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    stale: AtomicU64,
    is_closed: AtomicBool,
    close_code: AtomicU16,
    latencies: Mutex<Vec<u32>>,
}

type Sink = SplitSink<Ws, Message>;

/// C connected clients in one room, readers running.
pub struct Harness {
    flavor: Flavor,
    room: i64,
    sinks: Vec<Option<Sink>>,
    readers: Vec<JoinHandle<()>>,
    stats: Vec<Arc<ReaderStats>>,
    step: Arc<AtomicU8>,
}

/// One step's figures.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub rate: f64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub expected: u64,
    pub loss_pct: f64,
    pub latency: Latency,
    pub deliveries_per_sec: f64,
    pub closed: usize,
    pub close_codes: Vec<u16>,
    pub errors: u64,
}

impl StepResult {
    pub fn is_sustained(&self) -> bool {
        self.closed == 0
            && self.expected > 0
            && self.loss_pct / 100.0 <= MAX_LOSS
            && self.latency.p99 <= MAX_P99_US
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "rate": self.rate, "sent": self.sent, "acked": self.acked,
            "delivered": self.delivered, "expected": self.expected,
            "loss_pct": self.loss_pct, "latency": self.latency.json(),
            "deliveries_per_sec": self.deliveries_per_sec.round(),
            "closed_connections": self.closed, "close_codes": self.close_codes,
            "errors": self.errors,
        })
    }

    pub fn human(&self) -> String {
        format!(
            "R={:<6} sent {:>7} delivered {:>9}/{:<9} loss {:.3}% {} | {:>9.0} deliv/s{}",
            format!("{:.1}", self.rate),
            self.sent,
            self.delivered,
            self.expected,
            self.loss_pct,
            self.latency.human(),
            self.deliveries_per_sec,
            if self.closed > 0 {
                format!(" | {} conns closed {:?}", self.closed, self.close_codes)
            } else {
                String::new()
            }
        )
    }
}

impl Harness {
    /// Registers `clients` users, puts them in one room and connects them.
    pub async fn hush(bench: &Bench, ws_url: &str, clients: usize) -> Result<Self> {
        let users = bench.users("f", clients.max(1)).await?;
        let owner = &users[0];
        let room = owner
            .api
            .create_room("bench")
            .await
            .context("creating the room")?;
        for user in &users[1..] {
            owner
                .api
                .invite(room.id, &user.name)
                .await
                .context("inviting")?;
        }
        stream::iter(&users[1..])
            .map(|user| async move { user.api.join(room.id).await.context("joining") })
            .buffer_unordered(8)
            .try_collect::<Vec<_>>()
            .await?;
        let sockets: Vec<Ws> = stream::iter(&users)
            .map(|user| connect_authenticated(ws_url, &user.token, false))
            .buffered(16)
            .try_collect()
            .await?;
        Ok(Self::spawn(Flavor::Hush, room.id.0, sockets))
    }

    pub async fn bare(ws_url: &str, clients: usize) -> Result<Self> {
        let sockets: Vec<Ws> = stream::iter(0..clients.max(1))
            .map(|_| connect_ws(ws_url, false))
            .buffered(16)
            .try_collect()
            .await?;
        Ok(Self::spawn(Flavor::Bare, 0, sockets))
    }

    fn spawn(flavor: Flavor, room: i64, sockets: Vec<Ws>) -> Self {
        let step = Arc::new(AtomicU8::new(0));
        let mut harness = Self {
            flavor,
            room,
            sinks: Vec::new(),
            readers: Vec::new(),
            stats: Vec::new(),
            step: step.clone(),
        };
        for ws in sockets {
            let (sink, stream) = ws.split();
            let stats = Arc::new(ReaderStats::default());
            harness.sinks.push(Some(sink));
            harness.readers.push(tokio::spawn(read_loop(
                stream,
                flavor,
                stats.clone(),
                step.clone(),
            )));
            harness.stats.push(stats);
        }
        harness
    }

    /// One open-loop step: `senders` clients send `rate` msgs/s each for
    /// `duration`, then the receivers get up to `drain` to catch up.
    pub async fn step(
        &mut self,
        tag: u8,
        senders: usize,
        rate: f64,
        payload: usize,
        duration: Duration,
        drain: Duration,
    ) -> StepResult {
        self.step.store(tag, Ordering::Release);
        for stats in &self.stats {
            stats.delivered.store(0, Ordering::Relaxed);
            stats.acked.store(0, Ordering::Relaxed);
            stats.latencies.lock().expect("stats lock").clear();
        }
        let started = Instant::now();
        let deadline = started + duration;
        let senders = senders.clamp(1, self.sinks.len());
        let mut tasks = Vec::new();
        for index in 0..senders {
            let Some(sink) = self.sinks[index].take() else {
                continue;
            };
            let (flavor, room) = (self.flavor, self.room);
            tasks.push((
                index,
                tokio::spawn(send_loop(
                    sink,
                    flavor,
                    room,
                    tag,
                    rate,
                    payload,
                    deadline,
                    index as f64 / senders as f64,
                )),
            ));
        }
        let mut sent = 0;
        for (index, task) in tasks {
            if let Ok((sink, count)) = task.await {
                self.sinks[index] = Some(sink);
                sent += count;
            }
        }
        let expected = sent * self.stats.len() as u64;
        let drain_until = Instant::now() + drain;
        let mut last_progress = Instant::now();
        let mut last_delivered = 0;
        while Instant::now() < drain_until {
            let delivered = self.delivered();
            if delivered >= expected {
                break;
            }
            if delivered != last_delivered {
                last_delivered = delivered;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > Duration::from_secs(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let delivered = self.delivered();
        let mut samples = Vec::new();
        for stats in &self.stats {
            samples.append(&mut stats.latencies.lock().expect("stats lock"));
        }
        let closed: Vec<u16> = self
            .stats
            .iter()
            .filter(|s| s.is_closed.load(Ordering::Acquire))
            .map(|s| s.close_code.load(Ordering::Acquire))
            .collect();
        StepResult {
            rate,
            sent,
            acked: self
                .stats
                .iter()
                .map(|s| s.acked.load(Ordering::Relaxed))
                .sum(),
            delivered,
            expected,
            loss_pct: if expected == 0 {
                0.0
            } else {
                100.0 * expected.saturating_sub(delivered) as f64 / expected as f64
            },
            latency: Latency::of(samples),
            deliveries_per_sec: delivered as f64 / elapsed.max(1e-9),
            closed: closed.len(),
            close_codes: closed,
            errors: self
                .stats
                .iter()
                .map(|s| s.errors.load(Ordering::Relaxed))
                .sum(),
        }
    }

    fn delivered(&self) -> u64 {
        self.stats
            .iter()
            .map(|s| s.delivered.load(Ordering::Relaxed))
            .sum()
    }

    /// Closes every client and stops the readers.
    pub async fn close(mut self) {
        for sink in self.sinks.iter_mut().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
        }
        for reader in self.readers.drain(..) {
            reader.abort();
        }
    }
}

async fn send_loop(
    mut sink: Sink,
    flavor: Flavor,
    room: i64,
    tag: u8,
    rate: f64,
    payload: usize,
    deadline: Instant,
    phase: f64,
) -> (Sink, u64) {
    let mut maker = PayloadMaker::new(payload);
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    // Senders are spread over the period instead of all ticking at once.
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + period.mul_f64(phase), period);
    let mut sent = 0u64;
    // Bounded by count as well as by time.
    let max = (rate
        * deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64())
    .ceil() as u64
        + 1;
    while sent < max {
        let at = ticker.tick().await.into_std();
        if at >= deadline {
            break;
        }
        let body = maker.stamp(micros_at(at), tag);
        let text = match flavor {
            Flavor::Hush => send_frame(room, &format!("{tag}.{sent}"), &body),
            Flavor::Bare => body,
        };
        if sink.send(Message::text(text)).await.is_err() {
            break;
        }
        sent += 1;
    }
    (sink, sent)
}

async fn read_loop(
    mut stream: SplitStream<Ws>,
    flavor: Flavor,
    stats: Arc<ReaderStats>,
    step: Arc<AtomicU8>,
) {
    while let Some(msg) = stream.next().await {
        let text = match msg {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(frame)) => {
                if let Some(frame) = frame {
                    stats
                        .close_code
                        .store(u16::from(frame.code), Ordering::Release);
                }
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        };
        let stamp = match flavor {
            Flavor::Bare => read_stamp(&text),
            Flavor::Hush => {
                let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text) else {
                    continue;
                };
                match frame.kind {
                    "entry" => frame
                        .entry
                        .filter(|e| e.kind == "message")
                        .and_then(|e| e.body)
                        .and_then(read_stamp),
                    "ack" => {
                        stats.acked.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    "error" => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    _ => None,
                }
            }
        };
        let Some((at, tag)) = stamp else { continue };
        if tag != step.load(Ordering::Acquire) {
            stats.stale.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let latency = now_micros().saturating_sub(at).min(u64::from(u32::MAX)) as u32;
        stats.delivered.fetch_add(1, Ordering::Relaxed);
        stats.latencies.lock().expect("stats lock").push(latency);
    }
    stats.is_closed.store(true, Ordering::Release);
}

/// Runs one fanout on a harness.
pub async fn fanout(harness: &mut Harness, args: &FanoutArgs) -> StepResult {
    let duration = Duration::from_secs_f64(args.duration);
    harness
        .step(
            1,
            args.senders,
            args.rate,
            args.payload,
            duration,
            drain_for(duration),
        )
        .await
}

fn drain_for(duration: Duration) -> Duration {
    (duration / 2).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

#[derive(Debug, Clone, clap::Args)]
pub struct OverloadArgs {
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Per-sender rate during the overload (2x the sustained ramp rate).
    #[arg(long, default_value_t = 230.0)]
    pub rate: f64,
    /// Seconds of overload.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Per-sender rate of the recovery step that follows.
    #[arg(long, default_value_t = 10.0)]
    pub recovery_rate: f64,
    /// Seconds of the recovery step.
    #[arg(long, default_value_t = 5.0)]
    pub recovery_secs: f64,
}

impl OverloadArgs {
    pub fn quick() -> Self {
        Self {
            clients: 5,
            senders: 2,
            payload: 64,
            rate: 100.0,
            duration: 1.0,
            recovery_rate: 10.0,
            recovery_secs: 1.0,
        }
    }
}

/// A ramp's steps and its best sustained step.
pub struct RampResult {
    pub steps: Vec<StepResult>,
    pub best: Option<StepResult>,
}

impl RampResult {
    pub fn best_rate(&self) -> f64 {
        self.best.as_ref().map_or(0.0, |b| b.deliveries_per_sec)
    }
}

/// Raises the rate step by step until p99 > 250 ms, loss > 0.1 %, a
/// connection is closed, or `max_steps` ran. `report` sees every step.
pub async fn ramp(
    harness: &mut Harness,
    args: &RampArgs,
    mut report: impl FnMut(&StepResult),
) -> RampResult {
    let duration = Duration::from_secs_f64(args.step_secs);
    let mut rate = args.start_rate;
    let mut steps = Vec::new();
    let mut best: Option<StepResult> = None;
    for index in 0..args.max_steps.min(250) {
        let tag = (index + 1) as u8;
        let result = harness
            .step(
                tag,
                args.senders,
                rate,
                args.payload,
                duration,
                drain_for(duration),
            )
            .await;
        report(&result);
        let is_sustained = result.is_sustained();
        if is_sustained
            && best
                .as_ref()
                .is_none_or(|b| b.deliveries_per_sec < result.deliveries_per_sec)
        {
            best = Some(result.clone());
        }
        steps.push(result);
        if !is_sustained {
            break;
        }
        rate *= args.factor.max(1.01);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    RampResult { steps, best }
}
