//! Server settings. `cli` fills them from flags and environment variables;
//! tests build them directly.

use std::time::Duration;

use crate::server::tls::TlsReloader;

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
    /// Who may register.
    pub registration: RegistrationMode,
    /// How often the server checks that each open socket's session still
    /// exists (logout elsewhere, `hush admin disable|delete|sessions
    /// revoke`, expiry) and closes the ones that do not.
    pub session_check_interval: Duration,
    /// Delete messages older than this (`None`: keep everything).
    pub retention: Option<Duration>,
    /// How often retention runs (it also runs at start).
    pub retention_interval: Duration,
    /// Bearer token that `GET /metrics` requires; without one the route is off.
    pub metrics_token: Option<Secret>,
    /// Serve HTTPS/WSS with this certificate (reloadable) instead of plain HTTP.
    pub tls: Option<TlsReloader>,
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
            registration: RegistrationMode::Open,
            session_check_interval: Duration::from_secs(5),
            retention: None,
            retention_interval: Duration::from_secs(3600),
            metrics_token: None,
            tls: None,
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
