//! A database that is locked by another process or has no room left:
//! writes get a clear `storage_unavailable` error and no ack, nothing
//! half-done is stored or delivered, the server and its writer keep
//! running, and the same sends succeed once the condition clears.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection;

use crate::crash::HushProcess;
use crate::hostile::assert_sound_at;
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_database_locked_by_another_process_refuses_writes_until_released() -> Result<()> {
    let app = spawn_app().await?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    alice.send_ok(room, "before", b"x").await?;
    bob.next_entry(room).await?;

    // Another process (here: another connection) takes the write lock and
    // keeps it, as a long maintenance job or a stuck tool would.
    let url = format!("sqlite://{}", app.db_path.display());
    let mut holder = sqlx::SqliteConnection::connect(&url).await?;
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut holder).await?;

    let create = {
        let http = app.http.clone();
        let url = app.url("/api/v1/rooms");
        let token = t[0].clone();
        tokio::spawn(async move {
            let resp = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "name": "during the lock" }))
                .timeout(Duration::from_secs(60))
                .send()
                .await?;
            let status = resp.status();
            let retry = resp.headers().contains_key("retry-after");
            let body: serde_json::Value = resp.json().await?;
            anyhow::Ok((status, retry, body))
        })
    };
    let refused = alice.send_message(room, "locked", b"y").await?;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "storage_unavailable", "{refused}");
    assert!(refused["retry_after_ms"].as_u64().is_some(), "{refused}");
    let (status, retry, body) = create.await??;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error_code(&body), "storage_unavailable");
    assert!(retry, "503 carries Retry-After");
    // Reads still work while writes are locked out.
    let (status, _) = app.get("/healthz", None).await?;
    assert_eq!(status, StatusCode::OK);
    bob.assert_no_entries().await?;

    sqlx::query("ROLLBACK").execute(&mut holder).await?;
    holder.close().await?;

    // The writer survived: the same client_id now stores once.
    let ack = alice.send_message(room, "locked", b"y").await?;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["duplicate"], false);
    let entry = bob.next_entry(room).await?;
    assert_eq!(entry["client_id"], "locked");
    assert_eq!(entry["seq"], ack["seq"]);
    app.create_room(&t[0], "after the lock").await?;
    assert_sound_at(&app.db_path).await
}

fn set_file_size_limit(pid: i32, bytes: Option<u64>) -> Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit reads `limit` and writes nothing (old is null).
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
    ensure!(rc == 0, "prlimit: {}", std::io::Error::last_os_error());
    Ok(())
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The disk filling up, for real writes: the server process gets a file
/// size limit just above its files' sizes (RLIMIT_FSIZE, which needs no
/// privileges and, with SIGXFSZ ignored, makes writes fail like a full
/// disk), then the limit is lifted.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_writes_without_acks_and_recovers_when_space_returns() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = HushProcess::start_with(dir.path(), &["--max-message-bytes", "2000000"], |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    })
    .await?;
    let app = server.app()?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    alice.send_ok(room, "small", b"fits").await?;
    bob.next_entry(room).await?;

    let db = &server.db;
    let wal = db.with_extension("db-wal");
    let room_left = file_len(db).max(file_len(&wal)) + 64 * 1024;
    set_file_size_limit(server.pid(), Some(room_left))?;

    let big = vec![0x5a; 1_500_000];
    let refused = alice.send_message(room, "big", &big).await?;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "storage_unavailable", "{refused}");
    let message = refused["message"].as_str().context("message")?;
    assert!(message.contains("full"), "{message}");
    bob.assert_no_entries().await?;
    // Still serving.
    let (status, _) = app.get("/healthz", None).await?;
    assert_eq!(status, StatusCode::OK);

    set_file_size_limit(server.pid(), None)?;
    // As a client would: resend the same client_id after `retry_after_ms`.
    // A write that was in flight when the limit lifted may still fail once.
    let mut ack = alice.send_message(room, "big", &big).await?;
    for _ in 0..5 {
        if ack["code"] != "storage_unavailable" {
            break;
        }
        println!("resend after a late refusal: {ack}");
        let wait = ack["retry_after_ms"].as_u64().unwrap_or(1000).min(2000);
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        ack = alice.send_message(room, "big", &big).await?;
    }
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        ack["duplicate"], false,
        "nothing of the refused write was kept"
    );
    let entry = bob.next_entry(room).await?;
    assert_eq!(entry["seq"], ack["seq"]);
    assert_eq!(
        unb64(entry["body"].as_str().context("body")?)?.len(),
        big.len()
    );
    server.kill()?;
    assert_sound_at(&dir.path().join("hush.db")).await
}
