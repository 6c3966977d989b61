//! The command line: `hush serve` (and, as they arrive, the client commands).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};

mod social;
pub use social::{OnOff, Setting, SocialCommand};

use crate::certificate::TlsReloader;
use crate::config::{Limits, Rate, RegistrationMode, Secret, ServerConfig};
use crate::store::DbLocation;

#[derive(Debug, Parser)]
#[command(
    name = "hush",
    version,
    about = "Self-hosted, end-to-end encrypted chat in one binary"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the chat server (HTTP API, WebSocket relay, SQLite or PostgreSQL log).
    Serve(ServeArgs),
    /// Manage identity keys and trust in peers' keys.
    Keys {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Register your identity (from the key store) on the server.
    Register {
        #[command(flatten)]
        opts: ClientOpts,
        /// Invite code from the server's operator (servers in `invite` mode).
        #[arg(long, env = "HUSH_INVITE")]
        invite: Option<String>,
    },
    /// Create, join, leave and list rooms.
    Room {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(subcommand)]
        command: RoomCommand,
    },
    /// Send an end-to-end encrypted message or file.
    Send {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        args: SendArgs,
    },
    /// Change the text of one of your messages (by its #seq), for everyone.
    Edit {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        args: EditArgs,
    },
    /// Delete one of your messages (by its #seq) for everyone.
    Delete {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        args: SeqArgs,
    },
    /// React to a message (by its #seq) with an emoji; the same emoji again takes it back.
    React {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        args: ReactArgs,
    },
    /// Make new messages of a conversation disappear after a while, or stop it.
    Timer {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        args: TimerArgs,
    },
    /// Print a conversation, decrypted and checked.
    Read {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        args: ReadArgs,
    },
    /// Search the history this machine has read (locally: the server never sees the query).
    Search {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        args: SearchArgs,
    },
    /// Interactive terminal chat.
    Chat {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// End your saved login session on the server and delete it from the key store.
    Logout {
        #[command(flatten)]
        opts: ClientOpts,
    },
    #[command(flatten)]
    Social(SocialCommand),
    /// Operator tools on the server's database (works with the server running or not).
    Admin(AdminArgs),
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The server's database: its SQLite file, or a postgres:// URL.
    /// (`--help` hides HUSH_DB's value: a URL may hold a password.)
    #[arg(
        long,
        env = "HUSH_DB",
        hide_env_values = true,
        default_value = "data/hush.db",
        global = true
    )]
    pub db: DbLocation,

    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// List, disable, enable or delete accounts.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// End login sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Make single-use invite codes for `--registration invite`.
    Invite {
        /// How long each code stays valid (e.g. 7d, 12h).
        #[arg(long, default_value = "7days", value_parser = humantime::parse_duration)]
        expires: Duration,
        /// How many codes to make.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
    },
    /// Write a consistent copy of the live database to FILE (VACUUM INTO).
    Backup { file: PathBuf },
    /// Counts of users, rooms, messages, sessions and invites.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Copy every table of a SQLite database into an empty PostgreSQL
    /// database (ids and seqs kept, in one transaction), then check the
    /// copy table by table and room by room. Stop the server first.
    MigrateToPostgres {
        /// The SQLite database file to copy.
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL database, as a postgres:// URL: it must exist and
        /// hold no users yet (its tables are created if missing).
        #[arg(long)]
        to: DbLocation,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Every account, with its state, sessions and rooms.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Refuse USER's logins and end their sessions (sockets close within the server's session check interval).
    Disable { user: String },
    /// Let a disabled USER log in again.
    Enable { user: String },
    /// Delete USER's account: keys, sessions, memberships and invitations.
    Delete {
        user: String,
        /// Confirm: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// End every login session of USER (their sockets close within the server's session check interval).
    Revoke { user: String },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Listening beyond loopback exposes the server;
    /// put TLS in front of it (see the README).
    #[arg(long, env = "HUSH_ADDR", default_value = "127.0.0.1:7878")]
    pub addr: SocketAddr,

    /// The database: a SQLite file (its folder is created if missing), or a
    /// PostgreSQL database as a postgres:// or postgresql:// URL (it must
    /// exist; its tables are created). Several servers may share one
    /// PostgreSQL database.
    #[arg(
        long,
        env = "HUSH_DB",
        hide_env_values = true,
        default_value = "data/hush.db"
    )]
    pub db: DbLocation,

    /// How often the server pings each WebSocket (e.g. 20s, 500ms).
    #[arg(long, env = "HUSH_HEARTBEAT_INTERVAL", default_value = "20s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// Drop a WebSocket that sends nothing (not even a pong) for this long.
    #[arg(long, env = "HUSH_HEARTBEAT_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Duration,

    /// Largest message body accepted, in bytes (the ciphertext, before base64).
    #[arg(long, env = "HUSH_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_message_bytes: usize,

    /// How long a login session stays valid.
    #[arg(long, env = "HUSH_SESSION_TTL", default_value = "30days", value_parser = humantime::parse_duration)]
    pub session_ttl: Duration,

    /// Log filter: error, warn, info, debug, trace, or a tracing directive
    /// such as `hush=debug,warp=info`.
    #[arg(long, env = "HUSH_LOG", default_value = "info")]
    pub log_level: String,

    /// Log line format.
    #[arg(long, env = "HUSH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// `full`: a message is acknowledged only once it would survive a
    /// power loss (SQLite synchronous=FULL). `normal`: it survives a crash
    /// of hush, but the last moments before a power loss may be lost.
    #[arg(long, env = "HUSH_DURABILITY", value_enum, default_value_t = DurabilityArg::Full)]
    pub durability: DurabilityArg,

    /// Initial WebSocket read buffer per connection, in bytes (it grows for
    /// larger frames).
    #[arg(long, env = "HUSH_WS_READ_BUFFER", default_value_t = ServerConfig::default().ws_read_buffer_bytes)]
    pub ws_read_buffer: usize,

    /// Bytes of outgoing control frames (ping, pong, close) gathered per
    /// connection before a write; text frames bypass this buffer.
    #[arg(long, env = "HUSH_WS_WRITE_BUFFER", default_value_t = ServerConfig::default().ws_write_buffer_bytes)]
    pub ws_write_buffer: usize,

    /// Who may create an account: anyone (open), holders of a code from
    /// `hush admin invite` (invite), or nobody (closed).
    #[arg(long, env = "HUSH_REGISTRATION", value_enum, default_value_t = RegistrationMode::Open)]
    pub registration: RegistrationMode,

    /// Delete messages older than this many days (default: keep everything).
    #[arg(long, env = "HUSH_RETENTION_DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    pub retention_days: Option<u32>,

    /// Shortest disappearing-messages duration members may set, in seconds
    /// (the longest is 4 weeks).
    #[arg(long, env = "HUSH_MIN_DISAPPEARING_SECS", default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=2_419_200))]
    pub min_disappearing_secs: u32,

    /// How often messages past their disappearing time are erased.
    #[arg(long, env = "HUSH_EXPIRY_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub expiry_interval: Duration,

    /// How often open sockets are checked against the database, so that
    /// `hush admin` revocations and disabled accounts take effect.
    #[arg(long, env = "HUSH_SESSION_CHECK_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub session_check_interval: Duration,

    /// With several nodes on PostgreSQL: how often each node compares the
    /// rooms of its connected users with the store and delivers what a lost
    /// notification left behind.
    #[arg(long, env = "HUSH_CATCHUP_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub catchup_interval: Duration,

    /// Serve `GET /metrics` to requests with `Authorization: Bearer <this token>`
    /// (without it, /metrics is off).
    #[arg(long, env = "HUSH_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// PEM certificate chain: serve HTTPS and WSS (needs --tls-key). Reloaded
    /// on SIGHUP and when the file changes.
    #[arg(long, env = "HUSH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "HUSH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// This node's name in logs, /healthz and the `node` label of /metrics;
    /// nodes sharing one PostgreSQL need different ones (default: the host
    /// name, or node-1).
    #[arg(long, env = "HUSH_NODE_ID", value_parser = crate::config::parse_node_id)]
    pub node_id: Option<String>,

    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    Full,
    Normal,
}

impl From<DurabilityArg> for crate::store::Durability {
    fn from(arg: DurabilityArg) -> Self {
        match arg {
            DurabilityArg::Full => Self::Full,
            DurabilityArg::Normal => Self::Normal,
        }
    }
}

/// Abuse limits of `hush serve` (see docs/PROTOCOL.md §14). Rates are
/// `COUNT/UNIT[:BURST]` with UNIT `s`, `min` or `h`.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Frames of any type per WebSocket connection; past it the server
    /// reads that connection more slowly (TCP back-pressure), no error.
    #[arg(long, env = "HUSH_FRAME_RATE", default_value = "100/s:200")]
    pub frame_rate: Rate,

    /// `send` frames per WebSocket connection.
    #[arg(long, env = "HUSH_MESSAGE_RATE", default_value = "20/s:100")]
    pub message_rate: Rate,

    /// `send` frames per user, over all of their connections.
    #[arg(long, env = "HUSH_USER_MESSAGE_RATE", default_value = "40/s:200")]
    pub user_message_rate: Rate,

    /// Open WebSocket connections per client address.
    #[arg(long, env = "HUSH_CONNECTIONS_PER_IP", default_value_t = 64)]
    pub connections_per_ip: usize,

    /// Open WebSocket connections per user; more are refused (close 4029).
    #[arg(long, env = "HUSH_SESSIONS_PER_USER", default_value_t = 16)]
    pub sessions_per_user: usize,

    /// Registration challenges plus registrations per client address.
    #[arg(long, env = "HUSH_REGISTRATION_RATE", default_value = "12/min:20")]
    pub registration_rate: Rate,

    /// Login attempts per client address.
    #[arg(long, env = "HUSH_LOGIN_RATE", default_value = "60/min:30")]
    pub login_rate: Rate,

    /// Logins and registrations waiting for a password-hashing slot before
    /// more get 503.
    #[arg(long, env = "HUSH_HASHING_QUEUE", default_value_t = 32)]
    pub hashing_queue: usize,

    /// Take the client address from this header (its last entry) instead
    /// of the TCP peer. Only behind a reverse proxy that sets it, e.g.
    /// `X-Forwarded-For`; otherwise clients could claim any address.
    #[arg(long, env = "HUSH_TRUST_PROXY_HEADER")]
    pub trust_proxy_header: Option<String>,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            frames_per_connection: self.frame_rate,
            messages_per_connection: self.message_rate,
            messages_per_user: self.user_message_rate,
            connections_per_ip: self.connections_per_ip,
            sessions_per_user: self.sessions_per_user,
            registrations_per_ip: self.registration_rate,
            logins_per_ip: self.login_rate,
            hashing_queue: self.hashing_queue,
            trust_proxy_header: self.trust_proxy_header.clone(),
            ..Limits::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl ServeArgs {
    /// The server's settings; fails if the TLS files cannot be loaded.
    pub fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsReloader::load(cert, key)?),
            _ => None,
        };
        Ok(ServerConfig {
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            max_body_bytes: self.max_message_bytes,
            session_ttl: self.session_ttl,
            ws_read_buffer_bytes: self.ws_read_buffer.max(256),
            ws_write_buffer_bytes: self.ws_write_buffer,
            limits: self.limits.limits(),
            registration: self.registration,
            retention: self
                .retention_days
                .map(|days| Duration::from_secs(u64::from(days) * 24 * 3600)),
            session_check_interval: self.session_check_interval,
            catchup_interval: self.catchup_interval.max(Duration::from_millis(50)),
            min_disappearing_secs: self.min_disappearing_secs,
            expiry_interval: self.expiry_interval.max(Duration::from_millis(100)),
            metrics_token: self.metrics_token.clone().map(Secret),
            tls,
            node_id: self
                .node_id
                .clone()
                .unwrap_or_else(crate::config::default_node_id),
            ..ServerConfig::default()
        })
    }
}

/// Flags every client command shares.
#[derive(Debug, Clone, Args)]
pub struct ClientOpts {
    /// Base URL of the hush server.
    #[arg(
        long,
        global = true,
        env = "HUSH_SERVER",
        default_value = "http://127.0.0.1:7878"
    )]
    pub server: String,

    /// Your username (the identity in the key store).
    #[arg(long, short = 'u', global = true, env = "HUSH_USER")]
    pub user: Option<String>,

    /// Key store folder.
    #[arg(long, global = true, env = "HUSH_KEYS", default_value = "keys")]
    pub keys_dir: PathBuf,

    /// Trust only the PEM certificate(s) in this file for https/wss (a
    /// self-signed server or a private CA); default: the system's store.
    #[arg(long, global = true, env = "HUSH_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new identity key pair for USER (passphrase from HUSH_PASSPHRASE or a prompt).
    New {
        user: String,
        /// RSA key size: 2048, 3072 or 4096.
        #[arg(long, default_value_t = 3072)]
        bits: usize,
    },
    /// List the identities in the key store with their fingerprints.
    List,
    /// Show the fingerprint of a local identity.
    Show { user: String },
    /// Write USER's keys (still passphrase-protected) to FILE, to back up or move them.
    Export { user: String, file: PathBuf },
    /// Add the identity in FILE (from `keys export`) to the key store.
    Import { file: PathBuf },
    /// Make a new key, publish it with a statement signed by the old one, keep the old one for history.
    Rotate {
        #[arg(long, default_value_t = 3072)]
        bits: usize,
    },
    /// Show the safety number you share with PEER, to compare in person or by phone.
    Verify {
        peer: String,
        /// Record that you compared it and it matched.
        #[arg(long)]
        mark_verified: bool,
    },
    /// Accept PEER's current key after it changed without a valid rotation.
    Trust { peer: String },
    /// List the devices that sent as you in your rooms, and when each last did.
    Devices,
}

#[derive(Debug, Subcommand)]
pub enum RoomCommand {
    /// Create a group room.
    Create { name: String },
    /// Invite USER to ROOM (a room name or id).
    Invite {
        room: String,
        #[arg(value_name = "USER")]
        member: String,
    },
    /// Accept an invitation to ROOM (name or id).
    Join { room: String },
    /// Leave ROOM.
    Leave { room: String },
    /// Remove USER from ROOM (the room's creator or an admin).
    Remove {
        room: String,
        #[arg(value_name = "USER")]
        member: String,
    },
    /// List ROOM's creator and admins.
    Admins { room: String },
    /// Make USER an admin of ROOM (the creator only): admins can remove members.
    Promote {
        room: String,
        #[arg(value_name = "USER")]
        member: String,
    },
    /// Take USER's admin rights in ROOM away (the creator only).
    Demote {
        room: String,
        #[arg(value_name = "USER")]
        member: String,
    },
    /// List your rooms, DMs and pending invitations.
    List,
}

/// Which conversation a command is about.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// A group room, by name or id.
    #[arg(long)]
    pub room: Option<String>,
    /// The DM with this user.
    #[arg(long = "to", visible_alias = "with")]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub target: Target,
    /// The text to send; `-` reads it from standard input.
    pub text: Option<String>,
    /// Send this file (image, audio, anything) instead of text.
    #[arg(long, conflicts_with = "text")]
    pub file: Option<PathBuf>,
    /// Reply to the message with this #seq (as `hush read` shows it).
    #[arg(long, value_name = "SEQ")]
    pub reply: Option<i64>,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub target: Target,
    /// The #seq of your message to change.
    pub seq: i64,
    /// Its whole new text; `-` reads it from standard input.
    pub text: String,
}

#[derive(Debug, Args)]
pub struct SeqArgs {
    #[command(flatten)]
    pub target: Target,
    /// The #seq of the message.
    pub seq: i64,
}

#[derive(Debug, Args)]
pub struct ReactArgs {
    #[command(flatten)]
    pub target: Target,
    /// The #seq of the message.
    pub seq: i64,
    /// The emoji (any text of 1 to 64 bytes without control characters).
    pub emoji: String,
}

#[derive(Debug, Args)]
pub struct TimerArgs {
    #[command(flatten)]
    pub target: Target,
    /// `off`, `5m`, `1h`, `8h`, `1d`, `1w`, `4w`, or any `<N>s` (the server
    /// has a minimum, 5 minutes unless its operator changed it).
    pub duration: String,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub target: Target,
    /// Keep running and print new messages as they arrive.
    #[arg(long)]
    pub follow: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Where received attachments are saved.
    #[arg(long, default_value = "downloads")]
    pub save_dir: PathBuf,
    /// Only the newest N entries (default: the whole conversation).
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Only entries from TIME on: an RFC 3339 time (`2026-12-04T09:00:00Z`)
    /// or how long ago (`90min`, `2h`, `3days`).
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<SystemTime>,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The words to find (every one must be in a message; a file matches by its name).
    pub text: String,
    /// Only this room (name or id) or DM (`@USER`).
    #[arg(long)]
    pub room: Option<String>,
}

/// `--since`: an RFC 3339 time, or a duration before now.
fn parse_since(value: &str) -> Result<SystemTime, String> {
    if let Ok(time) = humantime::parse_rfc3339_weak(value) {
        return Ok(time);
    }
    match humantime::parse_duration(value) {
        Ok(ago) => SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("{value} ago is before the epoch")),
        Err(_) => Err(format!(
            "{value:?} is neither a time (2026-12-04T09:00:00Z) nor a duration (2h, 3days)"
        )),
    }
}
