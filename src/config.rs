//! Server settings. `cli` fills them from flags and environment variables;
//! tests build them directly.

use std::time::Duration;

use crate::certificate::TlsReloader;

/// Who may create an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistrationMode {
    /// Anyone who can reach the server.
    Open,
    /// Only with a code from `hush admin invite`.
    Invite,
    /// Nobody (existing accounts keep working).
    Closed,
}

/// A secret setting: never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Tunables of a running server. Defaults suit a small deployment.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How often the server pings each connection.
    pub heartbeat_interval: Duration,
    /// A connection silent for longer than this is dropped.
    pub heartbeat_timeout: Duration,
    /// Largest message body accepted, in bytes after base64 decoding.
    pub max_body_bytes: usize,
    /// How long a login session token stays valid.
    pub session_ttl: Duration,
    /// How long a new connection may take to send its `auth` frame.
    pub auth_timeout: Duration,
    /// Entries per sync or history page.
    pub page_size: u32,
    /// Frames queued for one connection before it counts as too slow.
    pub outbound_queue: usize,
    /// Password hashes computed at once (each argon2id hash holds ~19 MiB).
    pub hashing_slots: usize,
    /// Failed logins for one account before further attempts are delayed.
    pub login_failures_before_delay: u32,
    /// Initial WebSocket read buffer per connection (grows for big frames).
    pub ws_read_buffer_bytes: usize,
    /// Outgoing control-frame bytes a connection gathers before writing
    /// (text frames are written straight from shared buffers: `wire`).
    pub ws_write_buffer_bytes: usize,
    /// What one client may make the server do (see `Limits`).
    pub limits: Limits,
    /// Who may register.
    pub registration: RegistrationMode,
    /// How often the server checks that each open socket's session still
    /// exists (logout elsewhere, `hush admin disable|delete|sessions
    /// revoke`, expiry) and closes the ones that do not.
    pub session_check_interval: Duration,
    /// With several nodes (PostgreSQL): how often each room followed here
    /// is compared with the store, so that an entry whose notification was
    /// lost is delivered after at most this long.
    pub catchup_interval: Duration,
    /// Delete messages older than this (`None`: keep everything).
    pub retention: Option<Duration>,
    /// How often retention runs (it also runs at start).
    pub retention_interval: Duration,
    /// Shortest disappearing-messages duration a timer statement may set
    /// (seconds; the longest is 4 weeks).
    pub min_disappearing_secs: u32,
    /// How often expired messages are turned into tombstones.
    pub expiry_interval: Duration,
    /// How long after an erasure the write-ahead log is checkpointed, so
    /// that erasures close together share one checkpoint.
    pub erase_checkpoint_delay: Duration,
    /// Bearer token that `GET /metrics` requires; without one the route is off.
    pub metrics_token: Option<Secret>,
    /// Serve HTTPS/WSS with this certificate (reloadable) instead of plain HTTP.
    pub tls: Option<TlsReloader>,
    /// This node's name in logs, `/healthz` and the `node` label of every
    /// `/metrics` series (several nodes sharing one PostgreSQL need
    /// different ones). See `parse_node_id` for what it may contain.
    pub node_id: String,
}

/// Longest node id.
pub const MAX_NODE_ID_CHARS: usize = 64;

/// A node id: 1 to 64 of `A-Z a-z 0-9 . _ -`, so that it can stand in a
/// log field, a JSON string and a Prometheus label value as it is.
pub fn parse_node_id(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= MAX_NODE_ID_CHARS
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a node id: 1 to {MAX_NODE_ID_CHARS} letters, digits, '.', '_' or '-'"
        ))
    }
}

/// The default node id: this machine's host name, or `node-1` if it has
/// none that is a valid node id.
pub fn default_node_id() -> String {
    let mut name = [0u8; 256];
    // SAFETY: the pointer and length describe `name`, which outlives the
    // call; gethostname writes at most that many bytes.
    let got = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0;
    let len = name.iter().position(|&b| b == 0).unwrap_or(0);
    std::str::from_utf8(&name[..len])
        .ok()
        .filter(|_| got)
        .and_then(|host| parse_node_id(host).ok())
        .unwrap_or_else(|| "node-1".to_owned())
}

/// A token bucket's shape: `burst` actions at once, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: u32,
}

impl Rate {
    pub const fn new(per_sec: f64, burst: u32) -> Self {
        Self { per_sec, burst }
    }
}

impl std::str::FromStr for Rate {
    type Err = String;

    /// `COUNT/UNIT[:BURST]`, UNIT one of `s`, `min`, `h`: `20/s:100` is 20
    /// per second with bursts of up to 100; the burst defaults to COUNT.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a rate like 20/s, 12/min or 20/s:100");
        let (rate, burst) = match text.split_once(':') {
            Some((rate, burst)) => (rate, Some(burst.trim().parse::<u32>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let secs = match unit.trim() {
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" | "hour" => 3600.0,
            _ => return Err(bad()),
        };
        let burst = burst.unwrap_or(count);
        if count == 0 || burst == 0 {
            return Err(format!("{text:?}: a rate and its burst must be at least 1"));
        }
        Ok(Self::new(f64::from(count) / secs, burst))
    }
}

/// Abuse limits. Each is documented in docs/PROTOCOL.md §14 with the error
/// a client gets past it. Addresses are the TCP peer's unless
/// `trust_proxy_header` names a header set by a reverse proxy.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Every frame a WebSocket connection sends, of any type. Past it the
    /// server stops reading that socket until a token is back.
    pub frames_per_connection: Rate,
    /// `send` frames per WebSocket connection.
    pub messages_per_connection: Rate,
    /// `send` frames per user, over all their connections.
    pub messages_per_user: Rate,
    /// `signal` frames per WebSocket connection (§21); past it a signal is
    /// dropped with `rate_limited`.
    pub signals_per_connection: Rate,
    /// Open WebSocket connections per client address (authenticated or not).
    pub connections_per_ip: usize,
    /// Authenticated WebSocket connections per user; a new one past this is refused.
    pub sessions_per_user: usize,
    /// Registration challenges plus registrations per client address.
    pub registrations_per_ip: Rate,
    /// Login attempts per client address.
    pub logins_per_ip: Rate,
    /// Failed logins from one address before its attempts are delayed
    /// (doubling, like the per-account throttle).
    pub login_failures_per_ip_before_delay: u32,
    /// Registration challenges outstanding at once, server-wide.
    pub pending_challenges: usize,
    /// Logins and registrations waiting for a hashing slot before more are
    /// refused with 503.
    pub hashing_queue: usize,
    /// Header holding the client address when hush runs behind a proxy
    /// (for example `X-Forwarded-For`; its last entry is used).
    pub trust_proxy_header: Option<String>,
    /// Most addresses or users each limiter tracks; idle entries go first.
    pub max_tracked: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            frames_per_connection: Rate::new(100.0, 200),
            messages_per_connection: Rate::new(20.0, 100),
            messages_per_user: Rate::new(40.0, 200),
            signals_per_connection: Rate::new(5.0, 20),
            connections_per_ip: 64,
            sessions_per_user: 16,
            registrations_per_ip: Rate::new(12.0 / 60.0, 20),
            logins_per_ip: Rate::new(1.0, 30),
            login_failures_per_ip_before_delay: 20,
            pending_challenges: 10_000,
            hashing_queue: 32,
            trust_proxy_header: None,
            max_tracked: 100_000,
        }
    }
}

impl Limits {
    /// No practical limit: for benchmarks that drive thousands of
    /// connections and messages from one address.
    pub fn unlimited() -> Self {
        let lots = Rate::new(1e9, u32::MAX);
        Self {
            frames_per_connection: lots,
            messages_per_connection: lots,
            messages_per_user: lots,
            signals_per_connection: lots,
            connections_per_ip: usize::MAX,
            sessions_per_user: usize::MAX,
            registrations_per_ip: lots,
            logins_per_ip: lots,
            login_failures_per_ip_before_delay: u32::MAX,
            pending_challenges: usize::MAX,
            hashing_queue: usize::MAX / 2,
            trust_proxy_header: None,
            max_tracked: 100_000,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(20),
            heartbeat_timeout: Duration::from_secs(60),
            max_body_bytes: 1024 * 1024,
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            auth_timeout: Duration::from_secs(10),
            page_size: 500,
            outbound_queue: 1024,
            hashing_slots: 2,
            login_failures_before_delay: 5,
            ws_read_buffer_bytes: 1024,
            ws_write_buffer_bytes: 16 * 1024,
            limits: Limits::default(),
            registration: RegistrationMode::Open,
            session_check_interval: Duration::from_secs(5),
            catchup_interval: Duration::from_secs(2),
            retention: None,
            retention_interval: Duration::from_secs(3600),
            min_disappearing_secs: 300,
            expiry_interval: Duration::from_secs(5),
            erase_checkpoint_delay: Duration::from_millis(500),
            metrics_token: None,
            tls: None,
            node_id: default_node_id(),
        }
    }
}

impl ServerConfig {
    /// Largest WebSocket message accepted: a maximal body in base64 plus
    /// room for the frame's other fields. Anything larger closes the socket
    /// with 1009; anything smaller but with too large a body gets an error
    /// frame and the connection stays open.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_body_bytes.div_ceil(3) * 4 * 2 + 64 * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::{Rate, default_node_id, parse_node_id};

    #[test]
    fn rates_parse_with_and_without_a_burst() {
        assert_eq!("20/s:100".parse(), Ok(Rate::new(20.0, 100)));
        assert_eq!("12/min".parse(), Ok(Rate::new(0.2, 12)));
        assert_eq!("36/h:5".parse(), Ok(Rate::new(0.01, 5)));
        for bad in ["20", "0/s", "5/s:0", "x/s", "5/week", "5/s:-1"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn node_ids_are_plain_names_and_the_default_is_one() {
        for good in ["node1", "web-2.example.org", "a", "N_3"] {
            assert_eq!(parse_node_id(good).as_deref(), Ok(good));
        }
        for bad in ["", "a b", "node\"1\"", "ü", &"x".repeat(65)] {
            assert!(parse_node_id(bad).is_err(), "{bad}");
        }
        assert!(parse_node_id(&default_node_id()).is_ok());
    }
}
