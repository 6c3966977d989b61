//! SQLite: the write-ahead log's disk space, reserved before commits need it.
//!
//! With `synchronous=FULL` every commit ends by syncing the WAL. While the
//! WAL grows, each commit also allocates blocks and moves the file's end, so
//! that sync must write the file's metadata too. A server starts in that
//! state (SQLite deletes the WAL when the last connection closes) and stays
//! in it until the WAL reaches the checkpoint size (40 MiB); after that
//! checkpoint, SQLite writes the WAL from its start again over the same
//! blocks. At light load the growing WAL cost the log writer's thread ~10 %
//! of its time (issue 18, docs/PERFORMANCE.md round 12).
//!
//! So the server fills the WAL up to that size with zeros, synced, when it
//! starts. Commits then overwrite blocks that exist, and `fdatasync` (the
//! bundled SQLite is built with `HAVE_FDATASYNC`, see `.cargo/config.toml`)
//! writes only their data. PostgreSQL zero-fills its WAL segments for the
//! same reason.
//!
//! Not after the truncating checkpoint that scrubs an erasure: the zeros
//! have to be written holding SQLite's write lock, and measured while
//! commits ran every 2 ms, that held them up to ~90 ms (~40 ms when written
//! a few MiB per hold, the commits then waiting on the chunks' syncs and
//! SQLite's busy backoff), against ~10 ms for the checkpoint alone. The WAL
//! grows again until its next checkpoint, as it did before.
//!
//! SQLite reads a WAL's frames up to the first whose salt or checksum does
//! not match its header; a zero frame never matches, so what follows the
//! last commit does not change what a reader or a recovery sees.

use std::fs::OpenOptions;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Result, Store, StoreError, WAL_PAGES_BEFORE_CHECKPOINT, db};

/// The bytes of a WAL header and of each frame's header (SQLite's format).
const WAL_HEADER_BYTES: u64 = 32;
const FRAME_HEADER_BYTES: u64 = 24;

impl Store {
    /// Extends this database's write-ahead log with zeros up to the size at
    /// which it is checkpointed. Holds SQLite's write lock meanwhile: no
    /// commit (of this process or another) appends to the WAL while zeros
    /// are written past its end. Does nothing on PostgreSQL, or when the
    /// WAL is already that large.
    pub async fn reserve_wal(&self) -> Result<()> {
        let (db::Db::Sqlite(pool), Some(options)) = (&self.db, &self.options) else {
            return Ok(());
        };
        let wal = wal_path(options.get_filename());
        let mut lock = pool.begin_with("BEGIN IMMEDIATE").await?;
        let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&mut *lock)
            .await?;
        let size = reserve_bytes(page_size as u64);
        let filled = tokio::task::spawn_blocking(move || fill_with_zeros(&wal, size))
            .await
            .map_err(|e| StoreError::Db(sqlx::Error::Io(io::Error::other(e))))?;
        lock.rollback().await?;
        filled.map_err(|e| StoreError::Db(sqlx::Error::Io(e)))
    }
}

/// SQLite's name for the WAL of the database file `db`.
fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// A WAL of `WAL_PAGES_BEFORE_CHECKPOINT` frames of `page_size` bytes.
fn reserve_bytes(page_size: u64) -> u64 {
    WAL_HEADER_BYTES + u64::from(WAL_PAGES_BEFORE_CHECKPOINT) * (FRAME_HEADER_BYTES + page_size)
}

/// Appends zeros to the file at `path` until it is `size` bytes long, and
/// syncs them. A missing file is left missing: SQLite creates the WAL when
/// it opens the database, so there is then no database open to reserve for.
/// On failure (a full disk) the file is cut back to its old length, so the
/// space stays free for the commits themselves.
fn fill_with_zeros(path: &Path, size: u64) -> io::Result<()> {
    let mut file = match OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    let old_end = file.seek(SeekFrom::End(0))?;
    if old_end >= size {
        return Ok(());
    }
    let zeros = vec![0u8; 1 << 20];
    let filled = (|| {
        let mut end = old_end;
        while end < size {
            let chunk = (size - end).min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..chunk])?;
            end += chunk as u64;
        }
        file.sync_data()
    })();
    if filled.is_err() {
        let _ = file.set_len(old_end);
    }
    filled
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn add_user(store: &Store, name: &str) {
        store
            .create_user(name, "$argon2id$not-a-real-hash", name.as_bytes(), name)
            .await
            .expect("a new user");
    }

    fn wal_len(db: &Path) -> u64 {
        std::fs::metadata(wal_path(db)).expect("the WAL").len()
    }

    /// Opens what a crash would leave (the database file and its WAL as
    /// they are on disk now, without the shared-memory index) and finds
    /// each of `users` in it.
    async fn assert_in_crash_copy(db: &Path, users: impl IntoIterator<Item = String>) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let copy = dir.path().join("copy.db");
        std::fs::copy(db, &copy).expect("copy the database");
        std::fs::copy(wal_path(db), wal_path(&copy)).expect("copy the WAL");
        let recovered = Store::open(&copy).await.expect("open the copy");
        for name in users {
            recovered
                .find_user(&name)
                .await
                .unwrap_or_else(|e| panic!("{name} lost: {e}"));
        }
    }

    #[tokio::test]
    async fn commits_overwrite_the_reserve_and_recovery_finds_each_of_them() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let db = dir.path().join("hush.db");
        let store = Store::open(&db).await.expect("store");
        let migrated = wal_len(&db);
        store.reserve_wal().await.expect("reserve");
        let reserved = wal_len(&db);
        assert!(
            migrated < reserved,
            "{migrated} bytes before, {reserved} after"
        );
        assert_eq!(reserved, reserve_bytes(4096));

        for i in 0..50 {
            add_user(&store, &format!("user{i}")).await;
        }
        assert_eq!(wal_len(&db), reserved, "the commits grew the WAL");
        store.reserve_wal().await.expect("a second reserve");
        assert_eq!(wal_len(&db), reserved, "a full reserve is left alone");

        assert_in_crash_copy(&db, (0..50).map(|i| format!("user{i}"))).await;
    }

    /// Commits land while the WAL is truncated and reserved again and
    /// again; none of them is overwritten.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_around_reserves_survive_a_crash() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let db = dir.path().join("hush.db");
        let store = Store::open(&db).await.expect("store");
        let committing = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    add_user(&store, &format!("busy{i}")).await;
                }
            })
        };
        for _ in 0..5 {
            store.checkpoint_truncate().await.expect("checkpoint");
            store.reserve_wal().await.expect("reserve");
        }
        committing.await.expect("the commits finish");
        assert!(wal_len(&db) >= reserve_bytes(4096));

        assert_in_crash_copy(&db, (0..300).map(|i| format!("busy{i}"))).await;
    }

    /// Zeros written past the WAL's end while another connection commits
    /// could land on that commit's frames: the reserve waits for the write
    /// lock, and the other connection's commit survives a crash.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reserve_waits_for_a_commit_in_progress() {
        use sqlx::{Connection, Executor};

        let dir = tempfile::tempdir().expect("a temp dir");
        let db = dir.path().join("hush.db");
        let store = Store::open(&db).await.expect("store");
        store.checkpoint_truncate().await.expect("an empty WAL");
        let before = wal_len(&db);

        let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .expect("a second connection");
        other
            .execute("BEGIN IMMEDIATE")
            .await
            .expect("the write lock");
        other
            .execute(
                "INSERT INTO users (username, password_hash, created_at) VALUES ('late', 'x', 0)",
            )
            .await
            .expect("an insert");
        let reserving = tokio::spawn({
            let store = store.clone();
            async move { store.reserve_wal().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !reserving.is_finished(),
            "the reserve did not wait for the lock"
        );
        assert_eq!(wal_len(&db), before, "zeros were written under a commit");

        other.execute("COMMIT").await.expect("commit");
        reserving.await.expect("joins").expect("reserve");
        assert_eq!(wal_len(&db), reserve_bytes(4096));

        // The other connection's commit.
        assert_in_crash_copy(&db, ["late".to_owned()]).await;
    }

    /// A full disk, as the server meets it: a file size limit
    /// (RLIMIT_FSIZE) below the reserve, with SIGXFSZ ignored, in a child
    /// process so the test's own limit stays untouched.
    #[test]
    fn a_reserve_that_does_not_fit_gives_its_space_back() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let wal = dir.path().join("full.db-wal");
        std::fs::write(&wal, vec![7u8; 4096]).expect("a WAL with content");
        // SAFETY: the child calls `fill_with_zeros` and `_exit` only; it
        // allocates, which glibc keeps working in a forked child, and takes
        // no other lock another thread could have held.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let limit = libc::rlimit {
                rlim_cur: 64 * 1024,
                rlim_max: libc::RLIM_INFINITY,
            };
            // SAFETY: plain libc calls on values owned by this process.
            let code = unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
                match fill_with_zeros(&wal, 1 << 20) {
                    Err(_) => 0,
                    Ok(()) => 1,
                }
            };
            // SAFETY: ends the child without running the parent's exit hooks.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "the child did not exit: {status}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "the fill did not fail");
        assert_eq!(
            std::fs::read(&wal).expect("the WAL"),
            vec![7u8; 4096],
            "the WAL is not back as it was"
        );
    }

    #[test]
    fn a_missing_wal_is_left_missing() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let missing = dir.path().join("none.db-wal");
        fill_with_zeros(&missing, 1 << 20).expect("nothing to do");
        assert!(!missing.exists(), "a WAL was created for no database");
    }
}
