//! Client side: the HTTP API, the reconnecting WebSocket link, and (with
//! the crypto module) what every command shares.

pub mod account;
pub mod api;
pub mod chat;
pub mod commands;
pub mod conversation;
pub mod device;
pub mod directory;
pub mod keystore;
pub mod link;
pub mod local_seal;
pub mod outbox;
pub mod relations;
pub mod session;
pub mod session_file;
pub mod settings;
pub mod signals;
pub mod social;
pub mod store;
pub mod tls;
pub mod transcript;
