//! Smoke test for `hush-bench`: runs every scenario at tiny sizes (`all
//! --quick --baseline`, which adds a short `overload` that cuts one client
//! and times the recovery) so the benchmark cannot rot. It checks that each scenario ran and reported sane counts,
//! never how fast anything was: the targets are checked by running the
//! benchmark, not by tests.

use std::collections::HashMap;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

#[test]
fn every_scenario_runs_and_reports_one_json_line() -> Result<()> {
    let output = Command::new(env!("CARGO_BIN_EXE_hush-bench"))
        .args(["all", "--quick", "--baseline"])
        .output()
        .context("running hush-bench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "hush-bench failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    ensure!(!stderr.contains("panicked"), "a task panicked:\n{stderr}");

    let mut lines: HashMap<String, Value> = HashMap::new();
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        let value: Value = serde_json::from_str(line).with_context(|| line.to_owned())?;
        let scenario = value["scenario"]
            .as_str()
            .context("scenario field")?
            .to_owned();
        ensure!(
            lines.insert(scenario.clone(), value).is_none(),
            "{scenario} printed more than one JSON line"
        );
    }
    let get = |name: &str| {
        lines
            .get(name)
            .with_context(|| format!("no JSON line for {name}:\n{stdout}"))
    };
    let num = |v: &Value, key: &str| v[key].as_f64().with_context(|| format!("{key} in {v}"));

    let fanout = get("fanout")?;
    ensure!(num(fanout, "sent")? > 0.0, "fanout sent nothing: {fanout}");
    ensure!(
        num(fanout, "delivered")? > 0.0,
        "fanout delivered nothing: {fanout}"
    );
    ensure!(
        num(fanout, "delivered")? <= num(fanout, "expected")?,
        "{fanout}"
    );
    ensure!(
        num(&fanout["bare"], "delivered")? > 0.0,
        "bare relay delivered nothing: {fanout}"
    );
    ensure!(fanout["latency"]["p99_us"].as_u64().is_some(), "{fanout}");

    let ramp = get("ramp")?;
    ensure!(
        num(ramp, "delivered")? > 0.0,
        "ramp delivered nothing: {ramp}"
    );
    ensure!(
        !ramp["steps"].as_array().context("steps")?.is_empty(),
        "{ramp}"
    );
    ensure!(ramp["bare"]["steps"].is_array(), "{ramp}");

    let dm = get("dm")?;
    ensure!(num(dm, "acked")? > 0.0, "dm acked nothing: {dm}");
    ensure!(num(dm, "duplicates")? == 0.0, "{dm}");
    ensure!(num(dm, "durable_msgs_per_sec")? > 0.0, "{dm}");

    let sync = get("sync")?;
    ensure!(
        num(sync, "replayed")? > num(sync, "messages")?,
        "sync replayed fewer entries than were stored (plus the create entry): {sync}"
    );

    let connect = get("connect")?;
    ensure!(
        num(connect, "opened")? == num(connect, "connections")?,
        "{connect}"
    );
    ensure!(num(connect, "connections_per_sec")? > 0.0, "{connect}");

    let idle = get("idle")?;
    ensure!(num(idle, "held")? == num(idle, "connections")?, "{idle}");

    let overload = get("overload")?;
    ensure!(num(&overload["overload"], "sent")? > 0.0, "{overload}");
    ensure!(num(&overload["recovery"], "sent")? > 0.0, "{overload}");
    // The quick overload cuts one client halfway: it must come back, resync
    // what it missed, and the server must count as recovered.
    ensure!(num(overload, "reconnects")? >= 1.0, "{overload}");
    ensure!(num(overload, "resynced_entries")? > 0.0, "{overload}");
    ensure!(
        overload["recovered"].as_bool() == Some(true),
        "not recovered: {overload}"
    );
    let recovery_ms = num(overload, "recovery_ms")?;
    ensure!(
        recovery_ms >= num(overload, "caught_up_ms")?
            && recovery_ms >= num(overload, "on_time_ms")?
            && recovery_ms <= 1000.0 * num(overload, "recovery_bound_s")?,
        "{overload}"
    );
    ensure!(num(overload, "clients_behind")? == 0.0, "{overload}");

    let presence = get("presence")?;
    for storm in ["first", "restart"] {
        let figures = &presence[storm];
        ensure!(
            num(figures, "opened")? == num(presence, "connections")?,
            "{storm}: {presence}"
        );
        // Every connection gets at least its snapshot.
        ensure!(
            num(figures, "presence_frames_per_connection")? >= 1.0,
            "{storm}: {presence}"
        );
    }
    ensure!(
        num(&presence["bare"], "opened")? > 0.0,
        "bare relay took no connection: {presence}"
    );

    let client = get("client")?;
    ensure!(num(client, "first_read_lines")? > 0.0, "{client}");
    ensure!(num(client, "first_read_msgs_per_sec")? > 0.0, "{client}");
    ensure!(num(client, "send_median_ms")? > 0.0, "{client}");

    let crypto = get("crypto")?;
    for op in ["rotate", "seal", "open_verify"] {
        ensure!(num(&crypto[op], "ops_per_sec")? > 0.0, "{op}: {crypto}");
    }
    Ok(())
}

/// The PostgreSQL side of the bench (issue 16): `fanout` over two nodes
/// sharing a fresh database reports same-node and cross-node latency, and
/// `notify` reports its three modes. Runs in the PostgreSQL pass only.
#[test]
fn postgres_fanout_over_two_nodes_and_notify_report_their_figures() -> Result<()> {
    let admin = std::env::var("HUSH_TEST_POSTGRES_URL").context(
        "HUSH_TEST_POSTGRES_URL is not set: postgres_* tests run in the PostgreSQL pass of \
         scripts/test.sh",
    )?;
    let run = |args: &[&str]| -> Result<Value> {
        let output = Command::new(env!("CARGO_BIN_EXE_hush-bench"))
            .args(["--postgres", &admin])
            .args(args)
            .output()
            .context("running hush-bench")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success(),
            "hush-bench {args:?} failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let line = stdout
            .lines()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("no JSON line:\n{stdout}"))?;
        Ok(serde_json::from_str(line)?)
    };
    let num = |v: &Value, key: &str| v[key].as_f64().with_context(|| format!("{key} in {v}"));

    let fanout = run(&[
        "--nodes",
        "2",
        "fanout",
        "--clients",
        "6",
        "--senders",
        "1",
        "--rate",
        "20",
        "--duration",
        "1.5",
    ])?;
    ensure!(
        fanout["target"].as_str() == Some("2 nodes, PostgreSQL"),
        "{fanout}"
    );
    ensure!(num(&fanout, "sent")? > 0.0, "{fanout}");
    ensure!(
        num(&fanout, "delivered")? == num(&fanout, "expected")?,
        "a delivery was lost across nodes: {fanout}"
    );
    // Clients 0 (the sender), 2 and 4 sit on the first node, 1, 3 and 5 on
    // the second: both halves received every message.
    let sent = num(&fanout, "sent")?;
    for half in ["latency_same_node", "latency_other_nodes"] {
        ensure!(
            num(&fanout[half], "samples")? == 3.0 * sent,
            "{half}: {fanout}"
        );
    }

    let notify = run(&["notify", "--writers", "2", "--duration", "0.5"])?;
    for mode in ["silent", "beside", "inside"] {
        ensure!(num(&notify[mode], "commits")? > 0.0, "{mode}: {notify}");
    }
    ensure!(
        num(&notify["silent"], "notifications_received")? == 0.0,
        "{notify}"
    );
    ensure!(
        num(&notify["inside"], "notifications_received")? == num(&notify["inside"], "commits")?,
        "NOTIFY inside the transaction is one per commit: {notify}"
    );
    ensure!(
        num(&notify["beside"], "notifications_received")? >= 1.0,
        "{notify}"
    );
    Ok(())
}
