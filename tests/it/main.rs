//! hush integration tests: each test starts its own server on an ephemeral
//! port with its own SQLite file (or, with HUSH_TEST_POSTGRES_URL set, its
//! own PostgreSQL database: see support.rs) and talks to it over HTTP and
//! WebSocket. Tests named `postgres_*` need PostgreSQL.

mod cli_support;
mod support;

mod admin;
mod cli;
mod cli_sessions;
mod client_store;
mod conversation;
mod crash;
mod delivery;
mod direct;
mod e2e;
mod heartbeat;
mod hostile;
mod keys;
mod lifecycle;
mod limits;
mod logging;
mod login;
mod membership;
mod memory_bound;
mod metrics;
mod migrate_pg;
mod nodes;
mod nodes_delivery;
mod nodes_faults;
mod outbox;
mod pg_server;
mod pg_writers;
mod presence;
mod protocol_errors;
mod registration;
mod registration_modes;
mod relations;
mod retention;
mod social;
mod storage_faults;
mod sync;
mod tls;
