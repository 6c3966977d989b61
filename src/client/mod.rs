//! Client side: the HTTP API, the reconnecting WebSocket link, and (with
//! the crypto module) what every command shares.

pub mod api;
pub mod link;
