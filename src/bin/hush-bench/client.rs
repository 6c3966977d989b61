//! What every scenario shares on the client side: bench users (one RSA key
//! for all of them), WebSocket connections speaking the real protocol,
//! payloads carrying their send time, and latency summaries.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt, TryStreamExt, stream};
use hush::client::api::Api;
use hush::crypto::keys::IdentityPrivateKey;
use hush::protocol::b64;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest wait for a single reply during setup (auth, HTTP calls).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "bench-password-not-secret";

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Fixes the clock origin for embedded timestamps; call once at start.
pub fn start_clock() {
    EPOCH.get_or_init(Instant::now);
}

/// Microseconds since `start_clock` for `at` (the bench is the only
/// process that writes and reads these stamps, so a monotonic clock works).
pub fn micros_at(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH.get_or_init(Instant::now))
        .as_micros() as u64
}

pub fn now_micros() -> u64 {
    micros_at(Instant::now())
}

/// Random payload bytes whose first 8 bytes are a send time (µs, LE) and
/// whose 9th byte tags the step it belongs to.
pub struct PayloadMaker {
    buf: Vec<u8>,
}

impl PayloadMaker {
    pub fn new(size: usize) -> Self {
        let mut buf = vec![0u8; size.max(9)];
        getrandom::fill(&mut buf).expect("the OS random source works");
        Self { buf }
    }

    /// The payload stamped with `at_micros` and `tag`, in base64.
    pub fn stamp(&mut self, at_micros: u64, tag: u8) -> String {
        self.buf[..8].copy_from_slice(&at_micros.to_le_bytes());
        self.buf[8] = tag;
        b64::encode(&self.buf)
    }
}

/// Reads the stamp from the base64 text of a payload: only its first 12
/// characters (9 bytes) are decoded.
pub fn read_stamp(body_b64: &str) -> Option<(u64, u8)> {
    let head = b64::decode(body_b64.get(..12)?).ok()?;
    let at = u64::from_le_bytes(head.get(..8)?.try_into().ok()?);
    Some((at, head[8]))
}

pub fn send_frame(room: i64, client_id: &str, body_b64: &str) -> String {
    format!(
        r#"{{"v":1,"type":"send","room":{room},"client_id":"{client_id}","body":"{body_b64}"}}"#
    )
}

/// Asks for every entry of `room` after `after` (pages, then `synced`).
pub fn sync_frame(room: i64, after: i64) -> String {
    format!(r#"{{"v":1,"type":"sync","rooms":[{{"room":{room},"after":{after}}}]}}"#)
}

/// The few fields the bench reads from server frames, borrowed.
#[derive(Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    #[serde(default, borrow)]
    pub entry: Option<EntryRef<'a>>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub room: Option<i64>,
    /// `synced`: the last `seq` of the sync.
    #[serde(default)]
    pub seq: Option<i64>,
    /// `ack`: the `client_id` of the acknowledged `send`.
    #[serde(default, borrow)]
    pub client_id: Option<&'a str>,
    #[serde(default)]
    pub duplicate: bool,
}

#[derive(Deserialize)]
pub struct EntryRef<'a> {
    #[serde(default)]
    pub room: i64,
    #[serde(default)]
    pub seq: i64,
    #[serde(borrow)]
    pub kind: &'a str,
    #[serde(default, borrow)]
    pub body: Option<&'a str>,
}

/// A `page` frame's entries, down to their `seq`.
#[derive(Deserialize)]
pub struct PageRef {
    pub entries: Vec<SeqRef>,
}

#[derive(Deserialize)]
pub struct SeqRef {
    pub seq: i64,
}

/// A registered, logged-in bench user.
pub struct User {
    pub name: String,
    pub api: Api,
    pub token: String,
}

/// Registers users against one server. Every user gets the same identity
/// key: registration only checks that the proof is valid, and one key
/// keeps setup cheap.
pub struct Bench {
    base: String,
    key: Arc<IdentityPrivateKey>,
    run_tag: String,
}

impl Bench {
    pub fn new(base: &str, key: Arc<IdentityPrivateKey>) -> Self {
        let mut tag = [0u8; 3];
        getrandom::fill(&mut tag).expect("the OS random source works");
        let run_tag = tag.iter().map(|b| format!("{b:02x}")).collect();
        Self {
            base: base.to_owned(),
            key,
            run_tag,
        }
    }

    /// Registers and logs in `count` users named `b<run>-<prefix><i>`,
    /// a few at a time (the server hashes passwords in a bounded pool).
    pub async fn users(&self, prefix: &str, count: usize) -> Result<Vec<User>> {
        let names: Vec<String> = (0..count)
            .map(|i| format!("b{}-{prefix}{i}", self.run_tag))
            .collect();
        let mut users: Vec<(usize, User)> = stream::iter(names.into_iter().enumerate())
            .map(|(i, name)| async move { Ok::<_, anyhow::Error>((i, self.user(name).await?)) })
            .buffer_unordered(8)
            .try_collect()
            .await?;
        users.sort_by_key(|(i, _)| *i);
        Ok(users.into_iter().map(|(_, u)| u).collect())
    }

    async fn user(&self, name: String) -> Result<User> {
        let api = Api::new(&self.base);
        let key = self.key.clone();
        tokio::time::timeout(
            SETUP_TIMEOUT,
            api.register(
                &name,
                PASSWORD,
                key.public().spki_der(),
                None,
                |statement| {
                    key.sign(statement)
                        .expect("signing with a freshly generated key works")
                },
            ),
        )
        .await
        .context("registration timed out")?
        .with_context(|| format!("registering {name}"))?;
        let (api, login) = tokio::time::timeout(SETUP_TIMEOUT, api.login(&name, PASSWORD))
            .await
            .context("login timed out")?
            .with_context(|| format!("logging in {name}"))?;
        Ok(User {
            name,
            api,
            token: login.token,
        })
    }
}

/// Opens a WebSocket with TCP_NODELAY. `small` shrinks the client's read
/// buffer (tungstenite's default is 128 KiB) so thousands of idle client
/// connections stay cheap.
pub async fn connect_ws(url: &str, small: bool) -> Result<Ws> {
    let config = small.then(|| WebSocketConfig::default().read_buffer_size(4096));
    let (ws, _) = tokio::time::timeout(SETUP_TIMEOUT, connect_async_with_config(url, config, true))
        .await
        .context("WebSocket connect timed out")?
        .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

/// Sends the `auth` frame and waits for `ready` (bounded in frames and time).
pub async fn authenticate(ws: &mut Ws, token: &str) -> Result<()> {
    let auth = format!(r#"{{"v":1,"type":"auth","token":"{token}"}}"#);
    ws.send(Message::text(auth)).await.context("sending auth")?;
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    for _ in 0..1000 {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("no ready frame in time")?
            .context("connection closed before ready")?
            .context("reading ready")?;
        if let Message::Text(text) = msg {
            let frame: Frame<'_> = serde_json::from_str(&text).context("parsing a frame")?;
            match frame.kind {
                "ready" => return Ok(()),
                "error" => bail!("auth refused: {}", frame.code.unwrap_or_default()),
                _ => {}
            }
        }
    }
    bail!("no ready frame among the first 1000 frames")
}

pub async fn connect_authenticated(url: &str, token: &str, small: bool) -> Result<Ws> {
    let mut ws = connect_ws(url, small).await?;
    authenticate(&mut ws, token).await?;
    Ok(ws)
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub count: usize,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(mut samples: Vec<u32>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            u64::from(samples[i])
        };
        Self {
            count: samples.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: u64::from(*samples.last().expect("not empty")),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "samples": self.count, "p50_us": self.p50, "p90_us": self.p90, "p99_us": self.p99, "max_us": self.max,
        })
    }

    pub fn human(&self) -> String {
        format!(
            "p50 {} p90 {} p99 {} max {}",
            fmt_us(self.p50),
            fmt_us(self.p90),
            fmt_us(self.p99),
            fmt_us(self.max)
        )
    }
}

pub fn fmt_us(us: u64) -> String {
    if us < 1000 {
        format!("{us}µs")
    } else {
        format!("{:.1}ms", us as f64 / 1000.0)
    }
}

/// What `pump` did on one connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pumped {
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    /// Acks saying the `client_id` was already stored (a bench bug if not 0).
    pub duplicates: u64,
    /// From the first send to the last ack.
    pub elapsed: Duration,
}

/// Sends messages to `room` (client ids `<id_prefix><n>`, which must be
/// unique per user) as fast as acks allow, keeping at most
/// `window` unacknowledged, until `max` were sent or `until` passed; then
/// waits (at most 30 s) for the outstanding acks. Entries and other frames
/// arriving on the connection are read and ignored.
pub async fn pump(
    ws: Ws,
    room: i64,
    id_prefix: String,
    max: u64,
    until: Instant,
    window: usize,
    payload: usize,
) -> Result<Pumped> {
    let started = Instant::now();
    let (mut sink, mut stream) = ws.split();
    let permits = Arc::new(Semaphore::new(window.max(1)));
    let sent = Arc::new(AtomicU64::new(0));
    let is_done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (permits, sent, is_done) = (permits.clone(), sent.clone(), is_done.clone());
        tokio::spawn(async move {
            let mut maker = PayloadMaker::new(payload);
            let mut n = 0u64;
            'sending: while n < max && Instant::now() < until {
                let Ok(permit) = permits.acquire().await else {
                    break;
                };
                permit.forget();
                // Queue every send the window allows, then flush once: a
                // client with many messages ready writes them together.
                loop {
                    let body = maker.stamp(now_micros(), 0);
                    let frame = send_frame(room, &format!("{id_prefix}{n}"), &body);
                    if sink.feed(Message::text(frame)).await.is_err() {
                        break 'sending;
                    }
                    n += 1;
                    if n >= max {
                        break;
                    }
                    match permits.try_acquire() {
                        Ok(permit) => permit.forget(),
                        Err(_) => break,
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
                sent.store(n, Ordering::Release);
            }
            is_done.store(true, Ordering::Release);
            sink
        })
    };
    let mut result = Pumped::default();
    let hard_stop = tokio::time::Instant::from_std(until) + Duration::from_secs(30);
    let mut last_ack = started;
    loop {
        if is_done.load(Ordering::Acquire)
            && result.acked + result.errors >= sent.load(Ordering::Acquire)
        {
            break;
        }
        if tokio::time::Instant::now() >= hard_stop {
            break;
        }
        let next = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        let msg = match next {
            Err(_) => continue,
            Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(msg))) => msg,
        };
        let Message::Text(text) = msg else { continue };
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text) else {
            continue;
        };
        match frame.kind {
            "ack" => {
                result.acked += 1;
                result.duplicates += u64::from(frame.duplicate);
                last_ack = Instant::now();
                permits.add_permits(1);
            }
            "error" => {
                result.errors += 1;
                permits.add_permits(1);
            }
            _ => {}
        }
    }
    permits.close();
    let mut sink = writer.await.context("the pump writer panicked")?;
    let _ = sink.close().await;
    result.sent = sent.load(Ordering::Acquire);
    result.elapsed = last_ack.saturating_duration_since(started);
    Ok(result)
}
