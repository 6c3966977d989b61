//! A PostgreSQL server of a test's own, for tests that must stop or
//! restart PostgreSQL itself: the shared cluster of the PostgreSQL pass
//! (HUSH_TEST_POSTGRES_URL) serves every other test running in parallel
//! and must never be disturbed.
//!
//! As root (CI), a cluster made by postgresql-common's `pg_createcluster`
//! (which runs `initdb` as the `postgres` user, since `initdb` refuses to
//! run as root) and controlled by `pg_ctlcluster`; otherwise `initdb` and
//! `pg_ctl` from Debian's PostgreSQL 15 in a temp dir. Either way: a unique
//! name, a free loopback port, trust authentication on loopback, no fsync
//! (nothing here tests PostgreSQL's own durability), and the whole cluster
//! removed when the `PgServer` drops, whether the test passed or not.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::Connection;
use tempfile::TempDir;

const VERSION: &str = "15";
const BIN: &str = "/usr/lib/postgresql/15/bin";
/// Longest wait for PostgreSQL to accept connections after a (re)start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

enum Kind {
    /// `pg_createcluster` / `pg_ctlcluster` / `pg_dropcluster`, as root.
    Debian { name: String },
    /// `initdb` / `pg_ctl` on a data dir in `dir`, as anyone else.
    Local { dir: TempDir },
}

pub struct PgServer {
    /// The admin database (`postgres`, as superuser `postgres`), for
    /// `Cluster::start_on` and `PgDatabase::create_on`.
    pub url: String,
    kind: Kind,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run(command: &mut Command, what: &str) -> Result<()> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `run` off the async workers: PostgreSQL's tools take seconds.
async fn run_blocking(mut command: Command, what: &'static str) -> Result<()> {
    tokio::task::spawn_blocking(move || run(&mut command, what)).await?
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl PgServer {
    /// Creates and starts a new cluster; returns once it accepts
    /// connections.
    pub async fn start() -> Result<Self> {
        let port = free_port()?;
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let server = if is_root() {
            let mut salt = [0u8; 4];
            getrandom::fill(&mut salt).expect("the OS random source works");
            let name = format!(
                "hush_{}_{:08x}",
                std::process::id(),
                u32::from_le_bytes(salt)
            );
            // The guard exists before the cluster does: a half-made one is
            // dropped too.
            let server = Self {
                url,
                kind: Kind::Debian { name: name.clone() },
            };
            let mut create = Command::new("pg_createcluster");
            create
                .args([VERSION, &name, "-p", &port.to_string(), "--start"])
                .args(["-o", "fsync=off"])
                .args(["--", "--auth=trust"]);
            run_blocking(create, "pg_createcluster").await?;
            server
        } else {
            let dir = tempfile::tempdir()?;
            let data = dir.path().join("data");
            let mut initdb = Command::new(format!("{BIN}/initdb"));
            initdb
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "--no-sync"]);
            run_blocking(initdb, "initdb").await?;
            let server = Self {
                url,
                kind: Kind::Local { dir },
            };
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                server.local_dir().display()
            );
            let mut start = server.pg_ctl();
            start
                .args(["-w", "-o", &options, "start"])
                .arg("-l")
                .arg(server.local_dir().join("log"));
            run_blocking(start, "pg_ctl start").await?;
            server
        };
        server.wait_ready().await?;
        Ok(server)
    }

    fn local_dir(&self) -> PathBuf {
        match &self.kind {
            Kind::Local { dir } => dir.path().to_owned(),
            Kind::Debian { .. } => unreachable!("only for a local cluster"),
        }
    }

    fn pg_ctl(&self) -> Command {
        let mut command = Command::new(format!("{BIN}/pg_ctl"));
        command.arg("-D").arg(self.local_dir().join("data"));
        command
    }

    /// Restarts PostgreSQL in fast mode (open connections are terminated,
    /// open transactions roll back) and waits until it accepts
    /// connections again.
    pub async fn restart(&self) -> Result<()> {
        let command = match &self.kind {
            Kind::Debian { name } => {
                let mut command = Command::new("pg_ctlcluster");
                command.args([VERSION, name, "restart", "-m", "fast"]);
                command
            }
            Kind::Local { .. } => {
                // With its log file again: the server must not inherit
                // the pipes `run` reads to their end.
                let mut command = self.pg_ctl();
                command
                    .args(["-w", "-m", "fast", "restart", "-l"])
                    .arg(self.local_dir().join("log"));
                command
            }
        };
        run_blocking(command, "restarting PostgreSQL").await?;
        self.wait_ready().await
    }

    async fn wait_ready(&self) -> Result<()> {
        let started = Instant::now();
        loop {
            match sqlx::PgConnection::connect(&self.url).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    return Ok(());
                }
                Err(e) if started.elapsed() > START_TIMEOUT => {
                    bail!("PostgreSQL at {} did not come up: {e}", self.url)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let dropped = match &self.kind {
            Kind::Debian { name } => run(
                Command::new("pg_dropcluster").args(["--stop", VERSION, name]),
                "pg_dropcluster",
            ),
            // The temp dir goes after this.
            Kind::Local { .. } => run(
                self.pg_ctl().args(["-w", "-m", "immediate", "stop"]),
                "pg_ctl stop",
            ),
        };
        if let Err(e) = dropped {
            eprintln!("could not remove the test's PostgreSQL: {e:#}");
        }
    }
}
