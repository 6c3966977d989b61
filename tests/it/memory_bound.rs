//! Hostile input does not grow the server: the real binary takes a barrage
//! of near-limit garbage frames, deeply nested JSON and oversized frames
//! from many connections at once, and its peak resident memory (VmHWM, read
//! from /proc) stays within a fixed bound while a bystander pair keeps
//! chatting.

use anyhow::{Context, Result};

use crate::crash::HushProcess;

const ATTACKERS: usize = 24;
const FRAMES_EACH: usize = 8;
/// Far above what the barrage needs when every buffer is bounded (a few
/// frames of ~1.4 MiB in flight per connection), far below what it would
/// take if frames were queued or copied per connection without bound
/// (24 connections × 8 frames × 1.3 MiB ≈ 250 MiB of input alone).
const MAX_GROWTH_KIB: u64 = 128 * 1024;

fn status_kib(pid: i32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("malformed status line")?
        .parse()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_barrage_of_huge_and_malformed_frames_keeps_memory_bounded() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = HushProcess::start(
        dir.path(),
        &["--sessions-per-user", "64", "--connections-per-ip", "256"],
    )
    .await?;
    let app = server.app()?;
    let t = app.users(&["alice", "bob", "mallory"]).await?;
    let room = app.create_room(&t[0], "r").await?;
    app.invite(&t[0], room, "bob").await?;
    app.join(&t[1], room).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    bob.sync(room, 0).await?;
    let first = alice.send_ok(room, "warm-up", b"warm up").await?;
    assert_eq!(bob.next_entry(room).await?["seq"], first);
    let before = status_kib(server.pid(), "VmRSS:")?;

    // Just under the frame limit: a full read, then a parse error.
    let near_limit = "x".repeat(app.config.max_frame_bytes() - 1024);
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let mut attackers = Vec::new();
    for i in 0..ATTACKERS {
        let token = t[2].clone();
        let app = server.app()?;
        let near_limit = near_limit.clone();
        let deep = deep.clone();
        attackers.push(tokio::spawn(async move {
            let mut ws = app.connect_ws(&token).await?;
            for _ in 0..FRAMES_EACH {
                ws.send_text(&near_limit).await?;
                ws.send_text(&deep).await?;
            }
            // Read the replies so the exchange really happened.
            for _ in 0..2 * FRAMES_EACH {
                let frame = ws.expect_type("error").await?;
                anyhow::ensure!(frame["code"] == "bad_frame", "attacker {i}: {frame}");
            }
            anyhow::Ok(())
        }));
    }
    // The bystanders keep talking during the barrage.
    for n in 0..20 {
        let seq = alice
            .send_ok(
                room,
                &format!("during-{n}"),
                format!("during {n}").as_bytes(),
            )
            .await?;
        assert_eq!(bob.next_entry(room).await?["seq"], seq);
    }
    for attacker in attackers {
        attacker.await??;
    }

    let peak = status_kib(server.pid(), "VmHWM:")?;
    println!(
        "server RSS before the barrage {before} KiB, peak {peak} KiB, growth {} KiB",
        peak.saturating_sub(before)
    );
    assert!(
        peak.saturating_sub(before) < MAX_GROWTH_KIB,
        "peak RSS grew by {} KiB",
        peak - before
    );
    let after = alice.send_ok(room, "after", b"after").await?;
    assert_eq!(bob.next_entry(room).await?["seq"], after);
    Ok(())
}
