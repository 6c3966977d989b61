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
