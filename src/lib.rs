//! hush: a self-hosted, end-to-end encrypted chat service.
//!
//! - `protocol`: the wire contract (HTTP bodies, WebSocket frames).
//! - `server`: HTTP API, WebSocket sessions, the hub that routes frames.
//! - `store`: SQLite persistence; the only place with SQL.
//! - `crypto`: keys, signatures and (client side) message envelopes.
//! - `admin`: the operator's commands (`hush admin …`) and invite codes.
//! - `username`: the rules for usernames, shared by the server and the store.
//! - `certificate`: the server's TLS certificate, loaded and reloadable.
//! - `config`, `cli`: settings and the command line.
//! - `fuzzing`: the fuzz targets' entry points (see `fuzz/`).

// The API's filter (`server::routes::api`) is a long chain of warp `or`s;
// checking its future's auto traits needs more than the default depth.
#![recursion_limit = "256"]

pub mod admin;
pub mod certificate;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypto;
pub mod fuzzing;
pub mod histogram;
pub mod notify;
pub mod protocol;
pub mod server;
pub mod store;
pub mod username;
