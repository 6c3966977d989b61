//! The command line: `hush serve` (and, as they arrive, the client commands).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::ServerConfig;

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
pub enum Command {
    /// Run the chat server (HTTP API, WebSocket relay, SQLite log).
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Listening beyond loopback exposes the server;
    /// put TLS in front of it (see the README).
    #[arg(long, env = "HUSH_ADDR", default_value = "127.0.0.1:7878")]
    pub addr: SocketAddr,

    /// SQLite database file; its folder is created if missing.
    #[arg(long, env = "HUSH_DB", default_value = "data/hush.db")]
    pub db: PathBuf,

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl ServeArgs {
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            max_body_bytes: self.max_message_bytes,
            session_ttl: self.session_ttl,
            ..ServerConfig::default()
        }
    }
}
