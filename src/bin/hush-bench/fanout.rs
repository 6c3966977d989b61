//! `fanout` and `ramp`: C clients in one room, S of them sending R msgs/s
//! each on a ticker (open loop), latency read at every receiver from the
//! send time embedded in the payload. The same harness drives hush (real
//! protocol: auth, `send`, live `entry`) and the bare relay (raw frames).
//!
//! Send times are the ticker's scheduled instants, not the moment the
//! frame left, so a sender that falls behind shows up as latency instead
//! of hiding it (no coordinated omission). A sender still held back by
//! the server when its sending time is over stops there, so a step lasts
//! what it says.
//!
//! The harness also serves `overload`: steps can overlap (a step's late
//! messages still count while the next one runs), and while redialing is
//! on, a hush client whose connection closed comes back and resyncs the
//! room from its last `seq`, counting the entries replayed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt, TryStreamExt, stream};
use hush::client::api::Api;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{
    Bench, Frame, Latency, PageRef, PayloadMaker, Ws, connect_authenticated, connect_ws, fmt_us,
    micros_at, now_micros, read_stamp, send_frame,
};
use crate::on_time::OnTime;
use crate::redial::Redial;

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

/// One client's figures for one step. Two per client, by the tag's lowest
/// bit: a step's stragglers are still counted while the next step runs
/// (overload's light load starts the moment the overload's sending ends).
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    acked: AtomicU64,
    /// When (µs) the latest delivery arrived.
    last_us: AtomicU64,
    latencies: Mutex<Vec<u32>>,
}

impl Tally {
    fn reset(&self) {
        self.delivered.store(0, Ordering::Relaxed);
        self.acked.store(0, Ordering::Relaxed);
        self.last_us.store(0, Ordering::Relaxed);
        self.latencies.lock().expect("stats lock").clear();
    }
}

/// One client, shared by its reader, its sender (if it sends) and the
/// harness.
struct ClientState {
    /// Which node (index into the target's `ws_urls`) it is connected to.
    node: usize,
    tallies: [Tally; 2],
    errors: AtomicU64,
    stale: AtomicU64,
    is_closed: AtomicBool,
    close_code: AtomicU16,
    /// Every close's code (0: none given), in order.
    closes: Mutex<Vec<u16>>,
    /// The highest `seq` of the room this client has, live or from a page.
    last_seq: AtomicI64,
    /// From a reconnect until its `synced`: live entries are ignored, the
    /// sync's pages carry them.
    is_resyncing: AtomicBool,
    reconnects: AtomicU64,
    failed_dials: AtomicU64,
    /// Entries received in sync pages after a reconnect.
    replayed: AtomicU64,
    /// When (µs) the first live message of the probe step arrived on the
    /// current connection; 0 for not yet.
    first_probe_us: AtomicU64,
    /// A reconnected socket's sink, left by the reader for whoever sends
    /// on this client next. A std mutex: only swapped, never held across
    /// an await.
    fresh_sink: Mutex<Option<Sink>>,
}

impl ClientState {
    fn new(node: usize, last_seq: i64) -> Self {
        Self {
            node,
            tallies: Default::default(),
            errors: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            is_closed: AtomicBool::new(false),
            close_code: AtomicU16::new(0),
            closes: Mutex::new(Vec::new()),
            last_seq: AtomicI64::new(last_seq),
            is_resyncing: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            failed_dials: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            first_probe_us: AtomicU64::new(0),
            fresh_sink: Mutex::new(None),
        }
    }

    fn take_fresh_sink(&self) -> Option<Sink> {
        self.fresh_sink.lock().expect("sink lock").take()
    }

    fn tally(&self, tag: u8) -> &Tally {
        &self.tallies[usize::from(tag & 1)]
    }
}

/// What a harness's readers and senders share.
#[derive(Default)]
struct Shared {
    /// Tag of the step running; the previous tag's messages still count.
    step: AtomicU8,
    /// Tag of the step whose messages `on_time` follows (0: none).
    probe: AtomicU8,
    on_time: OnceLock<OnTime>,
    /// Whether a closed client reconnects (only while `overload` runs).
    is_redialing: AtomicBool,
    /// Ends the running step's sending before its deadline.
    stop_sending: AtomicBool,
    /// Most unacknowledged messages a hush sender keeps out (0: no bound).
    send_window: AtomicU64,
    /// Ticks a sender skipped because its window was full.
    held_ticks: AtomicU64,
}

impl Shared {
    /// The previous step's tag counts too, so stragglers are not stale.
    fn is_counted(&self, tag: u8) -> bool {
        let step = self.step.load(Ordering::Acquire);
        tag == step || tag == step.wrapping_sub(1)
    }

    fn probe(&self, tag: u8) -> Option<&OnTime> {
        (tag != 0 && tag == self.probe.load(Ordering::Acquire))
            .then(|| self.on_time.get())
            .flatten()
    }
}

type Sink = SplitSink<Ws, Message>;
type SendLoop = JoinHandle<(Option<Sink>, u64)>;

/// C connected clients in one room, readers running.
pub struct Harness {
    flavor: Flavor,
    room: i64,
    owner: Option<Api>,
    sinks: Vec<Option<Sink>>,
    readers: Vec<JoinHandle<()>>,
    clients: Vec<Arc<ClientState>>,
    shared: Arc<Shared>,
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
    /// With clients on several nodes (the senders on the first): the
    /// latency at receivers on the senders' node, and on the others.
    pub by_node: Option<(Latency, Latency)>,
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
        let mut line = serde_json::json!({
            "rate": self.rate, "sent": self.sent, "acked": self.acked,
            "delivered": self.delivered, "expected": self.expected,
            "loss_pct": self.loss_pct, "latency": self.latency.json(),
            "deliveries_per_sec": self.deliveries_per_sec.round(),
            "closed_connections": self.closed, "close_codes": self.close_codes,
            "errors": self.errors,
        });
        if let Some((same, other)) = &self.by_node {
            line["latency_same_node"] = same.json();
            line["latency_other_nodes"] = other.json();
        }
        line
    }

    /// The same-node and cross-node latencies, when clients were spread.
    pub fn by_node_human(&self) -> Option<String> {
        let (same, other) = self.by_node.as_ref()?;
        Some(format!(
            "senders' node {} | other nodes {} | cross-node adds {} at p99",
            same.human(),
            other.human(),
            fmt_us(other.p99.saturating_sub(same.p99))
        ))
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
                let mut codes = BTreeMap::<u16, usize>::new();
                for code in &self.close_codes {
                    *codes.entry(*code).or_default() += 1;
                }
                format!(" | {} conns closed, by code {codes:?}", self.closed)
            } else {
                String::new()
            }
        )
    }
}

/// Each client's close count and state at one moment.
pub struct Snapshot(Vec<(usize, bool, u16)>);

/// A step's send loops, running.
pub struct Sending {
    started: Instant,
    /// Each sender's index and its loop, which returns its sink and count.
    tasks: Vec<(usize, SendLoop)>,
}

impl Sending {
    pub fn started(&self) -> Instant {
        self.started
    }
}

/// What the reconnecting clients did, summed.
#[derive(Debug, Default, Clone)]
pub struct Redials {
    pub reconnects: u64,
    pub failed_dials: u64,
    pub replayed: u64,
    /// Every close, by code (0: closed without a code).
    pub close_codes: BTreeMap<u16, u64>,
}

impl Harness {
    /// Registers `clients` users, puts them in one room and connects them:
    /// the first `pinned` (the senders) to the first of `ws_urls`, the
    /// others to each in turn.
    pub async fn hush(
        bench: &Bench,
        ws_urls: &[String],
        clients: usize,
        pinned: usize,
    ) -> Result<Self> {
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
        // Nothing is written to the room from here until the first step.
        let last_seq = owner
            .api
            .room(room.id)
            .await
            .context("reading the room")?
            .last_seq;
        let nodes: Vec<usize> = (0..users.len())
            .map(|i| if i < pinned { 0 } else { i % ws_urls.len() })
            .collect();
        let sockets: Vec<Ws> = stream::iter(users.iter().zip(&nodes))
            .map(|(user, &node)| connect_authenticated(&ws_urls[node], &user.token, false))
            .buffered(16)
            .try_collect()
            .await?;
        let redials: Vec<Option<Redial>> = users
            .iter()
            .zip(&nodes)
            .map(|(user, &node)| {
                Some(Redial {
                    ws_url: ws_urls[node].clone(),
                    token: user.token.clone(),
                    room: room.id.0,
                })
            })
            .collect();
        let mut harness = Self::spawn(
            Flavor::Hush,
            room.id.0,
            last_seq,
            sockets.into_iter().zip(nodes).collect(),
            redials.into_iter(),
        );
        harness.owner = Some(owner.api.clone());
        Ok(harness)
    }

    pub async fn bare(ws_url: &str, clients: usize) -> Result<Self> {
        let sockets: Vec<Ws> = stream::iter(0..clients.max(1))
            .map(|_| connect_ws(ws_url, false))
            .buffered(16)
            .try_collect()
            .await?;
        let redials = std::iter::repeat_with(|| None);
        let sockets = sockets.into_iter().map(|ws| (ws, 0)).collect();
        Ok(Self::spawn(Flavor::Bare, 0, 0, sockets, redials))
    }

    fn spawn(
        flavor: Flavor,
        room: i64,
        last_seq: i64,
        sockets: Vec<(Ws, usize)>,
        redials: impl Iterator<Item = Option<Redial>>,
    ) -> Self {
        let mut harness = Self {
            flavor,
            room,
            owner: None,
            sinks: Vec::new(),
            readers: Vec::new(),
            clients: Vec::new(),
            shared: Arc::default(),
        };
        for ((ws, node), redial) in sockets.into_iter().zip(redials) {
            let (sink, stream) = ws.split();
            let client = Arc::new(ClientState::new(node, last_seq));
            harness.sinks.push(Some(sink));
            harness.readers.push(tokio::spawn(read_loop(
                stream,
                flavor,
                room,
                client.clone(),
                harness.shared.clone(),
                redial,
            )));
            harness.clients.push(client);
        }
        harness
    }

    pub fn clients(&self) -> usize {
        self.clients.len()
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
        let before = self.begin(tag);
        let sending = self.start_sending(senders, rate, payload, Instant::now() + duration);
        let started = sending.started();
        let sent = self.finish_sending(sending).await;
        self.settle(tag, sent, drain).await;
        let after = self.snapshot();
        self.result(tag, rate, sent, started.elapsed(), &before, &after)
    }

    /// Makes `tag` the running step: its tally starts from zero.
    pub fn begin(&mut self, tag: u8) -> Snapshot {
        for client in &self.clients {
            client.tally(tag).reset();
        }
        self.shared.step.store(tag, Ordering::Release);
        self.shared.stop_sending.store(false, Ordering::Release);
        self.snapshot()
    }

    /// Starts the running step's send loops: the first `senders` clients
    /// send `rate` msgs/s each until `deadline` or `stop_sending`.
    pub fn start_sending(
        &mut self,
        senders: usize,
        rate: f64,
        payload: usize,
        deadline: Instant,
    ) -> Sending {
        let tag = self.shared.step.load(Ordering::Acquire);
        let started = Instant::now();
        let senders = senders.clamp(1, self.sinks.len());
        let mut tasks = Vec::new();
        for index in 0..senders {
            let client = self.clients[index].clone();
            let sink = client
                .take_fresh_sink()
                .or_else(|| self.sinks[index].take());
            tasks.push((
                index,
                tokio::spawn(send_loop(
                    sink,
                    Sender {
                        index,
                        client,
                        shared: self.shared.clone(),
                        flavor: self.flavor,
                        room: self.room,
                        tag,
                    },
                    rate,
                    payload,
                    deadline,
                    index as f64 / senders as f64,
                )),
            ));
        }
        Sending { started, tasks }
    }

    /// Ends the running step's sending at the senders' next tick.
    pub fn stop_sending(&self) {
        self.shared.stop_sending.store(true, Ordering::Release);
    }

    /// Waits for the send loops; how many messages they sent.
    pub async fn finish_sending(&mut self, sending: Sending) -> u64 {
        let mut sent = 0;
        for (index, task) in sending.tasks {
            if let Ok((sink, count)) = task.await {
                self.sinks[index] = sink;
                sent += count;
            }
        }
        sent
    }

    /// Waits up to `drain` for the receivers to get every message of `tag`
    /// (`sent` to each client), or until nothing arrived for 2 s.
    pub async fn settle(&self, tag: u8, sent: u64, drain: Duration) {
        let expected = sent * self.clients.len() as u64;
        let drain_until = Instant::now() + drain;
        let mut last_progress = Instant::now();
        let mut last_delivered = 0;
        while Instant::now() < drain_until {
            let delivered = self.delivered(tag);
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
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot(
            self.clients
                .iter()
                .map(|c| {
                    (
                        c.closes.lock().expect("closes lock").len(),
                        c.is_closed.load(Ordering::Acquire),
                        c.close_code.load(Ordering::Acquire),
                    )
                })
                .collect(),
        )
    }

    /// The figures of step `tag`, over `elapsed`. A client counts as
    /// closed if it was closed at `after` or closed between the snapshots.
    pub fn result(
        &self,
        tag: u8,
        rate: f64,
        sent: u64,
        elapsed: Duration,
        before: &Snapshot,
        after: &Snapshot,
    ) -> StepResult {
        let expected = sent * self.clients.len() as u64;
        let delivered = self.delivered(tag);
        let (mut same, mut other) = (Vec::new(), Vec::new());
        for client in &self.clients {
            let samples = if client.node == 0 {
                &mut same
            } else {
                &mut other
            };
            samples.append(&mut client.tally(tag).latencies.lock().expect("stats lock"));
        }
        let latency = Latency::of([same.as_slice(), other.as_slice()].concat());
        let by_node = (!other.is_empty()).then(|| (Latency::of(same), Latency::of(other)));
        let closed: Vec<u16> = before
            .0
            .iter()
            .zip(&after.0)
            .filter(|((closes, ..), (closes_after, is_closed, _))| {
                *is_closed || closes_after > closes
            })
            .map(|(_, (_, _, code))| *code)
            .collect();
        StepResult {
            rate,
            sent,
            acked: self
                .clients
                .iter()
                .map(|c| c.tally(tag).acked.load(Ordering::Relaxed))
                .sum(),
            delivered,
            expected,
            loss_pct: if expected == 0 {
                0.0
            } else {
                100.0 * expected.saturating_sub(delivered) as f64 / expected as f64
            },
            latency,
            by_node,
            deliveries_per_sec: delivered as f64 / elapsed.as_secs_f64().max(1e-9),
            closed: closed.len(),
            close_codes: closed,
            errors: self
                .clients
                .iter()
                .map(|c| c.errors.load(Ordering::Relaxed))
                .sum(),
        }
    }

    /// When (µs) the latest message of step `tag` arrived, if any did.
    pub fn last_delivery_us(&self, tag: u8) -> Option<u64> {
        self.clients
            .iter()
            .map(|c| c.tally(tag).last_us.load(Ordering::Relaxed))
            .max()
            .filter(|&us| us > 0)
    }

    fn delivered(&self, tag: u8) -> u64 {
        self.clients
            .iter()
            .map(|c| c.tally(tag).delivered.load(Ordering::Relaxed))
            .sum()
    }

    /// From now on a closed client reconnects and resyncs (hush only).
    /// Bounds each hush sender's unacknowledged messages from now on: a
    /// tick that finds `window` messages unacknowledged sends nothing (0:
    /// no bound, the sender writes whatever the socket takes).
    pub fn set_send_window(&self, window: u64) {
        self.shared.send_window.store(window, Ordering::Release);
    }

    /// Ticks skipped so far because a sender's window was full.
    pub fn held_ticks(&self) -> u64 {
        self.shared.held_ticks.load(Ordering::Acquire)
    }

    pub fn set_redialing(&self, is_redialing: bool) {
        self.shared
            .is_redialing
            .store(is_redialing, Ordering::Release);
    }

    /// Follows the messages of step `tag` one by one in `on_time` (the
    /// first `on_time` given to a harness stays).
    pub fn follow(&self, tag: u8, on_time: OnTime) {
        let _ = self.shared.on_time.set(on_time);
        self.shared.probe.store(tag, Ordering::Release);
    }

    pub fn on_time(&self) -> Option<&OnTime> {
        self.shared.on_time.get()
    }

    /// When (µs) the last client got its first live message of the
    /// followed step, if every client is connected, synced and has one.
    pub fn caught_up_us(&self) -> Option<u64> {
        self.clients.iter().try_fold(0, |latest, c| {
            let first = c.first_probe_us.load(Ordering::Acquire);
            let is_live =
                !c.is_closed.load(Ordering::Acquire) && !c.is_resyncing.load(Ordering::Acquire);
            (is_live && first > 0).then_some(latest.max(first))
        })
    }

    /// Clients that are not connected and synced right now.
    pub fn disconnected(&self) -> usize {
        self.clients
            .iter()
            .filter(|c| {
                c.is_closed.load(Ordering::Acquire) || c.is_resyncing.load(Ordering::Acquire)
            })
            .count()
    }

    /// Clients whose last `seq` is below the room's (hush only; read from
    /// the API, so call it once nothing is being sent).
    pub async fn behind(&self) -> Result<usize> {
        let owner = self.owner.as_ref().context("a hush harness")?;
        let last = owner
            .room(hush::store::RoomId(self.room))
            .await
            .context("reading the room")?
            .last_seq;
        Ok(self
            .clients
            .iter()
            .filter(|c| c.last_seq.load(Ordering::Acquire) < last)
            .count())
    }

    pub fn redials(&self) -> Redials {
        let mut redials = Redials::default();
        for client in &self.clients {
            redials.reconnects += client.reconnects.load(Ordering::Relaxed);
            redials.failed_dials += client.failed_dials.load(Ordering::Relaxed);
            redials.replayed += client.replayed.load(Ordering::Relaxed);
            for code in client.closes.lock().expect("closes lock").iter() {
                *redials.close_codes.entry(*code).or_default() += 1;
            }
        }
        redials
    }

    /// Closes the connections of the last `count` clients, as a network
    /// drop would; with redialing on, they come back and resync.
    pub async fn cut(&mut self, count: usize) {
        for index in (0..self.sinks.len()).rev().take(count) {
            if let Some(fresh) = self.clients[index].take_fresh_sink() {
                self.sinks[index] = Some(fresh);
            }
            if let Some(sink) = self.sinks[index].as_mut() {
                let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
            }
        }
    }

    /// Closes every client and stops the readers.
    pub async fn close(mut self) {
        self.set_redialing(false);
        for (sink, client) in self.sinks.iter_mut().zip(&self.clients) {
            if let Some(fresh) = client.take_fresh_sink() {
                *sink = Some(fresh);
            }
        }
        for sink in self.sinks.iter_mut().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
        }
        for reader in self.readers.drain(..) {
            reader.abort();
        }
    }
}

/// Who a send loop sends as.
struct Sender {
    index: usize,
    client: Arc<ClientState>,
    shared: Arc<Shared>,
    flavor: Flavor,
    room: i64,
    tag: u8,
}

/// Sends on a ticker until `deadline` (by the clock, even mid-send, so a
/// sender held back by the server cannot stretch the step) or
/// `stop_sending`. A tick finding no connection (closed, not yet
/// redialed) is skipped; a reconnected socket is picked up at the next
/// tick. Returns the sink last used and how many frames were sent.
async fn send_loop(
    mut sink: Option<Sink>,
    from: Sender,
    rate: f64,
    payload: usize,
    deadline: Instant,
    phase: f64,
) -> (Option<Sink>, u64) {
    let mut maker = PayloadMaker::new(payload);
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    // Senders are spread over the period instead of all ticking at once.
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + period.mul_f64(phase), period);
    let mut sent = 0u64;
    // Bounded by count as well as by time.
    let ticks = (rate
        * deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64())
    .ceil() as u64
        + 1;
    let probe = from.shared.probe(from.tag);
    let acked = || from.client.tally(from.tag).acked.load(Ordering::Acquire);
    // Acks before this connection's first send, and sends on it.
    let (mut acked_before, mut sent_here) = (acked(), 0u64);
    for _ in 0..ticks {
        let at = ticker.tick().await.into_std();
        if at >= deadline
            || Instant::now() >= deadline
            || from.shared.stop_sending.load(Ordering::Acquire)
        {
            break;
        }
        if let Some(fresh) = from.client.take_fresh_sink() {
            sink = Some(fresh);
            // What was unacknowledged on the old connection is lost with it.
            (acked_before, sent_here) = (acked(), 0);
        }
        let at_us = micros_at(at);
        let window = from.shared.send_window.load(Ordering::Acquire);
        let window_full = from.flavor == Flavor::Hush
            && window > 0
            && sent_here.saturating_sub(acked() - acked_before) >= window;
        if window_full {
            from.shared.held_ticks.fetch_add(1, Ordering::Relaxed);
        }
        let Some(live) = sink.as_mut().filter(|_| !window_full) else {
            if let Some(on_time) = probe {
                on_time.missed(from.index, at_us);
            }
            continue;
        };
        let body = maker.stamp(at_us, from.tag);
        let text = match from.flavor {
            Flavor::Hush => send_frame(from.room, &format!("{}.{sent}", from.tag), &body),
            Flavor::Bare => body,
        };
        if let Some(on_time) = probe {
            on_time.will_send(from.index, at_us);
        }
        match tokio::time::timeout_at(deadline.into(), live.send(Message::text(text))).await {
            Ok(Ok(())) => {
                sent += 1;
                sent_here += 1;
            }
            Ok(Err(_)) => {
                sink = None;
                if let Some(on_time) = probe {
                    on_time.missed(from.index, at_us);
                }
            }
            Err(_) => break,
        }
    }
    (sink, sent)
}

/// Reads one client's socket until the harness stops it; after a close,
/// redials while the harness says so.
async fn read_loop(
    mut stream: SplitStream<Ws>,
    flavor: Flavor,
    room: i64,
    client: Arc<ClientState>,
    shared: Arc<Shared>,
    redial: Option<Redial>,
) {
    loop {
        let code = read_until_closed(&mut stream, flavor, room, &client, &shared).await;
        client.close_code.store(code, Ordering::Release);
        client.closes.lock().expect("closes lock").push(code);
        client.is_closed.store(true, Ordering::Release);
        let Some(redial) = &redial else { return };
        let keep_trying = || shared.is_redialing.load(Ordering::Acquire);
        if !keep_trying() {
            return;
        }
        let after = client.last_seq.load(Ordering::Acquire);
        let Some(redialed) = redial.dial(after, keep_trying).await else {
            return;
        };
        client
            .failed_dials
            .fetch_add(redialed.failed, Ordering::Relaxed);
        client.reconnects.fetch_add(1, Ordering::Relaxed);
        client.first_probe_us.store(0, Ordering::Release);
        client.is_resyncing.store(true, Ordering::Release);
        *client.fresh_sink.lock().expect("sink lock") = Some(redialed.sink);
        client.is_closed.store(false, Ordering::Release);
        stream = redialed.stream;
    }
}

/// Reads until the connection closes; the close code (0: none).
async fn read_until_closed(
    stream: &mut SplitStream<Ws>,
    flavor: Flavor,
    room: i64,
    client: &ClientState,
    shared: &Shared,
) -> u16 {
    while let Some(msg) = stream.next().await {
        let text = match msg {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(frame)) => return frame.map_or(0, |f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => return 0,
        };
        let stamp = match flavor {
            Flavor::Bare => read_stamp(&text),
            Flavor::Hush => read_hush_frame(&text, room, client, shared),
        };
        let Some((at, tag)) = stamp else { continue };
        if !shared.is_counted(tag) {
            client.stale.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let now = now_micros();
        let latency = now.saturating_sub(at);
        let tally = client.tally(tag);
        tally.delivered.fetch_add(1, Ordering::Relaxed);
        tally.last_us.fetch_max(now, Ordering::Relaxed);
        tally
            .latencies
            .lock()
            .expect("stats lock")
            .push(latency.min(u64::from(u32::MAX)) as u32);
        if let Some(on_time) = shared.probe(tag) {
            on_time.delivered(at, latency);
            let _ =
                client
                    .first_probe_us
                    .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
    0
}

/// Handles one hush frame: acks, errors, sync pages and the cursor; the
/// stamp of a live message entry that is new to this client.
fn read_hush_frame(
    text: &str,
    room: i64,
    client: &ClientState,
    shared: &Shared,
) -> Option<(u64, u8)> {
    let frame = serde_json::from_str::<Frame<'_>>(text).ok()?;
    match frame.kind {
        "entry" => {
            let entry = frame.entry.filter(|e| e.room == room)?;
            // While resyncing, the pages carry this entry; after, an entry
            // at or below the cursor is a duplicate.
            if client.is_resyncing.load(Ordering::Acquire)
                || entry.seq <= client.last_seq.load(Ordering::Acquire)
            {
                return None;
            }
            client.last_seq.store(entry.seq, Ordering::Release);
            if entry.kind != "message" {
                return None;
            }
            entry.body.and_then(read_stamp)
        }
        "page" if frame.room == Some(room) => {
            let page = serde_json::from_str::<PageRef>(text).ok()?;
            let mut last = client.last_seq.load(Ordering::Acquire);
            let mut fresh = 0;
            for entry in &page.entries {
                if entry.seq > last {
                    last = entry.seq;
                    fresh += 1;
                }
            }
            client.last_seq.store(last, Ordering::Release);
            client.replayed.fetch_add(fresh, Ordering::Relaxed);
            None
        }
        "synced" if frame.room == Some(room) => {
            if let Some(seq) = frame.seq {
                client.last_seq.fetch_max(seq, Ordering::AcqRel);
            }
            client.is_resyncing.store(false, Ordering::Release);
            None
        }
        "ack" => {
            let tag = frame
                .client_id
                .and_then(|id| id.split('.').next())
                .and_then(|tag| tag.parse::<u8>().ok())?;
            if shared.is_counted(tag) {
                client.tally(tag).acked.fetch_add(1, Ordering::Relaxed);
            }
            None
        }
        "error" => {
            client.errors.fetch_add(1, Ordering::Relaxed);
            None
        }
        _ => None,
    }
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
