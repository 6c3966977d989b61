//! A database that is locked by another process, has no room left or
//! cannot be written: writes get a clear `storage_unavailable` error and
//! no ack, nothing half-done is stored or delivered, the server and its
//! writer keep running, and the same sends succeed once the condition
//! clears.
//!
//! Read-only is induced with the kernel's immutable attribute
//! (`FS_IMMUTABLE_FL`, what `chattr +i` sets) on the database and its WAL
//! while `hush serve` runs. It is the one mechanism found that makes files
//! genuinely unwritable through descriptors a process already holds open
//! and that can be undone without restarting it: the tests run as root, so
//! `chmod` is ignored (and is only checked at `open`); `mount -o
//! remount,ro` of the filesystem or of a bind mount fails with EBUSY while
//! SQLite holds files open for writing; on a loop-mounted ext4 the
//! `errors=remount-ro` path (`/sys/fs/ext4/<dev>/trigger_fs_error`) makes
//! writes fail but is sticky (remounting read-write leaves `emergency_ro`
//! set, remounting read-only fails with EROFS) until unmounted; `blockdev
//! --setro` on the loop device only logs "Trying to write to read-only
//! block-device" and lets writes through. The attribute needs
//! CAP_LINUX_IMMUTABLE (root has it) and a filesystem that supports it
//! (ext4, xfs, btrfs, tmpfs since Linux 6.0); if it cannot be set the test
//! fails and says so. The shared-memory index (`-shm`) is left writable: it
//! is mapped into memory, and a write fault on an immutable mapped file
//! is a SIGBUS, not an error SQLite could report.

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

    // The send first, alone: each refused batch waits out the 5 s busy
    // timeout, and a room creation queued ahead of it would make its reply
    // take 10 s, as long as the test's frame timeout.
    let refused = alice.send_message(room, "locked", b"y").await?;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "storage_unavailable", "{refused}");
    assert!(refused["retry_after_ms"].as_u64().is_some(), "{refused}");
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

    // The server reserves the WAL's space with zeros, and a commit into
    // the reserve needs no new space: empty the WAL first, so that the
    // next commit must grow it, as it must once a reserve is used up.
    let db = &server.db;
    let wal = db.with_extension("db-wal");
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await?;
    let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(&mut other)
        .await?;
    other.close().await?;
    ensure!(busy == 0, "the WAL could not be emptied");
    ensure!(file_len(&wal) == 0, "the WAL is {} bytes", file_len(&wal));
    let room_left = file_len(db) + 64 * 1024;
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

/// `FS_IMMUTABLE_FL` from linux/fs.h: no writes, through any descriptor.
const FS_IMMUTABLE_FL: libc::c_int = 0x10;

/// Sets or clears the immutable attribute of `path` (what `chattr +i/-i`
/// does). The kernel reads and writes an `int` for these ioctls.
fn set_immutable(path: &std::path::Path, on: bool) -> Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut flags: libc::c_int = 0;
    // SAFETY: both ioctls take a pointer to an int that outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    ensure!(
        rc == 0,
        "FS_IOC_GETFLAGS on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    if on {
        flags |= FS_IMMUTABLE_FL;
    } else {
        flags &= !FS_IMMUTABLE_FL;
    }
    // SAFETY: as above.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) };
    ensure!(
        rc == 0,
        "cannot {} the immutable attribute of {} (needs CAP_LINUX_IMMUTABLE and a \
         filesystem that supports it): {}",
        if on { "set" } else { "clear" },
        path.display(),
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Files made immutable, made writable again when dropped, so that a
/// failing test leaves nothing its temp dir cannot delete.
struct Immutable(Vec<std::path::PathBuf>);

impl Immutable {
    fn set(paths: &[std::path::PathBuf]) -> Result<Self> {
        let mut guard = Self(Vec::new());
        for path in paths {
            set_immutable(path, true)?;
            guard.0.push(path.clone());
        }
        Ok(guard)
    }

    fn clear(mut self) -> Result<()> {
        for path in std::mem::take(&mut self.0) {
            set_immutable(&path, false)?;
        }
        Ok(())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = set_immutable(path, false);
        }
    }
}

/// The database becoming unwritable under a running `hush serve` (its
/// files made immutable, which the kernel enforces on descriptors already
/// open), then writable again: writes are refused with a read-only
/// `storage_unavailable` and no ack, reads keep working, and once the
/// files are writable the same send is stored exactly once, without a
/// restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_database_refuses_writes_serves_reads_and_recovers_without_restart()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = HushProcess::start(dir.path(), &[]).await?;
    let app = server.app()?;
    let t = app.users(&["alice", "bob"]).await?;
    let room = app.group(&t[0], &[("bob", &t[1])]).await?;
    let mut alice = app.connect_ws(&t[0]).await?;
    let mut bob = app.connect_ws(&t[1]).await?;
    let before = alice.send_ok(room, "before", b"x").await?;
    bob.next_entry(room).await?;

    let db = server.db.clone();
    let wal = db.with_extension("db-wal");
    ensure!(wal.exists(), "the server runs in WAL mode: {wal:?} exists");
    let read_only = Immutable::set(&[db.clone(), wal.clone()])?;

    // Writes: refused, specifically, with a retry hint and no ack.
    let refused = alice.send_message(room, "ro", b"y").await?;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "storage_unavailable", "{refused}");
    assert!(refused["retry_after_ms"].as_u64().is_some(), "{refused}");
    let message = refused["message"].as_str().context("message")?;
    assert!(message.contains("read-only"), "{message}");
    let (status, body) = app
        .post(
            "/api/v1/rooms",
            Some(&t[0]),
            Some(json!({ "name": "while read-only" })),
        )
        .await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error_code(&body), "storage_unavailable", "{body}");
    assert!(body.to_string().contains("read-only"), "{body}");
    // Logging in stores a session: refused the same way, not a 500.
    let (status, body) = app.login_raw("bob", &password("bob")).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error_code(&body), "storage_unavailable", "{body}");
    assert!(body.to_string().contains("read-only"), "{body}");

    // Reads: still served, and nothing of the refused write shows.
    bob.assert_no_entries().await?;
    let (entries, synced) = bob.sync(room, 0).await?;
    assert_eq!(synced, before, "{entries:?}");
    assert!(
        entries.iter().all(|e| e["client_id"] != "ro"),
        "{entries:?}"
    );
    let page = alice.history(room, None, None).await?;
    assert_eq!(page["type"], "history", "{page}");
    let newest = page["entries"].as_array().and_then(|e| e.last());
    assert_eq!(newest.map(|e| &e["seq"]), Some(&json!(before)), "{page}");
    let (status, body) = app.get("/api/v1/rooms", Some(&t[1])).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = app.get("/healthz", None).await?;
    assert_eq!(status, StatusCode::OK);

    read_only.clear()?;

    // As a client would: resend the same client_id after `retry_after_ms`.
    let mut ack = alice.send_message(room, "ro", b"y").await?;
    for _ in 0..5 {
        if ack["code"] != "storage_unavailable" {
            break;
        }
        println!("resend after a late refusal: {ack}");
        let wait = ack["retry_after_ms"].as_u64().unwrap_or(1000).min(2000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        ack = alice.send_message(room, "ro", b"y").await?;
    }
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        ack["duplicate"], false,
        "nothing of the refused write was kept"
    );
    assert_eq!(ack["seq"], before + 1, "no seq was used up by the refusal");
    let entry = bob.next_entry(room).await?;
    assert_eq!(entry["client_id"], "ro");
    assert_eq!(entry["seq"], ack["seq"]);
    let again = alice.send_message(room, "ro", b"y").await?;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["seq"], ack["seq"]);
    app.login("bob").await?;
    app.create_room(&t[0], "after read-only").await?;

    server.kill()?;
    let url = format!("sqlite://{}?mode=ro", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM entries WHERE client_id = 'ro'")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(stored, 1, "the resent message is stored exactly once");
    conn.close().await?;
    assert_sound_at(&db).await
}
