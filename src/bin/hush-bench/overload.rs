//! `overload`: a fanout step far above the sustainable rate, then a light
//! load, and how long the server takes to recover.
//!
//! While the scenario runs, a client whose connection closes (the server's
//! 4009 for a reader that fell behind, or anything else) comes back as a
//! real client does: back-off, `auth` with its token, `sync` from the last
//! `seq` it has (see `redial`). The light load starts the moment the
//! overload's sending ends (`end`) and runs until the server has
//! recovered or `--recovery-bound` passed. **Recovered** means both:
//!
//! - every client is connected, has finished its resync and has received
//!   a light message live (entries reach a connection in order, so it then
//!   has the whole backlog before that message): `caught_up_ms`;
//! - every light message, for at least `--hold-secs`, reached all C
//!   clients within `--on-time-ms` of its scheduled send time: `on_time_ms`
//!   is the send time of the first message of that run.
//!
//! `recovery_ms` is the later of the two, counted from `end`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::{micros_at, now_micros};
use crate::fanout::{Harness, Redials, StepResult};
use crate::on_time::OnTime;

const OVERLOAD: u8 = 1;
const LIGHT: u8 = 2;
/// How often recovery is checked.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// After the light load stops: how long its last messages may take.
const LIGHT_DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, clap::Args)]
pub struct OverloadArgs {
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Per-sender rate during the overload: 2x the R≈577 a quiet `ramp`
    /// sustains (10 senders, 100 clients).
    #[arg(long, default_value_t = 1150.0)]
    pub rate: f64,
    /// Seconds of overload.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Per-sender rate of the light load that follows.
    #[arg(long, default_value_t = 10.0)]
    pub recovery_rate: f64,
    /// A light message is on time when it reaches a client within this.
    #[arg(long, default_value_t = 50)]
    pub on_time_ms: u64,
    /// Seconds of light messages that must all be on time at every client.
    #[arg(long, default_value_t = 1.0)]
    pub hold_secs: f64,
    /// Seconds after the overload's end to give up: "not recovered".
    #[arg(long, default_value_t = 30.0)]
    pub recovery_bound: f64,
    /// Most unacknowledged messages each sender keeps out, as a client
    /// that waits for acks does: a tick that finds the window full sends
    /// nothing and is counted as held. 0: no bound (the sender writes
    /// whatever its socket takes, and what the kernel buffered when the
    /// server held it is still delivered after the overload ends).
    #[arg(long, default_value_t = 256)]
    pub window: u64,
    /// Clients whose connection the bench closes halfway through the
    /// overload (a network drop), so the reconnect path runs even when
    /// the server cuts nobody off.
    #[arg(long, default_value_t = 0)]
    pub cut: usize,
}

impl OverloadArgs {
    pub fn quick() -> Self {
        Self {
            clients: 5,
            senders: 2,
            payload: 64,
            rate: 100.0,
            duration: 2.0,
            recovery_rate: 10.0,
            on_time_ms: 50,
            hold_secs: 1.0,
            recovery_bound: 20.0,
            window: 256,
            cut: 1,
        }
    }
}

/// When the server counted as recovered, in ms after the overload's end.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recovery {
    pub caught_up_ms: Option<u64>,
    pub on_time_ms: Option<u64>,
    /// Clients not connected and synced when the watch ended.
    pub disconnected: usize,
}

impl Recovery {
    pub fn recovery_ms(&self) -> Option<u64> {
        Some(self.caught_up_ms?.max(self.on_time_ms?))
    }

    pub fn is_recovered(&self) -> bool {
        self.recovery_ms().is_some()
    }
}

pub struct OverloadResult {
    pub overload: StepResult,
    pub light: StepResult,
    pub recovery: Recovery,
    pub redials: Redials,
    /// Sender ticks skipped because the sender's window was full.
    pub held_ticks: u64,
    /// Clients whose last `seq` was below the room's at the end (`None`:
    /// the room could not be read).
    pub behind: Option<usize>,
}

/// Runs the overload, then the light load until recovery or the bound.
/// Every phase is bounded: `duration`, then `recovery_bound`, then a
/// short drain.
pub async fn run(harness: &mut Harness, args: &OverloadArgs) -> OverloadResult {
    harness.set_redialing(true);
    harness.set_send_window(args.window);
    let duration = Duration::from_secs_f64(args.duration);
    let before = harness.begin(OVERLOAD);
    let end = Instant::now() + duration;
    let sending = harness.start_sending(args.senders, args.rate, args.payload, end);
    let started = sending.started();
    if args.cut > 0 {
        tokio::time::sleep_until((started + duration / 2).into()).await;
        harness.cut(args.cut).await;
    }
    let sent = harness.finish_sending(sending).await;
    let after_overload = harness.snapshot();

    let bound = Duration::from_secs_f64(args.recovery_bound);
    harness.follow(
        LIGHT,
        OnTime::new(
            harness.clients(),
            args.senders.clamp(1, harness.clients()),
            Duration::from_millis(args.on_time_ms),
        ),
    );
    let light_before = harness.begin(LIGHT);
    let light = harness.start_sending(args.senders, args.recovery_rate, args.payload, end + bound);
    let light_started = light.started();
    let recovery = watch(harness, end, bound, Duration::from_secs_f64(args.hold_secs)).await;
    harness.stop_sending();
    let light_sent = harness.finish_sending(light).await;
    harness.settle(LIGHT, light_sent, LIGHT_DRAIN).await;
    harness.set_redialing(false);
    harness.set_send_window(0);
    let after = harness.snapshot();
    let behind = harness.behind().await.ok();

    // The overload's figures count its messages until the last one arrived,
    // however late.
    let overload_secs = harness.last_delivery_us(OVERLOAD).map_or(duration, |last| {
        Duration::from_micros(last.saturating_sub(micros_at(started)))
    });
    OverloadResult {
        overload: harness.result(
            OVERLOAD,
            args.rate,
            sent,
            overload_secs,
            &before,
            &after_overload,
        ),
        light: harness.result(
            LIGHT,
            args.recovery_rate,
            light_sent,
            light_started.elapsed(),
            &light_before,
            &after,
        ),
        recovery,
        redials: harness.redials(),
        held_ticks: harness.held_ticks(),
        behind,
    }
}

/// Checks every `WATCH_EVERY` whether the server has recovered (see the
/// module doc), until `bound` after `end`.
async fn watch(harness: &Harness, end: Instant, bound: Duration, hold: Duration) -> Recovery {
    let end_us = micros_at(end);
    let hold_us = hold.as_micros() as u64;
    let ms_after_end = |us: u64| us.saturating_sub(end_us) / 1000;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let run = harness
            .on_time()
            .and_then(|on_time| on_time.good_run(now_micros()))
            .filter(|(first, newest)| newest - first >= hold_us);
        let caught_up = harness.caught_up_us();
        if let (Some((first, _)), Some(caught_up)) = (run, caught_up) {
            return Recovery {
                caught_up_ms: Some(ms_after_end(caught_up)),
                on_time_ms: Some(ms_after_end(first)),
                disconnected: 0,
            };
        }
        if Instant::now() >= end + bound {
            return Recovery {
                caught_up_ms: caught_up.map(ms_after_end),
                on_time_ms: run.map(|(first, _)| ms_after_end(first)),
                disconnected: harness.disconnected(),
            };
        }
    }
}

impl OverloadResult {
    /// The row saying whether and when the server recovered.
    pub fn recovery_row(&self, args: &OverloadArgs, clients: usize) -> String {
        let r = &self.recovery;
        let ms = |v: Option<u64>| v.map_or("never".to_owned(), |v| format!("{v} ms"));
        let verdict = match r.recovery_ms() {
            Some(ms) => format!("recovered in {ms} ms"),
            None => format!(
                "NOT recovered within {} s, {} clients not connected and synced",
                args.recovery_bound, r.disconnected
            ),
        };
        format!(
            "overload | {verdict} (all caught up: {}; every light message within {} ms at all {clients} clients for {} s from: {}) | {} closes {:?}, {} reconnects ({} failed dials), {} entries resynced | {} sender ticks held (window {}) | {} clients behind at the end",
            ms(r.caught_up_ms),
            args.on_time_ms,
            args.hold_secs,
            ms(r.on_time_ms),
            self.redials.close_codes.values().sum::<u64>(),
            self.redials.close_codes,
            self.redials.reconnects,
            self.redials.failed_dials,
            self.redials.replayed,
            self.held_ticks,
            args.window,
            self.behind.map_or("?".to_owned(), |b| b.to_string()),
        )
    }

    /// The recovery fields of the scenario's JSON line.
    pub fn json(&self, args: &OverloadArgs) -> Value {
        let r = &self.recovery;
        let codes: serde_json::Map<String, Value> = self
            .redials
            .close_codes
            .iter()
            .map(|(code, count)| (code.to_string(), json!(count)))
            .collect();
        json!({
            "recovered": r.is_recovered(),
            "recovery_ms": r.recovery_ms(),
            "caught_up_ms": r.caught_up_ms,
            "on_time_ms": r.on_time_ms,
            "on_time_within_ms": args.on_time_ms,
            "hold_s": args.hold_secs,
            "recovery_bound_s": args.recovery_bound,
            "disconnected_at_bound": r.disconnected,
            "closes": codes,
            "reconnects": self.redials.reconnects,
            "failed_dials": self.redials.failed_dials,
            "resynced_entries": self.redials.replayed,
            "held_ticks": self.held_ticks,
            "send_window": args.window,
            "clients_behind": self.behind,
        })
    }
}
