//! `hush-bench`: load and latency benchmarks for hush (issue 5).
//!
//! Starts the server itself (in this process, or as a child `hush serve`
//! for memory figures) on a temp database, or targets a running one with
//! `--server`. Registers its own users through the HTTP API and drives real
//! WebSocket clients with random payloads. Each scenario prints a human
//! row and one JSON line starting with `{"scenario":`. `--baseline` runs
//! `fanout`/`ramp` against a bare relay in the same invocation too.
//! Every loop is bounded in count and time.

mod client;
mod client_store;
mod conns;
mod crypto;
mod dm;
mod fanout;
mod notify;
mod on_time;
mod overload;
mod placement;
mod presence;
mod redial;
mod relay;
mod sync;
mod target;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hush::crypto::keys::IdentityPrivateKey;
use serde_json::{Value, json};

use client::{Bench, fmt_us};
use client_store::ClientArgs;
use conns::{ConnArgs, IdleArgs};
use crypto::CryptoArgs;
use dm::DmArgs;
use fanout::{FanoutArgs, Harness, RampArgs};
use notify::NotifyArgs;
use overload::OverloadArgs;
use presence::PresenceArgs;
use relay::Relay;
use sync::SyncArgs;
use target::{Placement, Target};

#[derive(Debug, Parser)]
#[command(name = "hush-bench", about = "Benchmarks for the hush server", version)]
struct Cli {
    /// Target a running server (e.g. http://127.0.0.1:7878) instead of
    /// starting one.
    #[arg(long, global = true)]
    server: Option<String>,
    /// Start this `hush` binary as a child (`hush serve`) for every
    /// scenario. By default the server runs in this process, except for
    /// `idle`, which uses the `hush` binary next to this one if present.
    #[arg(long, global = true)]
    spawn_binary: Option<PathBuf>,
    /// Also run `fanout`/`ramp` against a bare relay (hush's WebSocket
    /// upgrade and settings, no auth, no storage) and report hush/bare
    /// ratios.
    #[arg(long, global = true)]
    baseline: bool,
    /// With `all`: tiny sizes, a few seconds per scenario (the smoke test).
    #[arg(long, global = true)]
    quick: bool,
    /// A PostgreSQL server (postgres://user:pass@host:port/db, a role that
    /// may create databases): every server the bench starts gets a fresh
    /// database on it, dropped afterwards, instead of a SQLite file.
    #[arg(long, global = true, value_name = "URL")]
    postgres: Option<String>,
    /// Start this many `hush serve` nodes on one PostgreSQL database and
    /// spread the clients over them (`fanout`, `ramp`; needs --postgres).
    #[arg(long, global = true, default_value_t = 1)]
    nodes: usize,
    /// Hold each child `hush serve` to this share of one CPU (a cgroup
    /// quota; needs root or a delegated cgroup), e.g. 0.25.
    #[arg(long, global = true, value_name = "CPUS")]
    cpu_quota: Option<f64>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// C clients in one room, S senders at R msgs/s each (open loop).
    Fanout(FanoutArgs),
    /// Fanout with R raised stepwise until p99 > 250 ms or loss > 0.1 %.
    Ramp(RampArgs),
    /// N one-to-one pairs sending as fast as acks allow: durable msgs/s.
    Dm(DmArgs),
    /// Fill a room with M messages, then time a sync from 0.
    Sync(SyncArgs),
    /// Authenticated connections per second.
    Connect(ConnArgs),
    /// Server RSS per idle authenticated connection.
    Idle(IdleArgs),
    /// Client-side sender-key rotation, seal and open for a large room.
    Crypto(CryptoArgs),
    /// Fanout far above the sustainable rate, then a light load until the
    /// server recovered: recovery time (clients reconnected, resynced and
    /// on time again), server RSS (child) and log volume.
    Overload(OverloadArgs),
    /// N accounts of one room with M connections each connect at once,
    /// then all reconnect after a server restart: connects/s, presence
    /// frames per connection, server CPU and peak RSS; the bare relay takes
    /// as many connects beside it.
    Presence(PresenceArgs),
    /// PostgreSQL's commit rate with no notification, with hush's
    /// announcer beside the data commits, and with NOTIFY inside each data
    /// transaction (needs --postgres).
    Notify(NotifyArgs),
    /// The CLI's local store on a long room: the real `hush` binary's
    /// first `read --last 50` (empty store), then `send` and `read --last 50`.
    Client(ClientArgs),
    /// Every scenario in turn (use --quick for the smoke-test sizes).
    All,
    /// Internal: serve the bare relay in this process until stdin closes
    /// (the `presence` scenario's baseline runs in a child).
    #[command(hide = true)]
    ServeRelay,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    client::start_clock();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Scenario::ServeRelay = cli.scenario {
        return relay::serve_until_stdin_closes().await;
    }
    eprintln!("generating one RSA-2048 identity key for every bench user…");
    let key =
        Arc::new(IdentityPrivateKey::generate(2048, |_| {}).context("generating the bench key")?);
    match &cli.scenario {
        Scenario::Fanout(args) => fanout_scenario(&cli, &key, args).await,
        Scenario::Ramp(args) => ramp_scenario(&cli, &key, args).await,
        Scenario::Dm(args) => dm_scenario(&cli, &key, args).await,
        Scenario::Sync(args) => sync_scenario(&cli, &key, args).await,
        Scenario::Connect(args) => connect_scenario(&cli, &key, args).await,
        Scenario::Idle(args) => idle_scenario(&cli, &key, &args.conn_args()).await,
        Scenario::Crypto(args) => crypto_scenario(&key, args),
        Scenario::Overload(args) => overload_scenario(&cli, &key, args).await,
        Scenario::Presence(args) => presence_scenario(&cli, &key, args).await,
        Scenario::ServeRelay => unreachable!("served above"),
        Scenario::Client(args) => client_scenario(&cli, &key, args).await,
        Scenario::Notify(args) => notify_scenario(&cli, args).await,
        Scenario::All => {
            let quick = cli.quick;
            let fan = if quick {
                FanoutArgs::quick()
            } else {
                defaults::<FanoutArgs>()
            };
            let ramp = if quick {
                RampArgs::quick()
            } else {
                defaults::<RampArgs>()
            };
            let dm = if quick {
                DmArgs::quick()
            } else {
                defaults::<DmArgs>()
            };
            let sync = if quick {
                SyncArgs::quick()
            } else {
                defaults::<SyncArgs>()
            };
            let connect = if quick {
                ConnArgs::quick()
            } else {
                defaults::<ConnArgs>()
            };
            let idle = if quick {
                ConnArgs::quick()
            } else {
                defaults::<IdleArgs>().conn_args()
            };
            let crypto = if quick {
                CryptoArgs::quick()
            } else {
                defaults::<CryptoArgs>()
            };
            fanout_scenario(&cli, &key, &fan).await?;
            ramp_scenario(&cli, &key, &ramp).await?;
            dm_scenario(&cli, &key, &dm).await?;
            sync_scenario(&cli, &key, &sync).await?;
            connect_scenario(&cli, &key, &connect).await?;
            idle_scenario(&cli, &key, &idle).await?;
            if quick {
                overload_scenario(&cli, &key, &OverloadArgs::quick()).await?;
            }
            let presence = if quick {
                PresenceArgs::quick()
            } else {
                defaults::<PresenceArgs>()
            };
            presence_scenario(&cli, &key, &presence).await?;
            let client = if quick {
                ClientArgs::quick()
            } else {
                defaults::<ClientArgs>()
            };
            client_scenario(&cli, &key, &client).await?;
            crypto_scenario(&key, &crypto)
        }
    }
}

/// A scenario's full-size settings: its command-line defaults, so `all`
/// and the single scenarios cannot drift apart.
fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults"));
    T::from_arg_matches(&command.get_matches_from(["defaults"]))
        .expect("every scenario flag has a default")
}

/// The server for one scenario: `--server`, else `--spawn-binary`, else a
/// child from the sibling `hush` binary when `prefer_child`, else in-process.
/// Child servers are used whenever the placement needs them.
async fn start_target(cli: &Cli, prefer_child: bool) -> Result<Target> {
    if let Some(url) = &cli.server {
        return Ok(Target::external(url));
    }
    let placement = cli.placement();
    if let Some(binary) = &cli.spawn_binary {
        return Target::child(binary, &placement).await;
    }
    if (prefer_child || placement.needs_children())
        && let Some(binary) = target::sibling_hush()
    {
        return Target::child(&binary, &placement).await;
    }
    Target::in_process(&placement).await
}

impl Cli {
    fn placement(&self) -> Placement {
        Placement {
            postgres: self.postgres.clone(),
            nodes: self.nodes.max(1),
            cpu_quota: self.cpu_quota,
        }
    }
}

fn emit(rows: &[String], line: Value) {
    for row in rows {
        println!("{row}");
    }
    println!("{line}");
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn ratio(hush: f64, bare: f64) -> Option<f64> {
    (bare > 0.0).then(|| (hush / bare * 1000.0).round() / 1000.0)
}

async fn fanout_scenario(
    cli: &Cli,
    key: &Arc<IdentityPrivateKey>,
    args: &FanoutArgs,
) -> Result<()> {
    // A child server when the hush binary is at hand, so the server's CPU
    // time per delivery can be read apart from the clients'.
    let target = start_target(cli, true).await?;
    let bench = Bench::new(&target.base, key.clone());
    let outcome = async {
        let mut harness =
            Harness::hush(&bench, &target.ws_urls, args.clients, args.senders).await?;
        let cpu_before = target.server_cpu_secs();
        let result = fanout::fanout(&mut harness, args).await;
        let cpu = cpu_before.zip(target.server_cpu_secs()).map(|(b, a)| a - b);
        harness.close().await;
        Ok::<_, anyhow::Error>((result, cpu))
    }
    .await;
    let label = target.label();
    target.stop().await;
    let (hush, hush_cpu) = outcome?;
    let bare = if cli.baseline {
        // A child too, for the same reason.
        let relay = relay::RelayChild::start().await?;
        let outcome = async {
            let mut harness = Harness::bare(&relay.ws_url, args.clients).await?;
            let cpu_before = relay.cpu_secs();
            let result = fanout::fanout(&mut harness, args).await;
            let cpu = cpu_before.zip(relay.cpu_secs()).map(|(b, a)| a - b);
            harness.close().await;
            Ok::<_, anyhow::Error>((result, cpu))
        }
        .await;
        relay.stop().await;
        Some(outcome?)
    } else {
        None
    };
    let per_delivery = |cpu: Option<f64>, delivered: u64| {
        cpu.filter(|_| delivered > 0)
            .map(|c| (c * 1e6 / delivered as f64 * 100.0).round() / 100.0)
    };
    let hush_us = per_delivery(hush_cpu, hush.delivered);
    let show = |us: Option<f64>| us.map_or("?".to_owned(), |us| format!("{us:.2} µs"));
    let head = format!(
        "fanout   C={} S={} P={}B D={}s",
        args.clients, args.senders, args.payload, args.duration
    );
    let mut rows = vec![format!(
        "{head} | hush ({label}) {} | server CPU/delivery {}",
        hush.human(),
        show(hush_us)
    )];
    if let Some(spread) = hush.by_node_human() {
        rows.push(format!("{head} | latency at the {spread}"));
    }
    let mut line = json!({
        "scenario": "fanout", "target": label,
        "clients": args.clients, "senders": args.senders, "rate": args.rate,
        "payload": args.payload, "duration_s": args.duration,
        "sent": hush.sent, "acked": hush.acked, "delivered": hush.delivered,
        "expected": hush.expected, "loss_pct": hush.loss_pct,
        "latency": hush.latency.json(),
        "deliveries_per_sec": hush.deliveries_per_sec.round(),
        "closed_connections": hush.closed, "errors": hush.errors,
        "server_cpu_secs": hush_cpu, "server_cpu_us_per_delivery": hush_us,
    });
    if let Some((same, other)) = &hush.by_node {
        line["latency_same_node"] = same.json();
        line["latency_other_nodes"] = other.json();
    }
    if let Some((bare, bare_cpu)) = bare {
        let bare_us = per_delivery(bare_cpu, bare.delivered);
        rows.push(format!(
            "{head} | bare relay (child) {} | server CPU/delivery {}",
            bare.human(),
            show(bare_us)
        ));
        if let Some(r) = hush_us.zip(bare_us).and_then(|(h, b)| ratio(h, b)) {
            rows.push(format!("{head} | hush/bare server CPU per delivery {r:.3}"));
            line["ratio_cpu_per_delivery"] = json!(r);
        }
        rows.push(format!(
            "{head} | hush/bare deliveries/s {:.3}, p99 {} vs {}",
            ratio(hush.deliveries_per_sec, bare.deliveries_per_sec).unwrap_or(0.0),
            fmt_us(hush.latency.p99),
            fmt_us(bare.latency.p99)
        ));
        line["bare"] = bare.json();
        line["bare"]["server_cpu_us_per_delivery"] = json!(bare_us);
        line["ratio_deliveries_per_sec"] =
            json!(ratio(hush.deliveries_per_sec, bare.deliveries_per_sec));
    }
    emit(&rows, line);
    Ok(())
}

async fn ramp_scenario(cli: &Cli, key: &Arc<IdentityPrivateKey>, args: &RampArgs) -> Result<()> {
    let head = format!(
        "ramp     C={} S={} P={}B step={}s",
        args.clients, args.senders, args.payload, args.step_secs
    );
    let target = start_target(cli, false).await?;
    let bench = Bench::new(&target.base, key.clone());
    let outcome = async {
        let mut harness =
            Harness::hush(&bench, &target.ws_urls, args.clients, args.senders).await?;
        let result = fanout::ramp(&mut harness, args, |step| {
            println!("{head} | hush step {}", step.human());
            if let Some(spread) = step.by_node_human() {
                println!("{head} |   latency at the {spread}");
            }
        })
        .await;
        harness.close().await;
        Ok::<_, anyhow::Error>(result)
    }
    .await;
    let label = target.label();
    target.stop().await;
    let hush = outcome?;
    let bare = if cli.baseline {
        let relay = Relay::start().await?;
        let outcome = async {
            let mut harness = Harness::bare(&relay.ws_url, args.clients).await?;
            let result = fanout::ramp(&mut harness, args, |step| {
                println!("{head} | bare step {}", step.human());
            })
            .await;
            harness.close().await;
            Ok::<_, anyhow::Error>(result)
        }
        .await;
        relay.stop().await;
        Some(outcome?)
    } else {
        None
    };
    let best_rate = |r: &fanout::RampResult| r.best.as_ref().map_or(0.0, |b| b.rate);
    let mut rows = vec![format!(
        "{head} | hush ({label}) best sustained {:.0} deliv/s at R={:.1}",
        hush.best_rate(),
        best_rate(&hush)
    )];
    let mut line = json!({
        "scenario": "ramp", "target": label,
        "clients": args.clients, "senders": args.senders, "payload": args.payload,
        "best_deliveries_per_sec": hush.best_rate().round(),
        "best_rate": best_rate(&hush),
        "steps": hush.steps.iter().map(|s| s.json()).collect::<Vec<_>>(),
        "delivered": hush.steps.iter().map(|s| s.delivered).sum::<u64>(),
    });
    if let Some(bare) = bare {
        rows.push(format!(
            "{head} | bare relay best sustained {:.0} deliv/s at R={:.1}",
            bare.best_rate(),
            best_rate(&bare)
        ));
        let r = ratio(hush.best_rate(), bare.best_rate());
        rows.push(format!("{head} | hush/bare {:.3}", r.unwrap_or(0.0)));
        line["bare"] = json!({
            "best_deliveries_per_sec": bare.best_rate().round(),
            "best_rate": best_rate(&bare),
            "steps": bare.steps.iter().map(|s| s.json()).collect::<Vec<_>>(),
        });
        line["ratio_best_deliveries_per_sec"] = json!(r);
    }
    emit(&rows, line);
    Ok(())
}

async fn dm_scenario(cli: &Cli, key: &Arc<IdentityPrivateKey>, args: &DmArgs) -> Result<()> {
    let target = start_target(cli, false).await?;
    let bench = Bench::new(&target.base, key.clone());
    let outcome = dm::run(&bench, &target.ws_url, args).await;
    let label = target.label();
    target.stop().await;
    let r = outcome?;
    emit(
        &[format!(
            "dm       pairs={} W={} P={}B D={}s | hush ({label}) sent {} acked {} errors {} delivered {} in {:.2}s | {:.0} durable msgs/s",
            args.pairs,
            args.window,
            args.payload,
            args.duration,
            r.sent,
            r.acked,
            r.errors,
            r.delivered,
            r.seconds,
            r.acked_per_sec
        )],
        json!({
            "scenario": "dm", "target": label, "pairs": args.pairs, "window": args.window,
            "payload": args.payload, "duration_s": args.duration,
            "sent": r.sent, "acked": r.acked, "errors": r.errors,
            "duplicates": r.duplicates, "delivered": r.delivered,
            "seconds": (r.seconds * 100.0).round() / 100.0,
            "durable_msgs_per_sec": r.acked_per_sec.round(),
        }),
    );
    Ok(())
}

async fn notify_scenario(cli: &Cli, args: &NotifyArgs) -> Result<()> {
    let admin = cli
        .postgres
        .as_deref()
        .context("notify measures PostgreSQL: give --postgres")?;
    let head = format!("notify   W={} D={}s", args.writers, args.duration);
    let mut rows = Vec::new();
    let mut line =
        json!({ "scenario": "notify", "writers": args.writers, "duration_s": args.duration });
    let mut silent_rate = None;
    for mode in notify::Mode::ALL {
        let r = notify::run(admin, args, mode).await?;
        let rate = r.commits as f64 / r.seconds.max(1e-9);
        let base = *silent_rate.get_or_insert(rate);
        rows.push(format!(
            "{head} | {:<38} {:>7.0} commits/s ({:.2}× no notification) | {} notifications received",
            mode.name(),
            rate,
            rate / base.max(1e-9),
            r.notifications_received
        ));
        line[mode.key()] = json!({
            "commits": r.commits, "commits_per_sec": rate.round(),
            "notifications_received": r.notifications_received,
        });
    }
    emit(&rows, line);
    Ok(())
}

async fn sync_scenario(cli: &Cli, key: &Arc<IdentityPrivateKey>, args: &SyncArgs) -> Result<()> {
    let target = start_target(cli, false).await?;
    let bench = Bench::new(&target.base, key.clone());
    let outcome = sync::run(&bench, &target.ws_url, args).await;
    let label = target.label();
    target.stop().await;
    let r = outcome?;
    emit(
        &[format!(
            "sync     M={} P={}B | hush ({label}) stored {} in {:.1}s ({:.0} msgs/s) | replayed {} in {} pages, {:.3}s | {:.0} msgs/s",
            args.messages,
            args.payload,
            r.stored,
            r.load_secs,
            r.stored as f64 / r.load_secs.max(1e-9),
            r.replayed,
            r.pages,
            r.seconds,
            r.per_sec
        )],
        json!({
            "scenario": "sync", "target": label, "messages": args.messages,
            "payload": args.payload, "stored": r.stored,
            "load_seconds": round1(r.load_secs * 100.0) / 100.0,
            "load_msgs_per_sec": (r.stored as f64 / r.load_secs.max(1e-9)).round(),
            "replayed": r.replayed, "pages": r.pages,
            "seconds": (r.seconds * 1000.0).round() / 1000.0,
            "replayed_per_sec": r.per_sec.round(),
        }),
    );
    Ok(())
}

async fn connect_scenario(cli: &Cli, key: &Arc<IdentityPrivateKey>, args: &ConnArgs) -> Result<()> {
    let target = start_target(cli, false).await?;
    let bench = Bench::new(&target.base, key.clone());
    let outcome = conns::open(&bench, &target.ws_url, args, "c").await;
    let label = target.label();
    let held = match outcome {
        Ok(held) => held,
        Err(err) => {
            target.stop().await;
            return Err(err);
        }
    };
    let (opened, failed, seconds, rate, latency) = (
        held.opened,
        held.failed,
        held.seconds,
        held.per_sec(),
        held.latency,
    );
    let first_error = held.first_error.clone();
    held.close();
    target.stop().await;
    emit(
        &[format!(
            "connect  K={} users={} concurrency={} | hush ({label}) opened {opened} failed {failed} in {seconds:.2}s | {rate:.0} conns/s | connect+auth+ready {}",
            args.connections,
            args.users,
            args.concurrency,
            latency.human()
        )],
        json!({
            "scenario": "connect", "target": label, "connections": args.connections,
            "users": args.users, "concurrency": args.concurrency,
            "opened": opened, "failed": failed, "first_error": first_error,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "connections_per_sec": rate.round(), "latency": latency.json(),
        }),
    );
    Ok(())
}

async fn idle_scenario(cli: &Cli, key: &Arc<IdentityPrivateKey>, args: &ConnArgs) -> Result<()> {
    let target = start_target(cli, true).await?;
    let bench = Bench::new(&target.base, key.clone());
    let label = target.label();
    // Register and log in first, so the argon2 buffers of login are already
    // part of the "before" figure.
    let outcome = async {
        let users = bench
            .users("i", args.users.clamp(1, args.connections.max(1)))
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = target.server_rss_kib();
        let bench_before = target::rss_kib("self");
        let held = conns::open_as(&users, &target.ws_url, args).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = target.server_rss_kib();
        let bench_after = target::rss_kib("self");
        Ok::<_, anyhow::Error>((held, before, after, bench_before, bench_after))
    }
    .await;
    let (held, before, after, bench_before, bench_after) = match outcome {
        Ok(values) => values,
        Err(err) => {
            target.stop().await;
            return Err(err);
        }
    };
    let opened = held.opened;
    let (failed, seconds) = (held.failed, held.seconds);
    // Hold them while reading, then let go.
    held.close();
    target.stop().await;
    let per_conn = |b: Option<u64>, a: Option<u64>| match (b, a) {
        (Some(b), Some(a)) if opened > 0 => Some(a.saturating_sub(b) as f64 / opened as f64),
        _ => None,
    };
    let server_per_conn = per_conn(before, after);
    let bench_per_conn = per_conn(bench_before, bench_after);
    let note = if label.starts_with("in-process") {
        "server in-process: figure includes the bench's client sockets"
    } else if label == "external" {
        "external server: RSS not readable"
    } else {
        "server RSS read from the children's /proc/<pid>/status"
    };
    emit(
        &[format!(
            "idle     K={} users={} | hush ({label}) held {opened} (failed {failed}, opened in {seconds:.1}s) | server RSS {} -> {} KiB | {} KiB/conn | bench {} KiB/conn",
            args.connections,
            args.users,
            before.map_or("?".into(), |v| v.to_string()),
            after.map_or("?".into(), |v| v.to_string()),
            server_per_conn.map_or("?".into(), |v| format!("{v:.1}")),
            bench_per_conn.map_or("?".into(), |v| format!("{v:.1}")),
        )],
        json!({
            "scenario": "idle", "target": label, "connections": args.connections,
            "held": opened, "failed": failed, "open_seconds": round1(seconds),
            "server_rss_before_kib": before, "server_rss_after_kib": after,
            "server_kib_per_connection": server_per_conn.map(round1),
            "bench_kib_per_connection": bench_per_conn.map(round1),
            "note": note,
        }),
    );
    Ok(())
}

async fn overload_scenario(
    cli: &Cli,
    key: &Arc<IdentityPrivateKey>,
    args: &OverloadArgs,
) -> Result<()> {
    let target = start_target(cli, true).await?;
    let bench = Bench::new(&target.base, key.clone());
    let label = target.label();
    let outcome = async {
        let ws_url = std::slice::from_ref(&target.ws_url);
        let mut harness = Harness::hush(&bench, ws_url, args.clients, 0).await?;
        let rss_before = target.server_rss_kib();
        let log_before = target.log_bytes();
        let is_running = AtomicBool::new(true);
        let scenario = async {
            let result = overload::run(&mut harness, args).await;
            is_running.store(false, Ordering::Release);
            result
        };
        // Sample the server's RSS every 250 ms until the scenario is over.
        let sampler = async {
            let mut peak = None::<u64>;
            while is_running.load(Ordering::Acquire) {
                if let Some(rss) = target.server_rss_kib() {
                    peak = Some(peak.map_or(rss, |p| p.max(rss)));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            peak
        };
        let (result, peak) = tokio::join!(scenario, sampler);
        let rss_after = target.server_rss_kib();
        let log_after = target.log_bytes();
        harness.close().await;
        let log_bytes = log_before.zip(log_after).map(|(b, a)| a.saturating_sub(b));
        Ok::<_, anyhow::Error>((result, rss_before, peak, rss_after, log_bytes))
    }
    .await;
    target.stop().await;
    let (result, rss_before, peak, rss_after, log_bytes) = outcome?;
    let kib = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
    let head = format!(
        "overload C={} S={} P={}B",
        args.clients, args.senders, args.payload
    );
    let mut line = json!({
        "scenario": "overload", "target": label, "clients": args.clients,
        "senders": args.senders, "payload": args.payload,
        "rate": args.rate, "duration_s": args.duration,
        "overload": result.overload.json(), "recovery": result.light.json(),
        "delivered": result.overload.delivered + result.light.delivered,
        "server_rss_before_kib": rss_before, "server_rss_peak_kib": peak,
        "server_rss_after_kib": rss_after, "server_log_bytes": log_bytes,
    });
    if let (Value::Object(line), Value::Object(fields)) = (&mut line, result.json(args)) {
        line.extend(fields);
    }
    emit(
        &[
            format!(
                "{head} | hush ({label}) overload {}",
                result.overload.human()
            ),
            format!("{head} | hush ({label}) light    {}", result.light.human()),
            result.recovery_row(args, args.clients),
            format!(
                "overload | server RSS before {} KiB, peak {} KiB, after {} KiB | server log +{} bytes",
                kib(rss_before),
                kib(peak),
                kib(rss_after),
                kib(log_bytes)
            ),
        ],
        line,
    );
    Ok(())
}

/// What one connect storm cost the server.
struct StormFigures {
    opened: usize,
    failed: usize,
    first_error: Option<String>,
    seconds: f64,
    per_sec: f64,
    frames_per_connection: f64,
    cpu_secs: Option<f64>,
    rss_before: Option<u64>,
    rss_peak: Option<u64>,
    rss_idle: Option<u64>,
}

impl StormFigures {
    fn human(&self) -> String {
        let kib = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
        format!(
            "opened {} failed {} in {:.2}s | {:.0} conns/s | {:.2} presence frames/conn | CPU {} ({} per conn) | RSS {} -> peak {} -> idle {} KiB (peak/idle {}, {} KiB/conn idle)",
            self.opened,
            self.failed,
            self.seconds,
            self.per_sec,
            self.frames_per_connection,
            self.cpu_secs.map_or("?".to_owned(), |c| format!("{c:.2}s")),
            self.cpu_secs.map_or("?".to_owned(), |c| fmt_us(
                (c * 1e6 / self.opened.max(1) as f64) as u64
            )),
            kib(self.rss_before),
            kib(self.rss_peak),
            kib(self.rss_idle),
            self.peak_over_idle()
                .map_or("?".to_owned(), |r| format!("{r:.2}")),
            self.kib_per_connection()
                .map_or("?".to_owned(), |r| format!("{r:.1}")),
        )
    }

    fn peak_over_idle(&self) -> Option<f64> {
        let (peak, idle) = (self.rss_peak?, self.rss_idle?);
        (idle > 0).then(|| peak as f64 / idle as f64)
    }

    fn kib_per_connection(&self) -> Option<f64> {
        let (before, idle) = (self.rss_before?, self.rss_idle?);
        Some(idle.saturating_sub(before) as f64 / self.opened.max(1) as f64)
    }

    fn json(&self) -> Value {
        json!({
            "opened": self.opened, "failed": self.failed, "first_error": self.first_error,
            "seconds": (self.seconds * 1000.0).round() / 1000.0,
            "connections_per_sec": self.per_sec.round(),
            "presence_frames_per_connection": (self.frames_per_connection * 100.0).round() / 100.0,
            "server_cpu_secs": self.cpu_secs.map(|c| (c * 100.0).round() / 100.0),
            "server_rss_before_kib": self.rss_before, "server_rss_peak_kib": self.rss_peak,
            "server_rss_idle_kib": self.rss_idle,
            "peak_over_idle": self.peak_over_idle().map(|r| (r * 100.0).round() / 100.0),
            "server_kib_per_connection": self.kib_per_connection().map(round1),
        })
    }
}

/// Runs one storm, sampling the server's RSS every 50 ms from its start
/// until presence has been quiet (`Storm::settle`); the storm's sockets are
/// returned open.
async fn measure_storm<F>(
    cpu: impl Fn() -> Option<f64>,
    rss: impl Fn() -> Option<u64>,
    storm: F,
) -> Result<(presence::Storm, StormFigures)>
where
    F: std::future::Future<Output = Result<presence::Storm>>,
{
    let (cpu_before, rss_before) = (cpu(), rss());
    let is_running = AtomicBool::new(true);
    let peak = std::sync::Mutex::new(rss_before);
    let record = || {
        if let Some(now) = rss() {
            let mut peak = peak.lock().expect("bench lock poisoned");
            *peak = Some(peak.map_or(now, |p| p.max(now)));
        }
    };
    let opening = async {
        let result = storm.await;
        is_running.store(false, Ordering::Release);
        result
    };
    let sampler = async {
        while is_running.load(Ordering::Acquire) {
            record();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (storm, ()) = tokio::join!(opening, sampler);
    let storm = storm?;
    storm.settle(record).await;
    let cpu_after = cpu();
    let figures = StormFigures {
        opened: storm.opened,
        failed: storm.failed,
        first_error: storm.first_error.clone(),
        seconds: storm.seconds,
        per_sec: storm.per_sec(),
        frames_per_connection: storm.frames_per_connection(),
        cpu_secs: cpu_before.zip(cpu_after).map(|(b, a)| a - b),
        rss_before,
        rss_peak: *peak.lock().expect("bench lock poisoned"),
        rss_idle: rss(),
    };
    Ok((storm, figures))
}

async fn presence_scenario(
    cli: &Cli,
    key: &Arc<IdentityPrivateKey>,
    args: &PresenceArgs,
) -> Result<()> {
    anyhow::ensure!(
        cli.server.is_none(),
        "presence restarts the server, so it cannot target --server"
    );
    let binary = cli
        .spawn_binary
        .clone()
        .or_else(target::sibling_hush)
        .context("presence needs the hush binary: build it, or pass --spawn-binary")?;
    let target = Target::child(&binary, &cli.placement()).await?;
    let bench = Bench::new(&target.base, key.clone());
    let users = match presence::one_room(&bench, args.accounts).await {
        Ok(users) => users,
        Err(err) => {
            target.stop().await;
            return Err(err);
        }
    };
    // Let registration's argon2 buffers settle into the "before" figure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = measure_storm(
        || target.server_cpu_secs(),
        || target.server_rss_kib(),
        presence::storm(&users, &target.ws_url, args),
    )
    .await;
    let (storm, first) = match first {
        Ok(done) => done,
        Err(err) => {
            target.stop().await;
            return Err(err);
        }
    };
    // Every connection is open when the server goes down: all of them
    // come back at once.
    let target = target.restart().await;
    storm.close();
    let target = target?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = measure_storm(
        || target.server_cpu_secs(),
        || target.server_rss_kib(),
        presence::storm(&users, &target.ws_url, args),
    )
    .await;
    let label = target.label();
    let (storm, again) = match again {
        Ok(done) => done,
        Err(err) => {
            target.stop().await;
            return Err(err);
        }
    };
    storm.close();
    target.stop().await;

    let relay = relay::RelayChild::start().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bare = measure_storm(
        || relay.cpu_secs(),
        || relay.rss_kib(),
        presence::bare_storm(&relay.ws_url, args.connections(), args.concurrency),
    )
    .await;
    let bare = match bare {
        Ok((storm, figures)) => {
            storm.close();
            Ok(figures)
        }
        Err(err) => Err(err),
    };
    relay.stop().await;
    let bare = bare?;

    let head = format!(
        "presence A={} M={} K={} concurrency={}",
        args.accounts,
        args.per_account,
        args.connections(),
        args.concurrency
    );
    emit(
        &[
            format!("{head} | hush ({label}) first   {}", first.human()),
            format!("{head} | hush ({label}) restart {}", again.human()),
            format!("{head} | bare relay (child)     {}", bare.human()),
            format!(
                "{head} | hush/bare conns/s first {:.3}, restart {:.3}",
                ratio(first.per_sec, bare.per_sec).unwrap_or(0.0),
                ratio(again.per_sec, bare.per_sec).unwrap_or(0.0)
            ),
        ],
        json!({
            "scenario": "presence", "target": label, "accounts": args.accounts,
            "per_account": args.per_account, "connections": args.connections(),
            "concurrency": args.concurrency,
            "first": first.json(), "restart": again.json(), "bare": bare.json(),
            "ratio_connections_per_sec_first": ratio(first.per_sec, bare.per_sec),
            "ratio_connections_per_sec_restart": ratio(again.per_sec, bare.per_sec),
        }),
    );
    Ok(())
}

async fn client_scenario(
    cli: &Cli,
    key: &Arc<IdentityPrivateKey>,
    args: &ClientArgs,
) -> Result<()> {
    let target = start_target(cli, false).await?;
    let outcome = client_store::run(&target.base, key.clone(), args).await;
    let label = target.label();
    target.stop().await;
    let r = outcome?;
    let ms = |secs: f64| (secs * 1000.0).round();
    let (send, read) = (
        client_store::median(&r.sends),
        client_store::median(&r.reads),
    );
    emit(
        &[format!(
            "client   M={} | hush ({label}) seeded in {:.1}s | first read --last 50 {:.2}s ({:.0} msgs/s) | send {:.0} ms | read --last 50 {:.0} ms (median of {})",
            r.seeded,
            r.seed_secs,
            r.first_read_secs,
            r.first_read_per_sec(),
            ms(send),
            ms(read),
            r.sends.len()
        )],
        json!({
            "scenario": "client", "target": label, "messages": r.seeded,
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
            "seed_seconds": round1(r.seed_secs),
            "first_read_seconds": (r.first_read_secs * 1000.0).round() / 1000.0,
            "first_read_lines": r.first_read_lines,
            "first_read_msgs_per_sec": r.first_read_per_sec().round(),
            "send_ms": r.sends.iter().map(|s| ms(*s)).collect::<Vec<_>>(),
            "read_last_50_ms": r.reads.iter().map(|s| ms(*s)).collect::<Vec<_>>(),
            "send_median_ms": ms(send), "read_last_50_median_ms": ms(read),
        }),
    );
    Ok(())
}

fn crypto_scenario(key: &IdentityPrivateKey, args: &CryptoArgs) -> Result<()> {
    let r = crypto::run(key, args)?;
    emit(
        &[format!(
            "crypto   members={} P={}B | rotate {:.2} ms ({:.1}/s) | seal {:.3} ms ({:.0}/s) | open+verify {:.3} ms ({:.0}/s)",
            args.members,
            args.payload,
            r.rotate.ms_per_op(),
            r.rotate.per_sec(),
            r.seal.ms_per_op(),
            r.seal.per_sec(),
            r.open.ms_per_op(),
            r.open.per_sec(),
        )],
        json!({
            "scenario": "crypto", "members": args.members, "payload": args.payload,
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
            "rotate": r.rotate.json(), "seal": r.seal.json(), "open_verify": r.open.json(),
        }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_size_settings_are_the_issue_targets() {
        let fan = defaults::<FanoutArgs>();
        assert_eq!((fan.clients, fan.senders, fan.payload), (100, 10, 256));
        assert_eq!(defaults::<DmArgs>().pairs, 500);
        assert_eq!(defaults::<SyncArgs>().messages, 100_000);
        assert_eq!(defaults::<IdleArgs>().conn_args().connections, 10_000);
        assert_eq!(defaults::<CryptoArgs>().members, 200);
        assert_eq!(defaults::<ClientArgs>().messages, 100_000);
        assert_eq!(defaults::<RampArgs>().clients, 100);
        assert_eq!(defaults::<ConnArgs>().connections, 2000);
        let overload = defaults::<OverloadArgs>();
        assert_eq!((overload.clients, overload.senders), (100, 10));
        assert_eq!(overload.rate, 1150.0, "2x the quiet ramp's R≈577");
    }
}
