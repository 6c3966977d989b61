//! Counters for `GET /metrics`, in the Prometheus text format.
//!
//! Process-wide atomics, so a call site needs one line and no handle (the
//! hub and the sessions count without knowing each other; the store's
//! commit times come from `store::commit_timing`). Labelled counters (errors and rate-limit rejections by kind) keep
//! at most `MAX_LABELS` distinct values; anything beyond counts as `other`,
//! so a client cannot grow the set. Every series carries the node id as a
//! `node` label, so that the series of several nodes stay apart however
//! they are scraped and merged.
//!
//! The route is off unless the operator sets a token (`--metrics-token`);
//! then it wants `Authorization: Bearer <token>`, compared in constant time.
//! A token and not a loopback check, because behind a reverse proxy every
//! request comes from loopback.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use subtle::ConstantTimeEq;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::error::ApiError;
use crate::config::Secret;
use crate::store::commit_timing::{COMMIT_BUCKETS, commit_times, direct_commits};

struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Self(AtomicU64::new(0))
    }
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

struct Gauge(AtomicI64);

impl Gauge {
    const fn new() -> Self {
        Self(AtomicI64::new(0))
    }
}

/// Decrements its gauge when dropped: a connection or session counts for
/// exactly as long as its task holds the guard.
pub struct GaugeGuard(&'static Gauge);

impl GaugeGuard {
    fn hold(gauge: &'static Gauge) -> Self {
        gauge.0.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

const MAX_LABELS: usize = 64;

struct Labelled(Mutex<BTreeMap<String, u64>>);

impl Labelled {
    const fn new() -> Self {
        Self(Mutex::new(BTreeMap::new()))
    }

    fn inc(&self, kind: &str) {
        let kind: String = kind
            .chars()
            .take(48)
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let mut map = self.0.lock().expect("metrics lock poisoned");
        let key = if map.contains_key(&kind) || map.len() < MAX_LABELS {
            kind
        } else {
            "other".to_owned()
        };
        *map.entry(key).or_insert(0) += 1;
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().expect("metrics lock poisoned").clone()
    }
}

static CONNECTIONS: Gauge = Gauge::new();
static SESSIONS: Gauge = Gauge::new();
static MESSAGES: Counter = Counter::new();
static MESSAGE_BYTES: Counter = Counter::new();
static FANOUT: Counter = Counter::new();
static FANOUT_DIRECT: Counter = Counter::new();
static SEND_HOLDS: Counter = Counter::new();
static SYNC_ENTRIES: Counter = Counter::new();
static ERRORS: Labelled = Labelled::new();
static RATE_LIMITED: Labelled = Labelled::new();

/// Counts an open WebSocket connection while the guard lives.
pub fn connection_opened() -> GaugeGuard {
    GaugeGuard::hold(&CONNECTIONS)
}

/// Counts an authenticated session while the guard lives.
pub fn session_started() -> GaugeGuard {
    GaugeGuard::hold(&SESSIONS)
}

/// A message stored in a room log, with its ciphertext size.
pub fn message_relayed(body_bytes: usize) {
    MESSAGES.add(1);
    MESSAGE_BYTES.add(body_bytes as u64);
}

/// A committed log entry: counts it if it is a message.
pub fn entry_committed(entry: &crate::store::Entry) {
    if entry.kind == crate::store::EntryKind::Message {
        message_relayed(entry.body.as_ref().map_or(0, Vec::len));
    }
}

/// One frame handed to one connection by the hub. Returns true, so the
/// hub's `retain` can keep the connection in the same expression.
pub fn fanout_delivered() -> bool {
    FANOUT.add(1);
    true
}

/// One of those frames written by the hub straight to an idle session's
/// socket (`outlet`).
pub fn fanout_written_directly() {
    FANOUT_DIRECT.add(1);
}

/// Log entries read for a sync page (what clients catching up cost).
pub fn entries_synced(count: u64) {
    SYNC_ENTRIES.add(count);
}

/// Senders began to be held because fan-out fell behind (`send_hold`).
pub fn senders_held() {
    SEND_HOLDS.add(1);
}

/// An error answered to a client or met by the server, by its code
/// (`not_found`, `too_large`, `slow_consumer`, ...).
pub fn error(kind: &str) {
    ERRORS.inc(kind);
}

/// A request refused by a rate limit, by the limit's name.
pub fn rate_limited(kind: &str) {
    RATE_LIMITED.inc(kind);
}

/// Every metric in the Prometheus text exposition format (version 0.0.4),
/// each series labelled `node="<node>"` (the node id: letters, digits,
/// `.`, `_`, `-` only, so it needs no escaping).
pub fn render(node: &str) -> String {
    let mut out = String::with_capacity(4096);
    let mut gauge = |name: &str, help: &str, value: i64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node=\"{node}\"}} {value}"
        );
    };
    gauge(
        "hush_connections",
        "Open WebSocket connections.",
        CONNECTIONS.0.load(Ordering::Relaxed),
    );
    gauge(
        "hush_sessions",
        "Authenticated WebSocket sessions.",
        SESSIONS.0.load(Ordering::Relaxed),
    );
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{node=\"{node}\"}} {value}"
        );
    };
    counter(
        "hush_messages_relayed_total",
        "Messages stored and relayed.",
        MESSAGES.get(),
    );
    counter(
        "hush_message_bytes_relayed_total",
        "Ciphertext bytes of the messages stored and relayed.",
        MESSAGE_BYTES.get(),
    );
    counter(
        "hush_fanout_deliveries_total",
        "Frames handed to a connection by the hub.",
        FANOUT.get(),
    );
    counter(
        "hush_fanout_direct_writes_total",
        "Of those, frames the hub wrote straight to an idle connection's socket (plain TCP only).",
        FANOUT_DIRECT.get(),
    );
    counter(
        "hush_sync_entries_total",
        "Log entries read for clients' sync pages.",
        SYNC_ENTRIES.get(),
    );
    counter(
        "hush_send_holds_total",
        "Times new messages were held because most recipients were backed up.",
        SEND_HOLDS.get(),
    );
    counter(
        "hush_db_direct_commits_total",
        "Log commits of plain messages made through SQLite's C API on the writer's thread (SQLite only; the rest go through sqlx).",
        direct_commits(),
    );
    let name = "hush_db_commit_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time to commit one batch of log writes.\n# TYPE {name} histogram"
    );
    let commits = commit_times();
    let mut cumulative = 0u64;
    for (at, count) in commits.buckets.iter().enumerate() {
        cumulative += count;
        let le = COMMIT_BUCKETS
            .get(at)
            .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
        let _ = writeln!(
            out,
            "{name}_bucket{{node=\"{node}\",le=\"{le}\"}} {cumulative}"
        );
    }
    let sum = commits.sum_seconds;
    let _ = writeln!(
        out,
        "{name}_sum{{node=\"{node}\"}} {sum}\n{name}_count{{node=\"{node}\"}} {cumulative}"
    );
    render_cross_node(&mut out, node);
    for (name, help, set) in [
        (
            "hush_errors_total",
            "Errors answered or met, by kind.",
            &ERRORS,
        ),
        (
            "hush_rate_limited_total",
            "Requests refused by a rate limit, by limit.",
            &RATE_LIMITED,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (kind, value) in set.snapshot() {
            let _ = writeln!(out, "{name}{{node=\"{node}\",kind=\"{kind}\"}} {value}");
        }
    }
    out
}

/// Cross-node delivery (`notify`, `server::fanout`): all zero on a single
/// node.
fn render_cross_node(out: &mut String, node: &str) {
    use crate::notify::stats;
    let mut line = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{node}\"}} {value}"
        );
    };
    line(
        "hush_node_listener_up",
        "gauge",
        "1 while the cross-node notification listener is connected.",
        stats::LISTENER_UP.get(),
    );
    line(
        "hush_node_listener_reconnects_total",
        "counter",
        "Times the notification listener connected again after losing its connection.",
        stats::LISTENER_RECONNECTS.get(),
    );
    line(
        "hush_node_notify_payloads_sent_total",
        "counter",
        "Notification payloads sent to other nodes.",
        stats::PAYLOADS_SENT.get(),
    );
    line(
        "hush_node_notify_send_failures_total",
        "counter",
        "Notification payloads that could not be sent (the catch-up read covers them).",
        stats::SEND_FAILURES.get(),
    );
    line(
        "hush_node_notify_payloads_received_total",
        "counter",
        "Notification payloads received from other nodes.",
        stats::PAYLOADS_RECEIVED.get(),
    );
    line(
        "hush_node_notices_received_total",
        "counter",
        "Notices received from other nodes.",
        stats::NOTICES_RECEIVED.get(),
    );
    line(
        "hush_node_remote_entries_total",
        "counter",
        "Entries committed by another node and delivered by this one.",
        stats::REMOTE_ENTRIES.get(),
    );
    line(
        "hush_node_gap_reads_total",
        "counter",
        "Store reads of entries this node had not been handed in order.",
        stats::GAP_READS.get(),
    );
    line(
        "hush_node_catchup_behind_total",
        "counter",
        "Rooms the periodic catch-up found behind the store (a notification lost or late).",
        stats::CATCHUP_BEHIND.get(),
    );
    let name = "hush_node_delivery_lag_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} From an entry's commit on another node to its delivery here.\n# TYPE {name} histogram"
    );
    let (buckets, sum) = stats::lag();
    let mut cumulative = 0u64;
    for (at, count) in buckets.iter().enumerate() {
        cumulative += count;
        let le = stats::LAG_BUCKETS
            .get(at)
            .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
        let _ = writeln!(
            out,
            "{name}_bucket{{node=\"{node}\",le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "{name}_sum{{node=\"{node}\"}} {sum}\n{name}_count{{node=\"{node}\"}} {cumulative}"
    );
}

/// GET /metrics — the text above, for a caller presenting the token.
pub fn route(
    token: Option<Secret>,
    node: String,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let node: std::sync::Arc<str> = node.into();
    warp::path!("metrics")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and_then(move |header: Option<String>| {
            let token = token.clone();
            let node = node.clone();
            async move {
                let Some(Secret(expected)) = token else {
                    return Err(warp::reject::not_found());
                };
                let presented = header
                    .as_deref()
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .unwrap_or("");
                let matches: bool = presented.as_bytes().ct_eq(expected.as_bytes()).into();
                if !matches {
                    return Err(warp::reject::custom(ApiError::unauthorized()));
                }
                let reply = warp::reply::with_header(
                    render(&node),
                    "content-type",
                    "text/plain; version=0.0.4; charset=utf-8",
                );
                Ok(warp::reply::with_status(reply, StatusCode::OK).into_response())
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sanitised_and_bounded() {
        let set = Labelled::new();
        set.inc("Bad Frame\n{x}");
        for i in 0..(MAX_LABELS + 10) {
            set.inc(&format!("kind{i}"));
        }
        let snap = set.snapshot();
        assert!(snap.contains_key("bad_frame__x_"), "{snap:?}");
        assert!(snap.len() <= MAX_LABELS + 1);
        assert!(snap["other"] >= 10);
    }

    #[test]
    fn every_series_carries_the_node_label() {
        error("labelled_for_the_test");
        let text = render("node-7");
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(samples.len() > 10, "{text}");
        for line in samples {
            let (series, _) = line.rsplit_once(' ').expect("a sample line");
            assert!(series.contains("{node=\"node-7\""), "{line}");
        }
        assert!(
            text.contains("hush_errors_total{node=\"node-7\",kind=\"labelled_for_the_test\"} ")
        );
    }
}
